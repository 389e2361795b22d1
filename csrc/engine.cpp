#include "engine.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "affinity.hpp"
#include "checksum.hpp"
#include "manifest_writer.hpp"

namespace ckptlab {
namespace {

struct DurabilityMutation {
  const char* name;
  bool EngineOptions::*flag;
};
constexpr DurabilityMutation kDurabilityMutations[] = {
    {"skip_data_fsync", &EngineOptions::unsafe_skip_data_fsync},
    {"skip_dir_fsync", &EngineOptions::unsafe_skip_dir_fsync},
    {"corrupt_manifest_checksum", &EngineOptions::unsafe_corrupt_manifest_checksum},
    {"unordered_commit", &EngineOptions::unsafe_unordered_commit},
    {"ignore_seal", &EngineOptions::unsafe_ignore_seal},
};

constexpr uint64_t kIoAlign = 4096;         // file offsets and lengths (tail padded to this)
constexpr uint64_t kChunkGranule = 64 << 10; // chunk sizes are multiples of 64 KiB

uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

std::string step_name(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "step_%012lld", static_cast<long long>(step));
  return buf;
}

// Parses "step_<digits>" (a committed checkpoint's directory name) whose value fits an
// int64; -1 otherwise. core/commit.py parse_step_dir reads names the same way.
int64_t parse_step_name(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "step_") != 0) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    const int64_t d = name[i] - '0';
    if (v > (std::numeric_limits<int64_t>::max() - d) / 10) return -1;
    v = v * 10 + d;
  }
  return v;
}

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

}  // namespace

Engine::Engine(EngineOptions options)
    : opt_(std::move(options)), faults_(opt_.faults), tracer_(opt_.trace_records, opt_.trace_capacity) {
  if (opt_.dir.empty()) throw std::invalid_argument("checkpoint directory is empty");
  if (opt_.writer_threads < 1) throw std::invalid_argument("writer_threads must be >= 1");
  if (opt_.max_inflight < 1) throw std::invalid_argument("max_inflight must be >= 1");
  if (opt_.chunk_bytes == 0 || opt_.chunk_bytes % kChunkGranule != 0)
    throw std::invalid_argument("chunk_bytes must be a positive multiple of 65536");
  if (opt_.staging_bytes < opt_.chunk_bytes)
    throw std::invalid_argument("staging_bytes must hold at least one chunk");
  if (opt_.shards <= 0) opt_.shards = opt_.writer_threads;
  if (opt_.chunk_assignment != "queue" && opt_.chunk_assignment != "static")
    throw std::invalid_argument("chunk_assignment must be 'queue' or 'static', not '" + opt_.chunk_assignment + "'");
  static_chunks_ = opt_.chunk_assignment == "static";
  write_queues_.resize(static_chunks_ ? opt_.writer_threads : 1);
  if (!is_dir(opt_.dir)) throw IoError("open checkpoint directory", opt_.dir, ENOTDIR);
  if (!opt_.io_log.empty()) {
    io_log_ = std::make_unique<IoLog>(opt_.io_log, opt_.io_log_data);
    io_log_->mark("start", "pid=" + std::to_string(::getpid()) + " dir=" + opt_.dir);
  }

  // One writer per directory: a second process would race on names and retention. A holder
  // that made the lock file may unlink it as it lets go (as core/commit.py DirectoryLock
  // allows), so after flock the file must still be the one at the path; else take it again.
  std::string lock_path = join_path(opt_.dir, ".ckptlab.lock");
  constexpr int kLockAttempts = 5;
  for (int attempt = 0; attempt < kLockAttempts && !lock_fd_.valid(); ++attempt) {
    int lfd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0) throw IoError("open lock file", lock_path, errno);
    if (io_log_) io_log_->op(IoOp::kOpenCreate, lock_path, 0);
    UniqueFd candidate(lfd);
    if (::flock(lfd, LOCK_EX | LOCK_NB) != 0)
      throw std::runtime_error("another ckptlab checkpointer is writing to '" + opt_.dir +
                               "' (it holds " + lock_path + "); use a different directory or close it first");
    if (same_file(lfd, lock_path)) lock_fd_ = std::move(candidate);
  }
  if (!lock_fd_.valid())
    throw std::runtime_error("the lock file " + lock_path + " was replaced " + std::to_string(kLockAttempts) +
                             " times while taking it; is another process removing it?");

  if (opt_.io_mode == "buffered") {
    direct_ = false;
  } else if (opt_.io_mode == "direct" || opt_.io_mode == "auto") {
    DirectIoSupport dio = probe_direct_io(opt_.dir, io_log_.get());
    direct_ = dio.supported;
    direct_io_note_ = dio.reason;
    if (!dio.supported && opt_.io_mode == "direct")
      throw std::invalid_argument("io_mode='direct' but this filesystem refuses O_DIRECT in '" + opt_.dir +
                                  "': " + dio.reason + " (use io_mode='auto' or 'buffered')");
  } else {
    throw std::invalid_argument("io_mode must be 'auto', 'direct' or 'buffered', not '" + opt_.io_mode + "'");
  }
  io_mode_ = direct_ ? "direct" : "buffered";

  recover_directory();

  size_t align = std::max<size_t>(page_size(), kIoAlign);
  pool_ = std::make_unique<StagingPool>(opt_.chunk_bytes, opt_.staging_bytes / opt_.chunk_bytes, align,
                                        opt_.prefault);
  if (!opt_.writer_cpus.empty()) check_cpus_allowed(opt_.writer_cpus, "writer_cpus");
  for (int i = 0; i < opt_.writer_threads; ++i) writers_.emplace_back([this, i] { writer_main(i); });
  committer_ = std::thread([this] { committer_main(); });
}

std::vector<std::string> durability_mutation_names() {
  std::vector<std::string> names;
  for (const auto& m : kDurabilityMutations) names.emplace_back(m.name);
  return names;
}

void set_durability_mutation(EngineOptions& options, const std::string& name) {
  for (const auto& m : kDurabilityMutations) {
    if (name == m.name) {
      options.*m.flag = true;
      return;
    }
  }
  throw std::invalid_argument("unknown durability mutation '" + name + "'");
}

Engine::~Engine() { close(); }

void Engine::recover_directory() {
  // Leftovers of a crash: temp dirs never committed, deletions or replacements half done.
  // A ".replaced" dir whose step_N is missing holds the only copy of step N: put it back.
  for (const std::string& name : list_dir(opt_.dir)) {
    if (name.size() < 2 || name[0] != '.' || name.compare(1, 5, "step_") != 0) continue;
    std::string path = join_path(opt_.dir, name);
    size_t dot = name.find('.', 1);
    if (dot == std::string::npos) continue;
    std::string base = name.substr(1, dot - 1);
    std::string kind = name.substr(dot + 1);
    if (kind.rfind("replaced-", 0) == 0 && !path_exists(join_path(opt_.dir, base))) {
      rename_or_throw(path, join_path(opt_.dir, base), io_log_.get());
    } else if (kind.rfind("tmp-", 0) == 0 || kind.rfind("deleting-", 0) == 0 ||
               kind.rfind("replaced-", 0) == 0) {
      remove_tree(path, io_log_.get());
    }
  }
  fsync_dir(opt_.dir, io_log_.get());
}

void Engine::close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  std::vector<uint64_t> open;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, ck] : streams_) open.push_back(id);
  }
  for (uint64_t id : open) abort(id, "the checkpointer was closed while this checkpoint was being filled");
  wait_all(nullptr);
  {
    std::lock_guard<std::mutex> lock(wq_mu_);
    writers_stop_ = true;
  }
  wq_cv_.notify_all();
  for (auto& t : writers_) t.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (committer_.joinable()) committer_.join();
  if (io_log_) io_log_->mark("close", "pid=" + std::to_string(::getpid()));
  lock_fd_.reset();  // another checkpointer may write here now
}

TraceRing* Engine::caller_ring(const char* name) {
  std::lock_guard<std::mutex> lock(rings_mu_);
  int32_t tid = current_tid();
  auto it = submit_threads_.find(tid);
  if (it == submit_threads_.end())
    it = submit_threads_.emplace(tid, std::make_unique<TraceThread>(&tracer_, name, /*name_os_thread=*/false)).first;
  return it->second->ring();
}

void Engine::admit(int64_t step, const InterruptCheck& interrupted) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) throw std::runtime_error("checkpointer is closed");
    if (step <= last_submitted_step_)
      throw std::invalid_argument("step " + std::to_string(step) + " must be greater than the last saved step " +
                                  std::to_string(last_submitted_step_));
  }
  // Back-pressure: at most max_inflight checkpoints between submit and acknowledgement.
  std::unique_lock<std::mutex> lock(mu_);
  while (pending_.size() >= static_cast<size_t>(opt_.max_inflight)) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (pending_.size() >= static_cast<size_t>(opt_.max_inflight) && interrupted) {
      lock.unlock();
      if (interrupted()) throw Interrupted();
      lock.lock();
    }
  }
}

uint64_t Engine::submit(int64_t step, const std::string& meta_json, const std::vector<Segment>& segments,
                        uint64_t total_bytes, const InterruptCheck& interrupted) {
  std::lock_guard<std::mutex> submit_lock(submit_mu_);
  const uint64_t t_submit = monotonic_ns();
  uint64_t expect = 0;
  for (const Segment& s : segments) {
    if (s.stream_offset < expect || s.stream_offset + s.nbytes > total_bytes)
      throw std::invalid_argument("segments must be sorted, disjoint and inside total_bytes");
    expect = s.stream_offset + s.nbytes;
  }
  TraceRing* ring = caller_ring("ckptlab-save");
  ScopedPhase snapshot(&tracer_, ring, Phase::kSnapshot, next_id_ + 1, step, -1, 0, total_bytes);
  admit(step, interrupted);
  std::shared_ptr<Checkpoint> ck = begin_checkpoint(step, meta_json, total_bytes);
  ck->t_submit_ns = t_submit;
  stage_chunks(ck, segments, interrupted, ring);
  ck->t_staged_ns = monotonic_ns();
  return ck->id;
}

uint64_t Engine::open_stream(int64_t step, const std::string& meta_json, uint64_t total_bytes,
                             const InterruptCheck& interrupted) {
  std::lock_guard<std::mutex> submit_lock(submit_mu_);
  const uint64_t t_submit = monotonic_ns();
  admit(step, interrupted);
  std::shared_ptr<Checkpoint> ck = begin_checkpoint(step, meta_json, total_bytes, /*sealed=*/false);
  ck->t_submit_ns = t_submit;
  return ck->id;
}

std::shared_ptr<Engine::Checkpoint> Engine::open_stream_checkpoint(uint64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(id);
  if (it == streams_.end())
    throw std::invalid_argument("checkpoint " + std::to_string(id) + " is not an open stream (sealed, aborted or "
                                "never opened)");
  return it->second;
}

StreamChunk Engine::acquire_chunk(uint64_t id, const InterruptCheck& interrupted) {
  std::shared_ptr<Checkpoint> ck = open_stream_checkpoint(id);
  uint32_t c;
  {
    std::lock_guard<std::mutex> lock(ck->stream_mu);
    if (ck->next_chunk >= ck->nchunks)
      throw std::invalid_argument("checkpoint " + std::to_string(id) + " has no chunk left to fill (" +
                                  std::to_string(ck->nchunks) + " chunks)");
    c = ck->next_chunk;
  }
  int buf = pool_->acquire(interrupted);  // back-pressure: a writer returns a buffer
  if (buf < 0) throw Interrupted();
  {
    std::lock_guard<std::mutex> lock(ck->stream_mu);
    ck->held[c] = buf;
    ck->stage_begin_ns[c] = monotonic_ns();
    ck->next_chunk = c + 1;
  }
  return StreamChunk{c, pool_->data(buf), static_cast<uint64_t>(c) * opt_.chunk_bytes, ck->chunk_len[c]};
}

void Engine::queue_chunk(uint64_t id, uint32_t chunk) {
  std::shared_ptr<Checkpoint> ck = open_stream_checkpoint(id);
  int buf;
  {
    std::lock_guard<std::mutex> lock(ck->stream_mu);
    if (chunk >= ck->nchunks || ck->held[chunk] < 0)
      throw std::invalid_argument("chunk " + std::to_string(chunk) + " of checkpoint " + std::to_string(id) +
                                  " was not handed out, or was queued already");
    buf = ck->held[chunk];
    ck->held[chunk] = -1;
  }
  if (tracer_.records_enabled()) {  // the chunk's fill, from hand-out to here (the caller's copy)
    TraceRecord r{};
    r.ckpt_id = ck->id;
    r.step = ck->step;
    r.thread = current_tid();
    r.cpu_begin = r.cpu_end = current_cpu();
    r.phase = static_cast<int16_t>(Phase::kStage);
    r.chunk = chunk;
    r.offset = static_cast<uint64_t>(chunk) * opt_.chunk_bytes;
    r.nbytes = ck->chunk_len[chunk];
    r.t_begin_ns = ck->stage_begin_ns[chunk];
    r.t_end_ns = monotonic_ns();
    r.run_ns = r.wait_ns = -1;  // the fill ran in the caller, between calls: not measured
    r.ctx_vol = r.ctx_invol = -1;
    caller_ring("ckptlab-stream")->push(r);  // the thread that fills streams (core/snapshot.py)
  }
  queue_write(ck, chunk, buf);
}

void Engine::seal(uint64_t id) {
  std::shared_ptr<Checkpoint> ck = open_stream_checkpoint(id);
  {
    std::lock_guard<std::mutex> lock(ck->stream_mu);
    bool all_queued = ck->next_chunk == ck->nchunks;
    for (int b : ck->held) all_queued = all_queued && b < 0;
    if (!all_queued)
      throw std::invalid_argument("checkpoint " + std::to_string(id) + " cannot be sealed before every chunk is "
                                  "queued");
  }
  end_stream(*ck, /*aborted=*/false);
}

void Engine::end_stream(Checkpoint& ck, bool aborted) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ck.aborted = aborted;
    ck.sealed = true;
    ck.t_staged_ns = monotonic_ns();
    streams_.erase(ck.id);
  }
  cv_.notify_all();  // the committer may take it now
}

void Engine::abort(uint64_t id, const std::string& reason) {
  std::shared_ptr<Checkpoint> ck = open_stream_checkpoint(id);
  fail(*ck, "snapshot", ck->tmp_path, 0, reason);
  std::vector<uint32_t> unqueued;
  {
    std::lock_guard<std::mutex> lock(ck->stream_mu);
    for (uint32_t c = 0; c < ck->nchunks; ++c) {
      if (c >= ck->next_chunk) {
        unqueued.push_back(c);
      } else if (ck->held[c] >= 0) {
        pool_->release(ck->held[c]);
        ck->held[c] = -1;
        unqueued.push_back(c);
      }
    }
    ck->next_chunk = ck->nchunks;
  }
  TraceRing* ring = nullptr;  // finish_chunk records no phase for a failed checkpoint
  for (uint32_t c : unqueued) finish_chunk(ck, c, ring);
  end_stream(*ck, /*aborted=*/true);
}

void Engine::queue_write(const std::shared_ptr<Checkpoint>& ck, uint32_t chunk, int buffer) {
  {
    std::lock_guard<std::mutex> lock(wq_mu_);
    write_queues_[static_chunks_ ? chunk % write_queues_.size() : 0].push_back(WriteTask{ck, chunk, buffer});
  }
  // A fixed share has one writer that may take it: wake them all, it is among them.
  if (static_chunks_) wq_cv_.notify_all();
  else wq_cv_.notify_one();
}

std::shared_ptr<Engine::Checkpoint> Engine::begin_checkpoint(int64_t step, const std::string& meta_json,
                                                             uint64_t total_bytes, bool sealed) {
  auto ck = std::make_shared<Checkpoint>();
  ck->sealed = sealed;
  ck->step = step;
  ck->meta_json = meta_json;
  ck->total_bytes = total_bytes;
  ck->stream_bytes = round_up(std::max<uint64_t>(total_bytes, 1), kIoAlign);
  ck->nchunks = static_cast<uint32_t>((ck->stream_bytes + opt_.chunk_bytes - 1) / opt_.chunk_bytes);
  ck->crcs.assign(ck->nchunks, 0);
  ck->chunk_len.resize(ck->nchunks);
  for (uint32_t c = 0; c < ck->nchunks; ++c)
    ck->chunk_len[c] = std::min<uint64_t>(opt_.chunk_bytes, ck->stream_bytes - c * opt_.chunk_bytes);

  uint64_t id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = ++next_id_;
  }
  ck->id = id;
  const std::string name = step_name(step);
  ck->final_path = join_path(opt_.dir, name);
  ck->tmp_path = join_path(opt_.dir, "." + name + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(id));

  const uint32_t nshards = std::min<uint32_t>(static_cast<uint32_t>(opt_.shards), ck->nchunks);
  try {
    if (io_log_)
      io_log_->mark("submit", "ckpt=" + std::to_string(id) + " step=" + std::to_string(step) + " tmp=" + ck->tmp_path);
    mkdir_or_throw(ck->tmp_path, io_log_.get());
    for (uint32_t s = 0; s < nshards; ++s) {
      auto sh = std::make_unique<Shard>();
      char fname[32];
      std::snprintf(fname, sizeof(fname), "data_%03u.bin", s);
      sh->name = fname;
      sh->path = join_path(ck->tmp_path, fname);
      sh->fd = create_file(sh->path, direct_, io_log_.get());
      ck->shards.push_back(std::move(sh));
    }
    for (uint32_t c = 0; c < ck->nchunks; ++c) {
      Shard& sh = *ck->shards[c % nshards];
      sh.nbytes += ck->chunk_len[c];
      sh.remaining.fetch_add(1, std::memory_order_relaxed);
    }
    // Reserve the space now: a full disk fails here, before anything is staged. Where the
    // file system cannot (FUSE, some NFS) the first refusal turns it off for this engine:
    // chunk writes then allocate, and a full disk fails them instead.
    if (!preallocation_refused_.load(std::memory_order_relaxed))
      for (auto& sh : ck->shards)
        if (!preallocate(sh->fd.get(), sh->nbytes, sh->path, io_log_.get())) {
          preallocation_refused_.store(true, std::memory_order_relaxed);
          break;
        }
  } catch (...) {
    ck->shards.clear();
    remove_tree(ck->tmp_path, io_log_.get());
    throw;
  }
  ck->shards_left.store(nshards, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_submitted_step_ = step;
    pending_.push_back(ck);
    if (!sealed) {
      ck->held.assign(ck->nchunks, -1);
      ck->stage_begin_ns.assign(ck->nchunks, 0);
      streams_.emplace(id, ck);
    }
  }
  return ck;
}

void Engine::stage_chunks(const std::shared_ptr<Checkpoint>& ck, const std::vector<Segment>& segments,
                          const InterruptCheck& interrupted, TraceRing* ring) {
  size_t seg = 0;
  for (uint32_t c = 0; c < ck->nchunks; ++c) {
    int buf = pool_->acquire(interrupted);
    if (buf < 0) {
      fail(*ck, "save", ck->tmp_path, EINTR, "interrupted while staging");
      for (uint32_t rest = c; rest < ck->nchunks; ++rest) finish_chunk(ck, rest, ring);
      throw Interrupted();
    }
    const uint64_t begin = static_cast<uint64_t>(c) * opt_.chunk_bytes;
    const uint64_t len = ck->chunk_len[c];
    {
      ScopedPhase stage(&tracer_, ring, Phase::kStage, ck->id, ck->step, c, begin, len);
      char* dst = pool_->data(buf);
      uint64_t pos = begin;  // next stream byte to fill
      while (seg < segments.size() && segments[seg].stream_offset + segments[seg].nbytes <= begin) ++seg;
      for (size_t s = seg; s < segments.size() && segments[s].stream_offset < begin + len; ++s) {
        const Segment& sg = segments[s];
        uint64_t from = std::max(sg.stream_offset, begin);
        uint64_t to = std::min(sg.stream_offset + sg.nbytes, begin + len);
        if (from > pos) std::memset(dst + (pos - begin), 0, from - pos);
        std::memcpy(dst + (from - begin), static_cast<const char*>(sg.ptr) + (from - sg.stream_offset), to - from);
        pos = to;
      }
      if (pos < begin + len) std::memset(dst + (pos - begin), 0, begin + len - pos);
    }
    queue_write(ck, c, buf);
  }
}

void Engine::writer_main(int index) {
  if (!opt_.writer_cpus.empty() && !pin_current_thread(opt_.writer_cpus)) pin_failures_.fetch_add(1);
  TraceThread self(&tracer_, "ckptlab-writer-" + std::to_string(index));
  std::deque<WriteTask>& queue = write_queues_[static_chunks_ ? index : 0];
  for (;;) {
    WriteTask task;
    {
      std::unique_lock<std::mutex> lock(wq_mu_);
      wq_cv_.wait(lock, [&] { return writers_stop_ || !queue.empty(); });
      if (queue.empty()) return;  // stopping and drained
      task = std::move(queue.front());
      queue.pop_front();
    }
    if (!task.ckpt->failed.load(std::memory_order_acquire)) write_chunk(task, self.ring());
    pool_->release(task.buffer);
    finish_chunk(task.ckpt, task.chunk, self.ring());
  }
}

void Engine::write_chunk(const WriteTask& t, TraceRing* ring) {
  Checkpoint& ck = *t.ckpt;
  Shard& sh = *ck.shards[t.chunk % ck.shards.size()];
  const uint64_t len = ck.chunk_len[t.chunk];
  const uint64_t offset = static_cast<uint64_t>(t.chunk / ck.shards.size()) * opt_.chunk_bytes;
  const char* data = pool_->data(t.buffer);
  try {
    {
      ScopedPhase p(&tracer_, ring, Phase::kChecksum, ck.id, ck.step, t.chunk, offset, len);
      ck.crcs[t.chunk] = crc32c(0, data, len);
    }
    {
      // The point fires inside the write record: a delay there is time in the write, as a slow
      // device's would be (off CPU, not runnable), and an injected error is the write's.
      ScopedPhase p(&tracer_, ring, Phase::kWrite, ck.id, ck.step, t.chunk, offset, len);
      FaultEffect fe = fault(FaultPoint::kBeforeChunkWrite, ck);
      if (fe.error && !fe.short_write) throw IoError("write", sh.path, fe.error);
      // A short write accepts an aligned prefix, then fails like a device that filled up.
      const int64_t accept = fe.short_write ? static_cast<int64_t>(len / 2 / kIoAlign * kIoAlign) : -1;
      pwrite_all(sh.fd.get(), data, len, offset, sh.path, accept, fe.error, io_log_.get());
    }
    fault(FaultPoint::kAfterChunkWrite, ck);
  } catch (const IoError& e) {
    fail(ck, e.op(), e.path(), e.error(), e.what());
  }
}

void Engine::finish_chunk(const std::shared_ptr<Checkpoint>& ck, uint32_t chunk, TraceRing* ring) {
  Shard& sh = *ck->shards[chunk % ck->shards.size()];
  if (sh.remaining.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  // This thread wrote the file's last chunk: make the file durable from the fd that wrote it.
  if (!ck->failed.load(std::memory_order_acquire)) {
    try {
      ScopedPhase p(&tracer_, ring, Phase::kFsync, ck->id, ck->step, -1, 0, sh.nbytes);
      FaultEffect fe = fault(FaultPoint::kBeforeDataFsync, *ck);  // inside the record, as before_chunk_write
      if (fe.error) throw IoError("fdatasync", sh.path, fe.error);
      if (!opt_.unsafe_skip_data_fsync) fdatasync_or_throw(sh.fd.get(), sh.path, io_log_.get());
    } catch (const IoError& e) {
      fail(*ck, e.op(), e.path(), e.error(), e.what());
    }
    if (!ck->failed.load(std::memory_order_acquire)) fault(FaultPoint::kAfterDataFsync, *ck);
  }
  sh.fd.reset();
  if (ck->shards_left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ck->data_done = true;
    }
    cv_.notify_all();
  }
}

void Engine::fail(Checkpoint& ck, const std::string& op, const std::string& path, int err, const std::string& msg) {
  std::lock_guard<std::mutex> lock(ck.failure_mu);
  if (!ck.failure) ck.failure = CheckpointFailure{ck.id, ck.step, op, path, err, msg};
  ck.failed.store(true, std::memory_order_release);
}

void Engine::committer_main() {
  TraceThread self(&tracer_, "ckptlab-commit");
  for (;;) {
    std::shared_ptr<Checkpoint> ck;
    {
      std::unique_lock<std::mutex> lock(mu_);
      for (;;) {
        if (!pending_.empty()) {
          if (opt_.unsafe_unordered_commit) {
            auto it = std::find_if(pending_.begin(), pending_.end(), [this](const auto& c) { return committable(*c); });
            if (it != pending_.end()) ck = *it;
          } else if (committable(*pending_.front())) {
            ck = pending_.front();
          }
        }
        if (ck || (stopping_ && pending_.empty())) break;
        cv_.wait(lock);
      }
    }
    if (!ck) return;

    bool ok = false;
    if (!ck->failed.load(std::memory_order_acquire)) {
      try {
        commit(*ck, self.ring());
        ok = true;
      } catch (const IoError& e) {
        fail(*ck, e.op(), e.path(), e.error(), e.what());
      }
    }
    if (!ok) {
      ck->shards.clear();
      remove_tree(ck->tmp_path, io_log_.get());
      if (io_log_) io_log_->mark("fail", "ckpt=" + std::to_string(ck->id) + " step=" + std::to_string(ck->step));
    } else {
      fault(FaultPoint::kAfterCommit, *ck);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The acknowledgement point: the marker precedes the moment any thread can see it.
      if (ok && io_log_)
        io_log_->mark("ack", "ckpt=" + std::to_string(ck->id) + " step=" + std::to_string(ck->step));
      if (ok) last_committed_step_ = std::max(last_committed_step_, ck->step);
      records_.push_back(CommitRecord{ck->id, ck->step, ck->total_bytes, ck->t_submit_ns, ck->t_staged_ns,
                                      monotonic_ns(), ok, ok ? ck->final_path : ck->tmp_path});
      if (!ok && ck->failure && !ck->aborted) failures_.push_back(*ck->failure);
      pending_.erase(std::find(pending_.begin(), pending_.end(), ck));
    }
    cv_.notify_all();  // acknowledged: wait() returns and a new save may start; gc is not on that path
    if (ok) {
      try {
        retain(*ck, self.ring());
      } catch (const IoError&) {
        // Retention is best effort: a failed cleanup never affects the committed checkpoint.
      }
    }
  }
}

void Engine::commit(Checkpoint& ck, TraceRing* ring) {
  ManifestInput mi;
  mi.step = ck.step;
  mi.writer = "pccheck";
  mi.io_mode = io_mode_;
  mi.chunk_bytes = opt_.chunk_bytes;
  mi.total_bytes = ck.total_bytes;
  mi.stream_bytes = ck.stream_bytes;
  for (const auto& sh : ck.shards) {
    mi.file_names.push_back(sh->name);
    mi.file_sizes.push_back(sh->nbytes);
  }
  const uint32_t nshards = static_cast<uint32_t>(ck.shards.size());
  for (uint32_t c = 0; c < ck.nchunks; ++c)
    mi.chunks.push_back(ManifestChunk{c % nshards, static_cast<uint64_t>(c / nshards) * opt_.chunk_bytes,
                                      ck.chunk_len[c], ck.crcs[c]});
  mi.meta_json = ck.meta_json;
  const std::string manifest_path = join_path(ck.tmp_path, kManifestName);
  {
    ScopedPhase p(&tracer_, ring, Phase::kManifest, ck.id, ck.step, -1, 0, 0);
    const std::string bytes = encode_manifest(mi, opt_.unsafe_corrupt_manifest_checksum);
    p.set_nbytes(bytes.size());
    FaultEffect fe = fault(FaultPoint::kBeforeManifest, ck);
    if (fe.error) throw IoError("write", manifest_path, fe.error);
    UniqueFd fd = create_file(manifest_path, false, io_log_.get());
    pwrite_all(fd.get(), bytes.data(), bytes.size(), 0, manifest_path, -1, 0, io_log_.get());
    fe = fault(FaultPoint::kBeforeManifestFsync, ck);
    if (fe.error) throw IoError("fsync", manifest_path, fe.error);
    fsync_or_throw(fd.get(), manifest_path, io_log_.get());
  }
  ScopedPhase p(&tracer_, ring, Phase::kCommit, ck.id, ck.step, -1, 0, ck.total_bytes);
  FaultEffect fe = fault(FaultPoint::kBeforeTmpdirFsync, ck);
  if (fe.error) throw IoError("fsync directory", ck.tmp_path, fe.error);
  if (!opt_.unsafe_skip_dir_fsync) fsync_dir(ck.tmp_path, io_log_.get());
  fe = fault(FaultPoint::kBeforeRename, ck);
  if (fe.error) throw IoError("rename", ck.tmp_path, fe.error);
  // Re-saving a step that exists (e.g. after resuming from an older one): move the old copy
  // aside first; recover_directory() restores it if we crash before the new one is in place.
  std::string replaced;
  if (path_exists(ck.final_path)) {
    replaced = join_path(opt_.dir, "." + step_name(ck.step) + ".replaced-" + std::to_string(ck.id));
    rename_or_throw(ck.final_path, replaced, io_log_.get());
  }
  rename_or_throw(ck.tmp_path, ck.final_path, io_log_.get());
  fault(FaultPoint::kAfterRename, ck);
  if (!opt_.unsafe_skip_dir_fsync) fsync_dir(opt_.dir, io_log_.get());
  if (!replaced.empty()) {
    remove_tree(replaced, io_log_.get());
    fsync_dir(opt_.dir, io_log_.get());
  }
}

void Engine::retain(const Checkpoint& just_committed, TraceRing* ring) {
  if (opt_.keep_last <= 0) return;
  fault(FaultPoint::kBeforeGc, just_committed);
  std::vector<std::pair<int64_t, std::string>> older;
  for (const std::string& name : list_dir(opt_.dir)) {
    int64_t s = parse_step_name(name);
    if (s >= 0 && s < just_committed.step && is_dir(join_path(opt_.dir, name))) older.emplace_back(s, name);
  }
  std::sort(older.begin(), older.end());
  const size_t keep_older = static_cast<size_t>(opt_.keep_last - 1);
  if (older.size() <= keep_older) return;
  ScopedPhase p(&tracer_, ring, Phase::kGc, just_committed.id, just_committed.step, -1, 0, 0);
  for (size_t i = 0; i + keep_older < older.size(); ++i) {
    // Rename first so no reader ever sees a half-deleted checkpoint under a committed name.
    std::string doomed = join_path(opt_.dir, "." + older[i].second + ".deleting-" + std::to_string(just_committed.id));
    rename_or_throw(join_path(opt_.dir, older[i].second), doomed, io_log_.get());
    fault(FaultPoint::kDuringGc, just_committed);
    remove_tree(doomed, io_log_.get());
  }
  fsync_dir(opt_.dir, io_log_.get());
}

bool Engine::wait_all(const InterruptCheck& interrupted, std::optional<Clock::time_point> deadline) {
  constexpr auto kInterruptPoll = std::chrono::milliseconds(100);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    if (pending_.empty()) return true;
    const Clock::time_point now = Clock::now();
    if (deadline && now >= *deadline) return false;
    Clock::time_point wake = now + kInterruptPoll;
    if (deadline && *deadline < wake) wake = *deadline;
    cv_.wait_until(lock, wake);
    if (!pending_.empty() && interrupted) {
      lock.unlock();
      if (interrupted()) throw Interrupted();
      lock.lock();
    }
  }
}

std::optional<CheckpointFailure> Engine::take_failure() {
  std::lock_guard<std::mutex> lock(mu_);
  if (failures_.empty()) return std::nullopt;
  CheckpointFailure f = failures_.front();
  failures_.pop_front();
  return f;
}

int64_t Engine::last_committed_step() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_committed_step_;
}

uint64_t Engine::inflight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size();
}

std::vector<CommitRecord> Engine::commit_records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

}  // namespace ckptlab
