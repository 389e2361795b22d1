#include "sched_stats.hpp"

#include <fcntl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>

namespace ckptlab {

SchedSample sched_delta(const SchedSample& a, const SchedSample& b) {
  auto d = [](int64_t x, int64_t y) { return (x < 0 || y < 0) ? int64_t{-1} : y - x; };
  return {d(a.run_ns, b.run_ns), d(a.wait_ns, b.wait_ns), d(a.ctx_vol, b.ctx_vol), d(a.ctx_invol, b.ctx_invol)};
}

ThreadSchedReader::ThreadSchedReader() : fd_(::open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC)) {}

SchedSample ThreadSchedReader::sample() const {
  SchedSample s;
  // On-CPU time from the thread's CPU clock: schedstat's first field is only brought up to
  // date at a tick or a context switch, so for a running thread it lags by up to a tick.
  timespec ts;
  if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
    s.run_ns = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  // Run-queue wait is added when the thread gets a CPU, so while it runs the value is current.
  if (fd_.get() >= 0) {
    char buf[96];
    const ssize_t n = ::pread(fd_.get(), buf, sizeof(buf) - 1, 0);
    if (n > 0) {
      buf[n] = '\0';
      char* end = nullptr;
      std::strtoll(buf, &end, 10);  // on-CPU ns (stale, see above)
      if (end != buf) {
        char* end2 = nullptr;
        const long long wait = std::strtoll(end, &end2, 10);
        if (end2 != end) s.wait_ns = wait;
      }
    }
  }
  rusage ru;
  if (::getrusage(RUSAGE_THREAD, &ru) == 0) {
    s.ctx_vol = ru.ru_nvcsw;
    s.ctx_invol = ru.ru_nivcsw;
  }
  return s;
}

}  // namespace ckptlab
