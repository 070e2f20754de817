#!/usr/bin/env bash
# configurable-http-proxy (JupyterHub's proxy) for the JupyterHub tests and docs/jupyterhub.md,
# from npm, exactly as pinned by scripts/chp/package-lock.json (`npm ci`), into a
# project-owned prefix. Node.js >= 18 and npm come from Debian when missing.
# Idempotent: exits at once when the installed lock matches the committed one.
set -euo pipefail
cd "$(dirname "$0")/.."

PREFIX=${OUTGROW_CHP_PREFIX:-/opt/outgrow/chp}
BIN="$PREFIX/node_modules/.bin/configurable-http-proxy"
log() { echo "[chp] $*" >&2; }

if [ -x "$BIN" ] && cmp -s scripts/chp/package-lock.json "$PREFIX/package-lock.json"; then
    log "ok: $BIN"
    exit 0
fi
node_ok() { command -v node >/dev/null && node -e 'process.exit(parseInt(process.versions.node, 10) >= 18 ? 0 : 1)'; }
if ! node_ok || ! command -v npm >/dev/null; then
    log "installing nodejs and npm from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_ok || { log "error: configurable-http-proxy needs Node.js >= 18"; exit 1; }
log "installing configurable-http-proxy (scripts/chp/package-lock.json) into $PREFIX"
mkdir -p "$PREFIX"
rm -f "$PREFIX/package-lock.json"
cp scripts/chp/package.json scripts/chp/package-lock.json "$PREFIX/"
(cd "$PREFIX" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
"$BIN" --version >/dev/null
log "ok: $BIN $("$BIN" --version)"
