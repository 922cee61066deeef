"""One plugin manager: the built-in sources, then every plugin installed under the entry-point group."""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, TypeVar, cast

import pluggy

from gateway import hookspecs
from gateway.exceptions import ConfigError
from gateway.sinks import Sink
from gateway.sources.base import Source

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISTRIBUTION = "appointment-gateway"
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


def installed(manager: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Every registered plugin: its module, the distribution that installed it (None for the core's own), and the
    sink and source types it registers."""
    distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    found = []
    for name, plugin in sorted(manager.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None or plugin is hookspecs:
            continue
        dist = distributions.get(id(plugin))
        core = name in DEFAULT_PLUGINS
        registered = {
            kind: [cls.type_name for impl in hook.get_hookimpls() if impl.plugin is plugin for cls in _classes(impl)]
            for kind, hook in (("sinks", manager.hook.register_sinks), ("sources", manager.hook.register_sources))
        }
        found.append(
            {
                "name": name,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
                "distribution": DISTRIBUTION if core else dist.project_name if dist is not None else None,
                "version": metadata.version(DISTRIBUTION) if core else dist.version if dist is not None else None,
                **registered,
            }
        )
    return found


def _classes(impl: pluggy.HookImpl) -> list[type[Sink] | type[Source]]:
    """What one plugin's implementation of a register_* hook returns."""
    return cast(list[type[Sink] | type[Source]], impl.function())


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
