//! Run-time selection of wider instruction sets for plain Rust loops.

/// Runs `body` compiled for AVX-512 (or AVX2 + FMA) when the CPU has it: the crate is built for
/// baseline x86-64, where plain loops vectorise only to 4 lanes of SSE (the activations of the
/// FFN were a sixth of a training step that way). Must be the whole body of a function: it
/// `return`s the selected version's result. The math functions are `#[inline(always)]`, so each
/// version is compiled entirely with the wider instructions.
macro_rules! dispatch {
    (|$($arg:ident : $ty:ty),*| $body:block) => {
        dispatch!(|$($arg: $ty),*| -> () $body)
    };
    (|$($arg:ident : $ty:ty),*| -> $ret:ty $body:block) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
            unsafe fn wide512($($arg: $ty),*) -> $ret $body
            #[target_feature(enable = "avx2,fma")]
            unsafe fn wide256($($arg: $ty),*) -> $ret $body
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                // SAFETY: the features this version was compiled for were detected above.
                return unsafe { wide512($($arg),*) };
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: as above, for AVX2 and FMA.
                return unsafe { wide256($($arg),*) };
            }
        }
        fn portable($($arg: $ty),*) -> $ret $body
        portable($($arg),*)
    }};
}
