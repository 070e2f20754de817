"""Load: jobs moving while API and WebSocket clients use the control plane (`make load`).

    sudo .venv/bin/python benchmarks/load.py [--jobs 12] [--notebooks 4] [--moves 4]
        [--api-clients 50] [--ws-clients 20] [--duration 60] [--out PATH]

A real ``outgrow up`` (child process, its own resource prefix) runs ``--jobs`` small jobs
(``--notebooks`` of them Jupyter servers, the rest batch counters); ``--moves`` live
migrations are kept in flight at once for the whole run. Meanwhile ``--api-clients``
threads list, show and read metrics of jobs, and ``--ws-clients`` kernel clients each run
cell after cell through the jobs' stable URLs (one kernel each) while their job moves.
Reported: API latency p50/p99 per call, errors by status (5xx must be 0), kernel cells
sent/answered (a cell without its answer is a dropped message: must be 0), moves done,
and the control plane's RSS. Bounded: at most ``--duration`` s of load plus set-up.
Every packet stays on this host (loopback and the run's own namespaces; egress guard on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "faults"), str(HERE.parent / "tests")]

import httpx  # noqa: E402
from harness import COUNTER, World  # noqa: E402

from jupyter_ws import KernelSession, create_kernel  # noqa: E402
from netguard import EgressGuard  # noqa: E402


def _why(exc: Exception) -> str:
    """An error, with the body of a refused WebSocket upgrade (the proxy's reason)."""
    body = getattr(getattr(exc, "response", None), "body", None)
    extra = f": {bytes(body)[:300]!r}" if body else ""
    return f"{type(exc).__name__}: {exc}{extra}"


def rss_mib(pid: int) -> float:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1]) / 1024
    return 0.0


class Load:
    def __init__(self, w: World, args: argparse.Namespace):
        self.w, self.args = w, args
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.codes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.cells_sent = 0
        self.cells_answered = 0
        self.ws_errors: list[str] = []
        self.moves_started = 0
        self.moves_done = 0
        self.move_failures: list[str] = []
        self.rss: list[float] = []
        self.jobs: list[str] = []
        self.notebooks: list[str] = []
        self.sessions: dict[int, KernelSession] = {}

    # -- set-up ------------------------------------------------------------------------------
    def submit_all(self) -> None:
        a = self.args
        for i in range(a.jobs):
            nb = i < a.notebooks
            body: dict[str, Any] = (
                {"name": f"nb{i}", "image": "jupyter-server", "mem": "1", "cpu": "0.5"}
                if nb
                else {"name": f"b{i}", "image": "python", "script": COUNTER, "mem": "0.25"}
            )
            body.setdefault("cpu", "0.25")
            r = self.w.post("/jobs", body)
            r.raise_for_status()
            (self.notebooks if nb else self.jobs).append(str(r.json()["id"]))
        for ref in self.notebooks + self.jobs:
            self.w.wait(ref, {"Executing"}, timeout=600)

    # -- the three kinds of load ----------------------------------------------------------------
    def api_client(self, n: int) -> None:
        refs = self.notebooks + self.jobs
        with httpx.Client(base_url=self.w.srv.api, headers=self.w.h, timeout=60) as c:
            i = n
            while not self.stop.is_set():
                ref = refs[i % len(refs)]
                kind, path = [
                    ("list", "/jobs"),
                    ("show", f"/jobs/{ref}"),
                    ("metrics", f"/jobs/{ref}/metrics"),
                ][i % 3]
                t0 = time.monotonic()
                try:
                    r = c.get(path)
                    code = str(r.status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                dt_ms = (time.monotonic() - t0) * 1000
                with self.lock:
                    self.lat[kind].append(dt_ms)
                    self.codes[code] += 1
                i += 1

    def connect_ws(self, n: int) -> None:
        """Set-up: client ``n``'s kernel (on notebook n mod K) and its first cell, before
        the load starts (a kernel's first handshake waits for the kernel to be ready)."""
        ref = self.notebooks[n % len(self.notebooks)]
        t_start = time.monotonic()
        try:
            url = self.w.job(ref)["url"]
            kid = create_kernel(url, self.w._token or "")
            ks = KernelSession(url, self.w._token or "", kid)
            if ks.run("0", timeout=180).result != "0":
                raise RuntimeError("the first cell did not answer 0")
            self.sessions[n] = ks
        except Exception as exc:
            with self.lock:
                self.ws_errors.append(
                    f"client {n} could not start ({time.monotonic() - t_start:.1f} s, job "
                    f"{ref} {self.w.job(ref)['status']}): {_why(exc)}"
                )

    def ws_client(self, n: int) -> None:
        ks = self.sessions.get(n)
        if ks is None:
            return
        i = 0
        try:
            while not self.stop.is_set():
                with self.lock:
                    self.cells_sent += 1
                out = ks.run(f"{i} + 1", timeout=180)
                if out.result != str(i + 1):
                    raise RuntimeError(f"cell {i} answered {out.result!r} ({out.error})")
                with self.lock:
                    self.cells_answered += 1
                i += 1
        except Exception as exc:
            with self.lock:
                self.ws_errors.append(f"client {n} at cell {i}: {_why(exc)}")
        finally:
            ks.close()

    def mover(self, slot: int) -> None:
        """One of the ``--moves`` slots: migrate a job, wait for the move to end, again."""
        refs = self.notebooks + self.jobs
        i = slot
        sizes = (0.25, 0.5)
        while not self.stop.is_set():
            ref = refs[i % len(refs)]
            i += self.args.moves
            try:
                j = self.w.job(ref)
                if j["status"] != "Executing":
                    continue
                before = j["instance"]["id"]
                mem = 1.5 if ref in self.notebooks else sizes[(i // self.args.moves) % 2]
                r = self.w.migrate(ref, mem)
                if r.status_code != 202:
                    continue  # e.g. its previous move is still being recorded
                with self.lock:
                    self.moves_started += 1
                j = self.w.wait(ref, {"Executing"}, timeout=300)
                moved = j["instance"]["id"] != before
                with self.lock:
                    if moved:
                        self.moves_done += 1
                    else:
                        self.move_failures.append(f"{ref}: {j['events'][-1]['reason'][:200]}")
            except Exception as exc:
                with self.lock:
                    self.move_failures.append(f"{ref}: {type(exc).__name__}: {exc}")

    def sampler(self) -> None:
        while not self.stop.wait(1.0):
            self.rss.append(rss_mib(self.w.srv.proc.pid))

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        t0 = time.monotonic()
        self.submit_all()
        connecting = [
            threading.Thread(target=self.connect_ws, args=(n,)) for n in range(a.ws_clients)
        ]
        for t in connecting:
            t.start()
        for t in connecting:
            t.join(300)
        setup_s = time.monotonic() - t0
        rss_before = rss_mib(self.w.srv.proc.pid)
        threads = [threading.Thread(target=self.sampler)]
        threads += [threading.Thread(target=self.ws_client, args=(n,)) for n in range(a.ws_clients)]
        threads += [
            threading.Thread(target=self.api_client, args=(n,)) for n in range(a.api_clients)
        ]
        threads += [threading.Thread(target=self.mover, args=(n,)) for n in range(a.moves)]
        for t in threads:
            t.start()
        self.stop.wait(a.duration)
        self.stop.set()
        for t in threads:
            t.join(400)
        lost = self.lost_or_duplicated()
        return {
            "setup_s": round(setup_s, 1),
            "load_s": a.duration,
            "api": {
                k: {
                    "n": len(v),
                    "p50_ms": round(statistics.median(v), 1),
                    "p99_ms": round(statistics.quantiles(v, n=100)[98], 1) if len(v) > 1 else 0,
                }
                for k, v in self.lat.items()
                if v
            },
            "status_codes": dict(self.codes),
            "errors_5xx": sum(n for c, n in self.codes.items() if c.startswith("5")),
            "transport_errors": sum(n for c, n in self.codes.items() if not c.isdigit()),
            "ws_clients_connected": len(self.sessions),
            "cells_sent": self.cells_sent,
            "cells_answered": self.cells_answered,
            "dropped_kernel_messages": self.cells_sent - self.cells_answered,
            "ws_errors": self.ws_errors,
            "moves_started": self.moves_started,
            "moves_done": self.moves_done,
            "move_failures": self.move_failures,
            "jobs_lost_or_duplicated": lost,
            "rss_mib": {
                "before": round(rss_before, 1),
                "max": round(max(self.rss, default=0), 1),
                "after": round(rss_mib(self.w.srv.proc.pid), 1),
            },
        }

    def lost_or_duplicated(self) -> list[str]:
        bad = []
        on_host = {i.id for i in self.w.instances()}
        for ref in self.notebooks + self.jobs:
            j = self.w.wait(ref, {"Executing"}, timeout=300)
            live = [i["id"] for i in j["instances"] if i["ended_at"] is None]
            if live != [j["instance"]["id"]] or live[0] not in on_host:
                bad.append(f"{ref}: live {live}")
            if ref in self.jobs:
                try:
                    self.w.work_lost(ref)
                except AssertionError as exc:
                    bad.append(f"{ref}: {exc}")
        if len(on_host) != len(self.notebooks) + len(self.jobs):
            bad.append(f"{len(on_host)} instances on the host for {len(self.jobs)} jobs")
        return bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--notebooks", type=int, default=4)
    ap.add_argument("--moves", type=int, default=4)
    ap.add_argument("--api-clients", type=int, default=50)
    ap.add_argument("--ws-clients", type=int, default=20)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--out", type=Path, default=HERE.parent / "artifacts" / "load.json")
    args = ap.parse_args(argv)
    if not (1 <= args.notebooks <= args.jobs <= 32 and args.duration <= 600):
        ap.error("need 1 <= --notebooks <= --jobs <= 32 and --duration <= 600")
    import tempfile

    guard = EgressGuard()
    guard.start()
    started = dt.datetime.now(dt.UTC)
    try:
        with tempfile.TemporaryDirectory(prefix="outgrow-load-") as tmp:
            w = World(Path(tmp), "load")
            try:
                w.start()
                result = Load(w, args).run()
                jobs = w.get("/jobs").json()
                for j in jobs:
                    w.post(f"/jobs/{j['id']}/cancel")
                for j in jobs:
                    w.wait(j["id"], {"Cancelled"}, timeout=120)
            finally:
                result_left = w.close()
        problem = guard.check()
    finally:
        guard.stop()
    config = {**vars(args), "out": str(args.out)}
    result |= {"leftovers": result_left, "egress": problem or "none", "config": config}
    result["started"] = started.isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    ok = (
        result["errors_5xx"] == 0
        and result["dropped_kernel_messages"] == 0
        and not result["ws_errors"]
        and not result["jobs_lost_or_duplicated"]
        and not result_left
        and not problem
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
