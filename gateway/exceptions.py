"""The gateway's error tree: what a sink raises to steer retries, and what config loading reports."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration file cannot be used; the message names the file, the dotted key and the fix."""


class DeliveryError(GatewayError):
    """A sink could not deliver an event; subclasses say whether trying again can help."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


NO_RECIPIENT = "no recipient"
"""The event lacks the phone or email the message needs: skipped, unless the sink's on_no_recipient says otherwise."""
RECIPIENT_REASONS = frozenset({NO_RECIPIENT, "bad recipient", "unsubscribed"})
"""Reasons that concern the recipient, not the sink: a sink's `fallback` sends the message instead."""
SKIP_REASONS = frozenset({"expired"})
"""Reasons that are no failure: the delivery is recorded as skipped, never a dead letter."""


class PermanentDeliveryError(DeliveryError):
    """Trying again cannot succeed (bad request, refused recipient): the delivery goes to the dead letters,
    with `reason` as its dead-letter reason. Recipient reasons (RECIPIENT_REASONS: `no recipient`,
    `bad recipient`, `unsubscribed`) go to the sink's fallback when it has one; `no recipient` and `expired` are
    skipped rather than dead-lettered."""

    def __init__(self, message: str, *, status_code: int | None = None, reason: str = "permanent error") -> None:
        super().__init__(message, status_code=status_code)
        self.reason = reason


class BadEventData(PermanentDeliveryError):
    """The event's own data cannot be delivered (a date out of range, a line break where a header goes): trying
    again cannot help, so it is permanent, with reason `bad data`, and the appointment's next events go on."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"bad data in {field}: {problem}", reason="bad data")
        self.field = field


class RetryableDeliveryError(DeliveryError):
    """The failure may pass (rate limit, outage); `retry_after` seconds is the earliest the sink may be tried again."""

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status_code=status_code)
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after}")
        self.retry_after = retry_after


class StorageError(GatewayError):
    """The store could not do what was asked; webhooks are answered 503 so that the provider retries."""


class WebhookRejected(GatewayError):
    """A webhook request is refused with an HTTP status and a reason the provider can read."""

    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.reason = reason
        self.detail = detail
