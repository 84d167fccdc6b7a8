#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft: broker + controller in one JVM) assembled from
# Maven Central jars and run with plain `java -cp`. Listens on 127.0.0.1 only.
#
#   deploy/local/kafka.sh start|stop|status|restart|logs
#
# Idempotent: `start` on a running broker does nothing; `stop` kills only the pid it wrote.
# If KAFKA_BOOTSTRAP is set, an existing cluster is used and nothing is started or stopped.
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (256m),
#              KAFKA_HOME_DIR (state dir, default .local/kafka in the repository),
#              KAFKA_OAUTH_PORT (unset: none): a SASL_PLAINTEXT listener for OAUTHBEARER on that
#              port, with Kafka's unsecured token validator (unsigned JWTs with sub and exp:
#              for tests of a client's token plumbing only, never for production).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
oport="${KAFKA_OAUTH_PORT:-}"
heap="${KAFKA_HEAP:-256m}"
home="${KAFKA_HOME_DIR:-$repo/.local/kafka}"
libs="$here/target/libs"
pidfile="$home/kafka.pid"
logfile="$home/logs/server.out"
conf="$home/server.properties"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }

external() {
  if [[ -n "${KAFKA_BOOTSTRAP:-}" ]]; then
    log "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP is set: using that cluster, starting nothing"
    return 0
  fi
  return 1
}

running() {
  [[ -f "$pidfile" ]] || return 1
  local pid; pid="$(cat "$pidfile")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -q kafka.Kafka "/proc/$pid/cmdline" 2>/dev/null
}

# Readiness is an ApiVersions request answered with error code 0, not an open port.
ready() {
  python3 - "$port" <<'PY'
import socket, struct, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    cid = b"ready"
    body = struct.pack(">hhih", 18, 0, 7, len(cid)) + cid
    s.sendall(struct.pack(">i", len(body)) + body)
    head = s.recv(4)
    size = struct.unpack(">i", head)[0]
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    corr, err = struct.unpack(">ih", data[:6])
    sys.exit(0 if corr == 7 and err == 0 else 1)
except Exception:
    sys.exit(1)
PY
}

jars() {
  if [[ ! -d "$libs" ]] || [[ -z "$(ls -A "$libs" 2>/dev/null)" ]]; then
    log "fetching Kafka jars from Maven Central (once)"
    mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  fi
}

configure() {
  mkdir -p "$home/data" "$home/logs"
  local extra_l="" extra_a="" extra_m=""
  if [[ -n "$oport" ]]; then
    extra_l=",OAUTH://127.0.0.1:$oport" extra_a=",OAUTH://127.0.0.1:$oport" extra_m=",OAUTH:SASL_PLAINTEXT"
  fi
  cat > "$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$extra_l
advertised.listeners=PLAINTEXT://127.0.0.1:$port$extra_a
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$extra_m
log.dirs=$home/data
num.partitions=1
num.network.threads=2
num.io.threads=2
offsets.topic.num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=8388608
PROPS
  if [[ -n "$oport" ]]; then
    cat >> "$conf" <<'PROPS'
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";
PROPS
  fi
  cat > "$home/log4j2.properties" <<'L4J'
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.apache.name = org.apache.kafka
logger.apache.level = INFO
L4J
}

java_cmd() {
  java -Xms"$heap" -Xmx"$heap" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
    -Dkafka.logs.dir="$home/logs" -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$libs/*" "$@"
}

start() {
  external && return 0
  if running; then
    log "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return 0
  fi
  if ready; then
    log "port $port already answers Kafka requests but is not ours; refusing to start another broker"
    return 1
  fi
  jars
  configure
  if [[ ! -f "$home/data/meta.properties" ]]; then
    local id; id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    java_cmd kafka.tools.StorageTool format -t "$id" -c "$conf" --standalone >/dev/null
  fi
  local t0; t0=$(date +%s.%N)
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseSerialGC \
    -Dkafka.logs.dir="$home/logs" -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$conf" >"$logfile" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if ready; then
      log "ready on 127.0.0.1:$port (pid $(cat "$pidfile")) in $(python3 -c "import sys;print(round($(date +%s.%N)-$t0,1))")s"
      return 0
    fi
    if ! running; then break; fi
    sleep 0.5
  done
  log "broker failed to start; last log lines:"
  tail -n 40 "$home/logs/server.log" "$logfile" 2>/dev/null >&2 || true
  stop || true
  return 1
}

stop() {
  external && return 0
  if ! running; then
    rm -f "$pidfile"
    log "not running"
    return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; log "stopped (pid $pid)"; return 0; }
    sleep 0.5
  done
  log "did not stop in 30s; killing pid $pid"
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

status() {
  external && return 0
  if running && ready; then
    echo "running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
  elif running; then
    echo "starting (pid $(cat "$pidfile"))"; return 1
  else
    echo "stopped"; return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  logs) tail -n "${2:-50}" "$home/logs/server.log" ;;
  *) echo "usage: $0 start|stop|status|restart|logs" >&2; exit 2 ;;
esac
