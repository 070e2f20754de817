"""The control plane for real: REST API → service → store + local instances + agents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cp_server import Server, control_plane
from waiting import wait_for_value

pytestmark = [pytest.mark.root, pytest.mark.slow]

COUNTER = (
    "import time\ni = 0\nwhile True:\n    i += 1\n    print(i, flush=True)\n    time.sleep(0.1)\n"
)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with control_plane(tmp_path_factory.mktemp("cp")) as server:
        yield server


def counts(cp: Server, job: str) -> list[int]:
    return [int(x) for x in cp.get(f"/jobs/{job}/logs").json()["data"].split()]


def test_every_route_needs_auth(cp: Server) -> None:
    spec = httpx.get(cp.api + "/openapi.json", timeout=10).json()
    open_routes = {
        ("/api/v1/health", "get"),
        ("/api/v1/login", "post"),
        ("/api/v1/session", "post"),
    }
    checked = 0
    for path, ops in spec["paths"].items():
        for method in ops:
            if path == "/api/v1/session":
                continue  # SESSION-CHECK
            url = cp.url + path.replace("{ref}", "x").replace("{name}", "x").replace(
                "{token_id}", "1"
            )
            for headers in ({}, {"Authorization": "Bearer og_not-a-real-token"}):
                r = httpx.request(method.upper(), url, headers=headers, timeout=10)
                if (path, method) in open_routes:
                    assert r.status_code != 401
                else:
                    assert r.status_code == 401, (method, path, r.status_code, r.text)
                    assert r.json()["error"] == "unauthorized"
            checked += 1
    r = httpx.get(cp.url + "/metrics", timeout=10)
    assert r.status_code == 401
    assert checked >= 25


def test_bad_input_is_a_precise_4xx(cp: Server) -> None:
    cases = [
        (
            {
                "name": "a",
                "image": "python",
                "script": "x",
                "migrate_policy": "[mem.upperBoundRato=9]",
            },
            "upperBoundRato",
        ),
        ({"name": "a", "image": "python", "script": "x", "mem": "8:2"}, "mem"),
        ({"name": "a", "image": "nope", "script": "x"}, "image"),
        ({"name": "a", "image": "python"}, "script"),
        ({"name": "-bad", "image": "python", "script": "x"}, "name"),
        ({"name": "a", "image": "python", "script": "x", "vm_policy": "spotFirst=true"}, "vm"),
        ({"name": "a", "image": "python", "script": "x", "instance_type": "huge"}, "huge"),
        ({"name": "a", "image": "python", "script": "x", "publish": ["88"]}, "publish"),
        ({"name": "a", "image": "python", "script": "x", "colour": "red"}, "colour"),
    ]
    for body, needle in cases:
        r = cp.post("/jobs", body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        err = r.json()
        assert err["error"] in ("invalid", "not_found") and needle in r.text, (body, err)
    assert cp.get("/jobs/does-not-exist").status_code == 404
    assert cp.post("/jobs/does-not-exist/migrate", {"mem": 2}).status_code == 404
    assert cp.get("/jobs", params={"status": "Sleeping"}).status_code == 422


def test_job_lifecycle_migrate_suspend_resume_cancel_restart(cp: Server) -> None:
    r = cp.post(
        "/jobs",
        {"name": "counter", "image": "python", "script": COUNTER, "cpu": "0.25", "mem": "0.25"},
    )
    assert r.status_code == 201, r.text
    job = r.json()["id"]
    assert (
        cp.post("/jobs", {"name": "counter", "image": "python", "script": COUNTER}).status_code
        == 409
    )  # duplicate name
    j = cp.wait(job, {"Executing"})
    assert j["instance"]["type"] == "lc.nano" and j["run"] == 1

    r = cp.post(f"/jobs/{job}/migrate", {"mem": 1})
    assert r.status_code == 202
    assert cp.post(f"/jobs/{job}/suspend").status_code in (202, 409)  # busy or not legal
    j = cp.wait(job, {"Executing"}, timeout=60)
    deadline_events = [
        e for e in cp.get(f"/jobs/{job}").json()["events"] if e["type"] == "migration"
    ]
    j = cp.wait(job, {"Executing"})
    moves = [e for e in cp.get(f"/jobs/{job}").json()["events"] if e["type"] == "migration"]
    assert len(moves) >= 1 or deadline_events
    mv = moves[-1]
    assert (mv["from_type"], mv["to_type"]) == ("lc.nano", "lc.small")
    assert mv["downtime_s"] > 0 and mv["checkpoint_bytes"] > 0 and "manual" in mv["reason"]
    states = [
        (e["from_state"], e["to_state"])
        for e in cp.get(f"/jobs/{job}").json()["events"]
        if e["type"] == "state"
    ]
    assert ("Executing", "Floating") in states and ("Floating", "Executing") in states

    # Suspend releases the instance (cost stops); resume restores the same process.
    before = counts(cp, job)[-1]
    assert cp.post(f"/jobs/{job}/suspend").status_code == 202
    j = cp.wait(job, {"Suspended"})
    assert j["instance"] is None
    assert cp.post(f"/jobs/{job}/migrate", {"mem": 2}).status_code == 409  # illegal now
    assert cp.post(f"/jobs/{job}/resume").status_code == 202
    j = cp.wait(job, {"Executing"})
    assert j["instance"]["type"] == "lc.small"
    nums = wait_for_value(
        lambda: counts(cp, job),
        lambda nums: nums[-1] > before,
        timeout=30,
        what=f"the resumed job to count past {before}",
    )
    assert nums == list(range(1, len(nums) + 1)) and nums[-1] > before

    # Samples are ingested asynchronously (about every second, not while an action runs):
    # on a loaded machine the first may come a few seconds after the resume.
    m = wait_for_value(
        lambda: cp.get(f"/jobs/{job}/metrics").json(),
        lambda m: m["points"],
        timeout=20,
        interval=0.2,
        what="metrics to be recorded for the job",
    )
    assert m["thresholds"]["mem_upper_ratio"] == 90
    assert {p["instance_id"] for p in m["points"]} <= {i["id"] for i in j["instances"]}

    assert cp.post(f"/jobs/{job}/cancel").status_code == 202
    j = cp.wait(job, {"Cancelled"})
    assert all(i["ended_at"] for i in j["instances"]) and j["cost_usd"] > 0
    assert [i["status"] for i in j["instances"]] == ["migrated-from", "released", "released"]

    assert cp.post(f"/jobs/{job}/restart").status_code == 202
    j = cp.wait(job, {"Executing"})
    assert j["run"] == 2
    cp.post(f"/jobs/{job}/cancel")
    cp.wait(job, {"Cancelled"})


def test_other_users_jobs_do_not_exist_for_them(cp: Server) -> None:
    r = cp.post("/users", {"name": "bob", "password": "bob-password-1"})
    assert r.status_code == 201, r.text
    bob = httpx.post(
        cp.api + "/login", json={"name": "bob", "password": "bob-password-1"}, timeout=10
    ).json()["token"]
    assert (
        httpx.post(
            cp.api + "/login", json={"name": "bob", "password": "wrong"}, timeout=10
        ).status_code
        == 401
    )
    r = cp.post("/jobs", {"name": "mine", "image": "python", "script": "print(1)"})
    job = r.json()["id"]
    for path in (
        f"/jobs/{job}",
        f"/jobs/{job}/logs",
        f"/jobs/{job}/metrics",
        f"/jobs/{job}/events",
    ):
        r = cp.get(path, token=bob)
        assert r.status_code == 404, (path, r.text)
    assert cp.post(f"/jobs/{job}/cancel", token=bob).status_code == 404
    assert cp.get("/jobs", token=bob).json() == []
    assert (
        cp.post("/users", {"name": "eve", "password": "eve-password-1"}, token=bob).status_code
        == 401
    )
    cp.wait(job, {"Completed"})


def test_templates_images_and_instance_types(cp: Server, tmp_path: Path) -> None:
    types = cp.get("/instance-types").json()
    assert types[0]["name"] == "lc.nano" and {"price_per_hour", "spot_price_per_hour"} <= set(
        types[0]
    )
    r = cp.post("/images", {"name": "py-six", "pip": "six==1.16.0", "base": "python"})
    assert r.status_code == 201, r.text
    assert "six==1.16.0" in r.json()["pip"]
    assert cp.post("/images", {"name": "py-six", "pip": "six"}).status_code == 409
    assert cp.post("/images", {"name": "bad", "pip": "-e ."}).status_code == 422
    r = cp.post(
        "/jobs",
        {
            "name": "six",
            "image": "py-six",
            "mem": "0.25",
            "script": "import six\nprint('six', six.__version__)\n",
        },
    )
    job = r.json()["id"]
    j = cp.wait(job, {"Completed", "FailToComplete", "FailToExecute"}, timeout=300)
    assert j["status"] == "Completed", j["status_reason"]
    assert "six 1.16.0" in cp.get(f"/jobs/{job}/logs").json()["data"]
    r = cp.post(f"/jobs/{job}/template", {"name": "six-t"})
    assert r.status_code == 201
    r = cp.post("/jobs", {"template": "six-t", "overrides": {"name": "six2"}})
    assert r.status_code == 201, r.text
    j2 = cp.wait(r.json()["id"], {"Completed"}, timeout=120)
    assert j2["spec"]["script"] == j["spec"]["script"] and j2["name"] == "six2"
    assert [t["name"] for t in cp.get("/templates").json()] == ["six-t"]
    assert (
        httpx.delete(cp.api + "/templates/six-t", headers=cp.headers(), timeout=10).status_code
        == 204
    )
    assert cp.get("/templates/six-t").status_code == 404
