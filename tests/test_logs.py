from __future__ import annotations

import io
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gateway.config import Config
from gateway.logs import JsonFormatter, Redactor, configure_logging, redact
from gateway.sources.base import load_samples
from gateway.testing.receiver import Answer, receiver
from tests.conftest import MONCRENEAU_SECRET, running_gateway

PII = ("+224621234567", "jean.dupont@example.gn", "Jean Dupont", "john@example.com")
SECRETS = (MONCRENEAU_SECRET, "admin-token-5d1e-77aa", "yapp-secret")


@pytest.fixture
def log_lines() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Capture every log record as the gateway writes it: JSON, through the redaction filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor())
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(previous)


@pytest.mark.anyio
async def test_one_redacted_json_line_per_webhook_and_per_attempt(
    write_config: Callable[[str], Config], log_lines: Callable[[], list[dict[str, Any]]]
) -> None:
    echo = b'{"error": "customer Jean Dupont (+224 621 23 45 67, jean.dupont@example.gn) is unknown"}'
    async with receiver() as crm:
        crm.default = Answer(422, body=echo)
        config = write_config(
            f"admin: {{token: admin-token-5d1e-77aa}}\nsinks:\n  crm: {{type: http, options: {{url: '{crm.url}'}}}}\n"
            "routes:\n  - {sources: [moncreneau], sinks: [crm]}\n"
        )
        async with running_gateway(config) as gateway:
            created = load_samples("moncreneau.json")["appointment.created"]
            event_id = (await gateway.post_moncreneau(created)).json()["event_id"]
            await gateway.post_moncreneau(created)
            await gateway.post_yapp(load_samples("yappointment.json")["booking.created"])
            await gateway.client.post("/webhooks/moncreneau", content=b"{}", headers={"X-Moncreneau-Signature": "x"})
            await gateway.worker.run_due()
            await gateway.client.get("/admin/v1/events", headers={"Authorization": "Bearer admin-token-5d1e-77aa"})
    lines = log_lines()
    webhooks = [line for line in lines if line["message"].startswith("webhook")]
    assert [line["outcome"] for line in webhooks] == ["accepted", "duplicate", "accepted", "invalid_signature"]
    first = webhooks[0]
    assert (first["event_id"], first["provider_event_id"], first["source"]) == (event_id, "evt_abc123", "moncreneau")
    assert first["provider_delivery_id"] == "550e8400-e29b-41d4-a716-446655440000" and first["duration_ms"] >= 0
    attempt = next(line for line in lines if line["message"] == "attempt permanent" and line["event_id"] == event_id)
    assert (attempt["sink"], attempt["attempt"], attempt["status_code"], attempt["next"]) == ("crm", 1, 422, "dead")
    assert attempt["detail"] == (
        f'{crm.url}/ answered 422: {{"error": "customer [redacted] ([phone], [redacted]) is unknown"}}'
    )
    text = json.dumps(lines)
    for value in PII + SECRETS:
        assert value not in text, [line for line in lines if value in json.dumps(line)]


def test_redaction_masks_contacts_but_not_ids_or_times() -> None:
    assert redact("write to a.b+c@mail.example.org or call +33 6 12 34 56 78") == "write to [email] or call [phone]"
    kept = "event 550e8400-e29b-41d4-a716-446655440000 at 1767225600.25, attempt 12, HTTP 503"
    assert redact(kept) == kept
    assert redact("Jean Dupont called", known=("Jean Dupont", None, "")) == "[redacted] called"


def test_logging_can_be_plain_text_and_unredacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(format="text", level="INFO", redacted=False)
    logging.getLogger("gateway.test").info("call +224621234567")
    configure_logging(format="json", level="INFO", redacted=True)
    logging.getLogger("gateway.test").info("call +224621234567")
    plain, structured = capsys.readouterr().err.splitlines()
    assert plain.endswith("INFO gateway.test: call +224621234567")
    assert json.loads(structured)["message"] == "call [phone]"


def test_plain_text_lines_keep_the_structured_fields(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(format="text", level="INFO", redacted=True)
    extra = {"sink": "crm", "event_id": "e-1", "attempt": 2, "detail": 'said "no" = 422', "status_code": None}
    logging.getLogger("gateway.delivery").warning("attempt retryable", extra=extra)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(
        'WARNING gateway.delivery: attempt retryable sink=crm event_id=e-1 attempt=2 detail="said \\"no\\" = 422"'
    )


def test_secrets_are_masked_everywhere_even_unredacted_and_libraries_stay_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    secrets = ["SG.very-secret-key", "whsec-signing-1"]
    configure_logging(format="json", level="DEBUG", redacted=False, secrets=secrets)
    logging.getLogger("python_http_client.client").debug("Authorization: Bearer SG.very-secret-key")  # below WARNING
    for library in ("twilio.http_client", "sendgrid", "httpx", "aiohttp.client"):
        logging.getLogger(library).info("-- BEGIN Twilio API Request --")
    logging.getLogger("gateway.test").warning("refused: whsec-signing-1 and SG.very-secret-key")
    try:
        raise RuntimeError("token SG.very-secret-key for jean.dupont@example.gn")
    except RuntimeError:
        logging.getLogger("gateway.test").exception("it failed")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["message"] for line in lines] == ["refused: [secret] and [secret]", "it failed"]
    assert "RuntimeError: token [secret] for jean.dupont@example.gn" in lines[1]["error"]  # contacts: not asked


def test_tracebacks_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(format="json", level="INFO", redacted=True)
    try:
        raise ValueError("no such customer jean.dupont@example.gn (+224 621 23 45 67)")
    except ValueError:
        logging.getLogger("gateway.test").exception("attempt failed in the worker")
    (line,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert "ValueError: no such customer [email] ([phone])" in line["error"]
    assert "jean.dupont" not in line["error"]


def test_redaction_takes_time_in_proportion_to_the_text() -> None:
    """A 40,000-character value once took 6 s (the email pattern tried every start position): ten times the text
    may take about ten times as long, not a hundred."""

    def cost(size: int) -> float:
        texts = ["a" * size, "a." * (size // 2), "a@" * (size // 2), "+1" * (size // 2), "a@b" + ".c" * (size // 2)]
        timings = []
        for _ in range(5):
            began = time.perf_counter()
            for text in texts:
                redact(text)
            timings.append(time.perf_counter() - began)
        return statistics.median(timings)

    small, large = cost(4000), cost(40000)
    assert large < 30 * small, f"4,000 characters: {small:.4f}s; 40,000: {large:.4f}s"


def test_logged_field_values_are_capped() -> None:
    record = logging.makeLogRecord({"msg": "webhook duplicate", "provider_delivery_id": "x" * 40000})
    Redactor().filter(record)
    assert record.__dict__["provider_delivery_id"] == "x" * 1000 + "...[39000 more characters]"
