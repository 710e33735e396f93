#!/usr/bin/env bash
# What each install of the project weighs: a new virtualenv per install, its size, package count
# and install time, and which training frameworks importing the precompute side and the loader
# loads (none, in every install). Run from the repository root; with pip's cache warm the time
# is unpacking and installing, not downloading.
#   bash benchmarks/install_sizes.sh [WORK_DIR]
set -euo pipefail
work=${1:-benchmarks/work/install-sizes}
mkdir -p "$work"
for spec in ".:core" ".[jax]:jax" ".[torch]:torch" ".[tensorflow]:tensorflow" ".[tensorflow,plots]:train"; do
  target=${spec%%:*}; name=${spec##*:}
  venv="$work/venv-$name"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  pin=""
  [ "$name" = torch ] && pin="torch==2.13.0"  # a CPU build; see docs/install.md
  start=$(date +%s.%N)
  "$venv/bin/pip" install -q "$target" $pin
  seconds=$(echo "$(date +%s.%N) - $start" | bc)
  loaded=$("$venv/bin/python" -c "import sys, precompute.cli, loader; print(sorted(m for m in ('tensorflow', 'keras', 'torch', 'jax', 'matplotlib') if m in sys.modules))")
  packages=$("$venv/bin/pip" list 2>/dev/null | tail -n +3 | wc -l)
  echo "$name: $(du -sm "$venv" | cut -f1) MB, $packages packages, ${seconds%.*} s; frameworks loaded by precompute + loader: $loaded"
done
