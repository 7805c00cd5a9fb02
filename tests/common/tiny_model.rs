//! A tiny BERT sentence-transformers folder, built by the tests themselves: random weights
//! (seeded) saved as safetensors, a small WordPiece vocabulary in `tokenizer.json`, and the
//! sentence-transformers config files. Hermetic and fast: no download, milliseconds to embed.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::Rng;

/// Shape of the tiny model.
pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const LAYERS: usize = 2;
pub const INTERMEDIATE: usize = 64;
pub const POSITIONS: usize = 64;

const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
const WORDS: &[&str] = &[
    "the", "a", "to", "of", "and", "is", "in", "it", "date", "parse", "format", "file", "read",
    "write", "error", "memory", "agent", "task", "fix", "bug", "test", "run", "fast", "slow",
    "what", "how", "why", "question", "answer", "hello", "world", "cafe", "naive", "repeat", "##s",
    "##ing", "##ed", "##er", "##ly", "##x", "##y", "##z",
];

/// Every token of the vocabulary, in id order.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    // Single characters and their continuations, so any lower-case ASCII word tokenizes.
    for c in 'a'..='z' {
        v.push(c.to_string());
        v.push(format!("##{c}"));
    }
    for c in ['0', '1', '2', '3', '!', '?', '.', ',', '-'] {
        v.push(c.to_string());
    }
    v
}

/// Pooling written into `1_Pooling/config.json`.
#[derive(Clone, Copy)]
pub enum TinyPooling {
    Mean,
    Cls,
}

/// Writes the folder. `max_seq_length = None` leaves out `sentence_bert_config.json`.
pub fn write(dir: &Path, pooling: TinyPooling, max_seq_length: Option<usize>, seed: u64) {
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let vocab = vocab();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": vocab.len(), "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let (mean, cls) = match pooling {
        TinyPooling::Mean => (true, false),
        TinyPooling::Cls => (false, true),
    };
    let pool = serde_json::json!({
        "word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": cls,
        "pooling_mode_mean_tokens": mean, "pooling_mode_max_tokens": false,
        "pooling_mode_mean_sqrt_len_tokens": false
    });
    std::fs::write(dir.join("1_Pooling/config.json"), pool.to_string()).unwrap();
    if let Some(max) = max_seq_length {
        let sbert = serde_json::json!({ "max_seq_length": max, "do_lower_case": false });
        std::fs::write(dir.join("sentence_bert_config.json"), sbert.to_string()).unwrap();
    }
    write_tokenizer(dir, &vocab);
    write_weights(dir, vocab.len(), seed);
}

fn write_tokenizer(dir: &Path, vocab: &[String]) {
    let added: Vec<_> = SPECIAL
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let ids: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
            "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100, "vocab": ids}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

fn write_weights(dir: &Path, vocab: usize, seed: u64) {
    let mut rng = Rng(seed);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * rng.gaussian()).collect();
        tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap());
    };
    let (h, i) = (HIDDEN, INTERMEDIATE);
    put(
        "embeddings.word_embeddings.weight".into(),
        &[vocab, h],
        0.5,
        0.0,
    );
    put(
        "embeddings.position_embeddings.weight".into(),
        &[POSITIONS, h],
        0.1,
        0.0,
    );
    put(
        "embeddings.token_type_embeddings.weight".into(),
        &[2, h],
        0.1,
        0.0,
    );
    put("embeddings.LayerNorm.weight".into(), &[h], 0.1, 1.0);
    put("embeddings.LayerNorm.bias".into(), &[h], 0.1, 0.0);
    for l in 0..LAYERS {
        let p = format!("encoder.layer.{l}");
        for name in ["query", "key", "value"] {
            put(
                format!("{p}.attention.self.{name}.weight"),
                &[h, h],
                0.3,
                0.0,
            );
            put(format!("{p}.attention.self.{name}.bias"), &[h], 0.1, 0.0);
        }
        put(
            format!("{p}.attention.output.dense.weight"),
            &[h, h],
            0.2,
            0.0,
        );
        put(format!("{p}.attention.output.dense.bias"), &[h], 0.1, 0.0);
        put(
            format!("{p}.attention.output.LayerNorm.weight"),
            &[h],
            0.1,
            1.0,
        );
        put(
            format!("{p}.attention.output.LayerNorm.bias"),
            &[h],
            0.1,
            0.0,
        );
        put(format!("{p}.intermediate.dense.weight"), &[i, h], 0.2, 0.0);
        put(format!("{p}.intermediate.dense.bias"), &[i], 0.1, 0.0);
        put(format!("{p}.output.dense.weight"), &[h, i], 0.2, 0.0);
        put(format!("{p}.output.dense.bias"), &[h], 0.1, 0.0);
        put(format!("{p}.output.LayerNorm.weight"), &[h], 0.1, 1.0);
        put(format!("{p}.output.LayerNorm.bias"), &[h], 0.1, 0.0);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}
