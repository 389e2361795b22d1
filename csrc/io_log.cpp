#include "io_log.hpp"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <stdexcept>

#include "checksum.hpp"
#include "trace.hpp"

namespace ckptlab {
namespace {

constexpr const char* kIoOpNames[] = {
    "mkdir", "create", "open_create", "write", "fallocate", "fsync", "fdatasync",
    "fsync_dir", "rename", "unlink", "rmdir", "mark",
};
static_assert(sizeof(kIoOpNames) / sizeof(kIoOpNames[0]) == static_cast<size_t>(IoOp::kCount),
              "every I/O op needs a name");

std::string escape(const std::string& s) {
  if (s.empty()) return "-";
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\\': out += "\\\\"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

const char* io_op_name(IoOp op) { return kIoOpNames[static_cast<int>(op)]; }

IoOp io_op_from_name(const std::string& name) {
  for (int i = 0; i < static_cast<int>(IoOp::kCount); ++i)
    if (name == kIoOpNames[i]) return static_cast<IoOp>(i);
  throw std::invalid_argument("unknown I/O log operation '" + name + "'");
}

FaultEffect pass_fault_point(FaultInjector& faults, IoLog* log, FaultPoint p, uint64_t ckpt, int64_t step) {
  if (!log) return faults.hit(p, ckpt, step);
  const std::string where = std::string("point=") + fault_point_name(p) + " ckpt=" + std::to_string(ckpt) +
                            " step=" + std::to_string(step);
  log->mark("point", where);
  FaultEffect fe = faults.hit(p, ckpt, step);
  if (fe.error) log->mark("inject", where + " errno=" + std::to_string(fe.error) + (fe.short_write ? " short=1" : ""));
  return fe;
}

IoLog::IoLog(const std::string& path, bool record_data) : path_(path), record_data_(record_data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError("open I/O log", path, errno);
  fd_ = UniqueFd(fd);
}

void IoLog::op(IoOp op, const std::string& path, int err) { append(op, err, path, "", 0, 0, 0, nullptr); }

void IoLog::write(const std::string& path, uint64_t offset, const void* data, uint64_t nbytes, int err) {
  const uint32_t crc = nbytes ? crc32c(0, data, nbytes) : 0;
  append(IoOp::kWrite, err, path, "", offset, nbytes, crc, record_data_ && nbytes ? data : nullptr);
}

void IoLog::fallocate(const std::string& path, uint64_t offset, uint64_t nbytes, int err) {
  append(IoOp::kFallocate, err, path, "", offset, nbytes, 0, nullptr);
}

void IoLog::rename(const std::string& from, const std::string& to, int err) {
  append(IoOp::kRename, err, from, to, 0, 0, 0, nullptr);
}

void IoLog::mark(const std::string& kind, const std::string& detail) {
  append(IoOp::kMark, 0, kind, detail, 0, 0, 0, nullptr);
}

void IoLog::append(IoOp op, int err, const std::string& path, const std::string& path2, uint64_t offset,
                   uint64_t nbytes, uint32_t crc, const void* data) {
  const uint64_t t = monotonic_ns();
  const int32_t tid = current_tid();
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t seq = seq_.fetch_add(1, std::memory_order_relaxed);
  char nums[160];
  std::snprintf(nums, sizeof(nums), "%" PRIu64 "\t%" PRIu64 "\t%d\t%s\t%d\t", seq, t, static_cast<int>(tid),
                io_op_name(op), err);
  std::string header = nums;
  header += escape(path);
  header += '\t';
  header += escape(path2);
  std::snprintf(nums, sizeof(nums), "\t%" PRIu64 "\t%" PRIu64 "\t%08x\t%d\n", offset, nbytes, crc, data ? 1 : 0);
  header += nums;
  // One append per record (header and payload together), so records never interleave and a
  // kill leaves at most a torn last one. Best effort: a failing log never fails a checkpoint.
  iovec iov[2] = {{const_cast<char*>(header.data()), header.size()},
                  {const_cast<void*>(data), data ? static_cast<size_t>(nbytes) : 0}};
  size_t total = header.size() + (data ? static_cast<size_t>(nbytes) : 0);
  int iovcnt = data ? 2 : 1;
  size_t done = 0;
  while (done < total) {
    ssize_t n = ::writev(fd_.get(), iov, iovcnt);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    done += static_cast<size_t>(n);
    // Rare partial append (huge payload): advance the iovecs and continue.
    size_t k = static_cast<size_t>(n);
    for (int i = 0; i < iovcnt && k > 0; ++i) {
      size_t take = std::min(k, iov[i].iov_len);
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + take;
      iov[i].iov_len -= take;
      k -= take;
    }
  }
}

}  // namespace ckptlab
