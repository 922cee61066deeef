"""What the admin filters mean, written once as SQL for both backends (each passes its own placeholder)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from gateway.store.base import DeliveryStatus, EventSummary


@dataclass(frozen=True)
class EventQuery:
    """Events matching every given filter. `type` is canonical (appointment.created) or the provider's own
    (booking.created); `customer` is an E.164 phone or an email; times bound `received_at` (since included)."""

    source: str | None = None
    type: str | None = None
    appointment: str | None = None
    customer: str | None = None
    since: float | None = None
    until: float | None = None
    status: DeliveryStatus | None = None
    """Events with at least one delivery in this status."""


@dataclass(frozen=True)
class DeadLetterQuery:
    sink: str | None = None
    source: str | None = None
    type: str | None = None
    since: float | None = None
    until: float | None = None
    """Times bound when the delivery was dead-lettered."""


class Where:
    """SQL conditions joined by AND, with their parameters, written with `?` and rendered with the backend's mark."""

    def __init__(self, mark: str, *conditions: str) -> None:
        self.mark = mark
        self.conditions = list(conditions)
        self.parameters: list[object] = []

    def add(self, sql: str, *values: object) -> None:
        self.conditions.append(sql.replace("?", self.mark))
        self.parameters.extend(values)

    @property
    def sql(self) -> str:
        return " AND ".join(self.conditions) or "TRUE"


def event_conditions(query: EventQuery, mark: str) -> Where:
    """Conditions on `events AS e`."""
    where = Where(mark)
    add = where.add
    if query.source is not None:
        add("e.source = ?", query.source)
    if query.type is not None:
        add("(e.type = ? OR e.provider_event_type = ?)", query.type, query.type)
    if query.appointment is not None:
        add("e.appointment_id = ?", query.appointment)
    if query.customer is not None:
        add("(e.customer_phone = ? OR e.customer_email = ?)", query.customer, query.customer.lower())
    if query.since is not None:
        add("e.received_at >= ?", query.since)
    if query.until is not None:
        add("e.received_at < ?", query.until)
    if query.status is not None:
        add("EXISTS (SELECT 1 FROM deliveries AS s WHERE s.event_id = e.id AND s.status = ?)", query.status)
    return where


def dead_letter_conditions(query: DeadLetterQuery, mark: str) -> Where:
    """Conditions on `deliveries AS d JOIN events AS e` selecting dead letters."""
    where = Where(mark, "d.status = 'dead'")
    add = where.add
    if query.sink is not None:
        add("d.sink = ?", query.sink)
    if query.source is not None:
        add("e.source = ?", query.source)
    if query.type is not None:
        add("(e.type = ? OR e.provider_event_type = ?)", query.type, query.type)
    if query.since is not None:
        add("d.updated_at >= ?", query.since)
    if query.until is not None:
        add("d.updated_at < ?", query.until)
    return where


def summary(row: tuple[Any, ...] | Any) -> EventSummary:
    """An EventSummary from a row of either backend's event listing: ten event columns, then the deliveries as
    a JSON object (text from SQLite, already decoded from PostgreSQL)."""
    deliveries = row[10]
    return EventSummary(
        id=row[0],
        source=row[1],
        provider_event_id=row[2],
        provider_event_type=row[3],
        type=row[4],
        occurred_at=row[5],
        received_at=row[6],
        appointment_id=row[7],
        customer_phone=row[8],
        customer_email=row[9],
        deliveries=json.loads(deliveries) if isinstance(deliveries, str) else dict(deliveries or {}),
    )


def encode_cursor(position: tuple[float, str]) -> str:
    """An opaque cursor for keyset pagination (newest first): the last item's time and id."""
    return base64.urlsafe_b64encode(f"{position[0]!r}|{position[1]}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    """ValueError when the cursor was not made by encode_cursor."""
    try:
        moment, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return float(moment), key
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError(f"{cursor!r} is not a cursor this gateway gave out") from None
