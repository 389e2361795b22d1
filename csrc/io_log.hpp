// Recording of the engine's file-system operations, for power-loss simulation without root
// (ALICE / SQLite crash-VFS style; docs/BACKGROUND.md §2, docs/FAULTS.md).
//
// The Python writers (core/writer_io.py) record through the same class, bound as
// ckptlab._engine.IoLog, so one format serves both.
//
// When EngineOptions::io_log names a file, every mutating operation the engine performs —
// mkdir, file create, each pwrite (offset, length, CRC32C and optionally the bytes), fallocate,
// fsync, fdatasync, directory fsync, rename, unlink, rmdir — is appended to it after it
// returns, together with markers (engine start, checkpoint submitted, fault point passed,
// error injected, checkpoint acknowledged). The replayer (faults/replay.py) rebuilds from it
// the crash states a Linux file system may leave after a power cut at any point.
//
// Order: a record is appended by the thread that did the operation, right after it returned
// and before that thread does anything else, so the log order is consistent with the
// happens-before order of the engine's threads. Each record is one append (one write(2) on
// an O_APPEND descriptor) so a SIGKILL leaves at most a torn last record, which the parser
// drops. With no log configured the engine holds a null IoLog* and pays one branch per call.
//
// Record: a text header line of tab-separated fields
//   seq  t_ns  tid  op  errno  path  path2  offset  nbytes  crc32c  has_data
// ('\t', '\n' and '\\' in paths escaped as \t, \n, \\; '-' for an empty field), followed by
// `nbytes` raw bytes when has_data is 1 (writes, when data recording is on).
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "fault.hpp"
#include "file_io.hpp"

namespace ckptlab {

enum class IoOp : int {
  kMkdir = 0,
  kCreate,      // open(O_CREAT|O_EXCL): a new file
  kOpenCreate,  // open(O_CREAT) of a file that may exist (the lock file)
  kWrite,
  kFallocate,   // fallocate(2), mode 0: the file grows to offset+nbytes; with an errno (refused) nothing changed
  kFsync,
  kFdatasync,
  kFsyncDir,
  kRename,
  kUnlink,
  kRmdir,
  kMark,        // not an operation: path = marker kind, path2 = "key=value ..." detail
  kCount
};

const char* io_op_name(IoOp op);
// The operation called `name` (io_op_name's inverse); std::invalid_argument if there is none.
IoOp io_op_from_name(const std::string& name);

class IoLog {
 public:
  // Opens (creates, appends to) `path`; throws IoError if it cannot. With `record_data` the
  // bytes of every write are stored after its header (for small test states only).
  IoLog(const std::string& path, bool record_data);
  IoLog(const IoLog&) = delete;
  IoLog& operator=(const IoLog&) = delete;

  // An operation on one path (mkdir, create, fsync, fdatasync, fsync_dir, unlink, rmdir).
  void op(IoOp op, const std::string& path, int err);
  // A pwrite that returned `nbytes` (err 0) or failed (err != 0, nbytes 0).
  void write(const std::string& path, uint64_t offset, const void* data, uint64_t nbytes, int err);
  void fallocate(const std::string& path, uint64_t offset, uint64_t nbytes, int err);
  void rename(const std::string& from, const std::string& to, int err);
  void mark(const std::string& kind, const std::string& detail);

  const std::string& path() const { return path_; }
  uint64_t records() const { return seq_.load(std::memory_order_relaxed); }

 private:
  void append(IoOp op, int err, const std::string& path, const std::string& path2, uint64_t offset,
              uint64_t nbytes, uint32_t crc, const void* data);

  std::string path_;
  UniqueFd fd_;
  bool record_data_;
  std::mutex mu_;  // one record at a time: seq order == file order
  std::atomic<uint64_t> seq_{0};
};

// Passes fault point `p` of checkpoint `ckpt` (step `step`): with a log, a "point" marker is
// appended before the point acts (so a kill leaves it as its thread's last record) and an
// "inject" marker when it returns an error. The engine and the Python writers (through the
// bindings) both pass their points here, so their logs carry the same markers.
FaultEffect pass_fault_point(FaultInjector& faults, IoLog* log, FaultPoint p, uint64_t ckpt, int64_t step);

}  // namespace ckptlab
