"""The SDK without a server (httpx.MockTransport): error mapping, requests, wait(); the pure
parts of `outgrow submit` (flags and YAML job files → JobSpec); CLI output over a fake API."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from outgrow import credentials
from outgrow.cli import remote
from outgrow.cli.jobspec import (
    build_spec,
    load_job_file,
    merge_fields,
    parse_cidrs,
    parse_env,
    parse_idle,
    parse_publish,
    template_overrides,
)
from outgrow.cli.main import cli
from outgrow.cli.render import event_change, fmt_duration, jobs_table, uptime
from outgrow.client import (
    APIAuthError,
    APICapacityError,
    APIConflictError,
    APIError,
    APINotFoundError,
    APIValidationError,
    Client,
    ConnectError,
    JobFailed,
    WaitTimeout,
    error_from_response,
)
from outgrow.domain.jobs import EventView, JobSpec, JobView
from outgrow.errors import (
    AuthError,
    CapacityError,
    ConflictError,
    NotFoundError,
    OutgrowError,
    ValidationError,
)

URL = "http://cp.test:8610"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(autouse=True)
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("OUTGROW_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client(URL, "og_secret", transport=httpx.MockTransport(handler))


def answer(status: int, body: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _req: httpx.Response(status, json=body)


def job_json(status: str = "Executing", **extra: Any) -> dict[str, Any]:
    spec = {"name": "nb", "image": "jupyter-server", "mem": "0.5"}
    inst = {
        "id": "og1-i1",
        "type": "lc.micro",
        "vcpus": 1,
        "memory_gib": 0.5,
        "spot": False,
        "address": "198.18.0.2",
        "price_per_hour": 0.0084,
        "started_at": "2026-01-02T03:00:00Z",
        "status": "normal",
        "cost_usd": 0.0006,
    }
    out = {
        "id": "j0123456789",
        "name": "nb",
        "owner": "admin",
        "status": status,
        "image": "jupyter-server",
        "spec": spec,
        "run": 1,
        "instance": inst,
        "instances": [inst],
        "url": "http://cp.test:8610/jobs/j0123456789/",
        "cost_usd": 0.0006,
        "submitted_at": "2026-01-02T03:00:00Z",
        "updated_at": "2026-01-02T03:01:00Z",
        "events": [],
    }
    return {**out, **extra}


def state_event(eid: int, frm: str, to: str, reason: str = "") -> dict[str, Any]:
    return {
        "id": eid,
        "type": "state",
        "time": "2026-01-02T03:00:00Z",
        "reason": reason,
        "from_state": frm,
        "to_state": to,
    }


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls", "base"),
    [
        (401, "unauthorized", APIAuthError, AuthError),
        (404, "not_found", APINotFoundError, NotFoundError),
        (409, "conflict", APIConflictError, ConflictError),
        (409, "no_capacity", APICapacityError, CapacityError),
        (422, "invalid", APIValidationError, ValidationError),
        (500, "internal", APIError, OutgrowError),
    ],
)
def test_error_mapping(status: int, code: str, cls: type[APIError], base: type[Exception]) -> None:
    body = {"error": code, "message": "mem: bad range", "field": "mem"}
    with pytest.raises(cls) as info:
        client(answer(status, body)).job("nb")
    exc = info.value
    assert type(exc) is cls and isinstance(exc, base) and isinstance(exc, OutgrowError)
    assert (exc.message, exc.field, exc.status_code, exc.remote_code) == (
        "mem: bad range",
        "mem",
        status,
        code,
    )
    if status != 500:
        assert not (status != 409 and isinstance(exc, ConflictError))


def test_error_without_field_or_json() -> None:
    exc = error_from_response(httpx.Response(404, json={"error": "not_found", "message": "no"}))
    assert isinstance(exc, NotFoundError) and exc.field is None
    exc = error_from_response(httpx.Response(502, text="<html>Bad   gateway</html>"))
    assert type(exc) is APIError and exc.message == "HTTP 502 Bad Gateway: <html>Bad gateway</html>"
    exc = error_from_response(httpx.Response(405, json={"detail": "Method Not Allowed"}))
    assert exc.message == "Method Not Allowed"


def test_unreachable_control_plane() -> None:
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=req)

    with pytest.raises(ConnectError) as info:
        client(refuse).jobs()
    assert str(info.value) == (
        f"cannot reach the control plane at {URL}: [Errno 111] Connection refused; "
        "is `outgrow up` running?"
    )


def test_credentials_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AuthError, match="not logged in"):
        Client()
    path = credentials.save(credentials.Credentials(URL + "/", "og_file"))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    c = Client()
    assert (c.url, c.token) == (URL, "og_file")
    monkeypatch.setenv("OUTGROW_TOKEN", "og_env")
    assert Client().token == "og_env"
    assert Client("http://other:1").url == "http://other:1"


# ---- requests -------------------------------------------------------------------------------


def test_requests_and_views() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        if req.url.path == "/api/v1/jobs" and req.method == "GET":
            return httpx.Response(200, json=[job_json()])
        if req.url.path == "/api/v1/jobs" and req.method == "POST":
            return httpx.Response(201, json=job_json("Submitted"))
        if req.url.path.endswith("/migrate"):
            return httpx.Response(202, json=job_json())
        if req.url.path == "/api/v1/tokens":
            return httpx.Response(
                201,
                json={"token": "og_new", "id": 3, "name": "ci", "prefix": "og_ne",
                      "created_at": "2026-01-02T03:00:00Z"},
            )  # fmt: skip
        if req.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(404, json={"error": "not_found", "message": "no"})

    c = client(handler)
    jobs = c.jobs(["Executing", "Suspended"])
    assert isinstance(jobs[0], JobView) and jobs[0].instance is not None
    assert seen[-1].url.query == b"status=Executing&status=Suspended"
    assert seen[-1].headers["authorization"] == "Bearer og_secret"
    job = c.submit(JobSpec(name="nb", image="jupyter-server", mem="0.5"))
    assert job.status == "Submitted"
    body = json.loads(seen[-1].content)
    assert body["name"] == "nb" and body["mem"] == "0.5" and body["migrate_policy"] == "[]"
    c.submit_template("tpl", {"name": "other"})
    assert json.loads(seen[-1].content) == {"template": "tpl", "overrides": {"name": "other"}}
    c.migrate("nb", mem=1)
    assert seen[-1].url.path == "/api/v1/jobs/nb/migrate"
    assert json.loads(seen[-1].content) == {"mem": 1}
    view, secret = c.create_token("ci")
    assert (view.id, view.name, secret) == (3, "ci", "og_new")
    c.delete_template("a b/c")
    assert seen[-1].url.raw_path == b"/api/v1/templates/a%20b%2Fc"


def test_wait_follows_the_event_log() -> None:
    events = [
        state_event(1, "Submitted", "Initializing"),
        state_event(2, "Initializing", "Starting", "instance og1-i1"),
        state_event(3, "Starting", "Executing", "job running"),
    ]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/events"):
            since = int(req.url.params["since"])
            return httpx.Response(200, json=[e for e in events if e["id"] > since])
        return httpx.Response(200, json=job_json("Submitted"))

    changes: list[tuple[str, int | None]] = []
    job = client(handler).wait(
        "nb", {"Executing"}, timeout=5, on_change=lambda s, e: changes.append((s, e and e.id))
    )
    assert job.id == "j0123456789"
    assert changes == [("Submitted", None), ("Initializing", 1), ("Starting", 2), ("Executing", 3)]


def test_wait_failure_and_timeout() -> None:
    events = [
        state_event(5, "Executing", "Suspending"),
        state_event(6, "Suspending", "Executing", "suspend failed, job kept running: boom"),
    ]

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/events"):
            since = int(req.url.params["since"])
            return httpx.Response(200, json=[e for e in events if e["id"] > since])
        return httpx.Response(200, json=job_json("Executing"))

    c = client(handler)
    with pytest.raises(JobFailed, match="is Executing: suspend failed, job kept running: boom"):
        c.wait("nb", {"Suspended"}, timeout=5, after_event=4, fail_on={"Executing"})
    with pytest.raises(WaitTimeout, match=r"timed out after 0.3 s .* to be Suspended"):
        c.wait("nb", {"Suspended"}, timeout=0.3, after_event=6, fail_on={"Executing"})
    # Without after_event a job already in a wanted status returns at once.
    assert c.wait("nb", {"Executing"}, timeout=0.1).status == "Executing"


# ---- submit: flags and files ----------------------------------------------------------------


def test_flag_parsers() -> None:
    assert parse_env(("A=1", "B=x=y", "C=")) == {"A": "1", "B": "x=y", "C": ""}
    assert parse_publish(["8888:8888", "080:80"]) == ["8888:8888", "80:80"]
    assert parse_cidrs(["10.1.2.3/8", "::1"]) == ["10.0.0.0/8", "::1/128"]
    assert parse_idle("2h") == 7200 and parse_idle("30m") == 1800 and parse_idle("0") == 0
    for bad, fn in (("X", parse_env), ("88", parse_publish), ("0:1", parse_publish)):
        with pytest.raises(ValueError):
            fn([bad])
    with pytest.raises(ValueError, match="invalid duration '2x'"):
        parse_idle("2x")


def test_yaml_job_file_seed_spellings(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("print('hi')\n")
    f = tmp_path / "job.yaml"
    f.write_text(
        "name: etl\nimage: python\nscriptFile: job.py\ncpu: 2\nmem: 4:16\n"
        "migratePolicy:\n  mem: {upperBoundRatio: 80, step: 100}\n  evadeOOM: true\n"
        "vmPolicy: '[onDemand=true]'\nenv: [A=1]\npublish: [8080:80]\nallowCidr: 10.0.0.0/8\n"
        "idleTimeout: 30m\n"
    )
    data = load_job_file(f)
    spec = build_spec(data)
    assert spec.script == "print('hi')\n" and spec.cpu == "2" and spec.mem == "4:16"
    assert spec.migrate_policy == "[mem.upperBoundRatio=80,mem.step=100]"
    assert spec.vm().mode == "onDemand"
    assert (spec.env, spec.publish, spec.allow_cidr) == ({"A": "1"}, ["8080:80"], ["10.0.0.0/8"])
    assert spec.idle_timeout_s == 1800
    # Flags override the file; env merges key by key.
    merged = merge_fields(data, {"name": "etl2", "mem": "8", "env": {"B": "2"}, "cpu": None})
    spec = build_spec(merged)
    assert (spec.name, spec.mem, spec.cpu, spec.env) == ("etl2", "8", "2", {"A": "1", "B": "2"})
    # Template overrides: only given fields; policy mappings become bracket strings.
    assert template_overrides({"migratePolicy": None} | {"mem": 2}) == {
        "migratePolicy": None,
        "mem": "2",
    }
    assert template_overrides({"migrate_policy": {"evadeOOM": False}}) == {
        "migrate_policy": "[evadeOOM=false]"
    }


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("name: a\nimage: python\nmigratePolicy: '[mem.stp=1]'\n", "migratePolicy.mem.stp", "stp"),
        ("name: a\nimage: python\nmem: 8:2\n", "mem", "max 2 is below min 8"),
        ("name: a\nimage: python\ncolour: red\n", "colour", "unknown field 'colour'"),
        ("name: a\nimage: python\npublish: [88]\n", "publish", "HOSTPORT:JOBPORT"),
        ("name: -a\nimage: python\n", "name", "name must be"),
        ("image: python\n", "name", "a job needs a name: give -n NAME"),
        ("name: a\n", "image", "give -i IMAGE"),
        ("[1, 2]\n", "file", "must be a mapping"),
        ("name: a\n  image: b\n", "file", "not valid YAML (line 2)"),
        ("name: a\nimage: python\nidleTimeout: soon\n", "idle_timeout_s", "invalid duration"),
    ],
)
def test_job_file_errors_name_the_field(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    f = tmp_path / "job.yaml"
    f.write_text(text)
    with pytest.raises(ValidationError) as info:
        build_spec(load_job_file(f))
    assert info.value.field == field
    assert message in str(info.value)


# ---- human output ---------------------------------------------------------------------------


def test_render_helpers() -> None:
    assert [fmt_duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]
    job = JobView.model_validate(job_json("Completed"))
    assert uptime(job) == 60  # finished: submitted → last update
    ev = EventView.model_validate(
        {"id": 1, "type": "migration", "time": NOW, "reason": "mem 71% > 60% for 2 s",
         "from_type": "lc.micro", "to_type": "lc.small", "downtime_s": 0.4321,
         "checkpoint_bytes": 300 * 1024**2}
    )  # fmt: skip
    assert event_change(ev) == "lc.micro → lc.small, 0.43 s down, 300.0 MiB"
    table = jobs_table([job])
    assert [c.header for c in table.columns] == [
        "name", "id", "image", "status", "type", "size", "uptime", "cost"
    ]  # fmt: skip


# ---- the CLI over a fake API ----------------------------------------------------------------


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        path = req.url.path
        if path == "/api/v1/jobs" and req.method == "GET":
            return httpx.Response(200, json=[job_json(), job_json("Suspended", id="j2", name="b")])
        if path == "/api/v1/jobs/nb":
            return httpx.Response(200, json=job_json())
        if path == "/api/v1/jobs" and req.method == "POST":
            return httpx.Response(
                422,
                json={"error": "invalid", "message": "mem: no instance type fits", "field": "mem"},
            )
        return httpx.Response(404, json={"error": "not_found", "message": f"no job {path!r}"})

    monkeypatch.setattr(
        remote, "Client", lambda: Client(URL, "og_x", transport=httpx.MockTransport(handler))
    )
    yield seen


def test_cli_over_fake_api(fake_api: list[httpx.Request]) -> None:
    run = CliRunner()
    r = run.invoke(cli, ["ls"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].split() == ["name", "id", "image", "status", "type", "size", "uptime", "cost"]
    assert rows[1].split()[:5] == ["nb", "j0123456789", "jupyter-server", "Executing", "lc.micro"]
    assert "Suspended" in rows[2]
    r = run.invoke(cli, ["show", "nb", "--json"], catch_exceptions=False)
    data = json.loads(r.stdout)
    assert data["instance"]["type"] == "lc.micro" and data["url"].endswith("/jobs/j0123456789/")
    r = run.invoke(cli, ["show", "nb"], catch_exceptions=False)
    assert "http://cp.test:8610/jobs/j0123456789/" in r.stdout and "instances" in r.stdout
    r = run.invoke(cli, ["submit", "-n", "x", "-i", "python", "-m", "900", "--script", __file__])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == "outgrow: error: mem: no instance type fits\n"
    r = run.invoke(cli, ["suspend", "zz"])
    assert r.exit_code == 1 and r.stderr == "outgrow: error: no job '/api/v1/jobs/zz'\n"
