#include "staging_pool.hpp"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <pthread.h>
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
  for (size_t i = nbuffers; i-- > 0;) free_.push_back(static_cast<int>(i));  // 0 is handed out first
  touched_.assign(nbuffers, false);
  if (prefault) {
    prefault_done_ = false;
    prefaulter_ = std::thread([this] { prefault_free_buffers(); });
  }
}

StagingPool::~StagingPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  if (prefaulter_.joinable()) prefaulter_.join();
  std::free(base_);
}

int StagingPool::take_untouched() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return -1;
  // free_'s front is handed out last: touching from there meets the first save's fill
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (!touched_[static_cast<size_t>(*it)]) {
      int index = *it;
      free_.erase(it);
      touched_[static_cast<size_t>(index)] = true;
      return index;
    }
  }
  return -1;  // every untouched buffer is handed out: its user touches it
}

void StagingPool::prefault_free_buffers() {
  ::pthread_setname_np(::pthread_self(), "ckpt-prefault");
  for (int index = take_untouched(); index >= 0; index = take_untouched()) {
    std::memset(data(index), 0, buffer_bytes_);
    release(index);  // back at free_'s back: the next buffer handed out is a touched one
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    prefault_done_ = true;
  }
  prefault_cv_.notify_all();
}

void StagingPool::wait_prefaulted() {
  std::unique_lock<std::mutex> lock(mu_);
  prefault_cv_.wait(lock, [&] { return prefault_done_; });
}

size_t StagingPool::untouched_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (bool t : touched_) n += t ? 0 : 1;
  return n;
}

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
  touched_[static_cast<size_t>(i)] = true;
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
