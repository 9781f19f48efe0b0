#!/usr/bin/env bash
# Benchmarks Rhizome against Synapse (SQLite and PostgreSQL) on loopback, in one run: every
# server is started first, then `rhizome-bench run` measures each workload on all of them in
# interleaved rounds.
#
# Usage: bash scripts/bench.sh [--quick] [--servers LIST] [--fresh] [-- RUN_ARGS...]
#   --quick         small sizes and short durations (development; under 3 minutes)
#   --servers LIST  comma-separated subset of rhizome,synapse-sqlite,synapse-postgres
#                   (default), plus rhizome-postgres (Rhizome on the same PostgreSQL cluster)
#                   and rhizome-postgres-2, rhizome-postgres-3 (2 or 3 Rhizome processes on
#                   one database of that cluster, the bench's users spread over them)
#   --fresh         reinstall Synapse's virtual environment even if one is there
#   -- RUN_ARGS     passed to `rhizome-bench run` (e.g. --workloads latency --rounds 3)
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
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
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

declare -A PIDS=()
PG_DATA=""
PG_USER=""
PG_BIN=""
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null || true
    done
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

# ---------------------------------------------------------------- builds
log "building rhizome-bench (release)"
cargo build --release -p rhizome-bench --manifest-path "$ROOT/Cargo.toml"
FAILED=()
RHIZOME_OK=0
RHIZOME_STALE=""
RHIZOME_KINDS=(rhizome rhizome-postgres rhizome-postgres-2 rhizome-postgres-3)
has_rhizome() { for k in "${RHIZOME_KINDS[@]}"; do has_server "$k" && return 0; done; return 1; }
has_rhizome_postgres() { has_server rhizome-postgres || has_server rhizome-postgres-2 || has_server rhizome-postgres-3; }
if has_rhizome; then
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
        for name in "${RHIZOME_KINDS[@]}"; do
            has_server "$name" && FAILED+=(--failed "$name=cargo build --release -p rhizome failed: $(tail -n 3 "$RUN_DIR/rhizome-build.log" | tr '\n' ' ')")
        done
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

# ---------------------------------------------------------------- PostgreSQL
PG_PORT=""
PG_PID=""
if has_server synapse-postgres || has_rhizome_postgres; then
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
    PG_PORT=$(free_port)
    log "starting a private PostgreSQL cluster ($PG_BIN) in $PG_DATA on port $PG_PORT"
    as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
        >"$RUN_DIR/initdb.log" 2>&1
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/postgres.log" -w \
        -o "-p $PG_PORT -k $PG_DATA -c listen_addresses=127.0.0.1 -c max_connections=300" \
        start >/dev/null
    psql=("$PG_BIN/psql" -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres)
    # One database per server kind: rhizome-postgres-N uses rhizome_N.
    for db in synapse rhizome rhizome_2 rhizome_3; do
        "${psql[@]}" -c "CREATE USER $db PASSWORD '$db'"
        "${psql[@]}" -c "CREATE DATABASE $db OWNER $db ENCODING 'UTF8' LC_COLLATE='C' LC_CTYPE='C' TEMPLATE template0"
    done
    PG_PID="$(head -n 1 "$PG_DATA/postmaster.pid")"
fi

# ---------------------------------------------------------------- servers
declare -A PORTS=()
# Process N (from 1) of a Rhizome server kind; a kind of several processes (rhizome-postgres-2
# and -3) shares one data directory and database, only the listening port differs. The first
# process is PIDS[NAME], the others PIDS[NAME#N] (their logs stdout-N.log).
start_rhizome() { # NAME INDEX [DATABASE_URL]
    local name=$1 index=$2 url=${3:-} port key=$1 logname=stdout.log
    [ "$index" = 1 ] || { key="$name#$index"; logname="stdout-$index.log"; }
    port=$(free_port)
    local dir="$RUN_DIR/$name"
    mkdir -p "$dir"
    log "starting $name (process $index) on 127.0.0.1:$port"
    RHIZOME_DATA_DIR="$dir" RHIZOME_LISTEN="127.0.0.1:$port" RHIZOME_SERVER_NAME=bench.local \
        RHIZOME_REGISTRATION__MODE=open RHIZOME_RATE_LIMITS__ENABLED=false \
        RHIZOME_DATABASE__URL="$url" \
        "$RHIZOME" serve >"$dir/$logname" 2>&1 &
    PIDS[$key]=$!
    PORTS[$key]=$port
}

# How many processes a server kind has (rhizome-postgres-3: 3).
processes_of() {
    case "$1" in rhizome-postgres-[0-9]) echo "${1##*-}" ;; *) echo 1 ;; esac
}

start_synapse() { # NAME [postgres args...]
    local name=$1 port
    shift
    port=$(free_port)
    local dir="$RUN_DIR/$name"
    mkdir -p "$dir"
    log "starting $name on 127.0.0.1:$port"
    (cd "$dir" && "$VENV/bin/python" -m synapse.app.homeserver --server-name bench.local \
        --config-path homeserver.yaml --data-directory "$dir" --generate-config \
        --report-stats=no >"$dir/generate.log" 2>&1)
    "$VENV/bin/python" "$ROOT/scripts/bench/synapse_config.py" "$dir/homeserver.yaml" "$port" "$@"
    (cd "$dir" && exec "$VENV/bin/python" -m synapse.app.homeserver -c homeserver.yaml \
        >"$dir/stdout.log" 2>&1) &
    PIDS[$name]=$!
    PORTS[$name]=$port
}

ORDER=()
# Starts a Rhizome server kind's processes one after the other (the first applies the
# migrations and makes the signing key); fails if any does not start.
start_rhizome_kind() { # NAME [DATABASE_URL]
    local name=$1 url=${2:-} n index key logname
    n=$(processes_of "$name")
    for index in $(seq 1 "$n"); do
        key=$name logname=stdout.log
        [ "$index" = 1 ] || { key="$name#$index"; logname="stdout-$index.log"; }
        start_rhizome "$name" "$index" "$url"
        wait_listening "$name" "${PORTS[$key]}" "${PIDS[$key]}" "$RUN_DIR/$name/$logname" || return 1
    done
}

pg_url() { echo "postgres://$1:$1@127.0.0.1:$PG_PORT/$1"; }

# A binary written a moment ago (the build above) maps about 5 MiB more of its code at start
# than the same file read back from disk, which would make Rhizome's idle memory depend on
# whether it was just built. As root, drop the page cache so every server starts from disk.
sync
if (echo 1 > /proc/sys/vm/drop_caches) 2>/dev/null; then
    log "dropped the page cache: every server's code is read from disk at start"
else
    log "could not drop the page cache (not root): a freshly built binary reads higher idle RSS"
fi

ORDER=()
for name in rhizome synapse-sqlite synapse-postgres "${RHIZOME_KINDS[@]:1}"; do
    has_server "$name" || continue
    ok=1
    case "$name" in
        rhizome) [ "$RHIZOME_OK" = 1 ] && { start_rhizome_kind rhizome || ok=0; } ;;
        rhizome-postgres) [ "$RHIZOME_OK" = 1 ] &&
            { start_rhizome_kind rhizome-postgres "$(pg_url rhizome)" || ok=0; } ;;
        rhizome-postgres-*) [ "$RHIZOME_OK" = 1 ] &&
            { start_rhizome_kind "$name" "$(pg_url "rhizome_${name##*-}")" || ok=0; } ;;
        synapse-sqlite) start_synapse synapse-sqlite ;;
        synapse-postgres) start_synapse synapse-postgres 127.0.0.1 "$PG_PORT" synapse synapse synapse ;;
    esac
    [ -n "${PIDS[$name]:-}" ] || continue
    # One at a time: start-ups do not compete for the CPU.
    if [ "$ok" = 1 ] &&
        wait_listening "$name" "${PORTS[$name]}" "${PIDS[$name]}" "$RUN_DIR/$name/stdout.log"; then
        ORDER+=("$name")
    else
        FAILED+=(--failed "$name=the server did not start, see $name/stdout*.log")
        for key in "${!PIDS[@]}"; do
            [[ "$key" == "$name" || "$key" == "$name#"* ]] && stop_server "${PIDS[$key]}" && unset "PIDS[$key]"
        done
    fi
done

TARGETS=()
for name in "${ORDER[@]}"; do
    spec="$name=http://127.0.0.1:${PORTS[$name]},pid=${PIDS[$name]}"
    for index in $(seq 2 "$(processes_of "$name")"); do
        spec+=",url=http://127.0.0.1:${PORTS[$name#$index]},pid=${PIDS[$name#$index]}"
    done
    [[ "$name" == *-postgres* ]] && spec+=",db-pid=$PG_PID"
    TARGETS+=(--target "$spec")
done

# ---------------------------------------------------------------- measure
RAW="$RUN_DIR/results.json"
if [ "${#TARGETS[@]}" -gt 0 ]; then
    args=(run "${TARGETS[@]}" "${FAILED[@]}" --out "$RAW")
    [ "$QUICK" = 1 ] && args+=(--quick)
    log "measuring ${ORDER[*]} in interleaved rounds"
    "$BENCH" "${args[@]}" "${RUN_ARGS[@]}" 2> >(tee "$RUN_DIR/bench.log" >&2) ||
        log "the bench run failed (see $RUN_DIR/bench.log)"
fi

# ---------------------------------------------------------------- stop
META=()
for name in "${ORDER[@]}"; do
    for key in "${!PIDS[@]}"; do
        [[ "$key" == "$name" || "$key" == "$name#"* ]] || continue
        stop_server "${PIDS[$key]}"
        unset "PIDS[$key]"
    done
    if [[ "$name" == rhizome* ]]; then
        # An orderly shutdown leaves no warning or error in the log (of any process).
        count=$(cat "$RUN_DIR/$name"/stdout*.log | grep -cE '^[^ ]+ +(WARN|ERROR) ' || true)
        META+=(--meta "${name}_log_warnings=$count" --meta "${name}_log_lines=$(cat "$RUN_DIR/$name"/stdout*.log | wc -l)")
        [ "$count" = 0 ] || log "$name logged $count warnings or errors (see $name/stdout.log)"
    fi
done
if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null
fi
[ -n "$RHIZOME_STALE" ] && META+=(--meta "rhizome_build=$RHIZOME_STALE")

# ---------------------------------------------------------------- report
[ -f "$RAW" ] || { log "no results"; exit 1; }
TOTAL_S=$((SECONDS - START_S))
"$BENCH" report "$RAW" --out "$RESULTS_DIR/$STAMP.json" \
    --meta "quick=$QUICK" --meta "build_s=$BUILD_S" --meta "wall_s=$TOTAL_S" \
    --meta "run_dir=$RUN_DIR" "${META[@]}" | tee "$RUN_DIR/table.txt"
log "results: $RESULTS_DIR/$STAMP.json (logs and the raw results in $RUN_DIR)"
log "total elapsed: ${TOTAL_S}s (of which builds ${BUILD_S}s)"
