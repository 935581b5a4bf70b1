#!/usr/bin/env bash
# Installs llm-flywheel with its exact, tested dependency set (requirements.lock) into the active
# virtualenv, or into .venv beside this script when none is active. Safe to run again: a no-op
# when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")"

if [ -n "${VIRTUAL_ENV:-}" ]; then
  venv="$VIRTUAL_ENV"
else
  venv=.venv
  if [ ! -x "$venv/bin/python" ]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -c 'import sys; assert sys.version_info >= (3, 11), "llm-flywheel needs Python >= 3.11"'
    "$python" -m venv "$venv"
  fi
fi

# torch is pinned to 2.13.0: on a CPU machine pip takes the CPU wheel; an unpinned torch would pull a
# multi-GB CUDA build. On a GPU machine, install the CUDA build of torch 2.13.0 first; it satisfies the pin.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  --constraint requirements.lock --editable ".[dev,dask]"
echo "llm-flywheel installed in $venv" >&2
