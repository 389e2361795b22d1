// CRC32C (Castagnoli) over byte ranges: hardware instructions where the CPU has them
// (SSE4.2 on x86-64 with three interleaved streams, the CRC extension on ARMv8), a
// slicing-by-8 table otherwise. Measured (benchmarks/bench_checksum.py, 2-core EPYC VM):
// 12.4 GB/s per core against XXH3-64's 21 GB/s. We keep CRC32C anyway: XXH3 would mean a C
// dependency no PyPI wheel ships headers for (vendoring is ruled out), CRC32C is what storage
// stacks interoperate with, and one core of it is 4x the fastest disk we write to (2.9 GB/s
// O_DIRECT); the checksum runs on the writer threads, off the training thread.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ckptlab {

// Continues a CRC32C: pass 0 to start; crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
uint32_t crc32c(uint32_t crc, const void* data, size_t nbytes);

// "sse4.2", "armv8-crc" or "table": which implementation crc32c() dispatches to.
const char* crc32c_implementation();

}  // namespace ckptlab
