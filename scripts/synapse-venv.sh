#!/usr/bin/env bash
# Installs Synapse, the interoperability peer of the federation tests, from PyPI into a Python
# virtual environment, and prints that environment's path on its last line of standard output.
#
#   bash scripts/synapse-venv.sh [DIR]
#
# DIR defaults to $SYNAPSE_VENV, else `${CARGO_TARGET_DIR:-target}/synapse-venv`. The
# version is pinned below, and its dependencies by scripts/synapse-constraints.txt (a frozen,
# known-good set), so every machine runs the same Synapse. Idempotent: an environment that holds
# this exact pin is reused at once. Safe to call from several processes at the same time: an
# exclusive lock (flock) on DIR.lock serialises installs, and the environment is marked complete
# only after a successful install, so an interrupted one is redone from scratch.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
venv="${1:-${SYNAPSE_VENV:-$target_dir/synapse-venv}}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
constraints="$root/scripts/synapse-constraints.txt"

# What the environment must hold, and where (a virtual environment cannot move: a copied one is
# reinstalled); it is written to the marker once the install succeeded.
wanted="matrix-synapse==$SYNAPSE_VERSION $(sha256sum "$constraints" | cut -d' ' -f1) $venv"
marker="$venv/.rhizome-installed"

log() { echo "synapse-venv: $*" >&2; }

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if ! flock -n 9; then
  log "waiting for another install into $venv"
  flock 9
fi

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && [ -x "$venv/bin/python" ]; then
  echo "$venv"
  exit 0
fi

log "installing matrix-synapse $SYNAPSE_VERSION into $venv"
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
  --constraint "$constraints" "matrix-synapse==$SYNAPSE_VERSION" >&2
"$venv/bin/python" -c 'import synapse.app.homeserver' >&2
echo "$wanted" >"$marker"
log "installed matrix-synapse $SYNAPSE_VERSION in $(($(date +%s) - started)) s"
echo "$venv"
