// CPU placement of engine threads: pin the writer threads to a set of CPUs (e.g. cores kept
// free of training threads and NVMe interrupts, docs/BACKGROUND.md §3). The set is checked
// against the CPUs this process may use before any thread starts, so a bad set is an error at
// construction, not a silently unpinned thread.
#pragma once
#include <string>
#include <vector>

namespace ckptlab {

// CPUs a thread of this process may be pinned to (its cpuset), ascending. This can be more
// than the calling thread's own affinity: a training thread pinned to its cores may still put
// the writers on others.
std::vector<int> allowed_cpus();
// "0-3,6" for {0,1,2,3,6}.
std::string cpu_list(const std::vector<int>& cpus);
// Throws std::invalid_argument naming the CPUs of `cpus` no thread of this process may use.
void check_cpus_allowed(const std::vector<int>& cpus, const std::string& what);
// Restricts the calling thread to `cpus`; false (errno set) if the kernel refused.
bool pin_current_thread(const std::vector<int>& cpus);

}  // namespace ckptlab
