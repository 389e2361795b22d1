// A test-only NVTX tool: records domain creation, category and thread naming, range push/pop,
// start/end and marks as JSON lines, so tests can check NVTX emission without nsys.
//
// NVTX3 loads the library named by NVTX_INJECTION64_PATH at the first NVTX call of each
// module (our engine and the Python `nvtx` package each have their own NVTX globals) and calls
// InitializeInjectionNvtx2 with that module's export table; we overwrite the CORE and CORE2
// slots with the recorders below. Events go to the file named by CKPTLAB_NVTX_LOG.
//
// Build: g++ -std=c++17 -O2 -shared -fPIC -I<dir holding nvtx3/> nvtx_inject.cpp -o libnvtx_inject.so
//
// One JSON object per line, "ev" is one of:
//   domain {name}                              category {domain, id, name}
//   thread_name {tid, name}                    push {tid, domain, depth, msg, category, payload, t}
//   pop {tid, domain, depth, msg, t}           mark {tid, domain, msg, category, payload, t}
//   start {tid, domain, id, msg, ...}          end {tid, domain, id, t}
// `depth` is the nesting level in that domain on that thread (1 = outermost); a pop with no
// open range is logged with depth 0 and msg null.
#include <nvtx3/nvToolsExt.h>

#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Domain {
  std::string name;
};

std::mutex g_mu;  // guards g_domains, g_strings and the output file
std::map<std::string, std::unique_ptr<Domain>> g_domains;
std::vector<std::unique_ptr<std::string>> g_strings;
FILE* g_out = nullptr;
Domain g_default{""};  // the default domain (calls without a domain handle)
std::atomic<uint64_t> g_next_range{1};

struct Open {
  const Domain* domain;
  std::string msg;
};
thread_local std::vector<Open> t_stack;  // this thread's open push/pop ranges, all domains

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

long tid() { return static_cast<long>(::syscall(SYS_gettid)); }

std::string quote(const char* s) {
  if (!s) return "null";
  std::string out = "\"";
  for (const char* p = s; *p; ++p) {
    unsigned char c = static_cast<unsigned char>(*p);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

void emit(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_out) {
    const char* path = std::getenv("CKPTLAB_NVTX_LOG");
    g_out = std::fopen(path && *path ? path : "nvtx_events.jsonl", "a");
    if (!g_out) return;
  }
  std::fputs(line.c_str(), g_out);
  std::fputc('\n', g_out);
  std::fflush(g_out);  // the process may end without running destructors
}

const Domain* dom(nvtxDomainHandle_t d) { return d ? reinterpret_cast<const Domain*>(d) : &g_default; }

std::string message(const nvtxEventAttributes_t* a) {
  if (!a) return "null";
  switch (a->messageType) {
    case NVTX_MESSAGE_TYPE_ASCII: return quote(a->message.ascii);
    case NVTX_MESSAGE_TYPE_REGISTERED:
      return quote(reinterpret_cast<const std::string*>(a->message.registered)->c_str());
    case NVTX_MESSAGE_TYPE_UNICODE: return "\"<unicode>\"";
    default: return "null";
  }
}

std::string payload(const nvtxEventAttributes_t* a) {
  if (!a) return "null";
  char buf[64];
  switch (a->payloadType) {
    case NVTX_PAYLOAD_TYPE_UNSIGNED_INT64:
      std::snprintf(buf, sizeof(buf), "%llu", static_cast<unsigned long long>(a->payload.ullValue));
      return buf;
    case NVTX_PAYLOAD_TYPE_INT64:
      std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(a->payload.llValue));
      return buf;
    case NVTX_PAYLOAD_TYPE_DOUBLE:
      std::snprintf(buf, sizeof(buf), "%.17g", a->payload.dValue);
      return buf;
    case NVTX_PAYLOAD_TYPE_UNSIGNED_INT32:
      std::snprintf(buf, sizeof(buf), "%u", a->payload.uiValue);
      return buf;
    case NVTX_PAYLOAD_TYPE_INT32:
      std::snprintf(buf, sizeof(buf), "%d", a->payload.iValue);
      return buf;
    case NVTX_PAYLOAD_TYPE_FLOAT:
      std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(a->payload.fValue));
      return buf;
    default: return "null";
  }
}

std::string head(const char* ev, const Domain* d) {
  return std::string("{\"ev\":\"") + ev + "\",\"tid\":" + std::to_string(tid()) + ",\"domain\":" + quote(d->name.c_str());
}

std::string attrs(const nvtxEventAttributes_t* a) {
  return ",\"msg\":" + message(a) + ",\"category\":" + std::to_string(a ? a->category : 0) +
         ",\"payload\":" + payload(a) + ",\"color\":" + std::to_string(a ? a->color : 0);
}

int push(const Domain* d, const nvtxEventAttributes_t* a, const std::string& msg_json) {
  t_stack.push_back(Open{d, msg_json});
  int depth = 0;
  for (const Open& o : t_stack) depth += o.domain == d;
  emit(head("push", d) + ",\"depth\":" + std::to_string(depth) + (a ? attrs(a) : ",\"msg\":" + msg_json) +
       ",\"t\":" + std::to_string(now_ns()) + "}");
  return depth - 1;
}

int pop(const Domain* d) {
  int depth = 0;
  for (const Open& o : t_stack) depth += o.domain == d;
  std::string msg = "null";
  for (auto it = t_stack.rbegin(); it != t_stack.rend(); ++it) {
    if (it->domain == d) {
      msg = it->msg;
      t_stack.erase(std::next(it).base());
      break;
    }
  }
  emit(head("pop", d) + ",\"depth\":" + std::to_string(depth) + ",\"msg\":" + msg + ",\"t\":" +
       std::to_string(now_ns()) + "}");
  return depth - 1;
}

// ---- CORE2 (domain) callbacks ----
nvtxDomainHandle_t domain_create_a(const char* name) {
  std::string key = name ? name : "";
  Domain* d;
  bool created = false;
  {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_domains.find(key);
    if (it == g_domains.end()) {
      it = g_domains.emplace(key, std::make_unique<Domain>(Domain{key})).first;
      created = true;
    }
    d = it->second.get();
  }
  if (created) emit("{\"ev\":\"domain\",\"name\":" + quote(key.c_str()) + "}");
  return reinterpret_cast<nvtxDomainHandle_t>(d);
}
void domain_destroy(nvtxDomainHandle_t) {}  // handles are shared per name: keep them
nvtxStringHandle_t register_string_a(nvtxDomainHandle_t, const char* s) {
  std::lock_guard<std::mutex> lock(g_mu);
  g_strings.push_back(std::make_unique<std::string>(s ? s : ""));
  return reinterpret_cast<nvtxStringHandle_t>(g_strings.back().get());
}
void domain_name_category_a(nvtxDomainHandle_t d, uint32_t id, const char* name) {
  emit("{\"ev\":\"category\",\"domain\":" + quote(dom(d)->name.c_str()) + ",\"id\":" + std::to_string(id) +
       ",\"name\":" + quote(name) + "}");
}
int domain_push_ex(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) { return push(dom(d), a, message(a)); }
int domain_pop(nvtxDomainHandle_t d) { return pop(dom(d)); }
void domain_mark_ex(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) {
  emit(head("mark", dom(d)) + attrs(a) + ",\"t\":" + std::to_string(now_ns()) + "}");
}
nvtxRangeId_t domain_start_ex(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) {
  nvtxRangeId_t id = g_next_range.fetch_add(1);
  emit(head("start", dom(d)) + ",\"id\":" + std::to_string(id) + attrs(a) + ",\"t\":" + std::to_string(now_ns()) + "}");
  return id;
}
void domain_end(nvtxDomainHandle_t d, nvtxRangeId_t id) {
  emit(head("end", dom(d)) + ",\"id\":" + std::to_string(id) + ",\"t\":" + std::to_string(now_ns()) + "}");
}
nvtxResourceHandle_t resource_create(nvtxDomainHandle_t, nvtxResourceAttributes_t*) {
  static int dummy;
  return reinterpret_cast<nvtxResourceHandle_t>(&dummy);
}
void resource_destroy(nvtxResourceHandle_t) {}
void initialize(const void*) {}

// ---- CORE (default domain) callbacks ----
void name_os_thread_a(uint32_t id, const char* name) {
  emit("{\"ev\":\"thread_name\",\"tid\":" + std::to_string(id) + ",\"name\":" + quote(name) + "}");
}
void name_category_a(uint32_t id, const char* name) { domain_name_category_a(nullptr, id, name); }
int push_a(const char* msg) { return push(&g_default, nullptr, quote(msg)); }
int push_ex(const nvtxEventAttributes_t* a) { return push(&g_default, a, message(a)); }
int pop0() { return pop(&g_default); }
void mark_ex(const nvtxEventAttributes_t* a) { domain_mark_ex(nullptr, a); }
void mark_a(const char* msg) {
  emit(head("mark", &g_default) + ",\"msg\":" + quote(msg) + ",\"t\":" + std::to_string(now_ns()) + "}");
}
nvtxRangeId_t start_ex(const nvtxEventAttributes_t* a) { return domain_start_ex(nullptr, a); }
void end0(nvtxRangeId_t id) { domain_end(nullptr, id); }

template <typename F>
void set(NvtxFunctionTable table, unsigned int size, unsigned int id, F fn) {
  if (id <= size && table[id]) *table[id] = reinterpret_cast<NvtxFunctionPointer>(fn);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get) {
  auto* cb = static_cast<const NvtxExportTableCallbacks*>(get(NVTX_ETID_CALLBACKS));
  if (!cb || cb->struct_size < sizeof(NvtxExportTableCallbacks)) return 0;
  NvtxFunctionTable t = nullptr;
  unsigned int n = 0;
  if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &t, &n) && t) {
    set(t, n, NVTX_CBID_CORE_MarkEx, mark_ex);
    set(t, n, NVTX_CBID_CORE_MarkA, mark_a);
    set(t, n, NVTX_CBID_CORE_RangeStartEx, start_ex);
    set(t, n, NVTX_CBID_CORE_RangeEnd, end0);
    set(t, n, NVTX_CBID_CORE_RangePushEx, push_ex);
    set(t, n, NVTX_CBID_CORE_RangePushA, push_a);
    set(t, n, NVTX_CBID_CORE_RangePop, pop0);
    set(t, n, NVTX_CBID_CORE_NameCategoryA, name_category_a);
    set(t, n, NVTX_CBID_CORE_NameOsThreadA, name_os_thread_a);
  }
  if (cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &t, &n) && t) {
    set(t, n, NVTX_CBID_CORE2_DomainMarkEx, domain_mark_ex);
    set(t, n, NVTX_CBID_CORE2_DomainRangeStartEx, domain_start_ex);
    set(t, n, NVTX_CBID_CORE2_DomainRangeEnd, domain_end);
    set(t, n, NVTX_CBID_CORE2_DomainRangePushEx, domain_push_ex);
    set(t, n, NVTX_CBID_CORE2_DomainRangePop, domain_pop);
    set(t, n, NVTX_CBID_CORE2_DomainResourceCreate, resource_create);
    set(t, n, NVTX_CBID_CORE2_DomainResourceDestroy, resource_destroy);
    set(t, n, NVTX_CBID_CORE2_DomainNameCategoryA, domain_name_category_a);
    set(t, n, NVTX_CBID_CORE2_DomainRegisterStringA, register_string_a);
    set(t, n, NVTX_CBID_CORE2_DomainCreateA, domain_create_a);
    set(t, n, NVTX_CBID_CORE2_DomainDestroy, domain_destroy);
    set(t, n, NVTX_CBID_CORE2_Initialize, initialize);
  }
  return 1;
}
