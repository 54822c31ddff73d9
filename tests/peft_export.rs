//! PEFT export against peft itself (tests/fixtures/peft/llama, written by
//! tools/torch_reference/peft_reference.py with peft 0.21.2 on the tiny Llama fixture): the
//! adapter peft saved is read by flexp's PEFT names, written back by flexp's exporter into the
//! same tensors (names, shapes, bits) and config, and flexp's forward with it gives the logits
//! peft computed.

mod common;

use common::fixture;
use flexp::backend::cpu::Cpu;
use flexp::backend::Backend;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::adapter::{LoraPair, Target};
use flexp::model::peft::{collect_pairs, module_path, write_peft};
use flexp::model::{load_model, AdapterSet, LoraConfig};
use safetensors::SafeTensors;
use serde_json::Value;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn export_writes_what_peft_writes_and_computes_what_peft_computes() {
    let be = Cpu;
    let m = load_model(&be, &fixture("llama")).unwrap();
    let dir = fixture("peft/llama");
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg: Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Target::ALL.to_vec(),
    };
    // Read peft's file by flexp's names: a wrong name or shape is a missing tensor here.
    let mut set = AdapterSet::<Cpu>::empty(lora.clone(), m.config.layers);
    for t in Target::ALL {
        let path = module_path(m.config.family, 1, t).unwrap();
        let get = |w: char| {
            let name = format!("base_model.model.{path}.lora_{w}.weight");
            let v = st
                .tensor(&name)
                .unwrap_or_else(|_| panic!("{name} missing"));
            (v.shape().to_vec(), f32s(v.data()))
        };
        let (sa, a) = get('A');
        let (sb, b) = get('B');
        let (d_in, d_out) = t.dims(&m.config);
        assert_eq!((sa, sb), (vec![4, d_in], vec![d_out, 4]), "{path}");
        set.blocks[1][t.index()] = Some(LoraPair {
            a: be.upload(&a).unwrap(),
            b: be.upload(&b).unwrap(),
        });
    }
    assert_eq!(st.names().len(), 14);

    // flexp's export of that set: the same tensors, bit for bit, and the same config.
    let out = std::env::temp_dir().join(format!("flexp-peft-{}", std::process::id()));
    let pairs = collect_pairs(&be, &[(0..m.config.layers, &set)]).unwrap();
    write_peft(&out, &m.config, &lora, &pairs, "tests/fixtures/llama").unwrap();
    let ours_bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&ours_bytes).unwrap();
    let mut names: Vec<&str> = ours.names();
    names.sort_unstable();
    let mut want: Vec<&str> = st.names();
    want.sort_unstable();
    assert_eq!(names, want);
    for n in names {
        let (a, b) = (ours.tensor(n).unwrap(), st.tensor(n).unwrap());
        assert_eq!(a.shape(), b.shape(), "{n}");
        assert_eq!(a.data(), b.data(), "{n}");
    }
    let ocfg: Value =
        serde_json::from_slice(&std::fs::read(out.join("adapter_config.json")).unwrap()).unwrap();
    for key in [
        "peft_type",
        "r",
        "layers_to_transform",
        "layers_pattern",
        "task_type",
    ] {
        assert_eq!(ocfg[key], cfg[key], "{key}");
    }
    assert_eq!(ocfg["lora_alpha"].as_f64(), cfg["lora_alpha"].as_f64());
    let sorted = |v: &Value| {
        let mut s: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(
        sorted(&ocfg["target_modules"]),
        sorted(&cfg["target_modules"])
    );
    std::fs::remove_dir_all(&out).ok();

    // flexp's forward with the adapter is peft's.
    let r: Value =
        serde_json::from_slice(&std::fs::read(dir.join("logits.json")).unwrap()).unwrap();
    let exec = Executor::new(&be, &m);
    for (s, want) in r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["logits"].as_array().unwrap())
    {
        let ids: Vec<u32> = s
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let job = SeqJob::new(
            SeqInput::tokens(ids),
            0..m.config.layers,
            0,
            Output::Lm { labels: None },
        );
        let (o, _) = exec.forward(&[&set], &[job], false).unwrap();
        let got = o[0].logits.as_ref().unwrap();
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let (err, scale) = common::max_err_and_scale(got, &want);
        assert!(
            err < 1e-4 * scale.max(1.0),
            "logit error {err} at scale {scale}"
        );
    }
    // The adapter matters: without it the logits differ by far more than the tolerance.
    let none = AdapterSet::<Cpu>::empty(lora, m.config.layers);
    let job = SeqJob::new(
        SeqInput::tokens(vec![3, 17, 42, 99, 5, 64, 11]),
        0..m.config.layers,
        0,
        Output::Lm { labels: None },
    );
    let (o, _) = exec.forward(&[&none], &[job], false).unwrap();
    let base = o[0].logits.as_ref().unwrap();
    let first: Vec<f32> = r["logits"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let (diff, _) = common::max_err_and_scale(base, &first);
    assert!(
        diff > 1e-2,
        "the adapter barely changes the logits ({diff})"
    );
}

#[test]
fn gpt2_and_uneven_targets_are_refused_with_a_reason() {
    let e = module_path(flexp::model::Family::Gpt2, 0, Target::Q)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c_attn"), "{e}");
    let m = load_model(&Cpu, &fixture("llama")).unwrap();
    let lora = LoraConfig {
        rank: 1,
        alpha: 1.0,
        targets: vec![Target::Q, Target::V],
    };
    let (d_in, d_out) = Target::Q.dims(&m.config);
    let (v_in, v_out) = Target::V.dims(&m.config);
    let pairs = vec![
        (0, Target::Q, vec![0.0; d_in], vec![0.0; d_out]),
        (1, Target::V, vec![0.0; v_in], vec![0.0; v_out]),
    ];
    let dir = std::env::temp_dir().join(format!("flexp-peft-bad-{}", std::process::id()));
    let e = write_peft(&dir, &m.config, &lora, &pairs, "x")
        .unwrap_err()
        .to_string();
    assert!(e.contains("same targets in every adapted block"), "{e}");
    assert!(!dir.join("adapter_config.json").exists());
}
