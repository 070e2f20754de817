"""The choice between a plain and a post-copy move (domain/movemode.py), with its reason,
and the moveMode policy key."""

from __future__ import annotations

import pytest

from outgrow.domain.movemode import GIB, choose_move_mode, parse_move_mode
from outgrow.domain.policy import MigratePolicy, format_migrate_policy
from outgrow.errors import ValidationError

MIB = 1024**2


def test_auto_moves_a_big_job_post_copy() -> None:
    d = choose_move_mode("auto", mem_used_bytes=4 * GIB)
    assert d.mode == "postcopy"
    assert d.reason == "post-copy: 4.00 GiB in use ≥ 1.00 GiB (plain ≈ 17.2 s down)"


def test_auto_moves_a_small_job_plain() -> None:
    d = choose_move_mode("auto", mem_used_bytes=300 * MIB)
    assert d.mode == "plain"
    assert d.reason == "plain: 0.29 GiB in use < 1.00 GiB"


def test_auto_threshold_is_inclusive_and_configurable() -> None:
    assert choose_move_mode("auto", mem_used_bytes=GIB).mode == "postcopy"
    assert choose_move_mode("auto", mem_used_bytes=GIB - 4096).mode == "plain"
    small = choose_move_mode("auto", mem_used_bytes=200 * MIB, postcopy_min_bytes=128 * MIB)
    assert small.mode == "postcopy"


@pytest.mark.parametrize("rule", ["evadeOOM", "reclaim"])
def test_auto_urgent_move_goes_post_copy_when_plain_would_be_slow(rule: str) -> None:
    d = choose_move_mode("auto", mem_used_bytes=700 * MIB, rule=rule)
    assert d.mode == "postcopy"
    assert d.reason == f"post-copy: urgent ({rule}) and plain ≈ 2.9 s down > 2 s"
    # Quick enough plain: no need to risk the job.
    assert choose_move_mode("auto", mem_used_bytes=300 * MIB, rule=rule).mode == "plain"


def test_a_non_urgent_rule_does_not_lower_the_threshold() -> None:
    assert choose_move_mode("auto", mem_used_bytes=700 * MIB, rule="upper").mode == "plain"


def test_explicit_modes_win_over_size() -> None:
    assert choose_move_mode("plain", mem_used_bytes=8 * GIB).reason == "plain: moveMode=plain"
    pc = choose_move_mode("postcopy", mem_used_bytes=10 * MIB)
    assert (pc.mode, pc.reason) == ("postcopy", "post-copy: moveMode=postcopy")


@pytest.mark.parametrize("choice", ["auto", "postcopy", "plain"])
def test_moving_storage_is_always_plain(choice: str) -> None:
    d = choose_move_mode(choice, mem_used_bytes=8 * GIB, storage_moves=True)  # type: ignore[arg-type]
    assert d.mode == "plain"
    assert d.reason.startswith("plain: the job's directory moves with it")
    assert d.reason.endswith("(post-copy asked)") == (choice == "postcopy")


def test_parse_move_mode() -> None:
    assert parse_move_mode(" PostCopy ") == "postcopy"
    with pytest.raises(ValidationError, match=r"^moveMode: expected one of auto, plain, postcopy"):
        parse_move_mode("fast")
    with pytest.raises(ValidationError):
        parse_move_mode(1)


def test_move_mode_in_the_migrate_policy() -> None:
    assert MigratePolicy().move_mode == "auto"
    p = MigratePolicy.parse("[moveMode=plain]")
    assert p.move_mode == "plain"
    assert format_migrate_policy(p) == "[moveMode=plain]"
    assert p.to_mapping() == {"moveMode": "plain"}
    assert MigratePolicy.from_mapping({"moveMode": "postcopy"}).move_mode == "postcopy"
    with pytest.raises(ValidationError) as exc:
        MigratePolicy.parse("[moveMode=lazy]")
    assert exc.value.field == "migratePolicy.moveMode"
