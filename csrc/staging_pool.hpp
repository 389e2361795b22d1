// A bounded pool of aligned host buffers, allocated once and reused by every checkpoint.
// It is what keeps host memory bounded: a save that finds no free buffer waits for a writer
// thread to return one (back-pressure), it never allocates.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <vector>

namespace ckptlab {

// Returns true when the wait must stop (e.g. Python has a pending KeyboardInterrupt).
using InterruptCheck = std::function<bool()>;

// Thrown when an InterruptCheck said stop; the binding turns it into the Python exception.
struct Interrupted : std::exception {
  const char* what() const noexcept override { return "interrupted"; }
};

class StagingPool {
 public:
  StagingPool(uint64_t buffer_bytes, size_t nbuffers, size_t alignment, bool prefault);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // Blocks until a buffer is free; returns its index, or -1 if `interrupted` said stop.
  int acquire(const InterruptCheck& interrupted);
  void release(int index);
  char* data(int index) const { return base_ + static_cast<uint64_t>(index) * buffer_bytes_; }
  uint64_t buffer_bytes() const { return buffer_bytes_; }
  size_t size() const { return nbuffers_; }
  size_t free_count() const;
  char* base() const { return base_; }
  uint64_t total_bytes() const { return buffer_bytes_ * nbuffers_; }

 private:
  uint64_t buffer_bytes_;
  size_t nbuffers_;
  char* base_ = nullptr;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> free_;
};

}  // namespace ckptlab
