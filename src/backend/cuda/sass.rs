//! The SASS check's tools: disassembling ptxas's cubins with nvdisasm and reading which machine
//! instructions each kernel uses. A tensor-core kernel must show HMMA (mma.sync on the tensor
//! cores), its staged loads LDSM (ldmatrix) and LDGSTS (cp.async), and no kernel may touch local
//! memory (LDL/STL: spills or arrays the compiler could not keep in registers).
//!
//! nvdisasm comes from NVIDIA's `nvidia-cuda-nvdisasm` wheel, which tools/fetch_cuda_tools.sh
//! installs under `.cuda-tools/`; `FLEXP_NVDISASM` names another copy.

use super::nvrtc::{fetched_tool, fnv1a};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

/// The nvdisasm binary: `FLEXP_NVDISASM`, else the fetched copy, else `nvdisasm` on the PATH.
pub fn nvdisasm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FLEXP_NVDISASM") {
        return PathBuf::from(p);
    }
    fetched_tool("cu13/bin/nvdisasm").unwrap_or_else(|| PathBuf::from("nvdisasm"))
}

/// Each kernel's instructions (opcode with modifiers, e.g. `HMMA.16816.F32.BF16`) in `cubin`.
pub fn kernel_instructions(cubin: &[u8]) -> Result<BTreeMap<String, Vec<String>>> {
    let dir = std::env::temp_dir().join(format!("flexp-sass-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let file = dir.join(format!("{:016x}.cubin", fnv1a(cubin)));
    std::fs::write(&file, cubin).map_err(|e| Error::io(&file, e))?;
    let tool = nvdisasm_path();
    let res = Command::new(&tool).arg("-c").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let res = res.map_err(|e| {
        Error::Backend(format!(
            "cannot run nvdisasm ({}): {e}; run tools/fetch_cuda_tools.sh or set FLEXP_NVDISASM",
            tool.display()
        ))
    })?;
    if !res.status.success() {
        return Err(Error::Backend(format!(
            "nvdisasm failed: {}",
            String::from_utf8_lossy(&res.stderr)
        )));
    }
    Ok(parse_disassembly(&String::from_utf8_lossy(&res.stdout)))
}

/// Parses `nvdisasm -c` output: a `.section .text.<kernel>` line starts a kernel, and each
/// instruction line (`/*0040*/  @P0 LDG.E R4, [R2.64] ;`) adds its opcode, predicate dropped.
pub fn parse_disassembly(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        // `.section .text.<kernel>,...`, not `.sectioninfo` or other directives.
        if let Some(rest) = t
            .strip_prefix(".section")
            .filter(|r| r.starts_with(char::is_whitespace))
        {
            current = rest
                .trim()
                .strip_prefix(".text.")
                .map(|r| r.split(',').next().unwrap_or("").to_string());
            continue;
        }
        let (Some(kernel), Some(rest)) = (&current, t.strip_prefix("/*")) else {
            continue;
        };
        let Some((_, code)) = rest.split_once("*/") else {
            continue;
        };
        let mut words = code.split_whitespace();
        let Some(mut op) = words.next() else { continue };
        if op.starts_with('@') {
            let Some(next) = words.next() else { continue };
            op = next;
        }
        let op = op.trim_end_matches(';');
        if !op.is_empty() {
            out.entry(kernel.clone()).or_default().push(op.to_string());
        }
    }
    out
}
