# Cross build for 64-bit Arm with Debian's gcc-aarch64-linux-gnu; tests run
# under qemu-aarch64 with the arm64 multiarch libraries that setup installs.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(ENV{PKG_CONFIG_LIBDIR} "/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig")
# The arm64 loader and multi-arch libraries are installed (libc6:arm64); the
# Criterion runtime comes from HEED_ARM64_DEPS (see scripts/setup.sh).
set(HEED_ARM64_DEPS "" CACHE PATH "where setup unpacked the arm64 Criterion runtime")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-E;LD_LIBRARY_PATH=${HEED_ARM64_DEPS}/usr/lib/aarch64-linux-gnu:/usr/lib/aarch64-linux-gnu)
