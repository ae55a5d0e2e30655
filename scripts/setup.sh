#!/usr/bin/env bash
# Installs what heed builds and tests with, from Debian's packages. Idempotent:
# what is present is skipped, and apt-get is not run when nothing is missing.
#
#   scripts/setup.sh           native build + tests + the arm64 (NEON) test run
#   scripts/setup.sh --check   list what is missing; exit 1 if anything is
#
# The arm64 tests are cross-built with gcc-aarch64-linux-gnu and run under
# qemu-aarch64. Their libraries come from Debian's arm64 packages: the
# multi-arch ones through apt (dpkg --add-architecture arm64); Criterion's
# runtime and nanomsg, which cannot sit beside their amd64 twins, are unpacked
# from their .debs into .deps/arm64 (git-ignored), used only by that run.
# Criterion re-executes the test binary for every test, so the kernel must
# hand aarch64 executables to qemu: setup registers Debian's qemu-user-binfmt
# rule with binfmt_misc (root; the one change outside the package manager).
set -euo pipefail
cd "$(dirname "$0")/.."

native=(
  cmake gcc make pkg-config
  ocl-icd-opencl-dev opencl-headers pocl-opencl-icd clinfo
  libclblast-dev libhwloc-dev hwloc libxml2-dev libdnnl-dev libcriterion-dev
  gnuplot-nox libcjson-dev libmicrohttpd-dev libpcre2-dev libxxhash-dev libsimde-dev python3 python3-venv python3-jsonschema
  clang libclang-rt-14-dev llvm
)
arm64=(
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user qemu-user-binfmt
  libc6:arm64 libhwloc-dev:arm64 libxml2-dev:arm64 libpcre2-dev:arm64 libcjson-dev:arm64 ocl-icd-opencl-dev:arm64 libffi8:arm64 libgit2-1.5:arm64
)
arm64_private=(libcriterion3:arm64 libnanomsg5:arm64)
deps=.deps/arm64

want_arm64=1
case "$(uname -m)" in x86_64|amd64) ;; *) want_arm64=0 ;; esac
[ "${HEED_NO_ARM64:-0}" = 1 ] && want_arm64=0

installed() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -qx 'install ok installed'; }

missing=()
for p in "${native[@]}"; do installed "$p" || missing+=("$p"); done
need_arch=0
if [ $want_arm64 = 1 ]; then
  dpkg --print-foreign-architectures | grep -qx arm64 || need_arch=1
  for p in "${arm64[@]}"; do installed "$p" || missing+=("$p"); done
fi
need_private=0
[ $want_arm64 = 1 ] && [ ! -e "$deps/usr/lib/aarch64-linux-gnu/libcriterion.so.3" ] && need_private=1
binfmt=/proc/sys/fs/binfmt_misc
need_binfmt=0
[ $want_arm64 = 1 ] && ! grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null && need_binfmt=1

if [ "${1:-}" = "--check" ]; then
  [ $need_arch = 1 ] && echo "setup: the arm64 architecture is not enabled in dpkg"
  [ ${#missing[@]} -gt 0 ] && echo "setup: missing packages: ${missing[*]}"
  [ $need_private = 1 ] && echo "setup: missing $deps (arm64 Criterion runtime)"
  [ $need_binfmt = 1 ] && echo "setup: qemu-aarch64 is not registered with binfmt_misc"
  [ $need_arch = 0 ] && [ ${#missing[@]} -eq 0 ] && [ $need_private = 0 ] && [ $need_binfmt = 0 ] &&
    { echo "setup: everything present"; exit 0; }
  exit 1
fi

[ $need_arch = 0 ] && [ ${#missing[@]} -eq 0 ] && [ $need_private = 0 ] && [ $need_binfmt = 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
updated=0
if [ $need_arch = 1 ]; then
  echo "setup: enabling the arm64 architecture in dpkg (for the NEON tests under qemu)"
  $sudo dpkg --add-architecture arm64
fi
if [ $need_arch = 1 ] || [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  updated=1
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
if [ $need_private = 1 ]; then
  echo "setup: unpacking ${arm64_private[*]} into $deps"
  mkdir -p "$deps/debs"
  if ! (cd "$deps/debs" && apt-get download "${arm64_private[@]}"); then
    [ $updated = 1 ] || $sudo apt-get update -q
    (cd "$deps/debs" && apt-get download "${arm64_private[@]}")
  fi
  for d in "$deps"/debs/*.deb; do dpkg -x "$d" "$deps"; done
  rm -rf "$deps/debs"
fi
if [ $need_binfmt = 1 ]; then
  echo "setup: registering qemu-aarch64 with binfmt_misc (Debian's qemu-user-binfmt rule)"
  [ -e "$binfmt/register" ] || $sudo mount -t binfmt_misc binfmt_misc "$binfmt" || true
  rule=/usr/lib/binfmt.d/qemu-aarch64.conf
  if [ -e "$binfmt/register" ] && [ -e "$rule" ]; then
    $sudo /lib/systemd/systemd-binfmt "$rule" 2>/dev/null || sed -n 's/^\(:.*\)$/\1/p' "$rule" | $sudo tee "$binfmt/register" >/dev/null
  fi
  if ! grep -qx enabled "$binfmt/qemu-aarch64" 2>/dev/null; then
    echo "setup: cannot register qemu-aarch64 with binfmt_misc here (not root, or a container without it);" >&2
    echo "setup: the arm64 tests need it. Run as root, or skip them with HEED_NO_ARM64=1." >&2
    exit 1
  fi
fi
