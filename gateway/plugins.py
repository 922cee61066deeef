"""One plugin manager: the built-in sources, then every plugin installed under the entry-point group."""

from __future__ import annotations

import importlib
from typing import TypeVar

import pluggy

from gateway import hookspecs
from gateway.exceptions import ConfigError
from gateway.sinks import Sink
from gateway.sources.base import Source

ENTRY_POINT_GROUP = hookspecs.PROJECT
DEFAULT_PLUGINS = (
    "gateway.sources.moncreneau",
    "gateway.sources.yappointment",
)
"""Core modules registered directly; the built-in sinks come through the entry-point group like any other plugin."""

T = TypeVar("T", Sink, Source)


def plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(name), name)
    manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return manager


def sink_types(manager: pluggy.PluginManager) -> dict[str, type[Sink]]:
    return _by_type_name(manager.hook.register_sinks(), "sink")


def source_types(manager: pluggy.PluginManager) -> dict[str, type[Source]]:
    return _by_type_name(manager.hook.register_sources(), "source")


def _by_type_name(results: list[list[type[T]]], kind: str) -> dict[str, type[T]]:
    found: dict[str, type[T]] = {}
    for classes in results:
        for cls in classes:
            other = found.setdefault(cls.type_name, cls)
            if other is not cls:
                raise ConfigError(
                    f"two plugins register the {kind} type {cls.type_name!r}: "
                    f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}; uninstall one"
                )
    return dict(sorted(found.items()))
