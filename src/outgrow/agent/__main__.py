"""``python -m outgrow.agent``: the per-instance agent (started by a provider inside the
instance's network namespace)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="outgrow-agent", description=__doc__)
    p.add_argument("--instance-id", required=True)
    p.add_argument("--cgroup", required=True, help="cgroup name of the instance")
    p.add_argument("--netns-path", required=True, help="the instance's network namespace file")
    p.add_argument("--address", required=True, help="instance address to listen on")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--jobs-dir", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--image-cache-dir", type=Path, required=True)
    p.add_argument("--criu", type=Path, required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--oom-headroom-mib", type=int, default=64)
    p.add_argument("--job-nofile", type=int, default=65536, help="RLIMIT_NOFILE of the job")
    args = p.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Restored job trees are re-parented to the nearest subreaper when criu exits: make
    # that us, so we can reap them and see them end.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    import uvicorn

    from outgrow.agent import guard
    from outgrow.agent.checkpoint import ensure_pipe_max_size
    from outgrow.agent.server import create_app
    from outgrow.agent.service import Agent
    from outgrow.agent.state import AgentConfig
    from outgrow.domain.security import PAGE_SERVER_PORTS
    from outgrow.errors import OutgrowError

    guard.apply(args.port, PAGE_SERVER_PORTS)  # before the first job can exist
    try:
        # Post-copy moves: CRIU's page pipes need fs.pipe-max-size >= 4 MiB (a host-wide
        # sysctl, only ever raised; docs/design.md).
        before, after = ensure_pipe_max_size()
        if before != after:
            logging.info("raised fs.pipe-max-size from %d to %d", before, after)
    except OutgrowError as exc:
        logging.warning("%s: post-copy moves will fail", exc)
    token = args.token_file.read_text().strip()
    agent = Agent(
        AgentConfig(
            instance_id=args.instance_id,
            cgroup_name=args.cgroup,
            netns_path=args.netns_path,
            address=args.address,
            port=args.port,
            jobs_dir=args.jobs_dir,
            work_dir=args.work_dir,
            image_cache_dir=args.image_cache_dir,
            criu_path=args.criu,
            oom_headroom_bytes=args.oom_headroom_mib * 1024 * 1024,
            job_nofile=args.job_nofile,
        )
    )
    agent.start_background()
    uvicorn.run(
        create_app(agent, token),
        host=args.address,
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    agent.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
