#!/usr/bin/env bash
# Installs moto's server, the local S3-compatible stand-in of the object-store media tests, from
# PyPI into a Python virtual environment, and prints that environment's path on its last line
# of standard output.
#
#   bash scripts/s3-venv.sh [DIR]
#
# DIR defaults to $S3_VENV, else `${CARGO_TARGET_DIR:-target}/s3-venv`. The version is pinned
# below, and its dependencies by scripts/s3-constraints.txt (a frozen, known-good set), so every
# machine runs the same stand-in. Idempotent: an environment that holds this
# exact pin is reused at once. Safe to call from several processes at the same time: an
# exclusive lock (flock) on DIR.lock serialises installs, and the environment is marked complete
# only after a successful install, so an interrupted one is redone from scratch.
set -euo pipefail

MOTO_VERSION="5.2.5"

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
venv="${1:-${S3_VENV:-$target_dir/s3-venv}}"
case "$venv" in /*) ;; *) venv="$PWD/$venv" ;; esac
constraints="$root/scripts/s3-constraints.txt"

# What the environment must hold, and where (a virtual environment cannot move: a copied one is
# reinstalled); it is written to the marker once the install succeeded.
wanted="moto[server]==$MOTO_VERSION $(sha256sum "$constraints" | cut -d' ' -f1) $venv"
marker="$venv/.rhizome-installed"

log() { echo "s3-venv: $*" >&2; }

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if ! flock -n 9; then
  log "waiting for another install into $venv"
  flock 9
fi

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] && [ -x "$venv/bin/moto_server" ]; then
  echo "$venv"
  exit 0
fi

log "installing moto[server] $MOTO_VERSION into $venv"
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
  --constraint "$constraints" "moto[server]==$MOTO_VERSION" >&2
"$venv/bin/python" -c 'import moto.server' >&2
echo "$wanted" >"$marker"
log "installed moto[server] $MOTO_VERSION in $(($(date +%s) - started)) s"
echo "$venv"
