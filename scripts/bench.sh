#!/usr/bin/env bash
# Benchmarks Rhizome against Synapse (SQLite and PostgreSQL) on loopback, in one run.
#
# Usage: bash scripts/bench.sh [--quick] [--servers LIST] [--fresh] [-- RUN_ARGS...]
#   --quick         small sizes and short durations (development; under 3 minutes)
#   --servers LIST  comma-separated subset of rhizome,synapse-sqlite,synapse-postgres
#   --fresh         reinstall Synapse's virtual environment even if one is there
#   -- RUN_ARGS     passed to every `rhizome-bench run` (e.g. --workloads latency)
#
# Working dirs go under target/bench/; the combined results go to bench-results/<stamp>.json
# (override with BENCH_RESULTS_DIR). See crates/bench/README.md.
set -euo pipefail

QUICK=0
FRESH=0
SERVERS="rhizome,synapse-sqlite,synapse-postgres"
RUN_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --fresh) FRESH=1 ;;
        --servers) SERVERS="${2:?--servers needs a list}"; shift ;;
        --servers=*) SERVERS="${1#--servers=}" ;;
        --) shift; RUN_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/target/bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="$WORK/run-$STAMP"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$ROOT/bench-results}"
VENV="$WORK/venv"
BENCH="$ROOT/target/release/rhizome-bench"
RHIZOME="$ROOT/target/release/rhizome"
START_S=$SECONDS
mkdir -p "$RUN_DIR" "$RESULTS_DIR"
# Keep the working dirs of the last few runs only (databases and logs add up).
ls -d "$WORK"/run-* 2>/dev/null | sort | head -n -4 | xargs -r rm -rf

log() { printf '[bench.sh %4ds] %s\n' "$((SECONDS - START_S))" "$*" >&2; }
has_server() { [[ ",$SERVERS," == *",$1,"* ]]; }
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 500 concurrent long-polls need as many sockets on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

SERVER_PID=""
PG_DATA=""
PG_USER=""
PG_BIN=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command as the PostgreSQL user (initdb and postgres refuse to run as root).
as_pg() {
    if [ -n "$PG_USER" ]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi
}

stop_server() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Writes a results file that only records why a server could not be measured.
failed_result() {
    python3 -c 'import json, sys; print(json.dumps({"server": sys.argv[1], "errors": {"server": sys.argv[2]}}))' \
        "$1" "$2" >"$3"
}

# Waits until a started server accepts connections; fails early if it exits. NAME PORT PID LOG
wait_listening() {
    local name=$1 port=$2 pid=$3 logfile=$4
    for _ in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    log "$name is not listening on port $port after 60 s"
    return 1
}

# Runs the workloads against a started server; NAME PORT PID [DB_PID].
run_bench() {
    local name=$1 port=$2 pid=$3 db_pid=${4:-}
    local logfile="$RUN_DIR/$name/stdout.log"
    if ! wait_listening "$name" "$port" "$pid" "$logfile"; then
        failed_result "$name" "the server did not start, see $name/stdout.log" "$RUN_DIR/$name.json"
        return 0
    fi
    local args=(run --server "$name" --base-url "http://127.0.0.1:$port" --pid "$pid"
        --out "$RUN_DIR/$name.json")
    [ "$QUICK" = 1 ] && args+=(--quick)
    [ -n "$db_pid" ] && args+=(--db-pid "$db_pid")
    log "running workloads against $name (pid $pid, port $port)"
    if ! "$BENCH" "${args[@]}" "${RUN_ARGS[@]}" 2> >(tee "$RUN_DIR/$name.bench.log" >&2); then
        log "$name: the bench run failed (see $RUN_DIR/$name.bench.log)"
        [ -f "$RUN_DIR/$name.json" ] ||
            failed_result "$name" "bench run failed, see $name.bench.log" "$RUN_DIR/$name.json"
    fi
}

# ---------------------------------------------------------------- builds
log "building rhizome-bench (release)"
cargo build --release -p rhizome-bench --manifest-path "$ROOT/Cargo.toml"
RHIZOME_OK=0
RHIZOME_STALE=""
if has_server rhizome; then
    log "building rhizome (release)"
    if cargo build --release -p rhizome --manifest-path "$ROOT/Cargo.toml" >"$RUN_DIR/rhizome-build.log" 2>&1 \
        && [ -x "$RHIZOME" ]; then
        RHIZOME_OK=1
    elif [ -x "$RHIZOME" ]; then
        # The shared work tree may be mid-change: measure the last binary, and say so.
        RHIZOME_OK=1
        RHIZOME_STALE="cargo build --release -p rhizome failed (see rhizome-build.log); measured the existing binary built $(date -u -r "$RHIZOME" +%Y-%m-%dT%H:%MZ)"
        log "$RHIZOME_STALE"
    else
        log "rhizome could not be built; it is skipped (see $RUN_DIR/rhizome-build.log)"
        failed_result rhizome "cargo build --release -p rhizome failed: $(tail -n 3 "$RUN_DIR/rhizome-build.log" | tr '\n' ' ')" \
            "$RUN_DIR/rhizome.json"
    fi
fi
BUILD_S=$((SECONDS - START_S))

# ---------------------------------------------------------------- Synapse install
if has_server synapse-sqlite || has_server synapse-postgres; then
    if [ "$FRESH" = 1 ] || ! "$VENV/bin/python" -c 'import synapse, psycopg2, yaml' 2>/dev/null; then
        log "installing Synapse into $VENV"
        rm -rf "$VENV"
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv "$VENV"
        fi
        "$VENV/bin/pip" install -q --disable-pip-version-check matrix-synapse psycopg2-binary
    fi
    log "Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)')"
fi

start_synapse() { # NAME PORT [postgres args...]; sets SERVER_PID
    local name=$1 port=$2
    shift 2
    local dir="$RUN_DIR/$name"
    mkdir -p "$dir"
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver --server-name bench.local \
        --config-path homeserver.yaml --data-directory "$dir" --generate-config \
        --report-stats=no >"$dir/generate.log" 2>&1)
    "$VENV/bin/python" "$ROOT/scripts/bench/synapse_config.py" "$dir/homeserver.yaml" "$port" "$@"
    (cd "$dir" && exec "$VENV/bin/python" -m synapse.app.homeserver -c homeserver.yaml \
        >"$dir/stdout.log" 2>&1) &
    SERVER_PID=$!
}

# ---------------------------------------------------------------- Rhizome
if has_server rhizome && [ "$RHIZOME_OK" = 1 ]; then
    port=$(free_port)
    dir="$RUN_DIR/rhizome"
    mkdir -p "$dir"
    log "starting rhizome on 127.0.0.1:$port"
    RHIZOME_DATA_DIR="$dir" RHIZOME_LISTEN="127.0.0.1:$port" RHIZOME_SERVER_NAME=bench.local \
        RHIZOME_REGISTRATION__MODE=open RHIZOME_RATE_LIMITS__ENABLED=false \
        "$RHIZOME" serve >"$dir/stdout.log" 2>&1 &
    SERVER_PID=$!
    run_bench rhizome "$port" "$SERVER_PID"
    if [ -n "$RHIZOME_STALE" ]; then
        python3 - "$RUN_DIR/rhizome.json" "$RHIZOME_STALE" <<'PY'
import json, sys
path, note = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    result = json.load(f)
result.setdefault("errors", {})["build"] = note
with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=2)
PY
    fi
    stop_server "$SERVER_PID"
    SERVER_PID=""
fi

# ---------------------------------------------------------------- Synapse on SQLite
if has_server synapse-sqlite; then
    port=$(free_port)
    log "starting synapse-sqlite on 127.0.0.1:$port"
    start_synapse synapse-sqlite "$port"
    run_bench synapse-sqlite "$port" "$SERVER_PID"
    stop_server "$SERVER_PID"
    SERVER_PID=""
fi

# ---------------------------------------------------------------- Synapse on PostgreSQL
if has_server synapse-postgres; then
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -z "$PG_BIN" ]; then
        log "installing PostgreSQL from Debian's packages"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi
    PG_DATA="$RUN_DIR/pg"
    if [ "$(id -u)" = 0 ]; then
        PG_USER=postgres
        id "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
        mkdir -p "$PG_DATA" && chown "$PG_USER" "$PG_DATA"
        if ! runuser -u "$PG_USER" -- test -w "$PG_DATA"; then
            # The work tree is not reachable by that user: keep the cluster in /tmp instead.
            rmdir "$PG_DATA"
            PG_DATA="$(mktemp -d /tmp/rhizome-bench-pg.XXXXXX)"
            chown "$PG_USER" "$PG_DATA"
        fi
    fi
    pg_port=$(free_port)
    log "starting a private PostgreSQL cluster ($PG_BIN) in $PG_DATA on port $pg_port"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$RUN_DIR/initdb.log" 2>&1
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/postgres.log" -w \
        -o "-p $pg_port -k $PG_DATA -c listen_addresses=127.0.0.1" start >/dev/null
    psql=("$PG_BIN/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pg_port" -U postgres)
    "${psql[@]}" -c "CREATE USER synapse PASSWORD 'synapse'"
    "${psql[@]}" -c "CREATE DATABASE synapse OWNER synapse ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0"
    pg_pid="$(head -n 1 "$PG_DATA/postmaster.pid")"
    port=$(free_port)
    log "starting synapse-postgres on 127.0.0.1:$port"
    start_synapse synapse-postgres "$port" 127.0.0.1 "$pg_port" synapse synapse synapse
    run_bench synapse-postgres "$port" "$SERVER_PID" "$pg_pid"
    stop_server "$SERVER_PID"
    SERVER_PID=""
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
fi

# ---------------------------------------------------------------- report
files=()
for name in rhizome synapse-sqlite synapse-postgres; do
    has_server "$name" && [ -f "$RUN_DIR/$name.json" ] && files+=("$RUN_DIR/$name.json")
done
[ "${#files[@]}" -gt 0 ] || { log "no results"; exit 1; }
TOTAL_S=$((SECONDS - START_S))
"$BENCH" report --out "$RESULTS_DIR/$STAMP.json" \
    --meta "quick=$QUICK" --meta "build_s=$BUILD_S" --meta "wall_s=$TOTAL_S" \
    --meta "run_dir=$RUN_DIR" "${files[@]}" | tee "$RUN_DIR/table.txt"
log "results: $RESULTS_DIR/$STAMP.json (per-server files and logs in $RUN_DIR)"
log "total elapsed: ${TOTAL_S}s (of which builds ${BUILD_S}s)"
