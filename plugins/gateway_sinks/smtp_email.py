"""`smtp_email` sink: email through any SMTP server, with aiosmtplib (STARTTLS or implicit TLS, optional login).

Every message of a delivery carries the same Message-ID, `<delivery id@message_id_domain>`, so that mail clients
and servers recognise a retry of it.

Errors: a recipient or a message refused with a 4xx reply, connection failures and timeouts are retryable; a 5xx
refusal and bad credentials (also logged as an alert) are permanent. A server that accepts some recipients and
refuses others has not delivered: the refused ones are the error (the accepted ones are recorded and not re-sent).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from pathlib import Path
from typing import Literal

import aiosmtplib
from pydantic import Field, model_validator

from gateway import AppointmentEvent, Delivery, Message, PermanentDeliveryError, RetryableDeliveryError, Sink, hookimpl
from gateway_sinks._email import EmailOptions, EmailSink

logger = logging.getLogger(__name__)


class SmtpOptions(EmailOptions):
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = Field("starttls", description="tls = implicit TLS (port 465)")
    ca_file: Path | None = Field(None, description="PEM bundle of the CAs to trust, for a relay with a private CA")
    username: str | None = None
    password: str | None = None
    message_id_domain: str = Field("appointment-gateway.invalid", description="right-hand side of Message-IDs")

    @model_validator(mode="after")
    def _login_needs_both(self) -> SmtpOptions:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password, or neither")
        return self


class SmtpEmail(EmailSink):
    type_name = "smtp_email"
    Options = SmtpOptions
    options: SmtpOptions

    async def send_all(
        self, recipients: Sequence[str], message: Message, event: AppointmentEvent, delivery: Delivery
    ) -> None:
        """One message to every recipient: those the server accepts are recorded; any it refuses is the error."""
        if not recipients:
            return
        options = self.options
        message_id = f"<{delivery.id}@{options.message_id_domain}>"
        email = self._message(recipients, message, delivery, message_id)
        try:
            refused, _ = await aiosmtplib.send(
                email,
                sender=options.from_email,
                recipients=list(recipients),  # never read from the To: header
                hostname=options.host,
                port=options.port,
                use_tls=options.security == "tls",
                start_tls=options.security == "starttls",
                username=options.username,
                password=options.password,
                cert_bundle=str(options.ca_file) if options.ca_file else None,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as error:
            logger.error("ALERT sink %s: the SMTP server refused the login: %s", self.name, error)
            raise PermanentDeliveryError(
                f"SMTP login refused: {error}", status_code=error.code, reason="authentication failed"
            ) from None
        except aiosmtplib.SMTPRecipientsRefused as error:
            first = error.recipients[0]
            text = f"every recipient refused: {first.recipient}: {first.code} {first.message}"
            raise _refusal(first.code, text, reason="bad recipient") from None
        except aiosmtplib.SMTPResponseException as error:
            raise _refusal(error.code, f"SMTP server refused the message: {error.code} {error.message}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
            raise RetryableDeliveryError(f"SMTP server unreachable: {type(error).__name__}: {error}") from None
        for recipient in recipients:
            if recipient not in refused:
                await delivery.ledger.record(recipient, message_id)
        if refused:
            code = max(reply.code for reply in refused.values())
            details = "; ".join(f"{who}: {reply.code} {reply.message}" for who, reply in refused.items())
            raise _refusal(code, f"some recipients refused ({details}); the others received it")

    def _message(
        self, recipients: Sequence[str], message: Message, delivery: Delivery, message_id: str
    ) -> EmailMessage:
        options = self.options
        email = EmailMessage()
        email["From"] = formataddr((options.from_name or "", options.from_email))
        email["To"] = ", ".join(recipients)  # for the reader: the envelope's recipients are passed apart
        email["Subject"] = message.subject or ""
        email["Date"] = formatdate(delivery.attempted_at, usegmt=True)
        email["Message-ID"] = message_id
        if options.reply_to:
            email["Reply-To"] = options.reply_to
        email.set_content(message.body)
        return email


def _refusal(code: int, text: str, *, reason: str = "refused") -> PermanentDeliveryError | RetryableDeliveryError:
    if 400 <= code < 500:
        return RetryableDeliveryError(text, status_code=code)
    return PermanentDeliveryError(text, status_code=code, reason=reason)


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [SmtpEmail]
