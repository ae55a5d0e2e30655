#!/usr/bin/env bash
# Installs the build into a scratch prefix, then builds a consumer against it
# twice: through pkg-config (shared and static) and through find_package(heed).
set -eu
build=$1 work=$2
rm -rf "$work"; mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
cat >"$work/use.c" <<'C'
#include <heed/heed.h>
#include <stdio.h>
int main(void) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  heed_runtime *rt;
  heed_error e = {0};
  if (heed_runtime_open(&o, &rt, &e) != HEED_OK) { fprintf(stderr, "%s\n", e.msg); return 1; }
  printf("heed %s on %s/%s\n", HEED_VERSION_STRING, heed_backend_name(heed_runtime_backend(rt)), heed_isa_name(heed_runtime_isa(rt)));
  heed_runtime_close(rt);
  return 0;
}
C
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig:$work/prefix/lib64/pkgconfig:$work/prefix/lib/$(gcc -print-multiarch)/pkgconfig"
libdir=$(pkg-config --variable=libdir heed)
cc -std=c11 "$work/use.c" -o "$work/use_shared" $(pkg-config --cflags --libs heed) -Wl,-rpath,"$libdir"
"$work/use_shared" | grep -q '^heed 0.1.0 on cpu/'
# Static libheed beside the system's shared hwloc and OpenCL (as README shows).
cc -std=c11 "$work/use.c" -o "$work/use_static" $(pkg-config --cflags heed) "$libdir/libheed.a" $(pkg-config --libs hwloc libxml-2.0 OpenCL) -lpthread -lm
"$work/use_static" | grep -q '^heed 0.1.0 on cpu/'
mkdir -p "$work/cm"
cat >"$work/cm/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.20)
project(use_heed C)
find_package(heed 0.1 REQUIRED)
add_executable(use ../use.c)
target_link_libraries(use PRIVATE heed::heed)
add_executable(use_static ../use.c)
target_link_libraries(use_static PRIVATE heed::heed_static)
CM
cmake -S "$work/cm" -B "$work/cm/build" -DCMAKE_PREFIX_PATH="$work/prefix" >"$work/cm.log"
cmake --build "$work/cm/build" >>"$work/cm.log"
"$work/cm/build/use" | grep -q '^heed 0.1.0 on cpu/'
"$work/cm/build/use_static" | grep -q '^heed 0.1.0 on cpu/'
echo "install: pkg-config (shared, static) and find_package(heed) consumers built and ran"
