// The SIMT emulator's runtime: device memory, the fiber scheduler that runs one block at a time,
// barrier and warp-collective resolution, and the C ABI the Rust side calls (src/backend/cuda/
// emulator.rs). See simt.hpp for what the emulator checks.
#include "simt.hpp"

#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace emu {
namespace {

enum class State { Runnable, Barrier, Warp, Finished };

struct Thread {
    ucontext_t ctx;
    uint3_t tid;
    unsigned linear = 0;
    State state = State::Runnable;
    const char* file = nullptr;
    int line = 0;
    // pending warp collective
    WarpOp op = SHFL_IDX;
    unsigned mask = 0;
    std::uint64_t value = 0;
    int arg = 0;
    int width = 32;
    std::uint64_t result = 0;
};

struct Launch {
    Trampoline run = nullptr;
    void** args = nullptr;
    const int* tags = nullptr;
    dim3_t grid{1, 1, 1}, block{1, 1, 1};
    uint3_t bid{0, 0, 0};
    std::vector<Thread> threads;
    Thread* current = nullptr;
    ucontext_t scheduler;
    bool faulted = false;
    std::string error;
    std::vector<unsigned char> smem, smem_shadow;
};

// Fiber stacks are reused across launches; pages never touched cost no memory.
constexpr std::size_t kStack = 256 * 1024;
std::vector<char*> g_stacks;
Launch* g_launch = nullptr;  // the launch being executed (under g_launch_mutex)
std::uint64_t g_epoch = 0;
std::mutex g_launch_mutex;

std::mutex g_alloc_mutex;
std::map<std::uint64_t, std::size_t> g_allocs;  // base address -> bytes

std::map<std::string, KernelInfo>& registry() {
    static std::map<std::string, KernelInfo> r;
    return r;
}

thread_local std::string t_last_error;

char* stack(std::size_t i) {
    while (g_stacks.size() <= i) {
        void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return nullptr;
        // A guard page at the low end turns a fiber stack overflow into a crash, not corruption.
        mprotect(p, 4096, PROT_NONE);
        g_stacks.push_back(static_cast<char*>(p));
    }
    return g_stacks[i];
}

void park() {
    Launch* L = g_launch;
    swapcontext(&L->current->ctx, &L->scheduler);
}

void fiber_entry() {
    Launch* L = g_launch;
    L->run(L->args, L->tags, false);
    L->current->state = State::Finished;
    swapcontext(&L->current->ctx, &L->scheduler);
}

std::string where(const Thread& t) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", g_launch->bid.x,
                  g_launch->bid.y, g_launch->bid.z, t.tid.x, t.tid.y, t.tid.z);
    return buf;
}

std::string site(const Thread& t) {
    return std::string(t.file ? t.file : "?") + ":" + std::to_string(t.line);
}

// Stops the launch with an error from scheduler context (no fiber running).
bool sched_fault(Launch* L, const std::string& msg) {
    L->faulted = true;
    L->error = msg;
    return false;
}

const char* op_name(WarpOp op) {
    switch (op) {
        case SHFL_IDX: return "__shfl_sync";
        case SHFL_XOR: return "__shfl_xor_sync";
        case SHFL_UP: return "__shfl_up_sync";
        case SHFL_DOWN: return "__shfl_down_sync";
        case BALLOT: return "__ballot_sync";
        case ALL: return "__all_sync";
        case ANY: return "__any_sync";
        case SYNCWARP: return "__syncwarp";
    }
    return "?";
}

// Resolves the warp collectives whose participants have all arrived. Returns true when some
// collective completed; faults on collectives that can never complete.
bool resolve_warps(Launch* L, bool* progressed) {
    const unsigned n = static_cast<unsigned>(L->threads.size());
    for (unsigned w = 0; w * 32 < n; ++w) {
        for (unsigned lane = 0; lane < 32 && w * 32 + lane < n; ++lane) {
            Thread& t = L->threads[w * 32 + lane];
            if (t.state != State::Warp)
                continue;
            if (!(t.mask >> lane & 1u))
                return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                          " with a mask that excludes the calling lane");
            bool ready = true;
            for (unsigned j = 0; j < 32; ++j) {
                if (!(t.mask >> j & 1u))
                    continue;
                if (w * 32 + j >= n)
                    return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                              " names lane " + std::to_string(j) +
                                              ", which does not exist in this block");
                const Thread& o = L->threads[w * 32 + j];
                if (o.state == State::Finished)
                    return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                              " waits for lane " + std::to_string(j) +
                                              ", which has exited");
                if (o.state != State::Warp) {
                    ready = false;
                    continue;
                }
                if (o.op != t.op || o.mask != t.mask || o.line != t.line || o.file != t.file)
                    return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                              " while lane " + std::to_string(j) + " is in " +
                                              op_name(o.op) + " at " + site(o) +
                                              " (divergent warp collective)");
            }
            if (!ready)
                continue;
            // Every named lane is here: compute each participant's result.
            std::uint64_t ballot = 0;
            for (unsigned j = 0; j < 32; ++j)
                if (t.mask >> j & 1u)
                    ballot |= (L->threads[w * 32 + j].value ? 1ull : 0ull) << j;
            for (unsigned j = 0; j < 32; ++j) {
                if (!(t.mask >> j & 1u))
                    continue;
                Thread& p = L->threads[w * 32 + j];
                const int width = p.width;
                if (width <= 0 || width > 32 || (width & (width - 1)))
                    return sched_fault(L, where(p) + ": shuffle width " + std::to_string(width) +
                                              " is not a power of two up to 32");
                const int seg = static_cast<int>(j) & ~(width - 1);
                int src = static_cast<int>(j);
                switch (p.op) {
                    case SHFL_IDX: src = seg + (p.arg & (width - 1)); break;
                    case SHFL_XOR: {
                        int s = static_cast<int>(j) ^ p.arg;
                        src = (s >= seg && s < seg + width) ? s : static_cast<int>(j);
                        break;
                    }
                    case SHFL_UP: {
                        int s = static_cast<int>(j) - p.arg;
                        src = s >= seg ? s : static_cast<int>(j);
                        break;
                    }
                    case SHFL_DOWN: {
                        int s = static_cast<int>(j) + p.arg;
                        src = s < seg + width ? s : static_cast<int>(j);
                        break;
                    }
                    default: break;
                }
                switch (p.op) {
                    case SHFL_IDX:
                    case SHFL_XOR:
                    case SHFL_UP:
                    case SHFL_DOWN:
                        if (!(p.mask >> src & 1u))
                            return sched_fault(L, where(p) + ": " + op_name(p.op) + " at " +
                                                      site(p) + " reads lane " +
                                                      std::to_string(src) +
                                                      ", which is not in the mask");
                        p.result = L->threads[w * 32 + src].value;
                        break;
                    case BALLOT: p.result = ballot; break;
                    case ALL: p.result = ballot == (p.mask & 0xffffffffull) ? 1 : 0; break;
                    case ANY: p.result = ballot != 0 ? 1 : 0; break;
                    case SYNCWARP: p.result = 0; break;
                }
            }
            for (unsigned j = 0; j < 32; ++j)
                if (t.mask >> j & 1u)
                    L->threads[w * 32 + j].state = State::Runnable;
            *progressed = true;
        }
    }
    return true;
}

// Runs one block to completion. Returns false (with L->error set) on a fault.
bool run_block(Launch* L) {
    ++g_epoch;
    std::fill(L->smem.begin(), L->smem.end(), 0xFF);
    std::fill(L->smem_shadow.begin(), L->smem_shadow.end(), 0);
    const dim3_t b = L->block;
    const unsigned n = b.x * b.y * b.z;
    L->threads.assign(n, Thread{});
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = L->threads[i];
        t.linear = i;
        t.tid = uint3_t{i % b.x, (i / b.x) % b.y, i / (b.x * b.y)};
        char* s = stack(i);
        if (!s)
            return sched_fault(L, "emulator: out of memory for fiber stacks");
        getcontext(&t.ctx);
        t.ctx.uc_stack.ss_sp = s;
        t.ctx.uc_stack.ss_size = kStack;
        t.ctx.uc_link = nullptr;
        makecontext(&t.ctx, fiber_entry, 0);
    }
    for (;;) {
        bool progressed = false;
        for (unsigned i = 0; i < n; ++i) {
            Thread& t = L->threads[i];
            if (t.state != State::Runnable)
                continue;
            L->current = &t;
            swapcontext(&L->scheduler, &t.ctx);
            L->current = nullptr;
            if (L->faulted)
                return false;
            progressed = true;
        }
        if (!resolve_warps(L, &progressed))
            return false;
        unsigned finished = 0, at_barrier = 0;
        const Thread* first_barrier = nullptr;
        const Thread* first_finished = nullptr;
        for (const Thread& t : L->threads) {
            if (t.state == State::Finished) {
                ++finished;
                if (!first_finished)
                    first_finished = &t;
            } else if (t.state == State::Barrier) {
                ++at_barrier;
                if (!first_barrier)
                    first_barrier = &t;
            }
        }
        if (finished == n)
            return true;
        if (at_barrier > 0 && at_barrier + finished == n) {
            if (finished > 0)
                return sched_fault(L, where(*first_barrier) + " waits in __syncthreads at " +
                                          site(*first_barrier) + ", which " +
                                          where(*first_finished) +
                                          " never reaches (it exited): divergent barrier");
            for (const Thread& t : L->threads)
                if (t.line != first_barrier->line || t.file != first_barrier->file)
                    return sched_fault(L, where(*first_barrier) + " waits in __syncthreads at " +
                                              site(*first_barrier) + " while " + where(t) +
                                              " waits at " + site(t) + ": divergent barrier");
            for (Thread& t : L->threads)
                t.state = State::Runnable;
            continue;
        }
        if (!progressed) {
            for (const Thread& t : L->threads)
                if (t.state == State::Warp)
                    return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                              " can never complete (a lane in its mask waits in "
                                              "__syncthreads): deadlock");
            return sched_fault(L, "emulator: no thread can make progress (deadlock)");
        }
    }
}

}  // namespace

// ---- services used by simt.hpp ----
void fault(const char* fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    Launch* L = g_launch;
    if (!L || !L->current) {
        std::fprintf(stderr, "flexp emulator fault outside a kernel: %s\n", buf);
        std::abort();
    }
    L->faulted = true;
    L->error = where(*L->current) + ": " + buf;
    // Abandon this fiber: the scheduler sees `faulted` and stops the launch.
    swapcontext(&L->current->ctx, &L->scheduler);
    std::abort();  // never resumed
}

const uint3_t& thread_idx() { return g_launch->current->tid; }
const uint3_t& block_idx() { return g_launch->bid; }
const dim3_t& block_dim() { return g_launch->block; }
const dim3_t& grid_dim() { return g_launch->grid; }
std::uint64_t block_epoch() { return g_epoch; }

void syncthreads(const char* file, int line) {
    Thread* t = g_launch->current;
    t->state = State::Barrier;
    t->file = file;
    t->line = line;
    park();
}

std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                      const char* file, int line) {
    Thread* t = g_launch->current;
    t->state = State::Warp;
    t->op = op;
    t->mask = mask;
    t->value = value;
    t->arg = arg;
    t->width = width;
    t->file = file;
    t->line = line;
    park();
    return t->result;
}

unsigned char* dyn_shared(std::size_t* bytes, unsigned char** shadow) {
    Launch* L = g_launch;
    *bytes = L->smem.size();
    *shadow = L->smem_shadow.data();
    return L->smem.data();
}

void lookup_alloc(std::uint64_t addr, const char** lo, const char** hi) {
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    auto it = g_allocs.upper_bound(addr);
    if (it != g_allocs.begin()) {
        --it;
        if (addr >= it->first && addr <= it->first + it->second) {
            *lo = reinterpret_cast<const char*>(it->first);
            *hi = reinterpret_cast<const char*>(it->first + it->second);
            return;
        }
    }
    // Still a fault inside the launch, but raised before any thread runs.
    g_launch->faulted = true;
    char buf[128];
    std::snprintf(buf, sizeof buf, "kernel argument 0x%llx points into no live allocation",
                  static_cast<unsigned long long>(addr));
    throw std::string(buf);
}

void arg_error(int index, const char* expected, int got) {
    static const char* names[] = {"a device pointer", "i32", "u32", "f32", "u64", "i64"};
    g_launch->faulted = true;
    throw std::string("argument ") + std::to_string(index) + ": the kernel takes " + expected +
        ", the host passed " + (got >= 0 && got < 6 ? names[got] : "an unknown type");
}

void register_kernel(const KernelInfo& k) { registry()[k.name] = k; }

}  // namespace emu

// ---- C ABI for the Rust device implementation ----
namespace emu {
namespace {
int fail(const std::string& msg) {
    t_last_error = msg;
    return 1;
}
bool span_ok(std::uint64_t addr, std::size_t bytes) {
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    auto it = g_allocs.upper_bound(addr);
    if (it == g_allocs.begin())
        return false;
    --it;
    return addr >= it->first && addr + bytes <= it->first + it->second;
}
}  // namespace
}  // namespace emu

using emu::fail;
using emu::g_alloc_mutex;
using emu::g_allocs;
using emu::registry;
using emu::span_ok;

extern "C" {

const char* flexp_emu_last_error() { return emu::t_last_error.c_str(); }

int flexp_emu_alloc(std::size_t bytes, std::uint64_t* out) {
    // Never hand out zero-sized or adjacent blocks: one byte of slack keeps bases distinct.
    void* p = std::malloc(bytes + 1);
    if (!p)
        return fail("emulator: out of host memory allocating " + std::to_string(bytes) + " bytes");
    std::memset(p, 0xFF, bytes + 1);
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    g_allocs[reinterpret_cast<std::uint64_t>(p)] = bytes;
    *out = reinterpret_cast<std::uint64_t>(p);
    return 0;
}

int flexp_emu_free(std::uint64_t ptr) {
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    auto it = g_allocs.find(ptr);
    if (it == g_allocs.end())
        return fail("emulator: free of an address that is not a live allocation");
    g_allocs.erase(it);
    std::free(reinterpret_cast<void*>(ptr));
    return 0;
}

int flexp_emu_write(std::uint64_t dst, const void* src, std::size_t bytes) {
    if (!span_ok(dst, bytes))
        return fail("emulator: host-to-device copy of " + std::to_string(bytes) +
                    " bytes outside the destination allocation");
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return 0;
}

int flexp_emu_read(void* dst, std::uint64_t src, std::size_t bytes) {
    if (!span_ok(src, bytes))
        return fail("emulator: device-to-host copy of " + std::to_string(bytes) +
                    " bytes outside the source allocation");
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return 0;
}

int flexp_emu_copy(std::uint64_t dst, std::uint64_t src, std::size_t bytes) {
    if (!span_ok(src, bytes) || !span_ok(dst, bytes))
        return fail("emulator: device-to-device copy of " + std::to_string(bytes) +
                    " bytes outside an allocation");
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return 0;
}

int flexp_emu_memset(std::uint64_t dst, int value, std::size_t bytes) {
    if (!span_ok(dst, bytes))
        return fail("emulator: memset of " + std::to_string(bytes) +
                    " bytes outside the allocation");
    std::memset(reinterpret_cast<void*>(dst), value, bytes);
    return 0;
}

int flexp_emu_kernel_count() { return static_cast<int>(registry().size()); }

const char* flexp_emu_kernel_name(int i) {
    int k = 0;
    for (auto& kv : registry())
        if (k++ == i)
            return kv.first.c_str();
    return nullptr;
}

// Runs `name` over the grid, one block after another. Returns 0, or 1 with the message in
// flexp_emu_last_error().
int flexp_emu_launch(const char* name, const unsigned* grid, const unsigned* block,
                     std::size_t smem_bytes, void** args, const int* tags, int nargs) {
    auto it = registry().find(name);
    if (it == registry().end())
        return fail(std::string("emulator: no kernel named `") + name + "`");
    const emu::KernelInfo& k = it->second;
    if (nargs != k.nargs)
        return fail(std::string("emulator: kernel `") + name + "` takes " +
                    std::to_string(k.nargs) + " arguments, the host passed " +
                    std::to_string(nargs));
    const unsigned threads = block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64)
        return fail(std::string("emulator: kernel `") + name + "`: block of " +
                    std::to_string(threads) + " threads is not launchable (1..1024, z <= 64)");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535)
        return fail(std::string("emulator: kernel `") + name + "`: invalid grid");
    if (smem_bytes > 227 * 1024)
        return fail(std::string("emulator: kernel `") + name + "`: " +
                    std::to_string(smem_bytes) + " bytes of dynamic shared memory exceed 227 KiB");

    std::lock_guard<std::mutex> g(emu::g_launch_mutex);
    emu::Launch L;
    L.run = k.run;
    L.args = args;
    L.tags = tags;
    L.grid = emu::dim3_t{grid[0], grid[1], grid[2]};
    L.block = emu::dim3_t{block[0], block[1], block[2]};
    L.smem.assign(smem_bytes, 0xFF);
    L.smem_shadow.assign(smem_bytes, 0);
    emu::g_launch = &L;
    // Bind arguments once up front so a bad argument is reported before any thread runs.
    try {
        k.run(args, tags, true);
        for (unsigned z = 0; z < grid[2]; ++z)
            for (unsigned y = 0; y < grid[1]; ++y)
                for (unsigned x = 0; x < grid[0]; ++x) {
                    L.bid = emu::uint3_t{x, y, z};
                    if (!emu::run_block(&L)) {
                        emu::g_launch = nullptr;
                        return fail(std::string("kernel `") + name + "`: " + L.error);
                    }
                }
    } catch (const std::string& e) {
        emu::g_launch = nullptr;
        return fail(std::string("kernel `") + name + "`: " + e);
    }
    emu::g_launch = nullptr;
    return 0;
}

}  // extern "C"
