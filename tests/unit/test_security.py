"""Security groups, pure: parsing, defaults, the rule list users see, the nft script."""

from __future__ import annotations

import json
import socket

import pytest

from outgrow.agent.moves import page_server_port
from outgrow.agent.runtime import JUPYTER_KINDS
from outgrow.domain.jobs import JobSpec
from outgrow.domain.security import (
    JUPYTER_KINDS as SG_JUPYTER_KINDS,
)
from outgrow.domain.security import (
    PAGE_SERVER_PORTS,
    SecurityGroup,
    default_ports,
    parse_publish,
)
from outgrow.errors import CheckpointError, ValidationError
from outgrow.providers.local.firewall import ruleset


def spec(image: str = "python", **kw: list[str]) -> JobSpec:
    return JobSpec(name="j", image=image, script="x", **kw)


def test_parse_publish() -> None:
    assert parse_publish("8888:8888") == (8888, 8888)
    assert parse_publish(" 9100 : 9000 ") == (9100, 9000)
    for bad in ("8888", "a:b", "0:80", "80:70000", "1:2:3", ""):
        with pytest.raises(ValidationError):
            parse_publish(bad)


def test_defaults_jupyter_publishes_8888_python_nothing() -> None:
    assert default_ports("jupyter-lab") == (8888,)
    assert default_ports("jupyter-server", 8890) == (8890,)
    assert default_ports("python", 8888) == ()
    assert frozenset(SG_JUPYTER_KINDS) == JUPYTER_KINDS

    sg = SecurityGroup.from_spec("j1", spec(image="jupyter-lab"), (8888,))
    assert sg.publish == ((8888, 8888),) and sg.allow_cidrs == () and sg.control_only == ()
    py = SecurityGroup.from_spec("j2", spec(), ())
    assert py.publish == () and py.gateway_ports() == (7070,)


def test_explicit_publish_replaces_the_default_but_keeps_the_proxy_port() -> None:
    sg = SecurityGroup.from_spec(
        "j1",
        spec(image="jupyter-lab", publish=["9100:9000", "9000:9000"], allow_cidr=["10.1.2.3/8"]),
        (8888,),
    )
    assert sg.publish == ((9100, 9000), (9000, 9000))
    assert sg.allow_cidrs == ("10.0.0.0/8",)  # normalised
    assert sg.control_only == (8888,)  # the control plane alone still reaches Jupyter
    assert sg.redirects == ((9100, 9000),)
    assert sg.host_ports == (9100, 9000) and sg.job_ports == (9000,)
    assert sg.gateway_ports() == (7070, 9100, 9000, 8888)


def test_publish_validation() -> None:
    same = SecurityGroup.from_spec("j", spec(publish=["80:8080", "80:8080"]))
    assert same.publish == ((80, 8080),)
    with pytest.raises(ValidationError, match="published twice"):
        SecurityGroup.from_spec("j", spec(publish=["80:8080", "80:9090"]))
    with pytest.raises(ValidationError):
        SecurityGroup("j", ((0, 1),), ())
    with pytest.raises(ValidationError):
        SecurityGroup("j", (), ("not-a-cidr",))
    for reserved in ("7070:80", "7100:80", "7199:80"):
        with pytest.raises(ValidationError, match="reserved"):
            SecurityGroup.from_spec("j", spec(publish=[reserved])).check_reserved()
    SecurityGroup.from_spec("j", spec(publish=["7200:7070"])).check_reserved()  # job side is free


def test_rules_are_ordered_and_json_able() -> None:
    sg = SecurityGroup("j1", ((8888, 8888), (9100, 9000)), ("203.0.113.0/24",))
    rules = sg.rules(gateway="198.18.0.1", pool="198.18.0.0/15")
    json.dumps(rules)  # JSON-able as is
    assert rules[0]["from"] == "loopback"
    assert rules[1].get("state") == "established,related"
    assert rules[2] == {
        "action": "allow",
        "direction": "inbound",
        "proto": "tcp",
        "port": 7070,
        "from": "198.18.0.1/32",
        "why": "control plane (agent API)",
    }
    assert rules[3] == {
        "action": "allow",
        "direction": "inbound",
        "proto": "tcp",
        "port": 8888,
        "from": "198.18.0.1/32",
        "why": "control plane (stable-URL proxy)",
    }
    cp = [(r["port"], r.get("to_port")) for r in rules if r["from"] == "198.18.0.1/32"]
    assert cp == [(7070, None), (8888, None), (9100, 9000), (9000, None)]
    peers = [r["port"] for r in rules if r["from"] == "198.18.0.0/15"]
    assert peers == [7070, f"{PAGE_SERVER_PORTS[0]}-{PAGE_SERVER_PORTS[1]}"]
    published = [(r["port"], r.get("to_port")) for r in rules if r["from"] == "203.0.113.0/24"]
    assert published == [(8888, None), (9100, 9000)]
    assert rules[-2]["action"] == "deny" and rules[-2]["direction"] == "inbound"
    assert rules[-1]["direction"] == "outbound" and rules[-1]["action"] == "allow"
    assert all(r["action"] == "allow" for r in rules[:-2])


def test_rules_without_addresses_use_labels_and_no_cidr_means_no_public_access() -> None:
    rules = SecurityGroup("j", ((8888, 8888),), ()).rules()
    sources = {r["from"] for r in rules}
    assert "control plane" in sources and "other instances" in sources
    assert not [r for r in rules if "allow_cidr" in r["why"]]


def test_dict_round_trip() -> None:
    sg = SecurityGroup("j", ((9100, 9000),), ("10.0.0.0/8",), (8888,))
    assert SecurityGroup.from_dict(json.loads(json.dumps(sg.to_dict()))) == sg


def test_nft_ruleset() -> None:
    sg = SecurityGroup("j1", ((9000, 9000), (9100, 9000)), ("198.19.5.128/25", "fd00::/8"))
    text = ruleset(sg, gateway="198.19.5.1", pool="198.19.5.0/24", agent_port=7070)
    lines = [ln.strip() for ln in text.splitlines()]
    # one transaction that replaces the table whatever was there
    assert lines[:3] == [
        "add table inet outgrow_sg",
        "delete table inet outgrow_sg",
        "table inet outgrow_sg {",
    ]
    assert "type filter hook input priority filter; policy drop;" in lines
    assert lines.index('iifname "lo" accept comment "loopback"') < lines.index(
        'ct state established,related accept comment "replies"'
    )
    assert any(
        ln.startswith("ip saddr 198.19.5.1 tcp dport { 7070, 9000, 9100 } accept") for ln in lines
    )
    assert any(
        ln.startswith("ip saddr 198.19.5.0/24 tcp dport { 7070, 7100-7199 } accept") for ln in lines
    )
    assert any(
        ln.startswith(
            "ip saddr { 198.19.5.128/25 } tcp dport 9000 ct original proto-dst 9100 accept"
        )
        for ln in lines
    )
    assert any(ln.startswith("ip6 saddr { fd00::/8 } tcp dport 9000") for ln in lines)
    assert any(ln.startswith("tcp dport 9100 redirect to :9000") for ln in lines)
    assert not any("redirect to :9000" in ln and "dport 9000" in ln for ln in lines)
    # no redirect, no nat chain; no allow_cidr, no published rule
    plain = ruleset(SecurityGroup("j", ((8888, 8888),), ()), gateway="10.0.0.1", pool="10.0.0.0/24")
    assert "nat" not in plain and "proto-dst" not in plain
    with pytest.raises(ValidationError):
        ruleset(SecurityGroup("j", ((7070, 80),), ()), gateway="10.0.0.1", pool="10.0.0.0/24")


def test_page_server_port_is_the_first_free_one_of_the_range() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    if base > 65500:
        pytest.skip("ephemeral port too high for a 3-port range")
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", base))
        except OSError:
            pytest.skip("port taken meanwhile")
        busy.listen(1)
        port = page_server_port("127.0.0.1", (base, base + 2))
        assert base < port <= base + 2
        with socket.socket() as busy2:
            busy2.bind(("127.0.0.1", port))
            busy2.listen(1)
            with socket.socket() as busy3:
                last = base + 2 if port == base + 1 else base + 1
                try:
                    busy3.bind(("127.0.0.1", last))
                except OSError:
                    pytest.skip("port taken meanwhile")
                busy3.listen(1)
                with pytest.raises(CheckpointError, match="no free page-server port"):
                    page_server_port("127.0.0.1", (base, base + 2))
