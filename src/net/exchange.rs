//! What one FlexP-SFL step sends each way, as protocol messages: a client's activations at its
//! cut with each sequence's labelled output, and the server's gradients of them. Decoding checks
//! every shape against the model's hidden size, so a malformed message is refused by name
//! before it reaches the model.

use super::proto::{target, Activations, Gradients, Header, Target, TensorFrame, TokenTargets};
use super::wire::{decode, encode, Limits, WireDType};
use crate::error::{Error, Result};
use crate::executor::Output;

/// Payload bytes per frame.
pub const FRAME_BYTES: usize = 1 << 20;

fn target_of(o: &Output) -> Result<Target> {
    let kind = match o {
        Output::Class { label: Some(c) } => target::Kind::Class(
            u32::try_from(*c).map_err(|_| Error::Input(format!("class {c} out of range")))?,
        ),
        Output::Lm { labels: Some(t) } => target::Kind::Tokens(TokenTargets { ids: t.clone() }),
        other => {
            return Err(Error::Input(format!(
                "a training sequence without a label ({other:?})"
            )))
        }
    };
    Ok(Target { kind: Some(kind) })
}

fn output_of(t: &Target, classes: usize) -> Result<Output> {
    match &t.kind {
        Some(target::Kind::Class(c)) if (*c as usize) < classes => Ok(Output::Class {
            label: Some(*c as usize),
        }),
        Some(target::Kind::Class(c)) => Err(Error::Input(format!(
            "class {c} is not one of the run's {classes} classes"
        ))),
        Some(target::Kind::Tokens(ids)) if classes == 0 => Ok(Output::Lm {
            labels: Some(ids.ids.clone()),
        }),
        Some(target::Kind::Tokens(_)) => Err(Error::Input(
            "token targets sent to a classification run".into(),
        )),
        None => Err(Error::Input("a sequence without a target".into())),
    }
}

/// One `[tokens, hidden]` tensor per sequence, as frames.
fn sequence_frames(seqs: &[Vec<f32>], hidden: usize, dtype: WireDType) -> Result<Vec<TensorFrame>> {
    let shapes: Vec<[usize; 2]> = seqs
        .iter()
        .map(|h| [h.len() / hidden.max(1), hidden])
        .collect();
    let tensors: Vec<(&[usize], &[f32])> = shapes
        .iter()
        .zip(seqs)
        .map(|(s, h)| (&s[..], h.as_slice()))
        .collect();
    Ok(encode(&tensors, dtype, FRAME_BYTES)?)
}

/// A client's activations message: one `[tokens, hidden]` tensor per sequence, with targets.
pub fn activations(
    header: Header,
    smashed: &[Vec<f32>],
    outputs: &[Output],
    hidden: usize,
    dtype: WireDType,
) -> Result<Activations> {
    Ok(Activations {
        header: Some(header),
        frames: sequence_frames(smashed, hidden, dtype)?,
        targets: outputs.iter().map(target_of).collect::<Result<_>>()?,
    })
}

/// The server's reading of an activations message: each sequence's activations and labelled
/// output (`classes == 0` for a causal-LM run). Refuses shapes other than `[tokens, hidden]`
/// with at least one token, a sequence count that differs from the batch's, and targets that
/// do not fit the run.
pub fn read_activations(
    a: &Activations,
    limits: &Limits,
    hidden: usize,
    expected: usize,
    classes: usize,
) -> Result<(Vec<Vec<f32>>, Vec<Output>)> {
    let tensors = decode(&a.frames, limits)?;
    if tensors.len() != expected || a.targets.len() != expected {
        return Err(Error::Input(format!(
            "{} activation tensors and {} targets for a batch of {expected} sequences",
            tensors.len(),
            a.targets.len()
        )));
    }
    let mut smashed = Vec::with_capacity(expected);
    for (i, t) in tensors.into_iter().enumerate() {
        if t.shape.len() != 2 || t.shape[1] != hidden || t.shape[0] == 0 {
            return Err(Error::Input(format!(
                "sequence {i}: activations of shape {:?}, expected [tokens, {hidden}]",
                t.shape
            )));
        }
        smashed.push(t.data);
    }
    let outputs = a
        .targets
        .iter()
        .map(|t| output_of(t, classes))
        .collect::<Result<_>>()?;
    Ok((smashed, outputs))
}

/// The server's gradients message for one client: d loss / d h per sequence.
pub fn gradients(
    header: Header,
    dh: &[Vec<f32>],
    hidden: usize,
    dtype: WireDType,
) -> Result<Gradients> {
    Ok(Gradients {
        header: Some(header),
        frames: sequence_frames(dh, hidden, dtype)?,
    })
}

/// The client's reading of a gradients message against the shapes of what it sent.
pub fn read_gradients(g: &Gradients, limits: &Limits, sent: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let tensors = decode(&g.frames, limits)?;
    if tensors.len() != sent.len() {
        return Err(Error::Input(format!(
            "{} gradient tensors for {} sequences",
            tensors.len(),
            sent.len()
        )));
    }
    tensors
        .into_iter()
        .zip(sent)
        .enumerate()
        .map(|(i, (t, h))| {
            if t.data.len() == h.len() {
                Ok(t.data)
            } else {
                Err(Error::Input(format!(
                    "sequence {i}: a gradient of {} values for activations of {}",
                    t.data.len(),
                    h.len()
                )))
            }
        })
        .collect()
}
