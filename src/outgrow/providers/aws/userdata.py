"""The cloud-init user-data of an aws instance: a ``#cloud-config`` document that

1. writes the agent token (``/etc/outgrow/agent.token``, mode 0600), the project's CRIU
   install script and the ``outgrow-agent`` systemd unit (``write_files``);
2. installs Python's venv tooling, then outgrow itself — a pinned wheel (downloaded from a
   presigned S3 URL or HTTPS and checked against its sha256 when one is configured) or a
   pinned requirement from the package index — into ``/opt/outgrow/venv``;
3. installs CRIU exactly as ``make setup`` does (``src/outgrow/data/install-criu.sh``: a usable
   system CRIU ≥ 4.2 or the hash-checked 4.2.1 build into ``/opt/outgrow/criu``);
4. ``systemctl enable --now outgrow-agent`` (``runcmd``, under ``set -eu``: a failed step
   stops the rest, and the control plane's health wait reports the timeout).

The unit's ``ExecStartPre`` (:mod:`outgrow.providers.aws.bootstrap`) creates the job
cgroup and finds the instance address through IMDSv2; the agent then runs with the same
flags the local provider gives it, in the machine's own network namespace. Its
environment carries what it needs to reach S3 (suspend checkpoints, job directories with
``OUTGROW_AWS_JOB_STORAGE=s3``): ``OUTGROW_AWS_REGION`` and, when a bucket is configured,
``OUTGROW_AWS_S3_BUCKET`` — the credentials are the instance profile's — and outgrow is
then installed with its ``aws`` extra (boto3).
"""

from __future__ import annotations

import base64
import gzip
import re
import shlex
from dataclasses import dataclass, field
from urllib.parse import urlparse

import yaml

from outgrow import __version__
from outgrow.errors import ConfigError

USER_DATA_LIMIT = 16 * 1024  # EC2's limit on raw user-data
VENV = "/opt/outgrow/venv"
TOKEN_FILE = "/etc/outgrow/agent.token"
ENV_FILE = "/run/outgrow/agent.env"
REDIRECT_FILE = "/etc/outgrow/redirect.nft"
CRIU_SCRIPT = "/opt/outgrow/install-criu.sh"
CRIU_PATCH_DIR = "/opt/outgrow/criu-patches"  # install-criu.sh applies what is beside it
CRIU_PREFIX = "/opt/outgrow/criu"
CRIU = f"{CRIU_PREFIX}/sbin/criu"
JOBS_DIR = "/var/lib/outgrow/jobs"
WORK_DIR = "/var/lib/outgrow/agent"
IMAGE_CACHE_DIR = "/var/cache/outgrow/images"
UNIT = "outgrow-agent.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
SPOT_UNIT = "outgrow-spotwatch.service"
SPOT_UNIT_PATH = f"/etc/systemd/system/{SPOT_UNIT}"
HOST_NETNS = "/proc/1/ns/net"  # the agent owns the whole machine: its netns is the host's
PACKAGES = (
    "python3-venv",
    "python3-pip",
    "curl",
    "ca-certificates",
    "nftables",
    "iproute2",
    "util-linux",
    "python3-seccomp",  # the job sandbox's init (agent/jobinit.py) loads its seccomp filter
    "skopeo",  # OCI images: import the archive shipped through S3, or pull (agent/oci.py)
    "umoci",
)
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+)(\[(?P<extras>[A-Za-z0-9_,.-]+)\])?(?P<pin>==.+)$"
)


@dataclass(frozen=True)
class AgentInstall:
    """Where the instance gets outgrow from: a wheel URL (https, possibly presigned S3)
    with an optional sha256, or a pip requirement (``outgrow==0.1.0``)."""

    wheel_url: str | None = None
    wheel_name: str | None = None  # the file name pip needs (…-py3-none-any.whl)
    sha256: str | None = None
    requirement: str = f"outgrow=={__version__}"

    def __post_init__(self) -> None:
        if self.wheel_url is not None:
            if not self.wheel_url.startswith("https://"):
                raise ConfigError("the agent wheel URL must be https:// (or s3:// presigned)")
            name = self.wheel_name or urlparse(self.wheel_url).path.rsplit("/", 1)[-1]
            if not (name.endswith(".whl") and _SAFE.match(name)):
                raise ConfigError(f"agent wheel name {name!r} is not a wheel file name")
            object.__setattr__(self, "wheel_name", name)
        elif not re.match(
            r"^[A-Za-z0-9_.-]+(\[[A-Za-z0-9_,.-]+\])?==[A-Za-z0-9_.+!-]+$", self.requirement
        ):
            raise ConfigError(
                f"agent package {self.requirement!r} must be pinned (NAME==VERSION)",
                field="agent_package",
            )


@dataclass(frozen=True)
class UserDataSpec:
    instance_id: str
    cluster: str
    token: str
    cgroup: str
    install: AgentInstall
    install_criu_sh: str
    criu_patches: tuple[tuple[str, str], ...] = ()  # (name, content), beside the script
    agent_port: int = 7070
    memory_reserve_mib: int = 768
    oom_headroom_mib: int = 64
    redirects: tuple[tuple[int, int], ...] = ()  # (host_port, job_port) from the SG
    spot: bool = False  # also run the spot watcher (interruption notices → agent)
    region: str | None = None  # the agent's OUTGROW_AWS_REGION (S3 checkpoints, job dirs)
    s3_bucket: str | None = None  # the agent's OUTGROW_AWS_S3_BUCKET; installs outgrow[aws]
    packages: tuple[str, ...] = field(default=PACKAGES)

    @property
    def extras(self) -> tuple[str, ...]:
        """Extras outgrow is installed with: ``aws`` (boto3) when the agent uses S3."""
        return ("aws",) if self.s3_bucket else ()


def agent_environment(spec: UserDataSpec) -> dict[str, str]:
    """What the agent's unit puts in its environment: how the agent reaches S3 (the
    credentials are the instance profile's, from IMDSv2)."""
    env: dict[str, str] = {}
    if spec.region:
        if not _REGION.match(spec.region):
            raise ConfigError(f"invalid AWS region {spec.region!r}", field="region")
        env["OUTGROW_AWS_REGION"] = spec.region
    if spec.s3_bucket:
        if not _BUCKET.match(spec.s3_bucket):
            raise ConfigError(f"invalid S3 bucket name {spec.s3_bucket!r}", field="s3_bucket")
        env["OUTGROW_AWS_S3_BUCKET"] = spec.s3_bucket
    return env


def agent_argv(spec: UserDataSpec) -> list[str]:
    """The agent's command line (``${OUTGROW_AGENT_ADDRESS}`` is expanded by systemd)."""
    return [
        f"{VENV}/bin/python",
        "-m",
        "outgrow.agent",
        "--instance-id",
        spec.instance_id,
        "--cgroup",
        spec.cgroup,
        "--netns-path",
        HOST_NETNS,
        "--address",
        "${OUTGROW_AGENT_ADDRESS}",
        "--port",
        str(spec.agent_port),
        "--jobs-dir",
        JOBS_DIR,
        "--work-dir",
        WORK_DIR,
        "--image-cache-dir",
        IMAGE_CACHE_DIR,
        "--criu",
        CRIU,
        "--token-file",
        TOKEN_FILE,
        "--oom-headroom-mib",
        str(spec.oom_headroom_mib),
    ]


def redirect_ruleset(redirects: tuple[tuple[int, int], ...]) -> str:
    """nft script (one transaction) redirecting published host ports to job ports; EC2
    security groups filter but cannot rewrite ports."""
    lines = [
        "add table inet outgrow_redirect",
        "delete table inet outgrow_redirect",
        "table inet outgrow_redirect {",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
    ]
    lines += [f"    tcp dport {h} redirect to :{j}" for h, j in redirects]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def unit_text(spec: UserDataSpec) -> str:
    pre = [
        f"{VENV}/bin/python -m outgrow.providers.aws.bootstrap --cgroup {spec.cgroup} "
        f"--env-file {ENV_FILE} --memory-reserve-mib {spec.memory_reserve_mib}"
    ]
    if spec.redirects:
        pre.append(f"/usr/sbin/nft -f {REDIRECT_FILE}")
    return "\n".join(
        [
            "[Unit]",
            f"Description=outgrow agent (instance {spec.instance_id}, cluster {spec.cluster})",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=simple",
            *(f"ExecStartPre={c}" for c in pre),
            # Written by the ExecStartPre above, read before ExecStart ("-": not yet there
            # for the ExecStartPre itself).
            f"EnvironmentFile=-{ENV_FILE}",
            *(f"Environment={k}={v}" for k, v in agent_environment(spec).items()),
            "ExecStart=" + " ".join(agent_argv(spec)),
            "Restart=on-failure",
            "RestartSec=5",
            # Only the agent: jobs, CRIU and page servers outlive an agent restart, and the
            # agent re-adopts its job.
            "KillMode=process",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def spotwatch_unit_text(spec: UserDataSpec) -> str:
    return "\n".join(
        [
            "[Unit]",
            f"Description=outgrow spot interruption watcher (instance {spec.instance_id})",
            f"After={UNIT}",
            f"Wants={UNIT}",
            "",
            "[Service]",
            "Type=simple",
            f"EnvironmentFile={ENV_FILE}",
            f"ExecStart={VENV}/bin/python -m outgrow.providers.aws.spotwatch "
            f"--agent-url http://${{OUTGROW_AGENT_ADDRESS}}:{spec.agent_port} "
            f"--token-file {TOKEN_FILE}",
            "Restart=always",
            "RestartSec=5",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def with_extras(requirement: str, extras: tuple[str, ...]) -> str:
    """``outgrow==0.1.0`` + (aws,) → ``outgrow[aws]==0.1.0`` (extras already there kept)."""
    m = _REQUIREMENT.match(requirement)
    if not extras or m is None:
        return requirement
    have = [e for e in (m.group("extras") or "").split(",") if e]
    merged = have + [e for e in extras if e not in have]
    return f"{m.group('name')}[{','.join(merged)}]{m.group('pin')}"


def install_commands(install: AgentInstall, extras: tuple[str, ...] = ()) -> list[str]:
    pip = f"{VENV}/bin/pip install --no-cache-dir --disable-pip-version-check"
    if install.wheel_url is None:
        return [f"{pip} {shlex.quote(with_extras(install.requirement, extras))}"]
    path = f"/opt/outgrow/{install.wheel_name}"
    cmds = [f"curl -fsSL --retry 5 -o {path} {shlex.quote(install.wheel_url)}"]
    if install.sha256:
        cmds.append(f"echo {shlex.quote(f'{install.sha256}  {path}')} | sha256sum -c -")
    target = f"{path}[{','.join(extras)}]" if extras else path
    cmds.append(f"{pip} {shlex.quote(target)}")
    return cmds


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the unit, the scripts) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def gz_b64(text: str) -> str:
    """``text`` as cloud-init's ``encoding: gz+b64`` wants it (mtime 0: reproducible)."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def render(spec: UserDataSpec) -> str:
    """The ``#cloud-config`` document (checked against EC2's 16 KiB limit)."""
    if not _SAFE.match(spec.instance_id) or not _SAFE.match(spec.cgroup.replace("/", "_")):
        raise ConfigError(f"unsafe instance id or cgroup name {spec.instance_id!r}")
    files = [
        {
            "path": TOKEN_FILE,
            "owner": "root:root",
            "permissions": "0600",
            "content": spec.token + "\n",
        },
        {
            "path": CRIU_SCRIPT,
            "owner": "root:root",
            "permissions": "0755",
            "content": spec.install_criu_sh,
        },
        *(
            {
                "path": f"{CRIU_PATCH_DIR}/{name}",
                "owner": "root:root",
                "permissions": "0644",
                # Compressed (cloud-init decodes it): the patches' explanations are most
                # of the 16 KiB EC2 allows.
                "encoding": "gz+b64",
                "content": gz_b64(content),
            }
            for name, content in spec.criu_patches
        ),
        {
            "path": UNIT_PATH,
            "owner": "root:root",
            "permissions": "0644",
            "content": unit_text(spec),
        },
    ]
    if spec.spot:
        files.append(
            {
                "path": SPOT_UNIT_PATH,
                "owner": "root:root",
                "permissions": "0644",
                "content": spotwatch_unit_text(spec),
            }
        )
    if spec.redirects:
        files.append(
            {
                "path": REDIRECT_FILE,
                "owner": "root:root",
                "permissions": "0644",
                "content": redirect_ruleset(spec.redirects),
            }
        )
    runcmd = [
        "set -eu",
        f"mkdir -p /opt/outgrow {JOBS_DIR} {WORK_DIR} {IMAGE_CACHE_DIR} /run/outgrow",
        "apt-get update -qq",
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
        + " ".join(spec.packages),
        f"python3 -m venv {VENV}",
        *install_commands(spec.install, spec.extras),
        f"OUTGROW_CRIU_PREFIX={CRIU_PREFIX} bash {CRIU_SCRIPT}",
        "systemctl daemon-reload",
        f"systemctl enable --now {UNIT}",
    ]
    if spec.spot:
        runcmd.append(f"systemctl enable --now {SPOT_UNIT}")
    doc = {"write_files": files, "runcmd": runcmd}
    text = (
        "#cloud-config\n"
        f"# outgrow {__version__}: instance {spec.instance_id} of cluster {spec.cluster}\n"
        + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    )
    size = len(text.encode())
    if size > USER_DATA_LIMIT:
        raise ConfigError(f"user-data is {size} bytes, EC2 allows {USER_DATA_LIMIT}")
    return text
