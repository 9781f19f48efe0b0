#!/usr/bin/env bash
# Installs moto's server, the local S3-compatible stand-in of the object-store media tests, from
# PyPI into a Python virtual environment, and prints that environment's path on its last line
# of standard output.
#
#   bash scripts/s3-venv.sh [DIR]
#
# DIR defaults to $S3_VENV, else `${CARGO_TARGET_DIR:-target}/s3-venv`. The version is pinned
# below, and its dependencies by scripts/s3-constraints.txt, so every machine runs the same
# stand-in. Reused, locked and marked as scripts/pypi-venv.sh says.
set -euo pipefail

MOTO_VERSION="5.2.5"

root=$(cd "$(dirname "$0")/.." && pwd)
target_dir="${CARGO_TARGET_DIR:-$root/target}"
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
exec bash "$root/scripts/pypi-venv.sh" s3-venv "moto[server]==$MOTO_VERSION" \
  "$root/scripts/s3-constraints.txt" "${1:-${S3_VENV:-$target_dir/s3-venv}}" \
  bin/moto_server moto.server
