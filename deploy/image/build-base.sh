#!/usr/bin/env bash
# A Debian bookworm base image with Python 3.11, built with mmdebstrap and imported into podman:
# the stand-in for python:3.11-slim where the public container registries cannot be reached.
#
#   deploy/image/build-base.sh            build it unless it already exists
#   FORCE=1 deploy/image/build-base.sh    rebuild it
#
# Then: podman build -f deploy/docker/Dockerfile.cpu --build-arg PYTHON_IMAGE=<BASE_IMAGE> ...
#
# What Dockerfile.cpu needs from its base, as the official image provides it: `python` and `pip`
# on PATH (python-is-python3, python3-pip), `python -m venv` with ensurepip (python3-venv),
# groupadd/useradd (passwd, essential), CA certificates. Debian's python3 in bookworm is 3.11.
#
# Steps, each skipped when already done:
#   1. apt-get install podman mmdebstrap runc uidmap fuse-overlayfs (only those missing; as root)
#   2. `default_ulimits = []` under [containers] in $CONTAINERS_CONF (other content kept)
#   3. mmdebstrap: a minbase bookworm rootfs (+ bookworm-updates, bookworm-security), no docs,
#      man pages or locales, merged /usr without the usrmerge package (and so without perl)
#   4. podman import with PATH, LANG and labels; then a smoke test of python, pip and venv
#
# Environment: BASE_IMAGE (localhost/stream-infer-base:bookworm-py311), FORCE (0),
#   DEBIAN_MIRROR (http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
#   (http://deb.debian.org/debian-security), EXTRA_CA_CERTS (space-separated PEM files added to
#   the base's trust store; default: the host's /usr/local/share/ca-certificates/*.crt, so that
#   pip inside `podman build` trusts what the host trusts, e.g. a TLS-inspecting proxy; set it
#   to "" for none), CONTAINERS_CONF (/etc/containers/containers.conf).
# Files: the rootfs tarball is written under .local/image/ and removed after the import; the image
# lives in podman's storage.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
base_image="${BASE_IMAGE:-localhost/stream-infer-base:bookworm-py311}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
conf="${CONTAINERS_CONF:-/etc/containers/containers.conf}"
work="$repo/.local/image"
# The global flags these VMs need (runc: crun is not installed; cgroupfs: no systemd as PID 1).
podman=(podman --runtime runc --cgroup-manager=cgroupfs)

log() { printf 'build-base: %s\n' "$*" >&2; }

install_tools() {
  local -A need=([podman]=podman [mmdebstrap]=mmdebstrap [runc]=runc [newuidmap]=uidmap
                 [fuse-overlayfs]=fuse-overlayfs)
  local missing=() cmd
  for cmd in "${!need[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "missing: ${missing[*]}; install them as root (apt-get install ${missing[*]})"
    return 1
  fi
  log "installing ${missing[*]}"
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# `default_ulimits = []` under [containers]: without it podman asks runc for its default
# nofile limit (1048576), above this VM's hard limit, and every container fails to start.
configure_podman() {
  mkdir -p "$(dirname "$conf")"
  python3 - "$conf" <<'PY'
import re, sys
from pathlib import Path

path = Path(sys.argv[1])
want = "default_ulimits = []"
lines = path.read_text().splitlines() if path.exists() else []
out, section, done, skipping = [], None, False, False
for line in lines:
    s = line.strip()
    if skipping:  # the rest of a multi-line default_ulimits array being replaced
        if "]" in s.split("#", 1)[0]:
            skipping = False
        continue
    m = re.match(r"^\[\s*([^\]]+?)\s*\]", s)
    if m and not s.startswith("[["):
        if section == "containers" and not done:
            out.append(want)
            done = True
        section = m.group(1)
        out.append(line)
        continue
    if section == "containers" and re.match(r"^default_ulimits\s*=", s):
        if not done:
            out.append(want)
            done = True
        value = s.split("=", 1)[1].split("#", 1)[0]
        skipping = "[" in value and "]" not in value
        continue
    out.append(line)
if not done:
    if section != "containers":
        if out and out[-1].strip():
            out.append("")
        out.append("[containers]")
    out.append(want)
text = "\n".join(out) + "\n"
if not path.exists() or path.read_text() != text:
    path.write_text(text)
    print(f"build-base: wrote {want!r} under [containers] in {path}", file=sys.stderr)
PY
}

image_exists() { "${podman[@]}" image exists "$base_image"; }

build_rootfs() {
  local tar="$1" certs=() hooks=()
  if [[ -v EXTRA_CA_CERTS ]]; then
    read -r -a certs <<<"$EXTRA_CA_CERTS"
  else
    shopt -s nullglob
    certs=(/usr/local/share/ca-certificates/*.crt)
    shopt -u nullglob
  fi
  if ((${#certs[@]})); then
    local c
    for c in "${certs[@]}"; do
      [[ -f "$c" ]] || { log "EXTRA_CA_CERTS: $c is not a file"; return 1; }
      hooks+=(--customize-hook="copy-in $c /usr/local/share/ca-certificates/")
    done
    # shellcheck disable=SC2016 # "$1" is the chroot, expanded by mmdebstrap's hook shell
    hooks+=(--customize-hook='chroot "$1" update-ca-certificates >/dev/null')
    log "adding ${#certs[@]} CA certificate(s) to the base: ${certs[*]}"
  fi
  # The Debian marker that makes a plain `pip install` into the system interpreter fail
  # (PEP 668) stays: Dockerfile.cpu installs into a venv only.
  # shellcheck disable=SC2016 # "$1" in the hooks is the chroot, expanded by mmdebstrap
  mmdebstrap --mode=root --variant=minbase --format=tar \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    "${hooks[@]}" \
    --customize-hook='rm -rf "$1"/var/log/apt/* "$1"/var/log/dpkg.log "$1"/var/cache/ldconfig/aux-cache' \
    "$suite" "$tar" \
    "deb $mirror $suite main" \
    "deb $mirror $suite-updates main" \
    "deb $security_mirror $suite-security main" \
    </dev/null >"$work/mmdebstrap.log" 2>&1 || {
      log "mmdebstrap failed; the end of $work/mmdebstrap.log:"
      tail -n 30 "$work/mmdebstrap.log" >&2
      return 1
    }
}

import_rootfs() {
  local tar="$1" pyver
  # The python3.11 version, from the rootfs's dpkg status file.
  pyver="$(tar -xOf "$tar" ./var/lib/dpkg/status | awk '/^Package: /{p=$2} p=="python3.11" && /^Version: /{print $2; exit}')"
  "${podman[@]}" import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "ENV PYTHON_VERSION=${pyver%%-*}" \
    --change 'LABEL org.opencontainers.image.title=stream-infer-base' \
    --change 'LABEL org.opencontainers.image.description=Debian bookworm (mmdebstrap minbase) with Python 3.11, pip and venv' \
    --change "LABEL org.opencontainers.image.version=debian-$suite-python-${pyver}" \
    --change 'CMD ["python3"]' \
    --message "mmdebstrap $suite minbase + python3 $pyver" \
    "$tar" "$base_image" >/dev/null
}

smoke_test() {
  "${podman[@]}" run --rm --network host "$base_image" sh -euc '
    python --version; pip --version
    python -m venv /tmp/v && /tmp/v/bin/pip --version >/dev/null
    command -v groupadd useradd >/dev/null
    echo "venv ok, groupadd/useradd ok"' >&2
}

main() {
  install_tools
  configure_podman
  if [[ "${FORCE:-0}" != 1 ]] && image_exists; then
    log "$base_image exists ($(size_mb "$base_image") MB); FORCE=1 rebuilds it"
    return 0
  fi
  mkdir -p "$work"
  local tar="$work/rootfs-$suite.tar" t0=$SECONDS
  rm -f "$tar"
  log "mmdebstrap $suite -> $tar (log: $work/mmdebstrap.log)"
  build_rootfs "$tar"
  log "podman import -> $base_image"
  import_rootfs "$tar"
  rm -f "$tar"
  smoke_test
  log "built $base_image ($(size_mb "$base_image") MB) in $((SECONDS - t0)) s"
}

size_mb() {
  local bytes
  bytes="$("${podman[@]}" image inspect --format '{{.Size}}' "$1")"
  python3 -c "print(round($bytes / 1e6, 1))"
}

main "$@"
