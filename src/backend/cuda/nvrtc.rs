//! Compiling the embedded kernel sources to PTX with NVRTC, and checking them with ptxas.
//!
//! NVRTC is loaded dynamically (cudarc's `dynamic-loading`), so the crate builds and runs with no
//! CUDA installed. Where NVRTC comes from, in order: the file named by `FLEXP_NVRTC_LIB`; the
//! copy tools/fetch_cuda_tools.sh installs under `.cuda-tools/` (looked up from the working
//! directory and from the crate root); the system's library path. A library found by path is
//! loaded once up front, after which cudarc's lookup by soname finds the loaded copy.
//!
//! Compiled PTX is cached on disk, keyed by a hash of the source, the architecture and the
//! NVRTC version, so a GPU run compiles each kernel file once per machine.

use super::sources;
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Where tools/fetch_cuda_tools.sh puts the NVIDIA wheels' contents, relative to a root.
const TOOLS_DIR: &str = ".cuda-tools/nvidia";

/// `rel` (under the fetched NVIDIA tools) in the first root that has it.
pub(crate) fn fetched_tool(rel: &str) -> Option<PathBuf> {
    tool_roots()
        .into_iter()
        .map(|r| r.join(TOOLS_DIR).join(rel))
        .find(|p| p.is_file())
}

fn tool_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        roots.push(d);
    }
    roots.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    roots
}

/// The ptxas binary: `FLEXP_PTXAS`, else the fetched copy, else `ptxas` on the PATH.
pub fn ptxas_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FLEXP_PTXAS") {
        return PathBuf::from(p);
    }
    fetched_tool("cuda_nvcc/bin/ptxas").unwrap_or_else(|| PathBuf::from("ptxas"))
}

fn nvrtc_candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("FLEXP_NVRTC_LIB") {
        c.push(PathBuf::from(p));
    }
    for r in tool_roots() {
        c.push(r.join(TOOLS_DIR).join("cuda_nvrtc/lib/libnvrtc.so.12"));
    }
    c
}

/// Loads NVRTC if it can be found. Returns a description of where it came from, or an error
/// that says how to get it. Never panics (cudarc panics when a library is missing, so presence
/// is checked first).
pub fn ensure_nvrtc() -> Result<String> {
    static LOADED: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            for path in nvrtc_candidates() {
                if !path.is_file() {
                    continue;
                }
                // The builtins library sits next to libnvrtc; load it first so libnvrtc's own
                // dlopen of it succeeds whatever the library path.
                if let Some(dir) = path.parent() {
                    if let Ok(entries) = std::fs::read_dir(dir) {
                        for e in entries.flatten() {
                            let name = e.file_name().to_string_lossy().into_owned();
                            if name.starts_with("libnvrtc-builtins.so") {
                                // SAFETY: loading a shared library runs its initialisers;
                                // NVIDIA's builtins library has none with preconditions.
                                if let Ok(lib) = unsafe { libloading::Library::new(e.path()) } {
                                    std::mem::forget(lib);
                                }
                            }
                        }
                    }
                }
                // SAFETY: as above; the library stays loaded for the life of the process
                // (forgotten handle) so cudarc's later lookup by soname resolves to it.
                match unsafe { libloading::Library::new(&path) } {
                    Ok(lib) => {
                        std::mem::forget(lib);
                        return Ok(format!("NVRTC from {}", path.display()));
                    }
                    Err(e) => return Err(format!("cannot load {}: {e}", path.display())),
                }
            }
            // SAFETY: only probes dlopen with cudarc's candidate names.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                return Ok("NVRTC from the system library path".into());
            }
            Err(
                "NVRTC (libnvrtc.so.12) not found: run tools/fetch_cuda_tools.sh, install the \
                 CUDA toolkit, or set FLEXP_NVRTC_LIB to the library's path"
                    .into(),
            )
        })
        .clone()
        .map_err(Error::Backend)
}

/// The NVRTC version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    ensure_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); the out-pointers are valid locals.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Backend(format!("nvrtcVersion failed: {rc:?}")));
    }
    Ok((major, minor))
}

/// Compiles one kernel file (its text as in kernels/, `#include "common.cuh"` resolved) to PTX
/// for a virtual architecture such as `compute_80`.
pub fn compile(file_name: &str, file_text: &str, arch: &'static str) -> Result<String> {
    ensure_nvrtc()?;
    let src = sources::gpu_source(file_text);
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        options: vec!["--std=c++17".into(), "-default-device".into()],
        name: Some(file_name.to_string()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts).map_err(|e| {
        Error::Backend(format!(
            "NVRTC failed on kernels/{file_name} for {arch}: {e:?}"
        ))
    })?;
    Ok(ptx.to_src())
}

/// The virtual architectures the CUDA backend compiles for (the driver picks one by compute
/// capability; `flexp-run ptx --arch` takes any of them).
pub const ARCHES: [&str; 5] = [
    "compute_80",
    "compute_86",
    "compute_87",
    "compute_89",
    "compute_90",
];

/// The folder of precompiled PTX named by `FLEXP_PTX_DIR`, if set: a GPU machine without NVRTC
/// (or with another CUDA major version's) loads the kernels from there (see [`kernel_ptx`]).
pub fn ptx_dir() -> Option<PathBuf> {
    std::env::var_os("FLEXP_PTX_DIR").map(PathBuf::from)
}

/// The file [`write_ptx`] writes for a kernel file and virtual architecture.
pub fn ptx_file_name(file_name: &str, arch: &str) -> String {
    format!("{}-{arch}.ptx", file_name.trim_end_matches(".cu"))
}

/// The first line of a precompiled PTX file: the hash of the source it was compiled from, so
/// that PTX of an older source is refused instead of silently run.
fn ptx_stamp(file_text: &str) -> String {
    format!(
        "// flexp kernel source {:016x}",
        fnv1a(sources::gpu_source(file_text))
    )
}

/// Compiles every kernel file for `arch` into `dir` (one stamped .ptx per file); returns the
/// paths written. For GPU machines without NVRTC: point `FLEXP_PTX_DIR` at the folder there.
pub fn write_ptx(dir: &std::path::Path, arch: &'static str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for (file, text) in sources::KERNEL_FILES {
        let ptx = compile(file, text, arch)?;
        let path = dir.join(ptx_file_name(file, arch));
        let body = format!("{}\n{ptx}", ptx_stamp(text));
        crate::fsutil::write_atomic(&path, body.as_bytes())?;
        out.push(path);
    }
    Ok(out)
}

/// The PTX of one kernel file for `arch`: from `FLEXP_PTX_DIR` when set (an error if the file is
/// missing or was compiled from another source), else compiled by NVRTC through the cache.
pub fn kernel_ptx(file_name: &str, file_text: &str, arch: &'static str) -> Result<String> {
    match ptx_dir() {
        Some(dir) => load_ptx(&dir, file_name, file_text, arch),
        None => compile_cached(file_name, file_text, arch),
    }
}

/// The PTX [`write_ptx`] wrote into `dir` for one kernel file and `arch`, refused if it was
/// compiled from a source other than `file_text`.
pub fn load_ptx(
    dir: &std::path::Path,
    file_name: &str,
    file_text: &str,
    arch: &str,
) -> Result<String> {
    let path = dir.join(ptx_file_name(file_name, arch));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::Backend(format!(
            "FLEXP_PTX_DIR: cannot read {} ({e}); write it with `flexp-run ptx --arch {arch} --out {}`",
            path.display(),
            dir.display()
        ))
    })?;
    let (stamp, ptx) = text.split_once('\n').unwrap_or((&text, ""));
    if stamp != ptx_stamp(file_text) {
        return Err(Error::Backend(format!(
            "{} was compiled from another version of kernels/{file_name}; rewrite it with \
             `flexp-run ptx --arch {arch} --out {}`",
            path.display(),
            dir.display()
        )));
    }
    Ok(ptx.to_string())
}

/// [`compile`] through an on-disk cache (`$XDG_CACHE_HOME/flexp/ptx`, else `~/.cache/flexp/ptx`).
/// A cache that cannot be read or written is ignored, never an error.
pub fn compile_cached(file_name: &str, file_text: &str, arch: &'static str) -> Result<String> {
    let (major, minor) = nvrtc_version()?;
    let key = fnv1a(format!(
        "{}\0{arch}\0{major}.{minor}",
        sources::gpu_source(file_text)
    ));
    let dir = cache_dir();
    let path = dir.as_ref().map(|d| {
        d.join(format!(
            "{}-{arch}-{key:016x}.ptx",
            file_name.trim_end_matches(".cu")
        ))
    });
    if let Some(p) = &path {
        if let Ok(s) = std::fs::read_to_string(p) {
            return Ok(s);
        }
    }
    let ptx = compile(file_name, file_text, arch)?;
    if let (Some(d), Some(p)) = (&dir, &path) {
        if std::fs::create_dir_all(d).is_ok() {
            let _ = crate::fsutil::write_atomic(p, ptx.as_bytes());
        }
    }
    Ok(ptx)
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(x).join("flexp/ptx"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flexp/ptx"))
}

/// FNV-1a of `bytes`: names cache and scratch files by their content.
pub(crate) fn fnv1a(bytes: impl AsRef<[u8]>) -> u64 {
    bytes.as_ref().iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Resource usage of one kernel as reported by `ptxas -v`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelResources {
    /// Kernel (entry) name.
    pub name: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory in bytes.
    pub shared_bytes: u32,
    /// Bytes of spill stores plus spill loads.
    pub spill_bytes: u32,
    /// Bytes of the per-thread stack frame (local memory).
    pub stack_bytes: u32,
}

/// Assembles `ptx` for `gpu` (e.g. `sm_80`) with ptxas and returns each kernel's resources.
pub fn ptxas_resources(ptx: &str, gpu: &str) -> Result<Vec<KernelResources>> {
    Ok(parse_ptxas(&assemble(ptx, gpu)?.report))
}

/// What ptxas made of one PTX module.
pub struct Assembled {
    /// The cubin (ELF) for the GPU.
    pub cubin: Vec<u8>,
    /// ptxas's `-v` report (registers, shared memory, spills per kernel).
    pub report: String,
}

/// Assembles `ptx` for `gpu` (e.g. `sm_80`) with `ptxas -v`.
pub fn assemble(ptx: &str, gpu: &str) -> Result<Assembled> {
    let dir = std::env::temp_dir().join(format!("flexp-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // Named by content and target, so concurrent calls (tests run in parallel) never share files.
    let stem = format!("k{:016x}-{gpu}", fnv1a(ptx));
    let input = dir.join(format!("{stem}.ptx"));
    std::fs::write(&input, ptx).map_err(|e| Error::io(&input, e))?;
    let out = dir.join(format!("{stem}.cubin"));
    let ptxas = ptxas_path();
    let res = Command::new(&ptxas)
        .arg("-v")
        .arg(format!("--gpu-name={gpu}"))
        .arg(&input)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| {
            Error::Backend(format!(
                "cannot run ptxas ({}): {e}; run tools/fetch_cuda_tools.sh or set FLEXP_PTXAS",
                ptxas.display()
            ))
        })?;
    let _ = std::fs::remove_file(&input);
    let cubin = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    let report =
        String::from_utf8_lossy(&res.stderr).into_owned() + &String::from_utf8_lossy(&res.stdout);
    if !res.status.success() {
        return Err(Error::Backend(format!("ptxas failed for {gpu}:\n{report}")));
    }
    let cubin = cubin.map_err(|e| Error::io(&out, e))?;
    Ok(Assembled { cubin, report })
}

/// Parses `ptxas -v` output into per-kernel resources.
pub fn parse_ptxas(text: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    for line in text.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelResources {
                name,
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            cur.stack_bytes = number_before(line, "bytes stack frame");
            cur.spill_bytes = number_before(line, "bytes spill stores")
                + number_before(line, "bytes spill loads");
        }
        if line.contains("Used") && line.contains("registers") {
            cur.registers = number_before(line, "registers");
            cur.shared_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The integer right before `unit` in `line` (0 when absent).
fn number_before(line: &str, unit: &str) -> u32 {
    let Some(i) = line.find(unit) else { return 0 };
    line[..i]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
