"""The job's status file (agent/jobstatus.py): what it says, how it is written, and the
note it comes from travelling with the job (agent-job.json, a checkpoint's job.json)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from outgrow.agent.jobstatus import WRITTEN_IN, status_body, write_status
from outgrow.agent.runtime import JobDirs, JobLaunch, job_env
from outgrow.agent.state import AgentJob
from outgrow.agentapi.models import AgentPhase, JobNote, MetricsSample, MoveNote
from outgrow.domain import images
from outgrow.domain.images import BUILTIN_IMAGES

GIB = 1024**3


def sample(used: int, limit: int | None) -> MetricsSample:
    return MetricsSample(
        t=1.0,
        mem_used_bytes=used,
        mem_rss_bytes=used,
        mem_cache_bytes=0,
        mem_swap_bytes=0,
        mem_limit_bytes=limit,
        cpu_used_vcpus=0.1,
        cpu_quota_vcpus=1.0,
        cpu_throttled_ns=0,
    )


def test_status_body_from_note_and_sample() -> None:
    move = MoveNote(at=5.0, reason="mem 93% ≥ 90% for 30 s", to_type="lc.large", downtime_s=1.1)
    note = {"instance_type": "lc.large", "last_move": move.model_dump()}
    body = status_body("j1", "i-1", note, sample(GIB // 2, 4 * GIB), now=10.0)
    assert body == {
        "version": 1,
        "job_id": "j1",
        "instance_id": "i-1",
        "instance_type": "lc.large",
        "mem_limit_bytes": 4 * GIB,
        "mem_used_bytes": GIB // 2,
        "oom_stalled": False,
        "last_move": move.model_dump(),
        "updated_at": 10.0,
    }
    bare = status_body("j1", "i-1", None, None, now=1.0)
    assert bare["instance_type"] == "" and bare["last_move"] is None
    assert bare["mem_limit_bytes"] is None


def test_written_only_by_the_copy_that_runs() -> None:
    assert set(WRITTEN_IN) == {AgentPhase.STARTING, AgentPhase.RUNNING}


def test_write_status_is_world_readable_and_replaced_whole(tmp_path: Path) -> None:
    path = JobDirs(tmp_path / "job").status_file
    (tmp_path / "job").mkdir()
    write_status(path, {"n": 1})
    write_status(path, {"n": 2})
    assert json.loads(path.read_text()) == {"n": 2}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temporary left


def test_write_status_never_through_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "outgrow").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="symlink"):
        write_status(JobDirs(tmp_path / "job").status_file, {"n": 1})
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_job_is_told_where_its_status_is() -> None:
    inside = JobDirs(Path("/x")).inside()
    launch = JobLaunch(job_id="j1", kind="jupyter-lab", python_bin_dir="/venv/bin")
    assert job_env(launch, inside)["OUTGROW_STATUS_FILE"] == "/job/outgrow/status.json"


def test_note_travels_with_the_job() -> None:
    launch = JobLaunch(job_id="j1", kind="python", python_bin_dir="/venv/bin")
    job = AgentJob(launch=launch, image={}, note={"instance_type": "lc.small", "last_move": None})
    again = AgentJob.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again.note == job.note
    old = job.to_dict()
    del old["note"]  # written by an older agent
    assert AgentJob.from_dict(old).note is None


def test_job_note_is_checked() -> None:
    with pytest.raises(ValidationError):
        JobNote(job_id="../x")
    with pytest.raises(ValidationError):
        JobNote(job_id="j1", last_move=MoveNote(at=1.0, reason="x" * 501))
    note = JobNote(job_id="j1", instance_type="lc.large")
    assert note.last_move is None


def test_only_venv_jupyter_lab_images_get_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    lab = BUILTIN_IMAGES["jupyter-lab"]
    assert lab.has_labext and lab.derive("lab-plus", "six==1.16.0").has_labext
    assert not BUILTIN_IMAGES["jupyter-server"].has_labext
    assert not BUILTIN_IMAGES["python"].has_labext
    # the extension's version is part of the hash: a new one builds the images again
    before = lab.content_hash()
    server = BUILTIN_IMAGES["jupyter-server"].content_hash()
    monkeypatch.setattr(images, "LABEXT_VERSION", "9.9.9")
    assert lab.content_hash() != before
    assert BUILTIN_IMAGES["jupyter-server"].content_hash() == server
