"""On a spot instance: relay AWS's interruption signals to the local agent.

``python -m outgrow.providers.aws.spotwatch --agent-url http://ADDR:7070 --token-file F``
(the ``outgrow-spotwatch`` unit of spot instances, see ``userdata.py``) polls the instance
metadata service (``--imds-url``, else ``$OUTGROW_IMDS_URL``, else
``http://169.254.169.254``) with IMDSv2 every ``--interval`` seconds — one session token,
cached for its TTL and renewed before it expires or once on a 401:

* ``meta-data/spot/instance-action`` — 404 until AWS decides to take the instance, then
  ``{"action": "terminate", "time": "2026-11-25T20:12:00Z"}`` (about two minutes ahead);
* ``meta-data/events/recommendations/rebalance`` — ``{"noticeTime": "…"}`` when the
  instance is at elevated risk of interruption (no deadline: reported as one
  ``--rebalance-lead-s`` ahead so the job moves early, before the two-minute notice).

and posts each new (earlier) deadline to the agent's ``/v1/reclaim-notice``; the agent
reports it in the job status, and the control plane moves the job. The same or a later
deadline is not posted again. An unreachable metadata service or agent is logged and
polled again at the next interval: the watcher never gives up on its own.

Standard library and outgrow's agent client only (no boto3).
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import sys
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from outgrow.agentapi.client import AgentClient
from outgrow.errors import AgentError
from outgrow.providers.aws.bootstrap import IMDS, IMDS_ENV, Imds

log = logging.getLogger("outgrow.spotwatch")
ACTION_PATH = "meta-data/spot/instance-action"
REBALANCE_PATH = "meta-data/events/recommendations/rebalance"
MAX_NOTICE_S = 3600.0  # the agent's /v1/reclaim-notice accepts 0..3600 s


def _when(text: str) -> float:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()  # IMDS times are UTC


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


def fetcher(imds: Imds) -> Callable[[str], str | None]:
    """``fetch(path)`` for :func:`watch`: the document, or None while IMDS answers 404
    (no such signal yet); other failures raise."""

    def fetch(path: str) -> str | None:
        try:
            return imds.get(path)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    return fetch


def watch(
    client: AgentClient,
    *,
    fetch: Callable[[str], str | None],
    interval: float = 5.0,
    rebalance_lead_s: float = 600.0,
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
                left = min(left, MAX_NOTICE_S)  # earlier than announced is still correct
                if told is None or now + left < told - 1.0:
                    client.reclaim_notice(left, source=source)
                    told = now + left
                    log.warning("%s: told the agent the instance goes in %.0f s", source, left)
        except (OSError, http.client.HTTPException, AgentError) as exc:
            # IMDS or the agent briefly unavailable (refused, timeout, 5xx, a dropped or
            # garbled answer): poll again at the next interval.
            log.info("spotwatch: %s: %s", type(exc).__name__, exc)
        sleep(interval)


def _lead(text: str) -> float:
    v = float(text)
    if not 0 <= v <= MAX_NOTICE_S:
        raise argparse.ArgumentTypeError(f"must be 0..{MAX_NOTICE_S:g} s")
    return v


def _interval(text: str) -> float:
    v = float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m outgrow.providers.aws.spotwatch")
    p.add_argument("--agent-url", required=True)
    p.add_argument("--token-file", type=Path, required=True)
    p.add_argument(
        "--imds-url",
        default=None,
        help=f"instance metadata service (default ${IMDS_ENV}, else {IMDS})",
    )
    p.add_argument("--interval", type=_interval, default=5.0)
    p.add_argument("--rebalance-lead-s", type=_lead, default=600.0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        imds = Imds(args.imds_url)
    except ValueError as exc:
        p.error(str(exc))
    token = args.token_file.read_text().strip()
    log.info("spotwatch: polling %s every %g s for %s", imds.base, args.interval, args.agent_url)
    with AgentClient(args.agent_url, token, timeout=10.0) as client:
        watch(
            client,
            fetch=fetcher(imds),
            interval=args.interval,
            rebalance_lead_s=args.rebalance_lead_s,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
