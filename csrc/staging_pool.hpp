// A bounded pool of aligned host buffers, allocated once and reused by every checkpoint.
// It is what keeps host memory bounded: a save that finds no free buffer waits for a writer
// thread to return one (back-pressure), it never allocates.
//
// Buffers are handed out last-in first-out: a save whose writers keep up reuses the few
// buffers in flight, and the rest of the pool is never touched (never resident).
//
// Prefault (optional, off by default): the pool's first touch of fresh memory costs the kernel
// (and on a VM the host) a page fault per 4 KiB page, 0.5-3.4 s per GiB measured on the 2-core
// VM. A background thread can touch the free buffers from the engine's opening, one at a time
// while it holds them (never a buffer a save or a writer holds), from the last to be handed
// out towards the first; a save that gets a buffer before it is touched pays its faults in
// its own fill. It makes the whole pool resident, and its CPU time competes with training.
#pragma once
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
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
  // Blocks until the background prefault has finished (at once without one); for tests and
  // measurements, nothing needs it to be correct.
  void wait_prefaulted();
  // Buffers neither prefaulted nor handed out yet.
  size_t untouched_count() const;
  // Bytes of the buffers prefaulted or handed out at least once: the pool's resident share
  // (without prefault, the most buffers in flight at once; see the top of this file).
  uint64_t touched_bytes() const { return (nbuffers_ - untouched_count()) * buffer_bytes_; }
  char* base() const { return base_; }
  uint64_t total_bytes() const { return buffer_bytes_ * nbuffers_; }

 private:
  uint64_t buffer_bytes_;
  size_t nbuffers_;
  char* base_ = nullptr;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<int> free_;
  std::vector<bool> touched_;  // prefaulted or handed out once (its user wrote it)
  bool stop_ = false;          // the destructor asks the prefault thread to stop
  bool prefault_done_ = true;
  std::condition_variable prefault_cv_;
  std::thread prefaulter_;     // last member: it starts once everything above is set

  void prefault_free_buffers();
  int take_untouched();  // a free untouched buffer (removed from the free list), or -1
};

}  // namespace ckptlab
