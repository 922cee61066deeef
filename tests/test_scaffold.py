"""`new-plugin` writes a package that passes its own test and `mypy --strict` as generated."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.scaffold import new_plugin

ROOT = Path(__file__).resolve().parent.parent


def run(folder: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(folder), "MYPYPATH": str(ROOT)}  # mypy cannot follow editable installs
    return subprocess.run([sys.executable, "-m", *command], cwd=folder, env=env, capture_output=True, text=True)


@pytest.mark.parametrize(("name", "kind"), [("chat", "sink"), ("acme_booking", "source")])
def test_a_generated_plugin_passes_its_test_and_mypy_strict(tmp_path: Path, name: str, kind: str) -> None:
    folder = new_plugin(name, kind, tmp_path)
    module, test = f"gateway_{name}.py", f"test_gateway_{name}.py"
    assert sorted(path.name for path in folder.iterdir()) == sorted(["README.md", "pyproject.toml", module, test])
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["appointment_gateway"] == {f"gateway_{name}": f"gateway_{name}"}
    tested = run(folder, "pytest", "-q", "-p", "no:cacheprovider", "-c", "pyproject.toml", test)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    typed = run(folder, "mypy", "--strict", "--no-incremental", module, test)
    assert typed.returncode == 0, typed.stdout + typed.stderr


def test_the_chat_webhook_sink_takes_forty_lines(tmp_path: Path) -> None:
    assert len((new_plugin("chat", "sink", tmp_path) / "gateway_chat.py").read_text().splitlines()) <= 40


def test_bad_names_kinds_and_existing_folders_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-plugin", "Chat-Bot", "--kind", "sink", "--directory", str(tmp_path)]) == 2
    assert "a plugin name is a lower-case identifier" in capsys.readouterr().err
    assert main(["new-plugin", "chat", "--kind", "sink", "--directory", str(tmp_path)]) == 0
    assert main(["new-plugin", "chat", "--kind", "source", "--directory", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the kind is sink or source"):
        new_plugin("pager", "hook", tmp_path)
