#include "trace.hpp"

#include <nvtx3/nvToolsExt.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>

namespace ckptlab {
namespace {
constexpr const char* kPhaseNames[] = {"snapshot", "d2h",    "stage",  "write", "checksum", "fsync",
                                       "manifest", "commit", "gc",     "read",  "verify",   "h2d"};
static_assert(sizeof(kPhaseNames) / sizeof(kPhaseNames[0]) == static_cast<size_t>(Phase::kCount),
              "every phase needs a name");

// One colour per phase so nsys timelines are readable at a glance.
constexpr uint32_t kPhaseColors[] = {0xFF4C72B0, 0xFFDD8452, 0xFF55A868, 0xFFC44E52,
                                     0xFF8172B3, 0xFF937860, 0xFFDA8BC3, 0xFF8C8C8C,
                                     0xFFCCB974, 0xFF64B5CD, 0xFF2CA02C, 0xFFD62728};
// The "ckptlab" domain, created and its categories named on first use; never destroyed
// (a tool may hand every module the same handle for one name).
nvtxDomainHandle_t ckptlab_domain() {
  static const nvtxDomainHandle_t domain = [] {
    nvtxDomainHandle_t d = nvtxDomainCreateA("ckptlab");
    for (int i = 0; i < static_cast<int>(Phase::kCount); ++i)
      nvtxDomainNameCategoryA(d, static_cast<uint32_t>(i + 1), kPhaseNames[i]);
    return d;
  }();
  return domain;
}
}  // namespace

const char* phase_name(Phase p) { return kPhaseNames[static_cast<int>(p)]; }

uint64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

int32_t current_tid() { return static_cast<int32_t>(::syscall(SYS_gettid)); }

int32_t current_cpu() { return static_cast<int32_t>(::sched_getcpu()); }

TraceRing::TraceRing(size_t capacity) : slots_(capacity > 0 ? capacity : 1) {}

void TraceRing::push(const TraceRecord& r) {
  const uint64_t head = head_.load(std::memory_order_relaxed);
  const uint64_t tail = tail_.load(std::memory_order_acquire);
  if (head - tail >= slots_.size()) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  slots_[head % slots_.size()] = r;
  head_.store(head + 1, std::memory_order_release);
}

size_t TraceRing::drain(std::vector<TraceRecord>& out) {
  const uint64_t tail = tail_.load(std::memory_order_relaxed);
  const uint64_t head = head_.load(std::memory_order_acquire);
  for (uint64_t i = tail; i < head; ++i) out.push_back(slots_[i % slots_.size()]);
  tail_.store(head, std::memory_order_release);
  return static_cast<size_t>(head - tail);
}

Tracer::Tracer(bool records_enabled, size_t ring_capacity)
    : records_enabled_(records_enabled), ring_capacity_(ring_capacity) {
  domain_ = ckptlab_domain();
}

Tracer::~Tracer() = default;

int Tracer::register_thread(const std::string& name, bool name_os_thread) {
  int32_t tid = current_tid();
  if (name_os_thread) {
    nvtxNameOsThreadA(static_cast<uint32_t>(tid), name.c_str());
    ::pthread_setname_np(::pthread_self(), name.substr(0, 15).c_str());
  }
  std::lock_guard<std::mutex> lock(mu_);
  names_.emplace_back(tid, name);
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i].in_use) {
      slots_[i].in_use = true;
      if (records_enabled_) slots_[i].ring->bind_current_thread();
      return static_cast<int>(i);
    }
  }
  Slot s;
  s.ring = std::make_unique<TraceRing>(records_enabled_ ? ring_capacity_ : 1);
  if (records_enabled_) s.ring->bind_current_thread();
  s.in_use = true;
  slots_.push_back(std::move(s));
  return static_cast<int>(slots_.size() - 1);
}

void Tracer::release_thread(int slot) {
  std::lock_guard<std::mutex> lock(mu_);
  slots_[static_cast<size_t>(slot)].in_use = false;
}

TraceRing* Tracer::ring(int slot) {
  std::lock_guard<std::mutex> lock(mu_);
  return slots_[static_cast<size_t>(slot)].ring.get();
}

std::vector<TraceRecord> Tracer::drain() {
  std::lock_guard<std::mutex> drain_lock(drain_mu_);
  std::vector<TraceRing*> rings;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& s : slots_) rings.push_back(s.ring.get());
  }
  std::vector<TraceRecord> out;
  for (TraceRing* r : rings) r->drain(out);
  return out;
}

uint64_t Tracer::dropped() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& s : slots_) n += s.ring->dropped();
  return n;
}

std::vector<std::pair<int32_t, std::string>> Tracer::thread_names() const {
  std::lock_guard<std::mutex> lock(mu_);
  return names_;
}

void Tracer::nvtx_push(Phase p, const char* message, uint64_t nbytes) const {
  nvtxEventAttributes_t a = {};
  a.version = NVTX_VERSION;
  a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  a.category = static_cast<uint32_t>(p) + 1;
  a.colorType = NVTX_COLOR_ARGB;
  a.color = kPhaseColors[static_cast<int>(p)];
  a.messageType = NVTX_MESSAGE_TYPE_ASCII;
  a.message.ascii = message;
  a.payloadType = NVTX_PAYLOAD_TYPE_UNSIGNED_INT64;
  a.payload.ullValue = nbytes;
  nvtxDomainRangePushEx(static_cast<nvtxDomainHandle_t>(domain_), &a);
}

void Tracer::nvtx_pop() const { nvtxDomainRangePop(static_cast<nvtxDomainHandle_t>(domain_)); }

ScopedPhase::ScopedPhase(Tracer* tracer, TraceRing* ring, Phase phase, uint64_t ckpt_id, int64_t step,
                         int64_t chunk, uint64_t offset, uint64_t nbytes)
    : tracer_(tracer), ring_(nullptr), rec_{} {
  if (!tracer_) return;
  char msg[160];
  std::snprintf(msg, sizeof(msg), "%s ckpt=%llu step=%lld chunk=%lld bytes=%llu", phase_name(phase),
                static_cast<unsigned long long>(ckpt_id), static_cast<long long>(step),
                static_cast<long long>(chunk), static_cast<unsigned long long>(nbytes));
  tracer_->nvtx_push(phase, msg, nbytes);
  if (!tracer_->records_enabled()) return;
  ring_ = ring;
  rec_.ckpt_id = ckpt_id;
  rec_.step = step;
  rec_.chunk = chunk;
  rec_.offset = offset;
  rec_.nbytes = nbytes;
  rec_.phase = static_cast<int16_t>(phase);
  rec_.thread = current_tid();
  rec_.cpu_begin = current_cpu();
  rec_.t_begin_ns = monotonic_ns();
  // Sampled inside [t_begin, t_end], so run + wait never exceed the operation's duration.
  if (const ThreadSchedReader* sched = ring_ ? ring_->sched() : nullptr) sched0_ = sched->sample();
}

ScopedPhase::~ScopedPhase() {
  if (!tracer_) return;
  if (ring_) {
    SchedSample d;
    if (const ThreadSchedReader* sched = ring_->sched()) d = sched_delta(sched0_, sched->sample());
    rec_.run_ns = d.run_ns;
    rec_.wait_ns = d.wait_ns;
    rec_.ctx_vol = static_cast<int32_t>(d.ctx_vol);
    rec_.ctx_invol = static_cast<int32_t>(d.ctx_invol);
    rec_.t_end_ns = monotonic_ns();
    rec_.cpu_end = current_cpu();
    ring_->push(rec_);
  }
  tracer_->nvtx_pop();
}

}  // namespace ckptlab
