//! Bank snapshots: one `.safetensors` file holding a whole bank.
//!
//! Layout (format version 1). Tensors (`N` memories, `K` intent keys, `d` dimensions):
//!
//! | name | dtype | shape | meaning |
//! |---|---|---|---|
//! | `intents.keys` | F32 / F16 / BF16 | K x d | unit intent keys, in row order |
//! | `memories.id` | U64 | N | ids, in slot order |
//! | `memories.key` | U32 | N | key row of each memory |
//! | `memories.q` | F32 | N | utility |
//! | `memories.visits` | U64 | N | outcome count |
//! | `memories.last_reward` | F32 | N | last reward (0 while visits = 0) |
//! | `memories.success` | U8 | N | 0 or 1 |
//! | `memories.created_ms`, `memories.updated_ms` | U64 | N | Unix milliseconds |
//! | `memories.{intent,experience,metadata}.bytes` | U8 | total | UTF-8 texts, concatenated |
//! | `memories.{intent,experience,metadata}.offsets` | U64 | N + 1 | text i is `bytes[o[i]..o[i+1]]`; empty metadata = none |
//!
//! Header metadata: `format` (`memrl.bank`), `format_version`, `model_id`, `dim`, `dtype`,
//! `dedup_sim`, `next_id`, `log_seq` (the last write-ahead log record the bank reflects; absent in
//! older files, read as 0), `retrieval_config` and `learning_config` (JSON), and `checksum`: the
//! CRC32C of every other metadata entry and every tensor's name, dtype, shape and bytes. Any
//! single-bit change anywhere in the file is therefore either a parse error or a checksum
//! mismatch, never a silently different bank.
//!
//! Saving is atomic: write a temporary file beside the target, fsync it, rename it over the
//! target, fsync the directory. A crash leaves either the old file or the new one.
//! Loading validates everything before building the bank, so it returns a whole bank or an
//! error, never a half-loaded one.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, View};

use crate::bank::{Bank, BankParts, Memory};
use crate::config::{BankConfig, KeyDType, LearningConfig, RetrievalConfig};
use crate::error::{Error, Result};

/// The format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT_NAME: &str = "memrl.bank";
const CHECKSUM_KEY: &str = "checksum";

/// What the caller expects of a snapshot; a mismatch is [`Error::SnapshotMismatch`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Refuse a bank whose keys came from another embedding model.
    pub expect_model: Option<String>,
    /// Refuse a bank of another dimension.
    pub expect_dim: Option<usize>,
}

struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn le_bytes<T: Copy, const W: usize>(
    values: impl Iterator<Item = T>,
    to: impl Fn(T) -> [u8; W],
) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(&to(v));
    }
    out
}

fn vector(dtype: Dtype, data: Vec<u8>, elem: usize) -> Bytes {
    Bytes {
        dtype,
        shape: vec![data.len() / elem],
        data,
    }
}

fn texts<'a>(name: &str, items: impl Iterator<Item = &'a str>, out: &mut BTreeMap<String, Bytes>) {
    let mut bytes = Vec::new();
    let mut offsets = vec![0u64];
    for s in items {
        bytes.extend_from_slice(s.as_bytes());
        offsets.push(bytes.len() as u64);
    }
    out.insert(
        format!("memories.{name}.bytes"),
        vector(Dtype::U8, bytes, 1),
    );
    out.insert(
        format!("memories.{name}.offsets"),
        vector(
            Dtype::U64,
            le_bytes(offsets.into_iter(), u64::to_le_bytes),
            8,
        ),
    );
}

fn checksum(
    metadata: &HashMap<String, String>,
    tensors: &[(String, Dtype, Vec<usize>, &[u8])],
) -> u32 {
    let mut crc = 0u32;
    let mut keys: Vec<&String> = metadata.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        crc = crc32c::crc32c_append(crc, k.as_bytes());
        crc = crc32c::crc32c_append(crc, &[0]);
        crc = crc32c::crc32c_append(crc, metadata[k].as_bytes());
        crc = crc32c::crc32c_append(crc, &[0]);
    }
    let mut sorted: Vec<&(String, Dtype, Vec<usize>, &[u8])> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, dtype, shape, data) in sorted {
        crc = crc32c::crc32c_append(crc, name.as_bytes());
        crc = crc32c::crc32c_append(crc, &[0]);
        crc = crc32c::crc32c_append(crc, dtype.to_string().as_bytes());
        for d in shape {
            crc = crc32c::crc32c_append(crc, &(*d as u64).to_le_bytes());
        }
        crc = crc32c::crc32c_append(crc, data);
    }
    crc
}

fn keys_bytes(keys: &Tensor) -> Result<(Dtype, Vec<u8>)> {
    let flat = keys.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match keys.dtype() {
        DType::F16 => (
            Dtype::F16,
            le_bytes(
                flat.to_vec1::<half::f16>()?.into_iter(),
                half::f16::to_le_bytes,
            ),
        ),
        DType::BF16 => (
            Dtype::BF16,
            le_bytes(
                flat.to_vec1::<half::bf16>()?.into_iter(),
                half::bf16::to_le_bytes,
            ),
        ),
        _ => (
            Dtype::F32,
            le_bytes(
                flat.to_dtype(DType::F32)?.to_vec1::<f32>()?.into_iter(),
                f32::to_le_bytes,
            ),
        ),
    })
}

/// A snapshot's content before it is written: tensors by name and header metadata.
struct Encoded {
    tensors: BTreeMap<String, Bytes>,
    metadata: HashMap<String, String>,
}

impl Encoded {
    /// Sets the checksum entry from everything else.
    fn sign(&mut self) {
        let described: Vec<(String, Dtype, Vec<usize>, &[u8])> = self
            .tensors
            .iter()
            .map(|(n, b)| (n.clone(), b.dtype, b.shape.clone(), b.data.as_slice()))
            .collect();
        let crc = checksum(&self.metadata, &described);
        self.metadata
            .insert(CHECKSUM_KEY.into(), format!("{crc:08x}"));
    }
}

/// Writes `bank` to `path` atomically (see the module docs).
pub fn save(bank: &Bank, path: &Path) -> Result<()> {
    let encoded = encode(bank)?;
    tracing::debug!(path = %path.display(), memories = bank.len(), "saving bank");
    write_atomically(path, |tmp| {
        safetensors::serialize_to_file(
            encoded.tensors.iter().map(|(n, b)| (n.as_str(), b)),
            Some(encoded.metadata.clone()),
            tmp,
        )
        .map_err(|e| Error::io(tmp, std::io::Error::other(e.to_string())))
    })
}

fn encode(bank: &Bank) -> Result<Encoded> {
    let config = bank.config();
    let memories: Vec<&Memory> = bank.iter().collect();
    let mut tensors: BTreeMap<String, Bytes> = BTreeMap::new();
    let (key_dtype, key_data) = keys_bytes(&bank.keys_view()?)?;
    tensors.insert(
        "intents.keys".into(),
        Bytes {
            dtype: key_dtype,
            shape: vec![bank.num_intents(), config.dim],
            data: key_data,
        },
    );
    let u64s = |f: fn(&Memory) -> u64| {
        vector(
            Dtype::U64,
            le_bytes(memories.iter().map(|m| f(m)), u64::to_le_bytes),
            8,
        )
    };
    tensors.insert("memories.id".into(), u64s(|m| m.id));
    tensors.insert("memories.visits".into(), u64s(|m| m.visits));
    tensors.insert("memories.created_ms".into(), u64s(|m| m.created_ms));
    tensors.insert("memories.updated_ms".into(), u64s(|m| m.updated_ms));
    tensors.insert(
        "memories.key".into(),
        vector(
            Dtype::U32,
            le_bytes(bank.key_rows().iter().copied(), u32::to_le_bytes),
            4,
        ),
    );
    tensors.insert(
        "memories.q".into(),
        vector(
            Dtype::F32,
            le_bytes(memories.iter().map(|m| m.q), f32::to_le_bytes),
            4,
        ),
    );
    tensors.insert(
        "memories.last_reward".into(),
        vector(
            Dtype::F32,
            le_bytes(
                memories.iter().map(|m| m.last_reward.unwrap_or(0.0)),
                f32::to_le_bytes,
            ),
            4,
        ),
    );
    tensors.insert(
        "memories.success".into(),
        vector(
            Dtype::U8,
            memories.iter().map(|m| m.success as u8).collect(),
            1,
        ),
    );
    texts(
        "intent",
        memories.iter().map(|m| m.intent.as_str()),
        &mut tensors,
    );
    texts(
        "experience",
        memories.iter().map(|m| m.experience.as_str()),
        &mut tensors,
    );
    let metadata_json: Vec<String> = memories
        .iter()
        .map(|m| {
            m.metadata
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default()
        })
        .collect();
    texts(
        "metadata",
        metadata_json.iter().map(String::as_str),
        &mut tensors,
    );

    let mut metadata: HashMap<String, String> = HashMap::new();
    metadata.insert("format".into(), FORMAT_NAME.into());
    metadata.insert("format_version".into(), FORMAT_VERSION.to_string());
    metadata.insert("model_id".into(), config.model_id.clone());
    metadata.insert("dim".into(), config.dim.to_string());
    metadata.insert("dtype".into(), config.dtype.as_str().into());
    metadata.insert("dedup_sim".into(), config.dedup_sim.to_string());
    metadata.insert("next_id".into(), bank.next_id().to_string());
    metadata.insert("log_seq".into(), bank.log_seq().to_string());
    metadata.insert("retrieval_config".into(), to_json(bank.retrieval_config())?);
    metadata.insert("learning_config".into(), to_json(bank.learning_config())?);
    let mut encoded = Encoded { tensors, metadata };
    encoded.sign();
    Ok(encoded)
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::config("config", e, "cannot be serialised"))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Runs `write(tmp)` on a temporary file beside `path`, then fsyncs it, renames it over `path`
/// and fsyncs the directory. On any error the temporary file is removed and `path` is untouched.
pub(crate) fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        write(&tmp)?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        // Make the rename itself durable.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(&dir, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads and fully validates a snapshot, then builds the bank on `device`.
pub fn load(path: &Path, device: &Device, options: &LoadOptions) -> Result<Bank> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let parts = parse(path, &bytes, options)?;
    Bank::from_parts(parts, device)
}

/// [`load`] from bytes already in memory; errors name the source as `<memory>`.
pub fn load_bytes(bytes: &[u8], device: &Device, options: &LoadOptions) -> Result<Bank> {
    let parts = parse(Path::new("<memory>"), bytes, options)?;
    Bank::from_parts(parts, device)
}

/// Validates snapshot bytes into bank parts (no device work but the key tensor on the CPU).
pub(crate) fn parse(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<BankParts> {
    let corrupt = |problem: String| Error::CorruptSnapshot {
        path: path.to_path_buf(),
        problem,
    };
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    let metadata = header
        .metadata()
        .clone()
        .ok_or_else(|| corrupt("no header metadata: not a memrl bank".into()))?;
    let field = |name: &'static str| -> Result<&str> {
        metadata
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| corrupt(format!("metadata field `{name}` is missing")))
    };
    if field("format")? != FORMAT_NAME {
        return Err(corrupt(format!(
            "`format` is `{}`, not a memrl bank",
            field("format")?
        )));
    }
    let version = field("format_version")?;
    if version != FORMAT_VERSION.to_string() {
        return Err(Error::SnapshotMismatch {
            path: path.to_path_buf(),
            field: "format_version",
            found: version.to_string(),
            expected: FORMAT_VERSION.to_string(),
        });
    }

    // Integrity before meaning.
    let names = st.names();
    let expected_names: HashSet<&str> = TENSORS.iter().copied().collect();
    for name in &names {
        if !expected_names.contains(name) {
            return Err(corrupt(format!("unexpected tensor `{name}`")));
        }
    }
    let mut described = Vec::with_capacity(TENSORS.len());
    for name in TENSORS {
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(format!("tensor `{name}` is missing")))?;
        described.push((name.to_string(), t.dtype(), t.shape().to_vec(), t.data()));
    }
    let stored = field(CHECKSUM_KEY)?;
    let computed = format!("{:08x}", checksum(&metadata, &described));
    // Fuzzing builds skip the checksum so the fuzzer reaches the validation behind it.
    if !cfg!(fuzzing) && stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored}, computed {computed}): the file is corrupted"
        )));
    }

    // Meaning.
    let model_id = field("model_id")?.to_string();
    let dim: usize = field("dim")?
        .parse()
        .map_err(|_| corrupt("metadata `dim` is not a number".into()))?;
    let dtype: KeyDType = field("dtype")?.parse().map_err(|_| {
        corrupt(format!(
            "metadata `dtype` `{}` is unknown",
            field("dtype").unwrap_or("")
        ))
    })?;
    let dedup_sim: f32 = field("dedup_sim")?
        .parse()
        .map_err(|_| corrupt("metadata `dedup_sim` is not a number".into()))?;
    let next_id: u64 = field("next_id")?
        .parse()
        .map_err(|_| corrupt("metadata `next_id` is not a number".into()))?;
    // Optional: snapshots written before the write-ahead log existed have no `log_seq`.
    let log_seq: u64 = match metadata.get("log_seq") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| corrupt("metadata `log_seq` is not a number".into()))?,
    };
    let retrieval: RetrievalConfig = serde_json::from_str(field("retrieval_config")?)
        .map_err(|e| corrupt(format!("metadata `retrieval_config`: {e}")))?;
    retrieval
        .validate()
        .map_err(|e| corrupt(format!("metadata `retrieval_config`: {e}")))?;
    let learning: LearningConfig = serde_json::from_str(field("learning_config")?)
        .map_err(|e| corrupt(format!("metadata `learning_config`: {e}")))?;
    learning
        .validate()
        .map_err(|e| corrupt(format!("metadata `learning_config`: {e}")))?;
    let config = BankConfig {
        dim,
        dtype,
        dedup_sim,
        model_id,
    };
    config
        .validate()
        .map_err(|e| corrupt(format!("metadata: {e}")))?;
    let mismatch = |field: &'static str, found: String, expected: String| Error::SnapshotMismatch {
        path: path.to_path_buf(),
        field,
        found,
        expected,
    };
    if let Some(expected) = &options.expect_model {
        if *expected != config.model_id {
            return Err(mismatch(
                "model_id",
                config.model_id.clone(),
                expected.clone(),
            ));
        }
    }
    if let Some(expected) = options.expect_dim {
        if expected != dim {
            return Err(mismatch("dim", dim.to_string(), expected.to_string()));
        }
    }

    let get = |name: &str| -> Result<(Dtype, Vec<usize>, &[u8])> {
        let t = st
            .tensor(name)
            .map_err(|_| corrupt(format!("tensor `{name}` is missing")))?;
        Ok((t.dtype(), t.shape().to_vec(), t.data()))
    };
    let column = |name: &str, dtype: Dtype, width: usize, len: Option<usize>| -> Result<&[u8]> {
        let (dt, shape, data) = get(name)?;
        if dt != dtype || shape.len() != 1 || data.len() != shape[0] * width {
            return Err(corrupt(format!(
                "tensor `{name}` must be a 1-D {dtype} vector, found {dt} {shape:?}"
            )));
        }
        if let Some(len) = len {
            if shape[0] != len {
                return Err(corrupt(format!(
                    "tensor `{name}` has {} entries, expected {len}",
                    shape[0]
                )));
            }
        }
        Ok(data)
    };

    // Keys.
    let (kdt, kshape, kdata) = get("intents.keys")?;
    let want_dt = match dtype {
        KeyDType::F32 => Dtype::F32,
        KeyDType::F16 => Dtype::F16,
        KeyDType::Bf16 => Dtype::BF16,
    };
    if kdt != want_dt || kshape.len() != 2 || kshape[1] != dim {
        return Err(corrupt(format!(
            "tensor `intents.keys` is {kdt} {kshape:?}, expected {want_dt} [K, {dim}]"
        )));
    }
    let k = kshape[0];
    let keys = decode_keys(kdata, dtype, k, dim)?;
    for (row, key) in keys.chunks(dim.max(1)).enumerate() {
        let norm: f32 = key.iter().map(|v| v * v).sum::<f32>().sqrt();
        if !norm.is_finite() || (norm - 1.0).abs() > 1e-2 {
            return Err(corrupt(format!(
                "intent key {row} is not a unit vector (norm {norm})"
            )));
        }
    }

    // Memories.
    let ids = u64s(column("memories.id", Dtype::U64, 8, None)?);
    let n = ids.len();
    let key_of = u32s(column("memories.key", Dtype::U32, 4, Some(n))?);
    let q = f32s(column("memories.q", Dtype::F32, 4, Some(n))?);
    let visits = u64s(column("memories.visits", Dtype::U64, 8, Some(n))?);
    let last_reward = f32s(column("memories.last_reward", Dtype::F32, 4, Some(n))?);
    let success = column("memories.success", Dtype::U8, 1, Some(n))?;
    let created = u64s(column("memories.created_ms", Dtype::U64, 8, Some(n))?);
    let updated = u64s(column("memories.updated_ms", Dtype::U64, 8, Some(n))?);
    let text = |name: &str| -> Result<Vec<String>> {
        let bytes = column(&format!("memories.{name}.bytes"), Dtype::U8, 1, None)?;
        let offsets = u64s(column(
            &format!("memories.{name}.offsets"),
            Dtype::U64,
            8,
            Some(n + 1),
        )?);
        let mut out = Vec::with_capacity(n);
        if offsets[0] != 0 || offsets[n] != bytes.len() as u64 {
            return Err(corrupt(format!(
                "`memories.{name}.offsets` do not cover the text bytes"
            )));
        }
        for i in 0..n {
            let (a, b) = (offsets[i], offsets[i + 1]);
            if a > b || b > bytes.len() as u64 {
                return Err(corrupt(format!(
                    "`memories.{name}.offsets` are out of order or out of range at memory {i}"
                )));
            }
            let s = std::str::from_utf8(&bytes[a as usize..b as usize])
                .map_err(|e| corrupt(format!("{name} text of memory {i} is not UTF-8: {e}")))?;
            out.push(s.to_string());
        }
        Ok(out)
    };
    let intents = text("intent")?;
    let experiences = text("experience")?;
    let metadata_json = text("metadata")?;

    let mut seen = HashSet::with_capacity(n);
    let mut key_used = vec![false; k];
    let mut memories = Vec::with_capacity(n);
    for i in 0..n {
        let id = ids[i];
        if !seen.insert(id) {
            return Err(corrupt(format!("memory id {id} appears twice")));
        }
        if id >= next_id && id != u64::MAX {
            return Err(corrupt(format!(
                "memory id {id} is not below next_id {next_id}"
            )));
        }
        let key = key_of[i] as usize;
        if key >= k {
            return Err(corrupt(format!("memory {id} points at key {key} of {k}")));
        }
        key_used[key] = true;
        if !q[i].is_finite() || !last_reward[i].is_finite() {
            return Err(corrupt(format!("memory {id} has a non-finite Q or reward")));
        }
        if success[i] > 1 {
            return Err(corrupt(format!(
                "memory {id} has success flag {}",
                success[i]
            )));
        }
        let metadata = if metadata_json[i].is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&metadata_json[i])
                    .map_err(|e| corrupt(format!("metadata of memory {id} is not JSON: {e}")))?,
            )
        };
        memories.push(Memory {
            id,
            intent: intents[i].clone(),
            experience: experiences[i].clone(),
            q: q[i],
            visits: visits[i],
            last_reward: (visits[i] > 0).then_some(last_reward[i]),
            success: success[i] == 1,
            created_ms: created[i],
            updated_ms: updated[i],
            metadata,
        });
    }
    if let Some(orphan) = key_used.iter().position(|used| !used) {
        return Err(corrupt(format!("intent key {orphan} has no memory")));
    }
    let keys = Tensor::from_vec(keys, (k, dim), &Device::Cpu)?.to_dtype(dtype.candle())?;
    Ok(BankParts {
        config,
        retrieval,
        learning,
        keys,
        memories,
        key_of,
        next_id,
        log_seq,
    })
}

/// Every tensor a version-1 snapshot has, no more, no less.
const TENSORS: [&str; 15] = [
    "intents.keys",
    "memories.id",
    "memories.key",
    "memories.q",
    "memories.visits",
    "memories.last_reward",
    "memories.success",
    "memories.created_ms",
    "memories.updated_ms",
    "memories.intent.bytes",
    "memories.intent.offsets",
    "memories.experience.bytes",
    "memories.experience.offsets",
    "memories.metadata.bytes",
    "memories.metadata.offsets",
];

fn decode_keys(data: &[u8], dtype: KeyDType, k: usize, dim: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(k * dim);
    match dtype {
        KeyDType::F32 => out.extend(f32s(data)),
        KeyDType::F16 => out.extend(
            data.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        KeyDType::Bf16 => out.extend(
            data.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
    }
    Ok(out)
}

fn u64s(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bank::NewMemory;

    fn bank() -> Bank {
        let mut bank = Bank::new(BankConfig::new(2, "m"), &Device::Cpu).unwrap();
        for (e, text) in [([1.0, 0.0], "abc"), ([0.0, 1.0], "de")] {
            bank.add(NewMemory {
                embedding: e.to_vec(),
                experience: text.into(),
                ..Default::default()
            })
            .unwrap();
        }
        bank
    }

    /// Applies `edit` to a bank's encoding, re-signs it (a crafted file, not a random
    /// corruption) and returns what loading it says.
    fn load_crafted(edit: impl FnOnce(&mut Encoded)) -> Result<Bank> {
        let mut encoded = encode(&bank()).unwrap();
        edit(&mut encoded);
        encoded.sign();
        let bytes = safetensors::serialize(
            encoded.tensors.iter().map(|(n, b)| (n.as_str(), b)),
            Some(encoded.metadata),
        )
        .unwrap();
        load_bytes(&bytes, &Device::Cpu, &LoadOptions::default())
    }

    fn problem(result: Result<Bank>) -> String {
        match result {
            Err(Error::CorruptSnapshot { problem, .. }) => problem,
            other => panic!("expected a corrupt-snapshot error, got {other:?}"),
        }
    }

    #[test]
    fn crafted_files_with_valid_checksums_are_still_validated() {
        assert!(load_crafted(|_| {}).is_ok());
        let offsets = |values: &[u64]| {
            vector(
                Dtype::U64,
                le_bytes(values.iter().copied(), u64::to_le_bytes),
                8,
            )
        };
        // Offsets that overshoot the bytes and come back.
        let p = problem(load_crafted(|e| {
            e.tensors
                .insert("memories.experience.offsets".into(), offsets(&[0, 100, 5]));
        }));
        assert!(p.contains("out of order or out of range"), "{p}");
        // Ids that repeat.
        let p = problem(load_crafted(|e| {
            e.tensors.insert("memories.id".into(), offsets(&[3, 3]));
            e.metadata.insert("next_id".into(), "4".into());
        }));
        assert!(p.contains("appears twice"), "{p}");
        // A key reference out of range, and an orphan key.
        let p = problem(load_crafted(|e| {
            e.tensors.insert(
                "memories.key".into(),
                vector(
                    Dtype::U32,
                    le_bytes([0u32, 7].into_iter(), u32::to_le_bytes),
                    4,
                ),
            );
        }));
        assert!(p.contains("points at key 7"), "{p}");
        let p = problem(load_crafted(|e| {
            e.tensors.insert(
                "memories.key".into(),
                vector(
                    Dtype::U32,
                    le_bytes([0u32, 0].into_iter(), u32::to_le_bytes),
                    4,
                ),
            );
        }));
        assert!(p.contains("no memory"), "{p}");
        // Invalid UTF-8, a non-unit key, a dimension no allocation should follow.
        let p = problem(load_crafted(|e| {
            e.tensors.insert(
                "memories.experience.bytes".into(),
                vector(Dtype::U8, vec![b'a', 0xff, b'c', b'd', b'e'], 1),
            );
        }));
        assert!(p.contains("not UTF-8"), "{p}");
        let p = problem(load_crafted(|e| {
            e.tensors.insert(
                "intents.keys".into(),
                Bytes {
                    dtype: Dtype::F32,
                    shape: vec![2, 2],
                    data: le_bytes([3.0f32, 0.0, 0.0, 1.0].into_iter(), f32::to_le_bytes),
                },
            );
        }));
        assert!(p.contains("not a unit vector"), "{p}");
        let p = problem(load_crafted(|e| {
            e.metadata.insert("dim".into(), "1000000000000".into());
        }));
        assert!(p.contains("dim"), "{p}");
        let p = problem(load_crafted(|e| {
            e.tensors
                .insert("extra".into(), vector(Dtype::U8, vec![1], 1));
        }));
        assert!(p.contains("unexpected tensor"), "{p}");
    }
}
