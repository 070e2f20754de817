"""When a periodic snapshot is due (domain/snapshots.py), and the checkpoint_interval
field of a job spec (YAML, CLI units, off)."""

from __future__ import annotations

import pytest

from outgrow.domain.jobs import JobSpec, spec_from_mapping
from outgrow.domain.snapshots import (
    RETRY_AFTER_FAILURE_S,
    effective_interval,
    format_interval,
    parse_interval,
    snapshot_due,
)
from outgrow.domain.states import JobState as S
from outgrow.errors import ValidationError

T0 = 1_700_000_000.0
M15 = 900.0

# (now, status, interval, last snapshot, running since, busy, last failure) → due, reason part
CASES = [
    ("first, interval not yet up", T0 + 899, S.EXECUTING, M15, None, T0, False, None,
     False, "next snapshot in 1 s"),
    ("first, interval up since it began running", T0 + 900, S.EXECUTING, M15, None, T0,
     False, None, True, "since the job began running here"),
    ("since the last snapshot", T0 + 1100, S.EXECUTING, M15, T0 + 1000, T0, False, None,
     False, "next snapshot in 800 s"),
    ("last snapshot old enough", T0 + 1900, S.EXECUTING, M15, T0 + 1000, T0, False, None,
     True, "since the last snapshot"),
    ("a move since the last snapshot restarts the clock", T0 + 1900, S.EXECUTING, M15,
     T0 + 1000, T0 + 1500, False, None, False, "next snapshot in 500 s"),
    ("off", T0 + 10**6, S.EXECUTING, 0.0, None, T0, False, None, False, "off"),
    ("not while floating", T0 + 10**6, S.FLOATING, M15, None, T0, False, None, False,
     "Floating"),
    ("not while suspended", T0 + 10**6, S.SUSPENDED, M15, None, T0, False, None, False,
     "Suspended"),
    ("not while another action holds the job", T0 + 10**6, S.EXECUTING, M15, None, T0, True,
     None, False, "another action"),
    ("a failure waits before the next try", T0 + 1000, S.EXECUTING, M15, None, T0, False,
     T0 + 950, False, "last snapshot failed"),
    ("and then retries", T0 + 950 + RETRY_AFTER_FAILURE_S, S.EXECUTING, M15, None, T0, False,
     T0 + 950, True, "retrying"),
    ("a short interval retries sooner", T0 + 100, S.EXECUTING, 60.0, None, T0, False,
     T0 + 39, True, "retrying"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_snapshot_due(case: tuple) -> None:
    _, now, status, interval, last, since, busy, failed, due, reason = case
    d = snapshot_due(now, status, interval, last, since, busy=busy, last_failure_at=failed)
    assert d.due is due, d.reason
    assert reason in d.reason


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15m", 900.0), ("1h30m", 5400.0), ("900", 900.0), (600, 600.0), ("off", 0.0),
     ("0", 0.0), (0, 0.0), ("", None), (None, None)],
)  # fmt: skip
def test_parse_interval(text: str | float | None, seconds: float | None) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "-1", "soon", "3s"])
def test_bad_intervals_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_interval(bad)
    assert e.value.field == "checkpoint_interval"


def test_default_is_on_for_jupyter_and_off_for_batch() -> None:
    assert effective_interval(None, True, M15) == M15
    assert effective_interval(None, False, M15) == 0.0
    assert effective_interval(0.0, True, M15) == 0.0
    assert effective_interval(120.0, False, M15) == 120.0
    assert [format_interval(x) for x in (None, 0.0, 900.0, 3600.0, 90.0)] == [
        "default", "off", "15m", "1h", "90s"
    ]  # fmt: skip


def test_job_spec_takes_the_interval_from_yaml_spellings() -> None:
    spec = spec_from_mapping({"name": "nb", "image": "jupyter", "checkpointInterval": "30m"})
    assert spec.checkpoint_interval == 1800.0
    assert JobSpec(name="b", image="python", checkpoint_interval="off").checkpoint_interval == 0
    assert JobSpec(name="b", image="python").checkpoint_interval is None
    with pytest.raises(ValidationError) as e:
        spec_from_mapping({"name": "nb", "image": "jupyter", "checkpoint_interval": "often"})
    assert e.value.field == "checkpoint_interval"
    assert "invalid duration 'often'" in str(e.value)
