"""The HTTP status of each outgrow error: one table for every HTTP server of outgrow (the
REST API, the stable-URL proxy and the agent's API), so an error reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outgrow.errors import (
    AuthError,
    CapacityError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    StoreUnavailable,
    TooLargeError,
    ValidationError,
)

STATUS: list[tuple[type[OutgrowError], int]] = [
    (ValidationError, 422),
    (TooLargeError, 413),
    (AuthError, 401),
    (NotFoundError, 404),
    (ConflictError, 409),
    (CapacityError, 409),
    (StoreUnavailable, 503),
]


def status_for(exc: OutgrowError) -> int:
    """4xx for what the caller can fix, 503 for a database that is away (try again later),
    500 for the rest."""
    return next((code for t, code in STATUS if isinstance(exc, t)), 500)


def validation_message(errors: Sequence[Any]) -> tuple[str, str]:
    """(message, field) of the first error of a request validation (pydantic's list)."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    field = ".".join(loc)
    return (f"{field}: {msg}" if field else msg), field
