// The SIMT emulator's runtime: device memory, the fiber scheduler that runs one block at a time,
// barrier and warp-collective resolution, and the C ABI the Rust side calls (src/backend/cuda/
// emulator.rs). See simt.hpp for what the emulator checks.
// Fibers switch with _setjmp/_longjmp between their own stacks. glibc's fortified longjmp
// refuses jumps to another stack, so fortification is off for this translation unit.
#undef _FORTIFY_SOURCE
#include "simt.hpp"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <limits>
#include <map>
#include <new>
#include <numeric>
#include <mutex>
#include <string>
#include <vector>

namespace emu {
namespace {

enum class State { Runnable, Barrier, Warp, Finished };

struct Thread {
    ucontext_t ctx;      // the fiber's first entry (makecontext)
    jmp_buf jb;          // where it parked since
    bool started = false;
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
    // Warp-sync vector clock over the lanes of this thread's warp: vc[lane] is the latest own
    // clock of `lane` that this thread is ordered after (through __syncwarp); vc[own lane] is
    // this thread's own clock, which advances at each __syncwarp it completes.
    std::uint32_t vc[32] = {};
    // cp.async copies issued and not yet committed, then the committed groups, oldest first.
    std::vector<AsyncCopy> open_copies;
    std::vector<std::vector<AsyncCopy>> copy_groups;
};

// xorshift64*: the seeded schedule's random source (quality is not the point; cost is).
struct Rng {
    std::uint64_t s = 0;
    std::uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 0x2545F4914F6CDD1Dull;
    }
    std::uint64_t below(std::uint64_t n) { return next() % n; }
};

struct Launch {
    Trampoline run = nullptr;
    void** args = nullptr;
    const int* tags = nullptr;
    dim3_t grid{1, 1, 1}, block{1, 1, 1};
    uint3_t bid{0, 0, 0};
    std::vector<Thread> threads;
    Thread* current = nullptr;
    jmp_buf scheduler;  // the scheduler's resume() frame for the fiber now running
    bool faulted = false;
    std::string error;
    std::vector<unsigned char> smem;
    // Race detection: the barrier interval the running block is in, the one it started with,
    // and where the interval began (for messages).
    std::uint32_t phase = 0, phase0 = 0;
    const char* phase_file = nullptr;
    int phase_line = 0;
    // (first phase, linear block index) of every block run so far, to name the block of a
    // conflicting global access.
    std::vector<std::pair<std::uint32_t, std::uint64_t>> block_starts;
    // Seeded schedule: 0 runs threads and blocks in index order and never yields.
    std::uint64_t seed = 0;
    Rng rng;
    std::vector<unsigned> order;
};

// Global-memory shadow: an open-addressing table keyed by element address. A cell belongs to the
// launch whose generation it carries, so starting a launch forgets the last one without a clear.
struct GCell {
    std::uint64_t key;
    std::uint32_t gen;
    Shadow s;
};
std::vector<GCell> g_cells;
std::size_t g_cells_used = 0;
std::uint32_t g_gen = 0;
// Phases: one process-wide counter (see simt.hpp's Access).
std::uint32_t g_phase = 0;
// Shadow of the dynamic shared memory; grows, never cleared (older phases read as unwritten).
std::vector<Shadow> g_dyn_shadow;

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
thread_local bool t_error_lost = false;

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

// Context switches. ucontext enters a fiber the first time (it is the portable way onto a new
// stack); after that, _setjmp/_longjmp switch without the signal-mask system call that
// swapcontext makes on every switch (which cost more than running the kernels). Both functions
// stay out of line so that the frames the jumps return to are simple and alive: the scheduler's
// resume() frame while its fiber runs, the fiber's park() frame while it is parked.
__attribute__((noinline)) void park() {
    Launch* L = g_launch;
    if (_setjmp(L->current->jb) == 0)
        _longjmp(L->scheduler, 1);
}

// Runs `t` until it parks, finishes or faults.
__attribute__((noinline)) void resume(Launch* L, Thread* t) {
    L->current = t;
    if (_setjmp(L->scheduler) == 0) {
        if (t->started)
            _longjmp(t->jb, 1);
        t->started = true;
        setcontext(&t->ctx);
    }
    L->current = nullptr;
}

void fiber_entry() {
    Launch* L = g_launch;
    // An exception must not unwind past the fiber's first frame (there is nothing above it):
    // it stops the launch like a fault.
    try {
        L->run(L->args, L->tags, false);
    } catch (const std::bad_alloc&) {
        L->faulted = true;
        L->error = "emulator: out of host memory (std::bad_alloc) inside the kernel";
    } catch (...) {
        L->faulted = true;
        L->error = "emulator: C++ exception inside the kernel";
    }
    L->current->state = State::Finished;
    _longjmp(L->scheduler, 1);
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
        case MMA: return "mma.sync";
        case LDMATRIX: return "ldmatrix";
    }
    return "?";
}

float half_to_float(unsigned short h) {
    const unsigned sign = (h >> 15) & 1u, exp = (h >> 10) & 31u, man = h & 1023u;
    float v;
    if (exp == 0)
        v = std::ldexp(static_cast<float>(man), -24);  // zero or subnormal
    else if (exp == 31)
        v = man ? NAN : INFINITY;
    else
        v = std::ldexp(static_cast<float>(man | 1024u), static_cast<int>(exp) - 25);
    return sign ? -v : v;
}

double mma_element(MmaType type, unsigned reg, int half) {
    const unsigned short bits = static_cast<unsigned short>(half ? reg >> 16 : reg & 0xffffu);
    if (type == MMA_BF16)
        return static_cast<double>(__uint_as_float(static_cast<unsigned>(bits) << 16));
    return static_cast<double>(half_to_float(bits));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 for warp `w`, every lane
// present. Fragments per the PTX ISA ("Matrix fragments for mma.m16n8k16 with floating point
// type"), g = lane / 4, t = lane % 4, the lower-indexed element in a register's low half:
//   A: a[0] = A[g][2t, 2t+1]  a[1] = A[g+8][2t, 2t+1]  a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B: b[0] = B[2t, 2t+1][g]  b[1] = B[2t+8, 2t+9][g]
//   C, D: c[0], c[1] = C[g][2t, 2t+1]  c[2], c[3] = C[g+8][2t, 2t+1]
// Every operand is gathered before any result is written (D may be C). Each D element is the
// exactly computed sum (bf16 and f16 products are exact in double) rounded once to f32; the
// hardware's adder rounds differently in the last bits, so kernel tests carry a tolerance.
void resolve_mma(Launch* L, unsigned w, MmaType type) {
    double A[16][16], B[16][8], C[16][8];
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaLane* f = from_bits<const MmaLane*>(L->threads[w * 32 + lane].value);
        const unsigned g = lane / 4, t = lane % 4;
        for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = mma_element(type, f->a[0], h);
            A[g + 8][2 * t + h] = mma_element(type, f->a[1], h);
            A[g][2 * t + 8 + h] = mma_element(type, f->a[2], h);
            A[g + 8][2 * t + 8 + h] = mma_element(type, f->a[3], h);
            B[2 * t + h][g] = mma_element(type, f->b[0], h);
            B[2 * t + 8 + h][g] = mma_element(type, f->b[1], h);
            C[g][2 * t + h] = f->c[h];
            C[g + 8][2 * t + h] = f->c[2 + h];
        }
    }
    for (unsigned lane = 0; lane < 32; ++lane) {
        const MmaLane* f = from_bits<const MmaLane*>(L->threads[w * 32 + lane].value);
        const unsigned g = lane / 4, t = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
            double acc = C[row][col];
            for (int k = 0; k < 16; ++k)
                acc += A[row][k] * B[k][col];
            f->d[i] = static_cast<float>(acc);
        }
    }
}

// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 for warp `w`: lane l receives in r[i]
// row l/4, columns 2(l%4) and 2(l%4)+1 of matrix i (of its transpose with .trans), whose rows
// lanes 8i..8i+7 addressed.
void resolve_ldmatrix(Launch* L, unsigned w, int arg) {
    const int count = arg & 15;
    const bool trans = (arg & 16) != 0;
    auto lane_of = [&](unsigned l) {
        return from_bits<const LdmatrixLane*>(L->threads[w * 32 + l].value);
    };
    unsigned out[32][4];
    for (unsigned l = 0; l < 32; ++l)
        for (int i = 0; i < count; ++i) {
            const unsigned r = l / 4, c = 2 * (l % 4);
            unsigned short lo, hi;
            if (trans) {
                lo = lane_of(8 * i + c)->row[r];
                hi = lane_of(8 * i + c + 1)->row[r];
            } else {
                lo = lane_of(8 * i + r)->row[c];
                hi = lane_of(8 * i + r)->row[c + 1];
            }
            out[l][i] = static_cast<unsigned>(lo) | static_cast<unsigned>(hi) << 16;
        }
    for (unsigned l = 0; l < 32; ++l)
        for (int i = 0; i < count; ++i)
            lane_of(l)->r[i] = out[l][i];
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
            if (t.op == MMA || t.op == LDMATRIX) {
                // .aligned: the whole warp executes the instruction together.
                if (t.mask != 0xffffffffu)
                    return sched_fault(L, where(t) + ": " + op_name(t.op) + " at " + site(t) +
                                              " needs all 32 lanes of the warp");
                if (t.op == MMA)
                    resolve_mma(L, w, static_cast<MmaType>(t.arg));
                else
                    resolve_ldmatrix(L, w, t.arg);
            }
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
                    case SYNCWARP:
                    case MMA:
                    case LDMATRIX: p.result = 0; break;
                }
            }
            if (t.op == SYNCWARP) {
                // __syncwarp orders memory among its lanes: each participant learns every other
                // participant's clock, then advances its own.
                std::uint32_t join[32] = {};
                for (unsigned j = 0; j < 32; ++j)
                    if (t.mask >> j & 1u)
                        for (unsigned k = 0; k < 32; ++k)
                            join[k] = std::max(join[k], L->threads[w * 32 + j].vc[k]);
                for (unsigned j = 0; j < 32; ++j)
                    if (t.mask >> j & 1u) {
                        Thread& p = L->threads[w * 32 + j];
                        std::memcpy(p.vc, join, sizeof join);
                        ++p.vc[j];
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
    L->phase0 = L->phase = ++g_phase;
    L->phase_file = nullptr;
    L->phase_line = 0;
    std::fill(L->smem.begin(), L->smem.end(), 0xFF);
    const dim3_t b = L->block;
    const unsigned n = b.x * b.y * b.z;
    L->threads.assign(n, Thread{});
    for (unsigned i = 0; i < n; ++i) {
        Thread& t = L->threads[i];
        t.linear = i;
        // Own clocks start at 1 and others' at 0: no lane is ordered after another's accesses
        // until a __syncwarp joins them.
        t.vc[i % 32] = 1;
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
    L->order.resize(n);
    for (unsigned i = 0; i < n; ++i)
        L->order[i] = i;
    for (;;) {
        bool progressed = false;
        if (L->seed)
            for (unsigned i = n; i > 1; --i)
                std::swap(L->order[i - 1], L->order[L->rng.below(i)]);
        for (unsigned k = 0; k < n; ++k) {
            Thread& t = L->threads[L->order[k]];
            if (t.state != State::Runnable)
                continue;
            resume(L, &t);
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
            // A new barrier interval: every access before it is ordered before every one after.
            L->phase = ++g_phase;
            L->phase_file = first_barrier->file;
            L->phase_line = first_barrier->line;
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
    char buf[1024];
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
    _longjmp(L->scheduler, 1);
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

void cp_async_issue(const AsyncCopy& c) {
    g_launch->current->open_copies.push_back(c);
}

void cp_async_commit() {
    Thread* t = g_launch->current;
    t->copy_groups.push_back(std::move(t->open_copies));
    t->open_copies.clear();
}

void cp_async_wait(int pending, const char* file, int line) {
    if (pending < 0)
        fault("cp.async.wait_group at %s:%d: negative group count %d", file, line, pending);
    Thread* t = g_launch->current;
    while (t->copy_groups.size() > static_cast<std::size_t>(pending)) {
        // Take the group out first: the shared writes below may yield to other fibers.
        std::vector<AsyncCopy> group = std::move(t->copy_groups.front());
        t->copy_groups.erase(t->copy_groups.begin());
        for (const AsyncCopy& c : group)
            for (int i = 0; i < c.bytes; ++i)
                c.dst[i] = c.data[i];
    }
}

unsigned char* dyn_shared(std::size_t* bytes, Shadow** shadow) {
    Launch* L = g_launch;
    *bytes = L->smem.size();
    *shadow = g_dyn_shadow.data();
    return L->smem.data();
}

// ---- race detection ----
namespace {

// Yields at a memory access with probability 1/16 under a seeded schedule, so that other
// threads' accesses really interleave with this one's.
inline void maybe_yield(Launch* L) {
    if (L->seed && (L->rng.next() & 15) == 0) {
        L->current->state = State::Runnable;
        park();
    }
}

std::string thread_name(const Launch* L, unsigned linear) {
    const dim3_t b = L->block;
    char buf[64];
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u)", linear % b.x, (linear / b.x) % b.y,
                  linear / (b.x * b.y));
    return buf;
}

std::string block_name(const Launch* L, std::uint32_t phase) {
    auto it = std::upper_bound(
        L->block_starts.begin(), L->block_starts.end(), phase,
        [](std::uint32_t p, const std::pair<std::uint32_t, std::uint64_t>& e) { return p < e.first; });
    if (it == L->block_starts.begin())
        return "block ?";
    const std::uint64_t id = std::prev(it)->second;
    const dim3_t g = L->grid;
    char buf[64];
    std::snprintf(buf, sizeof buf, "block (%llu,%llu,%llu)",
                  static_cast<unsigned long long>(id % g.x),
                  static_cast<unsigned long long>((id / g.x) % g.y),
                  static_cast<unsigned long long>(id / (static_cast<std::uint64_t>(g.x) * g.y)));
    return buf;
}

// What the detector knows about the thread making an access.
struct Me {
    Launch* L;
    Thread* t;
    Access a;
    // Records older than `floor` are forgotten (shared memory: earlier blocks).
    std::uint32_t floor;
    bool valid(const Access& x) const { return x.phase != 0 && x.phase >= floor; }
    // Does `x` happen before this access? Same thread; an earlier barrier interval of this block;
    // or a lane of this warp that has since taken part in a __syncwarp with this thread.
    bool ordered(const Access& x) const {
        if (x.phase < L->phase0)
            return false;  // another block of this launch: blocks are never ordered
        if (x.phase < L->phase || x.tid == a.tid)
            return true;
        return x.tid / 32 == a.tid / 32 && t->vc[x.tid % 32] >= x.clock;
    }
};

const char* verb(AccessKind k) {
    return k == ACC_READ ? "reads" : k == ACC_WRITE ? "writes" : "atomically updates";
}

// Describes a conflict with the earlier access `x` (which `what` says: "wrote", "read"...).
std::string conflict(const Me& me, AccessKind kind, const Access& x, const char* what) {
    std::string who = thread_name(me.L, x.tid);
    if (x.phase < me.L->phase0)
        return std::string(verb(kind)) + " a location that " + block_name(me.L, x.phase) + " " +
            who + " " + what + " in this launch (blocks of one launch are not ordered)";
    std::string since = me.L->phase_file ? std::string(" since the __syncthreads at ") +
                                               me.L->phase_file + ":" +
                                               std::to_string(me.L->phase_line)
                                         : std::string(" since the block started");
    return std::string(verb(kind)) + " a location that " + who + " " + what +
        " in the same barrier interval (no __syncthreads or __syncwarp between them" + since + ")";
}

// Checks one shadow cell and records the access in it. Returns the conflicting earlier access
// (and what it did, in `what`), or null.
inline const Access* check_cell(Shadow& c, const Me& me, AccessKind kind, const char** what) {
    if (kind == ACC_READ) {
        if (me.valid(c.w) && !me.ordered(c.w)) {
            *what = c.w.atomic ? "updated atomically" : "wrote";
            return &c.w;
        }
        if (!me.valid(c.r1) || me.ordered(c.r1)) {
            c.r1 = me.a;
            if (me.valid(c.r2) && me.ordered(c.r2))
                c.r2 = Access{};
        } else {
            c.r2 = me.a;
        }
        return nullptr;
    }
    if (me.valid(c.w) && !me.ordered(c.w) && !(kind == ACC_ATOMIC && c.w.atomic)) {
        *what = c.w.atomic ? "updated atomically" : "wrote";
        return &c.w;
    }
    *what = "read";
    if (me.valid(c.r1) && !me.ordered(c.r1))
        return &c.r1;
    if (me.valid(c.r2) && !me.ordered(c.r2))
        return &c.r2;
    c.w = me.a;
    c.r1 = c.r2 = Access{};
    return nullptr;
}

inline Me me_now(Launch* L, AccessKind kind, std::uint32_t floor) {
    Thread* t = L->current;
    Me me{L, t, Access{}, floor};
    me.a.phase = L->phase;
    me.a.clock = t->vc[t->linear % 32];
    me.a.tid = static_cast<std::uint16_t>(t->linear);
    me.a.atomic = kind == ACC_ATOMIC ? 1 : 0;
    return me;
}

void grow_cells() {
    std::vector<GCell> old;
    old.swap(g_cells);
    const std::size_t cap = old.empty() ? (std::size_t(1) << 16) : old.size() * 2;
    g_cells.assign(cap, GCell{0, 0, Shadow{}});
    g_cells_used = 0;
    for (const GCell& c : old)
        if (c.gen == g_gen) {
            std::size_t i = (c.key >> 2) * 0x9E3779B97F4A7C15ull & (cap - 1);
            while (g_cells[i].gen == g_gen)
                i = (i + 1) & (cap - 1);
            g_cells[i] = c;
            ++g_cells_used;
        }
}

Shadow& global_cell(std::uint64_t key) {
    if ((g_cells_used + 1) * 2 > g_cells.size())
        grow_cells();
    const std::size_t mask = g_cells.size() - 1;
    std::size_t i = (key >> 2) * 0x9E3779B97F4A7C15ull & mask;
    for (;;) {
        GCell& c = g_cells[i];
        if (c.gen != g_gen) {
            c.key = key;
            c.gen = g_gen;
            c.s = Shadow{};
            ++g_cells_used;
            return c.s;
        }
        if (c.key == key)
            return c.s;
        i = (i + 1) & mask;
    }
}

}  // namespace

void shared_access(const void* addr, std::size_t bytes, std::size_t align, Shadow* cells,
                   const void* base, const char* name, AccessKind kind) {
    Launch* L = g_launch;
    maybe_yield(L);
    const std::ptrdiff_t off =
        static_cast<const char*>(addr) - static_cast<const char*>(base);
    if (reinterpret_cast<std::uintptr_t>(addr) % align)
        fault("misaligned %zu-byte shared access at byte %td of `%s` (needs %zu-byte alignment)",
              bytes, off, name, align);
    const Me me = me_now(L, kind, L->phase0);
    // Bytes of one access usually share their history: the first byte's verdict carries over
    // to every byte whose cell held the same record.
    Shadow before{}, after{};
    for (std::size_t b = 0; b < bytes; ++b) {
        Shadow& c = cells[b];
        if (b > 0 && std::memcmp(&c, &before, sizeof c) == 0) {
            c = after;
            continue;
        }
        before = c;
        if (kind != ACC_WRITE && !me.valid(c.w))
            fault("read of shared memory that no thread of this block has written (`%s` byte %td)",
                  name, off + static_cast<std::ptrdiff_t>(b));
        const char* what = nullptr;
        if (const Access* x = check_cell(c, me, kind, &what))
            fault("shared-memory race on `%s` byte %td (%p): this thread %s", name,
                  off + static_cast<std::ptrdiff_t>(b), static_cast<const char*>(addr) + b,
                  conflict(me, kind, *x, what).c_str());
        after = c;
    }
}

void shared_async_write(const void* addr, std::size_t bytes, Shadow* cells, const void* base,
                        const char* name) {
    shared_access(addr, bytes, 1, cells, base, name, ACC_WRITE);
    for (std::size_t b = 0; b < bytes; ++b)
        cells[b].w = Access{};
}

void global_access(const void* addr, std::size_t bytes, std::size_t align, const char* lo,
                   const char* hi, AccessKind kind) {
    Launch* L = g_launch;
    maybe_yield(L);
    const std::ptrdiff_t off = static_cast<const char*>(addr) - lo;
    if (reinterpret_cast<std::uintptr_t>(addr) % align)
        fault("misaligned %zu-byte global access at byte %td of a %td-byte allocation (needs "
              "%zu-byte alignment)",
              bytes, off, hi - lo, align);
    const Me me = me_now(L, kind, 1);
    // One cell per element address; a vector access (float4, double) also checks the cell of
    // every 4-byte word it covers, so it meets the scalar accesses to the same words.
    const std::size_t step = bytes > 4 && bytes % 4 == 0 ? 4 : bytes;
    for (std::size_t o = 0; o < bytes; o += step) {
        const char* a = static_cast<const char*>(addr) + o;
        Shadow& c = global_cell(reinterpret_cast<std::uint64_t>(a));
        const char* what = nullptr;
        if (const Access* x = check_cell(c, me, kind, &what))
            fault("global-memory race at byte %td of a %td-byte allocation (%p): this thread %s",
                  off + static_cast<std::ptrdiff_t>(o), hi - lo, static_cast<const void*>(a),
                  conflict(me, kind, *x, what).c_str());
    }
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
//
// Every entry point catches every C++ exception (std::bad_alloc included) and turns it into an
// error return: an exception unwinding into Rust would be undefined behaviour.
namespace emu {
namespace {
int fail(const std::string& msg) noexcept {
    try {
        t_last_error = msg;
        t_error_lost = false;
    } catch (...) {
        t_error_lost = true;
    }
    return 1;
}
int fail_current_exception() noexcept {
    try {
        throw;
    } catch (const std::bad_alloc&) {
        return fail("emulator: out of host memory (std::bad_alloc)");
    } catch (const std::string& e) {
        return fail(e);
    } catch (const std::exception& e) {
        return fail(std::string("emulator: C++ exception: ") + e.what());
    } catch (...) {
        return fail("emulator: unknown C++ exception");
    }
}
bool span_ok(std::uint64_t addr, std::size_t bytes) {
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    auto it = g_allocs.upper_bound(addr);
    if (it == g_allocs.begin())
        return false;
    --it;
    return addr >= it->first && addr + bytes <= it->first + it->second;
}
// Dynamic shared memory per block for a target architecture (sm_XY as XY), or 0 if unknown.
std::size_t smem_limit(unsigned arch) {
    switch (arch) {
        case 80:
        case 87: return 163 * 1024;
        case 86:
        case 89: return 99 * 1024;
        case 90: return 227 * 1024;
        default: return 0;
    }
}
}  // namespace
}  // namespace emu

using emu::fail;
using emu::fail_current_exception;
using emu::g_alloc_mutex;
using emu::g_allocs;
using emu::registry;
using emu::span_ok;

#define EMU_GUARD_BEGIN try {
#define EMU_GUARD_END            \
    }                            \
    catch (...) {                \
        return fail_current_exception(); \
    }

extern "C" {

const char* flexp_emu_last_error() {
    if (emu::t_error_lost)
        return "emulator: an error occurred but its message could not be stored (out of memory)";
    return emu::t_last_error.c_str();
}

int flexp_emu_alloc(std::size_t bytes, std::uint64_t* out) {
    EMU_GUARD_BEGIN
    // cudaMalloc aligns to 256 bytes; so does this, so alignment checks see what a GPU would.
    // One byte of slack keeps zero-sized blocks distinct.
    void* p = nullptr;
    // bytes + 1 must not wrap (a wrapped size would register a huge allocation over a tiny one).
    if (bytes >= (std::numeric_limits<std::size_t>::max() >> 1) ||
        posix_memalign(&p, 256, bytes + 1) != 0 || !p)
        return fail("emulator: out of host memory allocating " + std::to_string(bytes) + " bytes");
    std::memset(p, 0xFF, bytes + 1);
    try {
        std::lock_guard<std::mutex> g(g_alloc_mutex);
        g_allocs[reinterpret_cast<std::uint64_t>(p)] = bytes;
    } catch (...) {
        std::free(p);
        throw;
    }
    *out = reinterpret_cast<std::uint64_t>(p);
    return 0;
    EMU_GUARD_END
}

int flexp_emu_free(std::uint64_t ptr) {
    EMU_GUARD_BEGIN
    // A launch running on another thread holds bounds into live allocations: the memory may only
    // go back to the host allocator between launches (a free during one waits for it to end).
    std::lock_guard<std::mutex> launch(emu::g_launch_mutex);
    std::lock_guard<std::mutex> g(g_alloc_mutex);
    auto it = g_allocs.find(ptr);
    if (it == g_allocs.end())
        return fail("emulator: free of an address that is not a live allocation");
    g_allocs.erase(it);
    std::free(reinterpret_cast<void*>(ptr));
    return 0;
    EMU_GUARD_END
}

int flexp_emu_write(std::uint64_t dst, const void* src, std::size_t bytes) {
    EMU_GUARD_BEGIN
    if (!span_ok(dst, bytes))
        return fail("emulator: host-to-device copy of " + std::to_string(bytes) +
                    " bytes outside the destination allocation");
    std::memcpy(reinterpret_cast<void*>(dst), src, bytes);
    return 0;
    EMU_GUARD_END
}

int flexp_emu_read(void* dst, std::uint64_t src, std::size_t bytes) {
    EMU_GUARD_BEGIN
    if (!span_ok(src, bytes))
        return fail("emulator: device-to-host copy of " + std::to_string(bytes) +
                    " bytes outside the source allocation");
    std::memcpy(dst, reinterpret_cast<const void*>(src), bytes);
    return 0;
    EMU_GUARD_END
}

int flexp_emu_copy(std::uint64_t dst, std::uint64_t src, std::size_t bytes) {
    EMU_GUARD_BEGIN
    if (!span_ok(src, bytes) || !span_ok(dst, bytes))
        return fail("emulator: device-to-device copy of " + std::to_string(bytes) +
                    " bytes outside an allocation");
    std::memmove(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), bytes);
    return 0;
    EMU_GUARD_END
}

int flexp_emu_memset(std::uint64_t dst, int value, std::size_t bytes) {
    EMU_GUARD_BEGIN
    if (!span_ok(dst, bytes))
        return fail("emulator: memset of " + std::to_string(bytes) +
                    " bytes outside the allocation");
    std::memset(reinterpret_cast<void*>(dst), value, bytes);
    return 0;
    EMU_GUARD_END
}

int flexp_emu_kernel_count() {
    EMU_GUARD_BEGIN
    return static_cast<int>(registry().size());
    EMU_GUARD_END
}

const char* flexp_emu_kernel_name(int i) {
    try {
        int k = 0;
        for (auto& kv : registry())
            if (k++ == i)
                return kv.first.c_str();
    } catch (...) {
    }
    return nullptr;
}

// Dynamic shared memory limit for `arch` (e.g. 80 for sm_80), or 0 for an unknown architecture.
std::size_t flexp_emu_smem_limit(unsigned arch) { return emu::smem_limit(arch); }

// Runs `name` over the grid, one block after another. `seed` 0 runs blocks and threads in index
// order; any other value shuffles the block order, the order threads resume in, and makes threads
// yield at memory accesses, all reproducibly from the seed. `arch` (80 for sm_80, 90 for sm_90)
// sets the dynamic shared memory limit. Returns 0, or 1 with the message in
// flexp_emu_last_error().
int flexp_emu_launch(const char* name, const unsigned* grid, const unsigned* block,
                     std::size_t smem_bytes, void** args, const int* tags, int nargs,
                     std::uint64_t seed, unsigned arch) {
    EMU_GUARD_BEGIN
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
    const std::size_t limit = emu::smem_limit(arch);
    if (limit == 0)
        return fail("emulator: unknown target architecture sm_" + std::to_string(arch));
    if (smem_bytes > limit)
        return fail(std::string("emulator: kernel `") + name + "`: " +
                    std::to_string(smem_bytes) +
                    " bytes of dynamic shared memory exceed the " + std::to_string(limit / 1024) +
                    " KiB per block of sm_" + std::to_string(arch));

    std::lock_guard<std::mutex> g(emu::g_launch_mutex);
    // Phases must stay unique: a process would need 4e9 barrier intervals to exhaust them.
    if (emu::g_phase > 0xF0000000u)
        return fail("emulator: race-detector phase counter exhausted in this process");
    emu::Launch L;
    L.run = k.run;
    L.args = args;
    L.tags = tags;
    L.grid = emu::dim3_t{grid[0], grid[1], grid[2]};
    L.block = emu::dim3_t{block[0], block[1], block[2]};
    L.smem.assign(smem_bytes, 0xFF);
    if (emu::g_dyn_shadow.size() < smem_bytes)
        emu::g_dyn_shadow.resize(smem_bytes, emu::Shadow{});
    L.seed = seed;
    L.rng.s = seed ? seed : 1;
    if (++emu::g_gen == 0) {
        // Generations wrapped: stale cells could look current, so forget them all.
        emu::g_cells.clear();
        emu::g_cells_used = 0;
        emu::g_gen = 1;
    }
    emu::g_cells_used = 0;
    const std::uint64_t nblocks = static_cast<std::uint64_t>(grid[0]) * grid[1] * grid[2];
    // Seeded block order: a shuffle, or for huge grids a random affine permutation.
    std::vector<std::uint64_t> shuffled;
    std::uint64_t stride = 1, offset = 0;
    if (seed) {
        if (nblocks <= (1u << 20)) {
            shuffled.resize(nblocks);
            for (std::uint64_t i = 0; i < nblocks; ++i)
                shuffled[i] = i;
            for (std::uint64_t i = nblocks; i > 1; --i)
                std::swap(shuffled[i - 1], shuffled[L.rng.below(i)]);
        } else {
            offset = L.rng.below(nblocks);
            do
                stride = 1 + L.rng.below(nblocks - 1);
            while (std::gcd(stride, nblocks) != 1);
        }
    }
    emu::g_launch = &L;
    struct Reset {
        ~Reset() { emu::g_launch = nullptr; }
    } reset;
    // Bind arguments once up front so a bad argument is reported before any thread runs.
    try {
        k.run(args, tags, true);
        for (std::uint64_t i = 0; i < nblocks; ++i) {
            const std::uint64_t id = shuffled.empty() ? (i * stride + offset) % nblocks : shuffled[i];
            L.bid = emu::uint3_t{static_cast<unsigned>(id % grid[0]),
                                 static_cast<unsigned>(id / grid[0] % grid[1]),
                                 static_cast<unsigned>(id / grid[0] / grid[1])};
            L.block_starts.emplace_back(emu::g_phase + 1, id);
            if (!emu::run_block(&L))
                return fail(std::string("kernel `") + name + "`: " + L.error);
        }
    } catch (const std::string& e) {
        return fail(std::string("kernel `") + name + "`: " + e);
    }
    return 0;
    EMU_GUARD_END
}

}  // extern "C"
