// SIMT emulation header: lets kernels/*.cu compile as ordinary C++ and run on the CPU.
//
// Every CUDA thread of a block becomes a fiber (its own stack, switched with ucontext) run by a
// scheduler in emu_runtime.cpp. A fiber runs until it reaches a point that needs other threads
// (__syncthreads, a warp shuffle or vote, __syncwarp) and parks there; the scheduler releases the
// barrier once every thread that must arrive has arrived. That gives the real semantics of
// barriers and warp collectives without one OS thread per CUDA thread.
//
// The emulator is stricter than a GPU on purpose. It faults (and the launch returns an error
// naming the kernel, thread, file and line) on:
// - a global-memory access outside the allocation the pointer came from (gmem<T> carries the
//   allocation's bounds), or through a pointer to freed or never-allocated memory;
// - a __syncthreads that some thread of the block does not reach, or that threads reach at
//   different call sites;
// - a warp collective whose mask names a lane that exited, does not exist, or waits elsewhere;
// - a read of shared memory that no thread of this block has written (shared memory starts as
//   garbage on a GPU; here it is tracked byte by byte and reset for every block);
// - an out-of-bounds index into a static or dynamic shared array.
// Fresh device allocations are filled with 0xFF bytes (NaN for floats) so that reading memory
// nobody initialised shows up in results instead of reading as zero.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
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

enum WarpOp : int { SHFL_IDX, SHFL_XOR, SHFL_UP, SHFL_DOWN, BALLOT, ALL, ANY, SYNCWARP };
std::uint64_t warp_op(WarpOp op, unsigned mask, std::uint64_t value, int arg, int width,
                      const char* file, int line);
// Bounds of the dynamic shared memory of the running block and its written-byte shadow.
unsigned char* dyn_shared(std::size_t* bytes, unsigned char** shadow);

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

    T& operator[](std::ptrdiff_t i) const {
        const char* a = reinterpret_cast<const char*>(p + i);
        if (lo == nullptr)
            fault("global access through a null pointer (element %td)", i);
        if (a < lo || a + sizeof(T) > hi)
            fault("out-of-bounds global access: element %td is byte %td of a %td-byte allocation", i,
                  a - lo, hi - lo);
        return p[i];
    }
    T& operator*() const { return (*this)[0]; }
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

// ---- shared memory: values with a written-byte shadow ----
template <class T>
struct shared_ref {
    T* v;
    unsigned char* w;  // sizeof(T) shadow bytes
    operator T() const {
        for (std::size_t b = 0; b < sizeof(T); ++b)
            if (!w[b])
                fault("read of shared memory that no thread of this block has written");
        return *v;
    }
    shared_ref& operator=(T x) {
        *v = x;
        std::memset(w, 1, sizeof(T));
        return *this;
    }
    shared_ref& operator=(const shared_ref& o) { return *this = static_cast<T>(o); }
    shared_ref& operator+=(T x) { return *this = static_cast<T>(*this) + x; }
    shared_ref& operator-=(T x) { return *this = static_cast<T>(*this) - x; }
    shared_ref& operator*=(T x) { return *this = static_cast<T>(*this) * x; }
    shared_ref& operator/=(T x) { return *this = static_cast<T>(*this) / x; }
};

// A view into shared memory (static array or dynamic buffer) with bounds.
template <class T>
struct shared_ptr {
    T* p;
    unsigned char* w;   // shadow byte of p[0]
    std::ptrdiff_t lo;  // elements available before p (negative offsets allowed down to -lo)
    std::ptrdiff_t n;   // elements available from p
    shared_ref<T> operator[](std::ptrdiff_t i) const {
        if (i < -lo || i >= n)
            fault("out-of-bounds shared access: element %td of a %td-element array", i + lo, lo + n);
        return shared_ref<T>{p + i, w + i * static_cast<std::ptrdiff_t>(sizeof(T))};
    }
    shared_ptr operator+(std::ptrdiff_t i) const {
        return shared_ptr{p + i, w + i * static_cast<std::ptrdiff_t>(sizeof(T)), lo + i, n - i};
    }
    shared_ptr operator-(std::ptrdiff_t i) const { return *this + (-i); }
    shared_ref<T> operator*() const { return (*this)[0]; }
};

template <class T, std::size_t N>
struct shared_array {
    T data[N];
    unsigned char written[N * sizeof(T)];
    std::uint64_t epoch = ~std::uint64_t(0);
    // Shared memory lives for one block: the first touch in a new block forgets the last one.
    void refresh() {
        if (epoch != block_epoch()) {
            std::memset(static_cast<void*>(data), 0xFF, sizeof(data));
            std::memset(written, 0, sizeof(written));
            epoch = block_epoch();
        }
    }
    shared_ref<T> operator[](std::ptrdiff_t i) { return ptr()[i]; }
    shared_ptr<T> ptr() {
        refresh();
        return shared_ptr<T>{data, written, 0, static_cast<std::ptrdiff_t>(N)};
    }
    shared_ptr<T> operator+(std::ptrdiff_t i) { return ptr() + i; }
};

template <class T>
shared_ptr<T> dyn_shared_as() {
    std::size_t bytes = 0;
    unsigned char* shadow = nullptr;
    unsigned char* base = dyn_shared(&bytes, &shadow);
    return shared_ptr<T>{reinterpret_cast<T*>(base), shadow, 0,
                         static_cast<std::ptrdiff_t>(bytes / sizeof(T))};
}

// Reinterprets a shared view as another element type (for carving one dynamic buffer into parts).
template <class U, class T>
shared_ptr<U> shared_cast(shared_ptr<T> s) {
    std::ptrdiff_t bytes_before = s.lo * static_cast<std::ptrdiff_t>(sizeof(T));
    std::ptrdiff_t bytes_after = s.n * static_cast<std::ptrdiff_t>(sizeof(T));
    return shared_ptr<U>{reinterpret_cast<U*>(s.p), s.w,
                         bytes_before / static_cast<std::ptrdiff_t>(sizeof(U)),
                         bytes_after / static_cast<std::ptrdiff_t>(sizeof(U))};
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
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __frcp_rn(float x) { return 1.0f / x; }
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
// One OS thread runs all fibers and switches only at collectives, so read-modify-write is atomic.
template <class T>
inline T atomicAdd(T* addr, T v) {
    T old = *addr;
    *addr = old + v;
    return old;
}
template <class T>
inline T atomicAdd(::emu::shared_ref<T> r, T v) {
    T old = r;
    r = old + v;
    return old;
}
template <class T>
inline T atomicMax(T* addr, T v) {
    T old = *addr;
    *addr = old > v ? old : v;
    return old;
}
template <class T>
inline T atomicExch(T* addr, T v) {
    T old = *addr;
    *addr = v;
    return old;
}

template <class T>
using gmem = ::emu::gmem<T>;
#define SHARED(T, name, n) static thread_local ::emu::shared_array<T, (n)> name##_storage; \
    ::emu::shared_ptr<T> name = name##_storage.ptr()
#define DYN_SHARED(T, name) ::emu::shared_ptr<T> name = ::emu::dyn_shared_as<T>()
using ::emu::shared_cast;
using ::emu::gmem_from_address;
#define RESTRICT
