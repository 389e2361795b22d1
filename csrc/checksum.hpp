// CRC32C (Castagnoli) over byte ranges: hardware instructions where the CPU has them
// (SSE4.2 on x86-64, the CRC extension on ARMv8), a slicing-by-8 table otherwise.
// Chosen over XXH3 because it needs no third-party code and one core runs it an order of
// magnitude faster than the disks we write to (see benchmarks/bench_checksum.py).
#pragma once
#include <cstddef>
#include <cstdint>

namespace ckptlab {

// Continues a CRC32C: pass 0 to start; crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
uint32_t crc32c(uint32_t crc, const void* data, size_t nbytes);

// "sse4.2", "armv8-crc" or "table": which implementation crc32c() dispatches to.
const char* crc32c_implementation();

}  // namespace ckptlab
