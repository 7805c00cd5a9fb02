//! The log's bytes: a file header, then frames of `length + CRC32C + body`.
//!
//! ```text
//! header v2 (32 bytes): "MEMRLWAL" | version u32 = 2 | dim u32 | crc32c(model_id) u32 | bank_id u64 | crc32c(previous 28 bytes) u32
//! header v1 (24 bytes): "MEMRLWAL" | version u32 = 1 | dim u32 | crc32c(model_id) u32 | crc32c(previous 20 bytes) u32
//! frame:                body_len u32 | crc32c(body_len bytes ++ body) u32 | body
//! body:                 seq u64 | tag u8 | payload (below)
//! ```
//!
//! All integers and floats are little-endian; a string is `len u32 | UTF-8 bytes`.
//! Payloads written today: `6` add plan (`created_ms u64 | next_id u64 | count u32 | per memory:
//! id u64 | q f32 | success u8 | key: 0 then dim u32 and dim f32 (a new unit key), or 2 then the
//! key id u64 it is filed under | intent str | experience str | 0, or 1 then metadata JSON str`),
//! `2` remove (`id u64`), `7` outcome plan (`applied_ms u64 | count u32 | per touched memory:
//! id u64 | q f32 | visits u64 | last_reward f32`), `8` outcome plan with baselines (as `7`, then
//! `count u32 | per memory of a touched key: id u64 | baseline f32`; written only by
//! baseline-corrected credit), `4` retrieval config and `5` learning config
//! (one JSON str each). Version-1 logs also hold `1` add (as `6` without `next_id`, and key kind
//! 1 then the id u64 of the memory whose key it shares) and `3` outcomes (`applied_ms u64 | alpha
//! f32 | q_init f32 | 0, or 1 then min f32 max f32 mode u8 (0 clamp, 1 reject) | count u32 | per
//! outcome: reward f32 | n u32 | n ids u64`, planned again on replay); they are still read.
//!
//! The CRC covers the length too, so a flipped length bit cannot make the reader skip to a
//! plausible-looking frame. Decoding never trusts a count: a length beyond the bytes left is a
//! torn frame, and no vector is reserved larger than what the remaining bytes could hold.

use crate::config::{LearningConfig, OutOfRange, RetrievalConfig, RewardRange};
use crate::index::KeyId;
use crate::learn::Outcome;
use crate::store::{AddPlan, KeyChoice, MemoryUpdate, OutcomePlan, PlannedMemory};

use super::{Record, RecordRef};

pub(crate) const MAGIC: &[u8; 8] = b"MEMRLWAL";
/// The version this memrl writes.
pub(crate) const VERSION: u32 = 2;
/// Bytes of a version-2 header (what a new or emptied log holds).
pub(crate) const HEADER_LEN: usize = 32;
/// Bytes of a version-1 header.
const HEADER_LEN_V1: usize = 24;
const FRAME_PREFIX: usize = 8;

const TAG_ADD_V1: u8 = 1;
const TAG_REMOVE: u8 = 2;
const TAG_OUTCOMES_V1: u8 = 3;
const TAG_RETRIEVAL: u8 = 4;
const TAG_LEARNING: u8 = 5;
const TAG_ADD: u8 = 6;
const TAG_OUTCOME_PLAN: u8 = 7;
const TAG_OUTCOME_PLAN_BASELINES: u8 = 8;

const KEY_NEW: u8 = 0;
const KEY_SAME_AS_MEMORY_V1: u8 = 1;
const KEY_EXISTING: u8 = 2;
/// A new key with an id the plan names (a shard of a sharded bank: key ids are global).
const KEY_NEW_AT: u8 = 3;

/// What a log's header says: the bank it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogHeader {
    /// The format version (1 or 2).
    pub(crate) version: u32,
    /// The bank's embedding dimension.
    pub(crate) dim: u32,
    /// CRC32C of the bank's model id.
    pub(crate) model_crc: u32,
    /// The bank's identity (0 in version-1 headers, which have none).
    pub(crate) bank_id: u64,
}

impl LogHeader {
    /// The (version-2) header of the bank with this dimension, model and identity.
    pub(crate) fn new(dim: usize, model_id: &str, bank_id: u64) -> Self {
        Self {
            version: VERSION,
            dim: dim as u32,
            model_crc: crc32c::crc32c(model_id.as_bytes()),
            bank_id,
        }
    }

    /// Bytes of this header in the file.
    pub(crate) fn len(&self) -> usize {
        if self.version == 1 {
            HEADER_LEN_V1
        } else {
            HEADER_LEN
        }
    }

    /// The version-2 encoding (memrl writes no other).
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..8].copy_from_slice(MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.dim.to_le_bytes());
        out[16..20].copy_from_slice(&self.model_crc.to_le_bytes());
        out[20..28].copy_from_slice(&self.bank_id.to_le_bytes());
        let crc = crc32c::crc32c(&out[..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses a header (version 1 or 2), or says what is wrong with it.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN_V1 {
            return Err(format!(
                "the file has {} bytes, shorter than any header",
                bytes.len()
            ));
        }
        if &bytes[..8] != MAGIC {
            return Err("not a memrl log (bad magic bytes)".into());
        }
        let word = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        match word(8) {
            1 => {
                if word(20) != crc32c::crc32c(&bytes[..20]) {
                    return Err("the header's checksum does not match".into());
                }
                Ok(Self {
                    version: 1,
                    dim: word(12),
                    model_crc: word(16),
                    bank_id: 0,
                })
            }
            2 => {
                if bytes.len() < HEADER_LEN {
                    return Err(format!(
                        "the file has {} bytes, shorter than the {HEADER_LEN}-byte header",
                        bytes.len()
                    ));
                }
                if word(28) != crc32c::crc32c(&bytes[..28]) {
                    return Err("the header's checksum does not match".into());
                }
                let mut id = [0u8; 8];
                id.copy_from_slice(&bytes[20..28]);
                Ok(Self {
                    version: 2,
                    dim: word(12),
                    model_crc: word(16),
                    bank_id: u64::from_le_bytes(id),
                })
            }
            other => Err(format!(
                "log format version {other} (this memrl reads 1 and 2)"
            )),
        }
    }
}

/// Appends one frame (sequence number `seq`) to `out`.
pub(crate) fn encode_frame(
    seq: u64,
    record: RecordRef<'_>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_PREFIX]);
    out.extend_from_slice(&seq.to_le_bytes());
    match record {
        RecordRef::Add(add) => {
            out.push(TAG_ADD);
            put_u64(out, add.created_ms);
            put_u64(
                out,
                add.next_id.ok_or(
                    "an add plan without next_id (from a version-1 log) is not written again",
                )?,
            );
            put_len(out, add.memories.len())?;
            for m in &add.memories {
                put_u64(out, m.id);
                put_f32(out, m.q);
                out.push(m.success as u8);
                match &m.key {
                    KeyChoice::New(unit) => {
                        out.push(KEY_NEW);
                        put_len(out, unit.len())?;
                        for &v in unit {
                            put_f32(out, v);
                        }
                    }
                    KeyChoice::Existing(key) => {
                        out.push(KEY_EXISTING);
                        put_u64(out, key.0);
                    }
                    KeyChoice::NewAt(key, unit) => {
                        out.push(KEY_NEW_AT);
                        put_u64(out, key.0);
                        put_len(out, unit.len())?;
                        for &v in unit {
                            put_f32(out, v);
                        }
                    }
                    KeyChoice::SameAsMemory(_) => {
                        return Err("a version-1 shared key is not written again".into())
                    }
                }
                put_str(out, &m.intent)?;
                put_str(out, &m.experience)?;
                match &m.metadata {
                    None => out.push(0),
                    Some(v) => {
                        out.push(1);
                        put_str(out, &v.to_string())?;
                    }
                }
            }
        }
        RecordRef::Remove(id) => {
            out.push(TAG_REMOVE);
            put_u64(out, id);
        }
        RecordRef::Outcomes(plan) => {
            // A plan without baselines (the paper's credit) is written as before.
            out.push(if plan.baselines.is_empty() {
                TAG_OUTCOME_PLAN
            } else {
                TAG_OUTCOME_PLAN_BASELINES
            });
            put_u64(out, plan.applied_ms);
            put_len(out, plan.updates.len())?;
            for u in &plan.updates {
                put_u64(out, u.id);
                put_f32(out, u.q);
                put_u64(out, u.visits);
                put_f32(out, u.last_reward);
            }
            if !plan.baselines.is_empty() {
                put_len(out, plan.baselines.len())?;
                for &(id, b) in &plan.baselines {
                    put_u64(out, id);
                    put_f32(out, b);
                }
            }
        }
        RecordRef::RetrievalConfig(config) => {
            out.push(TAG_RETRIEVAL);
            put_str(
                out,
                &serde_json::to_string(config).map_err(|e| e.to_string())?,
            )?;
        }
        RecordRef::LearningConfig(config) => {
            out.push(TAG_LEARNING);
            put_str(
                out,
                &serde_json::to_string(config).map_err(|e| e.to_string())?,
            )?;
        }
    }
    let body_len = out.len() - start - FRAME_PREFIX;
    let len = u32::try_from(body_len)
        .map_err(|_| format!("a record of {body_len} bytes exceeds the log's 4 GiB frame limit"))?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_PREFIX..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn frame_crc(len: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len), body)
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_f32(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, n: usize) -> Result<(), String> {
    let n = u32::try_from(n).map_err(|_| format!("a count of {n} does not fit the log's u32"))?;
    out.extend_from_slice(&n.to_le_bytes());
    Ok(())
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<(), String> {
    put_len(out, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Why a frame could not be read.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The end of the file cuts it: fewer bytes than a frame prefix, or than its length says.
    Torn(String),
    /// Its checksum does not match: bytes written in part, or damaged.
    Checksum(String),
    /// Its checksum matches but its body is not a record this memrl reads (a newer format, or
    /// a bug): never the trace of a write cut short.
    Invalid(String),
}

impl FrameError {
    /// What is wrong, in words.
    pub(crate) fn reason(&self) -> &str {
        match self {
            FrameError::Torn(r) | FrameError::Checksum(r) | FrameError::Invalid(r) => r,
        }
    }
}

/// The sequence number a frame at the start of `bytes` would carry (unchecked: for the search
/// of intact frames after damage), if there are bytes enough.
pub(crate) fn peek_seq(bytes: &[u8]) -> Option<u64> {
    let field = bytes.get(FRAME_PREFIX..FRAME_PREFIX + 8)?;
    let mut seq = [0u8; 8];
    seq.copy_from_slice(field);
    Some(u64::from_le_bytes(seq))
}

/// Bytes of the smallest frame that decodes: prefix, sequence number, tag, and a config of
/// `{}` (a 4-byte length and 2 bytes).
pub(crate) const MIN_FRAME: usize = FRAME_PREFIX + 15;

/// Reads the frame at the start of `bytes`: `(frame length, seq, record)`.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<(usize, u64, Record), FrameError> {
    if bytes.len() < FRAME_PREFIX {
        return Err(FrameError::Torn(format!(
            "{} bytes left, a frame needs at least {FRAME_PREFIX}",
            bytes.len()
        )));
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let stored = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let available = bytes.len() - FRAME_PREFIX;
    if len > available {
        return Err(FrameError::Torn(format!(
            "the frame says {len} bytes, {available} are left"
        )));
    }
    let body = &bytes[FRAME_PREFIX..FRAME_PREFIX + len];
    // Fuzzing builds skip the CRC so the fuzzer reaches the decoder behind it.
    if !cfg!(fuzzing) && frame_crc(&bytes[..4], body) != stored {
        return Err(FrameError::Checksum("checksum mismatch".into()));
    }
    let mut cursor = Cursor {
        bytes: body,
        pos: 0,
    };
    let (seq, record) = decode_body(&mut cursor).map_err(FrameError::Invalid)?;
    if cursor.pos != body.len() {
        return Err(FrameError::Invalid(format!(
            "{} bytes after the record's end",
            body.len() - cursor.pos
        )));
    }
    Ok((FRAME_PREFIX + len, seq, record))
}

fn decode_body(c: &mut Cursor<'_>) -> Result<(u64, Record), String> {
    let seq = c.u64()?;
    let record = match c.u8()? {
        tag @ (TAG_ADD | TAG_ADD_V1) => {
            let created_ms = c.u64()?;
            let next_id = if tag == TAG_ADD { Some(c.u64()?) } else { None };
            // The smallest memory is 31 bytes (id, q, success, shared key, two empty texts, no
            // metadata): a count beyond what is left is refused before anything is reserved.
            let count = c.count(31)?;
            let mut memories = Vec::with_capacity(count);
            for _ in 0..count {
                let id = c.u64()?;
                let q = c.f32()?;
                let success = c.flag("success")?;
                let key = match c.u8()? {
                    KEY_NEW => {
                        let dim = c.count(4)?;
                        let mut unit = Vec::with_capacity(dim);
                        for _ in 0..dim {
                            unit.push(c.f32()?);
                        }
                        KeyChoice::New(unit)
                    }
                    KEY_SAME_AS_MEMORY_V1 if tag == TAG_ADD_V1 => KeyChoice::SameAsMemory(c.u64()?),
                    KEY_EXISTING if tag == TAG_ADD => KeyChoice::Existing(KeyId(c.u64()?)),
                    KEY_NEW_AT if tag == TAG_ADD => {
                        let key = KeyId(c.u64()?);
                        let dim = c.count(4)?;
                        let mut unit = Vec::with_capacity(dim);
                        for _ in 0..dim {
                            unit.push(c.f32()?);
                        }
                        KeyChoice::NewAt(key, unit)
                    }
                    other => return Err(format!("key kind {other} is unknown")),
                };
                let intent = c.string("intent")?;
                let experience = c.string("experience")?;
                let metadata = if c.flag("metadata flag")? {
                    let text = c.string("metadata")?;
                    Some(
                        serde_json::from_str(&text)
                            .map_err(|e| format!("memory {id}: metadata is not JSON: {e}"))?,
                    )
                } else {
                    None
                };
                memories.push(PlannedMemory {
                    id,
                    key,
                    intent,
                    experience,
                    success,
                    q,
                    metadata,
                });
            }
            Record::Add(AddPlan {
                created_ms,
                next_id,
                memories,
            })
        }
        TAG_REMOVE => Record::Remove(c.u64()?),
        tag @ (TAG_OUTCOME_PLAN | TAG_OUTCOME_PLAN_BASELINES) => {
            let applied_ms = c.u64()?;
            let count = c.count(24)?;
            let mut updates = Vec::with_capacity(count);
            for _ in 0..count {
                updates.push(MemoryUpdate {
                    id: c.u64()?,
                    q: c.f32()?,
                    visits: c.u64()?,
                    last_reward: c.f32()?,
                });
            }
            let mut baselines = Vec::new();
            if tag == TAG_OUTCOME_PLAN_BASELINES {
                let count = c.count(12)?;
                baselines.reserve(count);
                for _ in 0..count {
                    baselines.push((c.u64()?, c.f32()?));
                }
            }
            Record::Outcomes(OutcomePlan {
                applied_ms,
                updates,
                baselines,
            })
        }
        TAG_OUTCOMES_V1 => {
            let applied_ms = c.u64()?;
            let alpha = c.f32()?;
            let q_init = c.f32()?;
            let reward_range = if c.flag("reward range flag")? {
                let min = c.f32()?;
                let max = c.f32()?;
                let out_of_range = match c.u8()? {
                    0 => OutOfRange::Clamp,
                    1 => OutOfRange::Reject,
                    other => return Err(format!("out-of-range mode {other} is unknown")),
                };
                Some(RewardRange {
                    min,
                    max,
                    out_of_range,
                })
            } else {
                None
            };
            let count = c.count(8)?;
            let mut outcomes = Vec::with_capacity(count);
            for _ in 0..count {
                let reward = c.f32()?;
                let n = c.count(8)?;
                let mut memory_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    memory_ids.push(c.u64()?);
                }
                outcomes.push(Outcome { memory_ids, reward });
            }
            Record::OutcomesV1 {
                applied_ms,
                config: LearningConfig {
                    alpha,
                    q_init,
                    reward_range,
                    // Version 1 knew only the paper's credit.
                    ..LearningConfig::default()
                },
                outcomes,
            }
        }
        TAG_RETRIEVAL => {
            let text = c.string("retrieval config")?;
            let config: RetrievalConfig = serde_json::from_str(&text)
                .map_err(|e| format!("retrieval config is not valid: {e}"))?;
            Record::RetrievalConfig(config)
        }
        TAG_LEARNING => {
            let text = c.string("learning config")?;
            let config: LearningConfig = serde_json::from_str(&text)
                .map_err(|e| format!("learning config is not valid: {e}"))?;
            Record::LearningConfig(config)
        }
        other => return Err(format!("record type {other} is unknown")),
    };
    Ok((seq, record))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(format!(
                "the record ends early (needs {n} more bytes at body offset {}, {left} left)",
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self, what: &str) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("{what} is {other}, not 0 or 1")),
        }
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn f32(&mut self) -> Result<f32, String> {
        Ok(f32::from_bits(self.u32()?))
    }

    /// A count of items of at least `min_item` bytes each, refused if the rest cannot hold it.
    fn count(&mut self, min_item: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        let left = self.bytes.len() - self.pos;
        if n.saturating_mul(min_item) > left {
            return Err(format!(
                "a count of {n} items needs at least {} bytes, {left} are left",
                n.saturating_mul(min_item)
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.count(1)?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| format!("{what} is not UTF-8: {e}"))
    }
}
