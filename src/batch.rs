//! A batching queue for many callers: each submits one query, one memory to add or one text to
//! embed; a queue owned by one thread coalesces whatever is waiting into one embedding call,
//! one batched retrieval and one add (one log record), and hands every caller its own answer.
//!
//! Why: a retrieval's cost is dominated by reading the bank (Phase A scans every key), so 64
//! queries in one call cost little more than one, while 64 separate calls read the bank 64
//! times; and 64 adds in one record cost one fsync. The design follows text-embeddings-
//! inference's queue: no wait timer (a lone request is served at once), and the next batch forms
//! while the current one runs, so the batch size adapts to the load by itself. Caps on requests
//! and on text tokens per batch bound latency and memory; the queue itself is bounded, and a
//! full queue answers [`Error::Overloaded`] at once instead of growing.
//!
//! Contract: every submitted request gets exactly one answer: its result, the error of its own
//! input (a wrong dimension, a non-finite value, an invalid memory: other requests of the batch
//! are not affected), or [`Error::Batch`] when the batched call failed as a whole (a device
//! error; its kind is the underlying error's), or [`Error::QueueStopped`]. A submit returns a
//! [`Pending`] handle: block on it with [`Pending::wait`] (threads) or `.await` it (async code,
//! no thread per request). Retrievals use the bank's stored retrieval config as it is when
//! their batch runs (so a calibration written meanwhile applies), or a config given per request;
//! with `epsilon > 0` a query's exploration draw depends on its position in the batch.
//!
//! ```
//! use std::sync::Arc;
//! use memrl::{Bank, BankConfig, BatchConfig, Batcher, NewMemory, Query};
//! let bank = Arc::new(Bank::in_memory(BankConfig::new(2, "toy"))?);
//! bank.add(NewMemory::new("", "x").embedding(vec![1.0, 0.0]))?;
//! let batcher = Batcher::new(bank, BatchConfig::default())?;
//! let answers = std::thread::scope(|s| {
//!     let handles: Vec<_> = (0..4)
//!         .map(|_| s.spawn(|| batcher.retrieve(Query::Vector(vec![1.0, 0.1]), None)))
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
//! });
//! assert!(answers.iter().all(|r| r.as_ref().unwrap().hits[0].experience == "x"));
//! # Ok::<(), memrl::Error>(())
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use crate::bank::{Bank, Queries, Retrieval};
use crate::config::RetrievalConfig;
use crate::error::{Error, Result};
use crate::store::NewMemory;

/// Caps on one batch and on the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Most text tokens (as the embedder counts them) in one batch; vectors count 0. A single
    /// text over the cap still runs, alone.
    pub max_batch_tokens: usize,
    /// Most requests waiting; a submit beyond it is [`Error::Overloaded`].
    pub capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_batch_tokens: 16_384,
            capacity: 4096,
        }
    }
}

/// How many batches a queue has run, and how large they were (see [`Batcher::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches run.
    pub batches: u64,
    /// Requests in them.
    pub requests: u64,
    /// `sizes[0]`: batches of one request; `sizes[i]` for `1 <= i < 16`: batches of more than
    /// `2^(i-1)` and at most `2^i` requests; `sizes[16]`: larger ones.
    pub sizes: [u64; 17],
}

impl BatchStats {
    fn record(&mut self, size: usize) {
        self.batches += 1;
        self.requests = self.requests.saturating_add(size as u64);
        let bucket = (size.max(1) - 1)
            .checked_ilog2()
            .map_or(0, |b| b as usize + 1);
        self.sizes[bucket.min(16)] += 1;
    }
}

/// One query for [`Batcher::submit_retrieve`].
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    /// A query vector of the bank's dimension.
    Vector(Vec<f32>),
    /// A query text (the bank needs an embedder).
    Text(String),
}

/// The answer to one submitted request, to block on or to await.
#[must_use = "a submitted request is answered through its Pending handle"]
pub struct Pending<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
    ready: Condvar,
}

struct SlotState<T> {
    value: Option<Result<T>>,
    waker: Option<Waker>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Pending<T> {
    /// Blocks the calling thread until the answer is there.
    pub fn wait(self) -> Result<T> {
        let mut state = lock(&self.slot.state);
        loop {
            if let Some(value) = state.value.take() {
                return value;
            }
            state = self
                .slot
                .ready
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut state = lock(&self.slot.state);
        match state.value.take() {
            Some(value) => Poll::Ready(value),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// The answering side of a [`Pending`]; dropping it unanswered answers [`Error::QueueStopped`].
struct Reply<T> {
    slot: Option<Arc<Slot<T>>>,
}

fn reply_pair<T>() -> (Reply<T>, Pending<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(SlotState {
            value: None,
            waker: None,
        }),
        ready: Condvar::new(),
    });
    (
        Reply {
            slot: Some(slot.clone()),
        },
        Pending { slot },
    )
}

impl<T> Reply<T> {
    fn send(mut self, value: Result<T>) {
        if let Some(slot) = self.slot.take() {
            let waker = {
                let mut state = lock(&slot.state);
                state.value = Some(value);
                state.waker.take()
            };
            slot.ready.notify_all();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            Reply { slot: Some(slot) }.send(Err(Error::QueueStopped));
        }
    }
}

enum Request {
    Retrieve {
        query: Query,
        config: Option<RetrievalConfig>,
        reply: Reply<Retrieval>,
    },
    Add {
        memory: NewMemory,
        reply: Reply<u64>,
    },
    Embed {
        text: String,
        reply: Reply<Vec<f32>>,
    },
}

struct Queued {
    request: Request,
    tokens: usize,
}

struct Queue {
    waiting: VecDeque<Queued>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    arrived: Condvar,
    stats: Mutex<BatchStats>,
}

/// The batching queue (see the module docs). Dropping it answers everything queued, then stops
/// the worker thread.
pub struct Batcher {
    bank: Arc<Bank>,
    shared: Arc<Shared>,
    config: BatchConfig,
    worker: Option<JoinHandle<()>>,
}

impl Batcher {
    /// Starts the worker thread over `bank`.
    pub fn new(bank: Arc<Bank>, config: BatchConfig) -> Result<Batcher> {
        for (field, value) in [
            ("max_batch", config.max_batch),
            ("max_batch_tokens", config.max_batch_tokens),
            ("capacity", config.capacity),
        ] {
            if value == 0 {
                return Err(Error::config(field, 0, "must be at least 1"));
            }
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                waiting: VecDeque::new(),
                stopping: false,
            }),
            arrived: Condvar::new(),
            stats: Mutex::new(BatchStats::default()),
        });
        let worker = {
            let (bank, shared, config) = (bank.clone(), shared.clone(), config.clone());
            std::thread::Builder::new()
                .name("memrl-batcher".into())
                .spawn(move || serve(&bank, &shared, &config))
                .map_err(|e| Error::Internal(format!("cannot start the batching thread: {e}")))?
        };
        Ok(Batcher {
            bank,
            shared,
            config,
            worker: Some(worker),
        })
    }

    /// The bank the queue serves.
    pub fn bank(&self) -> &Arc<Bank> {
        &self.bank
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        lock(&self.shared.queue).waiting.len()
    }

    /// The batches run so far, by size.
    pub fn stats(&self) -> BatchStats {
        lock(&self.shared.stats).clone()
    }

    /// Queues one retrieval; `config: None` uses the bank's stored config when the batch runs.
    pub fn submit_retrieve(
        &self,
        query: Query,
        config: Option<RetrievalConfig>,
    ) -> Result<Pending<Retrieval>> {
        if let Some(config) = &config {
            config.validate()?;
        }
        let tokens = match &query {
            Query::Vector(_) => 0,
            Query::Text(text) => self.token_count(text)?,
        };
        let (reply, pending) = reply_pair();
        self.push(
            Request::Retrieve {
                query,
                config,
                reply,
            },
            tokens,
        )?;
        Ok(pending)
    }

    /// Retrieves for one query; blocks until its batch has run.
    pub fn retrieve(&self, query: Query, config: Option<RetrievalConfig>) -> Result<Retrieval> {
        self.submit_retrieve(query, config)?.wait()
    }

    /// Queues one memory to add (its intent embedded in the batch's embedding call when it has
    /// no embedding); concurrent adds are written as one log record.
    pub fn submit_add(&self, memory: NewMemory) -> Result<Pending<u64>> {
        let tokens = match memory.embedding {
            Some(_) => 0,
            None => self.token_count(&memory.intent)?,
        };
        let (reply, pending) = reply_pair();
        self.push(Request::Add { memory, reply }, tokens)?;
        Ok(pending)
    }

    /// Adds one memory; blocks until its batch has run.
    pub fn add(&self, memory: NewMemory) -> Result<u64> {
        self.submit_add(memory)?.wait()
    }

    /// Queues one text to embed with the bank's embedder (a unit vector comes back).
    pub fn submit_embed(&self, text: String) -> Result<Pending<Vec<f32>>> {
        let tokens = self.token_count(&text)?;
        let (reply, pending) = reply_pair();
        self.push(Request::Embed { text, reply }, tokens)?;
        Ok(pending)
    }

    /// Tokens `text` takes (counted on the caller's thread, so the queue thread only packs).
    fn token_count(&self, text: &str) -> Result<usize> {
        #[cfg(feature = "embed")]
        if let Some(embedder) = self.bank.embedder() {
            return embedder.token_count(text);
        }
        let _ = text;
        Err(Error::NoEmbedder {
            operation: "a text request".into(),
        })
    }

    fn push(&self, request: Request, tokens: usize) -> Result<()> {
        let mut queue = lock(&self.shared.queue);
        if queue.stopping {
            return Err(Error::QueueStopped);
        }
        if queue.waiting.len() >= self.config.capacity {
            return Err(Error::Overloaded {
                pending: queue.waiting.len(),
                capacity: self.config.capacity,
            });
        }
        queue.waiting.push_back(Queued { request, tokens });
        drop(queue);
        self.shared.arrived.notify_one();
        Ok(())
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.arrived.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker: wait for requests, take up to the caps, run them as one batch, repeat; once
/// stopping, drain what is queued and return.
fn serve(bank: &Bank, shared: &Shared, config: &BatchConfig) {
    loop {
        let batch = {
            let mut queue = lock(&shared.queue);
            while queue.waiting.is_empty() && !queue.stopping {
                queue = shared
                    .arrived
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if queue.waiting.is_empty() {
                return;
            }
            let mut batch = Vec::new();
            let mut tokens = 0;
            while let Some(next) = queue.waiting.front() {
                let over = !batch.is_empty()
                    && (batch.len() >= config.max_batch
                        || tokens + next.tokens > config.max_batch_tokens);
                if over {
                    break;
                }
                tokens += next.tokens;
                batch.extend(queue.waiting.pop_front().map(|q| q.request));
            }
            batch
        };
        lock(&shared.stats).record(batch.len());
        run_batch(bank, batch);
    }
}

/// A text waiting for its vector, and where the vector goes.
enum TextFor {
    Retrieve(usize),
    Add(usize),
    Embed(usize),
}

/// A retrieval of the batch: its vector (once embedded), its config, its caller.
type RetrievalJob = (Option<Vec<f32>>, Option<RetrievalConfig>, Reply<Retrieval>);
/// An embedding of the batch: its vector (once embedded), its caller.
type EmbedJob = (Option<Vec<f32>>, Reply<Vec<f32>>);
/// Retrievals that share a config: one batched call.
type RetrievalGroup = (Option<RetrievalConfig>, Vec<(Vec<f32>, Reply<Retrieval>)>);

fn run_batch(bank: &Bank, batch: Vec<Request>) {
    let mut retrievals: Vec<RetrievalJob> = Vec::new();
    let mut adds: Vec<(NewMemory, Reply<u64>)> = Vec::new();
    let mut embeds: Vec<EmbedJob> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    let mut text_for: Vec<TextFor> = Vec::new();
    for request in batch {
        match request {
            Request::Retrieve {
                query,
                config,
                reply,
            } => {
                let vector = match query {
                    Query::Vector(v) => Some(v),
                    Query::Text(text) => {
                        texts.push(text);
                        text_for.push(TextFor::Retrieve(retrievals.len()));
                        None
                    }
                };
                retrievals.push((vector, config, reply));
            }
            Request::Add { memory, reply } => {
                if memory.embedding.is_none() {
                    texts.push(memory.intent.clone());
                    text_for.push(TextFor::Add(adds.len()));
                }
                adds.push((memory, reply));
            }
            Request::Embed { text, reply } => {
                texts.push(text);
                text_for.push(TextFor::Embed(embeds.len()));
                embeds.push((None, reply));
            }
        }
    }

    // One embedding call for every text of the batch.
    let mut failed_text: Vec<bool> = vec![false; text_for.len()];
    let mut text_error: Option<std::sync::Arc<Error>> = None;
    if !texts.is_empty() {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        match bank.embed_rows(&refs, "a text request") {
            Ok(rows) => {
                let dim = rows.len() / texts.len();
                for (k, target) in text_for.iter().enumerate() {
                    let row = rows[k * dim..(k + 1) * dim].to_vec();
                    match *target {
                        TextFor::Retrieve(i) => retrievals[i].0 = Some(row),
                        TextFor::Add(i) => adds[i].0.embedding = Some(row),
                        TextFor::Embed(i) => embeds[i].0 = Some(row),
                    }
                }
            }
            Err(e) => {
                text_error = Some(e.shared());
                failed_text.iter_mut().for_each(|f| *f = true);
            }
        }
    }
    let text_failure = || {
        Error::Batch(text_error.clone().unwrap_or_else(|| {
            std::sync::Arc::new(Error::Internal(
                "a text of the batch was not embedded".into(),
            ))
        }))
    };

    for (vector, reply) in embeds {
        reply.send(vector.ok_or_else(text_failure));
    }

    // Adds: one record for all, or, when one input is at fault, each alone.
    let mut ready_adds = Vec::with_capacity(adds.len());
    for (memory, reply) in adds {
        if memory.embedding.is_none() {
            reply.send(Err(text_failure()));
        } else {
            ready_adds.push((memory, reply));
        }
    }
    if !ready_adds.is_empty() {
        let memories: Vec<NewMemory> = ready_adds.iter().map(|(m, _)| m.clone()).collect();
        match bank.add_many(memories) {
            Ok(ids) => {
                for ((_, reply), id) in ready_adds.into_iter().zip(ids) {
                    reply.send(Ok(id));
                }
            }
            // A batch of one: the error is its own.
            Err(e) if ready_adds.len() == 1 => {
                if let Some((_, reply)) = ready_adds.into_iter().next() {
                    reply.send(Err(e));
                }
            }
            Err(e) if is_input_error(&e) => {
                for (memory, reply) in ready_adds {
                    reply.send(bank.add(memory));
                }
            }
            Err(e) => {
                let shared = e.shared();
                for (_, reply) in ready_adds {
                    reply.send(Err(Error::Batch(shared.clone())));
                }
            }
        }
    }

    // Retrievals: one call per distinct config; a query's own problem is its own error.
    let dim = bank.config().dim;
    let mut groups: Vec<RetrievalGroup> = Vec::new();
    for (vector, config, reply) in retrievals {
        let Some(vector) = vector else {
            reply.send(Err(text_failure()));
            continue;
        };
        if let Err(e) = check_query(&vector, dim) {
            reply.send(Err(e));
            continue;
        }
        match groups.iter_mut().find(|(c, _)| *c == config) {
            Some((_, members)) => members.push((vector, reply)),
            None => groups.push((config, vec![(vector, reply)])),
        }
    }
    for (config, members) in groups {
        let flat: Vec<f32> = members
            .iter()
            .flat_map(|(v, _)| v.iter().copied())
            .collect();
        let result = match &config {
            Some(config) => bank.retrieve_with(Queries::Rows(&flat), config),
            None => bank.retrieve(Queries::Rows(&flat)),
        };
        match result {
            Ok(retrievals) => {
                for ((_, reply), retrieval) in members.into_iter().zip(retrievals) {
                    reply.send(Ok(retrieval));
                }
            }
            Err(e) if members.len() == 1 => {
                if let Some((_, reply)) = members.into_iter().next() {
                    reply.send(Err(e));
                }
            }
            Err(e) => {
                let shared = e.shared();
                for (_, reply) in members {
                    reply.send(Err(Error::Batch(shared.clone())));
                }
            }
        }
    }
}

/// Whether an error is about the caller's input (so the batch is worth retrying one by one).
fn is_input_error(e: &Error) -> bool {
    matches!(
        e.kind(),
        crate::ErrorKind::InvalidInput | crate::ErrorKind::Conflict | crate::ErrorKind::NotFound
    )
}

/// The checks a query must pass alone, so one bad query never fails the others.
fn check_query(vector: &[f32], dim: usize) -> Result<()> {
    if vector.len() != dim {
        return Err(Error::DimensionMismatch {
            what: "query",
            expected: dim,
            got: vector.len(),
        });
    }
    // The same rule as the retrieval itself.
    crate::store::normalise_rows("query", vector, dim).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BankConfig, NewMemory};

    fn bank(n: usize) -> Arc<Bank> {
        let bank = Bank::in_memory(BankConfig::new(8, "toy")).unwrap();
        let mut rng = crate::rng::SplitMix64::new(3);
        let memories = (0..n)
            .map(|i| NewMemory::new("", format!("m{i}")).embedding(rng.unit_vector(8)))
            .collect();
        bank.add_many(memories).unwrap();
        Arc::new(bank)
    }

    #[test]
    fn concurrent_callers_get_their_own_hits() {
        let bank = bank(200);
        let cfg = RetrievalConfig {
            delta: -1.0,
            ..Default::default()
        };
        let batcher = Batcher::new(
            bank.clone(),
            BatchConfig {
                max_batch: 5,
                ..Default::default()
            },
        )
        .unwrap();
        let mut rng = crate::rng::SplitMix64::new(9);
        let queries: Vec<Vec<f32>> = (0..64).map(|_| rng.unit_vector(8)).collect();
        let got: Vec<Result<Retrieval>> = std::thread::scope(|s| {
            let handles: Vec<_> = queries
                .iter()
                .map(|q| {
                    let cfg = cfg.clone();
                    let batcher = &batcher;
                    s.spawn(move || batcher.retrieve(Query::Vector(q.clone()), Some(cfg)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (q, got) in queries.iter().zip(got) {
            let alone = bank.retrieve_with(&[q.clone()][..], &cfg).unwrap();
            assert_eq!(got.unwrap().hits, alone[0].hits);
        }
        let stats = batcher.stats();
        assert_eq!(stats.requests, 64);
        assert_eq!(stats.sizes.iter().sum::<u64>(), stats.batches);
        // Capped at 5 per batch: nothing above the bucket of 5 to 8.
        assert!(stats.sizes[4..].iter().all(|&n| n == 0), "{stats:?}");
    }

    #[test]
    fn a_bad_request_fails_alone() {
        let bank = bank(20);
        let batcher = Batcher::new(bank.clone(), BatchConfig::default()).unwrap();
        let results: Vec<Result<Retrieval>> = std::thread::scope(|s| {
            let bad = s.spawn(|| batcher.retrieve(Query::Vector(vec![1.0; 3]), None));
            let nan = s.spawn(|| batcher.retrieve(Query::Vector(vec![f32::NAN; 8]), None));
            let good = s.spawn(|| batcher.retrieve(Query::Vector(vec![1.0; 8]), None));
            [bad, nan, good].map(|h| h.join().unwrap()).into()
        });
        assert!(matches!(
            results[0],
            Err(Error::DimensionMismatch { got: 3, .. })
        ));
        assert!(matches!(results[1], Err(Error::InvalidEmbedding { .. })));
        assert!(results[2].is_ok());
        // Text needs an embedder; a duplicate id fails only its own add.
        assert!(matches!(
            batcher.retrieve(Query::Text("hello".into()), None),
            Err(Error::NoEmbedder { .. })
        ));
        let adds: Vec<Result<u64>> = std::thread::scope(|s| {
            let dup = s.spawn(|| batcher.add(NewMemory::default().id(0).embedding(vec![1.0; 8])));
            let fine = s.spawn(|| batcher.add(NewMemory::default().embedding(vec![1.0; 8])));
            [dup, fine].map(|h| h.join().unwrap()).into()
        });
        assert!(
            matches!(adds[0], Err(Error::DuplicateId(0))),
            "{:?}",
            adds[0]
        );
        assert!(adds[1].is_ok());
        assert_eq!(bank.len(), 21);
    }

    #[test]
    fn a_full_queue_is_overloaded_and_bad_configs_are_refused() {
        let zero = BatchConfig {
            max_batch: 0,
            ..Default::default()
        };
        assert!(Batcher::new(bank(1), zero).is_err());
        let bad = RetrievalConfig {
            k1: 0,
            ..Default::default()
        };
        let batcher = Batcher::new(bank(1), BatchConfig::default()).unwrap();
        assert!(batcher
            .submit_retrieve(Query::Vector(vec![1.0; 8]), Some(bad))
            .is_err());
        // A queue of one with no worker to drain it: the second request is refused, and the
        // first is answered when the queue is dropped.
        let idle = Batcher {
            bank: bank(1),
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    waiting: VecDeque::new(),
                    stopping: false,
                }),
                arrived: Condvar::new(),
                stats: Mutex::new(BatchStats::default()),
            }),
            config: BatchConfig {
                capacity: 1,
                ..Default::default()
            },
            worker: None,
        };
        let first = idle
            .submit_retrieve(Query::Vector(vec![1.0; 8]), None)
            .unwrap();
        assert!(matches!(
            idle.submit_retrieve(Query::Vector(vec![1.0; 8]), None),
            Err(Error::Overloaded {
                pending: 1,
                capacity: 1
            })
        ));
        assert_eq!(idle.depth(), 1);
        drop(idle);
        assert!(matches!(first.wait(), Err(Error::QueueStopped)));
    }

    #[test]
    fn batch_sizes_are_bucketed_by_powers_of_two() {
        let mut stats = BatchStats::default();
        for size in [1, 2, 3, 4, 5, 8, 9, 256, 1 << 15, (1 << 15) + 1, usize::MAX] {
            stats.record(size);
        }
        let mut want = [0u64; 17];
        want[0] = 1; // 1
        want[1] = 1; // 2
        want[2] = 2; // 3, 4
        want[3] = 2; // 5, 8
        want[4] = 1; // 9
        want[8] = 1; // 256
        want[15] = 1; // 2^15
        want[16] = 2; // above
        assert_eq!(stats.sizes, want);
        assert_eq!(stats.batches, 11);
    }

    #[test]
    fn pending_handles_can_be_awaited() {
        let bank = bank(5);
        let batcher = Batcher::new(bank, BatchConfig::default()).unwrap();
        let pending = batcher
            .submit_retrieve(Query::Vector(vec![1.0; 8]), None)
            .unwrap();
        // A minimal executor: poll with a waker that unparks this thread.
        struct Unpark(std::thread::Thread);
        impl std::task::Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut pending = Box::pin(pending);
        let answer = loop {
            match pending.as_mut().poll(&mut cx) {
                Poll::Ready(answer) => break answer,
                Poll::Pending => std::thread::park(),
            }
        };
        assert!(answer.is_ok());
    }
}
