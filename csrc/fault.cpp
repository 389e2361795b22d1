#include "fault.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <stdexcept>
#include <thread>
#include <unistd.h>

namespace ckptlab {
namespace {

constexpr const char* kFaultPointNames[] = {
    "before_chunk_write", "after_chunk_write", "before_data_fsync", "after_data_fsync",
    "before_manifest",    "before_manifest_fsync", "before_tmpdir_fsync", "before_rename",
    "after_rename",       "after_commit",      "before_gc",         "during_gc",
    // the multi-rank coordinator's (FaultPoint::kAfterPartDurable onwards)
    "after_part_durable", "after_gather",      "before_record_fsync", "before_record_rename",
    "before_record_dir_fsync", "after_record", "before_global_ack", "during_global_gc",
};
constexpr int kFirstCoordinatorPoint = static_cast<int>(FaultPoint::kAfterPartDurable);
static_assert(sizeof(kFaultPointNames) / sizeof(kFaultPointNames[0]) ==
                  static_cast<size_t>(FaultPoint::kCount),
              "every fault point needs a name");

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(sep, start);
    if (end == std::string::npos) end = s.size();
    out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n"), e = s.find_last_not_of(" \t\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

int64_t parse_int(const std::string& key, const std::string& v, int64_t min_value) {
  size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty() || x < min_value)
    throw std::invalid_argument("fault spec: " + key + "=" + v + " is not an integer >= " +
                                std::to_string(min_value));
  return x;
}

void parse_action(FaultRule& r, const std::string& v) {
  if (v == "kill") {
    r.action = FaultAction::kKill;
  } else if (v == "eio") {
    r.action = FaultAction::kError;
    r.error = EIO;
  } else if (v == "enospc") {
    r.action = FaultAction::kError;
    r.error = ENOSPC;
  } else if (v == "edquot") {
    r.action = FaultAction::kError;
    r.error = EDQUOT;
  } else if (v == "short") {
    r.action = FaultAction::kShortWrite;
    r.error = ENOSPC;
  } else if (v.rfind("delay=", 0) == 0 || v.rfind("delay:", 0) == 0) {
    r.action = FaultAction::kDelay;
    r.delay_ms = parse_int("delay", v.substr(6), 0);
  } else {
    throw std::invalid_argument("fault spec: unknown action '" + v +
                                "' (known: kill, eio, enospc, edquot, short, delay=MS)");
  }
}

}  // namespace

bool fault_point_fails_operation(FaultPoint p) {
  switch (p) {
    case FaultPoint::kBeforeChunkWrite:
    case FaultPoint::kBeforeDataFsync:
    case FaultPoint::kBeforeManifest:
    case FaultPoint::kBeforeManifestFsync:
    case FaultPoint::kBeforeTmpdirFsync:
    case FaultPoint::kBeforeRename:
    case FaultPoint::kBeforeRecordFsync:
    case FaultPoint::kBeforeRecordRename:
    case FaultPoint::kBeforeRecordDirFsync:
      return true;
    default:
      return false;
  }
}

const char* fault_point_name(FaultPoint p) { return kFaultPointNames[static_cast<int>(p)]; }

std::vector<std::string> fault_point_names() {
  return std::vector<std::string>(std::begin(kFaultPointNames), std::begin(kFaultPointNames) + kFirstCoordinatorPoint);
}

std::vector<std::string> coordinator_fault_point_names() {
  return std::vector<std::string>(std::begin(kFaultPointNames) + kFirstCoordinatorPoint, std::end(kFaultPointNames));
}

FaultPoint fault_point_from_name(const std::string& name) {
  for (int i = 0; i < static_cast<int>(FaultPoint::kCount); ++i)
    if (name == kFaultPointNames[i]) return static_cast<FaultPoint>(i);
  std::string known;
  for (const char* n : kFaultPointNames) known += std::string(known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("fault spec: unknown point '" + name + "' (known: " + known + ")");
}

FaultInjector::FaultInjector(const std::string& spec) : spec_(spec) {
  for (const std::string& raw_rule : split(spec, ';')) {
    std::string rule_text = trim(raw_rule);
    if (rule_text.empty()) continue;
    auto rule = std::make_unique<FaultRule>();
    bool have_point = false;
    // "action=delay=5" is allowed: split each field on its first '=' only.
    for (const std::string& raw_field : split(rule_text, ',')) {
      std::string field = trim(raw_field);
      size_t eq = field.find('=');
      if (eq == std::string::npos)
        throw std::invalid_argument("fault spec: '" + field + "' is not key=value");
      std::string key = field.substr(0, eq), value = field.substr(eq + 1);
      if (key == "point") {
        rule->point = fault_point_from_name(value);
        have_point = true;
      } else if (key == "ckpt") {
        rule->ckpt = parse_int(key, value, 1);
      } else if (key == "step") {
        rule->step = parse_int(key, value, 0);
      } else if (key == "hit" || key == "occurrence") {
        rule->hit = parse_int(key, value, 1);
      } else if (key == "action") {
        parse_action(*rule, value);
      } else if (key == "mode") {
        if (value != "once" && value != "persist")
          throw std::invalid_argument("fault spec: unknown mode '" + value + "' (known: once, persist)");
        rule->persist = value == "persist";
      } else {
        throw std::invalid_argument("fault spec: unknown key '" + key +
                                    "' (known: point, ckpt, step, hit, action, mode)");
      }
    }
    if (!have_point) throw std::invalid_argument("fault spec: rule '" + rule_text + "' has no point=");
    if (rule->persist && rule->action != FaultAction::kError && rule->action != FaultAction::kShortWrite)
      throw std::invalid_argument("fault spec: rule '" + rule_text +
                                  "': mode=persist needs an error action (eio, enospc, edquot, short)");
    rules_.push_back(std::move(rule));
  }
  armed_.store(!rules_.empty(), std::memory_order_relaxed);
}

FaultEffect FaultInjector::hit(FaultPoint p, uint64_t ckpt_seq, int64_t step) {
  FaultEffect effect;
  if (!armed()) return effect;
  // A dead disk fails the operation; the rules still count and kill or delay as armed.
  if (fault_point_fails_operation(p)) effect.error = dead_errno_.load(std::memory_order_acquire);
  for (auto& r : rules_) {
    if (r->point != p) continue;
    if (r->ckpt >= 0 && static_cast<uint64_t>(r->ckpt) != ckpt_seq) continue;
    if (r->step >= 0 && r->step != step) continue;
    int64_t n = r->seen.fetch_add(1, std::memory_order_acq_rel) + 1;
    if (n != r->hit) continue;
    switch (r->action) {
      case FaultAction::kKill:
        ::kill(::getpid(), SIGKILL);
        for (;;) ::pause();  // SIGKILL cannot be caught; never returns
      case FaultAction::kDelay:
        std::this_thread::sleep_for(std::chrono::milliseconds(r->delay_ms));
        break;
      case FaultAction::kError:
        effect.error = r->error;
        effect.short_write = false;
        break;
      case FaultAction::kShortWrite:
        effect.error = r->error;
        effect.short_write = true;
        break;
    }
    if (r->persist) dead_errno_.store(r->error, std::memory_order_release);
  }
  return effect;
}

}  // namespace ckptlab
