#include "reader.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "checksum.hpp"
#include "file_io.hpp"

namespace ckptlab {

ReadResult read_verified(const std::vector<ReadTask>& tasks, int threads, bool trace_records, uint64_t ckpt_id,
                         int64_t step, const InterruptCheck& interrupted) {
  ReadResult result;
  Tracer tracer(trace_records, tasks.size() * 2 + 16);
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bytes{0};
  std::atomic<int> running{0};
  std::mutex failures_mu;
  std::mutex done_mu;
  std::condition_variable done_cv;
  auto worker_done = [&] {
    std::lock_guard<std::mutex> lock(done_mu);
    if (--running == 0) done_cv.notify_all();
  };
  uint64_t max_len = 0;
  for (const auto& t : tasks) max_len = std::max(max_len, t.nbytes);
  const size_t align = std::max<size_t>(page_size(), 4096);

  auto worker = [&](int index) {
    TraceThread self(&tracer, "ckptlab-reader-" + std::to_string(index));
    void* raw = nullptr;
    if (::posix_memalign(&raw, align, std::max<uint64_t>(max_len, align)) != 0) {
      std::lock_guard<std::mutex> lock(failures_mu);
      result.failures.push_back(ReadFailure{-1, "", 0, "io", "out of memory for the read buffer"});
      stop = true;
      worker_done();
      return;
    }
    std::unique_ptr<char, decltype(&std::free)> buf(static_cast<char*>(raw), &std::free);
    std::map<std::string, UniqueFd> fds;
    for (;;) {
      if (stop.load(std::memory_order_relaxed)) break;
      size_t i = next.fetch_add(1);
      if (i >= tasks.size()) break;
      const ReadTask& t = tasks[i];
      std::string failure_kind, detail;
      try {
        auto it = fds.find(t.path);
        if (it == fds.end()) it = fds.emplace(t.path, open_readonly(t.path)).first;
        uint64_t got;
        {
          ScopedPhase p(&tracer, self.ring(), Phase::kRead, ckpt_id, step, t.chunk, t.file_offset, t.nbytes);
          got = pread_full(it->second.get(), buf.get(), t.nbytes, t.file_offset, t.path);
        }
        bytes += got;
        if (got < t.nbytes) {
          failure_kind = "truncated";
          detail = "file ends after " + std::to_string(t.file_offset + got) + " bytes; chunk needs " +
                   std::to_string(t.file_offset + t.nbytes);
        } else {
          ScopedPhase p(&tracer, self.ring(), Phase::kVerify, ckpt_id, step, t.chunk, t.file_offset, t.nbytes);
          uint32_t crc = crc32c(0, buf.get(), t.nbytes);
          if (crc != t.crc) {
            failure_kind = "checksum";
            detail = "CRC32C " + std::to_string(crc) + " != manifest " + std::to_string(t.crc);
          } else {
            for (const ReadPiece& pc : t.pieces) std::memcpy(pc.dst, buf.get() + pc.chunk_offset, pc.nbytes);
          }
        }
      } catch (const IoError& e) {
        failure_kind = "io";
        detail = e.what();
      }
      if (!failure_kind.empty()) {
        std::lock_guard<std::mutex> lock(failures_mu);
        result.failures.push_back(ReadFailure{t.chunk, t.path, t.file_offset, failure_kind, detail});
      }
    }
    worker_done();
  };

  const int n = std::max(1, std::min<int>(threads, static_cast<int>(tasks.size())));
  std::vector<std::thread> pool;
  running = n;
  for (int i = 0; i < n; ++i) pool.emplace_back(worker, i);
  bool was_interrupted = false;
  {
    std::unique_lock<std::mutex> lock(done_mu);
    while (running.load() > 0) {
      done_cv.wait_for(lock, std::chrono::milliseconds(100));
      if (running.load() > 0 && !was_interrupted && interrupted) {
        lock.unlock();
        if (interrupted()) {
          was_interrupted = true;
          stop = true;
        }
        lock.lock();
      }
    }
  }
  for (auto& t : pool) t.join();
  if (was_interrupted) throw Interrupted();
  result.bytes_read = bytes.load();
  result.records = tracer.drain();
  result.thread_names = tracer.thread_names();
  return result;
}

}  // namespace ckptlab
