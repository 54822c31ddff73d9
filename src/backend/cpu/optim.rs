//! AdamW with decoupled weight decay (PyTorch's `torch.optim.AdamW` update rule).

use crate::backend::AdamW;

pub(crate) fn adamw_step(
    param: &mut [f32],
    grad: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    hp: AdamW,
    step: u64,
) {
    let t = step.max(1) as i32;
    let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
    let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
    let step_size = (hp.lr as f64 / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    for i in 0..param.len() {
        let g = grad[i];
        param[i] -= hp.lr * hp.weight_decay * param[i];
        m[i] = hp.beta1 * m[i] + (1.0 - hp.beta1) * g;
        v[i] = hp.beta2 * v[i] + (1.0 - hp.beta2) * g * g;
        let denom = v[i].sqrt() / bc2_sqrt + hp.eps;
        param[i] -= step_size * m[i] / denom;
    }
}
