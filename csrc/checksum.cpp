#include "checksum.hpp"
#include "checksum_internal.hpp"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

namespace ckptlab {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

struct Tables {
  std::array<std::array<uint32_t, 256>, 8> t{};
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (kPoly & (0u - (c & 1u)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

const Tables& tables() {
  static const Tables instance;  // immutable after construction, thread-safe init
  return instance;
}

uint32_t crc_table(uint32_t crc, const uint8_t* p, size_t n) {
  const auto& t = tables().t;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    v ^= crc;
    crc = t[7][v & 0xFF] ^ t[6][(v >> 8) & 0xFF] ^ t[5][(v >> 16) & 0xFF] ^
          t[4][(v >> 24) & 0xFF] ^ t[3][(v >> 32) & 0xFF] ^ t[2][(v >> 40) & 0xFF] ^
          t[1][(v >> 48) & 0xFF] ^ t[0][v >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xFF];
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw_serial(uint32_t crc, const uint8_t* p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return c32;
}

// The crc32 instruction has a latency of 3 cycles and a throughput of 1: three independent
// streams over three adjacent blocks keep it busy, and the partial CRCs are then combined.
// For the raw (un-inverted) register, crc(A ++ B, init) = shift_|B|(crc(A, init)) ^ crc(B, 0),
// where shift_K (K zero bytes through the register) is linear: four 256-entry tables.
constexpr size_t kStreamBlock = 4096;

struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> t{};
  ShiftTables() {
    static const uint8_t zeros[kStreamBlock] = {};
    for (int byte = 0; byte < 4; ++byte)
      for (uint32_t v = 0; v < 256; ++v) t[byte][v] = crc_hw_serial(v << (8 * byte), zeros, kStreamBlock);
  }
  uint32_t shift(uint32_t c) const {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
  }
};

__attribute__((target("sse4.2"))) uint32_t crc_hw(uint32_t crc, const uint8_t* p, size_t n) {
  static const ShiftTables shift;  // built once, read-only after (thread-safe static init)
  while (n >= 3 * kStreamBlock) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (size_t i = 0; i < kStreamBlock; i += 8) {
      uint64_t v0, v1, v2;
      std::memcpy(&v0, p + i, 8);
      std::memcpy(&v1, p + kStreamBlock + i, 8);
      std::memcpy(&v2, p + 2 * kStreamBlock + i, 8);
      c0 = _mm_crc32_u64(c0, v0);
      c1 = _mm_crc32_u64(c1, v1);
      c2 = _mm_crc32_u64(c2, v2);
    }
    crc = shift.shift(shift.shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1)) ^ static_cast<uint32_t>(c2);
    p += 3 * kStreamBlock;
    n -= 3 * kStreamBlock;
  }
  return crc_hw_serial(crc, p, n);
}
bool cpu_has_hw() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & bit_SSE4_2) != 0;
}
constexpr const char* kHwName = "sse4.2";
#elif defined(__aarch64__)
// The CRC instructions are enabled for this one function (runtime dispatch below), and the
// two compilers spell that differently: GCC wants "+crc" and declares the ACLE intrinsics for
// it; clang takes "crc" (clang 14 ignores "+crc" without a warning, and its arm_acle.h
// declares __crc32c* only when the whole file is built with +crc), so under clang we call the
// builtins behind those intrinsics. Checked by `make test-arm64` (docs/ARM64.md).
#if defined(__clang__)
#define CKPTLAB_TARGET_CRC __attribute__((target("crc")))
#define CKPTLAB_CRC32CD __builtin_arm_crc32cd
#define CKPTLAB_CRC32CB __builtin_arm_crc32cb
#else
#define CKPTLAB_TARGET_CRC __attribute__((target("+crc")))
#define CKPTLAB_CRC32CD __crc32cd
#define CKPTLAB_CRC32CB __crc32cb
#endif
CKPTLAB_TARGET_CRC uint32_t crc_hw(uint32_t crc, const uint8_t* p, size_t n) {
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    crc = CKPTLAB_CRC32CD(crc, v);
    p += 8;
    n -= 8;
  }
  while (n--) crc = CKPTLAB_CRC32CB(crc, *p++);
  return crc;
}
bool cpu_has_hw() { return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0; }
constexpr const char* kHwName = "armv8-crc";
#else
uint32_t crc_hw(uint32_t crc, const uint8_t* p, size_t n) { return crc_table(crc, p, n); }
bool cpu_has_hw() { return false; }
constexpr const char* kHwName = "table";
#endif

bool use_hw() {
  static const bool has = cpu_has_hw();
  return has;
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t nbytes) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  crc = use_hw() ? crc_hw(crc, p, nbytes) : crc_table(crc, p, nbytes);
  return ~crc;
}

const char* crc32c_implementation() { return use_hw() ? kHwName : "table"; }

// Each implementation by name, for the C++ self-test (checksum_internal.hpp). Thin wrappers:
// crc32c() above calls the internal functions directly.
namespace checksum_detail {
uint32_t crc_table(uint32_t reg, const uint8_t* p, size_t n) { return ckptlab::crc_table(reg, p, n); }
uint32_t crc_hw(uint32_t reg, const uint8_t* p, size_t n) { return ckptlab::crc_hw(reg, p, n); }
#if defined(__x86_64__)
uint32_t crc_hw_serial(uint32_t reg, const uint8_t* p, size_t n) { return ckptlab::crc_hw_serial(reg, p, n); }
#endif
bool cpu_has_hw() { return ckptlab::cpu_has_hw(); }
const char* hw_name() { return kHwName; }
}  // namespace checksum_detail

}  // namespace ckptlab
