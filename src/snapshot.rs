//! Bank snapshots: one `.safetensors` file holding a whole bank.
//!
//! Layout (format version 2). Tensors (`N` memories, `K` intent keys, `d` dimensions):
//!
//! | name | dtype | shape | meaning |
//! |---|---|---|---|
//! | `intents.keys` | F32 / F16 / BF16 | K x d | unit intent keys, in key-id order |
//! | `intents.id` | U64 | K | key ids, strictly increasing |
//! | `memories.id` | U64 | N | ids, in slot order |
//! | `memories.key_id` | U64 | N | the key each memory is filed under |
//! | `memories.q` | F32 | N | utility |
//! | `memories.visits` | U64 | N | outcome count |
//! | `memories.last_reward` | F32 | N | last reward (0 while visits = 0) |
//! | `memories.success` | U8 | N | 0 or 1 |
//! | `memories.created_ms`, `memories.updated_ms` | U64 | N | Unix milliseconds |
//! | `memories.{intent,experience,metadata}.bytes` | U8 | total | UTF-8 texts, concatenated |
//! | `memories.{intent,experience,metadata}.offsets` | U64 | N + 1 | text i is `bytes[o[i]..o[i+1]]`; empty metadata = none |
//! | `memories.baseline`, `memories.has_baseline` | F32, U8 | N | optional pair: a memory's key baseline under baseline-corrected credit, and 0 or 1 (whether it has one); written only when some memory has one, so other banks' files are as before |
//!
//! Header metadata: `format` (`memrl.bank`), `format_version`, `bank_id` (16 hex digits: the
//! identity the bank's log header carries too), `model_id`, `dim`, `dtype`, `dedup_sim`,
//! `next_id`, `next_key_id`, `log_seq` (the last write-ahead log record the bank reflects),
//! `retrieval_config` and `learning_config` (JSON), and `checksum`: the CRC32C of every other
//! metadata entry and every tensor's name, dtype, shape and bytes. Any single-bit change anywhere
//! in the file is therefore either a parse error or a checksum mismatch, never a silently
//! different bank.
//!
//! Version 1 files (no key ids: `memories.key` held U32 rows, no `bank_id`, `next_key_id`) are
//! read too: key ids are the rows, the bank id is 0 (unbound), and the first writer that opens
//! such a bank rewrites it as version 2.
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

use crate::config::{BankConfig, KeyDType, LearningConfig, RetrievalConfig};
use crate::error::{Error, Result};
use crate::fault;
use crate::index::KeyId;
use crate::store::{Memory, Store, StoreParts};

/// The format this version writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
const FORMAT_NAME: &str = "memrl.bank";
const CHECKSUM_KEY: &str = "checksum";

/// What the caller expects of a snapshot; a mismatch is [`Error::SnapshotMismatch`].
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadOptions {
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

/// Writes `store` to `path` atomically (see the module docs); returns the file's size.
pub(crate) fn save(store: &Store, path: &Path) -> Result<u64> {
    save_with_id(store, path, store.bank_id())
}

/// [`save`] under another identity: a copy of a bank is a new bank, whose log can never be
/// mistaken for the original's.
pub(crate) fn save_with_id(store: &Store, path: &Path, bank_id: u64) -> Result<u64> {
    let encoded = encode(store, bank_id)?;
    tracing::debug!(path = %path.display(), memories = store.len(), "saving bank");
    write_atomically(path, |file, tmp| write_safetensors(file, tmp, &encoded))?;
    Ok(fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Writes `encoded` in the safetensors format to `file` (named `tmp` in errors), straight from
/// its buffers. Not `safetensors::serialize_to_file`: that writes through a temporary file of
/// its own (`.tmpXXXXXX`, renamed onto the given path), which a crash leaves behind under a name
/// nothing of ours would recognise; `serialize` would build a second copy of the bank in memory.
fn write_safetensors(file: &mut File, tmp: &Path, encoded: &Encoded) -> Result<()> {
    use std::io::Write;
    let io = |e| Error::io(tmp, e);
    // safetensors' own order: alignment descending, then name (so files are what its
    // serializer would write).
    let mut tensors: Vec<(&String, &Bytes)> = encoded.tensors.iter().collect();
    tensors.sort_by(|(a_name, a), (b_name, b)| b.dtype.cmp(&a.dtype).then(a_name.cmp(b_name)));
    let mut offset = 0;
    let mut infos = Vec::with_capacity(tensors.len());
    for (name, bytes) in &tensors {
        let end = offset + bytes.data.len();
        infos.push((
            name.to_string(),
            safetensors::tensor::TensorInfo {
                dtype: bytes.dtype,
                shape: bytes.shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let header = safetensors::tensor::Metadata::new(Some(encoded.metadata.clone()), infos)
        .map_err(|e| Error::Internal(format!("a snapshot header is not valid: {e}")))?;
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| Error::Internal(format!("a snapshot header cannot be serialised: {e}")))?;
    // The data starts 8-byte aligned; the padding is spaces, as safetensors writes it.
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    fault::write_all(&mut out, &(header.len() as u64).to_le_bytes(), "save.write").map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (_, bytes) in &tensors {
        out.write_all(&bytes.data).map_err(io)?;
    }
    out.flush().map_err(io)
}

fn encode(store: &Store, bank_id: u64) -> Result<Encoded> {
    let config = store.config();
    let rows: Vec<(&Memory, KeyId)> = store.table().rows().collect();
    let memories: Vec<&Memory> = rows.iter().map(|(m, _)| *m).collect();
    let mut tensors: BTreeMap<String, Bytes> = BTreeMap::new();
    let (key_dtype, key_data) = keys_bytes(&store.index().keys()?)?;
    tensors.insert(
        "intents.keys".into(),
        Bytes {
            dtype: key_dtype,
            shape: vec![store.num_intents(), config.dim],
            data: key_data,
        },
    );
    tensors.insert(
        "intents.id".into(),
        vector(
            Dtype::U64,
            le_bytes(store.index().ids().iter().map(|k| k.0), u64::to_le_bytes),
            8,
        ),
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
        "memories.key_id".into(),
        vector(
            Dtype::U64,
            le_bytes(rows.iter().map(|(_, k)| k.0), u64::to_le_bytes),
            8,
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
    if memories.iter().any(|m| m.baseline.is_some()) {
        tensors.insert(
            BASELINE.into(),
            vector(
                Dtype::F32,
                le_bytes(
                    memories.iter().map(|m| m.baseline.unwrap_or(0.0)),
                    f32::to_le_bytes,
                ),
                4,
            ),
        );
        tensors.insert(
            HAS_BASELINE.into(),
            vector(
                Dtype::U8,
                memories
                    .iter()
                    .map(|m| m.baseline.is_some() as u8)
                    .collect(),
                1,
            ),
        );
    }
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
    metadata.insert("bank_id".into(), format!("{bank_id:016x}"));
    metadata.insert("model_id".into(), config.model_id.clone());
    metadata.insert("dim".into(), config.dim.to_string());
    metadata.insert("dtype".into(), config.dtype.as_str().into());
    metadata.insert("dedup_sim".into(), config.dedup_sim.to_string());
    metadata.insert("next_id".into(), store.next_id().to_string());
    metadata.insert("next_key_id".into(), store.next_key_id().to_string());
    metadata.insert("log_seq".into(), store.log_seq().to_string());
    metadata.insert(
        "retrieval_config".into(),
        to_json(store.retrieval_config())?,
    );
    metadata.insert("learning_config".into(), to_json(store.learning_config())?);
    let mut encoded = Encoded { tensors, metadata };
    encoded.sign();
    Ok(encoded)
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| Error::Internal(format!("a config cannot be serialised: {e}")))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary file of a save of `path` by this process: `.<name>.tmp-<pid>-<n>` beside it
/// (the name a writer's clean-up of interrupted saves recognises).
pub(crate) fn temp_prefix(path: &Path) -> Option<String> {
    path.file_name()
        .map(|name| format!(".{}.tmp-", name.to_string_lossy()))
}

/// Creates a temporary file beside `path`, runs `write(file, tmp)` on it, then fsyncs it,
/// renames it over `path` and fsyncs the directory. On an error before the rename the
/// temporary file is removed and `path` is untouched. An error after it (the directory fsync)
/// is [`Error::OutcomeUnknown`]: the new file is in place but may not survive a power loss.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let prefix = temp_prefix(path)
        .ok_or_else(|| Error::io(path, std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut created = false;
    let result = (|| {
        let mut file = fault::step("save.create")
            .and_then(|()| {
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
            })
            .map_err(|e| Error::io(&tmp, e))?;
        created = true;
        write(&mut file, &tmp)?;
        fault::step("save.fsync")
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        fault::step("save.rename")
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| Error::io(path, e))?;
        created = false;
        // Make the rename itself durable.
        fault::step("save.dir_sync")
            .and_then(|()| File::open(&dir).and_then(|d| d.sync_all()))
            .map_err(|e| Error::OutcomeUnknown {
                path: path.to_path_buf(),
                problem: format!(
                    "the new file is in place, but syncing its folder {} failed ({e}): it may not survive a power loss",
                    dir.display()
                ),
            })
    })();
    if result.is_err() && created {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The bank config a snapshot's header records (dimension, dtype, sharing, model), read
/// without loading the rest of the file, and without checking it: loading does that.
pub(crate) fn peek_config(path: &Path) -> Result<BankConfig> {
    let corrupt = |problem: String| Error::CorruptSnapshot {
        path: path.to_path_buf(),
        problem,
    };
    let header = read_header(path)?;
    let field = |name: &str| -> Result<&str> {
        header
            .get("__metadata__")
            .and_then(|m| m.get(name))
            .and_then(|v| v.as_str())
            .ok_or_else(|| corrupt(format!("metadata field `{name}` is missing")))
    };
    if field("format")? != FORMAT_NAME {
        return Err(corrupt("not a memrl bank".into()));
    }
    let config = BankConfig {
        dim: field("dim")?
            .parse()
            .map_err(|_| corrupt("metadata `dim` is not a number".into()))?,
        dtype: field("dtype")?
            .parse()
            .map_err(|_| corrupt("metadata `dtype` is unknown".into()))?,
        dedup_sim: field("dedup_sim")?
            .parse()
            .map_err(|_| corrupt("metadata `dedup_sim` is not a number".into()))?,
        model_id: field("model_id")?.to_string(),
    };
    Ok(config)
}

/// The JSON header of the safetensors file at `path`, read without the rest of the file.
pub(crate) fn read_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let corrupt = |problem: String| Error::CorruptSnapshot {
        path: path.to_path_buf(),
        problem,
    };
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| corrupt("shorter than a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    // safetensors caps its header at 100 MB; nothing is reserved beyond what the file holds.
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > 100_000_000 || len > file_len.saturating_sub(8) {
        return Err(corrupt(format!(
            "a header of {len} bytes in a file of {file_len}"
        )));
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header)
        .map_err(|_| corrupt("the header is cut short".into()))?;
    serde_json::from_slice(&header).map_err(|e| corrupt(format!("the header is not JSON: {e}")))
}

/// The identity recorded in the header of the file at `path` when it is a memrl bank
/// snapshot (whole or not: only the header is read), else `None`.
pub(crate) fn peek_bank_id(path: &Path) -> Option<u64> {
    let header = read_header(path).ok()?;
    let metadata = header.get("__metadata__")?;
    if metadata.get("format")?.as_str()? != FORMAT_NAME {
        return None;
    }
    u64::from_str_radix(metadata.get("bank_id")?.as_str()?, 16).ok()
}

/// Whether the file at `path` starts like a memrl bank snapshot (its header says so).
#[cfg(feature = "embed")]
pub(crate) fn is_bank_file(path: &Path) -> bool {
    read_header(path).is_ok_and(|header| {
        header
            .get("__metadata__")
            .and_then(|m| m.get("format"))
            .and_then(|f| f.as_str())
            == Some(FORMAT_NAME)
    })
}

/// Reads and fully validates a snapshot, then builds the bank's state on `device`.
pub(crate) fn load(path: &Path, device: &Device, options: &LoadOptions) -> Result<Store> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(path, &bytes, device, options)
}

/// [`load`] from bytes already in memory; `path` names them in errors.
pub(crate) fn load_bytes(
    path: &Path,
    bytes: &[u8],
    device: &Device,
    options: &LoadOptions,
) -> Result<Store> {
    let parts = parse(path, bytes, options)?;
    Store::from_parts(parts, device)
}

/// Validates snapshot bytes into the store's parts (no device work but the key tensor on the
/// CPU).
pub(crate) fn parse(path: &Path, bytes: &[u8], options: &LoadOptions) -> Result<StoreParts> {
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
    let names = st.names();
    let has_baselines = names.iter().any(|&n| n == BASELINE || n == HAS_BASELINE);
    let tensor_names = match version {
        "1" => tensor_names(true),
        "2" => {
            let mut names = tensor_names(false);
            if has_baselines {
                names.extend([BASELINE, HAS_BASELINE]);
            }
            names
        }
        _ => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version.to_string(),
                supported: "1 and 2".into(),
            })
        }
    };
    let v1 = version == "1";

    // Integrity before meaning.
    let expected_names: HashSet<&str> = tensor_names.iter().copied().collect();
    for name in &names {
        if !expected_names.contains(name) {
            return Err(corrupt(format!("unexpected tensor `{name}`")));
        }
    }
    let mut described = Vec::with_capacity(tensor_names.len());
    for &name in &tensor_names {
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
    let bank_id = if v1 {
        0
    } else {
        u64::from_str_radix(field("bank_id")?, 16)
            .map_err(|_| corrupt("metadata `bank_id` is not a hexadecimal number".into()))?
    };
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
        if !crate::store::is_unit(key) {
            return Err(corrupt(format!("intent key {row} is not a unit vector")));
        }
    }
    let (key_ids, next_key_id): (Vec<KeyId>, u64) = if v1 {
        ((0..k as u64).map(KeyId).collect(), k as u64)
    } else {
        let ids: Vec<KeyId> = u64s(column("intents.id", Dtype::U64, 8, Some(k))?)
            .into_iter()
            .map(KeyId)
            .collect();
        if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
            return Err(corrupt(format!(
                "key ids are not increasing ({} then {})",
                w[0].0, w[1].0
            )));
        }
        let next_key_id: u64 = field("next_key_id")?
            .parse()
            .map_err(|_| corrupt("metadata `next_key_id` is not a number".into()))?;
        if ids.last().is_some_and(|last| last.0 >= next_key_id) {
            return Err(corrupt(format!(
                "key id {} is not below next_key_id {next_key_id}",
                ids.last().map_or(0, |k| k.0)
            )));
        }
        (ids, next_key_id)
    };
    let row_of: HashMap<KeyId, usize> = key_ids.iter().enumerate().map(|(r, &k)| (k, r)).collect();

    // Memories.
    let ids = u64s(column("memories.id", Dtype::U64, 8, None)?);
    let n = ids.len();
    let key_of: Vec<KeyId> = if v1 {
        u32s(column("memories.key", Dtype::U32, 4, Some(n))?)
            .into_iter()
            .map(|row| KeyId(row as u64))
            .collect()
    } else {
        u64s(column("memories.key_id", Dtype::U64, 8, Some(n))?)
            .into_iter()
            .map(KeyId)
            .collect()
    };
    let q = f32s(column("memories.q", Dtype::F32, 4, Some(n))?);
    let visits = u64s(column("memories.visits", Dtype::U64, 8, Some(n))?);
    let last_reward = f32s(column("memories.last_reward", Dtype::F32, 4, Some(n))?);
    let success = column("memories.success", Dtype::U8, 1, Some(n))?;
    let created = u64s(column("memories.created_ms", Dtype::U64, 8, Some(n))?);
    let updated = u64s(column("memories.updated_ms", Dtype::U64, 8, Some(n))?);
    let baselines: Option<(Vec<f32>, &[u8])> = if has_baselines && !v1 {
        Some((
            f32s(column(BASELINE, Dtype::F32, 4, Some(n))?),
            column(HAS_BASELINE, Dtype::U8, 1, Some(n))?,
        ))
    } else {
        None
    };
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
        let Some(&row) = row_of.get(&key_of[i]) else {
            return Err(corrupt(format!(
                "memory {id} is filed under {}, which the snapshot does not hold",
                key_of[i]
            )));
        };
        key_used[row] = true;
        if !q[i].is_finite() || !last_reward[i].is_finite() {
            return Err(corrupt(format!("memory {id} has a non-finite Q or reward")));
        }
        if success[i] > 1 {
            return Err(corrupt(format!(
                "memory {id} has success flag {}",
                success[i]
            )));
        }
        let baseline = match &baselines {
            None => None,
            Some((values, flags)) => match flags[i] {
                0 => None,
                1 if values[i].is_finite() => Some(values[i]),
                1 => return Err(corrupt(format!("memory {id} has a non-finite baseline"))),
                other => return Err(corrupt(format!("memory {id} has baseline flag {other}"))),
            },
        };
        let metadata = if metadata_json[i].is_empty() {
            None
        } else {
            Some(
                serde_json::from_str(&metadata_json[i])
                    .map_err(|e| corrupt(format!("metadata of memory {id} is not JSON: {e}")))?,
            )
        };
        memories.push((
            Memory {
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
                baseline,
            },
            key_of[i],
        ));
    }
    if let Some(orphan) = key_used.iter().position(|used| !used) {
        return Err(corrupt(format!("{} has no memory", key_ids[orphan])));
    }
    let keys = Tensor::from_vec(keys, (k, dim), &Device::Cpu)?.to_dtype(dtype.candle())?;
    Ok(StoreParts {
        config,
        retrieval,
        learning,
        bank_id,
        key_ids,
        keys,
        memories,
        next_id,
        next_key_id,
        log_seq,
    })
}

/// The optional pair of columns of baseline-corrected credit (see the module docs).
const BASELINE: &str = "memories.baseline";
const HAS_BASELINE: &str = "memories.has_baseline";

/// The memory columns every version has, after the ids and the key column.
const MEMORY_COLUMNS: [&str; 13] = [
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
    "memories.id",
];

/// Every tensor a snapshot of this version has, no more, no less: version 2 adds the key ids
/// and names each memory's key by id (`memories.key_id`) where version 1 named its row
/// (`memories.key`).
fn tensor_names(v1: bool) -> Vec<&'static str> {
    let mut names = if v1 {
        vec!["intents.keys", "memories.key"]
    } else {
        vec!["intents.keys", "intents.id", "memories.key_id"]
    };
    names.extend(MEMORY_COLUMNS);
    names
}

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
    use crate::store::NewMemory;

    fn store() -> Store {
        let mut store = Store::new(BankConfig::new(2, "m"), 7, &Device::Cpu).unwrap();
        let memories = [([1.0, 0.0], "abc"), ([0.0, 1.0], "de")]
            .into_iter()
            .map(|(e, text)| NewMemory::new("", text).embedding(e.to_vec()))
            .collect();
        let plan = store.plan_add(memories, 0).unwrap();
        store.apply_add(&plan).unwrap();
        store
    }

    /// Applies `edit` to a bank's encoding, re-signs it (a crafted file, not a random
    /// corruption) and returns what loading it says.
    fn load_crafted(edit: impl FnOnce(&mut Encoded)) -> Result<Store> {
        let s = store();
        let mut encoded = encode(&s, s.bank_id()).unwrap();
        edit(&mut encoded);
        encoded.sign();
        let bytes = safetensors::serialize(
            encoded.tensors.iter().map(|(n, b)| (n.as_str(), b)),
            Some(encoded.metadata),
        )
        .unwrap();
        load_bytes(
            Path::new("<memory>"),
            &bytes,
            &Device::Cpu,
            &LoadOptions::default(),
        )
    }

    fn problem(result: Result<Store>) -> String {
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
            e.tensors.insert("memories.key_id".into(), offsets(&[0, 7]));
        }));
        assert!(p.contains("filed under key 7"), "{p}");
        let p = problem(load_crafted(|e| {
            e.tensors.insert("memories.key_id".into(), offsets(&[0, 0]));
        }));
        assert!(p.contains("no memory"), "{p}");
        // Key ids out of order, or not below next_key_id.
        let p = problem(load_crafted(|e| {
            e.tensors.insert("intents.id".into(), offsets(&[1, 0]));
        }));
        assert!(p.contains("not increasing"), "{p}");
        let p = problem(load_crafted(|e| {
            e.metadata.insert("next_key_id".into(), "1".into());
        }));
        assert!(p.contains("next_key_id"), "{p}");
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

    #[test]
    fn a_round_trip_keeps_key_ids_counters_and_identity() {
        let mut s = store();
        s.remove(0).unwrap();
        let encoded = encode(&s, s.bank_id()).unwrap();
        let bytes = safetensors::serialize(
            encoded.tensors.iter().map(|(n, b)| (n.as_str(), b)),
            Some(encoded.metadata),
        )
        .unwrap();
        let back = load_bytes(
            Path::new("<m>"),
            &bytes,
            &Device::Cpu,
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(back.index().ids(), &[KeyId(1)]);
        assert_eq!(
            (back.next_id(), back.next_key_id(), back.bank_id()),
            (2, 2, 7)
        );
        assert_eq!(back.get(1), s.get(1));
        back.debug_check().unwrap();
    }
}
