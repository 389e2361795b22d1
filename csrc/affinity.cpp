#include "affinity.hpp"

#include <pthread.h>
#include <sched.h>

#include <cerrno>
#include <stdexcept>

namespace ckptlab {

std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> out;
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
