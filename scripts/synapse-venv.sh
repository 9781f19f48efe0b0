#!/usr/bin/env bash
# Installs Synapse, the interoperability peer of the federation tests, from PyPI into a Python
# virtual environment, and prints that environment's path on its last line of standard output.
#
#   bash scripts/synapse-venv.sh [DIR]
#
# DIR defaults to $SYNAPSE_VENV, else `${CARGO_TARGET_DIR:-target}/synapse-venv`. The
# version is pinned below, and its dependencies by scripts/synapse-constraints.txt, so every
# machine runs the same Synapse. Reused, locked and marked as scripts/pypi-venv.sh says.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
exec bash "$root/scripts/pypi-venv.sh" synapse-venv "matrix-synapse==$SYNAPSE_VERSION" \
  "$root/scripts/synapse-constraints.txt" "${1:-${SYNAPSE_VENV:-$target_dir/synapse-venv}}" \
  bin/python synapse.app.homeserver
