"""Post-copy moves, for real: the source's CRIU serves the memory pages of the stopped
tree, the target restores at once with lazy-pages pulling them (orchestrator/migrate.py).

A batch job keeps a buffer it rewrites throughout the move and checks its own memory
afterwards (each page against a record of what it wrote there, and a digest of the
whole buffer against a digest computed from the record alone); a failed restore leaves
the job running on the source; a transfer cut after the restore loses the job and says so.
"""

from __future__ import annotations

import re

import pytest
from test_migration import start_job

from outgrow.errors import JobLostError, MigrationError
from outgrow.orchestrator.migrate import Migrator, agent
from outgrow.providers.base import InstanceInfo
from outgrow.providers.local.provider import LocalProvider
from waiting import wait_for_value, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

MIB = 1024 * 1024

# A buffer of MIB_ MiB, filled; then every 10 ms ~1 MB of pages rewritten at pseudo-random
# places (≈ 100 MB/s) and a tick printed. A file "verify-N" in the workspace makes it
# check every page against `want` (what it last wrote there) and print the result.
WRITER = """
import hashlib, os, time
from pathlib import Path
MIB_ = {mib}
PAGE = 4096
n = MIB_ * 1024 * 1024 // PAGE
pats = [bytes([v]) * PAGE for v in range(256)]
buf = bytearray(n * PAGE)
want = bytearray(n)
for i in range(n):
    v = (i * 7 + 1) % 256
    buf[i * PAGE:(i + 1) * PAGE] = pats[v]
    want[i] = v
print("filled", n, flush=True)
x, tick, done = 12345, 0, set()
while True:
    for _ in range(250):
        x = (x * 1103515245 + 12345) % 2147483648
        i = x % n
        v = (want[i] + 1) % 256
        buf[i * PAGE:(i + 1) * PAGE] = pats[v]
        want[i] = v
    tick += 1
    print("tick", tick, flush=True)
    for f in Path(".").glob("verify-*"):
        if f.name in done:
            continue
        done.add(f.name)
        bad = sum(1 for i in range(n) if buf[i * PAGE:(i + 1) * PAGE] != pats[want[i]])
        h = hashlib.sha256()
        for i in range(n):
            h.update(pats[want[i]])
        print("verify", f.name, "pages", n, "bad", bad,
              "buf", hashlib.sha256(buf).hexdigest(), "want", h.hexdigest(), flush=True)
    time.sleep(0.01)
"""


def stdout(inst: InstanceInfo) -> str:
    with agent(inst) as a:
        return a.logs("stdout").data


def ticks(inst: InstanceInfo) -> list[int]:
    return [int(m) for m in re.findall(r"^tick (\d+)$", stdout(inst), re.M)]


def verify(p: LocalProvider, inst: InstanceInfo, job_id: str, name: str) -> re.Match[str]:
    """Make the job check its whole buffer; its answer."""
    (p.jobs_dir / job_id / "workspace" / name).write_text("")
    pattern = rf"^verify {name} pages (\d+) bad (\d+) buf (\w+) want (\w+)$"

    def answer() -> re.Match[str] | None:
        return re.search(pattern, stdout(inst), re.M)

    found = wait_for_value(answer, lambda m: m is not None, timeout=120, what=f"{name} answered")
    assert found is not None
    return found


def start_writer(p: LocalProvider, type_name: str, mib: int) -> tuple[InstanceInfo, str]:
    inst, body = start_job(p, type_name, "python", script=WRITER.format(mib=mib))
    wait_until(lambda: len(ticks(inst)) >= 20, timeout=120, what="the writer to tick 20 times")
    return inst, body.job_id


def test_postcopy_move_keeps_every_page_of_a_writing_job(local_provider: LocalProvider) -> None:
    p = local_provider
    src, job_id = start_writer(p, "lc.small", 384)
    ok = verify(p, src, job_id, "verify-before")
    assert ok.group(2) == "0" and ok.group(3) == ok.group(4), ok.group(0)

    steps: list[str] = []
    r = Migrator(p).migrate(
        src, target_type="lc.medium", reason="manual", mode="postcopy", on_step=steps.append
    )
    assert r.mode == "postcopy" and r.mode_reason == "post-copy: moveMode=postcopy"
    assert any(s.startswith("all memory on the target") for s in steps), steps
    # The buffer's pages came after the restore, not in the checkpoint; the interpreter's
    # own small regions (its heap: ~10 MB) came with the checkpoint (CRIU patch 0003,
    # --lazy-pages-eager), so the lazy pages are the buffer's and hardly more.
    buffer_pages = 384 * MIB // 4096
    assert buffer_pages * 0.9 <= r.lazy_pages <= buffer_pages + 256, r
    assert r.checkpoint_bytes < 64 * MIB, r
    dst = p.describe_instance(r.target_instance)
    assert dst is not None
    moved_at = ticks(dst)[-1]
    wait_until(
        lambda: ticks(dst)[-1] >= moved_at + 20,
        timeout=60,
        what=f"the writer to tick past {moved_at + 19} on the target",
    )
    ok = verify(p, dst, job_id, "verify-after")
    assert int(ok.group(1)) == 384 * MIB // 4096
    assert ok.group(2) == "0", f"{ok.group(2)} pages differ from what the job wrote: {ok.group(0)}"
    assert ok.group(3) == ok.group(4), ok.group(0)
    numbers = ticks(dst)
    assert numbers == list(range(1, len(numbers) + 1)), "the writer restarted or repeated"
    with agent(dst) as a:
        st = a.job()
        assert st.phase == "running" and st.restored
    assert p.describe_instance(src.id) is None
    p.delete_instance(dst.id)


def test_postcopy_restore_failure_leaves_the_job_running_on_the_source(
    local_provider: LocalProvider,
) -> None:
    p = local_provider
    src, job_id = start_writer(p, "lc.small", 128)
    target = p.create_instance("lc.medium")

    def kill_target(step: str) -> None:
        if step.startswith("restoring on the target"):  # pages are being served: no target
            p.delete_instance(target.id)

    with pytest.raises(MigrationError) as err:
        Migrator(p).migrate(
            src, target=target, reason="manual", mode="postcopy", on_step=kill_target
        )
    assert "keeps running on" in str(err.value) and src.id in str(err.value)
    before = ticks(src)[-1]
    wait_until(
        lambda: ticks(src)[-1] >= before + 20,
        timeout=60,
        what=f"the writer to resume on the source (tick past {before + 19})",
    )
    with agent(src) as a:
        st = a.job()
    assert st.phase == "running" and not st.restored
    ok = verify(p, src, job_id, "verify-after-abort")
    assert ok.group(2) == "0" and ok.group(3) == ok.group(4), ok.group(0)
    numbers = ticks(src)
    assert numbers == list(range(1, len(numbers) + 1))
    p.delete_instance(src.id)


def test_postcopy_transfer_cut_after_the_restore_loses_the_job(
    local_provider: LocalProvider,
) -> None:
    """The source instance dies while the target still pulls pages: the restored job
    misses memory, the target kills it and the move fails as JobLostError."""
    p = local_provider
    src, _ = start_writer(p, "lc.medium", 768)  # a drain of seconds: time to cut it
    target = p.create_instance("lc.large")

    def kill_source(step: str) -> None:
        if step.startswith("running on the target after"):
            p.delete_instance(src.id)

    with pytest.raises(JobLostError) as err:
        Migrator(p).migrate(
            src, target=target, reason="manual", mode="postcopy", on_step=kill_source
        )
    assert "failed after the restore" in str(err.value) and "the job is lost" in str(err.value)
    with agent(target) as a:
        st = a.job()
    assert st.phase == "failed" and "post-copy page transfer broke" in st.message, st
    assert p.describe_instance(src.id) is None
    p.delete_instance(target.id)
