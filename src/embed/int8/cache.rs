//! The int8 weight cache: quantized weights computed once per checkpoint and kept on disk.
//!
//! One safetensors file per source checkpoint, named by the sha256 of its `model.safetensors`:
//! `<cache dir>/int8/v1/<sha256>.safetensors`. Naming by content means a cache can only ever
//! be applied to the exact weights it was made from, wherever the model folder lives (the
//! Hugging Face cache, memrl's cache, a local folder), and memrl never writes into a folder it
//! does not own. `v1` is the quantization scheme: a future scheme gets its own folder rather
//! than fighting over one file with older builds.
//!
//! Tensors: `layers.{i}.{qkv|attn_out|ffn_in|ffn_out}.weight` (I8, `[n, k]`, one row per output
//! channel) and `.scale` (F32, `[n]`). Metadata: `format`, `scheme`, `source_sha256`, and
//! `checksum`, the sha256 of everything else (sorted metadata, then each tensor's name, dtype,
//! shape and bytes, in name order), so a changed bit anywhere is either a parse error or a
//! checksum mismatch.
//! Files are written atomically (temporary file, fsync, rename), so a reader sees the old file,
//! the new one, or none.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use super::QuantizedLinear;
use crate::error::{Error, Result};

const FORMAT: &str = "memrl.int8/1";
/// What the weights are: rotated, then quantized per output channel (see [`super`]).
const SCHEME: &str = "hadamard blocks of up to 128, s8 per output channel (absmax / 127)";
const CHECKSUM_KEY: &str = "checksum";

/// Where the cache for the checkpoint with this sha256 lives under `cache_dir`.
pub(crate) fn path(cache_dir: &Path, source_sha256: &str) -> PathBuf {
    cache_dir
        .join("int8")
        .join("v1")
        .join(format!("{source_sha256}.safetensors"))
}

/// Why a cache file could not be used.
#[derive(Debug)]
pub(crate) enum Unusable {
    /// There is no file (the normal case before the first int8 load).
    Missing,
    /// There is a file, and this is what is wrong with it.
    Invalid(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn checksum(metadata: &HashMap<String, String>, tensors: &[(String, TensorView<'_>)]) -> String {
    let mut hasher = Sha256::new();
    let mut keys: Vec<&String> = metadata.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for key in keys {
        for part in [key.as_bytes(), &[0], metadata[key].as_bytes(), &[0]] {
            hasher.update(part);
        }
    }
    let mut sorted: Vec<&(String, TensorView<'_>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in sorted {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(view.dtype().to_string().as_bytes());
        hasher.update([0]);
        for d in view.shape() {
            hasher.update((*d as u64).to_le_bytes());
        }
        hasher.update(view.data());
    }
    hex(&hasher.finalize())
}

fn names(layer: usize, linear: &str) -> (String, String) {
    (
        format!("layers.{layer}.{linear}.weight"),
        format!("layers.{layer}.{linear}.scale"),
    )
}

/// Reads the cache at `path` and checks it completely: format, source checkpoint, checksum, and
/// that it holds exactly the layers `shapes` lists (`shapes[i][j]` is `(n, k)` of linear `j` of
/// layer `i`, in [`super::LINEARS`] order).
pub(crate) fn read(
    path: &Path,
    source_sha256: &str,
    shapes: &[[(usize, usize); 4]],
) -> std::result::Result<Vec<[QuantizedLinear; 4]>, Unusable> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing),
        Err(e) => return Err(Unusable::Invalid(format!("cannot read it: {e}"))),
    };
    parse(&bytes, source_sha256, shapes).map_err(Unusable::Invalid)
}

fn parse(
    bytes: &[u8],
    source_sha256: &str,
    shapes: &[[(usize, usize); 4]],
) -> std::result::Result<Vec<[QuantizedLinear; 4]>, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a valid safetensors file: {e}"))?;
    let metadata = header
        .metadata()
        .clone()
        .ok_or("no header metadata: not a memrl int8 cache")?;
    let field = |name: &str| {
        metadata
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| format!("metadata field `{name}` is missing"))
    };
    if field("format")? != FORMAT {
        return Err(format!(
            "`format` is `{}`, expected `{FORMAT}`",
            field("format")?
        ));
    }
    if field("scheme")? != SCHEME {
        return Err(format!(
            "`scheme` is `{}`, expected `{SCHEME}`",
            field("scheme")?
        ));
    }
    if field("source_sha256")? != source_sha256 {
        return Err(format!(
            "it was made from the checkpoint with sha256 {}, not this one ({source_sha256})",
            field("source_sha256")?
        ));
    }
    let tensors = st.tensors();
    let computed = checksum(&metadata, &tensors);
    let stored = field(CHECKSUM_KEY)?;
    if stored != computed {
        return Err(format!(
            "checksum mismatch (stored {stored}, computed {computed}): the file is corrupted"
        ));
    }
    if tensors.len() != shapes.len() * 8 {
        return Err(format!(
            "it holds {} tensors, the model needs {}",
            tensors.len(),
            shapes.len() * 8
        ));
    }
    let mut layers = Vec::with_capacity(shapes.len());
    for (i, layer) in shapes.iter().enumerate() {
        let mut linears = Vec::with_capacity(4);
        for (linear, &(n, k)) in super::LINEARS.iter().zip(layer) {
            let (weight_name, scale_name) = names(i, linear);
            let weight = st
                .tensor(&weight_name)
                .map_err(|_| format!("tensor `{weight_name}` is missing"))?;
            let scale = st
                .tensor(&scale_name)
                .map_err(|_| format!("tensor `{scale_name}` is missing"))?;
            if weight.dtype() != Dtype::I8 || weight.shape() != [n, k] {
                return Err(format!(
                    "`{weight_name}` is {:?} {:?}, expected I8 [{n}, {k}]",
                    weight.dtype(),
                    weight.shape()
                ));
            }
            if scale.dtype() != Dtype::F32 || scale.shape() != [n] {
                return Err(format!(
                    "`{scale_name}` is {:?} {:?}, expected F32 [{n}]",
                    scale.dtype(),
                    scale.shape()
                ));
            }
            let weights: Vec<i8> = weight.data().iter().map(|&b| b as i8).collect();
            let scale: Vec<f32> = scale
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if weights.contains(&i8::MIN) || scale.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
                return Err(format!(
                    "`{weight_name}` or its scale holds values the quantizer never writes"
                ));
            }
            linears.push(QuantizedLinear {
                n,
                k,
                weights,
                scale,
            });
        }
        let linears: [QuantizedLinear; 4] = linears
            .try_into()
            .map_err(|_| "four linear layers per layer".to_string())?;
        layers.push(linears);
    }
    Ok(layers)
}

/// Writes the cache for the checkpoint `source_sha256` atomically, creating its folder.
pub(crate) fn write(
    path: &Path,
    source_sha256: &str,
    layers: &[[QuantizedLinear; 4]],
) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // (weight bytes, scale bytes) of every linear layer, which the views below borrow.
    let encoded: Vec<Vec<(Vec<u8>, Vec<u8>)>> = layers
        .iter()
        .map(|layer| {
            layer
                .iter()
                .map(|l| {
                    (
                        l.weights.iter().map(|&w| w as u8).collect(),
                        l.scale.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    )
                })
                .collect()
        })
        .collect();
    let bad = |e: safetensors::SafeTensorError| Error::Model {
        path: path.to_path_buf(),
        problem: format!("cannot encode the int8 cache: {e}"),
    };
    let mut tensors = Vec::with_capacity(layers.len() * 8);
    for (i, (layer, bytes)) in layers.iter().zip(&encoded).enumerate() {
        for ((linear, q), (weight, scale)) in super::LINEARS.iter().zip(layer).zip(bytes) {
            let (weight_name, scale_name) = names(i, linear);
            tensors.push((
                weight_name,
                TensorView::new(Dtype::I8, vec![q.n, q.k], weight).map_err(bad)?,
            ));
            tensors.push((
                scale_name,
                TensorView::new(Dtype::F32, vec![q.n], scale).map_err(bad)?,
            ));
        }
    }
    let mut metadata = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("scheme".to_string(), SCHEME.to_string()),
        ("source_sha256".to_string(), source_sha256.to_string()),
    ]);
    metadata.insert(CHECKSUM_KEY.to_string(), checksum(&metadata, &tensors));
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(bad)?;
    crate::snapshot::write_atomically(path, |file, tmp| {
        std::io::Write::write_all(file, &bytes).map_err(|e| Error::io(tmp, e))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<[QuantizedLinear; 4]> {
        let linear = |n: usize, k: usize, seed: usize| {
            let w: Vec<f32> = (0..n * k)
                .map(|i| (((i + seed) as f32) * 0.37).sin())
                .collect();
            QuantizedLinear::quantize(&w, n, k)
        };
        (0..2)
            .map(|i| {
                [
                    linear(12, 4, i),
                    linear(4, 4, i + 1),
                    linear(8, 4, i + 2),
                    linear(4, 8, i + 3),
                ]
            })
            .collect()
    }

    fn shapes() -> Vec<[(usize, usize); 4]> {
        vec![[(12, 4), (4, 4), (8, 4), (4, 8)]; 2]
    }

    const SHA: &str = "ab";

    #[test]
    fn a_written_cache_reads_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), SHA);
        assert!(matches!(
            read(&file, SHA, &shapes()),
            Err(Unusable::Missing)
        ));
        write(&file, SHA, &layers()).unwrap();
        assert_eq!(read(&file, SHA, &shapes()).unwrap(), layers());
    }

    /// Flipping any one bit of the file, or cutting it anywhere, is always detected.
    #[test]
    fn every_single_bit_flip_and_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), SHA);
        write(&file, SHA, &layers()).unwrap();
        let good = std::fs::read(&file).unwrap();
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[byte] ^= 1 << bit;
                // A flip inside the JSON header can leave it valid (say, a digit of the
                // checksum itself); it must still never parse to the original content silently.
                if let Ok(parsed) = parse(&bad, SHA, &shapes()) {
                    panic!(
                        "byte {byte} bit {bit} flipped, still accepted: {:?}",
                        parsed.len()
                    );
                }
            }
        }
        for len in 0..good.len() {
            assert!(parse(&good[..len], SHA, &shapes()).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn a_cache_of_other_weights_or_shapes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path(), SHA);
        write(&file, SHA, &layers()).unwrap();
        let Err(Unusable::Invalid(why)) = read(&file, "cd", &shapes()) else {
            panic!("accepted a cache of other weights");
        };
        assert!(why.contains("sha256 ab"), "{why}");
        let mut other = shapes();
        other[1][2] = (9, 4);
        let Err(Unusable::Invalid(why)) = read(&file, SHA, &other) else {
            panic!("accepted a cache of another shape");
        };
        assert!(why.contains("layers.1.ffn_in.weight"), "{why}");
        let Err(Unusable::Invalid(why)) = read(&file, SHA, &shapes()[..1]) else {
            panic!("accepted a cache with an extra layer");
        };
        assert!(why.contains("tensors"), "{why}");
    }
}
