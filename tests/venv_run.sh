#!/usr/bin/env bash
# tests/venv_run.sh PYTHON SCRIPT ARGS...: runs an oracle test with the test
# venv's python, or fails saying how to make the venv.
py=$1
shift
if [[ ! -x $py ]]; then
  echo "no test python at $py: run 'make setup' (scripts/setup-python.sh), or set HEED_VENV" >&2
  exit 1
fi
exec "$py" "$@"
