from __future__ import annotations

import json

import pytest

from gateway.exceptions import PermanentDeliveryError
from gateway.templates import check_syntax, render


@pytest.mark.parametrize("value", ['", "role": "admin', "back\\slash", "line\nbreak", "tab\there", "\u2028"])
def test_json_bodies_keep_every_value_inside_its_string(value: str) -> None:
    rendered = render('{"name": "{{ name }}", "as_json": {{ name | tojson }}}', "t", {"name": value}, json_body=True)
    assert json.loads(rendered) == {"name": value, "as_json": value}


def test_a_json_body_that_is_not_json_is_a_permanent_template_error() -> None:
    with pytest.raises(PermanentDeliveryError) as error:
        render("{{ name }}", "sinks.crm.options.body_template", {"name": "plain"}, json_body=True)
    assert error.value.reason == "template error" and "sinks.crm.options.body_template" in str(error.value)


def test_other_bodies_are_rendered_as_written_and_syntax_errors_name_the_line() -> None:
    assert render('say "{{ name }}"', "t", {"name": 'a"b'}) == 'say "a"b"'
    with pytest.raises(ValueError, match="template syntax error on line 2"):
        check_syntax("ok\n{{ broken")
