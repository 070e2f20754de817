"""How a move carries the job's memory: ``plain`` or ``postcopy``. Pure: no I/O.

* **plain** — the job is frozen, *all* of its memory is dumped and streamed to the target,
  and only then restored: the downtime grows with the memory (≈ 4 s per GiB measured on
  the local provider). A move that fails at any point leaves the job running on the source.
* **postcopy** — the job is frozen and dumped *without* its memory pages (the source's
  CRIU keeps serving them), restored on the target at once, and its pages follow: the
  ones it touches first, then every other in the background (the *drain*). The downtime
  barely depends on the memory (0.84 s for 4 GiB on an idle host, docs/benchmarks.md).
  The price: once the target runs the job and until the drain ends, the job lives on two
  instances; if the page transfer breaks (the source or the network dies) the job has
  lost memory and is lost.

``moveMode`` in the migrate policy chooses: ``plain``, ``postcopy`` or ``auto`` (the
default): post-copy when the job holds at least ``postcopy_min_bytes`` (1 GiB), or for
an urgent move (evadeOOM, spot reclaim) whose plain downtime would exceed
``urgent_plain_budget_s``; plain otherwise. Post-copy needs both instances up at once and
the job's directory shared between them: a move whose storage moves is always plain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from outgrow.errors import ValidationError

MoveMode = Literal["plain", "postcopy"]
MoveModeChoice = Literal["auto", "plain", "postcopy"]
MOVE_MODE_CHOICES: tuple[str, ...] = get_args(MoveModeChoice)

GIB = 1024**3
POSTCOPY_MIN_BYTES = 1 * GIB
# Measured (docs/benchmarks.md): a plain move stops the job ≈ 4.2 s per GiB here.
PLAIN_BYTES_PER_S = 0.25e9
URGENT_PLAIN_BUDGET_S = 2.0
URGENT_RULES = ("evadeOOM", "reclaim")


@dataclass(frozen=True)
class ModeDecision:
    mode: MoveMode
    reason: str


def parse_move_mode(value: object, field: str = "moveMode") -> MoveModeChoice:
    if not isinstance(value, str) or value.strip().lower() not in MOVE_MODE_CHOICES:
        raise ValidationError(
            f"{field}: expected one of {', '.join(MOVE_MODE_CHOICES)}, got {value!r}",
            field=field,
        )
    choice: MoveModeChoice = value.strip().lower()  # type: ignore[assignment]
    return choice


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def choose_move_mode(
    choice: MoveModeChoice,
    *,
    mem_used_bytes: int,
    rule: str = "",
    storage_moves: bool = False,
    postcopy_min_bytes: int = POSTCOPY_MIN_BYTES,
    urgent_plain_budget_s: float = URGENT_PLAIN_BUDGET_S,
) -> ModeDecision:
    """The mode of one move and why. ``rule``: the policy rule that asked for the move
    (``evadeOOM``, ``reclaim``, ``upper``…; empty for a manual move)."""
    if storage_moves:
        asked = " (post-copy asked)" if choice == "postcopy" else ""
        return ModeDecision(
            "plain", f"plain: the job's directory moves with it, the source must end first{asked}"
        )
    if choice == "plain":
        return ModeDecision("plain", "plain: moveMode=plain")
    if choice == "postcopy":
        return ModeDecision("postcopy", "post-copy: moveMode=postcopy")
    plain_s = mem_used_bytes / PLAIN_BYTES_PER_S
    if mem_used_bytes >= postcopy_min_bytes:
        return ModeDecision(
            "postcopy",
            f"post-copy: {_gib(mem_used_bytes)} in use ≥ {_gib(postcopy_min_bytes)} "
            f"(plain ≈ {plain_s:.1f} s down)",
        )
    if rule in URGENT_RULES and plain_s > urgent_plain_budget_s:
        return ModeDecision(
            "postcopy",
            f"post-copy: urgent ({rule}) and plain ≈ {plain_s:.1f} s down "
            f"> {urgent_plain_budget_s:g} s",
        )
    return ModeDecision(
        "plain", f"plain: {_gib(mem_used_bytes)} in use < {_gib(postcopy_min_bytes)}"
    )
