// Encodes a checkpoint manifest: a UTF-8 JSON body followed by a fixed 24-byte trailer
//   magic "CKLMAN01" | body length (u64 LE) | CRC32C of the body (u32 LE) | format version (u32 LE)
// The Python parser (core/manifest.py) is the reference for the format; docs/FORMAT.md
// describes both. The engine treats the caller's `meta` JSON as opaque.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ckptlab {

constexpr uint32_t kFormatVersion = 2;  // 2: storages written once, tensors as views (docs/FORMAT.md)
constexpr char kManifestMagic[9] = "CKLMAN01";
constexpr size_t kManifestTrailerBytes = 24;
constexpr const char* kManifestName = "MANIFEST";

struct ManifestChunk {
  uint32_t file;
  uint64_t offset;
  uint64_t nbytes;
  uint32_t crc;
};

struct ManifestInput {
  int64_t step;
  std::string writer;      // "pccheck"
  std::string io_mode;     // "direct" | "buffered"
  uint64_t chunk_bytes;
  uint64_t total_bytes;    // payload bytes (unpadded)
  uint64_t stream_bytes;   // padded to the I/O alignment
  std::vector<std::string> file_names;
  std::vector<uint64_t> file_sizes;
  std::vector<ManifestChunk> chunks;
  std::string meta_json;   // opaque JSON value from the caller
};

// `corrupt_checksum` writes a wrong CRC: a durability mutation for the fault campaign's teeth.
std::string encode_manifest(const ManifestInput& in, bool corrupt_checksum = false);
std::string manifest_trailer(const std::string& body, bool corrupt_checksum = false);

}  // namespace ckptlab
