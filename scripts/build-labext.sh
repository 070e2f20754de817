#!/usr/bin/env bash
# Builds outgrow's JupyterLab extension (src/outgrow/data/labext/js) into the prebuilt
# extension committed in src/outgrow/data/labext/outgrow_lab/labextension/, from the npm
# registry exactly as pinned by js/package-lock.json (`npm ci`) and with the builder of the
# jupyter-lab image's JupyterLab (from PyPI). Only needed after changing js/: image builds
# install the committed build and need neither Node.js nor npm (docs/jupyterlab.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PKG=src/outgrow/data/labext
JUPYTERLAB=jupyterlab==4.6.6  # as the jupyter-lab image (domain/images.py)
# Always the same scratch path: the bundler's module ids depend on it, and the same path
# gives the same output byte for byte (build/ is git-ignored).
work=$PWD/build/labext
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
log() { echo "[labext] $*" >&2; }

log "builder: $JUPYTERLAB in a scratch venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --disable-pip-version-check "$JUPYTERLAB"
mkdir "$work/js"
cp -r "$PKG/js/package.json" "$PKG/js/package-lock.json" "$PKG/js/src" "$work/js/"
log "npm ci (js/package-lock.json)"
(cd "$work/js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
(cd "$work/js" && PATH="$work/venv/bin:$PATH" jupyter-builder build .)
rm -rf "$PKG/outgrow_lab/labextension"
cp -r "$work/outgrow_lab/labextension" "$PKG/outgrow_lab/labextension"
log "ok: $PKG/outgrow_lab/labextension"
