"""Migration benchmark: live-migrate a Jupyter kernel holding S GiB of real data.

For each data size S, in one run (so ratios compare like with like):

1. a ``jupyter-server`` job on the smallest local type with ≥ S × 1.4 + 0.5 GiB; a kernel
   builds S GiB: half a NumPy float64 array, half a pandas DataFrame of numeric columns;
   the size is checked with ``nbytes`` / ``memory_usage`` and a CRC32 of all the data is
   taken in the kernel;
2. ``repeat`` live migrations per transfer mode ("page-server", "copy"), alternating,
   each to a new instance of the same type through ``Migrator.migrate``; after each move
   the kernel recomputes the CRC32 (a benchmark that moves a broken kernel is worthless);
   the job directory is shared between the instances (nothing of it moves);
3. raw CRIU through the agent's own code: ``checkpoint(dest_dir=…)`` (the same ``criu
   dump`` flags, no page server, no copy), ``commit`` (kills the tree), ``restore(
   source_dir=…)`` into the same instance; CRC32 again;
4. restart and reload: shut the kernel down, start a new kernel in the same job and time
   how long building the same data takes (what a user without migration pays);
5. "volume" mode (benchmarks/volume.py): the same job, same data (same CRC32), but its
   directory on a loop volume that moves with it; ``repeat`` migrations, each checked like
   the others, plus the volume mounted on the target with the marker left in it.

6. "postcopy" mode: the same job moved with post-copy (lazy pages): the downtime ends
   when the job runs on the target; its memory follows (the drain, timed apart, with the
   pages pulled); the CRC32 is checked after the drain, like the others.

``modes`` (``--modes``) picks among them: without page-server and copy there is no raw
CRIU or reload either (they run on the first job).

Before the sizes, ``limits()`` measures in the same run what no move can beat here: the
first touch of fresh memory and a loopback TCP stream (GB/s); every row gives its
downtime over the time to carry its data once at the slower of the two ("limit").

Every instance lives under a resource prefix of its own ("ob" + 3 hex) and an address pool
of its own; all of them are deleted (try/finally, provider.teardown()) even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import httpx
import volume
from limits import limits, limits_text
from polling import poll_until
from rich.table import Table
from summary import COLUMNS, GIB, MODES, pick_type, required_memory_gib, summarise_size

from outgrow.agentapi.models import CheckpointRequest, ImageBody, RestoreRequest, StartJob
from outgrow.domain.images import BUILTIN_IMAGES
from outgrow.errors import MigrationError, OutgrowError
from outgrow.orchestrator.migrate import Migrator, agent, wait_job
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.provider import LocalProvider
from outgrow.settings import Settings

NAME = "migration"
CRIU = Path(os.environ.get("OUTGROW_CRIU_PATH", "/opt/outgrow/criu/sbin/criu"))
TESTS = Path(__file__).resolve().parents[1] / "tests"
KIND = "jupyter-server"
CELL_TIMEOUT = 900.0

Say = Callable[[str], None]


class BenchFailure(Exception):
    """The benchmark cannot go on with this size (e.g. the data did not survive)."""


STEP_ERRORS = (BenchFailure, OutgrowError, httpx.HTTPError, TimeoutError, OSError)


def _jupyter_ws() -> ModuleType:
    """The kernel-protocol websocket client of the tests (tests/jupyter_ws.py)."""
    spec = importlib.util.spec_from_file_location("jupyter_ws", TESTS / "jupyter_ws.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


jws = _jupyter_ws()

# ---- code run in the kernel ---------------------------------------------------------
HELPERS = """
import json, time, zlib
def _og_rss():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    return 0
def _og_checksum():
    import numpy as np
    c = zlib.crc32(x)
    for name in df.columns:
        c = zlib.crc32(np.ascontiguousarray(df[name].to_numpy()), c)
    return f'{c:08x}'
"""

# Half NumPy (np.random.default_rng(0).random(n), float64), half a DataFrame of 5 numeric
# columns (8+8+8+4+4 = 32 bytes a row). Timed in the kernel and by the client.
BUILD = """
_t0 = time.perf_counter()
import numpy as np
import pandas as pd
_half = int({size_gib!r} * 1024**3) // 2
x = np.random.default_rng(0).random(_half // 8)
_rng = np.random.default_rng(1)
_m = _half // 32
df = pd.DataFrame(
    {{
        'a': _rng.random(_m),
        'b': _rng.standard_normal(_m),
        'c': _rng.integers(0, 1 << 40, _m, dtype=np.int64),
        'd': _rng.integers(0, 1 << 30, _m, dtype=np.int32),
        'e': _rng.random(_m, dtype=np.float32),
    }},
    copy=False,
)
del _rng
_build_s = time.perf_counter() - _t0
print(json.dumps({{
    'build_s': _build_s,
    'numpy_bytes': int(x.nbytes),
    'pandas_bytes': int(df.memory_usage(index=False, deep=True).sum()),
    'rows': len(df), 'columns': list(df.columns),
    'rss_bytes': _og_rss(),
}}))
"""

CHECK = "print(json.dumps({'checksum': _og_checksum(), 'rss_bytes': _og_rss()}))"


def run_json(ks: Any, code: str, timeout: float = CELL_TIMEOUT) -> dict[str, Any]:
    out = ks.run(code, timeout=timeout)
    if out.error:
        raise BenchFailure(f"kernel cell failed: {out.error}")
    lines = [ln for ln in out.text.splitlines() if ln.strip()]
    if not lines:
        raise BenchFailure(f"kernel cell printed nothing (result {out.result!r})")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# ---- jobs and kernels ---------------------------------------------------------------
def jupyter_base(inst: InstanceInfo, body: dict[str, Any]) -> str:
    return f"http://{inst.address}:{body.port}{body.base_url}"


def start_job(
    provider: LocalProvider,
    type_name: str,
    before_start: Callable[[InstanceInfo, str], None] | None = None,
) -> tuple[InstanceInfo, StartJob]:
    """A new instance running a new job; ``before_start(instance, job_id)`` prepares it
    (the job's directory) before the job starts."""
    image = BUILTIN_IMAGES[KIND]
    provider.prepare_image(image)
    inst = provider.create_instance(type_name, tags={"outgrow:bench": NAME})
    job_id = "jb" + secrets.token_hex(4)
    body = StartJob(
        job_id=job_id,
        kind=KIND,
        image=ImageBody.of(image),
        jupyter_token=secrets.token_hex(16),
        base_url=f"/jobs/{job_id}/",
        evade_oom=True,
    )
    try:
        if before_start is not None:
            before_start(inst, job_id)
        with agent(inst) as a:
            a.start_job(body)
        wait_job(inst, timeout=300)
    except BaseException:
        provider.delete_instance(inst.id)
        raise
    return inst, body


def shutdown_kernel(base: str, token: str, kid: str) -> None:
    r = httpx.delete(
        f"{base}api/kernels/{kid}", headers={"Authorization": f"token {token}"}, timeout=60
    )
    r.raise_for_status()


def job_memory(inst: InstanceInfo) -> dict[str, Any]:
    with agent(inst) as a:
        now = a.metrics().now
    return {
        "job_mem_used_bytes": now.mem_used_bytes if now else None,
        "job_mem_rss_bytes": now.mem_rss_bytes if now else None,
        "job_mem_limit_bytes": now.mem_limit_bytes if now else None,
    }


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def tree_exited(init_pid: int, timeout: float = 120.0) -> float:
    """Wait until the pid-namespace init of a killed job tree has finished exiting (it only
    does once every task of its namespace is gone) and return how long that took.

    Dying tasks vanish from cgroup.procs at once, but a multi-threaded process keeps its
    files (sockets) open until its last thread has torn down its memory, which takes
    seconds for GiBs here; the agent's commit() does not wait for that."""
    t0 = time.monotonic()
    try:
        poll_until(
            lambda: _proc_state(init_pid) in ("gone", "Z", "X"),
            timeout=timeout,
            interval=0.005,  # the resolution of the time returned
            what=f"the killed job tree (init {init_pid}) to exit",
        )
    except TimeoutError as exc:
        raise BenchFailure(f"the killed job tree (init {init_pid}) did not exit") from exc
    return time.monotonic() - t0


# ---- one size -----------------------------------------------------------------------
class SizeRun:
    """One job for one data size; ``inst`` is always the instance running the job. With
    ``storage`` the job's directory is on that volume (modes: "volume" only)."""

    def __init__(
        self,
        provider: LocalProvider,
        size_gib: float,
        repeat: int,
        say: Say,
        modes: tuple[str, ...] = ("page-server", "copy"),
        storage: volume.JobVolume | None = None,
    ):
        self.p = provider
        self.size_gib = size_gib
        self.repeat = repeat
        self.say = say
        self.modes = modes
        self.storage = storage
        self.inst: InstanceInfo | None = None
        self.body: StartJob | None = None
        self.ks: Any = None
        self.kid = ""
        self.checksum = ""
        t = pick_type(provider.instance_types(), size_gib)
        self.rec: dict[str, Any] = {
            "size_gib": size_gib,
            "type": t.name,
            "type_memory_gib": t.memory_gib,
            "type_vcpus": t.vcpus,
            "required_memory_gib": required_memory_gib(size_gib),
            "migrations": [],
            "failed_migrations": [],
            "raw_criu": [],
            "reload": [],
            "errors": [],
            "loadavg_start": os.getloadavg(),
        }

    @property
    def base(self) -> str:
        assert self.inst is not None
        assert self.body is not None
        return jupyter_base(self.inst, self.body)

    @property
    def token(self) -> str:
        assert self.body is not None
        return self.body.jupyter_token

    def connect(self) -> None:
        if self.ks is None:
            self.ks = jws.KernelSession(self.base, self.token, self.kid)
        else:
            self.ks.connect(self.base)

    def disconnect(self) -> None:
        # Like the stable-URL proxy: drop our side before a move, keep the session id.
        if self.ks is not None:
            self.ks.close()

    def verify(self, what: str) -> dict[str, Any]:
        self.connect()
        got = run_json(self.ks, CHECK)
        intact = got["checksum"] == self.checksum
        if not intact:
            raise BenchFailure(
                f"{what}: data checksum {got['checksum']} != {self.checksum} before the move"
            )
        out = {"intact": intact, "kernel_rss_after_bytes": got["rss_bytes"]}
        if self.storage is not None:  # and the directory came with the job
            out.update(self.storage.check())
        return out

    def _failed(self, step: str, exc: BaseException) -> None:
        self.say(f"[red]size {self.size_gib:g} GiB, {step} failed: {exc}")
        detail = (getattr(exc, "detail", None) or "")[-3000:]
        error = f"{type(exc).__name__}: {exc}"
        self.rec["errors"].append({"step": step, "error": error, "detail": detail})

    def _try(self, step: str, fn: Callable[..., object], *args: Any) -> None:
        try:
            fn(*args)
        except STEP_ERRORS as exc:
            self._failed(step, exc)

    def run(self) -> dict[str, Any]:
        t_size = time.monotonic()
        try:
            self._setup()
            self._migrations()
            if self.storage is None:
                try:
                    self._raw_criu()
                except STEP_ERRORS as exc:
                    # A failed restore after the commit loses the job: the reload needs a new one.
                    self._failed("raw CRIU", exc)
                    self._recover_job()
                self._reload()
        except STEP_ERRORS as exc:
            self._failed("benchmark", exc)
        finally:
            self._close()
        if self.storage is not None:
            self.rec["volume"] = self.storage.facts
        self.rec["loadavg_end"] = os.getloadavg()
        self.rec["size_wall_s"] = round(time.monotonic() - t_size, 2)
        return self.rec

    def _close(self) -> None:
        self.disconnect()
        if self.inst is not None:
            if self.storage is not None:  # as the control plane does when a job ends
                self._try("releasing the job volume", self.storage.release, self.inst)
            self.say(f"deleting instance {self.inst.id}")
            self.p.delete_instance(self.inst.id)
            self.inst = None
        # Anything a failed step left behind (a target half created, a volume still
        # mounted and attached: unmounted and detached by force).
        self.p.cleanup()
        if self.storage is not None:
            self._try("deleting the job volume", self.storage.delete)

    def _recover_job(self) -> None:
        assert self.inst is not None
        with agent(self.inst) as a:
            phase = a.job().phase
        if phase == "running":
            return
        self.say(f"  the job is {phase}; starting a new one for the reload measurement")
        self.disconnect()
        self.ks = None
        self.p.delete_instance(self.inst.id)
        self.inst = None
        self.inst, self.body = start_job(self.p, self.rec["type"])
        self.kid = jws.create_kernel(self.base, self.token)
        self.rec["job_restarted_for_reload"] = True

    def _setup(self) -> None:
        t = self.rec["type"]
        where = "on a moving volume" if self.storage else "in a shared directory"
        self.say(f"[bold]{self.size_gib:g} GiB[/]: starting a {KIND} job on {t}, {where}")
        t0 = time.monotonic()
        self.inst, self.body = start_job(self.p, t, self.storage and self.storage.mount)
        self.rec["job_start_s"] = round(time.monotonic() - t0, 3)
        self.kid = jws.create_kernel(self.base, self.token)
        self.connect()
        run_json(self.ks, HELPERS + "print('{}')")
        t0 = time.monotonic()
        info = run_json(self.ks, BUILD.format(size_gib=self.size_gib))
        self.rec["first_build_wall_s"] = round(time.monotonic() - t0, 3)
        data_bytes = info["numpy_bytes"] + info["pandas_bytes"]
        want = self.size_gib * GIB
        if abs(data_bytes - want) > 0.01 * want:
            raise BenchFailure(f"built {data_bytes} bytes of data, wanted {want:.0f}")
        self.checksum = run_json(self.ks, CHECK)["checksum"]
        mem = job_memory(self.inst)
        self.rec.update(
            {
                "data_bytes": data_bytes,
                "numpy_bytes": info["numpy_bytes"],
                "pandas_bytes": info["pandas_bytes"],
                "kernel_rss_bytes": info["rss_bytes"],
                "first_build_s": info["build_s"],
                "checksum": self.checksum,
                **mem,
            }
        )
        self.say(
            f"  data {data_bytes / GIB:.3f} GiB (numpy {info['numpy_bytes'] / GIB:.3f} + "
            f"pandas {info['pandas_bytes'] / GIB:.3f}), kernel RSS "
            f"{info['rss_bytes'] / GIB:.3f} GiB, job cgroup "
            f"{(mem['job_mem_used_bytes'] or 0) / GIB:.3f} GiB, crc32 {self.checksum}, "
            f"built in {info['build_s']:.2f} s"
        )

    def _migrations(self) -> None:
        migrator = Migrator(self.p)
        t = self.rec["type"]
        n = len(self.modes) * self.repeat
        for i in range(n):
            mode = self.modes[i % len(self.modes)]
            # Migrator moves a job whose directory is not shared in copy mode by itself.
            transfer = "copy" if mode == volume.MODE else mode
            transfer = "page-server" if mode == "postcopy" else transfer
            assert self.inst is not None
            source = self.inst
            self.disconnect()
            t0 = time.monotonic()
            try:
                r = migrator.migrate(
                    source,
                    target_type=t,
                    transfer=transfer,  # type: ignore[arg-type]
                    reason="benchmark",
                    on_step=lambda s: None,
                    mode="postcopy" if mode == "postcopy" else "plain",
                )
            except MigrationError as exc:
                # The contract: the job keeps running on the source, nothing lost.
                self.say(f"[red]  migration {i + 1} ({mode}) failed: {exc}")
                fail = {"mode": mode, "transfer": transfer, "error": str(exc)}
                fail["detail"] = (exc.detail or "")[-2000:]
                fail.update(self.verify(f"after failed migration {i + 1}"))
                self.rec["failed_migrations"].append(fail)
                continue
            wall = time.monotonic() - t0
            new = self.p.describe_instance(r.target_instance)
            if new is None:
                raise BenchFailure(f"target instance {r.target_instance} vanished")
            self.inst = new
            rec = {**r.to_dict(), "move_mode": r.mode, "mode": mode, "wall_s": round(wall, 4)}
            rec.update(self.verify(f"migration {i + 1} ({mode})"))
            self.rec["migrations"].append(rec)
            moved = f" storage {r.storage_s:.2f}" if mode == volume.MODE else ""
            if r.mode == "postcopy":
                moved += f"; drain {r.drain_s:.2f} s ({r.lazy_pages * 4096 / GIB:.2f} GiB)"
            self.say(
                f"  move {i + 1}/{n} {mode:11s} downtime {r.downtime_s:.2f} s "
                f"(freeze {r.freeze_s:.2f} dump {r.dump_s:.2f} transfer {r.transfer_s:.2f}"
                f"{moved} restore {r.restore_s:.2f}), total {r.total_s:.2f} s, "
                f"checkpoint {r.checkpoint_bytes / GIB:.2f} GiB, data intact"
            )

    def _raw_criu(self) -> None:
        for i in range(self.repeat):
            assert self.inst is not None
            # Same filesystem as the instances' own work dirs (the provider's data dir).
            dest = self.p.settings.data_dir / "raw-criu" / f"{self.size_gib:g}-{i}"
            shutil.rmtree(dest, ignore_errors=True)
            self.disconnect()
            try:
                with agent(self.inst) as a:
                    init_pid = int(a.job().pid or 0)
                    t0 = time.monotonic()
                    ck = a.checkpoint(CheckpointRequest(dest_dir=str(dest)))
                    t1 = time.monotonic()
                    a.commit()
                    t2 = time.monotonic()
                    # commit() returns while the killed tree still exits (see tree_exited);
                    # restoring into the same netns before it is gone collides with its
                    # still-open loopback connections (EADDRNOTAVAIL).
                    teardown_s = tree_exited(init_pid)
                    t2b = time.monotonic()
                    rs = a.restore(RestoreRequest(source_dir=str(dest)))
                    t3 = time.monotonic()
                rec = {
                    "freeze_s": ck.freeze_s,
                    "dump_s": ck.dump_s,
                    "restore_s": rs.restore_s,
                    "healthy_s": rs.healthy_s,
                    "checkpoint_call_s": round(t1 - t0, 4),
                    "commit_call_s": round(t2 - t1, 4),
                    "teardown_wait_s": round(teardown_s, 4),
                    "restore_call_s": round(t3 - t2b, 4),
                    "checkpoint_bytes": ck.local_bytes,
                    "rss_bytes": ck.rss_bytes,
                }
            finally:
                shutil.rmtree(dest, ignore_errors=True)
            rec.update(self.verify(f"raw CRIU round {i + 1}"))
            self.rec["raw_criu"].append(rec)
            self.say(
                f"  raw criu {i + 1}/{self.repeat}: freeze {rec['freeze_s']:.2f} dump "
                f"{rec['dump_s']:.2f} restore {rec['restore_s']:.2f} s "
                f"({rec['checkpoint_bytes'] / GIB:.2f} GiB; killed tree gone after "
                f"{rec['teardown_wait_s']:.2f} s), data intact"
            )

    def _reload(self) -> None:
        for i in range(self.repeat):
            self.disconnect()
            if self.kid:
                shutdown_kernel(self.base, self.token, self.kid)
            self.ks = None
            t0 = time.monotonic()
            self.kid = jws.create_kernel(self.base, self.token)
            self.connect()
            run_json(self.ks, HELPERS + "print('{}')")
            t1 = time.monotonic()
            info = run_json(self.ks, BUILD.format(size_gib=self.size_gib))
            t2 = time.monotonic()
            rec = {
                "kernel_start_s": round(t1 - t0, 4),
                "build_s": round(t2 - t1, 4),
                "build_in_kernel_s": info["build_s"],
                "reload_s": round(t2 - t0, 4),
            }
            # Same seed, same code: the reloaded data must be the same data.
            rec.update(self.verify(f"reload {i + 1}"))
            self.rec["reload"].append(rec)
            self.say(
                f"  restart+reload {i + 1}/{self.repeat}: {rec['reload_s']:.2f} s "
                f"(kernel start {rec['kernel_start_s']:.2f}, build {rec['build_s']:.2f})"
            )


# ---- the benchmark ------------------------------------------------------------------
def _free_pool(prefix: str) -> str:
    """A 198.19.<n>.0/24 reserved host-wide for ``prefix`` (no concurrent run gets it)."""
    from outgrow.providers.local.hoststate import Pools

    return Pools().reserve(prefix)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run(
    sizes: list[float], repeat: int, say: Say, *, modes: tuple[str, ...] = MODES
) -> dict[str, Any]:
    if unknown := set(modes) - set(MODES):
        raise ValueError(f"unknown modes {sorted(unknown)} (known: {', '.join(MODES)})")
    shared = tuple(m for m in MODES if m in modes and m != volume.MODE)
    if os.geteuid() != 0:
        raise SystemExit("the migration benchmark needs root (namespaces, cgroups, CRIU)")
    if not CRIU.exists():
        raise SystemExit(f"CRIU not found at {CRIU}")
    prefix = "ob" + secrets.token_hex(2)[:3]
    pool = _free_pool(prefix)
    data_dir = Path(tempfile.mkdtemp(prefix=f"outgrow-bench-{prefix}-", dir="/var/tmp"))
    settings = Settings(
        data_dir=data_dir,
        resource_prefix=prefix,
        address_pool=pool,
        criu_path=CRIU,
        local_job_storage="shared",
    )
    provider = LocalProvider(settings)
    vol_provider = volume.provider_for(settings)  # same data dir, prefix and pool
    say(f"resource prefix {prefix}, pool {pool}, data dir {data_dir}")
    result: dict[str, Any] = {
        "resource_prefix": prefix,
        "address_pool": pool,
        "data_dir": str(data_dir),
        "sizes_gib": sizes,
        "repeat_per_mode": repeat,
        "modes": [m for m in MODES if m in modes],
        "volume_gib": volume.VOLUME_GIB if volume.MODE in modes else None,
        "state_basis_of_target": "median checkpoint bytes (decimal GB)",
        "sizes": [],
        "rows": [],
        "limits": limits(say),
    }
    t0 = time.monotonic()
    with _sigterm_as_interrupt():
        try:
            for s in sizes:
                rec = SizeRun(provider, s, repeat, say, shared).run() if shared else None
                if volume.MODE in modes:
                    job_volume = volume.JobVolume(vol_provider, say)
                    vrec = SizeRun(vol_provider, s, repeat, say, (volume.MODE,), job_volume).run()
                    rec = volume.merge(rec, vrec)
                assert rec is not None
                result["sizes"].append(rec)
                result["rows"] += summarise_size(rec, result["limits"])
        finally:
            # No second Ctrl-C may interrupt the cleanup.
            old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
            try:
                say("tearing down every instance of this run")
                provider.teardown()
                result["leftovers"] = volume.leftovers(data_dir)
                if not result["leftovers"]:  # never rmtree into a volume still mounted
                    shutil.rmtree(data_dir, ignore_errors=True)
            finally:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
    result["runtime_s"] = round(time.monotonic() - t0, 1)
    result["ok"] = (
        all(not r["errors"] and not r["failed_migrations"] for r in result["sizes"])
        and all(row["intact"] for row in result["rows"])
        and not result["leftovers"]
    )
    return result


def table(result: dict[str, Any]) -> Table:
    """One row per size and mode (medians; downtime also with its min–max)."""
    t = Table(
        title="Live migration of a Jupyter kernel (medians; downtime with min–max)",
        caption="seconds unless marked; target = 0.3 s + checkpoint GB / 2 (docs/design.md); in "
        "page-server mode the pages stream during the dump (xfer = the other images only); "
        "volume = the job directory on a loop volume moved with the job (copy mode; storage = "
        "unmount, detach, attach, mount, inside the downtime); /ps and /copy = downtime over "
        "those modes'; raw = criu dump / restore through the agent, no page server, no copy, "
        "same instance; reload = new kernel + rebuild the data; postcopy = the memory follows "
        "the restored job (drain, not in the downtime; pull = its rate); limit = the data "
        "once at the slower of first touch and loopback TCP, measured in this run "
        f"({limits_text(result.get('limits'))})",
        header_style="bold",
    )
    for name, justify, _ in COLUMNS:
        # downtime carries its min–max: never cut it
        width = 19 if name == "downtime" else None
        t.add_column(name, justify=justify, min_width=width)  # type: ignore[arg-type]
    for r in result["rows"]:
        t.add_row(*(cell(r) for _, _, cell in COLUMNS))
    return t


def problems(result: dict[str, Any]) -> list[str]:
    out = []
    for s in result["sizes"]:
        for e in s["errors"]:
            out.append(f"{s['size_gib']:g} GiB: {e['step']}: {e['error']}")
        for f in s["failed_migrations"]:
            mode = f.get("mode", f["transfer"])
            out.append(f"{s['size_gib']:g} GiB: {mode} migration failed: {f['error']}")
    out += [f"left behind: {x}" for x in result.get("leftovers", [])]
    return out
