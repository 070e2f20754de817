"""Value parsers shared by the policies and the job options: durations, numbers, booleans,
sizes, ``-c 2:8`` ranges and the seed's ``[key=value,...]`` bracket lists.

Every error is a :class:`ValidationError` whose ``field`` names what was wrong.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from outgrow.errors import ValidationError

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_NUMBER_RE = re.compile(rf"^{_NUMBER}$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_MEM_RE = re.compile(rf"^({_NUMBER})\s*([A-Za-z]*)$")
_MEM_UNITS = {
    "": 1.0,
    "g": 1.0,
    "gi": 1.0,
    "gb": 1.0,
    "gib": 1.0,
    "m": 1 / 1024,
    "mi": 1 / 1024,
    "mb": 1 / 1024,
    "mib": 1 / 1024,
    "t": 1024.0,
    "ti": 1024.0,
    "tb": 1024.0,
    "tib": 1024.0,
}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_duration(value: str | float, field: str = "duration") -> float:
    """``"30s"``, ``"5m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` or a bare number of seconds
    (``"90"``, ``90``, ``1.5``) → seconds. Units go largest first, each at most once."""
    if isinstance(value, bool):
        raise ValidationError(f"{field}: expected a duration, got {value!r}", field=field)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _duration_text(value.strip(), field)
    else:
        raise ValidationError(f"{field}: expected a duration, got {value!r}", field=field)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValidationError(f"{field}: duration must be ≥ 0, got {value!r}", field=field)
    return seconds


def _duration_text(text: str, field: str) -> float:
    bad = ValidationError(
        f"{field}: invalid duration {text!r} (use e.g. 30s, 5m, 2h, 1h30m or seconds)",
        field=field,
    )
    if _NUMBER_RE.match(text):
        return float(text)
    low = text.lower()
    pos, total, last_rank = 0, 0.0, -1
    order = list(_UNIT_SECONDS)
    for m in _DURATION_PART_RE.finditer(low):
        if m.start() != pos:
            raise bad
        rank = order.index(m.group(2))
        if rank <= last_rank:  # repeated or out of order ("30m1h", "5m5m")
            raise bad
        last_rank = rank
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(low):
        raise bad
    return total


def parse_number(value: object, field: str, *, percent: bool = False) -> float:
    """A finite number, from a number or a string (``"90"``, ``"2.5"``; ``"90%"`` when
    ``percent``). Booleans are rejected."""
    if isinstance(value, bool):
        raise ValidationError(f"{field}: expected a number, got {value!r}", field=field)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if percent and text.endswith("%"):
            text = text[:-1].rstrip()
        if not _NUMBER_RE.match(text):
            raise ValidationError(f"{field}: expected a number, got {value!r}", field=field)
        number = float(text)
    else:
        raise ValidationError(f"{field}: expected a number, got {value!r}", field=field)
    if not math.isfinite(number):
        raise ValidationError(f"{field}: expected a finite number, got {value!r}", field=field)
    return number


def parse_int(value: object, field: str) -> int:
    number = parse_number(value, field)
    if number != int(number):
        raise ValidationError(f"{field}: expected a whole number, got {value!r}", field=field)
    return int(number)


def parse_bool(value: object, field: str) -> bool:
    """``true``/``false`` (also yes/no, on/off, 1/0, any case) or a real bool."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise ValidationError(f"{field}: expected true or false, got {value!r}", field=field)


def parse_mem_gib(value: object, field: str) -> float:
    """A memory size in GiB: ``8``, ``"8"``, ``"8GiB"``, ``"8G"``, ``"512Mi"``, ``"1TiB"``."""
    if isinstance(value, str):
        m = _MEM_RE.match(value.strip())
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _MEM_UNITS:
            raise ValidationError(
                f"{field}: expected a memory size in GiB (e.g. 8, 8GiB, 512MiB), got {value!r}",
                field=field,
            )
        return parse_number(m.group(1), field) * _MEM_UNITS[unit]
    return parse_number(value, field)


def split_bracket_list(text: str, field: str) -> list[tuple[str, str]]:
    """``"[a=1, b = 2]"`` → ``[("a", "1"), ("b", "2")]``. Whitespace tolerant; empty entries
    (``"[a=1,]"``) are skipped; ``"[]"`` → ``[]``."""
    if not isinstance(text, str):
        raise ValidationError(f"{field}: expected a string like [key=value,...]", field=field)
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")):
        raise ValidationError(
            f"{field}: expected [key=value,...] in square brackets, got {text!r}", field=field
        )
    pairs: list[tuple[str, str]] = []
    for item in body[1:-1].split(","):
        entry = item.strip()
        if not entry:
            continue
        if "=" not in entry:
            raise ValidationError(
                f"{field}: {entry!r} has no '=' (expected key=value)", field=f"{field}.{entry}"
            )
        key, _, value = entry.partition("=")
        key, value = key.strip(), value.strip()
        if not key:
            raise ValidationError(f"{field}: {entry!r} has no key before '='", field=field)
        if not value:
            raise ValidationError(f"{field}: {key} has no value", field=f"{field}.{key}")
        pairs.append((key, value))
    return pairs


def unknown_key(key: str, known: Iterable[str], field: str) -> ValidationError:
    """The error for an unknown key, suggesting the closest known one."""
    choices = list(known)
    by_lower = {k.lower(): k for k in choices}
    close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.6)
    hint = f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
    return ValidationError(f"{field}: unknown key {key!r}{hint}", field=f"{field}.{key}")


def format_number(x: float) -> str:
    """``90.0`` → ``"90"``, ``2.5`` → ``"2.5"`` (exact, so that formats round-trip)."""
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def format_duration_value(seconds: float) -> str:
    """The canonical policy form of a duration: ``"30s"``, ``"600s"``."""
    return f"{format_number(seconds)}s"


@dataclass(frozen=True)
class ResourceRange:
    """A requested size: ``-c 2`` (min 2, no max) or ``-c 2:8``. vCPUs or GiB."""

    min: float
    max: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.min) or self.min <= 0:
            raise ValidationError(f"range min must be > 0, got {self.min:g}", field="min")
        if self.max is not None and (not math.isfinite(self.max) or self.max < self.min):
            raise ValidationError(f"range max {self.max:g} is below min {self.min:g}", field="max")

    def contains(self, size: float) -> bool:
        return size >= self.min - 1e-9 and (self.max is None or size <= self.max + 1e-9)

    def describe(self) -> str:
        """``"2"`` or ``"2:8"`` — the CLI form."""
        lo = format_number(self.min)
        return lo if self.max is None else f"{lo}:{format_number(self.max)}"


def parse_range(value: str | float, field: str) -> ResourceRange:
    """``"2"`` → (2, None); ``"2:8"`` → (2, 8). Errors for ``"8:2"``, ``"0"``, ``"-1"``,
    ``"abc"``, ``"2:"``, ``":8"``."""
    hint = "(use N or MIN:MAX, e.g. 2 or 2:8)"
    lo: float
    hi: float | None = None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValidationError(f"{field}: invalid range {value!r} {hint}", field=field)
    if isinstance(value, int | float):
        lo = float(value)
        if not math.isfinite(lo):
            raise ValidationError(f"{field}: invalid range {value!r} {hint}", field=field)
    else:
        text = value.strip()
        lo_text, sep, hi_text = (part.strip() for part in text.partition(":"))
        if ":" in hi_text:
            raise ValidationError(f"{field}: invalid range {value!r} {hint}", field=field)
        if sep and not lo_text:
            raise ValidationError(
                f"{field}: invalid range {value!r}: min missing before ':' {hint}", field=field
            )
        if sep and not hi_text:
            raise ValidationError(
                f"{field}: invalid range {value!r}: max missing after ':' {hint}", field=field
            )
        if not _NUMBER_RE.match(lo_text) or (sep and not _NUMBER_RE.match(hi_text)):
            raise ValidationError(f"{field}: invalid range {value!r} {hint}", field=field)
        lo = float(lo_text)
        hi = float(hi_text) if sep else None
    if lo <= 0:
        raise ValidationError(f"{field}: min must be > 0, got {format_number(lo)}", field=field)
    if hi is not None and hi < lo:
        raise ValidationError(
            f"{field}: max {format_number(hi)} is below min {format_number(lo)}", field=field
        )
    return ResourceRange(lo, hi)
