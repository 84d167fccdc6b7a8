#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft: broker + controller in one JVM) assembled from
# Maven Central jars and run with plain `java -cp`. Listens on 127.0.0.1 only.
#
#   deploy/local/kafka.sh start|stop|status|restart|logs [--secure]
#
# Idempotent: `start` on a running broker does nothing; `stop` kills only the pid it wrote.
# If KAFKA_BOOTSTRAP is set, an existing cluster is used and nothing is started or stopped.
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), KAFKA_HEAP (256m),
#              KAFKA_HOME_DIR (state dir, default .local/kafka in the repository),
#              KAFKA_OAUTH_PORT (unset: none): a SASL_PLAINTEXT listener for OAUTHBEARER on that
#              port, with Kafka's unsecured token validator (unsigned JWTs with sub and exp:
#              for tests of a client's token plumbing only, never for production).
#
# --secure (or KAFKA_SECURE=1): a secured broker instead, in its own state dir (default
# .local/kafka-secure) and on its own ports, with no plaintext listener at all:
#   KAFKA_PORT (9192)      SSL, client certificates required (mTLS; principal = certificate CN)
#   KAFKA_SASL_PORT (9193) SASL_SSL with SCRAM-SHA-512 (server certificate only)
#   KAFKA_CONTROLLER_PORT (9194) the KRaft controller, mTLS with the broker's certificate
# and the StandardAuthorizer with allow.everyone.if.no.acl.found=false (super users: the broker
# and `admin`). The first start makes a throwaway CA, a broker certificate for IP 127.0.0.1 and
# client certificates (admin, stream-infer, producer) with openssl, and SCRAM credentials with
# random passwords for the same users at format time. Everything lives under the state dir:
#   tls/ca.pem, tls/<name>.pem + tls/<name>.key, scram/<user>.password (mode 600), and
#   secure.env, which names them all (KAFKA_SSL_BOOTSTRAP, KAFKA_SASL_BOOTSTRAP, ...).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cmd="${1:-}"
secure="${KAFKA_SECURE:-0}"
if [[ "${2:-}" == "--secure" ]]; then secure=1; fi
if [[ "$secure" == 1 ]]; then
  port="${KAFKA_PORT:-9192}"
  sport="${KAFKA_SASL_PORT:-9193}"
  cport="${KAFKA_CONTROLLER_PORT:-9194}"
  home="${KAFKA_HOME_DIR:-$repo/.local/kafka-secure}"
else
  port="${KAFKA_PORT:-9092}"
  cport="${KAFKA_CONTROLLER_PORT:-9093}"
  home="${KAFKA_HOME_DIR:-$repo/.local/kafka}"
fi
oport="${KAFKA_OAUTH_PORT:-}"
heap="${KAFKA_HEAP:-256m}"
tls="$home/tls"
scram="$home/scram"
users=(admin stream-infer producer)
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
# On the secured broker: over TLS with the admin certificate.
ready() {
  local tls_args=()
  [[ "$secure" == 1 ]] && tls_args=("$tls/ca.pem" "$tls/admin.pem" "$tls/admin.key")
  python3 - "$port" "${tls_args[@]}" <<'PY'
import socket, ssl, struct, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
    if len(sys.argv) > 2:
        ctx = ssl.create_default_context(cafile=sys.argv[2])
        ctx.load_cert_chain(sys.argv[3], sys.argv[4])
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
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

# A throwaway CA and certificates, made once per state dir (EC P-256, 30 days). The broker's
# certificate names IP 127.0.0.1 only, so hostname verification refuses `localhost`.
certs() {
  [[ -f "$tls/ca.pem" ]] && return 0
  log "making a throwaway CA and certificates in $tls"
  mkdir -p "$tls"
  chmod 700 "$tls"
  local days=30
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days "$days" \
    -subj "/CN=stream-infer local CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  issue kafka-broker "subjectAltName=IP:127.0.0.1" "extendedKeyUsage=serverAuth,clientAuth"
  local u
  for u in "${users[@]}"; do
    issue "$u" "" "extendedKeyUsage=clientAuth"
  done
  # Kafka's PEM key store: the private key (unencrypted PKCS#8) followed by the certificate.
  cat "$tls/kafka-broker.key" "$tls/kafka-broker.pem" > "$tls/kafka-broker.keystore.pem"
  chmod 600 "$tls"/*.key "$tls/kafka-broker.keystore.pem"
}

# issue NAME [SAN-EXT] EKU-EXT: a key and a certificate with CN=NAME signed by the local CA.
issue() {
  local name="$1" san="$2" eku="$3" ext
  ext="$(mktemp)"
  { echo "basicConstraints=critical,CA:FALSE"; echo "keyUsage=critical,digitalSignature"
    echo "$eku"; if [[ -n "$san" ]]; then echo "$san"; fi; } > "$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$name" \
    -keyout "$tls/$name.key" -out "$tls/$name.csr" 2>/dev/null
  openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$tls/$name.pem" 2>/dev/null
  rm -f "$tls/$name.csr" "$ext"
}

# Random SCRAM passwords, made once per state dir (before the storage is formatted).
passwords() {
  mkdir -p "$scram"
  chmod 700 "$scram"
  local u
  for u in "${users[@]}"; do
    [[ -f "$scram/$u.password" ]] || (umask 077; openssl rand -hex 16 > "$scram/$u.password")
  done
}

log4j_conf() {
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

configure_secure() {
  mkdir -p "$home/data" "$home/logs"
  log4j_conf
  cat > "$conf" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=SSL://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=SSL://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
inter.broker.listener.name=SSL
listener.security.protocol.map=SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:SSL
ssl.keystore.type=PEM
ssl.keystore.location=$tls/kafka-broker.keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
ssl.client.auth=required
ssl.endpoint.identification.algorithm=https
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:kafka-broker;User:admin
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
auto.create.topics.enable=false
log.retention.hours=24
log.segment.bytes=67108864
log.cleaner.dedupe.buffer.size=8388608
PROPS
  cat > "$home/secure.env" <<ENV
# The secured local broker (kafka.sh start --secure): addresses, CA, client certificates and
# SCRAM password files. Throwaway material for local tests only.
KAFKA_SSL_BOOTSTRAP=127.0.0.1:$port
KAFKA_SASL_BOOTSTRAP=127.0.0.1:$sport
KAFKA_CA=$tls/ca.pem
KAFKA_TLS_DIR=$tls
KAFKA_SCRAM_DIR=$scram
KAFKA_SCRAM_MECHANISM=SCRAM-SHA-512
KAFKA_USERS=${users[*]}
ENV
}

configure() {
  mkdir -p "$home/data" "$home/logs"
  log4j_conf
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
  local scram_args=()
  if [[ "$secure" == 1 ]]; then
    certs
    passwords
    configure_secure
    local u
    for u in "${users[@]}"; do
      scram_args+=(--add-scram "SCRAM-SHA-512=[name=$u,password=$(cat "$scram/$u.password")]")
    done
  else
    configure
  fi
  if [[ ! -f "$home/data/meta.properties" ]]; then
    local id; id="$(java_cmd kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    java_cmd kafka.tools.StorageTool format -t "$id" -c "$conf" --standalone "${scram_args[@]}" >/dev/null
  fi
  local t0; t0=$(date +%s.%N)
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseSerialGC \
    -Dkafka.logs.dir="$home/logs" -Dlog4j2.configurationFile="$home/log4j2.properties" \
    -cp "$libs/*" kafka.Kafka "$conf" >"$logfile" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 120); do
    if ready; then
      log "ready on 127.0.0.1:$port$([[ "$secure" == 1 ]] && echo " (mTLS), 127.0.0.1:$sport (SASL_SSL SCRAM-SHA-512); see $home/secure.env") (pid $(cat "$pidfile")) in $(python3 -c "import sys;print(round($(date +%s.%N)-$t0,1))")s"
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

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  logs) tail -n 50 "$home/logs/server.log" ;;
  *) echo "usage: $0 start|stop|status|restart|logs [--secure]" >&2; exit 2 ;;
esac
