"""Appointment event gateway: verified provider webhooks in, canonical events out to every configured sink."""

from __future__ import annotations

from gateway.hookspecs import hookimpl

__all__ = ["hookimpl"]
