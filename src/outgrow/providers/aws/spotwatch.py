"""On a spot instance: relay AWS's interruption signals to the local agent.

``python -m outgrow.providers.aws.spotwatch --agent-url http://ADDR:7070 --token-file F``
(the ``outgrow-spotwatch`` unit of spot instances, see ``userdata.py``) polls the instance
metadata service with IMDSv2 every ``--interval`` seconds:

* ``meta-data/spot/instance-action`` — 404 until AWS decides to take the instance, then
  ``{"action": "terminate", "time": "2026-11-25T20:12:00Z"}`` (about two minutes ahead);
* ``meta-data/events/recommendations/rebalance`` — ``{"noticeTime": "…"}`` when the
  instance is at elevated risk of interruption (no deadline: reported as one
  ``--rebalance-lead-s`` ahead so the job moves early, before the two-minute notice).

and posts each new (earlier) deadline to the agent's ``/v1/reclaim-notice``; the agent
reports it in the job status, and the control plane moves the job.

Standard library and outgrow's agent client only (no boto3).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from outgrow.agent.client import AgentClient
from outgrow.errors import AgentError
from outgrow.providers.aws.bootstrap import imds_get

log = logging.getLogger("outgrow.spotwatch")
ACTION_PATH = "meta-data/spot/instance-action"
REBALANCE_PATH = "meta-data/events/recommendations/rebalance"


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_instance_action(text: str | None, now: float) -> float | None:
    """Seconds left before a stop/terminate/hibernate action, or None (no action)."""
    if not text:
        return None
    try:
        doc = json.loads(text)
        if doc.get("action") not in ("terminate", "stop", "hibernate"):
            return None
        return max(_when(str(doc["time"])) - now, 0.0)
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("unreadable instance-action: %r", text[:200])
        return None


def parse_rebalance(text: str | None) -> bool:
    if not text:
        return False
    try:
        return "noticeTime" in json.loads(text)
    except (ValueError, TypeError):
        return False


def notice(
    action: str | None, rebalance: str | None, now: float, rebalance_lead_s: float
) -> tuple[float, str] | None:
    """(seconds left, source) of the most urgent signal, or None."""
    left = parse_instance_action(action, now)
    if left is not None:
        return left, "aws spot instance-action"
    if parse_rebalance(rebalance):
        return rebalance_lead_s, "aws rebalance recommendation"
    return None


def _fetch(path: str) -> str | None:
    try:
        return imds_get(path)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def watch(
    client: AgentClient,
    *,
    interval: float = 5.0,
    rebalance_lead_s: float = 600.0,
    fetch: Callable[[str], str | None] = _fetch,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> None:
    """Poll and relay until killed (or ``rounds`` polls)."""
    told: float | None = None  # the earliest deadline the agent was given
    n = 0
    while rounds is None or n < rounds:
        n += 1
        try:
            now = clock()
            sig = notice(fetch(ACTION_PATH), fetch(REBALANCE_PATH), now, rebalance_lead_s)
            if sig is not None:
                left, source = sig
                if told is None or now + left < told - 1.0:
                    client.reclaim_notice(left, source=source)
                    told = now + left
                    log.warning("%s: told the agent the instance goes in %.0f s", source, left)
        except (OSError, AgentError) as exc:  # IMDS or agent briefly unavailable
            log.info("spotwatch: %s", exc)
        sleep(interval)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outgrow.providers.aws.spotwatch")
    p.add_argument("--agent-url", required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument("--interval", type=float, default=5.0)
    p.add_argument("--rebalance-lead-s", type=float, default=600.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    token = args.token_file.read_text().strip()
    with AgentClient(args.agent_url, token, timeout=10.0) as client:
        watch(client, interval=args.interval, rebalance_lead_s=args.rebalance_lead_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
