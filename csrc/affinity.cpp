#include "affinity.hpp"

#include <pthread.h>
#include <sched.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <thread>

namespace ckptlab {

std::vector<int> allowed_cpus() {
  // The kernel accepts a CPU for a thread when the process's cpuset has it, whatever the
  // calling thread's own affinity (taskset, a pinned training thread). So ask it: a scratch
  // thread pins itself to each CPU in turn, and exits.
  std::vector<int> out;
  const long configured = std::min<long>(::sysconf(_SC_NPROCESSORS_CONF), CPU_SETSIZE);
  try {
    std::thread probe([&out, configured] {
      for (int c = 0; c < configured; ++c) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (::pthread_setaffinity_np(::pthread_self(), sizeof(one), &one) == 0) out.push_back(c);
      }
    });
    probe.join();
  } catch (const std::system_error&) {
    out.clear();
  }
  if (!out.empty()) return out;
  cpu_set_t set;  // no thread to spare: this thread's affinity is the best answer left
  CPU_ZERO(&set);
  if (::sched_getaffinity(0, sizeof(set), &set) != 0) return out;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

std::string cpu_list(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(cpus[i]);
    if (j > i) out += "-" + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

void check_cpus_allowed(const std::vector<int>& cpus, const std::string& what) {
  const std::vector<int> allowed = allowed_cpus();
  std::vector<int> refused;
  for (int c : cpus) {
    bool ok = false;
    for (int a : allowed) ok = ok || a == c;
    if (!ok) refused.push_back(c);
  }
  if (!refused.empty())
    throw std::invalid_argument(what + ": CPU " + cpu_list(refused) + " not available to this process (it may use " +
                                cpu_list(allowed) + ")");
}

bool pin_current_thread(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) {
    if (c < 0 || c >= CPU_SETSIZE) {
      errno = EINVAL;
      return false;
    }
    CPU_SET(c, &set);
  }
  int rc = ::pthread_setaffinity_np(::pthread_self(), sizeof(set), &set);
  if (rc != 0) errno = rc;
  return rc == 0;
}

}  // namespace ckptlab
