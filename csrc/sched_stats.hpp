// Per-thread scheduler counters, sampled around each traced operation so the analysis can
// split an operation's wall time into on-CPU, waiting for a CPU (run queue) and blocked (I/O,
// locks): the blocked-time analysis of docs/BACKGROUND.md §3.2. Sources: the thread's CPU clock
// (CLOCK_THREAD_CPUTIME_ID, on-CPU ns), /proc/thread-self/schedstat (run-queue wait ns,
// CONFIG_SCHED_INFO) and getrusage(RUSAGE_THREAD) (voluntary / involuntary context switches).
#pragma once
#include <cstdint>

#include "file_io.hpp"

namespace ckptlab {

struct SchedSample {
  int64_t run_ns = -1;   // time on a CPU
  int64_t wait_ns = -1;  // time runnable but waiting for a CPU; -1 without schedstat
  int64_t ctx_vol = -1;  // context switches the thread asked for (blocking)
  int64_t ctx_invol = -1;  // context switches forced by the scheduler (preemption)
};

// Differences b - a, each -1 where either sample lacks it.
SchedSample sched_delta(const SchedSample& a, const SchedSample& b);

// Reads the counters of the thread that constructed it (the schedstat file is opened once,
// then re-read with pread: about a microsecond). Only that thread may call sample().
class ThreadSchedReader {
 public:
  ThreadSchedReader();
  SchedSample sample() const;
  bool has_schedstat() const { return fd_.get() >= 0; }

 private:
  UniqueFd fd_;
};

}  // namespace ckptlab
