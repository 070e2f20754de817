"""The fault matrix's registry: :data:`ROWS`, in the order `make faults` runs them, each
a :class:`Row` whose function gets a started :class:`harness.World` and returns the
:class:`harness.Outcome` it checked (raising :class:`harness.RowFailed` when the job was
lost, duplicated, restarted or left wrong). The rows themselves: rows_moves.py (the
control plane, agents, CRIU, the page server, disks and networks failing around a move)
and rows_api.py (API races, memory, control planes, the database, the host restarting)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import Outcome, World

RowFn = Callable[[World], Outcome]


@dataclass(frozen=True)
class Row:
    key: str
    fault: str
    phase: str
    test: str  # the test of `make test` covering this row ("" if only here)
    fn: RowFn | None  # None: a row registered ahead of the feature it needs
    pending: str = ""  # why fn is None
    env: dict[str, str] = field(default_factory=dict)  # extra OUTGROW_* of the row's server
    tmpfs_mib: int = 0  # the row's data dir on a tmpfs of this size (disk full) …
    tmpfs_at: str = ""  # … or only this directory of it
    known_bug: str = ""  # a failure found and not fixed yet (tests: strict xfail)


# The registry: `make faults` runs these in this order. A row for a feature that is not
# there yet is registered with fn=None and its reason, so the table shows the gap.
ROWS: list[Row] = []


def row(key: str, fault: str, phase: str, test: str = "", **kw: Any) -> Callable[[RowFn], RowFn]:
    def add(fn: RowFn) -> RowFn:
        ROWS.append(Row(key, fault, phase, test.format(key=key), fn, **kw))
        return fn

    return add


T_RECONCILE = "tests/root/test_reconcile.py::test_kill9_during_executing_and_floating"
T_FAULTS = "tests/root/test_faults.py::test_fault[{key}]"
