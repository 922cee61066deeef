"""The plugin hooks: plugins register source and sink classes, and the core drives them.

Documented with examples in docs/plugins.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from gateway.sinks import Sink
    from gateway.sources.base import Source

PROJECT = "appointment_gateway"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_sinks() -> list[type[Sink]]:  # type: ignore[empty-body]
    """Return the sink classes this plugin provides, each with a unique `type_name`."""


@hookspec
def register_sources() -> list[type[Source]]:  # type: ignore[empty-body]
    """Return the source classes (booking platforms) this plugin provides, each with a unique `type_name`."""
