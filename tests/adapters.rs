//! Adapter sets: safetensors save/load round trip with PEFT-style names, atomic writes, clear
//! errors on damaged files, and AdamW over a whole set.

mod common;

use common::fixture;
use flexp::backend::cpu::Cpu;
use flexp::backend::AdamW;
use flexp::executor::AdamWState;
use flexp::model::{load_model, AdapterSet, LoraConfig, Pooling, Target};
use flexp::rng::Rng;

fn host(s: &AdapterSet<Cpu>) -> Vec<Vec<f32>> {
    s.tensors().into_iter().cloned().collect()
}

#[test]
fn save_load_round_trip_with_peft_names() {
    let be = Cpu;
    let m = load_model(&be, &fixture("llama")).unwrap();
    let cfg = &m.config;
    let mut rng = Rng::new(4);
    let lora = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![Target::Q, Target::V, Target::Down],
    };
    let mut set = AdapterSet::init_lora(&be, cfg, lora, 1..2, &mut rng)
        .unwrap()
        .with_head(&be, cfg.hidden, 5, Pooling::Last, &mut rng)
        .unwrap();
    for p in set.blocks[1].iter_mut().flatten() {
        p.b = rng.vec_range(p.b.len(), -1.0, 1.0);
    }
    let dir = std::env::temp_dir().join(format!("flexp-adapters-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("client.safetensors");
    set.save(&be, cfg, &path).unwrap();

    let names: Vec<String> = set
        .named_tensors(&be, cfg)
        .unwrap()
        .into_iter()
        .map(|t| t.0)
        .collect();
    assert!(
        names.contains(
            &"base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight".to_string()
        ),
        "{names:?}"
    );
    assert!(
        names.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight".to_string())
    );
    assert!(names.contains(&"classifier.weight".to_string()));

    let back = AdapterSet::load(&be, cfg, &path).unwrap();
    assert_eq!(back.lora, set.lora);
    assert!(back.pair(0, Target::Q).is_none() && back.pair(1, Target::K).is_none());
    assert_eq!(host(&back), host(&set));
    let h = back.head.as_ref().unwrap();
    assert_eq!((h.classes, h.pooling), (5, Pooling::Last));
    // No temporary file is left behind by the atomic write.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");

    // A damaged file is a clear error.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = AdapterSet::load(&be, cfg, &path).err().unwrap().to_string();
    assert!(e.contains("corrupt"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn adamw_state_updates_every_tensor_like_the_scalar_rule() {
    let be = Cpu;
    let m = load_model(&be, &fixture("bert")).unwrap();
    let mut rng = Rng::new(1);
    let mut params = AdapterSet::init_lora(
        &be,
        &m.config,
        LoraConfig::default_for(&m.config),
        0..2,
        &mut rng,
    )
    .unwrap()
    .with_head(&be, m.config.hidden, 2, Pooling::Mean, &mut rng)
    .unwrap();
    let before = host(&params);
    let mut grads = params.zeros_like(&be).unwrap();
    for t in grads.tensors_mut() {
        let n = t.len();
        *t = rng.vec_range(n, -1.0, 1.0);
    }
    let mut st = AdamWState::new(&be, &params).unwrap();
    let hp = AdamW {
        lr: 0.1,
        weight_decay: 0.0,
        ..AdamW::default()
    };
    st.update(&be, &mut params, &grads, hp).unwrap();
    // First AdamW step without decay: bias-corrected moments are g and g², so each parameter
    // moves by lr·g/(|g| + eps).
    for ((p, p0), g) in host(&params).iter().zip(&before).zip(host(&grads)) {
        for i in 0..p.len() {
            let g = g[i] as f64;
            let want = (p0[i] as f64 - 0.1 * g / (g.abs() + 1e-8)) as f32;
            assert!((p[i] - want).abs() < 1e-5, "{} vs {want}", p[i]);
        }
    }
    assert_eq!(st.step, 1);
    let wrong = AdapterSet::<Cpu>::empty(params.lora.clone(), m.layers());
    assert!(
        st.update(&be, &mut params, &wrong, hp).is_err(),
        "mismatched gradient set must be refused"
    );
}
