//! Embeddings of a stream of texts, written to one safetensors file (what `memrl embed` makes).
//!
//! The file holds `embeddings` (`N x d` f32, unit rows), `lines` (`N` u64: the 1-based input
//! line of each row, since blank input lines are skipped) and string metadata (model, dimension,
//! input, and `format` = `memrl.embeddings`, which marks the files this writer may overwrite).
//! Rows are streamed to a scratch file beside the output as they come, so memory stays flat
//! however long the input; [`EmbeddingFileWriter::finish`] then writes the safetensors file
//! through the same atomic path as bank snapshots (temporary file, fsync, rename). An unfinished
//! writer leaves no output, and on Unix the scratch file has no name from the moment it is
//! created, so not even a kill leaves it behind.
//!
//! The output path is checked before anything is embedded, and again before it is written: a
//! memrl bank or its log, a path with a bank's log beside it, or any existing file that is not
//! an embeddings file is refused, never overwritten.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::snapshot::{self, write_atomically};

/// The `format` metadata entry of the files this writer makes.
pub const EMBEDDINGS_FORMAT: &str = "memrl.embeddings";

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

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
    /// Starts a file of `dim`-dimensional rows at `out` (written only by `finish`). Refuses an
    /// `out` that is a folder, a memrl bank or log, has a bank's log beside it, or is a file
    /// other than an embeddings file (see the module docs). A link is followed: its target is
    /// what gets replaced.
    pub fn create(out: &Path, dim: usize, metadata: HashMap<String, String>) -> Result<Self> {
        let out = crate::bank::canonical(out)?;
        check_output(&out)?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embeddings".into());
        let scratch_path = out.with_file_name(format!(
            ".{name}.rows.tmp-{}-{}",
            std::process::id(),
            SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&scratch_path)
            .map_err(|e| Error::io(&scratch_path, e))?;
        // The open handle is all the writer needs: without a name, the rows go with the
        // process however it ends.
        #[cfg(unix)]
        std::fs::remove_file(&scratch_path).map_err(|e| Error::io(&scratch_path, e))?;
        Ok(Self {
            out,
            scratch_path,
            scratch: Some(BufWriter::with_capacity(1 << 20, file)),
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
        let scratch = self.scratch.take().ok_or_else(|| {
            Error::io(
                &self.scratch_path,
                std::io::Error::other("writer is closed"),
            )
        })?;
        let scratch_io = |e| Error::io(&self.scratch_path, e);
        let mut rows = scratch
            .into_inner()
            .map_err(|e| scratch_io(e.into_error()))?;
        rows.seek(SeekFrom::Start(0)).map_err(scratch_io)?;
        // The output may have become a bank since `create` (another process).
        check_output(&self.out)?;
        let n = self.lines.len();
        let emb_bytes = n * self.dim * 4;
        let mut metadata = std::mem::take(&mut self.metadata);
        metadata.insert("format".into(), EMBEDDINGS_FORMAT.into());
        let mut header = serde_json::Map::new();
        header.insert(
            "embeddings".into(),
            serde_json::json!({"dtype": "F32", "shape": [n, self.dim], "data_offsets": [0, emb_bytes]}),
        );
        header.insert(
            "lines".into(),
            serde_json::json!({"dtype": "U64", "shape": [n], "data_offsets": [emb_bytes, emb_bytes + 8 * n]}),
        );
        header.insert("__metadata__".into(), serde_json::json!(metadata));
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
            let mut buf = vec![0u8; 1 << 20];
            let mut copied = 0;
            loop {
                let read = rows
                    .read(&mut buf)
                    .map_err(|e| Error::io(&scratch_path, e))?;
                if read == 0 {
                    break;
                }
                copied += read;
                file.write_all(&buf[..read]).map_err(io)?;
            }
            if copied != emb_bytes {
                return Err(Error::io(
                    &scratch_path,
                    std::io::Error::other(format!(
                        "the scratch file holds {copied} bytes of rows, {emb_bytes} were written"
                    )),
                ));
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

/// Refuses an output path that holds, or sits beside, something that is not ours to replace.
fn check_output(out: &Path) -> Result<()> {
    let refuse = |problem: String| Err(Error::value(out.display().to_string(), problem));
    if crate::wal::log_path(out).exists() {
        return refuse(
            "a bank's write-ahead log is beside it: it is (or is becoming) a memrl bank, which embed never overwrites"
                .into(),
        );
    }
    if !out.exists() {
        return Ok(());
    }
    if snapshot::is_bank_file(out) {
        return refuse("is a memrl bank, which embed never overwrites".into());
    }
    if crate::wal::is_log_file(out) {
        return refuse("is a memrl bank's write-ahead log".into());
    }
    if !is_embeddings_file(out) {
        return refuse(
            "exists and is not an embeddings file that memrl wrote: remove it or choose another path"
                .into(),
        );
    }
    Ok(())
}

/// Whether the file at `path` is an embeddings file this writer made: marked with
/// [`EMBEDDINGS_FORMAT`], or (written before the mark) a model-annotated safetensors file of
/// exactly `embeddings` and `lines`.
fn is_embeddings_file(path: &Path) -> bool {
    let Ok(header) = snapshot::read_header(path) else {
        return false;
    };
    let Some(fields) = header.as_object() else {
        return false;
    };
    let metadata = fields.get("__metadata__");
    let format = metadata
        .and_then(|m| m.get("format"))
        .and_then(|f| f.as_str());
    match format {
        Some(format) => format == EMBEDDINGS_FORMAT,
        None => {
            let mut tensors: Vec<&str> = fields
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "__metadata__")
                .collect();
            tensors.sort_unstable();
            tensors == ["embeddings", "lines"] && metadata.and_then(|m| m.get("model")).is_some()
        }
    }
}

impl Drop for EmbeddingFileWriter {
    fn drop(&mut self) {
        // The scratch rows are never the result. On Unix the file has no name already.
        self.scratch.take();
        #[cfg(not(unix))]
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
    fn a_bank_its_log_or_a_foreign_file_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let bank_path = dir.path().join("bank.safetensors");
        let bank = crate::Bank::options()
            .dim(2)
            .model_id("tiny")
            .open(&bank_path)
            .unwrap();
        let log = crate::wal::log_path(&bank_path);
        let foreign = dir.path().join("weights.safetensors");
        std::fs::write(&foreign, b"someone's model").unwrap();
        let beside = dir.path().join("new.safetensors");
        std::fs::write(crate::wal::log_path(&beside), b"").unwrap();
        let before: Vec<Vec<u8>> = [&bank_path, &log, &foreign]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        for out in [
            &bank_path,
            &log,
            &foreign,
            &beside,
            &dir.path().to_path_buf(),
        ] {
            let err = EmbeddingFileWriter::create(out, 2, HashMap::new())
                .err()
                .unwrap_or_else(|| panic!("{} was accepted", out.display()));
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{err}");
        }
        drop(bank);
        // Also once the bank is closed: it is still a bank.
        assert!(EmbeddingFileWriter::create(&bank_path, 2, HashMap::new()).is_err());
        let after: Vec<Vec<u8>> = [&bank_path, &log, &foreign]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(before, after);
        assert!(!beside.exists());
        // An embeddings file is replaced by the next run.
        let out = dir.path().join("e.safetensors");
        for rows in [1, 2] {
            let mut w = EmbeddingFileWriter::create(&out, 2, HashMap::new()).unwrap();
            for i in 0..rows {
                w.append(&[1.0, 0.0], &[i + 1]).unwrap();
            }
            assert_eq!(w.finish().unwrap(), rows as usize);
        }
        let bytes = std::fs::read(&out).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata().as_ref().unwrap()["format"],
            EMBEDDINGS_FORMAT
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_scratch_rows_have_no_name_to_leave_behind() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("e.safetensors");
        let mut w = EmbeddingFileWriter::create(&out, 2, HashMap::new()).unwrap();
        w.append(&[1.0, 0.0, 0.0, 1.0], &[1, 2]).unwrap();
        // While rows are being written, the folder holds nothing a kill could leave.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(w.finish().unwrap(), 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
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
