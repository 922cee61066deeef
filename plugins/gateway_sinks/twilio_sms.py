"""`twilio_sms` sink: SMS through Twilio Programmable Messaging, with the twilio SDK's async client.

Errors: HTTP 429 / Twilio 20429 (rate limits, Retry-After honoured), 5xx, timeouts and connection errors are
retryable; invalid or unreachable numbers (21211, 21214, 21217, 21401, 21408, 21421, 21612, 21614: `bad
recipient`), unsubscribed recipients (21610: `unsubscribed`), a sender Twilio refuses (21212, 21606: `bad sender`),
other 4xx and authentication failures (401/403/20003, also logged as an alert) are permanent. The SDK's own
retries stay off (it retries POSTs on 5xx, which would send duplicate SMS).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import phonenumbers
from pydantic import AnyHttpUrl, ConfigDict, Field, field_validator, model_validator
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from gateway import (
    AppointmentEvent,
    Delivery,
    Message,
    NotificationSink,
    NotifyOptions,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Sink,
    hookimpl,
    parse_retry_after,
    sms_segments,
)

logger = logging.getLogger(__name__)

BAD_RECIPIENT = {
    21211: "invalid 'To' number",
    21214: "'To' number cannot be reached",
    21217: "'To' number is not a valid phone number",
    21401: "invalid phone number",
    21408: "the account may not send SMS to this region",
    21421: "invalid phone number",
    21612: "Twilio cannot route to this number",
    21614: "'To' is not a mobile number",
}
"""Refusals that concern the recipient (reason `bad recipient`: a fallback sink sends the message instead)."""
UNSUBSCRIBED = {21610: "the recipient replied STOP and is unsubscribed"}
BAD_SENDER = {21212: "invalid 'From' number", 21606: "the 'From' number cannot send SMS"}
REFUSALS = ((BAD_RECIPIENT, "bad recipient"), (UNSUBSCRIBED, "unsubscribed"), (BAD_SENDER, "bad sender"))
AUTH_FAILURES = {20003}
RATE_LIMITED = {20429}
_last_response: ContextVar[Response | None] = ContextVar("twilio_last_response", default=None)


class TwilioOptions(NotifyOptions):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str = Field(min_length=1)
    from_: str | None = Field(None, alias="from", description="Sender number in E.164, or an alphanumeric id")
    messaging_service_sid: str | None = Field(None, pattern=r"^MG[0-9a-fA-F]{32}$")
    to: Literal["customer"] | list[str] = Field("customer", description="`customer`, or fixed E.164 numbers (staff)")
    max_segments: int = Field(3, ge=1, description="check-config warns when a sample message needs more")
    api_url: AnyHttpUrl | None = Field(None, description="Another Twilio API base (scheme and host): an edge, a test")

    @model_validator(mode="after")
    def _one_sender(self) -> TwilioOptions:
        if (self.from_ is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from (a sender number) or messaging_service_sid")
        return self

    @field_validator("to")
    @classmethod
    def _e164(cls, to: str | list[str]) -> str | list[str]:
        if isinstance(to, list):
            for number in to:
                if not _is_e164(number):
                    raise ValueError(f"{number!r} is not an E.164 number such as +224621234567")
        return to


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's async client with its timeout applied (twilio-python#925: it ignores `timeout`), no retries,
    an optional other base URL, and the last response kept for the task that made it (Retry-After)."""

    def __init__(self, *, timeout: float, api_url: str | None) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        self.session = aiohttp.ClientSession()
        self.api = urlsplit(api_url) if api_url else None

    async def request(
        self,
        method: str,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  the SDK's signature
        **kwargs: Any,
    ) -> Response:
        if self.api is not None:
            url = urlunsplit(urlsplit(url)._replace(scheme=self.api.scheme, netloc=self.api.netloc))
        if auth is not None:  # sent as a header: aiohttp 3.14 deprecates the BasicAuth object the SDK would build
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        # the SDK passes timeout=None, which aiohttp reads as "no timeout": always pass ours
        response = await super().request(method, url, headers=headers, timeout=timeout or self.timeout, **kwargs)
        _last_response.set(response)
        return response


class TwilioSms(NotificationSink):
    type_name = "twilio_sms"
    kind = "sms"
    Options = TwilioOptions
    options: TwilioOptions

    async def open(self) -> None:
        api_url = str(self.options.api_url) if self.options.api_url else None
        self._http = _HttpClient(timeout=self.timeout, api_url=api_url)
        self._client = Client(self.options.account_sid, self.options.auth_token, http_client=self._http)

    async def aclose(self) -> None:
        await self._http.close()

    def recipients(self, event: AppointmentEvent) -> Sequence[str]:
        if isinstance(self.options.to, list):
            return self.options.to
        customer = event.customer
        if customer is None or customer.phone is None:
            raw = customer.phone_raw if customer else None
            detail = f" (the provider sent {raw!r}, not a valid number)" if raw else ""
            raise PermanentDeliveryError(
                f"the event has no customer phone number to send an SMS to{detail}", reason="no recipient"
            )
        return [customer.phone]

    async def send(self, recipient: str, message: Message, event: AppointmentEvent, delivery: Delivery) -> str:
        segments = sms_segments(message.body)
        if segments.count > self.options.max_segments:
            logger.warning(
                "sink %s: message of %d %s segments for delivery %s",
                self.name,
                segments.count,
                segments.encoding,
                delivery.id,
            )
        _last_response.set(None)
        options = self.options
        sender = {"from_": options.from_} if options.from_ else {"messaging_service_sid": options.messaging_service_sid}
        try:
            sent = await self._client.messages.create_async(to=recipient, body=message.body, **sender)
        except TwilioException as error:
            raise self._classify(error) from None
        except (aiohttp.ClientError, TimeoutError) as error:
            raise RetryableDeliveryError(f"Twilio unreachable: {type(error).__name__}: {error}") from None
        return str(sent.sid)

    def check_message(self, event: AppointmentEvent, message: Message) -> list[str]:
        segments = sms_segments(message.body)
        if segments.count <= self.options.max_segments:
            return []
        return [
            f"{segments.count} {segments.encoding} segments ({segments.units} units) exceed "
            f"max_segments {self.options.max_segments}"
        ]

    def _classify(self, error: TwilioException) -> PermanentDeliveryError | RetryableDeliveryError:
        status = getattr(error, "status", None)
        code = getattr(error, "code", None)
        text = _describe(error)
        if status == 429 or code in RATE_LIMITED:
            response = _last_response.get()
            retry_after = parse_retry_after(response.headers.get("Retry-After") if response else None, now=time.time())
            return RetryableDeliveryError(f"Twilio rate limit: {text}", status_code=status, retry_after=retry_after)
        if status is not None and status >= 500:
            return RetryableDeliveryError(f"Twilio error: {text}", status_code=status)
        if status in (401, 403) or code in AUTH_FAILURES:
            logger.error("ALERT sink %s: Twilio refused the credentials: %s", self.name, text)
            return PermanentDeliveryError(
                f"Twilio refused the credentials: {text}", status_code=status, reason="authentication failed"
            )
        for known, reason in (
            (BAD_RECIPIENT, "bad recipient"),
            (UNSUBSCRIBED, "unsubscribed"),
            (BAD_SENDER, "bad sender"),
        ):
            if code in known:
                return PermanentDeliveryError(f"{known[code]}: {text}", status_code=status, reason=reason)
        return PermanentDeliveryError(f"Twilio refused the message: {text}", status_code=status)


def _describe(error: TwilioException) -> str:
    if isinstance(error, TwilioRestException):
        return f"HTTP {error.status}, code {error.code}: {error.msg}"
    if isinstance(error, TwilioServiceException):
        return f"HTTP {error.status}, code {error.code}: {error.title}: {error.detail}"
    return str(error)


def _is_e164(number: str) -> bool:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_possible_number(parsed) and number == phonenumbers.format_number(
        parsed, phonenumbers.PhoneNumberFormat.E164
    )


@hookimpl
def register_sinks() -> list[type[Sink]]:
    return [TwilioSms]
