#include "file_io.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "io_log.hpp"


namespace ckptlab {

IoError::IoError(std::string op, std::string path, int err)
    : std::runtime_error(op + " failed on '" + path + "': " + std::strerror(err) + " (errno " +
                         std::to_string(err) + ")"),
      op_(std::move(op)),
      path_(std::move(path)),
      err_(err) {}

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    reset();
    fd_ = o.release();
  }
  return *this;
}

void UniqueFd::reset() {
  if (fd_ >= 0) ::close(fd_);  // close() is not a durability point; its error is not used
  fd_ = -1;
}

size_t page_size() {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<size_t>(p) : 4096;
}

DirectIoSupport probe_direct_io(const std::string& dir, IoLog* log) {
  DirectIoSupport s;
  // statx(STATX_DIOALIGN) is missing from older glibc headers and answers for the directory,
  // not for a new file in it: one aligned O_DIRECT write of a probe file is what counts. We
  // align buffers to the page size and file offsets/lengths to 4 KiB (64 KiB chunks), which
  // covers every logical block size in use.
  std::string probe = join_path(dir, ".ckptlab-dio-probe-" + std::to_string(::getpid()));
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_DIRECT, 0600);
  if (fd < 0) {
    s.reason = std::string("O_DIRECT open refused: ") + std::strerror(errno);
    return s;
  }
  if (log) log->op(IoOp::kOpenCreate, probe, 0);
  size_t align = std::max<size_t>({static_cast<size_t>(s.offset_align), s.mem_align, page_size()});
  void* buf = nullptr;
  if (::posix_memalign(&buf, align, align) == 0) {
    std::memset(buf, 0, align);
    ssize_t n = ::pwrite(fd, buf, align, 0);
    if (log) log->write(probe, 0, buf, n > 0 ? static_cast<uint64_t>(n) : 0, n < 0 ? errno : 0);
    if (n == static_cast<ssize_t>(align)) {
      s.supported = true;
    } else {
      s.reason = std::string("O_DIRECT write refused: ") + (n < 0 ? std::strerror(errno) : "short");
    }
    std::free(buf);
  }
  ::close(fd);
  int rc = ::unlink(probe.c_str());
  if (log) log->op(IoOp::kUnlink, probe, rc == 0 ? 0 : errno);
  return s;
}

UniqueFd create_file(const std::string& path, bool direct, IoLog* log) {
  int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | (direct ? O_DIRECT : 0);
  int fd;
  do {
    fd = ::open(path.c_str(), flags, 0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw IoError("open", path, errno);
  if (log) log->op(IoOp::kCreate, path, 0);
  return UniqueFd(fd);
}

UniqueFd open_readonly(const std::string& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) throw IoError("open", path, errno);
  return UniqueFd(fd);
}

void pwrite_all(int fd, const void* buf, uint64_t nbytes, uint64_t offset, const std::string& path,
                int64_t fail_after, int fail_errno, IoLog* log) {
  const auto* p = static_cast<const char*>(buf);
  uint64_t done = 0;
  uint64_t limit = fail_after >= 0 ? std::min<uint64_t>(nbytes, static_cast<uint64_t>(fail_after)) : nbytes;
  while (done < limit) {
    ssize_t n = ::pwrite(fd, p + done, limit - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      if (log) log->write(path, offset + done, nullptr, 0, err);
      throw IoError("write", path, err);
    }
    if (log) log->write(path, offset + done, p + done, static_cast<uint64_t>(n), 0);
    if (n == 0) throw IoError("write", path, EIO);
    done += static_cast<uint64_t>(n);
  }
  if (done < nbytes) throw IoError("write", path, fail_errno ? fail_errno : EIO);
}

uint64_t pread_full(int fd, void* buf, uint64_t nbytes, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(buf);
  uint64_t done = 0;
  while (done < nbytes) {
    ssize_t n = ::pread(fd, p + done, nbytes - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw IoError("read", path, errno);
    }
    if (n == 0) break;
    done += static_cast<uint64_t>(n);
  }
  return done;
}

void fdatasync_or_throw(int fd, const std::string& path, IoLog* log) {
  // Never retried: after a failed fsync the kernel may have dropped the dirty pages.
  const int err = ::fdatasync(fd) != 0 ? errno : 0;
  if (log) log->op(IoOp::kFdatasync, path, err);
  if (err) throw IoError("fdatasync", path, err);
}

bool preallocation_unsupported(int err) {
  // EINVAL: the arguments are valid (offset 0, nbytes > 0), so it can only be a file system
  // that rejects the mode; ENOSYS: a kernel or a seccomp profile without the syscall.
  return err == EOPNOTSUPP || err == ENOSYS || err == EINVAL;
}

bool preallocate(int fd, uint64_t nbytes, const std::string& path, IoLog* log) {
  int err;
  do {
    err = ::fallocate(fd, 0, 0, static_cast<off_t>(nbytes)) != 0 ? errno : 0;
  } while (err == EINTR);
  if (log) log->fallocate(path, 0, nbytes, err);
  if (err == 0) return true;
  if (preallocation_unsupported(err)) return false;
  throw IoError("fallocate", path, err);
}

void fsync_or_throw(int fd, const std::string& path, IoLog* log) {
  const int err = ::fsync(fd) != 0 ? errno : 0;
  if (log) log->op(IoOp::kFsync, path, err);
  if (err) throw IoError("fsync", path, err);
}

void fsync_dir(const std::string& dir, IoLog* log) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw IoError("open directory", dir, errno);
  UniqueFd guard(fd);
  const int err = ::fsync(fd) != 0 ? errno : 0;
  if (log) log->op(IoOp::kFsyncDir, dir, err);
  if (err) throw IoError("fsync directory", dir, err);
}

void rename_or_throw(const std::string& from, const std::string& to, IoLog* log) {
  const int err = ::rename(from.c_str(), to.c_str()) != 0 ? errno : 0;
  if (log) log->rename(from, to, err);
  if (err) throw IoError("rename to '" + to + "'", from, err);
}

void mkdir_or_throw(const std::string& path, IoLog* log) {
  const int err = ::mkdir(path.c_str(), 0755) != 0 ? errno : 0;
  if (log) log->op(IoOp::kMkdir, path, err);
  if (err) throw IoError("mkdir", path, err);
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

bool same_file(int fd, const std::string& path) {
  struct stat at_path, own;
  if (::stat(path.c_str(), &at_path) != 0 || ::fstat(fd, &own) != 0) return false;
  return at_path.st_dev == own.st_dev && at_path.st_ino == own.st_ino;
}

uint64_t file_size(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) throw IoError("stat", path, errno);
  return static_cast<uint64_t>(st.st_size);
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) throw IoError("opendir", dir, errno);
  while (dirent* e = ::readdir(d.get())) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  return names;
}

bool remove_tree(const std::string& dir, IoLog* log) {
  bool ok = true;
  std::vector<std::string> names;
  try {
    names = list_dir(dir);
  } catch (const IoError&) {
    return false;
  }
  for (const auto& n : names) {
    const std::string path = join_path(dir, n);
    const int err = ::unlink(path.c_str()) != 0 ? errno : 0;
    if (log) log->op(IoOp::kUnlink, path, err);
    if (err && err != ENOENT) ok = false;
  }
  const int err = ::rmdir(dir.c_str()) != 0 ? errno : 0;
  if (log) log->op(IoOp::kRmdir, dir, err);
  if (err && err != ENOENT) ok = false;
  return ok;
}

std::string join_path(const std::string& a, const std::string& b) {
  if (a.empty()) return b;
  return a.back() == '/' ? a + b : a + "/" + b;
}

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace ckptlab
