#!/usr/bin/env bash
# GPU image entrypoint: build the TensorRT plan for this GPU on first start, then run stream-infer.
#   MODEL_SRC   the baked artifact (read-only image layer)
#   ENGINE_DIR  a writable directory (volume) that receives a copy of it plus the plan
# Only `serve` needs the plan; any other subcommand runs directly.
set -euo pipefail
if [[ "${1:-}" == "serve" ]]; then
  mkdir -p "$ENGINE_DIR"
  if [[ ! -f "$ENGINE_DIR/model.json" ]]; then
    cp -r "$MODEL_SRC/." "$ENGINE_DIR/"
  fi
  if ! compgen -G "$ENGINE_DIR/*.plan" >/dev/null; then
    echo "stream-infer: building the TensorRT plan in $ENGINE_DIR (once per volume)" >&2
    stream-infer build-engine "$ENGINE_DIR"
  fi
fi
exec stream-infer "$@"
