#!/usr/bin/env bash
# Install CRIU 4.2.1 under a project-owned prefix, as docs/design.md says:
# Debian bookworm's criu 3.17 fails on current kernels and 4.1.1 fails on INET sockets,
# so we build the 4.2.1 upstream tarball fetched (hash-checked) by `apt-get source`
# from Debian sid, using the machine's own Debian mirror, with outgrow's small patches
# (criu-patches/*.patch beside this script, each explaining itself).
# Idempotent: exits at once when this exact build (version + patches) is installed and
# `criu check` passes. A system criu is not used: it lacks the patches.
set -euo pipefail

PREFIX=${OUTGROW_CRIU_PREFIX:-/opt/outgrow/criu}
WANT_VERSION=4.2.1
WANT_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
BUILD_DEPS="build-essential libprotobuf-c-dev protobuf-c-compiler libprotobuf-dev protobuf-compiler
python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libgnutls28-dev libnftables-dev
pkg-config uuid-dev xz-utils dpkg-dev patch"

log() { echo "[criu] $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
patches=$(ls "$here"/criu-patches/*.patch 2>/dev/null | sort || true)
# What this build is: the version and every patch's content.
# shellcheck disable=SC2086
want_stamp=$( { echo "$WANT_VERSION"; [ -z "$patches" ] || cat $patches; } | sha256sum | cut -c1-16)
stamp_file="$PREFIX/share/outgrow-criu.stamp"

usable() {  # usable BINARY -> 0 when version >= 4.2 and `criu check` passes
    local bin=$1 ver
    [ -x "$bin" ] || return 1
    ver=$("$bin" --version 2>/dev/null | awk '/^Version:/{print $2}')
    [ -n "$ver" ] || return 1
    dpkg --compare-versions "$ver" ge 4.2 || return 1
    "$bin" check >/dev/null 2>&1 || return 1
}

if [ "$(cat "$stamp_file" 2>/dev/null)" = "$want_stamp" ] && usable "$PREFIX/sbin/criu"; then
    log "ok: $PREFIX/sbin/criu $("$PREFIX/sbin/criu" --version | awk '/^Version:/{print $2}') ($want_stamp)"
    exit 0
fi

log "building CRIU $WANT_VERSION into $PREFIX (about a minute)"
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $BUILD_DEPS >/dev/null

work=$(mktemp -d /tmp/outgrow-criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
# The machine's own Debian mirror, from deb822 sources or the classic list.
mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
             | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/src"
echo "deb-src $mirror sid main" > "$work/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache" -o APT::Sandbox::User=root)
apt-get "${APT_OPTS[@]}" -qq update >/dev/null
# The .debian.tar.xz may 404 on some mirrors (apt then exits non-zero); only the
# upstream tarball is needed and its hash is checked below.
(cd "$work/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only "criu=$WANT_VERSION-1" >/dev/null 2>&1) || true
if ! ls "$work"/src/criu_"$WANT_VERSION".orig.tar.* >/dev/null 2>&1; then
    (cd "$work/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only criu >/dev/null 2>&1) || true
fi
tarball=$(ls "$work"/src/criu_"$WANT_VERSION".orig.tar.* 2>/dev/null | head -1 || true)
if [ -z "$tarball" ]; then
    log "error: could not download criu_$WANT_VERSION.orig.tar.xz from $mirror (sid)"
    exit 1
fi
got=$(sha256sum "$tarball" | awk '{print $1}')
if [ "$got" != "$WANT_SHA256" ]; then
    log "error: sha256 mismatch for $tarball: $got"
    exit 1
fi
tar -C "$work" -xf "$tarball"
src=$(find "$work" -maxdepth 1 -type d -name 'criu-*' | head -1)
for p in $patches; do
    log "applying $(basename "$p")"
    patch -d "$src" -p1 --quiet --forward < "$p" || { log "error: $(basename "$p") does not apply"; exit 1; }
done
make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
mkdir -p "$PREFIX/sbin" "$PREFIX/share"
install -m 0755 "$src/criu/criu" "$PREFIX/sbin/criu.new"
mv -f "$PREFIX/sbin/criu.new" "$PREFIX/sbin/criu"  # atomic: a running dump keeps its binary
usable "$PREFIX/sbin/criu" || { "$PREFIX/sbin/criu" check >&2 || true; log "error: built criu fails 'criu check'"; exit 1; }
echo "$want_stamp" > "$stamp_file"
log "ok: installed $PREFIX/sbin/criu ($WANT_VERSION, $want_stamp)"
