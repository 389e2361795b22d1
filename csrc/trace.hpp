// Timing records and NVTX ranges for every engine phase.
//
// Each engine-owned thread gets a TraceRing: a preallocated single-producer/single-consumer
// ring of fixed-size records. The hot path writes one record with no lock and no allocation;
// drain() (the consumer, called from Python) copies records out. When a ring is full the
// record is dropped and counted. NVTX3 ranges (domain "ckptlab", one category per phase) are
// pushed and popped around the same scopes; they cost a function-pointer check when no tool
// (nsys, an injection library) is attached. The domain is process-wide (created once, never
// destroyed) so every Tracer, the engine's and each verified read's, shares one handle and one
// category table: category k+1 is phase k (docs/TRACE.md). Each range carries the phase, ids
// and bytes in its message and the byte count as its uint64 payload.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "sched_stats.hpp"

namespace ckptlab {

enum class Phase : uint16_t {
  kSnapshot = 0, kD2H, kStage, kWrite, kChecksum, kFsync, kManifest, kCommit, kGc, kRead,
  kVerify, kH2D, kCount
};
const char* phase_name(Phase p);

// The record layout as X(name, C++ type, numpy dtype), in trace-file column order
// (docs/TRACE.md; the file adds its run_id and thread_name columns). The one list of the
// columns: it declares TraceRecord's fields, the binding builds its numpy columns from it
// (bindings.cpp records_to_columns) and exports it as _engine.trace_columns(), which
// tests/csrc/test_trace_columns.py compares to the Python side's raw-column list.
// The order also packs the struct: 96 bytes, every field naturally aligned, 2 bytes of
// padding after `phase` (checked below).
#define CKPTLAB_TRACE_COLUMNS(X)                                                                \
  X(ckpt_id, uint64_t, "uint64")                                                                \
  X(step, int64_t, "int64")                                                                     \
  X(thread, int32_t, "int32")     /* OS thread id (gettid), as nsys shows it */                 \
  X(cpu_begin, int32_t, "int32")  /* sched_getcpu() at begin / end */                           \
  X(cpu_end, int32_t, "int32")                                                                  \
  X(phase, int16_t, "int16")      /* Phase code (trace files: int16 dictionary index) */        \
  X(chunk, int64_t, "int64")      /* -1 when the operation is not about one chunk */            \
  X(offset, uint64_t, "uint64")   /* file offset, or stream offset for stage */                 \
  X(nbytes, uint64_t, "uint64")                                                                 \
  X(t_begin_ns, uint64_t, "uint64") /* CLOCK_MONOTONIC */                                       \
  X(t_end_ns, uint64_t, "uint64")                                                               \
  /* Scheduler counters of `thread` over the operation (sched_stats.hpp); -1 = not measured. */ \
  X(run_ns, int64_t, "int64")     /* on a CPU */                                                \
  X(wait_ns, int64_t, "int64")    /* runnable, waiting for a CPU */                             \
  X(ctx_vol, int32_t, "int32")    /* voluntary context switches (blocked) */                    \
  X(ctx_invol, int32_t, "int32")  /* involuntary context switches (preempted) */

struct TraceRecord {
#define CKPTLAB_TRACE_FIELD(name, type, dtype) type name;
  CKPTLAB_TRACE_COLUMNS(CKPTLAB_TRACE_FIELD)
#undef CKPTLAB_TRACE_FIELD
};
static_assert(sizeof(TraceRecord) == 96 && alignof(TraceRecord) == 8,
              "TraceRecord: keep the column list packed (hot per-thread rings)");
static_assert(static_cast<int>(Phase::kCount) <= INT16_MAX, "phase codes must fit the int16 phase column");

// The numpy dtype each C++ column type must be spelled as (checked against the list above).
template <typename T> constexpr const char* trace_dtype_of() = delete;
template <> constexpr const char* trace_dtype_of<uint64_t>() { return "uint64"; }
template <> constexpr const char* trace_dtype_of<int64_t>() { return "int64"; }
template <> constexpr const char* trace_dtype_of<int32_t>() { return "int32"; }
template <> constexpr const char* trace_dtype_of<int16_t>() { return "int16"; }
constexpr bool trace_same_name(const char* a, const char* b) {
  return *a == *b && (*a == '\0' || trace_same_name(a + 1, b + 1));
}
#define CKPTLAB_TRACE_DTYPE_CHECK(name, type, dtype) \
  static_assert(trace_same_name(trace_dtype_of<type>(), dtype), "trace column " #name ": dtype is not its C++ type");
CKPTLAB_TRACE_COLUMNS(CKPTLAB_TRACE_DTYPE_CHECK)
#undef CKPTLAB_TRACE_DTYPE_CHECK

class TraceRing {
 public:
  explicit TraceRing(size_t capacity);
  void push(const TraceRecord& r);        // producer thread only
  size_t drain(std::vector<TraceRecord>& out);  // consumer only (serialized by Tracer)
  uint64_t dropped() const { return dropped_.load(std::memory_order_relaxed); }
  // The producer's scheduler counters; (re)bound by the thread that takes the ring.
  void bind_current_thread() { sched_ = std::make_unique<ThreadSchedReader>(); }
  const ThreadSchedReader* sched() const { return sched_.get(); }

 private:
  std::vector<TraceRecord> slots_;
  std::unique_ptr<ThreadSchedReader> sched_;
  std::atomic<uint64_t> head_{0};  // written by producer
  std::atomic<uint64_t> tail_{0};  // written by consumer
  std::atomic<uint64_t> dropped_{0};
};

uint64_t monotonic_ns();
int32_t current_tid();
int32_t current_cpu();

class Tracer {
 public:
  Tracer(bool records_enabled, size_t ring_capacity);
  ~Tracer();
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // Gives the calling thread a ring and returns its slot. With `name_os_thread` the thread is
  // also named for NVTX and the OS (threads the engine owns); a caller's thread (the training
  // thread calling submit) keeps its own name and is only listed under `name` here.
  int register_thread(const std::string& name, bool name_os_thread = true);
  void release_thread(int slot);  // the ring is kept for the next drain, then reused
  bool records_enabled() const { return records_enabled_; }
  TraceRing* ring(int slot);

  std::vector<TraceRecord> drain();
  uint64_t dropped() const;
  std::vector<std::pair<int32_t, std::string>> thread_names() const;

  void nvtx_push(Phase p, const char* message, uint64_t nbytes) const;
  void nvtx_pop() const;

 private:
  struct Slot {
    std::unique_ptr<TraceRing> ring;
    bool in_use = false;
  };
  bool records_enabled_;
  size_t ring_capacity_;
  mutable std::mutex mu_;
  std::vector<Slot> slots_;
  std::vector<std::pair<int32_t, std::string>> names_;
  std::mutex drain_mu_;
  void* domain_ = nullptr;  // nvtxDomainHandle_t, process-wide
};

// RAII phase: an NVTX range plus one timing record at scope exit.
class ScopedPhase {
 public:
  ScopedPhase(Tracer* tracer, TraceRing* ring, Phase phase, uint64_t ckpt_id, int64_t step, int64_t chunk,
              uint64_t offset, uint64_t nbytes);
  ~ScopedPhase();
  ScopedPhase(const ScopedPhase&) = delete;
  ScopedPhase& operator=(const ScopedPhase&) = delete;
  void set_nbytes(uint64_t n) { rec_.nbytes = n; }

 private:
  Tracer* tracer_;
  TraceRing* ring_;
  TraceRecord rec_;
  SchedSample sched0_;
};

// Registers the current thread with a Tracer for the lifetime of the object.
class TraceThread {
 public:
  TraceThread(Tracer* tracer, const std::string& name, bool name_os_thread = true)
      : tracer_(tracer), slot_(tracer->register_thread(name, name_os_thread)), ring_(tracer->ring(slot_)) {}
  ~TraceThread() { tracer_->release_thread(slot_); }
  TraceThread(const TraceThread&) = delete;
  TraceThread& operator=(const TraceThread&) = delete;
  int slot() const { return slot_; }
  TraceRing* ring() const { return ring_; }

 private:
  Tracer* tracer_;
  int slot_;
  TraceRing* ring_;
};

}  // namespace ckptlab
