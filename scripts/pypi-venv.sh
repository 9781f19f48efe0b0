#!/usr/bin/env bash
# Installs one pinned package from PyPI into a Python virtual environment, and prints that
# environment's path on its last line of standard output. The tests' real peers and stand-ins
# (Synapse, moto) are installed this way, through scripts/synapse-venv.sh and scripts/s3-venv.sh.
#
#   bash scripts/pypi-venv.sh NAME REQUIREMENT CONSTRAINTS VENV READY IMPORT
#
#   NAME         how the log lines start (e.g. synapse-venv)
#   REQUIREMENT  the pinned requirement (e.g. matrix-synapse==1.163.2)
#   CONSTRAINTS  a file pinning every dependency (a frozen, known-good set)
#   VENV         where the environment goes (absolute, or relative to the current directory)
#   READY        a file inside VENV that an installed environment has (e.g. bin/python)
#   IMPORT       a Python module that must import once installed
#
# Idempotent: an environment that holds this exact pin is reused at once. Safe to call from
# several processes at the same time: an exclusive lock (flock) on VENV.lock serialises installs,
# and the environment is marked complete only after a successful install, so an interrupted one
# is redone from scratch.
set -euo pipefail

name=$1 requirement=$2 constraints=$3 venv=$4 ready=$5 import=$6
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac

# What the environment must hold, and where (a virtual environment cannot move: a copied one is
# reinstalled); it is written to the marker once the install succeeded.
wanted="$requirement $(sha256sum "$constraints" | cut -d' ' -f1) $venv"
marker="$venv/.rhizome-installed"

log() { echo "$name: $*" >&2; }

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if ! flock -n 9; then
  log "waiting for another install into $venv"
  flock 9
fi

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && [ -x "$venv/$ready" ]; then
  echo "$venv"
  exit 0
fi

log "installing $requirement into $venv"
started=$(date +%s)
rm -rf "$venv"
python=${PYTHON:-python3}
if ! "$python" -m venv "$venv" >&2; then
  rm -rf "$venv"
  log "python3 -m venv failed; installing Debian's python3-venv"
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >&2
  "$python" -m venv "$venv" >&2
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  --constraint "$constraints" "$requirement" >&2
"$venv/bin/python" -c "import $import" >&2
echo "$wanted" >"$marker"
log "installed $requirement in $(($(date +%s) - started)) s"
echo "$venv"
