"""Argument checks and the system clock shared by the budget and the provenance log."""

from __future__ import annotations

from datetime import UTC, datetime
from numbers import Integral
from typing import Any


def _check_name(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a string; got {value!r} ({type(value).__name__})")
    if not value.strip():
        raise ValueError(f"`{name}` must be a non-empty string; got {value!r}")
    return value


def _check_tokens(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer; got {value!r} ({type(value).__name__})")
    if value < 0:
        raise ValueError(f"`{name}` must be >= 0; got {value!r}")
    return int(value)


def _check_request_id(value: Any) -> str | None:
    return None if value is None else _check_name("request_id", value)


def _check_aware(name: str, value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"`{name}` must be a datetime; got {value!r} ({type(value).__name__})")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"`{name}` must be a timezone-aware datetime; got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _system_clock() -> datetime:
    return datetime.now(UTC)


