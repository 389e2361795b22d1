// The implementations behind crc32c(), for the C++ self-test only (csrc/tests/): it checks
// every one this CPU can run against a reference, the table path included where crc32c()
// dispatches to the hardware. Not part of the engine's interface; nothing else includes it.
// All take and return the raw (un-inverted) CRC register, unlike crc32c().
#pragma once
#include <cstddef>
#include <cstdint>

namespace ckptlab {
namespace checksum_detail {

uint32_t crc_table(uint32_t reg, const uint8_t* p, size_t n);  // slicing-by-8, any CPU
uint32_t crc_hw(uint32_t reg, const uint8_t* p, size_t n);     // the hardware path (only if cpu_has_hw())
#if defined(__x86_64__)
uint32_t crc_hw_serial(uint32_t reg, const uint8_t* p, size_t n);  // one SSE4.2 stream
#endif
bool cpu_has_hw();
const char* hw_name();  // "sse4.2", "armv8-crc", or "table" where there is no hardware path

}  // namespace checksum_detail
}  // namespace ckptlab
