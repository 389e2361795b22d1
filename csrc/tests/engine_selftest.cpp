// Standalone self-test of the C++ engine: no Python, no torch, no pybind11. CMake builds it
// (CKPTLAB_BUILD_TESTS=ON, target engine_selftest, registered with CTest) against the same
// ckptlab_core library as the Python module; `make test` runs it natively, and
// `make test-arm64` cross-builds it for aarch64 and runs it under qemu-aarch64 with 4 KiB and
// 64 KiB pages (docs/ARM64.md). It checks
//   1. CRC32C: published vectors, then every implementation this CPU can run (the dispatching
//      crc32c(), the hardware path, the slicing-by-8 table) against a bitwise reference over a
//      1 MiB patterned buffer at many lengths and start alignments, and continuation (a CRC
//      carried across split points, which is how the 3-stream x86 path folds its streams);
//   2. the engine end to end: two checkpoints from host memory, MANIFEST trailer and chunk
//      table, a verified read back into a fresh buffer, retention, and a flipped byte that
//      the verified read must refuse;
//   3. wait_all's deadline: a checkpoint held at a fault point (a delay) is still pending at
//      a short deadline and committed without one;
//   4. preallocation: fallocate(2) reserves the size, "not supported" errnos skip it, other
//      errors throw (tests/csrc/test_preallocation.py refuses the syscall for real);
//   5. a dying disk (mode=persist): every checkpoint from the failing one on fails with its
//      errno, the last good one stays committed, waits and close() return;
//   6. chunk_assignment "static": every chunk is written by writer chunk % writer_threads,
//      also with staging back-pressure (fewer buffers than chunks), and an unknown name throws;
//   7. the directory lock: same_file tells an unlinked or replaced lock file from the one at
//      the path, and two engines on one directory still exclude each other;
//   8. the staging pool's background prefault: it leaves every page resident (mincore), never
//      writes a buffer someone holds, hands every buffer back, and a pool destroyed while it
//      runs stops it.
// Exit status 0 when everything passed; every failure is printed.
//
// The individual CRC implementations (so the table path is tested on CPUs with the hardware
// instructions too) come from checksum_internal.hpp, which exists for this test.
#include "../checksum.hpp"
#include "../checksum_internal.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../engine.hpp"
#include "../fault.hpp"
#include "../file_io.hpp"
#include "../manifest_writer.hpp"
#include "../reader.hpp"
#include "../staging_pool.hpp"

namespace {

int g_failures = 0;
long g_checks = 0;

#define CHECK(cond, ...)                                           \
  do {                                                             \
    ++g_checks;                                                    \
    if (!(cond)) {                                                 \
      ++g_failures;                                                \
      std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                           \
      std::fputc('\n', stderr);                                    \
    }                                                              \
  } while (0)

// Bit-at-a-time CRC32C on the raw (un-inverted) register: the reference everything is
// compared against. It shares nothing with checksum.cpp but the polynomial.
uint32_t ref_update(uint32_t reg, const uint8_t* p, size_t n) {
  while (n--) {
    reg ^= *p++;
    for (int k = 0; k < 8; ++k) reg = (reg >> 1) ^ (0x82F63B78u & (0u - (reg & 1u)));
  }
  return reg;
}
uint32_t ref_crc32c(const void* data, size_t n) {
  return ~ref_update(~0u, static_cast<const uint8_t*>(data), n);
}

// ---------------------------------------------------------------------------------------
// 1. CRC32C

struct Vector {
  const char* name;
  std::vector<uint8_t> bytes;
  uint32_t crc;
};

std::vector<Vector> known_vectors() {
  auto str = [](const char* s) { return std::vector<uint8_t>(s, s + std::strlen(s)); };
  std::vector<Vector> v;
  v.push_back({"empty", {}, 0x00000000u});
  v.push_back({"\"a\"", str("a"), 0xC1D04330u});
  v.push_back({"\"123456789\" (check value)", str("123456789"), 0xE3069283u});
  v.push_back({"quick brown fox", str("The quick brown fox jumps over the lazy dog"), 0x22620404u});
  // RFC 3720 (iSCSI) appendix B.4.
  v.push_back({"32 x 0x00", std::vector<uint8_t>(32, 0x00), 0x8A9136AAu});
  v.push_back({"32 x 0xFF", std::vector<uint8_t>(32, 0xFF), 0x62A8AB43u});
  std::vector<uint8_t> up(32), down(32);
  for (int i = 0; i < 32; ++i) up[i] = static_cast<uint8_t>(i), down[i] = static_cast<uint8_t>(31 - i);
  v.push_back({"32 ascending", up, 0x46DD794Eu});
  v.push_back({"32 descending", down, 0x113FDB5Cu});
  v.push_back({"iSCSI read PDU",
               {0x01, 0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18,
                0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},
               0xD9963A56u});
  return v;
}

// One implementation under test, with the public crc32c() convention (inverted in and out).
struct Impl {
  const char* name;
  std::function<uint32_t(uint32_t, const uint8_t*, size_t)> fn;
};

std::vector<Impl> implementations() {
  using namespace ckptlab::checksum_detail;
  std::vector<Impl> impls;
  impls.push_back({"crc32c()", [](uint32_t c, const uint8_t* p, size_t n) { return ckptlab::crc32c(c, p, n); }});
  impls.push_back({"table", [](uint32_t c, const uint8_t* p, size_t n) { return ~crc_table(~c, p, n); }});
  if (cpu_has_hw()) {
    impls.push_back({hw_name(), [](uint32_t c, const uint8_t* p, size_t n) { return ~crc_hw(~c, p, n); }});
#if defined(__x86_64__)
    impls.push_back({"sse4.2-serial", [](uint32_t c, const uint8_t* p, size_t n) { return ~crc_hw_serial(~c, p, n); }});
#endif
  }
  return impls;
}

// Lengths that reach every branch: all short lengths (the byte tail and the 8-byte loop), the
// edges of the 3 x 4096 interleaved block (x86) and of several blocks, powers of two and
// their neighbours, pseudo-random lengths, and the whole buffer.
std::vector<size_t> test_lengths(size_t max_len) {
  std::vector<size_t> lens;
  for (size_t n = 0; n <= 512; ++n) lens.push_back(n);
  const size_t block = 3 * 4096;
  for (size_t k = 1; k * block <= max_len; k = k < 8 ? k + 1 : k * 2)
    for (long d = -17; d <= 17; ++d)
      if (static_cast<long>(k * block) + d > 512) lens.push_back(static_cast<size_t>(static_cast<long>(k * block) + d));
  for (size_t p = 1024; p <= max_len; p *= 2)
    for (long d : {-9L, -8L, -1L, 0L, 1L, 7L, 8L, 9L})
      if (static_cast<long>(p) + d <= static_cast<long>(max_len)) lens.push_back(static_cast<size_t>(static_cast<long>(p) + d));
  uint64_t x = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < 64; ++i) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    lens.push_back(static_cast<size_t>(x % (max_len + 1)));
  }
  lens.push_back(max_len);
  std::vector<size_t> out;
  for (size_t n : lens)
    if (n <= max_len) out.push_back(n);
  return out;
}

void test_crc32c() {
  const auto impls = implementations();
  std::printf("crc32c: dispatch=%s, implementations under test:", ckptlab::crc32c_implementation());
  for (const auto& im : impls) std::printf(" %s", im.name);
  std::printf("\n");

  // Published vectors, through every implementation and the reference itself.
  const auto vectors = known_vectors();
  for (const auto& v : vectors) {
    CHECK(ref_crc32c(v.bytes.data(), v.bytes.size()) == v.crc, "reference on %s", v.name);
    for (const auto& im : impls) {
      uint32_t got = im.fn(0, v.bytes.data(), v.bytes.size());
      CHECK(got == v.crc, "%s on %s: 0x%08X, expected 0x%08X", im.name, v.name, got, v.crc);
    }
  }
  std::printf("  %zu known vectors x %zu implementations\n", vectors.size(), impls.size());

  // A 1 MiB patterned buffer (+ slack for the alignment shifts), not periodic at any small
  // stride, so a wrong shift, stream order or tail would change the result.
  constexpr size_t kMiB = 1u << 20;
  constexpr size_t kMaxAlign = 16;
  std::vector<uint8_t> storage(kMiB + kMaxAlign + 64);
  uint8_t* base = storage.data();
  while (reinterpret_cast<uintptr_t>(base) % 64) ++base;  // base is 64-byte aligned
  uint32_t s = 0x12345678u;
  for (size_t i = 0; i < kMiB + kMaxAlign; ++i) {
    s = s * 1664525u + 1013904223u;
    base[i] = static_cast<uint8_t>((s >> 24) ^ (i * 7) ^ (i >> 11));
  }

  const std::vector<size_t> lens = test_lengths(kMiB);
  long compared = 0;
  std::vector<uint32_t> prefix(kMiB + 1);  // reference CRC of base[a .. a+n) for every n
  for (size_t a = 0; a < kMaxAlign; ++a) {
    const uint8_t* p = base + a;
    uint32_t reg = ~0u;
    prefix[0] = 0;
    for (size_t n = 0; n < kMiB; ++n) {
      reg = ref_update(reg, p + n, 1);
      prefix[n + 1] = ~reg;
    }
    for (size_t n : lens) {
      for (const auto& im : impls) {
        uint32_t got = im.fn(0, p, n);
        ++compared;
        CHECK(got == prefix[n], "%s len=%zu align=%zu: 0x%08X, expected 0x%08X", im.name, n, a, got, prefix[n]);
      }
    }
    // Continuation: crc(a ++ b) == crc32c(crc(a), b) at split points around every boundary.
    for (size_t split : {size_t(0), size_t(1), size_t(7), size_t(8), size_t(4095), size_t(4096), size_t(12287),
                         size_t(12288), size_t(12289), size_t(65536 + 3), kMiB / 2 + 5, kMiB - 1, kMiB}) {
      for (const auto& im : impls) {
        uint32_t got = im.fn(im.fn(0, p, split), p + split, kMiB - split);
        ++compared;
        CHECK(got == prefix[kMiB], "%s continuation split=%zu align=%zu", im.name, split, a);
      }
    }
  }
  std::printf("  %zu lengths (0..%zu) x %zu alignments x %zu implementations + continuations: %ld comparisons\n",
              lens.size(), kMiB, kMaxAlign, impls.size(), compared);
}

// ---------------------------------------------------------------------------------------
// 2. Engine smoke test

std::string read_file(const std::string& path) {
  std::string out;
  ckptlab::UniqueFd fd = ckptlab::open_readonly(path);
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

uint64_t get_le(const std::string& s, size_t at, int nbytes) {
  uint64_t v = 0;
  for (int i = nbytes - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

// The few manifest fields we need, parsed from the engine's own compact JSON.
struct ParsedManifest {
  bool ok = false;
  uint64_t chunk_bytes = 0, total_bytes = 0;
  std::vector<std::string> files;
  std::vector<ckptlab::ManifestChunk> chunks;
};

uint64_t number_after(const std::string& body, const std::string& key) {
  size_t at = body.find("\"" + key + "\":");
  if (at == std::string::npos) return ~0ull;
  return std::strtoull(body.c_str() + at + key.size() + 3, nullptr, 10);
}

ParsedManifest parse_manifest(const std::string& bytes) {
  ParsedManifest m;
  const size_t T = ckptlab::kManifestTrailerBytes;
  CHECK(bytes.size() > T, "manifest of %zu bytes", bytes.size());
  if (bytes.size() <= T) return m;
  const size_t body_len = bytes.size() - T;
  const std::string body = bytes.substr(0, body_len);
  CHECK(bytes.compare(body_len, 8, ckptlab::kManifestMagic) == 0, "manifest magic");
  CHECK(get_le(bytes, body_len + 8, 8) == body_len, "manifest body length");
  CHECK(get_le(bytes, body_len + 16, 4) == ref_crc32c(body.data(), body.size()), "manifest body CRC32C");
  CHECK(get_le(bytes, body_len + 20, 4) == ckptlab::kFormatVersion, "manifest format version");
  m.chunk_bytes = number_after(body, "chunk_bytes");
  m.total_bytes = number_after(body, "total_bytes");
  for (size_t at = body.find("\"name\":\""); at != std::string::npos; at = body.find("\"name\":\"", at + 1)) {
    size_t b = at + 8, e = body.find('"', b);
    m.files.push_back(body.substr(b, e - b));
  }
  size_t at = body.find("\"chunks\":[");
  if (at == std::string::npos) return m;
  const char* p = body.c_str() + at + 10;
  while (*p == '[') {
    char* end;
    ckptlab::ManifestChunk c;
    c.file = static_cast<uint32_t>(std::strtoul(p + 1, &end, 10));
    c.offset = std::strtoull(end + 1, &end, 10);
    c.nbytes = std::strtoull(end + 1, &end, 10);
    c.crc = static_cast<uint32_t>(std::strtoul(end + 1, &end, 10));
    m.chunks.push_back(c);
    p = end + 1;  // past ']'
    if (*p == ',') ++p;
  }
  m.ok = true;
  return m;
}

// Reads a committed checkpoint back through read_verified() into `out` (total_bytes long).
ckptlab::ReadResult read_back(const std::string& ckpt_path, const ParsedManifest& m, std::vector<uint8_t>& out) {
  std::vector<ckptlab::ReadTask> tasks;
  for (size_t c = 0; c < m.chunks.size(); ++c) {
    const auto& mc = m.chunks[c];
    ckptlab::ReadTask t{ckptlab::join_path(ckpt_path, m.files.at(mc.file)), mc.offset, mc.nbytes, mc.crc,
                        static_cast<int64_t>(c), {}};
    const uint64_t stream_begin = c * m.chunk_bytes;
    if (stream_begin < m.total_bytes) {
      uint64_t n = std::min<uint64_t>(mc.nbytes, m.total_bytes - stream_begin);  // skip tail padding
      t.pieces.push_back(ckptlab::ReadPiece{0, out.data() + stream_begin, n});
    }
    tasks.push_back(std::move(t));
  }
  return ckptlab::read_verified(tasks, 2, /*trace_records=*/true, 1, 0, nullptr);
}

std::string make_temp_dir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/ckptlab-selftest-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (!::mkdtemp(buf.data())) {
    std::perror("mkdtemp");
    std::exit(2);
  }
  return buf.data();
}

// A traced sleep is blocked time: little on a CPU, at least one voluntary context switch.
void test_sched_counters() {
  ckptlab::Tracer tracer(true, 16);
  ckptlab::TraceThread self(&tracer, "selftest", false);
  {
    ckptlab::ScopedPhase p(&tracer, self.ring(), ckptlab::Phase::kFsync, 1, 1, -1, 0, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto recs = tracer.drain();
  CHECK(recs.size() == 1, "one record, got %zu", recs.size());
  if (recs.size() != 1) return;
  const auto& r = recs[0];
  const int64_t dur = static_cast<int64_t>(r.t_end_ns - r.t_begin_ns);
  CHECK(r.run_ns >= 0 && r.run_ns < dur / 2, "sleep: run_ns=%lld of %lld", static_cast<long long>(r.run_ns),
        static_cast<long long>(dur));
  CHECK(r.ctx_vol >= 1, "sleep: ctx_vol=%d", r.ctx_vol);
  std::printf("sched counters: a 20 ms sleep ran %lld us on a CPU, waited %lld us for one, %d voluntary switches%s\n",
              static_cast<long long>(r.run_ns / 1000), static_cast<long long>(r.wait_ns / 1000), r.ctx_vol,
              r.wait_ns < 0 ? " (no schedstat here: wait not measured)" : "");
}

void remove_all(const std::string& dir) {
  for (const std::string& name : ckptlab::list_dir(dir)) {
    std::string path = ckptlab::join_path(dir, name);
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) remove_all(path);
    else ::unlink(path.c_str());
  }
  ::rmdir(dir.c_str());
}

void test_engine(const std::string& io_mode) {
  const std::string dir = make_temp_dir();
  constexpr uint64_t kChunk = 64 << 10;
  // Three segments with gaps (zero-filled in the stream) and a length that is no multiple of
  // 4096, so the last chunk is short and padded: 5 chunks over 2 shards.
  const uint64_t total = 4 * kChunk + 12345;
  std::vector<uint8_t> a(100000), b(149999), c(total - 260000);
  uint32_t s = 0xC0FFEEu;
  for (auto* v : {&a, &b, &c})
    for (auto& x : *v) x = static_cast<uint8_t>((s = s * 1103515245u + 12345u) >> 16);
  std::vector<uint8_t> expect(total, 0);
  std::memcpy(expect.data(), a.data(), a.size());
  std::memcpy(expect.data() + 110000, b.data(), b.size());
  std::memcpy(expect.data() + 260000, c.data(), c.size());
  std::vector<ckptlab::Segment> segs = {{a.data(), a.size(), 0}, {b.data(), b.size(), 110000},
                                        {c.data(), c.size(), 260000}};

  ckptlab::EngineOptions opt;
  opt.dir = dir;
  opt.writer_threads = 2;
  opt.max_inflight = 2;
  opt.chunk_bytes = kChunk;
  opt.staging_bytes = 3 * kChunk;  // fewer buffers than chunks: staging back-pressure
  opt.keep_last = 1;
  opt.io_mode = io_mode;
  opt.trace_records = true;
  std::string used_mode;
  try {
    ckptlab::Engine engine(opt);
    used_mode = engine.io_mode();
    engine.submit(10, "{\"selftest\":1}", segs, total, nullptr);
    engine.submit(20, "{\"selftest\":2}", segs, total, nullptr);
    CHECK(engine.wait_all(nullptr), "[%s] wait_all without a deadline returned false", io_mode.c_str());
    CHECK(engine.wait_all(nullptr, ckptlab::Engine::Clock::now()), "[%s] an idle engine's poll returned false",
          io_mode.c_str());
    auto failure = engine.take_failure();
    CHECK(!failure, "[%s] checkpoint failed: %s", io_mode.c_str(), failure ? failure->message.c_str() : "");
    CHECK(engine.last_committed_step() == 20, "[%s] last_committed_step=%lld", io_mode.c_str(),
          static_cast<long long>(engine.last_committed_step()));
    auto records = engine.commit_records();
    CHECK(records.size() == 2 && records[0].ok && records[1].ok, "[%s] commit records", io_mode.c_str());
    const auto trace = engine.tracer().drain();
    CHECK(!trace.empty(), "[%s] no timing records", io_mode.c_str());
    for (const auto& r : trace)
      CHECK(r.run_ns >= 0 && r.ctx_vol >= 0 && r.ctx_invol >= 0 &&
                r.run_ns + std::max<int64_t>(r.wait_ns, 0) <= static_cast<int64_t>(r.t_end_ns - r.t_begin_ns) + 20000,
            "[%s] %s record: run_ns=%lld wait_ns=%lld over %llu ns", io_mode.c_str(),
            ckptlab::phase_name(static_cast<ckptlab::Phase>(r.phase)), static_cast<long long>(r.run_ns),
            static_cast<long long>(r.wait_ns), static_cast<unsigned long long>(r.t_end_ns - r.t_begin_ns));
    engine.close();
  } catch (const std::exception& e) {
    CHECK(false, "[%s] engine threw: %s", io_mode.c_str(), e.what());
    remove_all(dir);
    return;
  }

  const std::string step10 = ckptlab::join_path(dir, "step_000000000010");
  const std::string step20 = ckptlab::join_path(dir, "step_000000000020");
  CHECK(!ckptlab::path_exists(step10), "[%s] keep_last=1 left step 10", io_mode.c_str());
  CHECK(ckptlab::path_exists(step20), "[%s] step 20 missing", io_mode.c_str());

  ParsedManifest m = parse_manifest(read_file(ckptlab::join_path(step20, ckptlab::kManifestName)));
  CHECK(m.ok && m.chunks.size() == 5 && m.files.size() == 2 && m.total_bytes == total && m.chunk_bytes == kChunk,
        "[%s] manifest: %zu chunks, %zu files, total %" PRIu64, io_mode.c_str(), m.chunks.size(), m.files.size(),
        m.total_bytes);
  if (!m.ok) {
    remove_all(dir);
    return;
  }
  // Every chunk's CRC recomputed from the file with the reference implementation.
  for (size_t i = 0; i < m.chunks.size(); ++i) {
    const auto& mc = m.chunks[i];
    std::string data = read_file(ckptlab::join_path(step20, m.files.at(mc.file)));
    CHECK(mc.offset + mc.nbytes <= data.size(), "[%s] chunk %zu outside its file", io_mode.c_str(), i);
    if (mc.offset + mc.nbytes <= data.size())
      CHECK(ref_crc32c(data.data() + mc.offset, mc.nbytes) == mc.crc, "[%s] chunk %zu CRC", io_mode.c_str(), i);
  }

  std::vector<uint8_t> out(total, 0xAB);
  ckptlab::ReadResult r = read_back(step20, m, out);
  CHECK(r.failures.empty(), "[%s] verified read: %zu failures, first: %s", io_mode.c_str(), r.failures.size(),
        r.failures.empty() ? "" : r.failures[0].detail.c_str());
  CHECK(out == expect, "[%s] bytes read back differ from the bytes saved", io_mode.c_str());
  CHECK(!r.records.empty(), "[%s] no read/verify timing records", io_mode.c_str());

  // Flip one byte of chunk 3 on disk: the verified read must report it and not copy it out.
  {
    const auto& mc = m.chunks[3];
    const std::string path = ckptlab::join_path(step20, m.files.at(mc.file));
    int fd = ::open(path.c_str(), O_RDWR);
    unsigned char byte = 0;
    const off_t at = static_cast<off_t>(mc.offset + 777);
    bool flipped = fd >= 0 && ::pread(fd, &byte, 1, at) == 1 && (byte ^= 0x40, ::pwrite(fd, &byte, 1, at) == 1);
    if (fd >= 0) ::close(fd);
    CHECK(flipped, "[%s] could not damage %s", io_mode.c_str(), path.c_str());
    std::vector<uint8_t> out2(total, 0);
    ckptlab::ReadResult r2 = read_back(step20, m, out2);
    CHECK(r2.failures.size() == 1 && r2.failures[0].chunk == 3 && r2.failures[0].kind == "checksum",
          "[%s] damaged chunk: %zu failures", io_mode.c_str(), r2.failures.size());
    CHECK(std::all_of(out2.begin() + 3 * kChunk, out2.begin() + 4 * kChunk, [](uint8_t x) { return x == 0; }),
          "[%s] a corrupt chunk reached the destination", io_mode.c_str());
  }
  std::printf("engine[%s -> %s]: 2 checkpoints of %" PRIu64 " bytes, %zu chunks on %zu files, read back and verified; "
              "1 flipped byte refused\n",
              io_mode.c_str(), used_mode.c_str(), total, m.chunks.size(), m.files.size());
  remove_all(dir);
}

// The engine of the fault-driven tests: 64 KiB chunks, two of them staged, no prefault.
ckptlab::EngineOptions small_engine(const std::string& dir, int writer_threads, const std::string& faults) {
  ckptlab::EngineOptions opt;
  opt.dir = dir;
  opt.writer_threads = writer_threads;
  opt.chunk_bytes = 64 << 10;
  opt.staging_bytes = 2 * opt.chunk_bytes;
  opt.prefault = false;
  opt.faults = faults;
  return opt;
}

// A checkpoint held 400 ms at a fault point: a 50 ms deadline passes with it pending, a wait
// without a deadline returns once it is committed.
void test_wait_deadline() {
  using Clock = ckptlab::Engine::Clock;
  const std::string dir = make_temp_dir();
  std::vector<uint8_t> data(100000, 0x5A);
  const ckptlab::EngineOptions opt = small_engine(dir, 1, "point=before_rename,action=delay=400");
  try {
    ckptlab::Engine engine(opt);
    engine.submit(1, "{}", {{data.data(), data.size(), 0}}, data.size(), nullptr);
    const Clock::time_point t0 = Clock::now();
    const bool early = engine.wait_all(nullptr, t0 + std::chrono::milliseconds(50));
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
    CHECK(!early, "wait_all(deadline 50 ms) returned true while a checkpoint was held at before_rename");
    CHECK(waited >= 45 && waited < 350, "wait_all(deadline 50 ms) returned after %lld ms", static_cast<long long>(waited));
    CHECK(engine.inflight() == 1, "inflight=%llu after the deadline", static_cast<unsigned long long>(engine.inflight()));
    CHECK(engine.wait_all(nullptr), "wait_all without a deadline returned false");
    CHECK(engine.last_committed_step() == 1 && !engine.take_failure(), "the held checkpoint did not commit");
    CHECK(engine.wait_all(nullptr, Clock::now() - std::chrono::seconds(1)), "a past deadline on an idle engine");
    engine.close();
    std::printf("wait_all: a 50 ms deadline returned false after %lld ms with a checkpoint held; "
                "without one it returned true once committed\n", static_cast<long long>(waited));
  } catch (const std::exception& e) {
    CHECK(false, "wait deadline: engine threw: %s", e.what());
  }
  remove_all(dir);
}

void test_preallocation() {
  using ckptlab::preallocation_unsupported;
  CHECK(preallocation_unsupported(EOPNOTSUPP) && preallocation_unsupported(ENOSYS) &&
            preallocation_unsupported(EINVAL),
        "EOPNOTSUPP, ENOSYS and EINVAL mean 'no preallocation here'");
  CHECK(!preallocation_unsupported(ENOSPC) && !preallocation_unsupported(EDQUOT) && !preallocation_unsupported(EIO) &&
            !preallocation_unsupported(0),
        "a full disk, a quota or an I/O error is a real failure");
  const std::string dir = make_temp_dir();
  const std::string path = dir + "/f";
  try {
    ckptlab::UniqueFd fd = ckptlab::create_file(path, false);
    const bool reserved = ckptlab::preallocate(fd.get(), 3 * 4096 + 17, path);
    CHECK(!reserved || ckptlab::file_size(path) == 3 * 4096 + 17, "preallocated size %" PRIu64,
          ckptlab::file_size(path));
    // A descriptor opened read-only: fallocate answers EBADF, a real error, which must throw.
    ckptlab::UniqueFd ro = ckptlab::open_readonly(path);
    bool threw = false;
    try {
      ckptlab::preallocate(ro.get(), 4096, path);
    } catch (const ckptlab::IoError& e) {
      threw = e.error() == EBADF;
    }
    CHECK(threw, "fallocate on a read-only descriptor (EBADF) did not throw IoError(EBADF)");
    std::printf("preallocate: %s here; EBADF throws\n", reserved ? "reserved" : "not supported");
  } catch (const std::exception& e) {
    CHECK(false, "preallocation: threw %s", e.what());
  }
  remove_all(dir);
}

// From the 3rd chunk write on (checkpoint 2 of two-chunk checkpoints) every write fails.
void test_dying_disk() {
  using Clock = ckptlab::Engine::Clock;
  bool refused = false;
  try {
    ckptlab::FaultInjector bad("point=before_rename,action=kill,mode=persist");
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused, "mode=persist with a kill action was accepted");
  const std::string dir = make_temp_dir();
  std::vector<uint8_t> data(100000, 0x3C);
  ckptlab::EngineOptions opt = small_engine(dir, 2, "point=before_chunk_write,hit=3,action=eio,mode=persist");
  opt.keep_last = 0;
  try {
    ckptlab::Engine engine(opt);
    for (int64_t step = 1; step <= 4; ++step) {
      engine.submit(step, "{}", {{data.data(), data.size(), 0}}, data.size(), nullptr);
      CHECK(engine.wait_all(nullptr, Clock::now() + std::chrono::seconds(30)), "step %lld: wait_all timed out",
            static_cast<long long>(step));
    }
    std::vector<int64_t> failed;
    while (auto f = engine.take_failure()) {
      CHECK(f->error == EIO, "step %lld failed with errno %d", static_cast<long long>(f->step), f->error);
      failed.push_back(f->step);
    }
    CHECK((failed == std::vector<int64_t>{2, 3, 4}), "%zu failures, not steps 2, 3, 4", failed.size());
    CHECK(engine.last_committed_step() == 1, "last committed step %lld", static_cast<long long>(engine.last_committed_step()));
    engine.close();
    std::vector<std::string> names = ckptlab::list_dir(dir);
    std::sort(names.begin(), names.end());
    CHECK((names == std::vector<std::string>{".ckptlab.lock", "step_000000000001"}), "%zu entries left", names.size());
    std::printf("dying disk: steps 2-4 failed with EIO, step 1 kept, close() returned\n");
  } catch (const std::exception& e) {
    CHECK(false, "dying disk: engine threw %s", e.what());
  }
  remove_all(dir);
}

// chunk_assignment "static": chunk i by writer i % 3, over two checkpoints of 11 chunks with
// two staging buffers (the stager waits for the writers that own the staged chunks).
void test_static_chunk_assignment() {
  const std::string dir = make_temp_dir();
  std::vector<uint8_t> data(11 * (64 << 10) - 100, 0x3C);
  ckptlab::EngineOptions opt = small_engine(dir, 3, "");
  opt.chunk_assignment = "static";
  opt.trace_records = true;
  try {
    ckptlab::Engine engine(opt);
    for (int64_t step : {1, 2}) engine.submit(step, "{}", {{data.data(), data.size(), 0}}, data.size(), nullptr);
    CHECK(engine.wait_all(nullptr) && engine.last_committed_step() == 2 && !engine.take_failure(),
          "static: the checkpoints did not commit");
    std::map<int32_t, std::string> names;
    for (const auto& [tid, name] : engine.tracer().thread_names()) names[tid] = name;
    int writes = 0, wrong = 0;
    for (const auto& r : engine.tracer().drain()) {
      if (static_cast<ckptlab::Phase>(r.phase) != ckptlab::Phase::kWrite) continue;
      ++writes;
      if (names[r.thread] != "ckptlab-writer-" + std::to_string(r.chunk % 3)) ++wrong;
    }
    CHECK(writes == 22 && wrong == 0, "static: %d writes, %d by another writer than chunk %% 3", writes, wrong);
    engine.close();
    std::printf("static chunk assignment: %d chunk writes, each by writer chunk %% 3\n", writes);
  } catch (const std::exception& e) {
    CHECK(false, "static chunk assignment: engine threw %s", e.what());
  }
  remove_all(dir);
  opt.chunk_assignment = "random";
  bool refused = false;
  try {
    ckptlab::Engine engine(opt);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused, "chunk_assignment 'random' was accepted");
}

// The engine's directory lock is re-taken when its file was unlinked between open and flock;
// same_file is what notices. Two engines on one directory still exclude each other.
void test_lock_file_identity() {
  const std::string dir = make_temp_dir();
  const std::string path = ckptlab::join_path(dir, ".ckptlab.lock");
  ckptlab::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  CHECK(fd.valid() && ckptlab::same_file(fd.get(), path), "a freshly opened lock file is not the file at its path");
  ::unlink(path.c_str());
  CHECK(!ckptlab::same_file(fd.get(), path), "an unlinked lock file still counts as the file at its path");
  ckptlab::UniqueFd other(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  CHECK(!ckptlab::same_file(fd.get(), path), "a replaced lock file still counts as the file at its path");
  CHECK(ckptlab::same_file(other.get(), path), "the new lock file is not the file at its path");
  ckptlab::EngineOptions opt;
  opt.dir = dir;
  opt.writer_threads = 1;
  opt.chunk_bytes = 64 << 10;
  opt.staging_bytes = 64 << 10;
  opt.prefault = false;
  {
    ckptlab::Engine first(opt);
    bool refused = false;
    try {
      ckptlab::Engine second(opt);
    } catch (const std::runtime_error&) {
      refused = true;
    }
    CHECK(refused, "a second engine opened a directory the first holds");
  }
  ckptlab::Engine again(opt);  // released on close
  CHECK(ckptlab::same_file(other.get(), path), "opening replaced a lock file it should have reused");
}

// Pages of [p, p + n) that are resident, by mincore(2) (p page-aligned).
size_t resident_pages(const char* p, size_t n) {
  const size_t page = ckptlab::page_size();
  std::vector<unsigned char> vec((n + page - 1) / page);
  if (::mincore(const_cast<char*>(p), n, vec.data()) != 0) return 0;
  size_t resident = 0;
  for (unsigned char v : vec) resident += v & 1;
  return resident;
}

void test_staging_prefault() {
  const size_t page = ckptlab::page_size();
  constexpr uint64_t kBuf = 1 << 20;
  constexpr size_t kBuffers = 48;
  {  // held buffers keep their bytes; every page ends resident; every buffer comes back
    ckptlab::StagingPool pool(kBuf, kBuffers, page, true);
    std::vector<int> held;
    for (int i = 0; i < 3; ++i) {
      held.push_back(pool.acquire(nullptr));
      std::memset(pool.data(held.back()), 0xA5, kBuf);
    }
    pool.wait_prefaulted();
    CHECK(pool.untouched_count() == 0, "%zu buffers untouched after the prefault", pool.untouched_count());
    size_t resident = resident_pages(pool.base(), pool.total_bytes());
    CHECK(resident == pool.total_bytes() / page, "%zu of %zu staging pages resident after the prefault", resident,
          static_cast<size_t>(pool.total_bytes() / page));
    for (int b : held) {
      const char* d = pool.data(b);
      bool intact = std::all_of(d, d + kBuf, [](char c) { return static_cast<unsigned char>(c) == 0xA5; });
      CHECK(intact, "the prefault wrote buffer %d while a save held it", b);
      pool.release(b);
    }
    CHECK(pool.free_count() == kBuffers, "%zu of %zu buffers free after the prefault", pool.free_count(), kBuffers);
    std::vector<int> all;
    for (size_t i = 0; i < kBuffers; ++i) all.push_back(pool.acquire(nullptr));
    std::sort(all.begin(), all.end());
    CHECK(std::unique(all.begin(), all.end()) == all.end() && all.front() == 0 &&
              all.back() == static_cast<int>(kBuffers) - 1,
          "acquiring every buffer after the prefault did not give each index once");
  }
  {  // without prefault nothing is touched until handed out
    ckptlab::StagingPool pool(kBuf, 4, page, false);
    pool.wait_prefaulted();
    CHECK(pool.untouched_count() == 4, "prefault=false touched %zu buffers", 4 - pool.untouched_count());
    pool.release(pool.acquire(nullptr));
    CHECK(pool.untouched_count() == 3, "a handed-out buffer still counts as untouched");
    for (int i = 0; i < 10; ++i) pool.release(pool.acquire(nullptr));  // one at a time: the same buffer
    CHECK(pool.touched_bytes() == kBuf, "acquire/release one at a time touched %" PRIu64 " B, not one buffer",
          pool.touched_bytes());
    int a = pool.acquire(nullptr), b = pool.acquire(nullptr);  // two in flight: one more buffer
    pool.release(a);
    pool.release(b);
    CHECK(pool.touched_bytes() == 2 * kBuf, "two buffers in flight touched %" PRIu64 " B", pool.touched_bytes());
  }
  auto t0 = std::chrono::steady_clock::now();
  { ckptlab::StagingPool pool(kBuf, 256, page, true); }  // destroyed at once: stops its prefault
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("staging prefault: %zu x %" PRIu64 " B touched in the background, held buffers kept; a 256 MiB pool "
              "destroyed at once took %.1f ms\n", kBuffers, kBuf, ms);
}

}  // namespace

int main() {
  utsname u{};
  ::uname(&u);
  std::printf("ckptlab engine selftest: built for %s, running on %s (page size %zu)\n",
#if defined(__x86_64__)
              "x86_64",
#elif defined(__aarch64__)
              "aarch64",
#else
              "other",
#endif
              u.machine, ckptlab::page_size());
  test_crc32c();
  test_sched_counters();
  test_engine("buffered");
  test_engine("auto");
  test_wait_deadline();
  test_preallocation();
  test_dying_disk();
  test_static_chunk_assignment();
  test_lock_file_identity();
  test_staging_prefault();
  if (g_failures) {
    std::printf("FAILED: %d of %ld checks\n", g_failures, g_checks);
    return 1;
  }
  std::printf("OK: %ld checks passed\n", g_checks);
  return 0;
}
