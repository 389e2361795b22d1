// Parallel, verified reads of checkpoint chunks for recovery and `ckptlab inspect --verify`.
// Each task reads one chunk into a thread-private aligned buffer, checks its CRC32C against
// the manifest, and only then copies its pieces to their destinations, so a corrupt chunk
// never lands in the caller's tensors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "staging_pool.hpp"
#include "trace.hpp"

namespace ckptlab {

struct ReadPiece {
  uint64_t chunk_offset;  // where the piece starts inside the chunk
  void* dst;
  uint64_t nbytes;
};

struct ReadTask {
  std::string path;
  uint64_t file_offset;
  uint64_t nbytes;
  uint32_t crc;
  int64_t chunk;
  std::vector<ReadPiece> pieces;
};

struct ReadFailure {
  int64_t chunk;
  std::string path;
  uint64_t offset;
  std::string kind;    // "truncated" | "checksum" | "io"
  std::string detail;
};

struct ReadResult {
  std::vector<ReadFailure> failures;
  std::vector<TraceRecord> records;
  std::vector<std::pair<int32_t, std::string>> thread_names;  // (tid, name) of the reader threads
  uint64_t bytes_read = 0;
};

// Runs the tasks on `threads` threads. The calling thread only waits (checking `interrupted`).
ReadResult read_verified(const std::vector<ReadTask>& tasks, int threads, bool trace_records,
                         uint64_t ckpt_id, int64_t step, const InterruptCheck& interrupted);

}  // namespace ckptlab
