from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from gateway_sinks.smtp_email import SmtpEmail, SmtpOptions

from gateway.events import AppointmentEvent
from gateway.exceptions import BadEventData, PermanentDeliveryError, RetryableDeliveryError
from gateway.sinks import Delivery, MemoryLedger, Receipt
from tests.helpers import Mailbox, free_port
from tests.samples import appointment_event

pytestmark = pytest.mark.anyio


async def deliver(
    port: int,
    event: AppointmentEvent | None = None,
    *,
    delivery: Delivery | None = None,
    **options: Any,
) -> Receipt | None:
    settings = {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "rdv@example.gn", **options}
    sink = SmtpEmail("mail", SmtpOptions.model_validate(settings), timeout=5.0)
    return await sink.deliver(
        event or appointment_event(), delivery or Delivery(id="dlv-1", sink="mail", attempt=1, attempted_at=0.0)
    )


async def test_the_message_arrives_with_its_headers_and_text(mailbox: tuple[Mailbox, int]) -> None:
    handler, port = mailbox
    receipt = await deliver(
        port, from_name="Préfecture de Conakry", reply_to="aide@example.gn", message_id_domain="rdv.example.gn"
    )
    ((recipients, message),) = handler.received
    assert recipients == ["jean.dupont@example.gn"]
    assert message["From"] == "Préfecture de Conakry <rdv@example.gn>"
    assert message["To"] == "jean.dupont@example.gn" and message["Reply-To"] == "aide@example.gn"
    assert message["Subject"] == "Rendez-vous confirmé : dimanche 25 janvier 2026 à 14:30"
    assert message["Message-ID"] == "<dlv-1@rdv.example.gn>"
    assert message["Date"].datetime == datetime(1970, 1, 1, tzinfo=UTC)  # the core's attempt time
    text = message.get_content()
    assert "Votre rendez-vous (Passport Service) est confirmé pour le dimanche 25 janvier 2026 à 14:30." in text
    assert receipt is not None and receipt.detail == "sent <dlv-1@rdv.example.gn>"


async def test_the_message_id_is_stable_across_attempts(mailbox: tuple[Mailbox, int]) -> None:
    handler, port = mailbox
    for attempt in (1, 2):
        await deliver(port, delivery=Delivery(id="dlv-7", sink="mail", attempt=attempt, attempted_at=0.0))
    assert [message["Message-ID"] for _, message in handler.received] == ["<dlv-7@appointment-gateway.invalid>"] * 2


@pytest.mark.parametrize(
    ("reply", "error", "reason"),
    [
        ("550 5.1.1 No such user", PermanentDeliveryError, "bad recipient"),
        ("450 4.2.1 Mailbox busy, try later", RetryableDeliveryError, None),
    ],
)
async def test_a_recipient_refused_at_rcpt(
    mailbox: tuple[Mailbox, int], reply: str, error: type[Exception], reason: str | None
) -> None:
    handler, port = mailbox
    handler.refuse_rcpt["jean.dupont@example.gn"] = reply
    with pytest.raises(error, match=r"every recipient refused: jean\.dupont@example\.gn") as raised:
        await deliver(port)
    assert getattr(raised.value, "reason", None) == reason and handler.received == []


@pytest.mark.parametrize(
    ("reply", "error"),
    [("554 5.7.1 Message rejected as spam", PermanentDeliveryError), ("451 4.3.0 Try again", RetryableDeliveryError)],
)
async def test_a_message_refused_at_data(mailbox: tuple[Mailbox, int], reply: str, error: type[Exception]) -> None:
    handler, port = mailbox
    handler.refuse_data = reply
    with pytest.raises(error, match=f"SMTP server refused the message: {reply[:3]}"):
        await deliver(port)


async def test_a_partial_refusal_is_an_error_and_a_retry_serves_only_the_refused(mailbox: tuple[Mailbox, int]) -> None:
    handler, port = mailbox
    staff = ["desk@example.gn", "chief@example.gn"]
    handler.refuse_rcpt["chief@example.gn"] = "452 4.2.2 Mailbox full"
    ledger = MemoryLedger()
    with pytest.raises(RetryableDeliveryError, match=r"some recipients refused \(chief@example.gn: 452"):
        await deliver(port, to=staff, delivery=Delivery(id="dlv-1", sink="mail", attempt=1, ledger=ledger))
    assert ledger.messages == {"desk@example.gn": "<dlv-1@appointment-gateway.invalid>"}
    del handler.refuse_rcpt["chief@example.gn"]
    await deliver(port, to=staff, delivery=Delivery(id="dlv-1", sink="mail", attempt=2, ledger=ledger))
    assert [recipients for recipients, _ in handler.received] == [["desk@example.gn"], ["chief@example.gn"]]


async def test_a_refused_login_is_permanent_and_raises_an_alert(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        return AuthResult(success=False, handled=False)

    controller = Controller(
        Mailbox(), hostname="127.0.0.1", port=free_port(), authenticator=refuse, auth_require_tls=False
    )
    controller.start()
    try:
        with caplog.at_level(logging.ERROR), pytest.raises(PermanentDeliveryError) as error:
            await deliver(controller.port, username="gateway", password="wrong-password")
    finally:
        controller.stop()
    assert error.value.reason == "authentication failed"
    assert "ALERT sink mail: the SMTP server refused the login" in caplog.text
    assert "wrong-password" not in caplog.text


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_with_a_private_ca(tmp_path: Path, security: str) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    handler = Mailbox()
    if security == "starttls":
        controller = Controller(
            handler, hostname="127.0.0.1", port=free_port(), tls_context=server_context, require_starttls=True
        )
    else:  # implicit TLS, as on port 465
        controller = Controller(handler, hostname="127.0.0.1", port=free_port(), ssl_context=server_context)
    controller.start()
    try:
        with pytest.raises(RetryableDeliveryError):  # the public CAs do not know this server's certificate
            await deliver(controller.port, security=security)
        await deliver(controller.port, security=security, ca_file=str(ca_file))
    finally:
        controller.stop()
    assert len(handler.received) == 1


async def test_an_unreachable_server_is_retryable() -> None:
    with pytest.raises(RetryableDeliveryError, match="SMTP server unreachable"):
        await deliver(free_port())


async def test_an_event_without_an_email_is_a_clear_permanent_failure(mailbox: tuple[Mailbox, int]) -> None:
    _, port = mailbox
    with pytest.raises(PermanentDeliveryError, match="no customer email address"):
        await deliver(port, appointment_event("appointment.cancelled"))


def test_a_login_needs_both_halves() -> None:
    with pytest.raises(ValueError, match="set both username and password"):
        SmtpOptions.model_validate({"host": "mail", "from_email": "a@b.co", "username": "u"})


def with_customer(**fields: str) -> AppointmentEvent:
    """The sample event with customer fields set as a careless plugin source might (model_copy does not validate)."""
    event = appointment_event()
    assert event.customer is not None
    return event.model_copy(update={"customer": event.customer.model_copy(update=fields)})


@pytest.mark.parametrize(
    "address", ["a@example.gn, victim1@evil.test, victim2@evil.test", "a@example.gn\r\nBcc: victim@evil.test"]
)
async def test_a_customer_email_that_is_not_one_address_writes_to_nobody(
    mailbox: tuple[Mailbox, int], address: str
) -> None:
    handler, port = mailbox
    with pytest.raises(BadEventData, match=r"customer\.email") as error:
        await deliver(port, with_customer(email=address))
    assert error.value.reason == "bad data" and handler.received == []


async def test_the_envelope_names_exactly_the_recipients_never_the_headers(mailbox: tuple[Mailbox, int]) -> None:
    handler, port = mailbox
    await deliver(port, to=["staff@example.gn"])
    await deliver(port)
    (staff, to_staff), (customer, to_customer) = handler.received
    assert staff == ["staff@example.gn"] and to_staff["To"] == "staff@example.gn"
    assert customer == ["jean.dupont@example.gn"] and to_customer["To"] == "jean.dupont@example.gn"
