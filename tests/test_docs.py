"""Docs derived from the code: every hook, every public Sink and Source member, every configuration key and every
command must be where a reader looks for it. Nothing here names what it checks: it walks the code."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from gateway import Sink, Source
from gateway._fields import model_in
from gateway.cli import _parser
from gateway.config import GatewayConfig, load_config
from gateway.plugins import plugin_manager, sink_types, source_types
from gateway.scaffold import new_plugin

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_GUIDE = (ROOT / "docs" / "plugins.md").read_text()
README = (ROOT / "README.md").read_text()


def section(text: str, heading: str) -> str:
    """From `heading` to the next heading of the same level."""
    level = heading.split(" ")[0]
    start = text.index(heading)
    end = text.find(f"\n{level} ", start + len(heading))
    return text[start : end if end != -1 else None]


def test_every_hook_is_documented_with_its_signature() -> None:
    hooks = [name for name in vars(plugin_manager().hook) if not name.startswith("_")]
    assert hooks, "the plugin manager has no hooks"
    for name in hooks:
        assert re.search(rf"### {name}\n", PLUGIN_GUIDE), f"docs/plugins.md has no section for the hook {name}"
        assert re.search(rf"def {name}\(\) -> ", PLUGIN_GUIDE), f"docs/plugins.md does not show {name}'s signature"


BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def test_every_block_of_the_plugin_guide_is_what_runs(tmp_path: Path) -> None:
    """The package the guide shows is, file for file, what `new-plugin chat --kind sink` writes (and that passes
    its test and mypy --strict: tests/test_scaffold.py); its YAML loads with that plugin; the rest compiles."""
    generated = new_plugin("chat", "sink", tmp_path)
    blocks = BLOCK.findall(PLUGIN_GUIDE)
    files = {body.split("\n", 1)[0][2:]: body.split("\n", 1)[1] for kind, body in blocks if body.startswith("# ")}
    assert sorted(files) == ["gateway_chat.py", "pyproject.toml", "test_gateway_chat.py"]
    for name, text in files.items():
        assert text == (generated / name).read_text(), f"docs/plugins.md shows another {name} than new-plugin writes"
    for kind, body in blocks:
        if kind == "python":
            compile(body, "docs/plugins.md", "exec")
    (yaml_text,) = [body for kind, body in blocks if kind == "yaml"]
    sys.path.insert(0, str(generated))
    try:
        manager = plugin_manager()
        manager.register(importlib.import_module("gateway_chat"))
        config_file = tmp_path / "config.yaml"
        config_file.write_text(f"storage: {{url: 'sqlite:///{tmp_path}/g.db'}}\n{yaml_text}")
        assert load_config(config_file, manager).sinks["team_chat"].type_name == "chat"
    finally:
        sys.path.remove(str(generated))
        sys.modules.pop("gateway_chat", None)


@pytest.mark.parametrize("base", [Sink, Source])
def test_every_public_member_of_the_plugin_base_classes_is_documented(base: type) -> None:
    members = [name for name in vars(base) if not name.startswith("_") and name not in {"model_config"}]
    members += [name for name in getattr(base, "__annotations__", {}) if not name.startswith("_")]
    undocumented = [name for name in sorted(set(members)) if not re.search(rf"`(async )?{name}\b", PLUGIN_GUIDE)]
    assert undocumented == []


def configuration_keys(model: type[BaseModel], prefix: str, seen: set[type[BaseModel]]) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        keys.append(f"{prefix}{key}")
        nested = model_in(field.annotation)
        if nested is not None and nested not in seen:
            seen.add(nested)
            keys += configuration_keys(nested, f"{prefix}{key}.", seen)
    return keys


def test_every_configuration_key_is_in_the_readmes_configuration_reference() -> None:
    """The core's models and every installed sink's and source's options."""
    reference = section(README, "## Configuration reference")
    manager = plugin_manager()
    keys = configuration_keys(GatewayConfig, "", set())
    options: list[tuple[str, type[BaseModel]]] = [(name, sink.Options) for name, sink in sink_types(manager).items()]
    options += [(name, source.Options) for name, source in source_types(manager).items()]
    for name, model in options:
        keys += configuration_keys(model, f"{name}: ", set())
    assert [key for key in keys if not re.search(rf"\b{re.escape(last(key))}(`|:)", reference)] == []


def last(key: str) -> str:
    """The key as YAML writes it where it is explained: `retry.schedule` -> `schedule`, `http: url` -> `url`."""
    return key.rsplit(".", 1)[-1].split(": ")[-1]


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    found = []
    for action in parser._actions:  # argparse keeps its subcommands only there
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = commands(sub, f"{prefix}{name} ")
                found += nested or [f"{prefix}{name}"]
    return found


def test_every_command_is_in_the_readme_and_the_help() -> None:
    table = section(README, "## Commands")
    listed = commands(_parser())
    assert len(listed) >= 15
    assert [
        command for command in listed if f"`{command}" not in table and f", `{command.split()[-1]}" not in table
    ] == []
    help_text = _parser().format_help()
    assert [
        command for command in {c.split()[0] for c in listed} if not re.search(rf"^\s+{command}\s", help_text, re.M)
    ] == []
