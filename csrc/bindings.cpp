// Python bindings of the engine (module ckptlab._engine). Every blocking call releases the
// GIL; long waits wake every 100 ms to let Ctrl-C through (the Python exception is raised
// once the engine has unwound). Engine failures become OSError(errno, message, path).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>

#include "affinity.hpp"
#include "checksum.hpp"
#include "engine.hpp"
#include "fault.hpp"
#include "io_log.hpp"
#include "file_io.hpp"
#include "manifest_writer.hpp"
#include "reader.hpp"
#include "trace.hpp"

namespace py = pybind11;
using namespace ckptlab;

namespace {

// Checks Python signals from a thread that released the GIL; keeps the raised exception.
class SignalCheck {
 public:
  InterruptCheck callback() {
    return [this] {
      py::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() != 0) {
        error_ = std::make_unique<py::error_already_set>();
        return true;
      }
      return false;
    };
  }
  [[noreturn]] void rethrow() {
    if (error_) throw py::error_already_set(*error_);
    throw py::value_error("interrupted");
  }

 private:
  std::unique_ptr<py::error_already_set> error_;
};

template <typename Fn>
auto interruptible(Fn&& fn) {
  SignalCheck check;
  try {
    py::gil_scoped_release release;
    return fn(check.callback());
  } catch (const Interrupted&) {
    check.rethrow();
  }
}

// One numpy array per column of CKPTLAB_TRACE_COLUMNS (trace.hpp), keyed by column name, in
// that order.
py::dict records_to_columns(const std::vector<TraceRecord>& recs) {
  const py::ssize_t n = static_cast<py::ssize_t>(recs.size());
  py::dict d;
#define CKPTLAB_TRACE_ARRAY(name, type, dtype)                          \
  {                                                                     \
    py::array_t<type> column(n);                                        \
    auto out = column.mutable_unchecked<1>();                           \
    for (py::ssize_t i = 0; i < n; ++i) out(i) = recs[static_cast<size_t>(i)].name; \
    d[#name] = std::move(column);                                       \
  }
  CKPTLAB_TRACE_COLUMNS(CKPTLAB_TRACE_ARRAY)
#undef CKPTLAB_TRACE_ARRAY
  return d;
}

py::object failure_to_py(const std::optional<CheckpointFailure>& f) {
  if (!f) return py::none();
  py::dict d;
  d["ckpt_id"] = f->ckpt_id;
  d["step"] = f->step;
  d["op"] = f->op;
  d["path"] = f->path;
  d["errno"] = f->error;
  d["message"] = f->message;
  return d;
}

std::vector<Segment> to_segments(const std::vector<std::tuple<uintptr_t, uint64_t, uint64_t>>& segs) {
  std::vector<Segment> out;
  out.reserve(segs.size());
  for (const auto& [ptr, n, off] : segs) out.push_back(Segment{reinterpret_cast<const void*>(ptr), n, off});
  return out;
}

}  // namespace

PYBIND11_MODULE(_engine, m) {
  m.doc() = "ckptlab persist engine (C++17): staging, writer threads, commit protocol, verified reads";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const IoError& e) {
      std::string message = e.op() + " failed: " + std::strerror(e.error());
      py::object err = py::module_::import("builtins").attr("OSError")(e.error(), message, e.path());
      PyErr_SetObject(PyExc_OSError, err.ptr());
    }
  });

  m.def("crc32c", [](py::buffer data, uint32_t crc) {
    py::buffer_info info = data.request();
    const uint64_t n = static_cast<uint64_t>(info.size) * static_cast<uint64_t>(info.itemsize);
    py::gil_scoped_release release;
    return crc32c(crc, info.ptr, n);
  }, py::arg("data"), py::arg("crc") = 0, "CRC32C of a contiguous buffer, continuing from `crc`.");
  m.def("crc32c_ptr", [](uintptr_t ptr, uint64_t nbytes, uint32_t crc) {
    py::gil_scoped_release release;
    return crc32c(crc, reinterpret_cast<const void*>(ptr), nbytes);
  }, py::arg("ptr"), py::arg("nbytes"), py::arg("crc") = 0);
  m.def("crc32c_implementation", &crc32c_implementation);
  m.def("fault_points", &fault_point_names);
  m.def("coordinator_fault_points", &coordinator_fault_point_names,
        "The multi-rank coordinator's fault points (core/distributed.py), in protocol order.");
  m.def("io_op_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < static_cast<int>(IoOp::kCount); ++i) names.emplace_back(io_op_name(static_cast<IoOp>(i)));
    return names;
  }, "Operation names used in I/O logs (Engine(io_log=PATH)), see faults/iolog.py.");
  m.def("validate_fault_spec", [](const std::string& spec) { FaultInjector check(spec); }, py::arg("spec"),
        "Raises ValueError naming the bad token if the spec does not parse.");
  m.def("phase_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < static_cast<int>(Phase::kCount); ++i) names.emplace_back(phase_name(static_cast<Phase>(i)));
    return names;
  });
  m.def("trace_columns", [] {
    std::vector<std::pair<std::string, std::string>> columns;
#define CKPTLAB_TRACE_NAME(name, type, dtype) columns.emplace_back(#name, dtype);
    CKPTLAB_TRACE_COLUMNS(CKPTLAB_TRACE_NAME)
#undef CKPTLAB_TRACE_NAME
    return columns;
  }, "(name, numpy dtype) of each timing-record column, in trace-file order (drain_trace() keys).");
  m.def("durability_mutations", [] {
    const std::vector<std::string> names = durability_mutation_names();
    py::tuple out(names.size());
    for (size_t i = 0; i < names.size(); ++i) out[i] = names[i];
    return out;
  }, "Names Engine(unsafe=[...]) accepts: each removes one step of the commit protocol (fault-campaign teeth).");
  m.def("probe_direct_io", [](const std::string& dir) {
    DirectIoSupport s = probe_direct_io(dir);
    return py::make_tuple(s.supported, s.reason);
  }, py::arg("dir"), "(supported, reason): whether O_DIRECT writes work in `dir`; reason is empty when they do.");
  m.attr("FORMAT_VERSION") = kFormatVersion;
  m.attr("MANIFEST_NAME") = kManifestName;
  m.def("monotonic_ns", &monotonic_ns);
  m.def("current_cpu", &current_cpu, "sched_getcpu() of the calling thread (timing records' cpu columns).");
  m.def("allowed_cpus", &allowed_cpus,
        "CPUs a thread of this process may be pinned to (its cpuset, probed), ascending; may exceed the "
        "calling thread's own affinity.");
  m.def("current_tid", &current_tid, "gettid() of the calling thread (timing records' thread column).");
  m.def("trace_overhead_ns",
        [](uint64_t iterations, bool records) {
          // Cost of one ScopedPhase (NVTX push/pop + message + optional record) on this thread,
          // in ns; for benchmarks/bench_trace_overhead.py. The thread keeps its OS name.
          Tracer tracer(records, static_cast<size_t>(iterations));
          TraceThread self(&tracer, "ckptlab-bench", /*name_os_thread=*/false);
          py::gil_scoped_release release;
          const uint64_t t0 = monotonic_ns();
          for (uint64_t i = 0; i < iterations; ++i) {
            ScopedPhase p(&tracer, self.ring(), Phase::kWrite, 1, 1, static_cast<int64_t>(i), i << 20, 1u << 20);
          }
          const uint64_t t1 = monotonic_ns();
          return iterations ? static_cast<double>(t1 - t0) / static_cast<double>(iterations) : 0.0;
        },
        py::arg("iterations") = 100000, py::arg("records") = true);

  m.def("read_verified",
        [](const std::vector<std::tuple<std::string, uint64_t, uint64_t, uint32_t, int64_t,
                                        std::vector<std::tuple<uint64_t, uintptr_t, uint64_t>>>>& raw,
           int threads, bool trace, uint64_t ckpt_id, int64_t step) {
          std::vector<ReadTask> tasks;
          tasks.reserve(raw.size());
          for (const auto& [path, off, n, crc, chunk, pieces] : raw) {
            ReadTask t{path, off, n, crc, chunk, {}};
            for (const auto& [coff, dst, pn] : pieces) {
              if (coff + pn > n) throw py::value_error("read piece outside its chunk");
              t.pieces.push_back(ReadPiece{coff, reinterpret_cast<void*>(dst), pn});
            }
            tasks.push_back(std::move(t));
          }
          ReadResult r = interruptible([&](const InterruptCheck& ic) {
            return read_verified(tasks, threads, trace, ckpt_id, step, ic);
          });
          py::list failures;
          for (const auto& f : r.failures) {
            py::dict d;
            d["chunk"] = f.chunk;
            d["path"] = f.path;
            d["offset"] = f.offset;
            d["kind"] = f.kind;
            d["detail"] = f.detail;
            failures.append(d);
          }
          py::dict out;
          out["failures"] = failures;
          out["bytes_read"] = r.bytes_read;
          out["records"] = records_to_columns(r.records);
          out["thread_names"] = r.thread_names;
          return out;
        },
        py::arg("tasks"), py::arg("threads") = 4, py::arg("trace") = false, py::arg("ckpt_id") = 0,
        py::arg("step") = -1,
        "Reads (path, file_offset, nbytes, crc32c, chunk, [(chunk_offset, dst_ptr, nbytes)]) tasks in "
        "parallel, verifying each chunk before copying its pieces out.");

  // The engine's fault points and I/O log for the Python writers (core/writer_io.py): one
  // parser of the fault grammar, one log format.
  py::class_<IoLog>(m, "IoLog")
      .def(py::init([](const std::string& path, bool record_data) { return std::make_unique<IoLog>(path, record_data); }),
           py::arg("path"), py::arg("record_data") = true,
           "Append-only I/O log at `path` (created if missing), as Engine(io_log=...) writes it.")
      .def("op",
           [](IoLog& log, const std::string& op, const std::string& path, int err) {
             const IoOp o = io_op_from_name(op);
             if (o == IoOp::kWrite || o == IoOp::kFallocate || o == IoOp::kRename || o == IoOp::kMark)
               throw py::value_error("IoLog.op('" + op + "'): use write(), fallocate(), rename() or mark()");
             py::gil_scoped_release release;
             log.op(o, path, err);
           },
           py::arg("op"), py::arg("path"), py::arg("err") = 0,
           "One operation on one path: mkdir, create, open_create, fsync, fdatasync, fsync_dir, unlink, rmdir.")
      .def("write",
           [](IoLog& log, const std::string& path, uint64_t offset, py::buffer data, int err) {
             py::buffer_info info = data.request();
             const uint64_t n = static_cast<uint64_t>(info.size) * static_cast<uint64_t>(info.itemsize);
             py::gil_scoped_release release;
             log.write(path, offset, info.ptr, n, err);
           },
           py::arg("path"), py::arg("offset"), py::arg("data"), py::arg("err") = 0,
           "A write of `data` at `offset` that returned (err 0), or failed (err != 0, data empty).")
      .def("fallocate",
           [](IoLog& log, const std::string& path, uint64_t offset, uint64_t nbytes, int err) {
             py::gil_scoped_release release;
             log.fallocate(path, offset, nbytes, err);
           },
           py::arg("path"), py::arg("offset"), py::arg("nbytes"), py::arg("err") = 0)
      .def("rename",
           [](IoLog& log, const std::string& src, const std::string& dst, int err) {
             py::gil_scoped_release release;
             log.rename(src, dst, err);
           },
           py::arg("src"), py::arg("dst"), py::arg("err") = 0)
      .def("mark",
           [](IoLog& log, const std::string& kind, const std::string& detail) {
             py::gil_scoped_release release;
             log.mark(kind, detail);
           },
           py::arg("kind"), py::arg("detail"), "A marker (start, submit, ack, fail, close, ...) with its detail.")
      .def_property_readonly("path", &IoLog::path)
      .def_property_readonly("records", &IoLog::records);

  py::class_<FaultInjector>(m, "FaultInjector")
      .def(py::init<const std::string&>(), py::arg("spec"), "Arms `spec` (ValueError naming a bad token).")
      .def("hit",
           [](FaultInjector& faults, const std::string& point, uint64_t ckpt, int64_t step, IoLog* log) {
             const FaultPoint p = fault_point_from_name(point);
             FaultEffect fe;
             {
               py::gil_scoped_release release;  // a kill or a delay happens in here
               fe = pass_fault_point(faults, log, p, ckpt, step);
             }
             return py::make_tuple(fe.error, fe.short_write);
           },
           py::arg("point"), py::arg("ckpt"), py::arg("step"), py::arg("log") = nullptr,
           "Passes `point` of checkpoint `ckpt` (1-based) at `step`; kills or sleeps as armed, else "
           "returns (errno, short_write): a non-zero errno fails the next operation. With `log`, the pass "
           "is logged as the engine logs its own.")
      .def_property_readonly("armed", &FaultInjector::armed)
      .def_property_readonly("spec", &FaultInjector::spec);

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const std::string& dir, int writer_threads, int max_inflight, int shards,
                       uint64_t chunk_bytes, uint64_t staging_bytes, int keep_last, const std::string& io_mode,
                       const std::string& faults, bool trace, uint64_t trace_capacity, bool prefault,
                       const std::vector<std::string>& unsafe, const std::string& io_log, bool io_log_data,
                       const std::vector<int>& writer_cpus, const std::string& chunk_assignment) {
             EngineOptions o;
             o.dir = dir;
             o.writer_threads = writer_threads;
             o.max_inflight = max_inflight;
             o.shards = shards;
             o.chunk_bytes = chunk_bytes;
             o.staging_bytes = staging_bytes;
             o.keep_last = keep_last;
             o.io_mode = io_mode;
             o.faults = faults;
             o.trace_records = trace;
             o.trace_capacity = trace_capacity;
             o.prefault = prefault;
             o.io_log = io_log;
             o.io_log_data = io_log_data;
             o.writer_cpus = writer_cpus;
             o.chunk_assignment = chunk_assignment;
             for (const auto& u : unsafe) set_durability_mutation(o, u);  // ValueError if unknown
             py::gil_scoped_release release;
             return std::make_unique<Engine>(std::move(o));
           }),
           py::arg("dir"), py::arg("writer_threads") = 4, py::arg("max_inflight") = 2, py::arg("shards") = 0,
           py::arg("chunk_bytes") = 16ull << 20, py::arg("staging_bytes") = 256ull << 20, py::arg("keep_last") = 2,
           py::arg("io_mode") = "auto", py::arg("faults") = "", py::arg("trace") = false,
           py::arg("trace_capacity") = 1u << 16, py::arg("prefault") = false,
           py::arg("unsafe") = std::vector<std::string>{}, py::arg("io_log") = "", py::arg("io_log_data") = true,
           py::arg("writer_cpus") = std::vector<int>{}, py::arg("chunk_assignment") = "queue")
      .def("submit",
           [](Engine& e, int64_t step, const std::string& meta_json,
              const std::vector<std::tuple<uintptr_t, uint64_t, uint64_t>>& segments, uint64_t total_bytes) {
             std::vector<Segment> segs = to_segments(segments);
             return interruptible([&](const InterruptCheck& ic) {
               return e.submit(step, meta_json, segs, total_bytes, ic);
             });
           },
           py::arg("step"), py::arg("meta_json"), py::arg("segments"), py::arg("total_bytes"),
           "Copy (ptr, nbytes, stream_offset) segments into staging and queue the checkpoint. Returns its id.")
      .def("open_stream",
           [](Engine& e, int64_t step, const std::string& meta_json, uint64_t total_bytes) {
             return interruptible([&](const InterruptCheck& ic) {
               return e.open_stream(step, meta_json, total_bytes, ic);
             });
           },
           py::arg("step"), py::arg("meta_json"), py::arg("total_bytes"),
           "Admit a checkpoint the caller fills chunk by chunk (acquire_chunk, queue_chunk), then seal() or "
           "abort(); blocks while max_inflight are in flight. Returns its id.")
      .def("acquire_chunk",
           [](Engine& e, uint64_t id) {
             StreamChunk c = interruptible([&](const InterruptCheck& ic) { return e.acquire_chunk(id, ic); });
             return py::make_tuple(c.chunk, reinterpret_cast<uintptr_t>(c.data), c.stream_offset, c.nbytes);
           },
           py::arg("id"),
           "The stream's next chunk as (chunk, address, stream_offset, nbytes); blocks while staging is full.")
      .def("queue_chunk",
           [](Engine& e, uint64_t id, uint32_t chunk) {
             py::gil_scoped_release release;
             e.queue_chunk(id, chunk);
           },
           py::arg("id"), py::arg("chunk"), "Hand a filled chunk to the writer threads.")
      .def("seal",
           [](Engine& e, uint64_t id) {
             py::gil_scoped_release release;
             e.seal(id);
           },
           py::arg("id"), "Every chunk is queued and the copy is judged: commit once durable.")
      .def("abort",
           [](Engine& e, uint64_t id, const std::string& reason) {
             py::gil_scoped_release release;
             e.abort(id, reason);
           },
           py::arg("id"), py::arg("reason"), "Fail the stream's checkpoint; nothing of it is committed.")
      .def("wait",
           [](Engine& e, std::optional<double> timeout) {
             std::optional<Engine::Clock::time_point> deadline;
             if (timeout) {
               if (std::isnan(*timeout) || *timeout < 0) throw py::value_error("timeout must be >= 0 seconds or None");
               // 1e9 s (31 years) and beyond, inf included, is no limit (and cannot overflow the clock).
               if (*timeout < 1e9)
                 deadline = Engine::Clock::now() + std::chrono::duration_cast<Engine::Clock::duration>(
                                                       std::chrono::duration<double>(*timeout));
             }
             return interruptible([&](const InterruptCheck& ic) { return e.wait_all(ic, deadline); });
           },
           py::arg("timeout") = py::none(),
           "Waits until every submitted checkpoint is committed or failed; True if so, False when `timeout` "
           "seconds passed first (0 polls, None waits without limit). Does not raise checkpoint failures: "
           "take_failure() reports them.")
      .def("take_failure", [](Engine& e) { return failure_to_py(e.take_failure()); })
      .def("close", [](Engine& e) {
             py::gil_scoped_release release;
             e.close();
           })
      .def_property_readonly("last_committed_step", &Engine::last_committed_step)
      .def_property_readonly("inflight", &Engine::inflight)
      .def_property_readonly("io_mode", &Engine::io_mode)
      .def_property_readonly("direct_io_note", &Engine::direct_io_note)
      .def_property_readonly("writer_cpus", [](const Engine& e) { return e.options().writer_cpus; })
      .def_property_readonly("chunk_assignment", [](const Engine& e) { return e.options().chunk_assignment; })
      .def_property_readonly("pin_failures", &Engine::pin_failures)
      .def_property_readonly("staging_region", [](const Engine& e) {
             return py::make_tuple(reinterpret_cast<uintptr_t>(e.staging().base()), e.staging().total_bytes());
           })
      .def_property_readonly("staging_free_buffers", [](const Engine& e) { return e.staging().free_count(); })
      .def_property_readonly("staging_buffers", [](const Engine& e) { return e.staging().size(); })
      .def_property_readonly("staging_touched_bytes", [](const Engine& e) { return e.staging().touched_bytes(); },
                             "Bytes of the staging buffers written at least once (by the prefault or a save).")
      .def("commit_records", [](const Engine& e) {
             py::list out;
             for (const auto& r : e.commit_records()) {
               py::dict d;
               d["ckpt_id"] = r.ckpt_id;
               d["step"] = r.step;
               d["total_bytes"] = r.total_bytes;
               d["t_submit_ns"] = r.t_submit_ns;
               d["t_staged_ns"] = r.t_staged_ns;
               d["t_done_ns"] = r.t_done_ns;
               d["ok"] = r.ok;
               d["path"] = r.path;
               out.append(d);
             }
             return out;
           })
      .def("drain_trace", [](Engine& e) { return records_to_columns(e.tracer().drain()); },
           "Timing records since the last drain, as numpy columns.")
      .def_property_readonly("trace_dropped", [](Engine& e) { return e.tracer().dropped(); })
      .def("thread_names", [](Engine& e) { return e.tracer().thread_names(); });
}
