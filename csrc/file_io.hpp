// Thin, error-checked wrappers over the POSIX calls the commit protocol uses. Every failure
// becomes an IoError carrying the operation, the path and errno, so Python can raise an
// OSError that names both. 64-bit offsets throughout (off_t is 64-bit on every target).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ckptlab {

class IoLog;  // io_log.hpp; every mutating call below records itself there when given one

class IoError : public std::runtime_error {
 public:
  IoError(std::string op, std::string path, int err);
  const std::string& op() const { return op_; }
  const std::string& path() const { return path_; }
  int error() const { return err_; }

 private:
  std::string op_, path_;
  int err_;
};

// Owns a file descriptor; closes it once.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset();

 private:
  int fd_ = -1;
};

struct DirectIoSupport {
  bool supported = false;
  uint32_t mem_align = 4096;     // buffer address alignment
  uint32_t offset_align = 4096;  // file offset and length alignment
  std::string reason;            // why not supported, for the user
};

// Probes O_DIRECT in `dir` (statx STATX_DIOALIGN where the kernel has it, else a test write).
DirectIoSupport probe_direct_io(const std::string& dir, IoLog* log = nullptr);

size_t page_size();

// Open a new file for writing (O_CREAT|O_EXCL); O_DIRECT when `direct`.
UniqueFd create_file(const std::string& path, bool direct, IoLog* log = nullptr);
UniqueFd open_readonly(const std::string& path);
// Writes all bytes (loops on short writes and EINTR). `fail_after` >= 0 simulates a device
// that accepts that many bytes and then fails with `fail_errno` (fault injection).
void pwrite_all(int fd, const void* buf, uint64_t nbytes, uint64_t offset, const std::string& path,
                int64_t fail_after = -1, int fail_errno = 0, IoLog* log = nullptr);
// Reads up to nbytes; returns the count read (short only at end of file).
uint64_t pread_full(int fd, void* buf, uint64_t nbytes, uint64_t offset, const std::string& path);
void fdatasync_or_throw(int fd, const std::string& path, IoLog* log = nullptr);
// Reserves [0, nbytes) of the file with fallocate(2) (mode 0; retried on EINTR) so a full disk
// fails before anything is written. Returns false, doing nothing, where the file system cannot
// preallocate (EOPNOTSUPP, ENOSYS, EINVAL: FUSE, some NFS): unlike posix_fallocate, no
// emulation that writes a byte per 4 KiB block. Any other error (ENOSPC, EDQUOT, EIO, ...)
// throws. Logged with the errno fallocate returned.
bool preallocate(int fd, uint64_t nbytes, const std::string& path, IoLog* log = nullptr);
// The errnos with which fallocate(2) says "not on this file system" (not "no space").
bool preallocation_unsupported(int err);
void fsync_or_throw(int fd, const std::string& path, IoLog* log = nullptr);
void fsync_dir(const std::string& dir, IoLog* log = nullptr);
void rename_or_throw(const std::string& from, const std::string& to, IoLog* log = nullptr);
void mkdir_or_throw(const std::string& path, IoLog* log = nullptr);
bool path_exists(const std::string& path);
// Whether `fd` is still the file at `path` (same device and inode): a lock taken on a file
// that was unlinked after it was opened locks nothing.
bool same_file(int fd, const std::string& path);
uint64_t file_size(const std::string& path);
std::vector<std::string> list_dir(const std::string& dir);
// Removes a directory and the plain files in it; returns false (never throws) on failure.
bool remove_tree(const std::string& dir, IoLog* log = nullptr);
std::string join_path(const std::string& a, const std::string& b);
std::string parent_dir(const std::string& path);

}  // namespace ckptlab
