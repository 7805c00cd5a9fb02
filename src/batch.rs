//! A batching front end for many agents: each caller asks for one query and blocks; a queue owned
//! by one thread coalesces whatever is waiting into one batched retrieval (and one embedding call
//! for text queries), and hands every caller its own hits.
//!
//! Why: a retrieval's cost is dominated by reading the bank (Phase A scans every key), so 64
//! queries in one call cost little more than one, while 64 separate calls read the bank 64 times.
//! The design follows text-embeddings-inference's queue: there is no wait timer (a lone query is
//! served at once), and the next batch forms while the current one runs, so the batch size adapts
//! to the load by itself. Caps on queries and on text tokens per batch bound latency and memory.
//!
//! Contract: every caller gets exactly one answer: its hits, the error of its own query (a wrong
//! dimension, a non-finite value, an empty text: other queries of the batch are not affected), or
//! an error saying the batch failed as a whole (a device error) or the queue has stopped. All
//! queries go through one [`RetrievalConfig`], fixed at construction; with `epsilon > 0`, a
//! query's exploration draw depends on its position in the batch.
//!
//! ```
//! use std::sync::Arc;
//! use memrl::batch::{BatchConfig, Batcher};
//! use memrl::{BankConfig, Device, Engine, NewMemory, RetrievalConfig};
//! let engine = Arc::new(Engine::new(BankConfig::new(2, "toy"), &Device::Cpu)?);
//! engine.add(NewMemory { embedding: vec![1.0, 0.0], experience: "x".into(), ..Default::default() })?;
//! let batcher = Batcher::new(engine, None, RetrievalConfig::default(), BatchConfig::default())?;
//! let hits = std::thread::scope(|s| {
//!     let handles: Vec<_> = (0..4).map(|_| s.spawn(|| batcher.retrieve_vector(vec![1.0, 0.1]))).collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
//! });
//! assert!(hits.iter().all(|h| h.as_ref().unwrap()[0].experience == "x"));
//! # Ok::<(), memrl::Error>(())
//! ```

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::embed::Embedder;
use crate::{Engine, Error, Hit, Result, RetrievalConfig};

/// Caps on one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most queries in one batched call.
    pub max_batch: usize,
    /// Most text tokens (as the embedder counts them) in one batch; vector queries count 0. A
    /// single text over the cap still runs, alone.
    pub max_batch_tokens: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_batch_tokens: 16_384,
        }
    }
}

enum Query {
    Vector(Vec<f32>),
    Text { text: String, tokens: usize },
}

struct Request {
    query: Query,
    reply: SyncSender<Result<Vec<Hit>>>,
}

impl Request {
    fn tokens(&self) -> usize {
        match &self.query {
            Query::Vector(_) => 0,
            Query::Text { tokens, .. } => *tokens,
        }
    }
}

/// The batching queue (see the module docs). Dropping it lets queued queries finish, then stops
/// the worker thread.
pub struct Batcher {
    queue: Option<Sender<Request>>,
    worker: Option<JoinHandle<()>>,
    embedder: Option<Arc<Embedder>>,
}

impl Batcher {
    /// Starts the worker thread over `engine`. `embedder` is needed for text queries only; its
    /// model must be the bank's.
    pub fn new(
        engine: Arc<Engine>,
        embedder: Option<Arc<Embedder>>,
        retrieval: RetrievalConfig,
        config: BatchConfig,
    ) -> Result<Batcher> {
        retrieval.validate()?;
        if config.max_batch == 0 {
            return Err(Error::config("max_batch", 0, "must be at least 1"));
        }
        if let Some(embedder) = &embedder {
            let bank = engine.with_bank(|b| b.config().clone());
            if bank.model_id != embedder.name() || bank.dim != embedder.dim() {
                return Err(Error::config(
                    "embedder",
                    format!("{} (dim {})", embedder.name(), embedder.dim()),
                    "must be the bank's model",
                ));
            }
        }
        let (queue, requests) = mpsc::channel();
        let worker_embedder = embedder.clone();
        let worker = std::thread::Builder::new()
            .name("memrl-batcher".into())
            .spawn(move || {
                serve(
                    &engine,
                    worker_embedder.as_deref(),
                    &retrieval,
                    &config,
                    &requests,
                )
            })
            .map_err(|e| Error::Batch(format!("cannot start the batching thread: {e}")))?;
        Ok(Batcher {
            queue: Some(queue),
            worker: Some(worker),
            embedder,
        })
    }

    /// Retrieves for one query embedding; blocks until its batch has run.
    pub fn retrieve_vector(&self, query: Vec<f32>) -> Result<Vec<Hit>> {
        self.submit(Query::Vector(query))
    }

    /// Embeds `text` and retrieves for it; blocks until its batch has run. Needs an embedder.
    pub fn retrieve_text(&self, text: &str) -> Result<Vec<Hit>> {
        let embedder = self.embedder.as_ref().ok_or(Error::config(
            "embedder",
            "none",
            "text queries need a Batcher built with an embedder",
        ))?;
        // Counted here, on the caller's thread, so the queue thread only packs.
        let tokens = embedder.token_count(text)?;
        self.submit(Query::Text {
            text: text.to_string(),
            tokens,
        })
    }

    fn submit(&self, query: Query) -> Result<Vec<Hit>> {
        let stopped = || Error::Batch("the batching thread has stopped".into());
        let (reply, answer) = mpsc::sync_channel(1);
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue
            .send(Request { query, reply })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        // Closing the queue ends the worker's loop once it has answered everything queued.
        self.queue.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker: wait for one request, take whatever else is queued (up to the caps), run them as
/// one batch, answer, repeat. A request that would break the token cap opens the next batch.
fn serve(
    engine: &Engine,
    embedder: Option<&Embedder>,
    retrieval: &RetrievalConfig,
    config: &BatchConfig,
    requests: &Receiver<Request>,
) {
    let mut carried: Option<Request> = None;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => match requests.recv() {
                Ok(request) => request,
                Err(_) => return,
            },
        };
        let mut tokens = first.tokens();
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            let Ok(next) = requests.try_recv() else {
                break;
            };
            if tokens + next.tokens() > config.max_batch_tokens {
                carried = Some(next);
                break;
            }
            tokens += next.tokens();
            batch.push(next);
        }
        run_batch(engine, embedder, retrieval, batch);
    }
}

fn run_batch(
    engine: &Engine,
    embedder: Option<&Embedder>,
    retrieval: &RetrievalConfig,
    batch: Vec<Request>,
) {
    let dim = engine.with_bank(|b| b.config().dim);
    let mut vectors: Vec<Option<Vec<f32>>> = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut texts = Vec::new();
    for (i, request) in batch.into_iter().enumerate() {
        match request.query {
            Query::Vector(v) => vectors.push(Some(v)),
            Query::Text { text, .. } => {
                texts.push((i, text));
                vectors.push(None);
            }
        }
        replies.push(Some(request.reply));
    }
    let answer = |replies: &mut Vec<Option<SyncSender<Result<Vec<Hit>>>>>, i: usize, r| {
        if let Some(reply) = replies[i].take() {
            // A caller that gave up has dropped its receiver; nothing to do then.
            let _ = reply.send(r);
        }
    };
    if !texts.is_empty() {
        let embedded = match embedder {
            Some(embedder) => {
                let strings: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
                embedder.embed(&strings).and_then(|e| e.to_rows())
            }
            None => Err(Error::Batch("text query without an embedder".into())),
        };
        match embedded {
            Ok(rows) => {
                for ((i, _), row) in texts.iter().zip(rows) {
                    vectors[*i] = Some(row);
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (i, _) in &texts {
                    answer(&mut replies, *i, Err(Error::Batch(message.clone())));
                }
            }
        }
    }
    // Each query's own problems are its own error; the rest go on together.
    let mut valid = Vec::with_capacity(vectors.len());
    let mut rows = Vec::with_capacity(vectors.len());
    for (i, vector) in vectors.into_iter().enumerate() {
        let Some(vector) = vector else { continue };
        match check_query(&vector, dim) {
            Ok(()) => {
                valid.push(i);
                rows.push(vector);
            }
            Err(e) => answer(&mut replies, i, Err(e)),
        }
    }
    if rows.is_empty() {
        return;
    }
    match engine.retrieve_vectors(&rows, retrieval) {
        Ok(hits) => {
            for (i, hits) in valid.into_iter().zip(hits) {
                answer(&mut replies, i, Ok(hits));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for i in valid {
                answer(&mut replies, i, Err(Error::Batch(message.clone())));
            }
        }
    }
}

fn check_query(vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::DimensionMismatch {
            what: "query",
            expected: dim,
            got: vector.len(),
        });
    }
    let norm: f32 = vector.iter().map(|x| x * x).sum();
    if !norm.is_finite() || norm == 0.0 {
        return Err(Error::InvalidEmbedding {
            what: "query",
            index: 0,
            problem: "is zero or not finite".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BankConfig, Device, NewMemory};

    fn engine(n: usize) -> Arc<Engine> {
        let engine = Engine::new(BankConfig::new(8, "toy"), &Device::Cpu).unwrap();
        let mut rng = crate::rng::SplitMix64::new(3);
        let memories = (0..n)
            .map(|i| NewMemory {
                embedding: rng.unit_vector(8),
                experience: format!("m{i}"),
                ..Default::default()
            })
            .collect();
        engine.add_many(memories).unwrap();
        Arc::new(engine)
    }

    #[test]
    fn concurrent_callers_get_their_own_hits() {
        let engine = engine(200);
        let cfg = RetrievalConfig {
            delta: -1.0,
            ..Default::default()
        };
        let batcher = Batcher::new(
            engine.clone(),
            None,
            cfg.clone(),
            BatchConfig {
                max_batch: 5,
                ..Default::default()
            },
        )
        .unwrap();
        let mut rng = crate::rng::SplitMix64::new(9);
        let queries: Vec<Vec<f32>> = (0..64).map(|_| rng.unit_vector(8)).collect();
        let got: Vec<Result<Vec<Hit>>> = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .iter()
                .map(|q| s.spawn(|| batcher.retrieve_vector(q.clone())))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (q, got) in queries.iter().zip(got) {
            let alone = engine
                .retrieve_vectors(std::slice::from_ref(q), &cfg)
                .unwrap();
            assert_eq!(got.unwrap(), alone[0]);
        }
    }

    #[test]
    fn a_bad_query_fails_alone() {
        let engine = engine(20);
        let batcher = Batcher::new(
            engine,
            None,
            RetrievalConfig::default(),
            BatchConfig::default(),
        )
        .unwrap();
        let results: Vec<Result<Vec<Hit>>> = std::thread::scope(|s| {
            let bad = s.spawn(|| batcher.retrieve_vector(vec![1.0; 3]));
            let nan = s.spawn(|| batcher.retrieve_vector(vec![f32::NAN; 8]));
            let good = s.spawn(|| batcher.retrieve_vector(vec![1.0; 8]));
            [bad, nan, good].map(|h| h.join().unwrap()).into()
        });
        assert!(matches!(
            results[0],
            Err(Error::DimensionMismatch { got: 3, .. })
        ));
        assert!(matches!(results[1], Err(Error::InvalidEmbedding { .. })));
        assert!(results[2].is_ok());
        // Text queries need an embedder.
        assert!(batcher.retrieve_text("hello").is_err());
    }

    #[test]
    fn bad_configs_are_refused() {
        let zero = BatchConfig {
            max_batch: 0,
            ..Default::default()
        };
        assert!(Batcher::new(engine(1), None, RetrievalConfig::default(), zero).is_err());
        let bad = RetrievalConfig {
            k1: 0,
            ..Default::default()
        };
        assert!(Batcher::new(engine(1), None, bad, BatchConfig::default()).is_err());
    }
}
