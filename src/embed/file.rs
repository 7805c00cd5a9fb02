//! Embeddings of a stream of texts, written to one safetensors file (what `memrl embed` makes).
//!
//! The file holds `embeddings` (`N x d` f32, unit rows), `lines` (`N` u64: the 1-based input
//! line of each row, since blank input lines are skipped) and string metadata (model, dimension,
//! input). Rows are streamed to a scratch file beside the output as they come, so memory stays
//! flat however long the input; [`EmbeddingFileWriter::finish`] then writes the safetensors
//! file through the same atomic path as bank snapshots (temporary file, fsync, rename). An
//! unfinished writer leaves no output and removes its scratch file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::snapshot::write_atomically;

/// Streams rows to disk; see the module docs.
pub struct EmbeddingFileWriter {
    out: PathBuf,
    scratch_path: PathBuf,
    scratch: Option<BufWriter<File>>,
    dim: usize,
    lines: Vec<u64>,
    metadata: HashMap<String, String>,
}

impl EmbeddingFileWriter {
    /// Starts a file of `dim`-dimensional rows at `out` (written only by `finish`).
    pub fn create(out: &Path, dim: usize, metadata: HashMap<String, String>) -> Result<Self> {
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embeddings".into());
        let scratch_path = out.with_file_name(format!(".{name}.rows.tmp"));
        let file = File::create(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
        Ok(Self {
            out: out.to_path_buf(),
            scratch_path,
            scratch: Some(BufWriter::new(file)),
            dim,
            lines: Vec::new(),
            metadata,
        })
    }

    /// Appends rows (`rows.len() == lines.len() * dim`, row-major) with their input lines.
    pub fn append(&mut self, rows: &[f32], lines: &[u64]) -> Result<()> {
        if rows.len() != lines.len() * self.dim {
            return Err(Error::DimensionMismatch {
                what: "embedding rows",
                expected: lines.len() * self.dim,
                got: rows.len(),
            });
        }
        let scratch = self.scratch.as_mut().ok_or_else(|| {
            Error::io(
                &self.scratch_path,
                std::io::Error::other("writer is closed"),
            )
        })?;
        for x in rows {
            scratch
                .write_all(&x.to_le_bytes())
                .map_err(|e| Error::io(&self.scratch_path, e))?;
        }
        self.lines.extend_from_slice(lines);
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.lines.len()
    }

    /// Writes the safetensors file atomically and returns the number of rows.
    pub fn finish(mut self) -> Result<usize> {
        let scratch = self.scratch.take();
        if let Some(mut scratch) = scratch {
            scratch
                .flush()
                .map_err(|e| Error::io(&self.scratch_path, e))?;
        }
        let n = self.lines.len();
        let emb_bytes = n * self.dim * 4;
        let mut header = serde_json::Map::new();
        header.insert(
            "embeddings".into(),
            serde_json::json!({"dtype": "F32", "shape": [n, self.dim], "data_offsets": [0, emb_bytes]}),
        );
        header.insert(
            "lines".into(),
            serde_json::json!({"dtype": "U64", "shape": [n], "data_offsets": [emb_bytes, emb_bytes + 8 * n]}),
        );
        header.insert("__metadata__".into(), serde_json::json!(self.metadata));
        let mut header = serde_json::Value::Object(header).to_string().into_bytes();
        // The format wants the data to start 8-byte aligned; padding is spaces.
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let scratch_path = self.scratch_path.clone();
        let lines = std::mem::take(&mut self.lines);
        write_atomically(&self.out, |file, tmp| {
            let mut file = BufWriter::with_capacity(1 << 20, file);
            let io = |e| Error::io(tmp, e);
            file.write_all(&(header.len() as u64).to_le_bytes())
                .map_err(io)?;
            file.write_all(&header).map_err(io)?;
            let mut rows = File::open(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let read = rows
                    .read(&mut buf)
                    .map_err(|e| Error::io(&scratch_path, e))?;
                if read == 0 {
                    break;
                }
                file.write_all(&buf[..read]).map_err(io)?;
            }
            for line in &lines {
                file.write_all(&line.to_le_bytes()).map_err(io)?;
            }
            // Flushes; write_atomically fsyncs and renames.
            file.into_inner().map_err(|e| io(e.into_error()))?;
            Ok(())
        })?;
        Ok(n)
    }
}

impl Drop for EmbeddingFileWriter {
    fn drop(&mut self) {
        // Best effort: the scratch rows are never the result.
        self.scratch.take();
        let _ = std::fs::remove_file(&self.scratch_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_lines_and_metadata_round_trip_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("e.safetensors");
        let meta = HashMap::from([("model".to_string(), "tiny".to_string())]);
        let mut w = EmbeddingFileWriter::create(&out, 3, meta).unwrap();
        w.append(&[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], &[1, 3]).unwrap();
        w.append(&[0.0, 0.0, -1.0], &[4]).unwrap();
        assert!(w.append(&[0.0; 2], &[5]).is_err());
        assert!(!out.exists(), "nothing is written before finish");
        assert_eq!(w.finish().unwrap(), 3);
        let bytes = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["model"], "tiny");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let emb = st.tensor("embeddings").unwrap();
        assert_eq!(emb.shape(), &[3, 3]);
        let floats: Vec<f32> = emb
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(floats, vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        let lines: Vec<u64> = st
            .tensor("lines")
            .unwrap()
            .data()
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(lines, vec![1, 3, 4]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "scratch file left behind");
    }

    #[test]
    fn an_unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("e.safetensors");
        let mut w = EmbeddingFileWriter::create(&out, 2, HashMap::new()).unwrap();
        w.append(&[1.0, 0.0], &[1]).unwrap();
        drop(w);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
