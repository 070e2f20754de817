"""What OutgrowSpawner turns JupyterHub's settings into: pure functions, no hub, no HTTP.

* ``job_name``: one deterministic outgrow job name per hub user and server, so a hub that
  lost its state still finds the job (and never starts a second one);
* ``size_range``: ``mem_guarantee``/``mem_limit`` and ``cpu_guarantee``/``cpu_limit`` as
  outgrow's ``-m MIN:MAX`` and ``-c MIN:MAX``;
* ``profiles``/``options_form``: an admin's ``profile_list`` (as KubeSpawner's) and the
  form a user picks from;
* ``progress_event``: a job event as a line of the hub's spawn page.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from outgrow.domain.jobs import EventView

GIB = 1024**3
NAME_MAX = 63
HASH_CHARS = 16
_UNSAFE = re.compile(r"[^a-z0-9_.-]+")

# Where a job is, as the hub's poll() sees it.
RUNNING = frozenset({"Executing", "Floating", "Suspending", "Suspended", "Resuming"})
STARTING = frozenset({"Submitted", "Initializing", "Starting", "NoAvailableHost"})
ENDED = frozenset({"Completed", "Cancelled", "FailToComplete", "FailToExecute"})


def job_name(user: str, server: str = "") -> str:
    """``hub-<user>-<hash>`` or ``hub-<user>-<server>-<hash>``, within outgrow's job-name
    rules. The hash (64 bits of sha256 over the exact user and server names) is always
    there: the readable part alone would let ``alice-gpu`` (a user) and ``alice``'s
    server ``gpu`` share a job, and the spawner ends the job it finds under its name."""
    raw = user if not server else f"{user}-{server}"
    slug = _UNSAFE.sub("-", raw.lower()).strip("-._") or "x"
    digest = hashlib.sha256(f"{user}\0{server}".encode()).hexdigest()[:HASH_CHARS]
    room = NAME_MAX - len("hub--") - HASH_CHARS
    return f"hub-{slug[:room].rstrip('-._') or 'x'}-{digest}"


def _number(value: float) -> str:
    return f"{round(value, 3):g}"


def size_range(
    guarantee: float | None, limit: float | None, start: float, unit: float = 1.0
) -> str:
    """outgrow's ``MIN[:MAX]`` from a hub guarantee and limit (in ``unit``s, e.g. bytes
    with ``unit=GIB``): the guarantee is the size the server starts at and never goes
    below, the limit the most it may grow to. Without a guarantee it starts at ``start``
    (or at the limit, if that is smaller); without a limit it may grow as far as the
    instance catalog goes."""
    lo = guarantee / unit if guarantee else None
    hi = limit / unit if limit else None
    if lo is None:
        lo = min(start, hi) if hi is not None else start
    if hi is None:
        return _number(lo)
    if hi < lo:
        raise ValueError(f"guarantee {_number(lo)} is above limit {_number(hi)}")
    return f"{_number(lo)}:{_number(hi)}"


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    overrides: Mapping[str, Any] = field(default_factory=dict)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "profile"


def profiles(raw: Sequence[Mapping[str, Any]]) -> list[Profile]:
    """An admin's ``profile_list`` (``display_name``, optional ``slug``, ``description``,
    ``default``, ``spawner_override``), checked: unique slugs, at most one default."""
    out: list[Profile] = []
    for i, p in enumerate(raw):
        if not isinstance(p, Mapping) or not isinstance(p.get("display_name"), str):
            raise ValueError(f"profile_list[{i}] needs a display_name")
        overrides = p.get("spawner_override", {})
        if not isinstance(overrides, Mapping):
            raise ValueError(f"profile_list[{i}].spawner_override must be a dict")
        out.append(
            Profile(
                slug=str(p.get("slug") or _slug(p["display_name"])),
                display_name=p["display_name"],
                description=str(p.get("description", "")),
                default=bool(p.get("default", False)),
                overrides=dict(overrides),
            )
        )
    slugs = [p.slug for p in out]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"profile_list has duplicate slugs: {slugs}")
    if sum(p.default for p in out) > 1:
        raise ValueError("profile_list has more than one default profile")
    return out


def choose(available: Sequence[Profile], options: Mapping[str, Any]) -> Profile | None:
    """The profile ``user_options`` asks for (``{"profile": slug}``), else the default
    one, else the first; None when there are no profiles. An unknown slug, or options
    other than ``profile``, are a ValueError: users pick from what the admin offers."""
    extra = set(options) - {"profile"}
    if extra:
        raise ValueError(f"unknown options {sorted(extra)}: only 'profile' may be chosen")
    wanted = options.get("profile")
    if not available:
        if wanted:
            raise ValueError("no profiles are offered here")
        return None
    if wanted:
        for p in available:
            if p.slug == wanted:
                return p
        raise ValueError(f"unknown profile {wanted!r}")
    return next((p for p in available if p.default), available[0])


def options_form(available: Sequence[Profile]) -> str:
    """Radio buttons, one per profile (nothing to pick: no form)."""
    if not available:
        return ""
    default = choose(available, {})
    rows = []
    for p in available:
        checked = " checked" if p is default else ""
        slug = html.escape(p.slug, quote=True)
        rows.append(
            f'<label class="outgrow-profile" style="display:block;margin:0.5em 0">'
            f'<input type="radio" name="profile" value="{slug}"{checked}> '
            f"<strong>{html.escape(p.display_name)}</strong>"
            + (f"<br><small>{html.escape(p.description)}</small>" if p.description else "")
            + "</label>"
        )
    return "\n".join(rows)


def options_from_form(form: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    values = form.get("profile") or []
    return {"profile": values[0]} if values else {}


# Spawn page: how far along a start is, by the state it reached.
_STATE_PROGRESS = {
    "Submitted": 5,
    "Initializing": 10,
    "NoAvailableHost": 10,
    "Starting": 70,
    "Executing": 95,
}


def progress_event(ev: EventView, last: int) -> dict[str, Any]:
    """A job event as the spawn page's ``{"progress", "message"}``; ``last`` is the
    progress shown so far (it never goes back)."""
    if ev.type == "state" and ev.to_state:
        pct = max(last, _STATE_PROGRESS.get(ev.to_state, last))
        text = f"{ev.to_state}: {ev.reason}" if ev.reason else ev.to_state
    else:
        pct = max(last, min(last + 2, 65))  # image preparation and such: creeping on
        text = ev.reason
    return {"progress": pct, "message": text}
