#!/usr/bin/env bash
# A profile hook for rhizome-bench (`--profile-hook 'bash scripts/bench/pg_waits.sh'`): while a
# measured run lasts ("on" until "off"), samples PostgreSQL's pg_stat_activity every
# PG_WAITS_INTERVAL seconds (default 0.1) in the newest bench run's cluster and appends one line
# per active backend: time, database, wait event type, wait event, the query's first words.
# `pg_waits.sh summary [FILE]` counts the samples by database and wait event (CPU = no wait).
#
# The samples go to target/bench/run-*/pg-waits.tsv of the newest run. Each sample costs a
# psql start (a few ms of CPU), so the sampler itself uses a few percent of a core.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUN_DIR="$(ls -d "$ROOT"/target/bench/run-* 2>/dev/null | sort | tail -n 1)"
OUT="$RUN_DIR/pg-waits.tsv"
PIDFILE="$RUN_DIR/pg-waits.pid"

pg_port() {
    local pidfile
    pidfile="$(ls "$RUN_DIR"/pg/postmaster.pid /tmp/rhizome-bench-pg.*/postmaster.pid 2>/dev/null |
        xargs -r ls -t | head -n 1)"
    [ -n "$pidfile" ] && sed -n 4p "$pidfile"
}

case "${1:-}" in
    on)
        port="$(pg_port)" || exit 0
        [ -n "$port" ] || exit 0
        query="SELECT clock_timestamp(), datname, coalesce(wait_event_type, 'CPU'),
            coalesce(wait_event, '-'), regexp_replace(left(query, 48), '\s+', ' ', 'g')
            FROM pg_stat_activity
            WHERE state = 'active' AND datname LIKE 'rhizome%' AND pid <> pg_backend_pid()"
        (
            while :; do
                psql -X -q -At -F $'\t' -h 127.0.0.1 -p "$port" -U postgres -d postgres \
                    -c "$query" >>"$OUT" 2>/dev/null || true
                sleep "${PG_WAITS_INTERVAL:-0.1}"
            done
        ) </dev/null >/dev/null 2>&1 &
        echo $! >"$PIDFILE"
        ;;
    off)
        [ -f "$PIDFILE" ] && kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
        ;;
    summary)
        file="${2:-$OUT}"
        echo "samples by database, wait event type and wait event (CPU: running, no wait):"
        cut -f2-4 "$file" | sort | uniq -c | sort -k2,2 -k1,1nr
        echo "busiest statements (database, wait, query start):"
        cut -f2,4,5 "$file" | sort | uniq -c | sort -nr | head -n 25
        ;;
    *)
        echo "usage: pg_waits.sh on|off|summary [FILE]" >&2
        exit 2
        ;;
esac
