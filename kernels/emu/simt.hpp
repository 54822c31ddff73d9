// SIMT emulation header: lets kernels/*.cu compile as ordinary C++ and run on the CPU.
//
// Every CUDA thread of a block becomes a fiber (its own stack, entered through ucontext, then
// switched with _setjmp/_longjmp) run by a scheduler in emu_runtime.cpp. A fiber runs until it
// reaches a point that needs other threads (__syncthreads, a warp shuffle or vote, __syncwarp)
// or, under a seeded schedule, chooses to yield at a memory access; the scheduler releases the
// barrier once every thread that must arrive has arrived. That gives the real semantics of
// barriers and warp collectives without one OS thread per CUDA thread.
//
// The emulator is stricter than a GPU on purpose. It faults (and the launch returns an error
// naming the kernel, block and thread, and where it helps the file and line) on:
// - a global-memory access outside the allocation the pointer came from (gmem<T> carries the
//   allocation's bounds), or through a pointer to freed or never-allocated memory;
// - a misaligned access, global or shared: every element must be aligned to its type's
//   alignment (16 bytes for a float4 vector load through gmem_cast<float4>); allocations are
//   256-byte aligned like cudaMalloc's;
// - a data race, on shared and on global memory (below);
// - a __syncthreads that some thread of the block does not reach, or that threads reach at
//   different call sites;
// - a warp collective whose mask names a lane that exited, does not exist, or waits elsewhere;
// - a read of shared memory that no thread of this block has written (shared memory starts as
//   garbage on a GPU; here it is tracked byte by byte and forgotten for every block);
// - an out-of-bounds index into a static or dynamic shared array;
// - dynamic shared memory above the target architecture's per-block limit (the launch is
//   refused: sm_80 163 KiB, the default because it is the strictest target; sm_86/sm_89 99 KiB;
//   sm_90 227 KiB). Static shared arrays are not counted here: ptxas checks them (48 KiB).
// Fresh device allocations are filled with 0xFF bytes (NaN for floats) so that reading memory
// nobody initialised shows up in results instead of reading as zero.
//
// Race detection. What orders two accesses of one block, as CUDA defines it:
// - program order within a thread;
// - __syncthreads: every access before it is ordered before every access after it. The block's
//   time is cut into barrier intervals ("phases"), numbered by a process-wide counter;
// - __syncwarp(mask): orders memory among the lanes it names. Each thread keeps a vector clock
//   over the 32 lanes of its warp, joined at every completed __syncwarp; an access by lane j is
//   ordered before a later access by lane k of the same warp, in the same phase, iff k has
//   since completed a __syncwarp together with j (directly or through other lanes).
// Shuffles and votes synchronise control flow but not memory (CUDA does not promise that they
// order memory), and nothing orders two blocks of one launch.
// Two accesses to the same byte (shared) or element address (global) race when they are not
// ordered, come from different threads, and at least one writes, unless both are atomic
// (atomicAdd, atomicMax, atomicMin, atomicExch: they never race with each other, only with plain
// accesses). Each shadow cell keeps the last write and up to two reads since it (the first read
// of the interval and the latest read by another thread): an access conflicting with the last
// write (the last atomic, for a run of atomics) is always found, and a write-after-read
// conflict may be missed only when three or more threads read one location in a phase. Shared memory has a shadow cell per byte; global memory
// a hash table keyed by element address, per launch, where a vector access of 8 or 16 bytes
// also takes the cell of each 4-byte word it covers (so a float4 load meets the float stores to
// its words; sub-word accesses at different addresses, e.g. two bf16 halves of one word, are
// separate locations, as on the GPU).
//
// Schedules. With schedule seed 0 blocks run in index order and each thread runs until it must
// wait. Any other seed shuffles the block order, shuffles the order runnable threads resume in
// at every scheduling round, and makes a thread yield at a global or shared access with
// probability 1/16, so that accesses of different threads really interleave. The seed comes
// with each launch (flexp_emu_launch), so a run is reproducible. Race reports do not depend on
// the schedule (the detector reasons about what orders accesses, not about what happened to run
// first), but which of the two conflicting accesses is reported as the second one does.
//
// Fast math. __expf, __logf, __fdividef and rsqrtf return what the GPU's approximate
// instructions return, within CUDA's documented error bounds, not libm's correctly rounded
// values (see the math built-ins below).
//
// Runtime safety (emu_runtime.cpp): every C entry point catches every C++ exception and returns
// it as an error; an exception inside a kernel stops the launch like a fault; freeing device
// memory while a launch runs on another thread waits for the launch to end.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>

namespace emu {

struct uint3_t {
    unsigned x, y, z;
};
struct dim3_t {
    unsigned x, y, z;
};

// ---- runtime services (emu_runtime.cpp) ----
[[noreturn]] void fault(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
const uint3_t& thread_idx();
const uint3_t& block_idx();
const dim3_t& block_dim();
const dim3_t& grid_dim();
std::uint64_t block_epoch();
void syncthreads(const char* file, int line);

enum WarpOp : int {
    SHFL_IDX, SHFL_XOR, SHFL_UP, SHFL_DOWN, BALLOT, ALL, ANY, SYNCWARP,
    // Tensor-core instructions (tensor_core.cuh): the value is a pointer to the lane's operands.
    MMA,       // arg: MmaType
    LDMATRIX,  // arg: matrices (1, 2, 4) | 16 if transposed
};
std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                      const char* file, int line);
struct Shadow;
// Bounds of the dynamic shared memory of the running block and its shadow (one cell per byte).
unsigned char* dyn_shared(std::size_t* bytes, Shadow** shadow);

// ---- race detection (checked in emu_runtime.cpp) ----
// One access as the race detector remembers it: the barrier interval ("phase") it happened in,
// the thread's own warp-sync clock at that moment, and the thread. Phases are numbered by one
// process-wide counter that advances at every block start and every released __syncthreads, so a
// phase names one barrier interval of one block and records of earlier blocks are simply older.
struct Access {
    std::uint32_t phase;  // 0: no such access
    std::uint32_t clock;
    std::uint16_t tid;    // linear thread index in its block
    std::uint16_t atomic; // 1: an atomic read-modify-write (does not race with other atomics)
};
// Per byte (shared memory) or per element address (global memory): the last write and up to two
// reads since it (the first reader of the interval and the latest reader from another thread).
struct Shadow {
    Access w, r1, r2;
};
enum AccessKind : int { ACC_READ = 0, ACC_WRITE = 1, ACC_ATOMIC = 2 };
// Checks (and records) an access of `bytes` bytes at `addr` of the shared array `name`
// (`base` is its first byte, `cells` the shadow of addr's first byte); faults on a race, on a
// read of bytes no thread of the block wrote, and on misalignment.
void shared_access(const void* addr, std::size_t bytes, std::size_t align, Shadow* cells,
                   const void* base, const char* name, AccessKind kind);
// A cp.async's write to shared memory at issue: checked like a write (the hardware may land it at
// once, so it races with every access not ordered before the issue), then the bytes are marked
// unwritten until the wait that retires the copy writes them for real.
void shared_async_write(const void* addr, std::size_t bytes, Shadow* cells, const void* base,
                        const char* name);
// The same for global memory: `lo`/`hi` bound the allocation `addr` lies in.
void global_access(const void* addr, std::size_t bytes, std::size_t align, const char* lo,
                   const char* hi, AccessKind kind);

template <class T>
struct gmem;

// A reference to one element of global memory. Reads and writes go through the race detector,
// which a plain T& could not tell apart.
template <class T>
struct gmem_ref {
    T* p;
    const char* lo;
    const char* hi;
    using value_type = typename std::remove_const<T>::type;
    gmem_ref(T* p_, const char* lo_, const char* hi_) : p(p_), lo(lo_), hi(hi_) {}
    gmem_ref(const gmem_ref&) = default;
    operator value_type() const {
        global_access(p, sizeof(T), alignof(T), lo, hi, ACC_READ);
        return *p;
    }
    gmem_ref& operator=(value_type x) {
        global_access(p, sizeof(T), alignof(T), lo, hi, ACC_WRITE);
        *p = x;
        return *this;
    }
    gmem_ref& operator=(const gmem_ref& o) { return *this = static_cast<value_type>(o); }
    gmem_ref& operator+=(value_type x) { return *this = static_cast<value_type>(*this) + x; }
    gmem_ref& operator-=(value_type x) { return *this = static_cast<value_type>(*this) - x; }
    gmem_ref& operator*=(value_type x) { return *this = static_cast<value_type>(*this) * x; }
    gmem_ref& operator/=(value_type x) { return *this = static_cast<value_type>(*this) / x; }
    // `&x[i]` stays a bounds-checked pointer (for atomics and pointer arithmetic).
    gmem<T> operator&() const;
    // Atomic read-modify-write (atomicAdd and friends): one access, ordered with other atomics.
    template <class F>
    value_type rmw(F f) {
        global_access(p, sizeof(T), alignof(T), lo, hi, ACC_ATOMIC);
        value_type old = *p;
        *p = f(old);
        return old;
    }
};

// ---- global memory: a pointer that knows its allocation ----
template <class T>
struct gmem {
    T* p = nullptr;
    const char* lo = nullptr;
    const char* hi = nullptr;

    gmem() = default;
    gmem(std::nullptr_t) {}
    gmem(T* p_, const char* lo_, const char* hi_) : p(p_), lo(lo_), hi(hi_) {}
    template <class U, class = typename std::enable_if<std::is_convertible<U*, T*>::value>::type>
    gmem(const gmem<U>& o) : p(o.p), lo(o.lo), hi(o.hi) {}

    gmem_ref<T> operator[](std::ptrdiff_t i) const {
        const char* a = reinterpret_cast<const char*>(p + i);
        if (lo == nullptr)
            fault("global access through a null pointer (element %td)", i);
        if (a < lo || a + sizeof(T) > hi)
            fault("out-of-bounds global access: element %td is byte %td of a %td-byte allocation", i,
                  a - lo, hi - lo);
        return gmem_ref<T>(p + i, lo, hi);
    }
    gmem_ref<T> operator*() const { return (*this)[0]; }
    gmem operator+(std::ptrdiff_t i) const { return gmem(p + i, lo, hi); }
    gmem operator-(std::ptrdiff_t i) const { return gmem(p - i, lo, hi); }
    std::ptrdiff_t operator-(const gmem& o) const { return p - o.p; }
    gmem& operator+=(std::ptrdiff_t i) {
        p += i;
        return *this;
    }
    gmem& operator-=(std::ptrdiff_t i) {
        p -= i;
        return *this;
    }
    gmem& operator++() {
        ++p;
        return *this;
    }
    explicit operator bool() const { return p != nullptr; }
    bool operator==(std::nullptr_t) const { return p == nullptr; }
    bool operator!=(std::nullptr_t) const { return p != nullptr; }
};

template <class T>
gmem<T> gmem_ref<T>::operator&() const {
    return gmem<T>(p, lo, hi);
}

// Reinterprets a global pointer as another element type (vector loads: gmem_cast<float4>(x)).
// The bounds stay those of the allocation; each access checks its alignment.
template <class U, class T>
gmem<U> gmem_cast(gmem<T> g) {
    return gmem<U>(reinterpret_cast<U*>(g.p), g.lo, g.hi);
}

// ---- shared memory: values with a per-byte shadow (written? by whom, in which interval) ----
template <class T>
struct shared_ref {
    T* v;
    Shadow* w;  // sizeof(T) shadow cells
    const void* base;
    const char* name;
    operator T() const {
        shared_access(v, sizeof(T), alignof(T), w, base, name, ACC_READ);
        return *v;
    }
    shared_ref& operator=(T x) {
        shared_access(v, sizeof(T), alignof(T), w, base, name, ACC_WRITE);
        *v = x;
        return *this;
    }
    shared_ref& operator=(const shared_ref& o) { return *this = static_cast<T>(o); }
    shared_ref& operator+=(T x) { return *this = static_cast<T>(*this) + x; }
    shared_ref& operator-=(T x) { return *this = static_cast<T>(*this) - x; }
    shared_ref& operator*=(T x) { return *this = static_cast<T>(*this) * x; }
    shared_ref& operator/=(T x) { return *this = static_cast<T>(*this) / x; }
    template <class F>
    T rmw(F f) {
        shared_access(v, sizeof(T), alignof(T), w, base, name, ACC_ATOMIC);
        T old = *v;
        *v = f(old);
        return old;
    }
};

// A view into shared memory (static array or dynamic buffer) with bounds.
template <class T>
struct shared_ptr {
    T* p;
    Shadow* w;          // shadow cell of p[0]'s first byte
    std::ptrdiff_t lo;  // elements available before p (negative offsets allowed down to -lo)
    std::ptrdiff_t n;   // elements available from p
    const void* base;   // first byte of the whole array (for messages and offsets)
    const char* name;
    shared_ref<T> operator[](std::ptrdiff_t i) const {
        if (i < -lo || i >= n)
            fault("out-of-bounds shared access: element %td of a %td-element array", i + lo, lo + n);
        return shared_ref<T>{p + i, w + i * static_cast<std::ptrdiff_t>(sizeof(T)), base, name};
    }
    shared_ptr operator+(std::ptrdiff_t i) const {
        return shared_ptr{p + i, w + i * static_cast<std::ptrdiff_t>(sizeof(T)), lo + i, n - i,
                          base, name};
    }
    shared_ptr operator-(std::ptrdiff_t i) const { return *this + (-i); }
    shared_ref<T> operator*() const { return (*this)[0]; }
};

template <class T, std::size_t N>
struct shared_array {
    // 16-byte aligned like the GPU's (common.cuh declares static shared arrays __align__(16)), so
    // ldmatrix and 16-byte cp.async can be checked against absolute addresses.
    alignas(16) T data[N];
    // One cell per byte, on the heap: these arrays are thread_local, and glibc carves static TLS
    // out of each thread's stack. Never reset: records of earlier blocks carry older phases and
    // read as "not written".
    std::unique_ptr<Shadow[]> shadow;
    std::uint64_t epoch = ~std::uint64_t(0);
    // Shared memory lives for one block: a new block sees garbage again.
    void refresh() {
        if (!shadow)
            shadow.reset(new Shadow[N * sizeof(T)]());
        if (epoch != block_epoch()) {
            std::memset(static_cast<void*>(data), 0xFF, sizeof(data));
            epoch = block_epoch();
        }
    }
    shared_ptr<T> ptr(const char* name) {
        refresh();
        return shared_ptr<T>{data, shadow.get(), 0, static_cast<std::ptrdiff_t>(N), data, name};
    }
};

template <class T>
shared_ptr<T> dyn_shared_as(const char* name) {
    std::size_t bytes = 0;
    Shadow* shadow = nullptr;
    unsigned char* base = dyn_shared(&bytes, &shadow);
    return shared_ptr<T>{reinterpret_cast<T*>(base), shadow, 0,
                         static_cast<std::ptrdiff_t>(bytes / sizeof(T)), base, name};
}

// Reinterprets a shared view as another element type (for carving one dynamic buffer into parts).
template <class U, class T>
shared_ptr<U> shared_cast(shared_ptr<T> s) {
    std::ptrdiff_t bytes_before = s.lo * static_cast<std::ptrdiff_t>(sizeof(T));
    std::ptrdiff_t bytes_after = s.n * static_cast<std::ptrdiff_t>(sizeof(T));
    return shared_ptr<U>{reinterpret_cast<U*>(s.p), s.w,
                         bytes_before / static_cast<std::ptrdiff_t>(sizeof(U)),
                         bytes_after / static_cast<std::ptrdiff_t>(sizeof(U)), s.base, s.name};
}

template <class T>
inline std::uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp collectives move at most 8 bytes");
    std::uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(std::uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

#define EMU_SHFL_OVERLOADS(T)                                                                  \
    inline T shfl(WarpOp op, const char* f, int l, unsigned mask, T v, int arg, int width = 32) { \
        return from_bits<T>(warp_op(op, mask, to_bits(v), arg, width, f, l));                  \
    }
EMU_SHFL_OVERLOADS(float)
EMU_SHFL_OVERLOADS(double)
EMU_SHFL_OVERLOADS(int)
EMU_SHFL_OVERLOADS(unsigned)
EMU_SHFL_OVERLOADS(long long)
EMU_SHFL_OVERLOADS(unsigned long long)
#undef EMU_SHFL_OVERLOADS

// ---- tensor-core instructions (the models behind kernels/tensor_core.cuh) ----
// mma.sync.m16n8k16 and ldmatrix are warp collectives over all 32 lanes (PTX's .aligned): each
// lane parks with a pointer to its operands and the scheduler, once every lane has arrived,
// gathers the warp's fragments, computes and scatters the results (emu_runtime.cpp). Fragment
// placement follows the PTX ISA's tables; tests/cuda_tensor_core_isa.rs states those tables as
// data and checks this model against them.
enum MmaType : int { MMA_BF16 = 0, MMA_F16 = 1 };
// One lane's operands of mma.m16n8k16: A in 4 registers, B in 2, C and D in 4 floats each.
struct MmaLane {
    const unsigned* a;
    const unsigned* b;
    const float* c;
    float* d;
};
// One lane's part of ldmatrix: the 8 16-bit elements of the row it addressed (lanes 8i..8i+7
// address the rows of matrix i) and where its destination registers are.
struct LdmatrixLane {
    unsigned short row[8];
    unsigned* r;
};

inline unsigned lane_id() {
    const uint3_t& t = thread_idx();
    const dim3_t& b = block_dim();
    return (t.x + b.x * (t.y + b.y * t.z)) % 32u;
}

inline void mma_m16n8k16(MmaType type, float* d, const unsigned* a, const unsigned* b,
                         const float* c, const char* file, int line) {
    MmaLane lane{a, b, c, d};
    warp_op(MMA, 0xffffffffu, to_bits(&lane), type, 32, file, line);
}

// Each lane of the first 8 * `count` reads the 16-byte row it addresses (as its own shared
// reads, so the race detector and the unwritten-memory check see them), then the warp exchanges.
template <class T>
void ldmatrix(int count, bool trans, unsigned* r, shared_ptr<T> row, const char* file, int line) {
    static_assert(sizeof(T) == 2, "ldmatrix moves 16-bit elements");
    LdmatrixLane lane{};
    lane.r = r;
    if (lane_id() < 8u * static_cast<unsigned>(count)) {
        if (reinterpret_cast<std::uintptr_t>(row.p) % 16 != 0)
            fault("ldmatrix at %s:%d: the row address of lane %u is not 16-byte aligned", file,
                  line, lane_id());
        shared_ptr<unsigned short> s = shared_cast<unsigned short>(row);
        for (int k = 0; k < 8; ++k)
            lane.row[k] = s[k];
    }
    warp_op(LDMATRIX, 0xffffffffu, to_bits(&lane), count | (trans ? 16 : 0), 32, file, line);
}

// cp.async: the source is read when the copy is issued (as this thread's global reads); its
// bytes land in shared memory only when a cp.async.wait_group retires the copy's group (as this
// thread's shared writes, at that moment). A GPU may land them any time in between, so both ends
// are checked: at issue the destination is checked as written (a race with any access not
// ordered before the issue, e.g. a warp still reading the buffer being refilled) and then marked
// unwritten, so a kernel that reads it before the wait reads unwritten memory, which faults.
struct AsyncCopy {
    shared_ptr<unsigned char> dst;
    unsigned char data[16];
    int bytes;
};
// The issuing thread's queue (emu_runtime.cpp): copies not yet committed, then committed groups.
void cp_async_issue(const AsyncCopy& c);
void cp_async_commit();
void cp_async_wait(int pending, const char* file, int line);

template <class U, class S>
void read_source(unsigned char* out, gmem<S> src, int n) {
    gmem<const U> s = gmem_cast<const U>(src);
    for (int i = 0; i < n / static_cast<int>(sizeof(U)); ++i) {
        U v = s[i];
        std::memcpy(out + i * sizeof(U), &v, sizeof(U));
    }
}

template <int BYTES, class D, class S>
void cp_async(shared_ptr<D> dst, gmem<S> src, int src_bytes, const char* file, int line) {
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
    AsyncCopy c{};
    c.dst = shared_cast<unsigned char>(dst);
    c.bytes = BYTES;
    if (reinterpret_cast<std::uintptr_t>(c.dst.p) % BYTES != 0)
        fault("cp.async at %s:%d: shared destination is not %d-byte aligned", file, line, BYTES);
    if (c.dst.n < BYTES)
        fault("cp.async at %s:%d: a %d-byte copy runs past the end of shared array %s", file, line,
              BYTES, c.dst.name);
    if (src_bytes < 0 || src_bytes > BYTES)
        fault("cp.async at %s:%d: source size %d is outside 0..%d", file, line, src_bytes, BYTES);
    shared_async_write(c.dst.p, BYTES, c.dst.w, c.dst.base, c.dst.name);
    if (src_bytes > 0) {
        if (reinterpret_cast<std::uintptr_t>(src.p) % BYTES != 0)
            fault("cp.async at %s:%d: global source is not %d-byte aligned", file, line, BYTES);
        // Read in the widest unit the size allows, so the race detector sees the same words a
        // plain load or store of them would.
        if (src_bytes % 4 == 0)
            read_source<unsigned>(c.data, src, src_bytes);
        else if (src_bytes % 2 == 0)
            read_source<unsigned short>(c.data, src, src_bytes);
        else
            read_source<unsigned char>(c.data, src, src_bytes);
    }
    cp_async_issue(c);
}

// A call site, for the cp_async / cp_async_wait macros of tensor_core.cuh.
struct Site {
    const char* file;
    int line;
    template <int BYTES, class D, class S>
    void cp_async(shared_ptr<D> dst, gmem<S> src, int src_bytes) const {
        ::emu::cp_async<BYTES>(dst, src, src_bytes, file, line);
    }
    template <int N>
    void cp_async_wait() const {
        ::emu::cp_async_wait(N, file, line);
    }
};

// ---- kernel registry: type-checked unpacking of cuLaunchKernel-style argument arrays ----
enum ArgTag : int { TAG_PTR = 0, TAG_I32 = 1, TAG_U32 = 2, TAG_F32 = 3, TAG_U64 = 4, TAG_I64 = 5 };
void lookup_alloc(std::uint64_t addr, const char** lo, const char** hi);
[[noreturn]] void arg_error(int index, const char* expected, int got);

template <class T>
struct arg_of;
template <class T>
struct arg_of<gmem<T>> {
    static gmem<T> get(void* slot, int tag, int i) {
        if (tag != TAG_PTR)
            arg_error(i, "a device pointer", tag);
        std::uint64_t a;
        std::memcpy(&a, slot, 8);
        if (a == 0)
            return gmem<T>();
        const char* lo;
        const char* hi;
        lookup_alloc(a, &lo, &hi);
        return gmem<T>(reinterpret_cast<T*>(a), lo, hi);
    }
};
// A device address read from device memory (a pointer table built by the host, e.g. the LoRA
// segment table) turned into a bounds-checked pointer: the bounds are those of the live
// allocation containing the address, found in the allocation registry. 0 gives a null pointer
// (any access through it faults); an address inside no live allocation faults at the lookup.
// On the GPU (common.cuh) this is a plain cast.
template <class T>
gmem<T> gmem_from_address(unsigned long long a) {
    if (a == 0)
        return gmem<T>();
    const char* lo = nullptr;
    const char* hi = nullptr;
    try {
        lookup_alloc(a, &lo, &hi);
    } catch (...) {
        // lookup_alloc reports by throwing (it is meant for argument unpacking, before threads
        // run); inside a thread the fault must stop only this launch, with the thread named.
        fault("gmem_from_address: 0x%llx points into no live allocation", a);
    }
    return gmem<T>(reinterpret_cast<T*>(a), lo, hi);
}

#define EMU_SCALAR_ARG(T, TAG, NAME)                   \
    template <>                                        \
    struct arg_of<T> {                                 \
        static T get(void* slot, int tag, int i) {     \
            if (tag != TAG)                            \
                arg_error(i, NAME, tag);               \
            T v;                                       \
            std::memcpy(&v, slot, sizeof(T));          \
            return v;                                  \
        }                                              \
    };
EMU_SCALAR_ARG(int, TAG_I32, "int (i32)")
EMU_SCALAR_ARG(unsigned, TAG_U32, "unsigned (u32)")
EMU_SCALAR_ARG(float, TAG_F32, "float (f32)")
EMU_SCALAR_ARG(unsigned long long, TAG_U64, "unsigned long long (u64)")
EMU_SCALAR_ARG(long long, TAG_I64, "long long (i64)")
#undef EMU_SCALAR_ARG

// With `check_only` the arguments are unpacked (and type-checked, which may throw) without
// running the kernel: the launcher does this once on its own stack before any fiber starts.
using Trampoline = void (*)(void** args, const int* tags, bool check_only);
struct KernelInfo {
    const char* name;
    int nargs;
    Trampoline run;
};
void register_kernel(const KernelInfo& k);

template <class... A>
void call_or_check(void (*f)(A...), bool check_only, A... a) {
    if (!check_only)
        f(a...);
}
template <class... A, std::size_t... I>
void invoke(void (*f)(A...), void** args, const int* tags, bool check_only,
            std::index_sequence<I...>) {
    call_or_check(f, check_only,
                  arg_of<typename std::decay<A>::type>::get(args[I], tags[I], static_cast<int>(I))...);
}

template <class F>
struct kernel_traits;
template <class... A>
struct kernel_traits<void (*)(A...)> {
    static constexpr int nargs = sizeof...(A);
};

struct registrar {
    registrar(const KernelInfo& k) { register_kernel(k); }
};

}  // namespace emu

// ---- the CUDA vocabulary ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize 32
#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::warp_op(::emu::SYNCWARP, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 0xffffffffu, 0, 0, 32, __FILE__, __LINE__)
#define __shfl_sync(...) ::emu::shfl(::emu::SHFL_IDX, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl(::emu::SHFL_XOR, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl(::emu::SHFL_UP, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl(::emu::SHFL_DOWN, __FILE__, __LINE__, __VA_ARGS__)
#define __ballot_sync(mask, pred) \
    static_cast<unsigned>(::emu::warp_op(::emu::BALLOT, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __all_sync(mask, pred) \
    static_cast<int>(::emu::warp_op(::emu::ALL, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) \
    static_cast<int>(::emu::warp_op(::emu::ANY, mask, (pred) ? 1 : 0, 0, 32, __FILE__, __LINE__))

// Registers a kernel with the emulator's launcher (expands to nothing under NVRTC).
#define EMU_REGISTER(kernel)                                                            \
    [[maybe_unused]] static ::emu::registrar emu_registrar_##kernel(::emu::KernelInfo{                   \
        #kernel, ::emu::kernel_traits<decltype(&kernel)>::nargs, [](void** a, const int* t, bool c) { \
            ::emu::invoke(&kernel, a, t, c,                                              \
                          std::make_index_sequence<                                      \
                              ::emu::kernel_traits<decltype(&kernel)>::nargs>{});        \
        }});

// Math built-ins that CUDA has and the host library lacks or names differently.
//
// The fast-math intrinsics are modelled on what the GPU computes, not on libm, so that a kernel's
// tolerance is tested against the GPU's error and not a better one (CUDA C Programming Guide,
// "Intrinsic Functions", and PTX ex2/lg2/rcp/rsqrt .approx):
// - __expf(x) = ex2.approx(x * log2(e)) with the product rounded to f32: error up to
//   2 + floor(|1.16 x|) ulp, almost all of it from that rounding, which is reproduced exactly;
// - __logf(x) = lg2.approx(x) * ln(2): 2^-21.41 absolute on [0.5, 2], 3 ulp elsewhere;
// - __fdividef(a, b) = a * rcp.approx(b): 2 ulp for |b| in [2^-126, 2^126], and 0 (NaN for an
//   infinite a) for 2^126 < |b| < 2^128;
// - rsqrtf(x) = rsqrt.approx(x): 2 ulp.
// The .approx steps (ex2, lg2, rcp, rsqrt) are computed exactly and then moved by one ulp in a
// direction fixed by the input's bits (emu::approx_ulp), standing in for the hardware's own
// error; subnormal inputs and results flush to zero (.ftz), as under fast math.
namespace emu {
inline float ftz(float x) { return std::fabs(x) < 1.17549435e-38f ? std::copysign(0.0f, x) : x; }
// One ulp up or down (or not at all) chosen by a hash of the input bits: deterministic, and
// never more accurate than the hardware's approximation.
inline float approx_ulp(float exact, float input) {
    if (!std::isfinite(exact) || exact == 0.0f)
        return exact;
    std::uint32_t h = to_bits(input) * 0x9E3779B1u;
    switch (h >> 30) {
        case 0: return std::nextafter(exact, INFINITY);
        case 1: return std::nextafter(exact, -INFINITY);
        default: return exact;
    }
}
inline float ex2_approx(float t) {
    t = ftz(t);
    return ftz(approx_ulp(static_cast<float>(std::exp2(static_cast<double>(t))), t));
}
inline float lg2_approx(float x) {
    x = ftz(x);
    return approx_ulp(static_cast<float>(std::log2(static_cast<double>(x))), x);
}
inline float rcp_approx(float x) {
    x = ftz(x);
    return ftz(approx_ulp(static_cast<float>(1.0 / static_cast<double>(x)), x));
}
}  // namespace emu
inline float __expf(float x) { return ::emu::ex2_approx(::emu::ftz(x) * 1.44269504f); }
inline float __logf(float x) { return ::emu::ftz(::emu::lg2_approx(x) * 0.693147182f); }
inline float __fdividef(float a, float b) {
    const float ab = std::fabs(b);
    if (ab > 8.50705917e37f && ab < INFINITY)  // 2^126 < |b| < 2^128
        return std::isinf(a) ? NAN : ::emu::ftz(a * 0.0f);
    return ::emu::ftz(::emu::ftz(a) * ::emu::rcp_approx(b));
}
inline float rsqrtf(float x) {
    x = ::emu::ftz(x);
    return ::emu::approx_ulp(static_cast<float>(1.0 / std::sqrt(static_cast<double>(x))), x);
}
inline float __frcp_rn(float x) { return 1.0f / x; }
// Round-to-nearest arithmetic that the GPU compiler may not contract into an FMA; the host
// build has no FMA contraction either (no -mfma, ISO C++), so these are the plain operations.
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline unsigned __float_as_uint(float x) { return ::emu::from_bits<unsigned>(::emu::to_bits(x)); }
inline int __float_as_int(float x) { return ::emu::from_bits<int>(::emu::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
inline float __int_as_float(int x) { return ::emu::from_bits<float>(::emu::to_bits(x)); }
template <class T>
inline T __ldg(const T* p) {
    return *p;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// CUDA's vector types, with the alignment the hardware's vector loads require.
struct alignas(8) float2 {
    float x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};

// Atomics on global (`atomicAdd(&y[i], v)`) and shared (`atomicAdd(s + i, v)`) memory. Fibers
// of one OS thread switch only where the scheduler lets them (never inside rmw, whose operand
// is converted before it starts, since reading a gmem_ref operand may yield), so the
// read-modify-write is indivisible; the race detector records it as atomic, so atomics never
// race with each other, only with plain accesses.
template <class T, class U>
inline T atomicAdd(::emu::gmem<T> a, U v) {
    const T x = static_cast<T>(v);
    return a[0].rmw([x](T old) { return static_cast<T>(old + x); });
}
template <class T, class U>
inline T atomicMax(::emu::gmem<T> a, U v) {
    const T x = static_cast<T>(v);
    return a[0].rmw([x](T old) { return old > x ? old : x; });
}
template <class T, class U>
inline T atomicMin(::emu::gmem<T> a, U v) {
    const T x = static_cast<T>(v);
    return a[0].rmw([x](T old) { return old < x ? old : x; });
}
template <class T, class U>
inline T atomicExch(::emu::gmem<T> a, U v) {
    const T x = static_cast<T>(v);
    return a[0].rmw([x](T) { return x; });
}
template <class T, class U>
inline T atomicAdd(::emu::shared_ref<T> r, U v) {
    const T x = static_cast<T>(v);
    return r.rmw([x](T old) { return static_cast<T>(old + x); });
}
template <class T, class U>
inline T atomicAdd(::emu::shared_ptr<T> s, U v) {
    return atomicAdd(s[0], v);
}
template <class T, class U>
inline T atomicMax(::emu::shared_ptr<T> s, U v) {
    const T x = static_cast<T>(v);
    return s[0].rmw([x](T old) { return old > x ? old : x; });
}
template <class T, class U>
inline T atomicExch(::emu::shared_ptr<T> s, U v) {
    const T x = static_cast<T>(v);
    return s[0].rmw([x](T) { return x; });
}

template <class T>
using gmem = ::emu::gmem<T>;
#define SHARED(T, name, n) static thread_local ::emu::shared_array<T, (n)> name##_storage; \
    ::emu::shared_ptr<T> name = name##_storage.ptr(#name)
#define DYN_SHARED(T, name) ::emu::shared_ptr<T> name = ::emu::dyn_shared_as<T>(#name)
using ::emu::gmem_cast;
using ::emu::shared_cast;
using ::emu::gmem_from_address;
#define RESTRICT
