"""The `outgrow` CLI without root: catalog and image listings, option validation, the
one-line error contract, and the type choices of the runner (no instances are created)."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path
from typing import ClassVar

import click
import pytest
from click.testing import CliRunner, Result

from outgrow import __version__
from outgrow.agent.images import ImageCache
from outgrow.cli.local import resolve_run
from outgrow.cli.main import ROOT_MESSAGE, cli
from outgrow.controlplane.foreground import choose_type
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.domain.policy import parse_cpu_range, parse_mem_range
from outgrow.domain.rules import Context, EvadeOomRule, Sample
from outgrow.errors import NotFoundError, ValidationError
from outgrow.providers.local.provider import packaged_catalog

CATALOG = packaged_catalog()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Settings pointing at a temporary data dir; no OUTGROW_* from the caller's shell and
    no credentials (XDG_CONFIG_HOME is empty), so nothing talks to a control plane."""
    for k in list(os.environ):
        if k.startswith("OUTGROW_"):
            monkeypatch.delenv(k)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return {"OUTGROW_DATA_DIR": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(config)}


def invoke(args: list[str], env: dict[str, str]) -> Result:
    # click >= 8.2: stdout and stderr are always captured apart (`mix_stderr` is gone);
    # result.output is both interleaved.
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def one_error_line(r: Result) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("outgrow: error: "), lines[0]
    assert r.stdout == ""
    return lines[0].removeprefix("outgrow: error: ")


def test_version(env: dict[str, str]) -> None:
    r = invoke(["--version"], env)
    assert r.exit_code == 0
    assert r.stdout.strip() == f"outgrow, version {__version__}"


def test_instance_types_table(env: dict[str, str]) -> None:
    r = invoke(["instance-types"], env)
    assert r.exit_code == 0, r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("│")]
    assert len(rows) == len(CATALOG) == 8
    for row, t in zip(rows, CATALOG.types, strict=True):
        cells = [c.strip() for c in row.strip("│").split("│")]
        assert cells == [
            t.name,
            f"{t.vcpus:g}",
            f"{t.memory_gib:g}",
            f"{t.price_per_hour:.4f}",
            f"{t.spot_price_per_hour:.4f}",
        ]
    assert "memory (GiB)" in r.stdout and "spot $/h" in r.stdout
    assert r.stderr == "instance types from the local catalog (local; not logged in)\n"


def test_instance_types_json(env: dict[str, str]) -> None:
    r = invoke(["instance-types", "--json"], env)
    assert r.exit_code == 0 and r.stderr == ""
    data = json.loads(r.stdout)
    assert [d["name"] for d in data] == [t.name for t in CATALOG.types]
    small = next(d for d in data if d["name"] == "lc.small")
    assert small == {
        "name": "lc.small",
        "vcpus": 1.0,
        "memory_gib": 1.0,
        "price_per_hour": 0.0168,
        "spot_price_per_hour": 0.005,
    }
    for d, t in zip(data, CATALOG.types, strict=True):
        assert (d["vcpus"], d["memory_gib"], d["price_per_hour"]) == (
            t.vcpus,
            t.memory_gib,
            t.price_per_hour,
        )


def test_instance_types_from_catalog_path(env: dict[str, str], tmp_path: Path) -> None:
    cat = tmp_path / "cat.yaml"
    cat.write_text("types:\n  - {name: t.one, vcpus: 3, memory_gib: 6, price_per_hour: 0.5}\n")
    r = invoke(["instance-types", "--json"], {**env, "OUTGROW_CATALOG_PATH": str(cat)})
    assert r.exit_code == 0
    assert json.loads(r.stdout) == [
        {
            "name": "t.one",
            "vcpus": 3.0,
            "memory_gib": 6.0,
            "price_per_hour": 0.5,
            "spot_price_per_hour": None,
        }
    ]
    r = invoke(["instance-types"], {**env, "OUTGROW_CATALOG_PATH": str(tmp_path / "nope.yaml")})
    assert r.exit_code == 1
    assert "nope.yaml" in one_error_line(r)


def test_image_cache_json(env: dict[str, str], tmp_path: Path) -> None:
    cache_dir = tmp_path / "images"
    cache = ImageCache(cache_dir)
    # A fake completed build of `python` (no pip run in unit tests).
    h = cache.hash_of(BUILTIN_IMAGES["python"])
    (cache_dir / h).mkdir(parents=True)
    meta = {"hash": h, "built_at": "2026-01-02T03:04:05+00:00", "build_seconds": 12.3}
    (cache_dir / h / "image.json").write_text(json.dumps({**meta, "size_bytes": 4096}))
    (cache_dir / h / ".complete").write_text("x\n")
    r = invoke(["image", "cache", "--json"], {**env, "OUTGROW_IMAGE_CACHE_DIR": str(cache_dir)})
    assert r.exit_code == 0, r.stderr
    data = {d["name"]: d for d in json.loads(r.stdout)}
    assert list(data) == list(BUILTIN_IMAGES)
    for name, spec in BUILTIN_IMAGES.items():
        d = data[name]
        assert d["kind"] == spec.kind and d["pip"] == list(spec.pip)
        assert d["description"] == spec.description
        assert d["hash"] == cache.hash_of(spec)
    assert data["python"]["built"] is True
    assert data["python"]["size_bytes"] == 4096 and data["python"]["build_seconds"] == 12.3
    assert data["python"]["path"] == str(cache_dir / h)
    assert data["jupyter-lab"]["built"] is False and data["jupyter-lab"]["size_bytes"] is None
    human = invoke(["image", "cache"], {**env, "OUTGROW_IMAGE_CACHE_DIR": str(cache_dir)})
    assert human.exit_code == 0
    assert "not built" in human.stdout and "2026-01-02 03:04" in human.stdout


def test_image_build_unknown(env: dict[str, str]) -> None:
    r = invoke(["image", "build", "nope"], env)
    assert r.exit_code == 1 and "'nope'" in one_error_line(r)


def test_run_unknown_image(env: dict[str, str]) -> None:
    r = invoke(["run", "-i", "nope"], env)
    assert r.exit_code == 1
    msg = one_error_line(r)
    assert "unknown image 'nope'" in msg and "python" in msg


def test_run_python_needs_a_script(env: dict[str, str]) -> None:
    r = invoke(["run", "-i", "python"], env)
    assert r.exit_code == 1
    assert "--script FILE" in one_error_line(r)


def test_run_script_problems(env: dict[str, str], tmp_path: Path) -> None:
    r = invoke(["run", "-i", "python", "--script", str(tmp_path / "missing.py")], env)
    assert r.exit_code == 1 and "missing.py" in one_error_line(r)
    empty = tmp_path / "empty.py"
    empty.write_text("\n")
    r = invoke(["run", "-i", "python", "--script", str(empty)], env)
    assert r.exit_code == 1 and "empty" in one_error_line(r)
    r = invoke(["run", "-i", "jupyter-lab", "--script", str(empty)], env)
    assert r.exit_code == 1 and "only for the python image" in one_error_line(r)


@pytest.mark.parametrize("value", ["abc", "0", "-1"])
def test_run_bad_memory_is_a_usage_error(env: dict[str, str], value: str) -> None:
    r = invoke(["run", "-i", "jupyter-lab", "-m", value], env)
    assert r.exit_code == 2
    assert "Invalid value for '-m' / '--memory'" in r.stderr and r.stdout == ""


def test_run_type_choice_errors(env: dict[str, str]) -> None:
    r = invoke(["run", "-i", "jupyter-lab", "-m", "100"], env)
    assert r.exit_code == 1 and "at least 100 GiB" in one_error_line(r)
    r = invoke(["run", "-i", "jupyter-lab", "-t", "lc.small", "-m", "2"], env)
    assert r.exit_code == 1 and "not both" in one_error_line(r)
    r = invoke(["run", "-i", "jupyter-lab", "-t", "lc.huge"], env)
    assert r.exit_code == 1 and "unknown instance type 'lc.huge'" in one_error_line(r)
    r = invoke(["run", "-i", "jupyter-lab", "-t", "lc.large", "--max-type", "lc.small"], env)
    assert r.exit_code == 1 and "above the maximum type lc.small" in one_error_line(r)


def test_non_root_gets_one_line(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for args in (["cleanup"], ["run", "-i", "jupyter-lab", "-t", "lc.nano"]):
        r = invoke(args, env)
        assert r.exit_code == 1
        assert r.stderr == f"outgrow: error: {ROOT_MESSAGE}\n"
        assert ROOT_MESSAGE == "this command needs root (namespaces, cgroups, CRIU)"


def test_debug_shows_the_traceback(env: dict[str, str]) -> None:
    r = invoke(["--debug", "run", "-i", "nope"], env)
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "NotFoundError" in r.stderr
    assert r.stderr.rstrip().splitlines()[-1].startswith("outgrow: error: unknown image")


def test_bad_setting_names_the_variable(env: dict[str, str]) -> None:
    r = invoke(["instance-types"], {**env, "OUTGROW_RESOURCE_PREFIX": "Bad_Prefix"})
    assert r.exit_code == 1
    assert "OUTGROW_RESOURCE_PREFIX" in one_error_line(r)


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_every_command_has_json(env: dict[str, str]) -> None:
    commands = leaf_commands(cli)
    # The contract of docs/control-plane.md "CLI", plus the host commands.
    for expected in (
        ("up",), ("login",), ("token", "create"), ("token", "ls"), ("token", "revoke"),
        ("submit",), ("ls",), ("show",), ("log",), ("migrate",), ("modify",), ("suspend",),
        ("resume",), ("cancel",), ("restart",), ("template", "save"), ("template", "ls"),
        ("template", "show"), ("template", "rm"), ("image", "ls"), ("image", "add"),
        ("image", "rm"), ("image", "cache"), ("image", "build"), ("instance-types",),
        ("run",), ("cleanup",), ("snapshot",), ("snapshots",), ("restore",),
    ):  # fmt: skip
        assert expected in commands, expected
    for args in commands:
        r = invoke([*args, "--help"], env)
        assert r.exit_code == 0 and "--json" in r.stdout, args


def test_instance_types_through_the_api_when_logged_in(env: dict[str, str]) -> None:
    """With credentials, instance-types asks the control plane (here: nobody listens)."""
    creds = {**env, "OUTGROW_URL": "http://127.0.0.1:9", "OUTGROW_TOKEN": "og_x"}
    r = invoke(["instance-types"], creds)
    assert r.exit_code == 1
    msg = one_error_line(r)
    assert msg.startswith("cannot reach the control plane at http://127.0.0.1:9: ")
    assert msg.endswith("is `outgrow up` running?")


def test_control_plane_commands_need_credentials(env: dict[str, str]) -> None:
    for args in (["ls"], ["show", "x"], ["image", "ls"], ["template", "ls"], ["token", "ls"]):
        r = invoke(args, env)
        assert r.exit_code == 1, args
        assert one_error_line(r).startswith("not logged in: no "), args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "NOEQUALS"], "Invalid value for '-e' / '--env': 'NOEQUALS' is not KEY=VALUE"),
        (["-e", "1X=2"], "'1X' in '1X=2' is not a variable name"),
        (["--publish", "88"], "Invalid value for '--publish': '88' is not HOSTPORT:JOBPORT"),
        (["--publish", "1:70000"], "'1:70000': ports must be 1-65535"),
        (["--allow-cidr", "10.0.0.300/8"], "'10.0.0.300/8' is not a CIDR range"),
        (["--idle-timeout", "2x"], "Invalid value for '--idle-timeout': invalid duration '2x'"),
        (
            ["--checkpoint-interval", "soon"],
            "Invalid value for '--checkpoint-interval': invalid duration 'soon'",
        ),
        (["--checkpoint-interval", "2s"], "a snapshot at most every 10 s (got 2 s)"),
        (["nope.yaml"], "File 'nope.yaml' does not exist"),
    ],
)
def test_submit_flag_syntax_is_a_usage_error(
    env: dict[str, str], args: list[str], message: str
) -> None:
    r = invoke(["submit", "-n", "a", "-i", "python", *args], env)
    assert r.exit_code == 2, r.stderr
    assert message in r.stderr and r.stdout == ""


def test_migrate_and_ls_flag_errors(env: dict[str, str]) -> None:
    r = invoke(["ls", "--status", "Running"], env)
    assert r.exit_code == 2 and "'Running' is not one of" in r.stderr
    r = invoke(["migrate", "j1", "--mem", "-1"], env)
    assert r.exit_code == 2 and "Invalid value for '-m' / '--mem'" in r.stderr
    r = invoke(["migrate", "j1"], env)
    assert r.exit_code == 1
    assert one_error_line(r) == "give --mem, --cpu or --instance-type"
    r = invoke(["restore", "j1"], env)
    assert r.exit_code == 2 and "Missing option '--from'" in r.stderr
    r = invoke(["login", "example.org"], env)
    assert r.exit_code == 2 and "'example.org' is not an http(s) URL" in r.stderr


def test_up_refuses_a_network_address(env: dict[str, str]) -> None:
    r = invoke(["up", "--host", "0.0.0.0"], env)
    assert r.exit_code == 1
    msg = one_error_line(r)
    assert "--host 0.0.0.0 is not a loopback address" in msg and "--allow-remote" in msg
    r = invoke(["up", "--port", "70000"], env)
    assert r.exit_code == 2 and "Invalid value for '--port'" in r.stderr


def test_up_needs_root(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    for host in ("127.0.0.1", "::1", "localhost"):
        r = invoke(["up", "--host", host], env)
        assert r.exit_code == 1 and r.stderr == f"outgrow: error: {ROOT_MESSAGE}\n"


# ---- type choices of the runner ----------------------------------------------------------


def test_choose_type() -> None:
    assert choose_type(CATALOG, None, None).name == "lc.small"  # default: 1 GiB
    assert choose_type(CATALOG, None, 0.3).name == "lc.micro"
    assert choose_type(CATALOG, None, 2).name == "lc.medium"  # cheaper than lc.c2m2
    assert choose_type(CATALOG, "lc.c2m2", None).name == "lc.c2m2"
    with pytest.raises(ValidationError, match=r"up to lc\.small"):
        choose_type(CATALOG, None, 2, CATALOG.get("lc.small"))
    with pytest.raises(NotFoundError):
        choose_type(CATALOG, "lc.nope", None)


def test_run_grows_like_the_control_plane() -> None:
    """`outgrow run` submits its job with a policy the control plane's own evadeOOM rule
    sizes: memory ×2 (the cheapest such type), never above --max-type."""

    def nxt(name: str, top: str | None = None) -> str | None:
        spec = resolve_run(CATALOG, image="python", type_name=name, max_type=top, script="1")
        job = spec.job_spec()
        cur = CATALOG.get(name)
        ctx = Context(
            policy=job.migrate(),
            current=cur,
            catalog=CATALOG,
            cpu_range=parse_cpu_range(job.cpu),
            mem_range=parse_mem_range(job.mem),
            now=100.0,
        )
        stalled = Sample(100.0, cur.memory_bytes, cur.memory_bytes, 0.1, cur.vcpus, True)
        d = EvadeOomRule().evaluate(ctx, [stalled])
        assert d is not None and d.reason.startswith("evadeOOM: memory limit reached")
        return d.target.name if d.target else None

    assert nxt("lc.nano") == "lc.micro"
    assert nxt("lc.micro") == "lc.small"
    assert nxt("lc.small") == "lc.medium"  # 2x memory, cheaper than lc.c2m2
    assert nxt("lc.medium") == "lc.large"
    assert nxt("lc.r2xlarge") is None
    assert nxt("lc.small", "lc.c2m2") == "lc.medium"
    assert nxt("lc.nano", "lc.nano") is None
    spec = resolve_run(CATALOG, image="python", type_name="lc.nano", script="1", evade_oom=False)
    assert not spec.job_spec().migrate().evade_oom
    assert spec.job_spec().migrate().disable  # nothing but evadeOOM moves a run


def test_resolve_run() -> None:
    spec = resolve_run(CATALOG, image="python", memory_gib=0.25, script="print(1)\n")
    assert (spec.image.name, spec.itype.name, spec.evade_oom) == ("python", "lc.nano", True)
    spec = resolve_run(CATALOG, image="jupyter-server", type_name="lc.micro", max_type="lc.large")
    assert spec.max_type == CATALOG.get("lc.large") and spec.script == ""


# ---- float's spellings ---------------------------------------------------------------------


def parsed(args: list[str]) -> dict[str, object]:
    """The parameters click's parser makes of ``outgrow ARGS`` (nothing is run)."""
    cmd = cli.commands[args[0]]
    with cmd.make_context(args[0], args[1:]) as ctx:
        return dict(ctx.params)


def test_float_spellings_of_submit(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("print(1)\n")
    policy = "[mem.upperBoundRatio=80,evadeOOM=true]"
    ours = parsed(["submit", "-n", "a", "-i", "python", "--script", str(script),
                   "--migrate-policy", policy, "--vm-policy", "[spotFirst=true]"])  # fmt: skip
    theirs = parsed(["submit", "-n", "a", "-i", "python", "-j", str(script),
                     "--migratePolicy", policy, "--vmPolicy", "[spotFirst=true]"])  # fmt: skip
    assert theirs == ours
    assert ours["script_path"] == script and ours["migrate_policy"] == policy
    assert ours["vm_policy"] == "[spotFirst=true]"
    mod = parsed(["modify", "nb", "--migratePolicy", policy, "--vmPolicy", "[onDemand=true]"])
    assert (mod["migrate_policy"], mod["vm_policy"]) == (policy, "[onDemand=true]")


def test_submit_j_is_the_script_file(env: dict[str, str], tmp_path: Path) -> None:
    r = invoke(["submit", "-n", "a", "-i", "python", "-j", str(tmp_path / "missing.py")], env)
    assert r.exit_code == 2
    assert "Invalid value for '-j' / '--script'" in r.stderr and "missing.py" in r.stderr


def test_list_is_ls(env: dict[str, str]) -> None:
    assert cli.commands["list"] is cli.commands["ls"]
    assert parsed(["list", "--status", "Executing"]) == parsed(["ls", "--status", "Executing"])
    r = invoke(["list", "--json"], env)
    assert r.exit_code == 1 and one_error_line(r).startswith("not logged in: no ")


JOB_COMMANDS = ["show", "log", "migrate", "cancel", "suspend", "resume", "restart", "open"]


def test_migrate_takes_float_short_options() -> None:
    assert parsed(["migrate", "-j", "nb", "-c", "4", "-m", "8"]) == parsed(
        ["migrate", "nb", "--cpu", "4", "--mem", "8"]
    ) | {"job": None, "job_option": "nb"}


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_j_names_the_job(command: str) -> None:
    assert parsed([command, "-j", "nb"])["job_option"] == "nb"
    assert parsed([command, "--job", "nb"])["job_option"] == "nb"
    assert parsed([command, "nb"])["job"] == "nb"


@pytest.mark.parametrize("command", JOB_COMMANDS)
def test_exactly_one_way_to_name_the_job(env: dict[str, str], command: str) -> None:
    r = invoke([command], env)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.rstrip().endswith("Error: which job? give JOB (an id or name) or -j JOB")
    r = invoke([command, "a", "-j", "b"], env)
    assert r.exit_code == 2
    assert r.stderr.rstrip().endswith("Error: give the job once: JOB (a) or -j (b), not both")


class Recorder(http.server.BaseHTTPRequestHandler):
    """An HTTP endpoint that records what it is asked and answers "no such job" in the
    API's error shape: it shows which job the CLI asked for (it is not a control plane)."""

    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        body = json.dumps({"error": "not_found", "message": "no such job"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("command", ["show", "log", "migrate", "cancel"])
def test_j_and_the_argument_ask_for_the_same_job(env: dict[str, str], command: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    creds = {**env, "OUTGROW_URL": f"http://127.0.0.1:{server.server_port}",
             "OUTGROW_TOKEN": "og_x"}  # fmt: skip
    extra = ["--mem", "1"] if command == "migrate" else []
    try:
        answers = []
        for args in ([command, "my-job", *extra], [command, "-j", "my-job", *extra]):
            Recorder.paths.clear()
            r = invoke(args, creds)
            answers.append((r.exit_code, r.stderr, list(Recorder.paths)))
    finally:
        server.shutdown()
        thread.join(10)
    assert answers[0] == answers[1]
    assert answers[0] == (1, "outgrow: error: no such job\n", ["/api/v1/jobs/my-job"])


def test_checkpoint_interval_takes_units_and_off() -> None:
    def interval(value: str) -> object:
        return parsed(["submit", "-n", "a", "-i", "python", "--checkpoint-interval", value])[
            "checkpoint_interval"
        ]

    assert [interval(v) for v in ("15m", "1h30m", "900", "0", "off")] == [
        900.0, 5400.0, 900.0, 0.0, 0.0
    ]  # fmt: skip
    assert parsed(["submit", "-n", "a", "-i", "python"])["checkpoint_interval"] is None
