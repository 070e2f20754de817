#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian 12 machine as root: system packages, CRIU,
# and the project virtualenv at .venv. Quick (seconds) when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[setup] $*" >&2; }
[ "$(id -u)" = 0 ] || { log "error: run as root (namespaces, cgroups and CRIU need it)"; exit 1; }

# iproute2: netns/veth/bridge; nftables: security groups and CRIU's network lock;
# util-linux: unshare/nsenter; chromium: the console's browser tests; python3-seccomp: the
# job sandbox's init (src/outgrow/agent/jobinit.py) loads its seccomp filter with it;
# postgresql: the store's tests run a throwaway PostgreSQL 15 cluster (tests/pg.py;
# initdb/pg_ctl only, the package's own cluster is never used).
# skopeo + umoci: OCI images (copy from archives, layouts and registries; verify, unpack).
# Tests only: mmdebstrap builds the test image's Debian rootfs; docker-registry is a real
# registry on loopback for `outgrow image pull`.
PKGS="iproute2 nftables util-linux procps python3 python3-venv python3-dev build-essential
ca-certificates chromium python3-seccomp postgresql skopeo umoci mmdebstrap docker-registry"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

bash src/outgrow/data/install-criu.sh
# configurable-http-proxy for the JupyterHub tests (tests/root/test_jupyterhub.py).
bash scripts/install-chp.sh

# The virtualenv, rebuilt only when the dependency spec changes.
PY=${PYTHON:-python3}
stamp=.venv/.outgrow-stamp
want=$(cat pyproject.toml requirements.lock 2>/dev/null | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "creating .venv and installing outgrow (editable) with dev extras"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -c requirements.lock -e '.[dev]'
    echo "$want" > "$stamp"
fi
log "ok"
