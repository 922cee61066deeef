from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import Config, load_config, secret_values
from gateway.exceptions import ConfigError
from gateway.plugins import plugin_manager
from tests.conftest import MONCRENEAU_SECRET, TWILIO_SMS, YAPP_SECRET

ROOT = Path(__file__).resolve().parent.parent
FILE_SINK = """
sinks:
  journal:
    type: file
    options: {path: out.jsonl}
routes:
  - sinks: [journal]
"""


def problems(write_config: Callable[[str], Config], text: str) -> str:
    with pytest.raises(ConfigError) as error:
        write_config(text)
    return str(error.value)


def test_the_example_configuration_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONCRENEAU_WEBHOOK_SECRET", raising=False)
    config = load_config(ROOT / "config.example.yaml", plugin_manager())
    assert set(config.sources) == {"moncreneau", "yappointment"}
    assert config.sources["moncreneau"].options.timezone == "Africa/Conakry"
    assert config.settings.storage.url == "sqlite:///data/gateway.db"


def test_environment_variables_are_interpolated(
    write_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_PATH", "from-env.jsonl")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    config = write_config(
        """
        sinks:
          journal:
            type: file
            options: {path: "${JOURNAL_PATH}"}
            timeout: ${UNSET_VAR:-3s}
          other:
            type: http
            options: {url: "http://x.test/$${literal}", headers: {X-Price: "$$5"}}
        """
    )
    assert str(config.sinks["journal"].options.path) == "from-env.jsonl"  # type: ignore[attr-defined]
    assert config.settings.sinks["journal"].timeout == 3.0
    assert config.sinks["other"].options.headers == {"X-Price": "$5"}  # type: ignore[attr-defined]


def test_a_missing_variable_names_the_key_and_the_fix(
    write_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CRM_TOKEN", raising=False)
    message = problems(
        write_config,
        "sinks:\n  crm:\n    type: http\n    options:\n      headers: {Authorization: 'Bearer ${CRM_TOKEN}'}\n",
    )
    assert "config.yaml: sinks.crm.options.headers.Authorization: environment variable CRM_TOKEN is not set" in message
    assert "${CRM_TOKEN:-default}" in message


def test_a_configuration_error_never_prints_a_secret(write_config: Callable[..., Config]) -> None:
    settings = problems(
        write_config,
        """
        storage: {url: "mysql://gateway:Sup3r-S3cret-Pw@db:5432/gw"}
        admin: {token: [tok-0123456789abcdef-XYZ]}
        """,
    )
    sinks = problems(
        write_config,
        """
        sinks:
          crm: {type: http, options: {url: "http://crm.test", signing_secret: "whsec_not-base64-S3cret!"}}
          sms:
            type: twilio_sms
            options: {account_sid: AC123, auth_token: [twilio-S3cret], from: "+15005550006"}
        """,
    )
    message = settings + sinks
    for key in ("storage.url", "admin.token", "signing_secret", "auth_token"):
        assert key in message, message
    for secret in ("Sup3r-S3cret-Pw", "tok-0123456789abcdef-XYZ", "whsec_not-base64-S3cret!", "twilio-S3cret"):
        assert secret not in message, message


def test_every_secret_of_the_configuration_is_found_to_be_masked(
    write_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        """
        admin: {token: admin-token-0123456789}
        sinks:
          crm:
            type: http
            options: {url: "http://user:url-password@crm.test", headers: {Authorization: "Bearer crm-key-1"}}
          calendar: {type: caldav, options: {feeds: {appointments: feed-token-0123456789}, password: dav-pw}}
        """
    )
    assert set(secret_values(config.settings)) >= {
        MONCRENEAU_SECRET,
        "mc-secret-previous",
        YAPP_SECRET,
        "admin-token-0123456789",
        "url-password",
        "Bearer crm-key-1",
        "feed-token-0123456789",
        "dav-pw",
    }


def test_every_missing_variable_is_reported_at_once(
    write_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CRM_TOKEN", "DB_PASSWORD", "ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    message = problems(
        write_config,
        """
        admin: {token: "${ADMIN_TOKEN}"}
        sinks:
          crm: {type: http, options: {url: "http://crm.test", headers: {Authorization: "Bearer ${CRM_TOKEN}"}}}
        """,
    )
    assert "admin.token: environment variable ADMIN_TOKEN is not set" in message
    assert "sinks.crm.options.headers.Authorization: environment variable CRM_TOKEN is not set" in message


def test_check_config_checks_the_host_serve_would_use_and_warns_about_placeholder_secrets(
    write_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    config = write_config("sinks: {crm: {type: http, options: {url: 'http://x.test', signing_secret: ''}}}\n")
    assert main(["-c", str(config.path), "check-config", "--host", "0.0.0.0"]) == 2
    assert "admin.token: the admin API would be reachable on 0.0.0.0 without a token" in capsys.readouterr().err
    placeholder = write_config("admin: {token: change-me-please-0123}\n")
    assert main(["-c", str(placeholder.path), "check-config"]) == 0
    assert "placeholder secrets, replace them before going live: admin.token" in capsys.readouterr().out


def test_an_unknown_key_suggests_the_right_one(write_config: Callable[..., Config]) -> None:
    message = problems(
        write_config, "sinks:\n  crm:\n    type: file\n    options: {path: x}\n    retry: {max_attempt: 3}\n"
    )
    assert message.endswith("config.yaml: sinks.crm.retry.max_attempt: unknown key; did you mean max_attempts?")


def test_an_unknown_key_in_sink_options_is_checked_by_the_sink_model(write_config: Callable[..., Config]) -> None:
    message = problems(
        write_config, "sinks:\n  crm:\n    type: http\n    options: {url: 'http://x.test', header: {}}\n"
    )
    assert "sinks.crm.options.header: unknown key; did you mean headers?" in message


def test_an_unknown_sink_type_lists_the_installed_ones(write_config: Callable[..., Config]) -> None:
    message = problems(write_config, "sinks:\n  crm:\n    type: htp\n")
    assert (
        "sinks.crm.type: unknown sink type 'htp' (did you mean http?); "
        "installed: caldav, file, http, sendgrid_email, smtp_email, twilio_sms" in message
    )


def test_every_problem_is_reported_at_once(write_config: Callable[..., Config]) -> None:
    message = problems(
        write_config,
        """
        sinks:
          a: {type: file, options: {}}
          b: {type: http, options: {url: "not a url"}}
        routes:
          - sinks: [a, c]
            sources: [moncreneau, nope]
        """,
    )
    assert "sinks.a.options.path: required key is missing" in message
    assert "sinks.b.options.url: Input should be a valid URL" in message
    assert "routes.0.sinks.1: no sink named 'c'; sinks: a, b" in message
    assert "routes.0.sources.1: no source named 'nope'; sources: moncreneau, yapp" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: {port: 70000}", "server.port: Input should be less than or equal to 65535 (got 70000)"),
        ("server: {prot: 8080}", "server.prot: unknown key; did you mean port?"),
        ("storage: {url: 'mysql://x'}", "storage.url: 'mysql' is not a storage this gateway knows"),
        ("sinks: {a: {type: file, options: {path: x}, timeout: soon}}", "sinks.a.timeout: 'soon' is not a duration"),
        (
            "sinks: {a: {type: file, options: {path: x}, concurrency: 0}}",
            "sinks.a.concurrency: Input should be greater",
        ),
        ("routes: [{sinks: [x], events: [booking.*]}]", "routes.0.events: 'booking.*' matches no event type"),
        (
            "sinks: {a: {type: http, options: {url: 'http://x', body_template: '{{ event.id '}}}",
            "template syntax error",
        ),
        ("sinks: {a: {type: http, options: {url: 'http://x', signing_secret: 'whsec_!!'}}}", "not a Standard Webhooks"),
        ("workers: {}", "workers: unknown key; did you mean worker?"),
    ],
)
def test_invalid_settings_name_key_and_problem(write_config: Callable[..., Config], text: str, expected: str) -> None:
    assert expected in problems(write_config, text)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "{type: moncreneau, secrets: [s], timezone: Mars/Olympus}",
            "sources.x.timezone: 'Mars/Olympus' is not an IANA",
        ),
        ("{type: moncreneau, secrets: [s], default_region: ZZ}", "sources.x.default_region: 'ZZ' is not a region"),
        ("{type: moncreneau, secrets: []}", "sources.x.secrets: List should have at least 1 item"),
        ("{type: moncreneau, secrets: ['']}", "sources.x.secrets: a secret is empty"),
        ("{type: moncreneau, secret: [s]}", "sources.x.secret: unknown key; did you mean secrets?"),
        (
            "{type: acuity, secrets: [s]}",
            "sources.x.type: unknown source type 'acuity'; installed: calcom, calendly, moncreneau, yappointment",
        ),
    ],
)
def test_invalid_sources_are_refused(write_config: Callable[..., Config], source: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        write_config(f"sources:\n  x: {source}\n", with_sources=False)
    assert expected in str(error.value)


def test_a_source_name_must_be_usable_in_a_url(write_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError, match=r"sources\.My Source: a source name is used in its URL"):
        write_config("sources:\n  My Source: {type: moncreneau, secrets: [s]}\n", with_sources=False)


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server:\n  port: 80\n sinks: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line 3"):
        load_config(path, plugin_manager())


def test_a_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read the configuration file .* pass --config FILE"):
        load_config(tmp_path / "nope.yaml", plugin_manager())


def test_check_config_exits_2_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sinks:\n  crm:\n    type: file\n    options: {path: x}\n    retry: {max_attempt: 3}\n")
    assert main(["--config", str(path), "check-config"]) == 2
    assert f"{path}: sinks.crm.retry.max_attempt: unknown key; did you mean max_attempts?" in capsys.readouterr().err


def test_check_config_summarises_a_good_file(
    write_config: Callable[..., Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(FILE_SINK + "  - sinks: [journal]\n    events: [customer.updated]\n")
    assert main(["--config", str(config.path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "source moncreneau: moncreneau at POST /webhooks/moncreneau (2 secret(s))" in out
    assert "sink journal: file, concurrency 4, timeout 10s" in out
    assert "route 1: any source, customer.updated -> journal" in out


def test_check_config_tries_each_messaging_sink_on_the_samples_its_routes_send_it(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        """
        sinks:
          sms:
            type: twilio_sms
            options:
              account_sid: AC0123456789abcdef0123456789abcdef
              auth_token: t
              from: "+15005550006"
              max_segments: 1
              templates:
                appointment.created: {body: "{{ 'Bienvenue ' * 20 }}"}
                appointment.cancelled: {body: "{{ customer.nickname }}"}
        routes:
          - sources: [moncreneau]
            events: [appointment.created, appointment.cancelled]
            sinks: [sms]
          - sources: [yapp]
            events: ["*"]
            sinks: [sms]
            locale: en
        """
    )
    assert main(["--config", str(config.path), "check-config"]) == 0
    warnings = [line.strip() for line in capsys.readouterr().out.splitlines() if "warning" in line]
    assert warnings == [
        "warning: sink sms: moncreneau appointment.created (fr): 2 GSM-7 segments (199 units) exceed max_segments 1",
        "warning: sink sms: moncreneau appointment.cancelled (fr): template "
        "sinks.sms.options.templates.appointment.cancelled.body failed: 'dict object' has no attribute 'nickname'",
        "warning: sink sms: yappointment booking.created (en): 2 GSM-7 segments (199 units) exceed max_segments 1",
        "warning: sink sms: yappointment booking.cancelled (en): template "
        "sinks.sms.options.templates.appointment.cancelled.body failed: 'dict object' has no attribute 'nickname'",
        "warning: sink sms: yappointment customer.updated (en): no sms body template for customer.updated in locale "
        "en; add sinks.sms.options.templates.customer.updated.body",
    ]


def test_every_commented_example_in_the_example_configuration_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncomment the example sinks and routes of config.example.yaml: the result must load as it stands."""
    head, sinks = (ROOT / "config.example.yaml").read_text().split("\nsinks:\n", 1)
    lines = []
    for line in sinks.splitlines():
        text = line.lstrip()
        indent = len(line) - len(text)
        if text.startswith("# ") and indent in (0, 2):
            if text[2:3].isupper() or text.startswith("# before"):
                continue  # prose, not an example
            line = " " * indent + text[2:]
        lines.append(line)
    path = tmp_path / "all.yaml"
    path.write_text(head + "\nsinks:\n" + "\n".join(lines) + "\n")
    (tmp_path / "templates").mkdir()
    for name in ("completed.subject.j2", "completed.j2"):
        (tmp_path / "templates" / name).write_text("{{ when }}")
    monkeypatch.setenv("PASSPORTS_FEED_TOKEN", "a-feed-token-long-enough")
    for variable in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SENDGRID_API_KEY",
        "CALDAV_PASSWORD",
    ):
        monkeypatch.setenv(variable, "AC0123456789abcdef0123456789abcdef" if variable == "TWILIO_ACCOUNT_SID" else "x")
    monkeypatch.setenv("CRM_URL", "https://crm.example/hooks")
    monkeypatch.setenv("CRM_TOKEN", "t")
    config = load_config(path, plugin_manager())
    assert set(config.sinks) == {"journal", "crm", "sms", "email", "calendar", "desk"}
    assert [route.name for route in config.settings.routes] == [
        "everything-to-the-journal",
        "passport-service-to-crm",
        "english-speaking-department",
        "clinic",
        "customers-by-email",
    ]
    clinic = config.settings.routes[3]
    assert clinic.reminders == [86400.0, 7200.0]
    sms = config.settings.sinks["sms"]
    assert (sms.fallback, sms.quiet_hours is not None, sms.supersede) == ("email", True, None)


JOURNAL = "  journal: {type: file, options: {path: j.jsonl}}\nroutes:\n  - "


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            JOURNAL + "{events: [appointment.created], sinks: [journal], reminders: [24h]}",
            "routes.0: a route with reminders must match appointment.created and appointment.updated",
        ),
        (
            JOURNAL + "{events: [appointment.reminder], sinks: [journal]}",
            "routes.0.events: appointment.reminder is made by the gateway, never received; schedule it with "
            "`reminders: [24h]`",
        ),
        (
            JOURNAL + "{sinks: [journal], reminders: [tomorrow]}",
            "routes.0.reminders.0: 'tomorrow' is not a duration",
        ),
        (
            "  journal: {type: file, options: {path: j.jsonl}, fallback: crm}",
            "sinks.journal.fallback: no sink named 'crm'; sinks: journal",
        ),
        (
            "  a: {type: file, options: {path: a.jsonl}, fallback: b}\n"
            "  b: {type: file, options: {path: b.jsonl}, fallback: a}",
            "sinks.a.fallback: fallbacks go round in a circle (a -> b -> a); break it",
        ),
        (
            '  a: {type: file, options: {path: a.jsonl}, quiet_hours: {from: "21:00", to: "21:00"}}',
            "sinks.a.quiet_hours: from and to are the same time",
        ),
        (
            "  a: {type: file, options: {path: a.jsonl}, "
            'quiet_hours: {from: "21:00", to: "08:00", timezone: Mars/Olympus}}',
            "sinks.a.quiet_hours.timezone: 'Mars/Olympus' is not an IANA time zone",
        ),
        (
            "  a: {type: file, options: {path: a.jsonl}, on_no_recipient: ignore}",
            "sinks.a.on_no_recipient: Input should be 'skip' or 'dead_letter'",
        ),
    ],
)
def test_reminder_and_message_settings_are_checked_with_the_key_and_the_fix(
    write_config: Callable[[str], Config], yaml_text: str, expected: str
) -> None:
    assert expected in problems(write_config, "sinks:\n" + yaml_text + "\n")


def test_check_config_renders_the_reminders_a_route_schedules(
    write_config: Callable[[str], Config], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        "sinks:\n"
        + TWILIO_SMS
        + """      templates:
        appointment.reminder: {body: "{{ reminder.minutes }}"}
routes:
  - sources: [moncreneau]
    events: [appointment.created, appointment.updated]
    sinks: [sms]
    reminders: [24h, 2h]
"""
    )
    assert main(["--config", str(config.path), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "route 0: moncreneau, appointment.created, appointment.updated -> sms, reminders 86400s, 7200s" in out
    assert [line.strip() for line in out.splitlines() if "warning" in line] == [
        "warning: sink sms: moncreneau appointment.reminder (fr): template "
        "sinks.sms.options.templates.appointment.reminder.body failed: 'dict object' has no attribute 'minutes'"
    ] * 2
