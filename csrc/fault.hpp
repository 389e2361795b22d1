// Named fault points of the persist/commit protocol, armed by a small spec language:
//   point=NAME[,ckpt=K][,step=S][,hit=N][,action=kill|eio|enospc|edquot|short|delay=MS][,mode=once|persist]
// several rules joined by ';'. With no rules armed, hit() is one relaxed atomic load.
// mode=persist (error actions only): once the rule fires, every later pass of a point that
// fails an operation (fault_point_fails_operation) fails it with the same errno: a dying disk.
// docs/FAULTS.md lists the points; keep kFaultPointNames in sync with it.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ckptlab {

enum class FaultPoint : int {
  kBeforeChunkWrite = 0,
  kAfterChunkWrite,
  kBeforeDataFsync,
  kAfterDataFsync,
  kBeforeManifest,
  kBeforeManifestFsync,
  kBeforeTmpdirFsync,
  kBeforeRename,
  kAfterRename,      // renamed into place, parent directory not yet fsynced
  kAfterCommit,      // durable, not yet acknowledged
  kBeforeGc,
  kDuringGc,         // an old checkpoint partly deleted
  // The multi-rank coordinator's points (core/distributed.py, core/global_commit.py), passed
  // by the Python coordinator through core/writer_io.py, never by the engine.
  kAfterPartDurable,      // this rank's part durable, before the barrier
  kAfterGather,           // every rank's part identity gathered, before the record
  kBeforeRecordFsync,     // rank 0: global record written to its temp file, not fsynced
  kBeforeRecordRename,    // rank 0: temp record fsynced, not renamed
  kBeforeRecordDirFsync,  // rank 0: record renamed, DIR/global not fsynced
  kAfterRecord,           // rank 0: record durable, before the broadcast
  kBeforeGlobalAck,       // outcome broadcast received, step not yet acknowledged
  kDuringGlobalGc,        // retention: an old record deleted, its parts not yet
  kCount
};

const char* fault_point_name(FaultPoint p);
// The writer points (the engine's and the Python writers'), in protocol order.
std::vector<std::string> fault_point_names();
// The multi-rank coordinator's points, in protocol order (docs/FAULTS.md).
std::vector<std::string> coordinator_fault_point_names();
// The point called `name`; std::invalid_argument naming the known points if there is none.
FaultPoint fault_point_from_name(const std::string& name);
// Whether an error returned at `p` fails the operation after it (docs/FAULTS.md's table;
// core/fault_spec.py ERROR_POINTS names the same points).
bool fault_point_fails_operation(FaultPoint p);

enum class FaultAction : int { kKill, kError, kDelay, kShortWrite };

struct FaultRule {
  FaultPoint point;
  int64_t ckpt = -1;   // engine checkpoint sequence number (1-based); -1 = any
  int64_t step = -1;   // training step; -1 = any
  int64_t hit = 1;     // fire at the hit-th matching occurrence
  FaultAction action = FaultAction::kKill;
  int error = 0;       // errno for kError / kShortWrite
  int64_t delay_ms = 0;
  bool persist = false;  // mode=persist: after firing, every failing point returns `error`
  std::atomic<int64_t> seen{0};
};

// What the caller must do after passing a point: nothing, or fail its next operation.
struct FaultEffect {
  int error = 0;            // non-zero: fail the next I/O with this errno
  bool short_write = false; // write part of the buffer, then fail with `error`
};

class FaultInjector {
 public:
  // Throws std::invalid_argument with a message naming the bad token.
  explicit FaultInjector(const std::string& spec);
  bool armed() const { return armed_.load(std::memory_order_relaxed); }
  // Kill and delay actions happen inside; error actions are returned to the caller.
  FaultEffect hit(FaultPoint p, uint64_t ckpt_seq, int64_t step);
  const std::string& spec() const { return spec_; }

 private:
  std::string spec_;
  std::vector<std::unique_ptr<FaultRule>> rules_;
  std::atomic<bool> armed_{false};
  std::atomic<int> dead_errno_{0};  // set by a fired mode=persist rule; 0 = healthy
};

}  // namespace ckptlab
