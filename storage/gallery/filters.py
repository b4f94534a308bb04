"""SQL filters and cursors of the gallery: every value in a filter string is a validated id or a
literal with its quotes doubled, and a listing cursor is opaque (created_at and img_id of the last row)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from storage.errors import InvalidInput
from storage.schema import HEX32, READ_COLUMNS, check_user_id

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def sql_str(value: str) -> str:
    """A SQL string literal of any text: single quotes doubled (backslashes are literal in Lance SQL)."""
    if not isinstance(value, str):
        raise InvalidInput("a filter value must be a string", code="invalid_id")
    if "\x00" in value:
        raise InvalidInput("a filter value may not contain NUL", code="invalid_id")
    return "'" + value.replace("'", "''") + "'"


def user_filter(user_id: Any) -> str:
    try:
        return f"user_id = {sql_str(check_user_id(user_id))}"
    except ValueError as exc:
        raise InvalidInput(str(exc), code="invalid_user_id", field="user_id") from None


def in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"


def row_out(row: Mapping[str, Any]) -> dict:
    """A stored row as callers get it: no vector or derived columns, meta as a dict, created_at in UTC."""
    out = {k: row[k] for k in READ_COLUMNS if k in row}
    created = out.get("created_at")
    if isinstance(created, datetime):
        out["created_at"] = created.replace(tzinfo=timezone.utc) if created.tzinfo is None else created.astimezone(
            timezone.utc)
    try:
        out["meta"] = json.loads(out.get("meta") or "{}")
    except ValueError:
        out["meta"] = {}
    return out


def encode_cursor(created: datetime, img_id: str) -> str:
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    # Integer microseconds: float seconds can be off by one at today's timestamps.
    micros = (created - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{img_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: Any) -> tuple[int, str]:
    bad = InvalidInput("cursor is not one this service issued; start again without it", code="invalid_cursor",
                       field="cursor")
    if not isinstance(cursor, str) or len(cursor) > 200:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        micros_text, img_id = raw.split(":", 1)
        if not micros_text.isdigit() or not HEX32.match(img_id):
            raise ValueError
        micros = int(micros_text)
        if micros >= 2**62:
            raise ValueError
        return micros, img_id
    except (ValueError, UnicodeDecodeError):
        raise bad from None


def invalid(exc: ValidationError, row: int | None = None) -> InvalidInput:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or None
    where = f"row {row}: " if row is not None else ""
    return InvalidInput(f"{where}{field}: {err.get('msg')}", field=field)
