//! Element-wise activations and their derivatives.

use super::math::{erf, exp};
use crate::backend::Activation;
use rayon::prelude::*;

const CHUNK: usize = 4096;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

fn act(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluErf => 0.5 * x * (1.0 + erf(x * INV_SQRT_2)),
        Activation::GeluTanh => {
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
        Activation::Silu => x * sigmoid(x),
        Activation::Relu => x.max(0.0),
    }
}

fn act_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluErf => {
            0.5 * (1.0 + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
        }
        Activation::GeluTanh => {
            let t = (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t)
                + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Silu => {
            let s = sigmoid(x);
            s * (1.0 + x * (1.0 - s))
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

pub(crate) fn forward(y: &mut [f32], x: &[f32], a: Activation) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| y.iter_mut().zip(x).for_each(|(y, &x)| *y = act(a, x)));
}

pub(crate) fn backward(dx: &mut [f32], dy: &[f32], x: &[f32], a: Activation) {
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .zip(x.par_chunks(CHUNK))
        .for_each(|((dx, dy), x)| {
            for i in 0..dx.len() {
                dx[i] = dy[i] * act_grad(a, x[i]);
            }
        });
}

pub(crate) fn swiglu_forward(y: &mut [f32], gate: &[f32], up: &[f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((y, g), u)| {
            for i in 0..y.len() {
                y[i] = g[i] * sigmoid(g[i]) * u[i];
            }
        });
}

pub(crate) fn swiglu_backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dy: &[f32],
    gate: &[f32],
    up: &[f32],
) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dy), (g, u))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                du[i] = dy[i] * g[i] * s;
                dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
}
