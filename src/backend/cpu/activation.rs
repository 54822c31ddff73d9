//! Element-wise activations and their derivatives.

use super::math::{erf, erf_and_gauss, exp};
use crate::backend::Activation;
use rayon::prelude::*;

const CHUNK: usize = 4096;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
const INV_SQRT_2PI: f32 = 0.398_942_3;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
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

#[inline(always)]
fn act_grad(a: Activation, x: f32) -> f32 {
    match a {
        Activation::GeluErf => {
            // exp(-(x/√2)²) = exp(-x²/2), the Gaussian density's factor.
            let (e, gauss) = erf_and_gauss(x * INV_SQRT_2);
            0.5 * (1.0 + e) + x * INV_SQRT_2PI * gauss
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

fn forward_chunk(y: &mut [f32], x: &[f32], a: Activation) {
    // One loop per activation, so that no per-element branch stands in the way of vectorising.
    match a {
        Activation::GeluErf => dispatch!(|y: &mut [f32], x: &[f32]| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act(Activation::GeluErf, x))
        }),
        Activation::GeluTanh => dispatch!(|y: &mut [f32], x: &[f32]| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act(Activation::GeluTanh, x))
        }),
        Activation::Silu => dispatch!(|y: &mut [f32], x: &[f32]| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act(Activation::Silu, x))
        }),
        Activation::Relu => dispatch!(|y: &mut [f32], x: &[f32]| {
            y.iter_mut()
                .zip(x)
                .for_each(|(y, &x)| *y = act(Activation::Relu, x))
        }),
    }
}

fn backward_chunk(dx: &mut [f32], dy: &[f32], x: &[f32], a: Activation) {
    match a {
        Activation::GeluErf => dispatch!(|dx: &mut [f32], dy: &[f32], x: &[f32]| {
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = dy * act_grad(Activation::GeluErf, x);
            }
        }),
        Activation::GeluTanh => dispatch!(|dx: &mut [f32], dy: &[f32], x: &[f32]| {
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = dy * act_grad(Activation::GeluTanh, x);
            }
        }),
        Activation::Silu => dispatch!(|dx: &mut [f32], dy: &[f32], x: &[f32]| {
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = dy * act_grad(Activation::Silu, x);
            }
        }),
        Activation::Relu => dispatch!(|dx: &mut [f32], dy: &[f32], x: &[f32]| {
            for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                *dx = dy * act_grad(Activation::Relu, x);
            }
        }),
    }
}

pub(crate) fn forward(y: &mut [f32], x: &[f32], a: Activation) {
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| forward_chunk(y, x, a));
}

pub(crate) fn backward(dx: &mut [f32], dy: &[f32], x: &[f32], a: Activation) {
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .zip(x.par_chunks(CHUNK))
        .for_each(|((dx, dy), x)| backward_chunk(dx, dy, x, a));
}

/// `y = act(gate) · up`.
pub(crate) fn gated_forward(y: &mut [f32], gate: &[f32], up: &[f32], a: Activation) {
    y.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((y, g), u)| {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = act(a, g) * u;
            }
        });
}

/// `dgate = dy · up · act'(gate)`, `dup = dy · act(gate)`.
pub(crate) fn gated_backward(
    dgate: &mut [f32],
    dup: &mut [f32],
    dy: &[f32],
    gate: &[f32],
    up: &[f32],
    a: Activation,
) {
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dy.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dy), (g, u))| {
            for ((((dg, du), &dy), &g), &u) in dg.iter_mut().zip(du).zip(dy).zip(g).zip(u) {
                *du = dy * act(a, g);
                *dg = dy * u * act_grad(a, g);
            }
        });
}

pub(crate) fn swiglu_forward(y: &mut [f32], gate: &[f32], up: &[f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((y, g), u)| {
            dispatch!(|y: &mut [f32], g: &[f32], u: &[f32]| {
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y = g * sigmoid(g) * u;
                }
            })
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
            dispatch!(
                |dg: &mut [f32], du: &mut [f32], dy: &[f32], g: &[f32], u: &[f32]| {
                    for i in 0..dg
                        .len()
                        .min(du.len())
                        .min(dy.len())
                        .min(g.len())
                        .min(u.len())
                    {
                        let s = sigmoid(g[i]);
                        du[i] = dy[i] * g[i] * s;
                        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    }
                }
            )
        });
}
