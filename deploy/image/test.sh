#!/usr/bin/env bash
# `make image-test`: build the CPU image with podman on the local Debian base and run it, as its
# non-root user with a read-only root filesystem, against the local Kafka broker.
#
#   1. the base image (deploy/image/build-base.sh; cached, FORCE=1 rebuilds it)
#   2. the model artifact (artifacts/basicmotions-cnnlstm; trained by ensure_model only if missing)
#   3. podman build -f deploy/docker/Dockerfile.cpu --build-arg PYTHON_IMAGE=<base>; the image must
#      be at most MAX_IMAGE_MB (500) MB
#   4. the broker: reused when running, else started (and then stopped at the end)
#   5. podman run --network host --read-only --tmpfs /tmp --user 10001:10001 --cap-drop ALL with a
#      mounted settings file (fresh topics and group, a free metrics port); waits for /healthz and
#      /readyz
#   6. replays BasicMotions recordings (stream-infer produce) and reads the output topic: every
#      expected prediction arrives, each valid against the prediction schema
#   7. checks the process runs as uid/gid 10001 (the image's own USER is checked after the build),
#      the root filesystem refuses writes, the image's HEALTHCHECK command passes
#   8. podman stop (SIGTERM): the service drains and exits 0; then a summary
#
# Environment: BASE_IMAGE (localhost/stream-infer-base:bookworm-py311), IMAGE
#   (localhost/stream-infer:test), MODEL_ARTIFACT (artifacts/basicmotions-cnnlstm), MAX_IMAGE_MB
#   (500, decimal megabytes as `podman images` shows them), NO_CACHE (1: build without the layer
#   cache), ENTITIES (8), RATE (500 events/s), READY_TIMEOUT_S (120); the broker: KAFKA_PORT,
#   KAFKA_CONTROLLER_PORT, KAFKA_HOME_DIR (see deploy/local/kafka.sh; e.g. a private broker on
#   39092/39093 when 9092 is someone else's) or KAFKA_BOOTSTRAP (an existing cluster).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"

py="$repo/.venv/bin/python"
cli="$repo/.venv/bin/stream-infer"
base_image="${BASE_IMAGE:-localhost/stream-infer-base:bookworm-py311}"
image="${IMAGE:-localhost/stream-infer:test}"
artifact="${MODEL_ARTIFACT:-artifacts/basicmotions-cnnlstm}"
max_mb="${MAX_IMAGE_MB:-500}"
entities="${ENTITIES:-8}"
rate="${RATE:-500}"
ready_timeout="${READY_TIMEOUT_S:-120}"
kafka_sh="$repo/deploy/local/kafka.sh"
bootstrap="${KAFKA_BOOTSTRAP:-127.0.0.1:${KAFKA_PORT:-9092}}"
podman=(podman --runtime runc --cgroup-manager=cgroupfs)

run_id="$(date +%Y%m%d-%H%M%S)-$$"
ctr="stream-infer-image-test-$run_id"
work="$repo/.local/image"
mkdir -p "$work"
tmp="$(mktemp -d "$work/run-XXXXXX")"
started_broker=0
topics_made=0
in_topic="image-test-$run_id"
out_topic="$in_topic.predictions"
group="image-test-$run_id"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now) - $1:.1f}')"; }
mb() { python3 -c "print(f'{$1 / 1e6:.1f}')"; }

cleanup() {
  local rc=$?
  set +e
  if "${podman[@]}" container exists "$ctr" 2>/dev/null; then
    if ((rc != 0)); then
      echo "-- container logs (last 60 lines):" >&2
      "${podman[@]}" logs --tail 60 "$ctr" >&2
    fi
    "${podman[@]}" rm -f -t 0 "$ctr" >/dev/null 2>&1
  fi
  if ((topics_made)); then
    "$py" - "$bootstrap" "$in_topic" "$out_topic" "$in_topic.dlq" "$group.$in_topic.state" \
      >/dev/null 2>&1 <<'PY'
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1].split(","), request_timeout_ms=10000)
existing = set(admin.list_topics())
gone = [t for t in sys.argv[2:] if t in existing]
if gone:
    admin.delete_topics(gone)
admin.close()
PY
  fi
  if ((started_broker)); then
    "$kafka_sh" stop
  fi
  rm -rf "$tmp"
  if ((rc != 0)); then
    echo "image-test: failed (exit $rc)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ -x "$py" ]] || fail "$py is missing: run make install first"

# --- 1. base ---
step "base image: $base_image"
base_how="built: mmdebstrap, import, smoke test"
if [[ "${FORCE:-0}" != 1 ]] && "${podman[@]}" image exists "$base_image" 2>/dev/null; then
  base_how="existed, reused"
fi
t0="$(now)"
"$here/build-base.sh"
base_s="$(since "$t0")"
base_bytes="$("${podman[@]}" image inspect --format '{{.Size}}' "$base_image")"

# --- 2. model artifact ---
step "model artifact: $artifact"
if ! "$py" -c 'import sys; from pathlib import Path; from stream_infer.model.zoo import is_artifact
sys.exit(0 if is_artifact(Path(sys.argv[1]), "sensor") else 1)' "$artifact"; then
  if [[ "$artifact" != artifacts/basicmotions-cnnlstm ]]; then
    fail "MODEL_ARTIFACT=$artifact is not a sensor model artifact (model.json, weights.pt, model.onnx)"
  fi
  echo "missing: training the default sensor model (ensure_model('sensor', 'artifacts'))"
  "$py" -c 'from stream_infer.model.zoo import ensure_model; print(ensure_model("sensor", "artifacts"))'
fi
"$py" -c 'import sys; from stream_infer.model.card import load_card; c = load_card(sys.argv[1])
print(f"{c.model_id}: W={c.window} hop={c.hop}")' "$artifact"

# --- 3. image ---
step "podman build -f deploy/docker/Dockerfile.cpu --build-arg PYTHON_IMAGE=$base_image -t $image"
build_log="$work/build.log"
cache=()
[[ "${NO_CACHE:-0}" == 1 ]] && cache=(--no-cache)
t0="$(now)"
if ! "${podman[@]}" build --network host --format docker --layers "${cache[@]}" \
  -f deploy/docker/Dockerfile.cpu \
  --build-arg PYTHON_IMAGE="$base_image" \
  --build-arg MODEL_ARTIFACT="$artifact" \
  -t "$image" . >"$build_log" 2>&1; then
  tail -n 40 "$build_log" >&2
  fail "podman build failed (full log: $build_log)"
fi
build_s="$(since "$t0")"
grep -E '^(STEP|COMMIT|Successfully tagged)' "$build_log" || true
image_bytes="$("${podman[@]}" image inspect --format '{{.Size}}' "$image")"
echo "image $image: $(mb "$image_bytes") MB (base $(mb "$base_bytes") MB); built in ${build_s} s (log: $build_log)"
echo "largest layers:"
"${podman[@]}" history --format json "$image" | python3 -c 'import json, sys
for layer in sorted(json.load(sys.stdin), key=lambda l: -l["size"])[:3]:
    size, by = layer["size"] / 1e6, layer["CreatedBy"][:90]
    print(f"   {size:7.1f} MB  {by}")'
python3 -c "import sys; sys.exit(0 if $image_bytes <= $max_mb * 1e6 else 1)" ||
  fail "the image is $(mb "$image_bytes") MB, over the $max_mb MB target"
image_user="$("${podman[@]}" image inspect --format '{{.Config.User}}' "$image")"
[[ "$image_user" == 10001:10001 ]] || fail "the image's USER is '$image_user', not 10001:10001"

# --- 4. broker ---
step "Kafka at $bootstrap"
if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
  echo "KAFKA_BOOTSTRAP is set: using that cluster"
elif "$kafka_sh" status >/dev/null 2>&1; then
  echo "reusing the running broker ($("$kafka_sh" status)); it is left running"
else
  if ! "$kafka_sh" start; then
    fail "could not start a broker on $bootstrap; if that port is another session's broker, run a" \
      "private one: KAFKA_PORT=39092 KAFKA_CONTROLLER_PORT=39093 KAFKA_HOME_DIR=/tmp/stream-infer-image-kafka"
  fi
  started_broker=1
fi

# --- 5. run ---
# A free port rather than the image's 9100: with --network host it is the host's port, and other
# sessions' services may hold 9100. The HEALTHCHECK command is run with that port (step 7).
metrics_port="${METRICS_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
cfg="$tmp/config.yaml"
BOOTSTRAP="$bootstrap" GROUP="$group" IN_TOPIC="$in_topic" OUT_TOPIC="$out_topic" PORT="$metrics_port" \
  "$py" - deploy/docker/config.yaml "$cfg" <<'PY'
import os, sys
import yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["kafka"].update(bootstrap_servers=os.environ["BOOTSTRAP"], group_id=os.environ["GROUP"])
cfg["topics"].update(input=os.environ["IN_TOPIC"], output=os.environ["OUT_TOPIC"])
cfg["metrics"].update(port=int(os.environ["PORT"]), host="127.0.0.1")
open(sys.argv[2], "w").write(yaml.safe_dump(cfg, sort_keys=False))
PY
chmod 0755 "$tmp"
chmod 0644 "$cfg"
topics_made=1
step "podman run --network host --read-only --tmpfs /tmp --user 10001:10001 (metrics on :$metrics_port)"
sed 's/^/   /' "$cfg"
t_run="$(now)"
# --read-only-tmpfs=false: no podman-provided tmpfs on /run and /var/tmp, only the /tmp one (as a
# Kubernetes pod with readOnlyRootFilesystem and an emptyDir on /tmp).
# --no-healthcheck: podman runs HEALTHCHECKs from systemd timers, and there is no systemd here
# (every podman command on the container would log that it cannot reach it); step 7 runs the
# image's HEALTHCHECK command by hand instead.
"${podman[@]}" run -d --name "$ctr" --network host \
  --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,nosuid,nodev,size=64m \
  --user 10001:10001 --cap-drop ALL --security-opt no-new-privileges \
  --no-healthcheck \
  -v "$cfg:/etc/stream-infer/config.yaml:ro" \
  "$image" >/dev/null
http_ok() { "$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; }
healthy_s="" ready_s=""
deadline=$((SECONDS + ready_timeout))
while [[ -z "$ready_s" ]]; do
  state="$("${podman[@]}" inspect --format '{{.State.Status}} {{.State.ExitCode}}' "$ctr")"
  [[ "$state" == running* ]] || fail "the container is no longer running (state: $state)"
  ((SECONDS < deadline)) || fail "no /readyz within ${ready_timeout} s"
  if [[ -z "$healthy_s" ]] && http_ok "http://127.0.0.1:$metrics_port/healthz"; then
    healthy_s="$(since "$t_run")"
    echo "/healthz 200 after $healthy_s s"
  fi
  if [[ -n "$healthy_s" ]] && http_ok "http://127.0.0.1:$metrics_port/readyz"; then
    ready_s="$(since "$t_run")"
    echo "/readyz 200 after $ready_s s"
  fi
  [[ -n "$ready_s" ]] || sleep 0.25
done

# --- 6. predictions ---
step "replay: stream-infer produce --topic $in_topic --entities $entities --rate $rate"
"$cli" produce --topic "$in_topic" --entities "$entities" --rate "$rate" --bootstrap "$bootstrap" \
  --no-progress
"$py" - "$bootstrap" "$out_topic" "$artifact" "$entities" <<'PY'
import json, sys, time
from pathlib import Path

import jsonschema
from kafka import KafkaConsumer

from stream_infer.model import datasets
from stream_infer.model.card import load_card
from stream_infer.replay import sensor_streams

bootstrap, topic, artifact, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
card = load_card(Path(artifact))
test = datasets.basic_motions().subset("test")  # what `stream-infer produce` replays
streams = sensor_streams(test.values, test.labels, n)
hops = {s.entity: (len(s.values) - card.window) // card.hop + 1 for s in streams}
expect = sum(hops.values())
truth = {s.entity: s.label for s in streams}
schema = json.loads(Path("stream_infer/schemas/prediction.schema.json").read_text())
c = KafkaConsumer(topic, bootstrap_servers=bootstrap.split(","), group_id=None,
                  auto_offset_reset="earliest", enable_auto_commit=False)
seen, dups, correct, lat = set(), 0, 0, []
deadline = time.monotonic() + 90
while len(seen) < expect and time.monotonic() < deadline:
    for recs in c.poll(timeout_ms=500).values():
        for r in recs:
            p = json.loads(r.value)
            jsonschema.validate(p, schema)
            if p["entity"] not in truth:
                sys.exit(f"prediction for an entity that was not replayed: {p['entity']}")
            if r.key is not None and r.key.decode() != p["entity"]:
                sys.exit(f"key {r.key!r} differs from the entity {p['entity']}")
            key = (p["entity"], p["seq"])
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            correct += p["label"] == truth[p["entity"]]
            lat.append(p["emit_time_ms"] - p["event_time_ms"])
c.close()
lat.sort()
p50 = lat[len(lat) // 2] if lat else float("nan")
print(f"predictions: {len(seen)} unique of {expect} expected ({len(streams)} entities x hops), "
      f"{dups} duplicates, label = replayed recording's label for {correct}/{len(seen)}, "
      f"event->publish p50 {p50} ms; all valid against prediction.schema.json")
sys.exit(0 if len(seen) == expect else f"only {len(seen)} of {expect} predictions within 90 s")
PY
predictions_metric="$("$py" -c 'import sys, urllib.request
for line in urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().splitlines():
    if line.startswith("stream_infer_predictions_total "): print(line.split()[1])' \
  "http://127.0.0.1:$metrics_port/metrics")"
echo "/metrics: stream_infer_predictions_total $predictions_metric"

# --- 7. user, read-only root, healthcheck ---
step "user, read-only root filesystem, HEALTHCHECK"
# shellcheck disable=SC2016 # expanded by the container's shell
ids="$("${podman[@]}" exec "$ctr" sh -c 'echo "$(id -u):$(id -g)"; awk "/^Uid:/{print \$2}" /proc/1/status')"
uid_gid="$(sed -n 1p <<<"$ids")"
pid1_uid="$(sed -n 2p <<<"$ids")"
[[ "$uid_gid" == 10001:10001 && "$pid1_uid" == 10001 ]] ||
  fail "the container runs as $uid_gid (pid 1 uid $pid1_uid), not 10001:10001"
echo "uid:gid $uid_gid (the service, pid 1: uid $pid1_uid)"
[[ "$("${podman[@]}" inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$ctr")" == true ]] ||
  fail "the root filesystem is not read-only"
# As root in the container (owner of /etc and /opt), so that only the read-only mount can refuse.
for d in / /etc /opt/venv /opt/stream-infer/model; do
  if err="$("${podman[@]}" exec --user 0 "$ctr" touch "$d/.image-test" 2>&1)"; then
    fail "root wrote $d/.image-test: the root filesystem is writable"
  fi
  [[ "$err" == *"Read-only file system"* ]] || fail "a write to $d failed, but not as read-only: $err"
done
"${podman[@]}" exec "$ctr" sh -c 'touch /tmp/.w && rm /tmp/.w'
echo "root filesystem read-only (root's writes to /, /etc, /opt/venv, the model: EROFS); /tmp writable"
health_test="$("${podman[@]}" image inspect --format '{{json .Config.Healthcheck.Test}}' "$image")"
[[ "$health_test" == *":9100/healthz"* ]] || fail "the image's HEALTHCHECK does not probe :9100/healthz: $health_test"
# The image's HEALTHCHECK command, run in the container as its user, aimed at this run's port.
mapfile -d '' health_cmd < <(python3 -c 'import json, sys
test = json.loads(sys.argv[1])
if test[0] != "CMD":
    sys.exit(f"unexpected HEALTHCHECK form: {test}")
sys.stdout.write("\0".join(a.replace(":9100/", f":{sys.argv[2]}/") for a in test[1:]) + "\0")' \
  "$health_test" "$metrics_port")
"${podman[@]}" exec "$ctr" "${health_cmd[@]}" || fail "the image's HEALTHCHECK command failed"
echo "the image's HEALTHCHECK command (${health_cmd[*]:0:2} ..., on port $metrics_port): healthy"

# --- 8. stop ---
step "podman stop (SIGTERM)"
t0="$(now)"
"${podman[@]}" stop -t 60 "$ctr" >/dev/null
stop_s="$(since "$t0")"
exit_code="$("${podman[@]}" inspect --format '{{.State.ExitCode}}' "$ctr")"
"${podman[@]}" logs --tail 3 "$ctr" 2>&1 | sed 's/^/   /'
[[ "$exit_code" == 0 ]] || fail "the service exited with code $exit_code after SIGTERM"
echo "exited 0 after $stop_s s"
"${podman[@]}" rm "$ctr" >/dev/null

summary="$(cat <<EOF
base image      $base_image  $(mb "$base_bytes") MB
base step       $base_s s ($base_how)
CPU image       $image  $(mb "$image_bytes") MB (target <= $max_mb MB)
build time      $build_s s$([[ "${NO_CACHE:-0}" == 1 ]] && echo " (no layer cache)" || echo " (layer cache allowed)")
healthz / ready $healthy_s s / $ready_s s after podman run
predictions     all expected, on $out_topic
stop (SIGTERM)  $stop_s s, exit code 0
EOF
)"
step "image-test passed"
echo "$summary"
{ date -u +%FT%TZ; echo "$summary"; } >"$work/last-run.txt"
