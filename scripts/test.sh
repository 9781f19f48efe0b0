#!/usr/bin/env bash
# Runs every Rhizome test. The storage and server tests start their own throwaway PostgreSQL
# server, and the ACME test its own pebble, so both are installed from Debian's packages when
# missing; the federation tests run Synapse, installed from PyPI by scripts/synapse-venv.sh, and
# the object-store media test moto's S3 server, installed from PyPI by scripts/s3-venv.sh.
# Then the interoperability tests with matrix-js-sdk (scripts/interop-js.sh), which need npm;
# SKIP_INTEROP=1 skips them for a quick local run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: PostgreSQL's server for the storage and server tests,
# pebble (Let's Encrypt's test ACME server) for the ACME test, and python3-venv.
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v pebble >/dev/null 2>&1; then
  missing+=(pebble)
fi
# Python's venv module, for Synapse's and moto's environments (installed here, once, because the
# two installs below run side by side).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the tests"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Synapse, the real peer of the federation tests, and moto, the local S3-compatible stand-in of
# the object-store media test, both from PyPI (pinned versions in virtual environments under the
# target directory; reused when already installed). The two installs run side by side. The tests
# read their paths from SYNAPSE_VENV and S3_VENV (and run the same scripts themselves when unset).
venv_logs="$(mktemp -d)"
bash scripts/synapse-venv.sh >"$venv_logs/synapse" &
synapse_install=$!
bash scripts/s3-venv.sh >"$venv_logs/s3" &
s3_install=$!
wait "$synapse_install" || { echo "installing Synapse failed" >&2; exit 1; }
wait "$s3_install" || { echo "installing moto failed" >&2; exit 1; }
SYNAPSE_VENV="$(tail -n 1 "$venv_logs/synapse")"
S3_VENV="$(tail -n 1 "$venv_logs/s3")"
rm -rf "$venv_logs"
export SYNAPSE_VENV S3_VENV

cargo test --workspace --locked "$@"

if [ "${SKIP_INTEROP:-0}" = "1" ]; then
  echo "SKIP_INTEROP=1: skipping the matrix-js-sdk interoperability tests"
else
  bash scripts/interop-js.sh
fi
