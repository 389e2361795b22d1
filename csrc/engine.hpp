// The persist engine: bounded staging, a writer thread pool, and the commit protocol.
//
// One checkpoint = one byte stream (laid out by the Python side) cut into chunks of
// `chunk_bytes`. submit() copies the caller's memory into staging buffers chunk by chunk and
// queues each chunk as soon as it is filled, so writer threads persist chunk i while chunk
// i+1 is being copied (pipelining). One queue shared by the writers, or with
// chunk_assignment "static" one per writer holding its fixed share. Chunks are spread round-robin over `shards` files; the
// thread that writes a file's last chunk fdatasyncs that file. A single committer thread then
// publishes checkpoints strictly in submission (= step) order:
//
//   1. every data file fdatasync'ed                 (writer threads)
//   2. MANIFEST written and fsync'ed into the temp dir
//   3. temp dir fsync'ed                            (persists the file entries)
//   4. rename(.step_N.tmp-*, step_N)                (the commit point)
//   5. parent dir fsync'ed                          -> acknowledged (last_committed_step)
//   6. retention: older checkpoints beyond keep_last removed (never the one just committed)
//
// Any failed write/fsync/rename fails that checkpoint only: its temp dir is removed, earlier
// checkpoints stay, and the error is queued for the next submit()/wait() to raise. An fsync
// is never retried (after a failed fsync the kernel may have dropped the dirty pages).
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fault.hpp"
#include "file_io.hpp"
#include "io_log.hpp"
#include "staging_pool.hpp"
#include "trace.hpp"

namespace ckptlab {

struct EngineOptions {
  std::string dir;
  int writer_threads = 4;
  int max_inflight = 2;          // PCcheck's N
  int shards = 0;                // data files per checkpoint; 0 = writer_threads
  uint64_t chunk_bytes = 16ull << 20;
  uint64_t staging_bytes = 256ull << 20;
  int keep_last = 2;             // 0 keeps every checkpoint
  std::string io_mode = "auto";  // auto | direct | buffered
  std::string faults;            // fault spec, see fault.hpp
  bool trace_records = false;
  uint64_t trace_capacity = 1u << 16;  // records per thread ring
  bool prefault = false;         // touch the staging pool on a background thread (staging_pool.hpp)
  // Durability mutations: each removes one step of the protocol. Only the fault campaign's
  // "teeth" tests set them, to show the campaign catches the loss.
  bool unsafe_skip_data_fsync = false;
  bool unsafe_skip_dir_fsync = false;
  bool unsafe_corrupt_manifest_checksum = false;
  bool unsafe_unordered_commit = false;
  bool unsafe_ignore_seal = false;  // commit a stream once its data is durable, sealed or not
  // Record every file-system operation to this file for crash-state replay (io_log.hpp);
  // empty = off. io_log_data also stores the bytes of each write (small test states only).
  std::string io_log;
  bool io_log_data = true;
  // CPUs the writer threads may run on (affinity.hpp); empty = wherever the kernel puts them.
  std::vector<int> writer_cpus;
  // Which writer writes which chunk: "queue" (the next free writer takes the next staged
  // chunk, so a slow writer takes fewer) or "static" (chunk i goes to writer
  // i % writer_threads, each writer its fixed share as in PCcheck's artifact).
  std::string chunk_assignment = "queue";
};

// The durability mutations by name (the EngineOptions::unsafe_* flags), in declaration
// order: the names Engine(unsafe=[...]) takes. One table in engine.cpp holds names and flags.
std::vector<std::string> durability_mutation_names();
// Sets the named mutation in `options`; std::invalid_argument for a name not in the table.
void set_durability_mutation(EngineOptions& options, const std::string& name);

// A segment of caller memory placed at `stream_offset` in the checkpoint's byte stream.
struct Segment {
  const void* ptr;
  uint64_t nbytes;
  uint64_t stream_offset;
};

// A staging chunk handed to the caller of acquire_chunk() to fill: chunk `chunk` of the
// stream covers stream bytes [stream_offset, stream_offset + nbytes) and lives at `data`.
struct StreamChunk {
  uint32_t chunk;
  char* data;
  uint64_t stream_offset;
  uint64_t nbytes;
};

struct CheckpointFailure {
  uint64_t ckpt_id;
  int64_t step;
  std::string op;
  std::string path;
  int error;  // errno, 0 for non-OS failures
  std::string message;
};

struct CommitRecord {
  uint64_t ckpt_id;
  int64_t step;
  uint64_t total_bytes;
  uint64_t t_submit_ns;   // submit() entered
  uint64_t t_staged_ns;   // submit() returned (the stall ends)
  uint64_t t_done_ns;     // acknowledged durable, or failed
  bool ok;
  std::string path;
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Copies the segments into staging and queues the checkpoint; returns its id (1, 2, ...).
  // Blocks while max_inflight checkpoints are in flight or staging is full (back-pressure).
  uint64_t submit(int64_t step, const std::string& meta_json, const std::vector<Segment>& segments,
                  uint64_t total_bytes, const InterruptCheck& interrupted);
  // A checkpoint the caller fills itself, chunk by chunk, straight into staging (the snapshot
  // pipeline: a device-to-host copy or a copy from live memory lands in the chunk the engine
  // writes, no second host copy). open_stream() admits it as submit() does (step order,
  // max_inflight back-pressure) and creates its files; acquire_chunk() hands out its chunks in
  // stream order, blocking while staging is full (back-pressure per chunk); queue_chunk()
  // gives a filled chunk to the writers, in any order; seal() lets the committer commit it
  // once every chunk is durable, so the caller can hold the commit until it has judged the
  // copy; abort() fails it instead (nothing of it is committed; the caller reports the
  // reason, so it is not queued for take_failure()). Each stream must end in seal() or
  // abort(); close() aborts any still open. One thread at a time acquires a stream's
  // chunks (queue_chunk may come from another).
  uint64_t open_stream(int64_t step, const std::string& meta_json, uint64_t total_bytes,
                       const InterruptCheck& interrupted);
  StreamChunk acquire_chunk(uint64_t id, const InterruptCheck& interrupted);
  void queue_chunk(uint64_t id, uint32_t chunk);
  void seal(uint64_t id);
  void abort(uint64_t id, const std::string& reason);
  // Blocks until every submitted checkpoint is committed or failed, or until `deadline`
  // passes (none: no limit). Returns whether nothing submitted was still pending then; a
  // deadline already past only polls. `interrupted` is consulted every 100 ms.
  using Clock = std::chrono::steady_clock;
  bool wait_all(const InterruptCheck& interrupted, std::optional<Clock::time_point> deadline = std::nullopt);
  // The oldest failure not yet reported, removed from the queue.
  std::optional<CheckpointFailure> take_failure();
  void close();

  int64_t last_committed_step() const;
  uint64_t inflight() const;
  std::vector<CommitRecord> commit_records() const;
  const std::string& io_mode() const { return io_mode_; }
  const std::string& direct_io_note() const { return direct_io_note_; }
  Tracer& tracer() { return tracer_; }
  const StagingPool& staging() const { return *pool_; }
  const EngineOptions& options() const { return opt_; }
  IoLog* io_log() const { return io_log_.get(); }
  // Writer threads the kernel refused to pin to options().writer_cpus (they run unpinned).
  int pin_failures() const { return pin_failures_.load(); }

 private:
  struct Shard {
    std::string name, path;
    UniqueFd fd;
    uint64_t nbytes = 0;
    std::atomic<uint32_t> remaining{0};
  };
  struct Checkpoint {
    uint64_t id = 0;
    int64_t step = 0;
    std::string meta_json, tmp_path, final_path;
    uint64_t total_bytes = 0, stream_bytes = 0;
    uint32_t nchunks = 0;
    std::vector<std::unique_ptr<Shard>> shards;
    std::vector<uint32_t> crcs;
    std::vector<uint64_t> chunk_len;
    std::atomic<uint32_t> shards_left{0};
    std::atomic<bool> failed{false};
    std::mutex failure_mu;
    std::optional<CheckpointFailure> failure;
    bool data_done = false;  // guarded by Engine::mu_
    bool sealed = true;      // guarded by Engine::mu_; false while an open stream may still abort it
    bool aborted = false;    // guarded by Engine::mu_; the caller reports the reason, not take_failure()
    // Open streams only (guarded by stream_mu): the next chunk to hand out, and the staging
    // buffer of each chunk handed out and not yet queued (-1 otherwise).
    std::mutex stream_mu;
    uint32_t next_chunk = 0;
    std::vector<int> held;
    std::vector<uint64_t> stage_begin_ns;  // when each chunk was handed out (its stage record)
    uint64_t t_submit_ns = 0, t_staged_ns = 0;
  };
  struct WriteTask {
    std::shared_ptr<Checkpoint> ckpt;
    uint32_t chunk;
    int buffer;
  };

  void writer_main(int index);
  void committer_main();
  void admit(int64_t step, const InterruptCheck& interrupted);
  std::shared_ptr<Checkpoint> open_stream_checkpoint(uint64_t id);
  void end_stream(Checkpoint& ck, bool aborted);  // sealed or aborted: the committer may take it
  void queue_write(const std::shared_ptr<Checkpoint>& ck, uint32_t chunk, int buffer);
  bool committable(const Checkpoint& ck) const {
    return ck.data_done && (ck.sealed || (opt_.unsafe_ignore_seal && !ck.failed.load()));
  }
  std::shared_ptr<Checkpoint> begin_checkpoint(int64_t step, const std::string& meta_json, uint64_t total_bytes,
                                               bool sealed = true);
  void stage_chunks(const std::shared_ptr<Checkpoint>& ck, const std::vector<Segment>& segments,
                    const InterruptCheck& interrupted, TraceRing* ring);
  void write_chunk(const WriteTask& t, TraceRing* ring);
  void finish_chunk(const std::shared_ptr<Checkpoint>& ck, uint32_t chunk, TraceRing* ring);
  void fail(Checkpoint& ck, const std::string& op, const std::string& path, int err, const std::string& msg);
  void commit(Checkpoint& ck, TraceRing* ring);
  void retain(const Checkpoint& just_committed, TraceRing* ring);
  void recover_directory();
  // The calling thread's ring, listed under `name` (the thread keeps its OS name).
  TraceRing* caller_ring(const char* name);
  FaultEffect fault(FaultPoint p, const Checkpoint& ck) {
    return pass_fault_point(faults_, io_log_.get(), p, ck.id, ck.step);
  }

  EngineOptions opt_;
  std::string io_mode_, direct_io_note_;
  bool direct_ = false;
  // Set by the first fallocate the file system refuses (EOPNOTSUPP, ENOSYS, EINVAL): one
  // directory, one file system, so later checkpoints skip asking (each refusal is a syscall
  // per checkpoint, and an I/O-log record).
  std::atomic<bool> preallocation_refused_{false};
  UniqueFd lock_fd_;
  FaultInjector faults_;
  std::unique_ptr<IoLog> io_log_;  // null unless options.io_log is set
  Tracer tracer_;
  std::unique_ptr<StagingPool> pool_;

  std::mutex submit_mu_;  // one submit at a time (the stream copy is sequential by design)
  std::mutex rings_mu_;   // submit_threads_: submit() and a stream's queue_chunk() on other threads
  std::map<int32_t, std::unique_ptr<TraceThread>> submit_threads_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Checkpoint>> pending_;  // submitted, not yet committed/failed
  std::map<uint64_t, std::shared_ptr<Checkpoint>> streams_;  // opened, neither sealed nor aborted
  std::deque<CheckpointFailure> failures_;
  std::vector<CommitRecord> records_;
  uint64_t next_id_ = 0;
  int64_t last_submitted_step_ = -1;
  int64_t last_committed_step_ = -1;
  bool stopping_ = false;

  std::mutex wq_mu_;
  std::condition_variable wq_cv_;
  // One queue all writers take from, or (static_chunks_) one per writer.
  std::vector<std::deque<WriteTask>> write_queues_;
  bool static_chunks_ = false;
  bool writers_stop_ = false;

  std::vector<std::thread> writers_;
  std::thread committer_;
  bool closed_ = false;
  std::atomic<int> pin_failures_{0};
};

}  // namespace ckptlab
