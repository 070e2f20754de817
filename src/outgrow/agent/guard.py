"""Keep jobs away from agents: the agent's API and the page-server ports answer the control
plane and peer agents only. A job never runs as root (agent/sandbox.py); packets of a
non-root process to those ports — on this instance's agent or any other's — are refused
at the output hook of the instance's network namespace, before an agent sees a token."""

from __future__ import annotations

import subprocess

from outgrow.errors import RuntimeFailure

TABLE = "outgrow_guard"


def rules(agent_port: int, page_server_ports: tuple[int, int]) -> str:
    low, high = page_server_ports
    ports = f"{{ {agent_port}, {low}-{high} }}"
    # "table …; delete table …" first: applying it again replaces it atomically.
    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain output {{ type filter hook output priority 0; policy accept;
    meta skuid != 0 tcp dport {ports} reject with tcp reset
  }}
}}
"""


def apply(agent_port: int, page_server_ports: tuple[int, int]) -> None:
    """Install the guard in the calling process's network namespace (idempotent)."""
    r = subprocess.run(
        ["nft", "-f", "-"],
        input=rules(agent_port, page_server_ports),
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        raise RuntimeFailure("could not keep jobs away from the agent", detail=r.stderr.strip())
