"""Quiet hours: when a sink sends no message, read on the wall clock of the appointment's own time zone."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.sources.base import ProviderZone


class QuietHours(BaseModel):
    """From `from` to `to` (across midnight when `to` comes first), local time: messages due inside wait."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    from_: time = Field(alias="from", description="Start, local time (21:00)")
    to: time = Field(description="End, local time (08:00)")
    timezone: ProviderZone = Field("UTC", description="IANA zone used for events whose appointment names none")

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.from_ == self.to:
            raise ValueError("from and to are the same time; quiet hours need a start and a different end")
        return self

    def end(self, now: float, zone: str | None) -> float | None:
        """When the quiet hours `now` falls in end (a timestamp), or None when `now` is outside them. Computed on
        the local calendar, so that a night across a daylight saving change ends at the local `to` all the same."""
        tz = ZoneInfo(zone or self.timezone)
        local = datetime.fromtimestamp(now, tz)
        clock = local.time().replace(tzinfo=None)
        if self.from_ < self.to:
            quiet, day = self.from_ <= clock < self.to, local.date()
        else:
            quiet = clock >= self.from_ or clock < self.to
            day = local.date() + timedelta(days=1) if clock >= self.from_ else local.date()
        if not quiet:
            return None
        return datetime.combine(day, self.to, tzinfo=tz).timestamp()
