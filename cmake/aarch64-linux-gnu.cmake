# Cross build for aarch64 Linux (Grace) on an x86-64 host; tests run under qemu-user.
# Used by `make test-arm64` (docs/ARM64.md):
#   cmake -S . -B build/arm64 -G Ninja --toolchain cmake/aarch64-linux-gnu.cmake \
#         -DCKPTLAB_BUILD_TESTS=ON -DCKPTLAB_BUILD_PYTHON=OFF -DPython_EXECUTABLE=.venv/bin/python
#   cmake --build build/arm64 --target engine_selftest && ctest --test-dir build/arm64
# Debian packages: g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user.
# -DCKPTLAB_ARM64_CXX=clang++-14 checks clang instead (same sysroot, --target from
# CMAKE_CXX_COMPILER_TARGET; GCC ignores that variable).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CKPTLAB_ARM64_CXX aarch64-linux-gnu-g++ CACHE STRING "C++ compiler for aarch64")
set(CKPTLAB_ARM64_SYSROOT /usr/aarch64-linux-gnu CACHE PATH "aarch64 libraries (qemu -L, find root)")
set(CKPTLAB_QEMU_AARCH64 qemu-aarch64 CACHE STRING "qemu-user for aarch64")

set(CMAKE_CXX_COMPILER ${CKPTLAB_ARM64_CXX})
set(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)
# Plain armv8-a: no +crc, the CRC path is chosen at run time (checksum.cpp).

set(CMAKE_FIND_ROOT_PATH ${CKPTLAB_ARM64_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# CTest runs each test command as `qemu-aarch64 -L <sysroot> <binary>` (4 KiB pages, the
# host's), and once more with QEMU_PAGESIZE=65536 for each CKPTLAB_SELFTEST_QEMU_PAGE_SIZES.
set(CMAKE_CROSSCOMPILING_EMULATOR ${CKPTLAB_QEMU_AARCH64} -L ${CKPTLAB_ARM64_SYSROOT})
set(CKPTLAB_SELFTEST_QEMU_PAGE_SIZES 65536 CACHE STRING
    "Under a qemu-user CMAKE_CROSSCOMPILING_EMULATOR: further page sizes to run engine_selftest with")
