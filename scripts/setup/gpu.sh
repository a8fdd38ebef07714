#!/bin/sh
# Set-up for the GPU tests (tests/gpu.rs, benches/gpu.rs): they build the fake NVML driver library
# (tests/fixtures/fake_nvml/fake_nvml.c) with the system C compiler at test time, so a C compiler
# and the C library headers must be installed. Idempotent; run as root on Debian/Ubuntu.
set -eu
if command -v "${CC:-cc}" >/dev/null 2>&1 && printf '#include <dlfcn.h>\nint main(void){return 0;}\n' |
    "${CC:-cc}" -x c -o /dev/null - >/dev/null 2>&1; then
    echo "gpu setup: C compiler ${CC:-cc} present"
    exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev
echo "gpu setup: installed gcc"
