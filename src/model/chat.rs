//! A model's chat template: the Jinja text its files ship (a GGUF file's
//! `tokenizer.chat_template`, a checkpoint folder's `tokenizer_config.json`), rendered as
//! transformers' `apply_chat_template` renders it.

use crate::error::{Error, Result};
use minijinja::{Environment, ErrorKind, Value};

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template with the special tokens it may name, parsed once.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// The environment holding the parsed template: a run renders one prompt per example.
    env: Environment<'static>,
}

impl ChatTemplate {
    /// The template `source`; `bos_token` and `eos_token` are the texts it sees under those
    /// names. Errors when the source does not parse.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        Ok(ChatTemplate {
            source: source.into(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            env: Self::env(source)?,
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").map_err(template_error)?;
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(template_error)
    }

    /// The environment transformers renders in: blocks trimmed (`trim_blocks`,
    /// `lstrip_blocks`), Python's string methods, `raise_exception` and `tojson`.
    fn env(source: &str) -> Result<Environment<'static>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(template_error)?;
        Ok(env)
    }
}

fn template_error(e: minijinja::Error) -> Error {
    Error::Input(format!("chat template: {e:#}"))
}
