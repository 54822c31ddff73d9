//! Client resource profiles: compute, memory and link speeds of one device.
//!
//! A profile is either a named preset ([`ResourceProfile::preset`]) or a custom specification
//! (`custom:compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s`, see [`ResourceProfile::parse`]).
//!
//! # Where the preset numbers come from
//!
//! The planner needs *sustained* numbers for a training loop, not datasheet peaks. Compute is
//! fp32 FLOP/s derived as `cores × clock × fp32 FLOP/cycle/core × efficiency`, where FLOP/cycle
//! follows from the cores' SIMD width (an Arm core with two 128-bit FMA pipes does 2 × 4 × 2 = 16
//! fp32 FLOP/cycle) and the efficiency (about 30 % on phones, which throttle under sustained load
//! and are memory-bound on GEMMs of fine-tuning size; about 35–50 % on laptops and edge boxes)
//! is what tuned GEMM libraries typically sustain on such parts. Memory is the budget a training
//! job can realistically get, well below the device's RAM (the OS and other apps keep the rest).
//! Link speeds are typical (median-ish) measured mobile and fixed broadband speeds as published
//! by speed-test surveys (Ookla Speedtest Global Index, Opensignal reports): LTE uplinks of a few
//! Mbit/s, downlinks of tens of Mbit/s; home Wi-Fi on broadband tens of Mbit/s up and ~100+ down.
//! All link numbers here are in **bytes** per second (`Mbit/s ÷ 8`). They are order-of-magnitude
//! figures meant to make the default experiment heterogeneous in a realistic way; use a
//! `custom:` profile for a measured device.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What one client device offers for training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceProfile {
    /// A label (the preset name, or `custom` / the `name=` of a custom spec).
    pub name: String,
    /// Sustained fp32 compute, FLOP/s.
    pub compute_flops: f64,
    /// Memory available to the training job, bytes.
    pub memory_bytes: f64,
    /// Uplink (client → server), bytes/s.
    pub uplink_bps: f64,
    /// Downlink (server → client), bytes/s.
    pub downlink_bps: f64,
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;
/// Megabits per second in bytes per second.
const MBIT: f64 = 1e6 / 8.0;

/// The presets: name, compute FLOP/s, memory bytes, uplink B/s, downlink B/s.
///
/// - `weak-phone`: low-end phone, 4× Cortex-A53 @ 1.8 GHz (64-bit NEON datapath: 4 fp32
///   FLOP/cycle) = 28.8 GFLOP/s peak, ~10 GFLOP/s sustained; 2–3 GiB RAM, 768 MiB for the job;
///   weak LTE, 2 Mbit/s up, 10 Mbit/s down.
/// - `phone`: mid-range phone, 2× Cortex-A76 @ 2.2 GHz (16 FLOP/cycle) + 6× Cortex-A55 @ 1.8 GHz
///   (4 FLOP/cycle) = 114 GFLOP/s peak, ~30 GFLOP/s sustained; 6 GiB RAM, 1.5 GiB for the job;
///   median LTE, 8 Mbit/s up, 40 Mbit/s down.
/// - `strong-phone`: flagship (Snapdragon 8 Gen 2 class: 1× Cortex-X3 @ 3.2 GHz with 32
///   FLOP/cycle, 4× A715 @ 2.8 GHz with 16, 3× A510 @ 2.0 GHz with 8) ≈ 330 GFLOP/s peak,
///   ~100 GFLOP/s sustained; 12 GiB RAM, 3 GiB for the job; 5G / good Wi-Fi, 40 Mbit/s up,
///   200 Mbit/s down.
/// - `laptop`: 8-core x86 laptop CPU (Zen 4 mobile class, ~3.3 GHz all-core, two 256-bit FMA
///   pipes = 32 FLOP/cycle) ≈ 845 GFLOP/s peak, ~300 GFLOP/s sustained; 16 GiB RAM, 8 GiB for
///   the job; home Wi-Fi on broadband, 20 Mbit/s up, 100 Mbit/s down.
/// - `edge-box`: an embedded GPU box (Jetson Orin Nano 8 GB class: 1024 CUDA cores @ 625 MHz =
///   1.28 TFLOP/s fp32 peak), ~600 GFLOP/s sustained; 8 GiB shared memory, 6 GiB for the job;
///   wired 100 Mbit/s symmetric link.
const PRESETS: [(&str, f64, f64, f64, f64); 5] = [
    ("weak-phone", 10e9, 768.0 * MIB, 2.0 * MBIT, 10.0 * MBIT),
    ("phone", 30e9, 1.5 * GIB, 8.0 * MBIT, 40.0 * MBIT),
    ("strong-phone", 100e9, 3.0 * GIB, 40.0 * MBIT, 200.0 * MBIT),
    ("laptop", 300e9, 8.0 * GIB, 20.0 * MBIT, 100.0 * MBIT),
    ("edge-box", 600e9, 6.0 * GIB, 100.0 * MBIT, 100.0 * MBIT),
];

/// The preset mix of the default experiment, cycled by [`mixed_profiles`]: of every 8 clients,
/// 2 weak phones, 3 mid-range phones, 1 flagship, 1 laptop and 1 edge box (phones dominate a
/// cross-device population). Interleaved so that even a handful of clients is heterogeneous.
pub const MIX: [&str; 8] = [
    "phone",
    "weak-phone",
    "strong-phone",
    "laptop",
    "phone",
    "weak-phone",
    "edge-box",
    "phone",
];

/// The names of the presets, in order.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// `n` profiles cycling through [`MIX`] (client `k` gets `MIX[k % 8]`).
pub fn mixed_profiles(n: usize) -> Vec<ResourceProfile> {
    (0..n)
        .map(|k| ResourceProfile::preset(MIX[k % MIX.len()]).expect("MIX names are presets"))
        .collect()
}

/// Which quantity a value in a custom spec is, for unit checking.
#[derive(Clone, Copy, PartialEq)]
enum Quantity {
    Compute,
    Memory,
    Rate,
}

impl ResourceProfile {
    /// The named preset (see the module docs for the numbers and their sources).
    pub fn preset(name: &str) -> Result<Self> {
        PRESETS
            .iter()
            .find(|p| p.0 == name)
            .map(|&(name, c, m, u, d)| ResourceProfile {
                name: name.to_string(),
                compute_flops: c,
                memory_bytes: m,
                uplink_bps: u,
                downlink_bps: d,
            })
            .ok_or_else(|| {
                Error::Input(format!(
                    "unknown resource profile `{name}`; presets: {}; or a custom profile \
                     `custom:compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s`",
                    preset_names().join(", ")
                ))
            })
    }

    /// Parses a preset name or a custom profile
    /// `custom:compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s[,name=my-device]`.
    ///
    /// Values are a number (`2e9`, `1.5`) with an optional multiplier, `k`/`K` (10³), `M` (10⁶),
    /// `G` (10⁹), `T` (10¹²), `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024), then an optional unit:
    /// `B` (bytes) for memory and links, `bit` for links (divided by 8), `FLOP`/`FLOPS` for
    /// compute, and for compute and links an optional `/s`. So `512MiB`, `1MB/s`, `10Mbit/s`,
    /// `2GFLOP/s` and `2e9` are all valid. All four keys are required, each once.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let Some(body) = spec.strip_prefix("custom:") else {
            return Self::preset(spec);
        };
        let mut name = None;
        let mut vals: [Option<f64>; 4] = [None; 4];
        const KEYS: [(&str, Quantity); 4] = [
            ("compute", Quantity::Compute),
            ("memory", Quantity::Memory),
            ("up", Quantity::Rate),
            ("down", Quantity::Rate),
        ];
        for item in body.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item.split_once('=').ok_or_else(|| {
                Error::Input(format!(
                    "custom profile `{spec}`: `{item}` is not `key=value`"
                ))
            })?;
            let (key, value) = (key.trim(), value.trim());
            if key == "name" {
                if value.is_empty() {
                    return Err(Error::Input(format!("custom profile `{spec}`: empty name")));
                }
                name = Some(value.to_string());
                continue;
            }
            let i = KEYS.iter().position(|k| k.0 == key).ok_or_else(|| {
                Error::Input(format!(
                    "custom profile `{spec}`: unknown key `{key}`; keys: compute, memory, up, \
                     down, name"
                ))
            })?;
            if vals[i].is_some() {
                return Err(Error::Input(format!(
                    "custom profile `{spec}`: `{key}` given twice"
                )));
            }
            let v = parse_quantity(value, KEYS[i].1).map_err(|why| {
                Error::Input(format!(
                    "custom profile `{spec}`: bad {key} `{value}`: {why}"
                ))
            })?;
            vals[i] = Some(v);
        }
        let missing: Vec<&str> = KEYS
            .iter()
            .zip(&vals)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.0)
            .collect();
        if !missing.is_empty() {
            return Err(Error::Input(format!(
                "custom profile `{spec}`: missing {}; example: \
                 custom:compute=2e9,memory=512MiB,up=1MB/s,down=5MB/s",
                missing.join(", ")
            )));
        }
        let [c, m, u, d] = vals.map(|v| v.unwrap_or_default());
        Ok(ResourceProfile {
            name: name.unwrap_or_else(|| "custom".to_string()),
            compute_flops: c,
            memory_bytes: m,
            uplink_bps: u,
            downlink_bps: d,
        })
    }

    /// Checks that every quantity is finite and positive (the planner divides by them).
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("compute", self.compute_flops),
            ("memory", self.memory_bytes),
            ("uplink", self.uplink_bps),
            ("downlink", self.downlink_bps),
        ];
        for (what, v) in fields {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Input(format!(
                    "resource profile `{}`: {what} must be a positive finite number, got {v}",
                    self.name
                )));
            }
        }
        Ok(())
    }
}

/// Parses one value of a custom spec (see [`ResourceProfile::parse`]); the error says why.
fn parse_quantity(s: &str, q: Quantity) -> std::result::Result<f64, String> {
    // The number is the longest prefix made of float characters; `e`/`E` only counts as an
    // exponent when a digit (or sign) follows, so that nothing but numbers is eaten.
    let bytes = s.as_bytes();
    let mut end = 0;
    while end < bytes.len() {
        let c = bytes[end];
        let ok = c.is_ascii_digit()
            || c == b'.'
            || ((c == b'+' || c == b'-') && (end == 0 || matches!(bytes[end - 1], b'e' | b'E')))
            || (matches!(c, b'e' | b'E')
                && end > 0
                && bytes
                    .get(end + 1)
                    .is_some_and(|n| n.is_ascii_digit() || *n == b'+' || *n == b'-'));
        if !ok {
            break;
        }
        end += 1;
    }
    let (num, rest) = s.split_at(end);
    if num.is_empty() {
        return Err("expected a number first".into());
    }
    let x: f64 = num
        .parse()
        .map_err(|_| format!("`{num}` is not a number"))?;
    let mut rest = rest.trim_start();
    // `/s` is allowed on rates, and on compute (FLOP/s); never on memory.
    let per_second = rest.ends_with("/s");
    if per_second {
        if q == Quantity::Memory {
            return Err("memory is a size, not a rate (drop `/s`)".into());
        }
        rest = &rest[..rest.len() - 2];
    }
    const MULTIPLIERS: [(&str, f64); 9] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let mut mult = 1.0;
    // Binary prefixes are tried first so that `Mi` is not read as `M` + unit `i`.
    for (p, m) in MULTIPLIERS {
        if let Some(r) = rest.strip_prefix(p) {
            mult = m;
            rest = r;
            break;
        }
    }
    let unit_factor = match (rest, q) {
        ("", _) => 1.0,
        ("B", Quantity::Memory | Quantity::Rate) => 1.0,
        ("bit", Quantity::Rate) => 1.0 / 8.0,
        ("FLOP" | "FLOPS" | "flop" | "flops", Quantity::Compute) => 1.0,
        (u, _) => {
            let allowed = match q {
                Quantity::Compute => "FLOP, FLOPS (optionally /s)",
                Quantity::Memory => "B",
                Quantity::Rate => "B, bit (optionally /s)",
            };
            return Err(format!(
                "unknown unit `{u}`; multipliers k, M, G, T, Ki, Mi, Gi, Ti; units: {allowed}"
            ));
        }
    };
    let v = x * mult * unit_factor;
    if !(v.is_finite() && v > 0.0) {
        return Err("must be positive and finite".into());
    }
    Ok(v)
}
