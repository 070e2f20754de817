"""Stable-URL proxy benchmark: request latency and WebSocket throughput, proxy vs direct.

    .venv/bin/python benchmarks/proxy.py [--requests 500] [--messages 3000] [--repeat 3]

``run()`` starts a control plane of its own (local provider, resource prefix "ob" + 3 hex,
its own address pool, uvicorn on a free 127.0.0.1 port), one ``jupyter-server`` job, and
compares, in alternating rounds so drift hits both sides alike:

* latency: sequential ``GET /jobs/<id>/api/status`` on a keep-alive connection, through
  the proxy (``http://127.0.0.1:<port>/jobs/<id>/``, outgrow API token) and direct
  (``http://<instance address>:8888/jobs/<id>/``, the job's Jupyter token);
* WebSocket throughput, kernel → client: a cell printing ``messages`` short lines, one
  message each (messages/s), and a cell writing ``big`` 1 MiB chunks (MB/s), timed from
  the execute request to the kernel's idle status.

``measure()`` does only the measuring, against URLs it is given (tests/root/test_proxy.py
calls it on its own control plane). Targets (docs/design.md): latency ≤ 1.2×, WebSocket
throughput ≥ 0.8× of direct access; ``problems()`` lists the ones missed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from polling import poll_until

NAME = "proxy"
TESTS = Path(__file__).resolve().parents[1] / "tests"
CRIU = Path(os.environ.get("OUTGROW_CRIU_PATH", "/opt/outgrow/criu/sbin/criu"))
LATENCY_TARGET = 1.2
THROUGHPUT_TARGET = 0.8
Say = Callable[[str], None]


def _jupyter_ws() -> ModuleType:
    """The kernel-protocol websocket client of the tests (tests/jupyter_ws.py)."""
    if "jupyter_ws" in sys.modules:
        return sys.modules["jupyter_ws"]
    spec = importlib.util.spec_from_file_location("jupyter_ws", TESTS / "jupyter_ws.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---- measuring ----------------------------------------------------------------------
def _latencies(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        out.append(time.perf_counter() - t)
        r.raise_for_status()
    return out


def _summary_ms(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(int(q * len(s)), len(s) - 1)] * 1000  # noqa: E731
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s) * 1000, 3),
        "mean_ms": round(statistics.fmean(s) * 1000, 3),
        "p10_ms": round(pick(0.10), 3),
        "p90_ms": round(pick(0.90), 3),
        "p99_ms": round(pick(0.99), 3),
    }


SMALL = "for _i in range({n}):\n    print(_i, flush=True)\n"
BIG = (  # 1 MiB of base64 of random bytes: no compression flatters either side
    "import base64, os, sys\n_s = base64.b64encode(os.urandom(3 << 18)).decode()\n"
    "for _i in range({n}):\n    sys.stdout.write(_s)\n    sys.stdout.flush()\n"
)


def _cell_rate(ks: Any, code: str) -> dict[str, float]:
    """Run a cell and time it from the execute request to idle; count what arrived."""
    t = time.perf_counter()
    out = ks.run(code, timeout=600)
    dt = time.perf_counter() - t
    streams = [m for m in out.messages if m["msg_type"] == "stream"]
    nbytes = sum(len(m["content"]["text"]) for m in streams)
    return {
        "seconds": round(dt, 4),
        "messages": len(streams),
        "bytes": nbytes,
        "messages_per_s": round(len(streams) / dt, 1),
        "mb_per_s": round(nbytes / dt / 1e6, 2),
    }


def measure(
    proxy_base: str,
    direct_base: str,
    api_token: str,
    jupyter_token: str,
    *,
    requests: int = 500,
    messages: int = 3000,
    big: int = 64,
    repeat: int = 3,
    say: Say = print,
) -> dict[str, Any]:
    """Compare the proxy (``proxy_base``, outgrow API token) with direct access
    (``direct_base``, the job's Jupyter token); both end in ``/jobs/<id>/``.

    The client runs in a process of its own, as a browser would: in the control plane's
    process it would compete with the proxy for the GIL and skew the comparison."""
    args = {
        "proxy_base": proxy_base,
        "direct_base": direct_base,
        "api_token": api_token,
        "jupyter_token": jupyter_token,
        "requests": requests,
        "messages": messages,
        "big": big,
        "repeat": repeat,
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--measure-only"],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=3600,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring client failed:\n{proc.stderr[-3000:]}")
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        say(line)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _measure_here(
    proxy_base: str,
    direct_base: str,
    api_token: str,
    jupyter_token: str,
    *,
    requests: int = 500,
    messages: int = 3000,
    big: int = 64,
    repeat: int = 3,
    say: Say = print,
) -> dict[str, Any]:
    jws = _jupyter_ws()
    sides = {"proxy": (proxy_base, api_token), "direct": (direct_base, jupyter_token)}
    lat: dict[str, list[float]] = {"proxy": [], "direct": []}
    clients = {
        k: httpx.Client(headers={"Authorization": f"token {tok}"}, timeout=30, trust_env=False)
        for k, (_, tok) in sides.items()
    }
    try:
        for side, (base, _) in sides.items():
            _latencies(clients[side], base + "api/status", 30)  # warm up
        block = max(-(-requests // (repeat * 4)), 10)
        for _ in range(repeat * 4):
            for side, (base, _) in sides.items():
                lat[side] += _latencies(clients[side], base + "api/status", block)
    finally:
        for c in clients.values():
            c.close()
    latency = {side: _summary_ms(v) for side, v in lat.items()}
    for q in ("median", "p10"):  # p10: the least disturbed by other load on the host
        latency[f"ratio_{q}"] = round(  # type: ignore[assignment]
            latency["proxy"][f"{q}_ms"] / latency["direct"][f"{q}_ms"], 3
        )
    say(
        f"latency GET api/status: proxy {latency['proxy']['median_ms']:.2f} ms, direct "
        f"{latency['direct']['median_ms']:.2f} ms (median) → {latency['ratio_median']:.2f}×; "
        f"p10 {latency['proxy']['p10_ms']:.2f} vs {latency['direct']['p10_ms']:.2f} ms → "
        f"{latency['ratio_p10']:.2f}×"
    )

    kid = jws.create_kernel(direct_base, jupyter_token)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        "proxy": {"small": [], "big": []},
        "direct": {"small": [], "big": []},
    }
    sessions = {side: jws.KernelSession(base, tok, kid) for side, (base, tok) in sides.items()}
    try:
        for ks in sessions.values():
            ks.run("1", timeout=120)
            ks.run(SMALL.format(n=100))  # warm up
        for _ in range(repeat):
            for side, ks in sessions.items():
                runs[side]["small"].append(_cell_rate(ks, SMALL.format(n=messages)))
                runs[side]["big"].append(_cell_rate(ks, BIG.format(n=big)))
    finally:
        for ks in sessions.values():
            ks.close()
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(
                f"{direct_base}api/kernels/{kid}",
                headers={"Authorization": f"token {jupyter_token}"},
                timeout=30,
                trust_env=False,
            )

    def best(side: str, kind: str, key: str) -> float:
        return max(r[key] for r in runs[side][kind])

    ws = {
        "small_messages": messages,
        "big_chunks_mib": big,
        "runs": runs,
        "proxy_messages_per_s": best("proxy", "small", "messages_per_s"),
        "direct_messages_per_s": best("direct", "small", "messages_per_s"),
        "proxy_mb_per_s": best("proxy", "big", "mb_per_s"),
        "direct_mb_per_s": best("direct", "big", "mb_per_s"),
    }
    ws["ratio_messages"] = round(ws["proxy_messages_per_s"] / ws["direct_messages_per_s"], 3)
    ws["ratio_mb"] = round(ws["proxy_mb_per_s"] / ws["direct_mb_per_s"], 3)
    say(
        f"websocket: {ws['proxy_messages_per_s']:.0f} vs {ws['direct_messages_per_s']:.0f} "
        f"msg/s ({ws['ratio_messages']:.2f}×), {ws['proxy_mb_per_s']:.1f} vs "
        f"{ws['direct_mb_per_s']:.1f} MB/s ({ws['ratio_mb']:.2f}×) proxy vs direct"
    )
    return {"latency": latency, "websocket": ws}


# ---- a control plane of its own -----------------------------------------------------
def _free_pool(prefix: str) -> str:
    """A 198.19.<n>.0/24 reserved host-wide for ``prefix`` (no concurrent run gets it)."""
    from outgrow.providers.local.hoststate import Pools

    return Pools().reserve(prefix)


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port, in a thread."""
    import uvicorn

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every answer written in two parts waits ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def started() -> bool:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start: its thread ended")
        return bool(server.started)

    poll_until(started, timeout=30, interval=0.02, what="uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_status(plane: Any, actor: Any, job_id: str, status: str, timeout: float) -> Any:
    def view() -> Any:
        v = plane.get_job(actor, job_id)
        return v if v.status == status else None

    try:
        return poll_until(view, timeout=timeout, interval=0.2, what=f"job {job_id} {status}")
    except TimeoutError:
        v = plane.get_job(actor, job_id)
        raise TimeoutError(f"job {job_id} is {v.status}, not {status}: {v.status_reason}") from None


def run(
    sizes: list[float] | None = None,
    repeat: int = 3,
    say: Say = print,
    *,
    requests: int = 500,
    messages: int = 3000,
    big: int = 64,
) -> dict[str, Any]:
    """The whole benchmark on a control plane of its own (``sizes`` is unused; the
    signature matches the other benchmarks' for benchmarks/run.py)."""
    if os.geteuid() != 0:
        raise SystemExit("the proxy benchmark needs root (namespaces, cgroups, CRIU)")
    from outgrow.controlplane.service import ControlPlane
    from outgrow.domain.jobs import JobSpec
    from outgrow.providers.local.provider import LocalProvider
    from outgrow.server import create_app
    from outgrow.settings import Settings
    from outgrow.store import Store

    prefix = "ob" + secrets.token_hex(2)[:3]
    pool = _free_pool(prefix)
    data_dir = Path(tempfile.mkdtemp(prefix=f"outgrow-bench-{prefix}-", dir="/var/tmp"))
    settings = Settings(
        data_dir=data_dir, resource_prefix=prefix, address_pool=pool, criu_path=CRIU
    )
    store = Store.open(f"sqlite:///{data_dir}/outgrow.db")
    provider = LocalProvider(settings)
    plane = ControlPlane(settings, store, provider)
    boot = plane.accounts.bootstrap(None)
    assert boot is not None
    token = boot[1]
    say(f"resource prefix {prefix}, pool {pool}, data dir {data_dir}")
    result: dict[str, Any] = {"resource_prefix": prefix, "address_pool": pool, "ok": False}
    t0 = time.monotonic()
    plane.start()
    try:
        with serve(create_app(plane)) as url:
            admin = plane.accounts.authenticate(token)
            job = plane.submit(admin, JobSpec(name="bench", image="jupyter-server", cpu="1"))
            view = wait_status(plane, admin, job.id, "Executing", 600)
            assert view.instance is not None and view.instance.address
            result |= measure(
                f"{url}/jobs/{job.id}/",
                f"http://{view.instance.address}:8888/jobs/{job.id}/",
                token,
                plane.proxy_target(admin, job.id)[3],
                requests=requests,
                messages=messages,
                big=big,
                repeat=repeat,
                say=say,
            )
            result["instance_type"] = view.instance.type
            result["ok"] = True
    finally:
        plane.stop()
        provider.teardown()
        store.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    result["runtime_s"] = round(time.monotonic() - t0, 1)
    return result


def problems(result: dict[str, Any]) -> list[str]:
    out = []
    lat, ws = result.get("latency"), result.get("websocket")
    if not lat or not ws:
        return ["no measurements"]
    if lat["ratio_median"] > LATENCY_TARGET:
        out.append(f"latency {lat['ratio_median']:.2f}× direct (target ≤ {LATENCY_TARGET}×)")
    for key, what in (("ratio_messages", "messages/s"), ("ratio_mb", "MB/s")):
        if ws[key] < THROUGHPUT_TARGET:
            out.append(f"websocket {what} {ws[key]:.2f}× direct (target ≥ {THROUGHPUT_TARGET}×)")
    return out


def table(result: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(title="stable-URL proxy vs direct access")
    for col in ("measure", "proxy", "direct", "ratio", "target"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    lat, ws = result.get("latency"), result.get("websocket")
    if lat and ws:
        p, d = lat["proxy"], lat["direct"]
        t.add_row(
            "GET api/status median (ms)",
            f"{p['median_ms']:.2f}",
            f"{d['median_ms']:.2f}",
            f"{lat['ratio_median']:.2f}×",
            f"≤ {LATENCY_TARGET}×",
        )
        t.add_row(
            "GET api/status p10 (ms)",
            f"{p['p10_ms']:.2f}",
            f"{d['p10_ms']:.2f}",
            f"{lat['ratio_p10']:.2f}×",
            "",
        )
        t.add_row("GET api/status p99 (ms)", f"{p['p99_ms']:.2f}", f"{d['p99_ms']:.2f}", "", "")
        t.add_row(
            "WebSocket messages/s",
            f"{ws['proxy_messages_per_s']:.0f}",
            f"{ws['direct_messages_per_s']:.0f}",
            f"{ws['ratio_messages']:.2f}×",
            f"≥ {THROUGHPUT_TARGET}×",
        )
        t.add_row(
            "WebSocket MB/s (1 MiB messages)",
            f"{ws['proxy_mb_per_s']:.1f}",
            f"{ws['direct_mb_per_s']:.1f}",
            f"{ws['ratio_mb']:.2f}×",
            f"≥ {THROUGHPUT_TARGET}×",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--measure-only"]:  # the client of measure()
        result = _measure_here(**json.loads(sys.stdin.read()))
        print(json.dumps(result))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--big", type=int, default=64, help="1 MiB messages in the MB/s cell")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    result = run(None, args.repeat, requests=args.requests, messages=args.messages, big=args.big)
    print(json.dumps({k: v for k, v in result.items() if k != "websocket"}, indent=2))
    from rich.console import Console

    Console().print(table(result))
    for p in problems(result):
        print("problem:", p)
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
