"""spotwatch and the IMDSv2 client against FakeImds (a fake of EC2's metadata service,
which does not exist on this host) and a small recording stand-in for the agent's
``/v1/reclaim-notice``. No root needed; the real agent is in tests/root/test_spotwatch.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fake_imds import ACTION, REBALANCE, FakeImds
from outgrow.agentapi.client import AgentClient
from outgrow.providers.aws import bootstrap
from outgrow.providers.aws.bootstrap import Imds, imds_get, imds_url
from outgrow.providers.aws.spotwatch import fetcher, main, watch
from waiting import wait_until

SPOT = "aws spot instance-action"
REBAL = "aws rebalance recommendation"
AGENT_TOKEN = "agent-token-123"


class RecordingAgent:
    """Records the bodies of ``POST /v1/reclaim-notice`` (with the bearer token the
    agent requires); answers 500 to the next ``fail`` of them."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.fail = 0
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, out = 404, {"error": "not_found", "message": "no such route"}
                if self.path == "/v1/reclaim-notice":
                    if rec.fail:
                        rec.fail -= 1
                        status, out = 500, {"error": "internal", "message": "busy"}
                    else:
                        rec.bodies.append(body)
                        rec.auth.append(self.headers.get("Authorization", ""))
                        status, out = 200, {"reclaim_at": time.time() + body["in_s"]}
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def imds() -> Iterator[FakeImds]:
    with FakeImds() as fake:
        yield fake


@pytest.fixture
def agent() -> Iterator[RecordingAgent]:
    rec = RecordingAgent()
    yield rec
    rec.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_watch(
    imds_client: Imds,
    agent: RecordingAgent,
    rounds: int,
    between: Callable[[int], None] = lambda n: None,
    lead: float = 600.0,
) -> list[float]:
    """``rounds`` polls; ``between(n)`` runs after poll n (instead of sleeping)."""
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        between(len(sleeps))

    with AgentClient(agent.url, AGENT_TOKEN, timeout=5) as client:
        watch(
            client,
            fetch=fetcher(imds_client),
            interval=0.5,
            rebalance_lead_s=lead,
            sleep=sleep,
            rounds=rounds,
        )
    return sleeps


# ---- the IMDSv2 client ---------------------------------------------------------------


def test_token_handshake_and_cache(imds: FakeImds) -> None:
    c = Imds(imds.url)
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    put, get1, get2 = imds.requests
    assert (put.method, put.path, put.status, put.ttl) == ("PUT", "/latest/api/token", 200, "21600")
    assert (get1.method, get1.path, get1.status) == ("GET", "/latest/meta-data/local-ipv4", 200)
    assert get1.token == put.token and get2.token == put.token  # one token, cached
    with pytest.raises(urllib.error.HTTPError) as err:
        c.get(ACTION)
    assert err.value.code == 404


def test_imdsv2_is_enforced(imds: FakeImds) -> None:
    # A GET without a token (IMDSv1), or with a made-up one, is refused.
    for headers in ({}, {"X-aws-ec2-metadata-token": "made-up"}):
        req = urllib.request.Request(f"{imds.url}/latest/meta-data/local-ipv4", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 401
    # A token needs a TTL of 1..21600 s, and never through a proxy.
    for headers, code in (
        ({}, 400),
        ({"X-aws-ec2-metadata-token-ttl-seconds": "0"}, 400),
        ({"X-aws-ec2-metadata-token-ttl-seconds": "21601"}, 400),
        ({"X-aws-ec2-metadata-token-ttl-seconds": "60", "X-Forwarded-For": "1.2.3.4"}, 403),
    ):
        req = urllib.request.Request(f"{imds.url}/latest/api/token", method="PUT", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == code, headers
    assert Imds(imds.url).get("meta-data/local-ipv4") == "10.0.0.12"


def test_token_renewed_before_it_expires(imds: FakeImds) -> None:
    c = Imds(imds.url, ttl_s=1)
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    time.sleep(1.1)  # the sleep is what is tested: the service's 1 s token TTL runs out
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    puts = imds.seen("PUT")
    assert len(puts) == 2 and all(p.ttl == "1" for p in puts)
    assert puts[0].token != puts[1].token
    assert not imds.seen("GET", 401)  # renewed on its own, not after a refusal


def test_token_refetched_once_on_401(imds: FakeImds) -> None:
    # A client whose clock never advances believes its token is still good: the service
    # (which honours the 1 s TTL) refuses it, and the client gets a new one once.
    c = Imds(imds.url, ttl_s=1, clock=lambda: 0.0)
    c.get("meta-data/local-ipv4")
    time.sleep(1.1)  # the sleep is what is tested: the service's 1 s token TTL runs out
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    assert [(r.method, r.status) for r in imds.requests] == [
        ("PUT", 200),
        ("GET", 200),
        ("GET", 401),
        ("PUT", 200),
        ("GET", 200),
    ]
    # Revoked tokens: the same.
    imds.revoke_tokens()
    assert c.get("meta-data/local-ipv4") == "10.0.0.12"
    assert len(imds.seen("PUT")) == 3
    # A service that keeps refusing: one retry, then the 401 is raised (no loop).
    imds.refuse_tokens = True
    n = len(imds.requests)
    with pytest.raises(urllib.error.HTTPError) as err:
        c.get("meta-data/local-ipv4")
    assert err.value.code == 401
    assert [(r.method, r.status) for r in imds.requests[n:]] == [
        ("GET", 401),
        ("PUT", 200),
        ("GET", 401),
    ]


def test_imds_url_flag_env_and_default(imds: FakeImds, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OUTGROW_IMDS_URL", raising=False)
    assert imds_url() == "http://169.254.169.254"
    assert imds_url("http://127.0.0.1:1/") == "http://127.0.0.1:1"
    monkeypatch.setenv("OUTGROW_IMDS_URL", imds.url)
    assert imds_url() == imds.url
    assert imds_url("http://10.1.1.1") == "http://10.1.1.1"  # the flag wins
    for bad in ("169.254.169.254", "ftp://x", "http://"):
        with pytest.raises(ValueError):
            imds_url(bad)
    # bootstrap's imds_get: the env, or an explicit base; one cached token per base.
    bootstrap._clients.clear()
    assert imds_get("meta-data/local-ipv4") == "10.0.0.12"
    assert imds_get("meta-data/local-ipv4", base=imds.url) == "10.0.0.12"
    assert len(imds.seen("PUT")) == 1 and len(imds.seen("GET", 200)) == 2
    bootstrap._clients.clear()


def test_no_proxy_for_metadata(imds: FakeImds, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy in the environment (unreachable here) must not carry metadata requests.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("no_proxy", "")
    assert Imds(imds.url).get("meta-data/local-ipv4") == "10.0.0.12"


# ---- the watcher ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["terminate", "stop", "hibernate"])
def test_instance_action_is_relayed(imds: FakeImds, agent: RecordingAgent, action: str) -> None:
    imds.set_instance_action(action, time.time() + 120)
    imds.set_rebalance(time.time() - 60)  # the instance-action is the more urgent signal
    run_watch(Imds(imds.url), agent, rounds=3)
    assert len(agent.bodies) == 1, agent.bodies
    assert agent.bodies[0]["source"] == SPOT
    assert agent.bodies[0]["in_s"] == pytest.approx(120, abs=2)
    assert agent.auth == [f"Bearer {AGENT_TOKEN}"]
    gets = imds.seen("GET")
    assert {g.path for g in gets} == {f"/latest/{ACTION}", f"/latest/{REBALANCE}"}
    assert len(gets) == 6 and len(imds.seen("PUT")) == 1


def test_nothing_to_relay(imds: FakeImds, agent: RecordingAgent) -> None:
    run_watch(Imds(imds.url), agent, rounds=2)  # both 404
    imds.set(ACTION, json.dumps({"action": "none", "time": "2026-01-01T00:00:00Z"}))
    run_watch(Imds(imds.url), agent, rounds=1)  # not an action that takes the instance
    imds.set(ACTION, "<html>garbled</html>")
    run_watch(Imds(imds.url), agent, rounds=1)
    assert agent.bodies == []
    assert {r.status for r in imds.seen("GET")} == {200, 404}


def test_rebalance_gives_the_lead(imds: FakeImds, agent: RecordingAgent) -> None:
    imds.set_rebalance(time.time())
    run_watch(Imds(imds.url), agent, rounds=3, lead=300)
    assert agent.bodies == [{"in_s": 300.0, "source": REBAL}]


def test_only_earlier_deadlines_are_relayed(imds: FakeImds, agent: RecordingAgent) -> None:
    t0 = time.time()
    script: dict[int, Callable[[], None]] = {
        # after poll 1 (rebalance: 600 s lead) and poll 2 (same signal again, later):
        2: lambda: imds.set_instance_action("terminate", t0 + 120),  # poll 3: earlier
        3: lambda: imds.set_instance_action("terminate", t0 + 300),  # poll 4: later
        4: lambda: imds.set_instance_action("terminate", t0 + 120),  # poll 5: identical
        5: lambda: imds.set_instance_action("stop", t0 + 60),  # poll 6: earlier
    }
    imds.set_rebalance(t0)
    run_watch(Imds(imds.url), agent, rounds=7, between=lambda n: script.get(n, lambda: None)())
    assert [b["source"] for b in agent.bodies] == [REBAL, SPOT, SPOT]
    got = [b["in_s"] for b in agent.bodies]
    assert got[0] == 600
    assert got[1] == pytest.approx(120, abs=2) and got[2] == pytest.approx(60, abs=2)


def test_imds_down_keeps_polling(imds: FakeImds, agent: RecordingAgent) -> None:
    # Nothing listening: every poll fails, none raises.
    sleeps = run_watch(Imds(f"http://127.0.0.1:{free_port()}", timeout=0.5), agent, rounds=3)
    assert sleeps == [0.5, 0.5, 0.5] and agent.bodies == []

    # The service drops connections for two polls, then is back with a notice.
    imds.outage = True

    def between(n: int) -> None:
        if n == 2:
            imds.outage = False
            imds.set_instance_action("terminate", time.time() + 90)

    sleeps = run_watch(Imds(imds.url, timeout=1), agent, rounds=4, between=between)
    assert len(sleeps) == 4
    assert [b["source"] for b in agent.bodies] == [SPOT]
    assert agent.bodies[0]["in_s"] == pytest.approx(90, abs=2)


def test_agent_down_is_retried(imds: FakeImds, agent: RecordingAgent) -> None:
    imds.set_instance_action("terminate", time.time() + 100)
    agent.fail = 2  # the agent answers 500 twice: the same notice goes again next poll
    run_watch(Imds(imds.url), agent, rounds=4)
    assert len(agent.bodies) == 1 and agent.bodies[0]["source"] == SPOT


def test_main_refuses_bad_flags(tmp_path: Path) -> None:
    tok = tmp_path / "t"
    tok.write_text("x")
    base = ["--agent-url", "http://127.0.0.1:1", "--token-file", str(tok)]
    for extra in (
        ["--imds-url", "nope"],
        ["--rebalance-lead-s", "4000"],
        ["--rebalance-lead-s", "-1"],
        ["--interval", "0"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*base, *extra])
        assert exc.value.code == 2, extra


def _wait(cond: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[str]) -> None:
    def check() -> bool:
        got = cond()
        if not got and proc.poll() is not None:
            raise AssertionError(f"spotwatch exited (rc={proc.returncode}) before {what}")
        return got

    try:
        wait_until(check, timeout=timeout, what=what)
    except AssertionError as exc:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"{exc}; spotwatch rc={proc.returncode}:\n{err[-3000:]}") from None


@pytest.mark.parametrize("via", ["flag", "env"])
def test_module_as_the_unit_runs_it(
    imds: FakeImds, agent: RecordingAgent, tmp_path: Path, via: str
) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text(AGENT_TOKEN + "\n")
    argv = [sys.executable, "-m", "outgrow.providers.aws.spotwatch"]
    argv += ["--agent-url", agent.url, "--token-file", str(token_file), "--interval", "0.2"]
    env = {k: v for k, v in os.environ.items() if k != "OUTGROW_IMDS_URL"}
    if via == "flag":
        argv += ["--imds-url", imds.url]
    else:
        env["OUTGROW_IMDS_URL"] = imds.url
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait(lambda: len(imds.seen("GET")) >= 4, 15, "4 IMDS polls", proc)
        assert agent.bodies == []
        imds.set_instance_action("terminate", time.time() + 90)
        _wait(lambda: bool(agent.bodies), 10, "a reclaim notice", proc)
        n = len(imds.seen("GET"))
        _wait(lambda: len(imds.seen("GET")) >= n + 6, 10, "6 more IMDS polls", proc)
        assert len(agent.bodies) == 1  # the same deadline is not posted again
        assert agent.bodies[0]["source"] == SPOT
        assert agent.bodies[0]["in_s"] == pytest.approx(90, abs=3)
        assert agent.auth == [f"Bearer {AGENT_TOKEN}"]
        assert len(imds.seen("PUT")) == 1  # one cached token for every poll
        assert not imds.seen(status=401)
    finally:
        proc.kill()
        proc.communicate()
