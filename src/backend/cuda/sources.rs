//! The kernel sources, embedded in the binary so NVRTC can compile them on the user's machine for
//! the user's GPU. The headers (`common.cuh`, `tensor_core.cuh`, `tc_fragments.cuh`) are inlined
//! in place of their `#include`, so NVRTC needs no include path and no CUDA headers.

/// `(file name, source text)` of every kernels/*.cu file that ships to the GPU.
pub const KERNEL_FILES: &[(&str, &str)] = &[
    ("align.cu", include_str!("../../../kernels/align.cu")),
    (
        "attn_flash.cu",
        include_str!("../../../kernels/attn_flash.cu"),
    ),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("gemm.cu", include_str!("../../../kernels/gemm.cu")),
    ("gemm_tc.cu", include_str!("../../../kernels/gemm_tc.cu")),
    ("gguf.cu", include_str!("../../../kernels/gguf.cu")),
    ("lora.cu", include_str!("../../../kernels/lora.cu")),
    (
        "lora_sgmv.cu",
        include_str!("../../../kernels/lora_sgmv.cu"),
    ),
    ("loss.cu", include_str!("../../../kernels/loss.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("optim.cu", include_str!("../../../kernels/optim.cu")),
    (
        "tensor_core_probe.cu",
        include_str!("../../../kernels/tensor_core_probe.cu"),
    ),
];

/// kernels/common.cuh.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// kernels/tensor_core.cuh (mma.sync, ldmatrix, cp.async wrappers).
pub const TENSOR_CORE: &str = include_str!("../../../kernels/tensor_core.cuh");

/// kernels/tc_fragments.cuh (fragment helpers of the tensor-core kernels).
pub const TC_FRAGMENTS: &str = include_str!("../../../kernels/tc_fragments.cuh");

/// The source NVRTC compiles for `file`: the file with the headers it includes inlined.
pub fn gpu_source(file_text: &str) -> String {
    file_text
        .replace("#include \"common.cuh\"", COMMON)
        .replace("#include \"tensor_core.cuh\"", TENSOR_CORE)
        .replace("#include \"tc_fragments.cuh\"", TC_FRAGMENTS)
}

/// Names of the `extern "C" __global__` kernels a source defines, in order.
pub fn kernel_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("__global__") {
        rest = &rest[i + "__global__".len()..];
        // The name is the identifier before the first '(' that is not `__launch_bounds__(`.
        let mut scan = rest;
        loop {
            let Some(open) = scan.find('(') else {
                return out;
            };
            let head = &scan[..open];
            let ident = head.split_whitespace().last().unwrap_or("");
            if ident == "__launch_bounds__" {
                let Some(close) = scan[open..].find(')') else {
                    return out;
                };
                scan = &scan[open + close + 1..];
                continue;
            }
            let name = ident.trim_start_matches('*');
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.push(name.to_string());
            }
            break;
        }
    }
    out
}
