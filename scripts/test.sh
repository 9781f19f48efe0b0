#!/usr/bin/env bash
# Runs every Rhizome test. The storage and server tests start their own throwaway PostgreSQL
# server, and the ACME test its own pebble, so both are installed from Debian's packages when
# missing; the federation tests run Synapse, installed from PyPI by scripts/synapse-venv.sh, and
# the object-store media test moto's S3 server, installed from PyPI by scripts/s3-venv.sh.
# Then the interoperability tests with matrix-js-sdk (scripts/interop-js.sh), which need npm;
# SKIP_INTEROP=1 skips them for a quick local run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests need: PostgreSQL's server for the storage and server tests, and
# pebble (Let's Encrypt's test ACME server) for the ACME test.
missing=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v pebble >/dev/null 2>&1; then
  missing+=(pebble)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]} (Debian packages) for the tests"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Synapse, the real peer of the federation tests, from PyPI (a pinned version in a virtual
# environment under the target directory; reused when already installed). The test kit reads
# its path from SYNAPSE_VENV (and runs the same script itself when that is unset).
SYNAPSE_VENV="$(bash scripts/synapse-venv.sh)"
export SYNAPSE_VENV

# moto, the local S3-compatible stand-in of the object-store media test, from PyPI the same way
# (the test reads S3_VENV, and runs the script itself when that is unset).
S3_VENV="$(bash scripts/s3-venv.sh)"
export S3_VENV

cargo test --workspace --locked "$@"

if [ "${SKIP_INTEROP:-0}" = "1" ]; then
  echo "SKIP_INTEROP=1: skipping the matrix-js-sdk interoperability tests"
else
  bash scripts/interop-js.sh
fi
