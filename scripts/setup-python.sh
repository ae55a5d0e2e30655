#!/usr/bin/env bash
# Creates the Python virtual environment heed's tests use for their oracles
# (the gguf package, Hugging Face tokenizers, jinja2, numpy) and, later, the
# real-client tests (openai, anthropic). Never a runtime dependency of heed.
# Kept beside the models, outside the repository:
# HEED_VENV, default ~/.cache/heed/venv. Idempotent: a venv that already
# imports everything is left alone.
set -euo pipefail
venv="${HEED_VENV:-$HOME/.cache/heed/venv}"
pkgs=(numpy gguf jinja2 tokenizers openai anthropic)
mods="numpy, gguf, jinja2, tokenizers, openai, anthropic"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import $mods" 2>/dev/null; then exit 0; fi
echo "setup: creating the test venv in $venv (${pkgs[*]})"
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pkgs[@]}"
"$venv/bin/python" -c "import $mods"
