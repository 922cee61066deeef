"""Every text the console writes has its French translation, and the language is negotiated as browsers expect."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path
from typing import get_args
from zoneinfo import ZoneInfo

import pytest

import gateway.console
from gateway.console.i18n import Translator, catalog, negotiate
from gateway.console.pages import NOTICES
from gateway.store.base import DeliveryStatus, Outcome

CONSOLE = Path(gateway.console.__file__).parent
TEMPLATE_TEXT = re.compile(r"""_\(\s*(?:"([^"]+)"|'([^']+)')""")


def written_texts() -> set[str]:
    """The English texts: `_("...")` in the templates, the notices, the problems the views raise, and the states
    and outcomes shown through `_(value)`."""
    texts = set()
    for template in resources.files("gateway.console").joinpath("templates").iterdir():
        texts |= {a or b for a, b in TEMPLATE_TEXT.findall(template.read_text(encoding="utf-8"))}
    texts |= set(NOTICES.values())
    for module in CONSOLE.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("Problem", "Page"):
                texts |= {
                    arg.value for arg in node.args[1:] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                }
            if isinstance(node, ast.Dict):  # {"title": ..., "detail": ...} of problem pages
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value in ("title", "detail"):
                        texts |= {
                            v.value for v in ast.walk(value) if isinstance(v, ast.Constant) and isinstance(v.value, str)
                        }
    texts |= set(get_args(DeliveryStatus)) | set(get_args(Outcome))
    return texts | {"running", "paused", "circuit open", "circuit probing"}


def test_every_text_has_a_french_translation_and_the_catalog_holds_nothing_else() -> None:
    french = catalog("fr")
    texts = written_texts()
    assert sorted(texts - set(french)) == []
    assert sorted(set(french) - texts) == []


def test_translations_keep_their_placeholders() -> None:
    for english, french in catalog("fr").items():
        assert re.findall(r"\{(\w+)\}", english) == re.findall(r"\{(\w+)\}", french), english


@pytest.mark.parametrize(
    ("chosen", "header", "language"),
    [
        (None, "fr-CA,fr;q=0.9,en;q=0.8", "fr"),
        (None, "de-DE, en;q=0.7, fr;q=0.9", "fr"),
        (None, "de", "en"),
        (None, "", "en"),
        (None, "fr;q=nonsense, en", "en"),
        ("en", "fr", "en"),
        ("xx", "fr", "fr"),
    ],
)
def test_negotiate(chosen: str | None, header: str, language: str) -> None:
    assert negotiate(chosen, header) == language


def test_a_header_of_any_length_costs_bounded_work() -> None:
    assert negotiate(None, "de;q=0.1, " * 100_000 + "fr") == "en"  # only the first 20 are read


def test_times_numbers_and_durations_in_each_language() -> None:
    paris = ZoneInfo("Europe/Paris")
    french, english = Translator("fr", paris), Translator("en", paris)
    assert french.when(1_767_225_600.0) == "1 janv. 2026, 01:00:00"
    assert english.when("2026-01-01T00:00:00+00:00") == "Jan 1, 2026, 1:00:00\u202fAM"
    assert french.when(None) == "—"
    assert french.number(12345) == "12\u202f345" and english.number(12345) == "12,345"
    assert french.percent(0.5) == "50\u00a0%" and english.percent(0.99549) == "99.5%" and english.percent(None) == "—"
    assert french.duration(7200) == "2\u00a0heures" and english.duration(90) == "2 minutes"
    assert french.gettext("{n} attempts", n="3") == "3 tentatives"
