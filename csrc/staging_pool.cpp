#include "staging_pool.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace ckptlab {

StagingPool::StagingPool(uint64_t buffer_bytes, size_t nbuffers, size_t alignment, bool prefault)
    : buffer_bytes_(buffer_bytes), nbuffers_(nbuffers) {
  if (nbuffers == 0 || buffer_bytes == 0) throw std::invalid_argument("staging pool needs >= 1 buffer");
  void* p = nullptr;
  if (::posix_memalign(&p, alignment, buffer_bytes * nbuffers) != 0)
    throw std::bad_alloc();
  base_ = static_cast<char*>(p);
  // Touch every page now so the first checkpoint's stall does not pay for page faults.
  if (prefault) std::memset(base_, 0, buffer_bytes * nbuffers);
  for (size_t i = nbuffers; i-- > 0;) free_.push_back(static_cast<int>(i));
}

StagingPool::~StagingPool() { std::free(base_); }

int StagingPool::acquire(const InterruptCheck& interrupted) {
  std::unique_lock<std::mutex> lock(mu_);
  while (free_.empty()) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (free_.empty() && interrupted) {
      lock.unlock();
      bool stop = interrupted();
      lock.lock();
      if (stop) return -1;
    }
  }
  int i = free_.back();
  free_.pop_back();
  return i;
}

void StagingPool::release(int index) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(index);
  }
  cv_.notify_one();
}

size_t StagingPool::free_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return free_.size();
}

}  // namespace ckptlab
