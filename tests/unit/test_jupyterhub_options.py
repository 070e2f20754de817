"""OutgrowSpawner's translations (outgrow/jupyterhub/options.py): job names, sizes,
profiles, the spawn page's progress."""

from __future__ import annotations

import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.domain.jobs import NAME_RE, EventView
from outgrow.jupyterhub import options as opt

REPO = Path(__file__).resolve().parents[2]


def test_job_names_are_deterministic_valid_and_distinct() -> None:
    assert re.fullmatch(r"hub-alice-[0-9a-f]{16}", opt.job_name("alice"))
    assert re.fullmatch(r"hub-alice-gpu-[0-9a-f]{16}", opt.job_name("alice", "gpu"))
    assert opt.job_name("alice") == opt.job_name("alice")
    odd = ["Ann@x.org", "ann-x-org", "ann@x.org", "a" * 80, "é", "-", "x/y", "alice-gpu"]
    names = {opt.job_name(u) for u in odd} | {opt.job_name("alice", "gpu")}
    # nobody shares a name: not the user alice-gpu and alice's server gpu, not even a
    # user named after another's job (its hash is of the exact names)
    names.add(opt.job_name(opt.job_name("alice", "gpu").removeprefix("hub-")))
    assert len(names) == len(odd) + 2, names
    for n in names:
        assert NAME_RE.match(n) and len(n) <= 63, n


@pytest.mark.parametrize(
    ("guarantee", "limit", "start", "unit", "want"),
    [
        (None, None, 1.0, opt.GIB, "1"),  # starts at 1 GiB, grows as far as the catalog
        (None, 4 * opt.GIB, 1.0, opt.GIB, "1:4"),  # starts small, may grow to the limit
        (None, opt.GIB // 2, 1.0, opt.GIB, "0.5:0.5"),  # a limit below the start: fixed
        (2 * opt.GIB, 8 * opt.GIB, 1.0, opt.GIB, "2:8"),
        (2 * opt.GIB, None, 1.0, opt.GIB, "2"),
        (3 * opt.GIB, 3 * opt.GIB, 1.0, opt.GIB, "3:3"),
        (0.5, 4.0, 1.0, 1.0, "0.5:4"),  # vCPUs
        (None, 0.25, 1.0, 1.0, "0.25:0.25"),
    ],
)
def test_guarantees_and_limits_become_ranges(
    guarantee: float | None, limit: float | None, start: float, unit: float, want: str
) -> None:
    assert opt.size_range(guarantee, limit, start, unit) == want


def test_a_guarantee_above_the_limit_is_an_error() -> None:
    with pytest.raises(ValueError, match="above limit"):
        opt.size_range(4 * opt.GIB, 2 * opt.GIB, 1.0, opt.GIB)


PROFILES = [
    {"display_name": "Small", "description": "1-2 GiB"},
    {
        "display_name": "Big <GPU>",
        "slug": "big",
        "default": True,
        "spawner_override": {"mem_limit": "16G"},
    },
]


def test_profiles_are_checked_and_chosen() -> None:
    ps = opt.profiles(PROFILES)
    assert [p.slug for p in ps] == ["small", "big"]
    assert opt.choose(ps, {}).slug == "big"  # type: ignore[union-attr]  # the default
    assert opt.choose(ps, {"profile": "small"}).slug == "small"  # type: ignore[union-attr]
    assert opt.choose([], {}) is None
    for bad in ({"profile": "nope"}, {"profile": "small", "image": "evil"}):
        with pytest.raises(ValueError):
            opt.choose(ps, bad)
    with pytest.raises(ValueError, match="no profiles"):
        opt.choose([], {"profile": "small"})
    with pytest.raises(ValueError, match="duplicate"):
        opt.profiles([{"display_name": "a"}, {"display_name": "A"}])
    with pytest.raises(ValueError, match="more than one default"):
        opt.profiles([{"display_name": "a", "default": True}, {"display_name": "b", "default": 1}])
    with pytest.raises(ValueError, match="display_name"):
        opt.profiles([{"slug": "x"}])


def test_the_options_form_escapes_and_preselects_the_default() -> None:
    form = opt.options_form(opt.profiles(PROFILES))
    assert 'value="big" checked' in form and 'value="small">' in form
    assert "Big &lt;GPU&gt;" in form and "<GPU>" not in form
    assert opt.options_form([]) == ""  # no profiles: the hub spawns without a form
    assert opt.options_from_form({"profile": ["big"]}) == {"profile": "big"}
    assert opt.options_from_form({}) == {}


def _event(i: int, type_: str, reason: str, to: str | None = None) -> EventView:
    return EventView(id=i, type=type_, time=datetime.now(UTC), reason=reason, to_state=to)


def test_progress_follows_the_job_and_never_goes_back() -> None:
    events = [
        _event(1, "state", "submitted", "Submitted"),
        _event(2, "state", "choosing an instance", "Initializing"),
        _event(3, "info", "preparing image jupyterhub-singleuser"),
        _event(4, "info", "image jupyterhub-singleuser: Collecting jupyterlab"),
        _event(5, "state", "instance a (lc.small)", "Starting"),
        _event(6, "info", "late news"),
        _event(7, "state", "job running", "Executing"),
    ]
    shown, out = 0, []
    for ev in events:
        e = opt.progress_event(ev, shown)
        shown = e["progress"]
        out.append(e)
    pct = [e["progress"] for e in out]
    assert pct == sorted(pct) and pct[-1] == 95 and pct[0] == 5
    assert out[1]["message"] == "Initializing: choosing an instance"
    assert out[3]["message"] == "image jupyterhub-singleuser: Collecting jupyterlab"


def test_the_image_runs_the_jupyterhub_of_the_hub_extra() -> None:
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = set(meta["optional-dependencies"]["hub"]) & set(meta["optional-dependencies"]["dev"])
    hub_pin = next(p for p in pins if p.startswith("jupyterhub=="))
    assert hub_pin in BUILTIN_IMAGES["jupyterhub-singleuser"].pip
    eps = meta["entry-points"]["jupyterhub.spawners"]
    assert eps == {"outgrow": "outgrow.jupyterhub:OutgrowSpawner"}
