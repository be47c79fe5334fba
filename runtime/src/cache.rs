//! [`ModelCache`]: SageMaker multi-model endpoint's caching policy, on the device.
//!
//! Three tiers: the model repository (read-only source of truth) -> extracted copies on disk
//! (a byte budget) -> loaded models in memory (a byte budget).
//!
//! - The first request for a name extracts the artifact (MME: "download") and loads it; later
//!   requests hit. Concurrent requests for a model that is loading wait for that one load; if
//!   it fails, every waiter gets the error and a later request tries again.
//! - A load first reserves the model's bytes at the load's peak (estimated from the safetensors
//!   header, corrected after the load). When the budget is short, least-recently-used loaded models with no
//!   request in flight and no pin are unloaded until the new one fits; their extracted copies
//!   stay on disk. If it still cannot fit, the request fails with
//!   [`Error::InsufficientMemory`] (MME's 507) and the budget is left as it was: the budget is
//!   never exceeded.
//! - When the disk budget is short, least-recently-used extracted copies of models that are not
//!   loaded are deleted.
//! - Explicit control: [`ModelCache::load`], [`ModelCache::unload`] (waits for in-flight
//!   requests, returns once the memory is released), [`ModelCache::list`],
//!   [`ModelCache::describe`], [`ModelCache::pin`]/[`ModelCache::unpin`], and a cache-disabled
//!   mode that unloads a model as soon as its last request finishes.
//! - An extracted copy carries the size and mtime of the artifact it came from; a copy whose
//!   artifact changed, or whose weights no longer match the manifest's sha256, is extracted
//!   again. Directories left half-extracted by a crash are removed at start-up, and extraction
//!   and deletion take a file lock so processes sharing a cache directory do not collide.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::artifact::{self, ArtifactLimits, ExtractedArtifact, PARTIAL_PREFIX};
use crate::cache_dir::{self, CacheDir};
use crate::error::{Error, Result};
use crate::repository::{cache_dir_name, ModelRepository};
use crate::runtime::LoadedModel;
use crate::weights;

/// Budgets and switches of a [`ModelCache`].
#[derive(Clone, Debug)]
pub struct CacheOptions {
    /// Bytes held by loaded models: weights as held (packed or f32) plus one item's
    /// activations each.
    pub memory_budget: u64,
    /// Bytes of extracted copies on disk.
    pub disk_budget: u64,
    /// `false` is MME's `ModelCacheSetting=Disabled`: a model is unloaded as soon as its last
    /// request finishes (pinned models excepted).
    pub caching: bool,
    /// Run one zero input through a model right after loading it, so the first real request
    /// does not pay for lazy allocations.
    pub warm_up: bool,
    /// Re-hash an extracted copy's weights before loading it (detects a corrupt copy).
    pub verify_copies: bool,
    /// How long a load waits for memory held by requests in flight before it is refused.
    /// Memory held by pinned models, or a model larger than the budget, is refused at once.
    pub memory_wait: Duration,
    /// Keep the last this-many [`CacheEvent`]s for [`ModelCache::take_events`] (0: none).
    pub event_log: usize,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            memory_budget: 1 << 30,
            disk_budget: 4 << 30,
            caching: true,
            warm_up: false,
            verify_copies: true,
            memory_wait: Duration::from_secs(10),
            event_log: 0,
        }
    }
}

/// Why a model left memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnloadReason {
    /// Least recently used, unloaded to make room.
    Evicted,
    /// [`ModelCache::unload`].
    Explicit,
    /// Cache-disabled mode, after its last request.
    CacheDisabled,
}

/// What the cache did, in order; kept when [`CacheOptions::event_log`] is non-zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum CacheEvent {
    Hit {
        name: String,
    },
    Extract {
        name: String,
        bytes: u64,
    },
    Load {
        name: String,
        bytes: u64,
        memory_used: u64,
    },
    LoadFailed {
        name: String,
    },
    Unload {
        name: String,
        reason: UnloadReason,
        memory_used: u64,
    },
    DeleteCopy {
        name: String,
        bytes: u64,
    },
    Refused {
        name: String,
        needed: u64,
    },
}

/// Where a model is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelState {
    /// Known (requested before or found on disk), not in memory.
    Unloaded,
    Loading,
    Loaded,
    /// Waiting for in-flight requests before leaving memory.
    Unloading,
}

/// [`ModelCache::describe`]'s answer (MME's DescribeModel, plus counters).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelDescription {
    pub name: String,
    pub state: ModelState,
    pub pinned: bool,
    /// Bytes held in memory (0 when not loaded).
    pub memory_bytes: u64,
    /// Bytes of the extracted copy on disk (0 when none).
    pub disk_bytes: u64,
    pub in_flight: usize,
    pub invocations: u64,
    pub hits: u64,
    pub loads: u64,
    pub evictions: u64,
    /// Milliseconds since the Unix epoch of the last request, if any.
    pub last_used_unix_ms: Option<u64>,
    pub latency_p50_us: Option<u64>,
    pub latency_p95_us: Option<u64>,
}

/// Count, sum and maximum of a time metric, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TimeSummary {
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
}

impl TimeSummary {
    fn record(&mut self, d: Duration) {
        let us = micros(d);
        self.count += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
    }
}

/// Metrics under SageMaker MME's CloudWatch names and units (microseconds), plus what MME
/// does not report: per-model counters and latency percentiles.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CacheMetrics {
    /// Time requests waited for a model to be extracted and loaded.
    pub model_loading_wait_time: TimeSummary,
    /// Time spent extracting artifacts (MME: downloading from S3).
    pub model_downloading_time: TimeSummary,
    pub model_loading_time: TimeSummary,
    pub model_unloading_time: TimeSummary,
    /// Requests answered by an already loaded model.
    pub model_cache_hit: u64,
    /// Requests in all (so `model_cache_hit / requests` is MME's average of ModelCacheHit).
    pub requests: u64,
    pub loaded_model_count: usize,
    pub memory_used_bytes: u64,
    pub memory_budget_bytes: u64,
    pub disk_used_bytes: u64,
    pub disk_budget_bytes: u64,
    pub models: Vec<ModelDescription>,
}

/// Recent request latencies of one model, for percentiles over a sliding window.
#[derive(Default)]
struct Latencies {
    recent: VecDeque<u64>,
}

const LATENCY_WINDOW: usize = 1024;

impl Latencies {
    fn record(&mut self, us: u64) {
        if self.recent.len() == LATENCY_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(us);
    }

    fn percentile(&self, p: f64) -> Option<u64> {
        if self.recent.is_empty() {
            return None;
        }
        let mut v: Vec<u64> = self.recent.iter().copied().collect();
        v.sort_unstable();
        let rank = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(v[rank])
    }
}

/// An extracted copy on disk.
#[derive(Clone, Copy)]
struct DiskCopy {
    bytes: u64,
}

enum Slot {
    Unloaded,
    /// `generation` tells waiters which load they waited for.
    Loading {
        generation: u64,
    },
    Loaded(Arc<LoadedModel>),
    Unloading(Arc<LoadedModel>),
}

struct Entry {
    slot: Slot,
    /// Bytes counted against the memory budget (reserved while loading, actual once loaded).
    reserved: u64,
    in_flight: usize,
    pinned: bool,
    /// Logical clock of the last use, for LRU order (both tiers).
    last_used: u64,
    last_used_at: Option<SystemTime>,
    disk: Option<DiskCopy>,
    /// The outcome of the last failed load, for the requests that waited on it.
    failure: Option<(u64, crate::error::ErrorKind, String)>,
    invocations: u64,
    hits: u64,
    loads: u64,
    evictions: u64,
    latencies: Latencies,
}

impl Entry {
    fn new() -> Self {
        Self {
            slot: Slot::Unloaded,
            reserved: 0,
            in_flight: 0,
            pinned: false,
            last_used: 0,
            last_used_at: None,
            disk: None,
            failure: None,
            invocations: 0,
            hits: 0,
            loads: 0,
            evictions: 0,
            latencies: Latencies::default(),
        }
    }

    fn state(&self) -> ModelState {
        match self.slot {
            Slot::Unloaded => ModelState::Unloaded,
            Slot::Loading { .. } => ModelState::Loading,
            Slot::Loaded(_) => ModelState::Loaded,
            Slot::Unloading(_) => ModelState::Unloading,
        }
    }
}

struct State {
    entries: HashMap<String, Entry>,
    memory_used: u64,
    disk_used: u64,
    clock: u64,
    generation: u64,
    events: VecDeque<CacheEvent>,
    wait_time: TimeSummary,
    download_time: TimeSummary,
    loading_time: TimeSummary,
    unloading_time: TimeSummary,
    hits: u64,
    requests: u64,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn entry(&mut self, name: &str) -> &mut Entry {
        self.entries
            .entry(name.to_string())
            .or_insert_with(Entry::new)
    }

    fn loaded_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.slot, Slot::Loaded(_) | Slot::Unloading(_)))
            .count()
    }
}

/// Written into each extracted copy (atomically with it): which artifact it came from.
#[derive(Serialize, Deserialize, PartialEq, Eq)]
struct CopyRecord {
    name: String,
    source_bytes: u64,
    source_mtime_ns: u128,
}

const COPY_RECORD: &str = "edgemm-copy.json";

/// The shared model cache. `&self` everywhere; share it in an `Arc`.
///
/// A [`Runtime`](crate::Runtime) holds one ([`Runtime::cache`](crate::Runtime::cache)):
///
/// ```
/// use edgemm::{ModelState, Runtime, RuntimeOptions};
///
/// # let cache_dir = tempfile::tempdir().unwrap();
/// let mut options = RuntimeOptions::new("../models/repository");
/// options.cache_dir = cache_dir.path().to_path_buf();
/// let runtime = Runtime::new(options)?;
/// let cache = runtime.cache();
///
/// cache.load("cifar.tar.gz")?; // extract and load ahead of the first request
/// cache.pin("cifar.tar.gz")?; // never evicted to make room for another model
/// let model = cache.describe("cifar.tar.gz")?;
/// assert_eq!(model.state, ModelState::Loaded);
/// assert!(model.memory_bytes > 0 && model.disk_bytes > 0);
///
/// let metrics = cache.metrics(); // MME's names: loading time, cache hits, loaded models...
/// assert_eq!(metrics.loaded_model_count, 1);
/// assert!(metrics.memory_used_bytes <= metrics.memory_budget_bytes);
///
/// cache.unpin("cifar.tar.gz")?;
/// cache.unload("cifar.tar.gz")?; // returns once the memory is released
/// assert_eq!(cache.describe("cifar.tar.gz")?.state, ModelState::Unloaded);
/// // The extracted copy stays on disk; `list` shows it beside the repository's other models.
/// let listed = cache.list()?;
/// assert!(listed.iter().any(|m| m.name == "cifar.tar.gz" && m.disk_bytes > 0));
/// # Ok::<(), edgemm::Error>(())
/// ```
pub struct ModelCache {
    repository: ModelRepository,
    dir: CacheDir,
    models_dir: PathBuf,
    device: Device,
    artifact_limits: ArtifactLimits,
    options: CacheOptions,
    state: Mutex<State>,
    changed: Condvar,
    /// Serialises extraction and deletion in this process; the file inside is locked too, for
    /// other processes sharing the directory.
    disk_lock: Mutex<File>,
}

/// A model checked out for one request: while it lives the model stays in memory.
pub struct Lease<'a> {
    cache: &'a ModelCache,
    model: Arc<LoadedModel>,
    started: Instant,
}

impl std::ops::Deref for Lease<'_> {
    type Target = LoadedModel;
    fn deref(&self) -> &LoadedModel {
        &self.model
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.cache.release(&self.model.name, self.started.elapsed());
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().try_into().unwrap_or(u64::MAX)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn source_record(name: &str, source: &Path) -> Result<CopyRecord> {
    let meta = fs::metadata(source).map_err(|e| Error::io("reading", source, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok(CopyRecord {
        name: name.to_string(),
        source_bytes: meta.len(),
        source_mtime_ns: mtime.as_nanos(),
    })
}

fn read_record(dir: &Path) -> Option<CopyRecord> {
    serde_json::from_slice(&fs::read(dir.join(COPY_RECORD)).ok()?).ok()
}

/// Whether `path` is a finished copy this cache wrote: a directory named for the model its
/// record names.
pub(crate) fn is_complete_copy(path: &Path) -> bool {
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_dir()
        && !file_name.starts_with(PARTIAL_PREFIX)
        && read_record(path).is_some_and(|r| cache_dir_name(&r.name) == file_name)
}

/// Removes a copy directory if it is provably this cache's (see [`is_complete_copy`]); a
/// missing one is fine. Anything else there is left alone and refused.
fn remove_copy(root: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !is_complete_copy(dir) && !cache_dir::is_owned_work_dir(dir) {
        let entry = dir.strip_prefix(root).unwrap_or(dir);
        return Err(Error::ForeignCacheDir {
            dir: root.to_path_buf(),
            entry: entry.to_path_buf(),
        });
    }
    fs::remove_dir_all(dir).or_else(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Ok(())
        } else {
            Err(Error::io("deleting", dir, e))
        }
    })
}

impl ModelCache {
    /// Opens the cache over `repository`, in `cache_dir` (see [`CacheDir`] for the layout and
    /// the refusal of a directory holding anything edgemm did not create). Copies left by an
    /// earlier process are adopted when complete; partial extractions and the scratch copies
    /// of `inspect` runs that died are removed.
    pub fn new(
        repository: ModelRepository,
        cache_dir: &Path,
        device: Device,
        artifact_limits: ArtifactLimits,
        options: CacheOptions,
    ) -> Result<Self> {
        let dir = CacheDir::open(cache_dir)?;
        let models_dir = dir.models();
        let lock = dir.lock_file()?;
        dir.clean_stale_scratch()?;
        let cache = Self {
            repository,
            dir,
            models_dir,
            device,
            artifact_limits,
            options,
            state: Mutex::new(State {
                entries: HashMap::new(),
                memory_used: 0,
                disk_used: 0,
                clock: 0,
                generation: 0,
                events: VecDeque::new(),
                wait_time: TimeSummary::default(),
                download_time: TimeSummary::default(),
                loading_time: TimeSummary::default(),
                unloading_time: TimeSummary::default(),
                hits: 0,
                requests: 0,
            }),
            changed: Condvar::new(),
            disk_lock: Mutex::new(lock),
        };
        cache.adopt_copies()?;
        Ok(cache)
    }

    pub fn options(&self) -> &CacheOptions {
        &self.options
    }

    pub fn repository(&self) -> &ModelRepository {
        &self.repository
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is updated in single steps under the lock; a panic elsewhere leaves it whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self, state: &mut State, event: CacheEvent) {
        if self.options.event_log == 0 {
            return;
        }
        if state.events.len() == self.options.event_log {
            state.events.pop_front();
        }
        state.events.push_back(event);
    }

    /// Runs `f` holding the disk lock: this process's mutex, then the file lock that other
    /// processes sharing the cache directory also take.
    fn with_disk_lock<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let file = self.disk_lock.lock().unwrap_or_else(|e| e.into_inner());
        file.lock()
            .map_err(|e| Error::io("locking", self.dir.lock_path(), e))?;
        let result = f();
        let _ = file.unlock();
        result
    }

    /// Start-up: adopts complete copies, removes partial extractions (no extraction is in
    /// progress while the disk lock is held, so every one left is a crash's), trims to the disk
    /// budget. An entry that is neither is not ours: the cache refuses to start, touching
    /// nothing.
    fn adopt_copies(&self) -> Result<()> {
        let adopted = self.with_disk_lock(|| {
            let mut entries: Vec<fs::DirEntry> = fs::read_dir(&self.models_dir)
                .map_err(|e| Error::io("listing", &self.models_dir, e))?
                .flatten()
                .collect();
            entries.sort_by_key(|e| e.file_name());
            let mut adopted = Vec::new();
            let mut partial = Vec::new();
            for entry in &entries {
                let path = entry.path();
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if is_complete_copy(&path) {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .unwrap_or(UNIX_EPOCH);
                    let name = read_record(&path)
                        .expect("a complete copy has a record")
                        .name;
                    adopted.push((name, dir_bytes(&path), modified));
                } else if file_name.starts_with(PARTIAL_PREFIX)
                    && path.is_dir()
                    && cache_dir::is_owned_work_dir(&path)
                {
                    partial.push(path);
                } else {
                    return Err(Error::ForeignCacheDir {
                        dir: self.dir.root().to_path_buf(),
                        entry: Path::new(cache_dir::MODELS_DIR).join(entry.file_name()),
                    });
                }
            }
            for path in partial {
                fs::remove_dir_all(&path).map_err(|e| Error::io("removing", &path, e))?;
            }
            Ok(adopted)
        })?;
        let mut adopted = adopted;
        // Oldest first, so the LRU order of adopted copies follows their age.
        adopted.sort_by_key(|(_, _, modified)| *modified);
        let mut state = self.lock();
        for (name, bytes, _) in adopted {
            let tick = state.tick();
            let entry = state.entry(&name);
            entry.disk = Some(DiskCopy { bytes });
            entry.last_used = tick;
            state.disk_used += bytes;
        }
        drop(state);
        self.trim_disk(None)
    }

    /// Checks a model out for one request, loading it first if needed.
    pub fn lease(&self, name: &str) -> Result<Lease<'_>> {
        let started = Instant::now();
        let model = self.acquire(name, true)?;
        Ok(Lease {
            cache: self,
            model,
            started,
        })
    }

    /// Loads `name` (MME LoadModel) without answering a request. Returns once it is in memory.
    pub fn load(&self, name: &str) -> Result<()> {
        let model = self.acquire(name, false)?;
        self.release_untimed(&model.name);
        Ok(())
    }

    /// The model in memory, loading it when needed, with `in_flight` raised by one.
    fn acquire(&self, name: &str, is_request: bool) -> Result<Arc<LoadedModel>> {
        // Validate before anything is recorded under the name.
        let source = match self.repository.resolve(name) {
            Ok(source) => source,
            Err(e) => {
                // A refused request is a request (nothing is recorded under a bad name).
                if is_request {
                    self.lock().requests += 1;
                }
                return Err(e);
            }
        };
        let mut state = self.lock();
        let mut waited: Option<Instant> = None;
        loop {
            let tick = state.tick();
            let entry = state.entry(name);
            match &entry.slot {
                Slot::Loaded(model) => {
                    let model = model.clone();
                    entry.in_flight += 1;
                    entry.last_used = tick;
                    entry.last_used_at = Some(SystemTime::now());
                    if is_request {
                        entry.invocations += 1;
                        if waited.is_none() {
                            entry.hits += 1;
                        }
                    }
                    match waited {
                        Some(since) => state.wait_time.record(since.elapsed()),
                        None if is_request => {
                            state.hits += 1;
                            self.log(&mut state, CacheEvent::Hit { name: name.into() });
                        }
                        None => {}
                    }
                    if is_request {
                        state.requests += 1;
                    }
                    return Ok(model);
                }
                Slot::Loading { generation } => {
                    let generation = *generation;
                    waited.get_or_insert_with(Instant::now);
                    state = self.wait(state);
                    // A failed load this request waited on is reported to it, not retried.
                    if let Some((g, kind, message)) = &state.entry(name).failure {
                        if *g == generation {
                            let error = Error::LoadFailed {
                                name: name.to_string(),
                                kind: *kind,
                                message: message.clone(),
                            };
                            if is_request {
                                state.requests += 1;
                            }
                            return Err(error);
                        }
                    }
                }
                Slot::Unloading(_) => {
                    waited.get_or_insert_with(Instant::now);
                    state = self.wait(state);
                }
                Slot::Unloaded => {
                    state.generation += 1;
                    let generation = state.generation;
                    state.entry(name).slot = Slot::Loading { generation };
                    drop(state);
                    let started = waited.unwrap_or_else(Instant::now);
                    let result = self.load_slot(name, &source);
                    let mut state = self.lock();
                    if is_request {
                        state.requests += 1;
                        state.wait_time.record(started.elapsed());
                    }
                    let entry = state.entry(name);
                    return match result {
                        Ok(model) => {
                            // `in_flight` was raised by `load_slot` under the same lock that
                            // published the model, so no one could unload it in between.
                            if is_request {
                                entry.invocations += 1;
                            }
                            entry.last_used_at = Some(SystemTime::now());
                            self.changed.notify_all();
                            Ok(model)
                        }
                        Err(e) => {
                            entry.slot = Slot::Unloaded;
                            entry.failure = Some((generation, e.kind(), e.to_string()));
                            self.log(&mut state, CacheEvent::LoadFailed { name: name.into() });
                            self.changed.notify_all();
                            Err(e)
                        }
                    };
                }
            }
        }
    }

    /// Extracts (if needed), reserves memory, loads. Called with the slot set to `Loading`;
    /// leaves it `Loaded` on success, and the caller resets it on failure.
    fn load_slot(&self, name: &str, source: &Path) -> Result<Arc<LoadedModel>> {
        let extracted = self.ensure_copy(name, source)?;
        let weights_path = extracted.weights_path();
        // What the load needs at its peak (weights as f32 and the largest tensor's transient
        // copy) plus one item's activations at the manifest's input size, reserved before
        // anything is allocated: a manifest declaring a huge input is refused here.
        let estimate = weights::estimate_resident_bytes(name, &weights_path, &extracted.manifest)?
            + crate::runtime::activation_bytes_per_item(&extracted.manifest);
        let evicted = self.reserve(name, estimate)?;
        // Free the evicted models' memory before allocating the new one's.
        drop(evicted);
        let started = Instant::now();
        let loaded = weights::load(name, &weights_path, &extracted.manifest, &self.device)
            .and_then(|w| {
                let model = LoadedModel::new(name, extracted.manifest.clone(), w, &self.device);
                if self.options.warm_up {
                    model.warm_up()?;
                }
                Ok(model)
            });
        let model = match loaded {
            Ok(model) => Arc::new(model),
            Err(e) => {
                let mut state = self.lock();
                state.memory_used -= estimate;
                state.entry(name).reserved = 0;
                return Err(e);
            }
        };
        // Correct the reservation to what the model actually holds. Packed (and Winograd
        // transformed) weights can hold more than the estimate: the difference is reserved
        // like any load, evicting idle models, and the load is refused if it cannot be.
        let actual = model.resident_bytes;
        let budget = self.options.memory_budget;
        if actual > budget {
            let mut state = self.lock();
            state.memory_used -= estimate;
            state.entry(name).reserved = 0;
            let available = budget.saturating_sub(state.memory_used);
            drop(state);
            drop(model);
            return Err(Error::InsufficientMemory {
                name: name.to_string(),
                resource: "memory",
                needed: actual,
                available,
                budget,
                reason: "the model is larger than the whole budget",
            });
        }
        if actual > estimate {
            match self.reserve(name, actual - estimate) {
                Ok(evicted) => drop(evicted),
                Err(e) => {
                    let mut state = self.lock();
                    state.memory_used -= estimate;
                    state.entry(name).reserved = 0;
                    drop(state);
                    drop(model);
                    return Err(e);
                }
            }
        } else {
            self.lock().memory_used -= estimate - actual;
        }
        let mut state = self.lock();
        state.loading_time.record(started.elapsed());
        let tick = state.tick();
        let entry = state.entry(name);
        entry.reserved = actual;
        entry.slot = Slot::Loaded(model.clone());
        entry.in_flight += 1;
        entry.loads += 1;
        entry.last_used = tick;
        let memory_used = state.memory_used;
        self.log(
            &mut state,
            CacheEvent::Load {
                name: name.into(),
                bytes: actual,
                memory_used,
            },
        );
        Ok(model)
    }

    /// Reserves `bytes` for `name`, unloading least-recently-used idle models as needed.
    /// Returns the unloaded models so the caller drops them outside the lock.
    ///
    /// If the memory is held by requests in flight (or other loads), waits up to
    /// [`CacheOptions::memory_wait`] for them to finish; if it is held by pinned models, or the
    /// model is larger than the whole budget, refuses at once.
    fn reserve(&self, name: &str, bytes: u64) -> Result<Vec<Arc<LoadedModel>>> {
        let budget = self.options.memory_budget;
        let deadline = Instant::now() + self.options.memory_wait;
        let mut state = self.lock();
        loop {
            let mut idle: Vec<(u64, String, u64)> = Vec::new();
            let mut busy = 0u64;
            for (n, e) in &state.entries {
                if n.as_str() == name || e.pinned || e.reserved == 0 {
                    continue;
                }
                match e.slot {
                    Slot::Loaded(_) if e.in_flight == 0 => {
                        idle.push((e.last_used, n.clone(), e.reserved))
                    }
                    _ => busy += e.reserved,
                }
            }
            let free = budget.saturating_sub(state.memory_used);
            let evictable: u64 = idle.iter().map(|c| c.2).sum();
            if bytes <= free + evictable {
                idle.sort();
                let mut evicted = Vec::new();
                for (_, victim, _) in idle {
                    if state.memory_used + bytes <= budget {
                        break;
                    }
                    if let Some(model) = self.unload_now(&mut state, &victim, UnloadReason::Evicted)
                    {
                        evicted.push(model);
                    }
                }
                state.memory_used += bytes;
                debug_assert!(state.memory_used <= budget);
                state.entry(name).reserved = bytes;
                return Ok(evicted);
            }
            let now = Instant::now();
            let transient = bytes <= budget && bytes <= free + evictable + busy;
            if transient && now < deadline {
                state = self
                    .changed
                    .wait_timeout(state, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let reason = if bytes > budget {
                "the model is larger than the whole budget"
            } else if transient {
                "the rest of the budget is held by models in use, and none finished in time"
            } else {
                "the rest of the budget is held by pinned models"
            };
            self.log(
                &mut state,
                CacheEvent::Refused {
                    name: name.into(),
                    needed: bytes,
                },
            );
            return Err(Error::InsufficientMemory {
                name: name.to_string(),
                resource: "memory",
                needed: bytes,
                available: free + evictable,
                budget,
                reason,
            });
        }
    }

    /// Takes an idle loaded model out of memory (the bookkeeping; the caller drops the model).
    fn unload_now(
        &self,
        state: &mut State,
        name: &str,
        reason: UnloadReason,
    ) -> Option<Arc<LoadedModel>> {
        let started = Instant::now();
        let entry = state.entries.get_mut(name)?;
        let model = match std::mem::replace(&mut entry.slot, Slot::Unloaded) {
            Slot::Loaded(m) | Slot::Unloading(m) => m,
            other => {
                entry.slot = other;
                return None;
            }
        };
        let bytes = std::mem::take(&mut entry.reserved);
        if reason == UnloadReason::Evicted {
            entry.evictions += 1;
        }
        state.memory_used -= bytes;
        state.unloading_time.record(started.elapsed());
        let memory_used = state.memory_used;
        self.log(
            state,
            CacheEvent::Unload {
                name: name.into(),
                reason,
                memory_used,
            },
        );
        self.changed.notify_all();
        Some(model)
    }

    fn release(&self, name: &str, elapsed: Duration) {
        let mut state = self.lock();
        if let Some(entry) = state.entries.get_mut(name) {
            entry.latencies.record(micros(elapsed));
        }
        let dropped = self.release_locked(&mut state, name);
        drop(state);
        drop(dropped);
    }

    fn release_untimed(&self, name: &str) {
        let mut state = self.lock();
        let dropped = self.release_locked(&mut state, name);
        drop(state);
        drop(dropped);
    }

    fn release_locked(&self, state: &mut State, name: &str) -> Option<Arc<LoadedModel>> {
        let entry = state.entries.get_mut(name)?;
        entry.in_flight -= 1;
        if entry.in_flight > 0 {
            return None;
        }
        // An unload, or a load waiting for memory, may be waiting for this model to go idle.
        self.changed.notify_all();
        let disabled = !self.options.caching && !entry.pinned;
        match entry.slot {
            Slot::Unloading(_) => None,
            Slot::Loaded(_) if disabled => {
                self.unload_now(state, name, UnloadReason::CacheDisabled)
            }
            _ => None,
        }
    }

    /// Unloads `name` (MME UnloadModel): new requests wait, in-flight requests finish, then the
    /// memory is released before this returns. The extracted copy stays on disk. Unloading a
    /// model that is not loaded is a no-op; a pinned model is unpinned first.
    pub fn unload(&self, name: &str) -> Result<()> {
        crate::repository::validate_name(name)?;
        let mut state = self.lock();
        loop {
            let Some(entry) = state.entries.get_mut(name) else {
                return Ok(());
            };
            match &entry.slot {
                Slot::Unloaded => return Ok(()),
                Slot::Loading { .. } => state = self.wait(state),
                Slot::Loaded(model) => {
                    entry.pinned = false;
                    let model = model.clone();
                    entry.slot = Slot::Unloading(model);
                }
                Slot::Unloading(_) if entry.in_flight > 0 => state = self.wait(state),
                Slot::Unloading(_) => {
                    let model = self.unload_now(&mut state, name, UnloadReason::Explicit);
                    drop(state);
                    // The memory is released here, before returning.
                    drop(model);
                    return Ok(());
                }
            }
        }
    }

    /// Loads `name` if needed and keeps it in memory: never evicted, not unloaded in
    /// cache-disabled mode, until [`ModelCache::unpin`] or [`ModelCache::unload`].
    pub fn pin(&self, name: &str) -> Result<()> {
        let model = self.acquire(name, false)?;
        let mut state = self.lock();
        state.entry(name).pinned = true;
        let dropped = self.release_locked(&mut state, &model.name);
        drop(state);
        drop(dropped);
        Ok(())
    }

    pub fn unpin(&self, name: &str) -> Result<()> {
        crate::repository::validate_name(name)?;
        let mut state = self.lock();
        let Some(entry) = state.entries.get_mut(name) else {
            return Ok(());
        };
        entry.pinned = false;
        let disabled = !self.options.caching && entry.in_flight == 0;
        let dropped = if disabled {
            self.unload_now(&mut state, name, UnloadReason::CacheDisabled)
        } else {
            None
        };
        drop(state);
        drop(dropped);
        Ok(())
    }

    /// Every model the cache knows (requested, or with a copy on disk) and the repository's
    /// other artifacts, sorted by name (MME ListModels).
    pub fn list(&self) -> Result<Vec<ModelDescription>> {
        let mut names = self.repository.list()?;
        {
            let state = self.lock();
            names.extend(state.entries.keys().cloned());
        }
        names.sort();
        names.dedup();
        let state = self.lock();
        Ok(names.iter().map(|n| describe(&state, n)).collect())
    }

    /// One model's state, sizes and counters (MME DescribeModel).
    pub fn describe(&self, name: &str) -> Result<ModelDescription> {
        crate::repository::validate_name(name)?;
        let state = self.lock();
        if !state.entries.contains_key(name) {
            drop(state);
            self.repository.resolve(name)?;
            return Ok(describe(&self.lock(), name));
        }
        Ok(describe(&state, name))
    }

    pub fn metrics(&self) -> CacheMetrics {
        let state = self.lock();
        let mut names: Vec<&String> = state.entries.keys().collect();
        names.sort();
        CacheMetrics {
            model_loading_wait_time: state.wait_time,
            model_downloading_time: state.download_time,
            model_loading_time: state.loading_time,
            model_unloading_time: state.unloading_time,
            model_cache_hit: state.hits,
            requests: state.requests,
            loaded_model_count: state.loaded_count(),
            memory_used_bytes: state.memory_used,
            memory_budget_bytes: self.options.memory_budget,
            disk_used_bytes: state.disk_used,
            disk_budget_bytes: self.options.disk_budget,
            models: names.into_iter().map(|n| describe(&state, n)).collect(),
        }
    }

    /// The events recorded so far (see [`CacheOptions::event_log`]), oldest first; clears them.
    pub fn take_events(&self) -> Vec<CacheEvent> {
        self.lock().events.drain(..).collect()
    }

    /// Bytes currently counted against the memory budget.
    pub fn memory_used(&self) -> u64 {
        self.lock().memory_used
    }

    /// An extracted, verified copy of `name` that matches the repository's artifact,
    /// extracting it if there is none, it is stale (the artifact changed) or it is corrupt.
    fn ensure_copy(&self, name: &str, source: &Path) -> Result<ExtractedArtifact> {
        let dest = self.models_dir.join(cache_dir_name(name));
        let record = source_record(name, source)?;
        let (extracted, bytes, fresh) = self.with_disk_lock(|| {
            if read_record(&dest).as_ref() == Some(&record) {
                if let Ok(copy) = ExtractedArtifact::open(name, &dest) {
                    let intact = !self.options.verify_copies
                        || artifact::sha256_file(&copy.weights_path()).ok().as_deref()
                            == Some(copy.manifest.weights.sha256.as_str());
                    if intact {
                        // Possibly written by another process since start-up: count it.
                        return Ok((copy, dir_bytes(&dest), false));
                    }
                }
            }
            // Missing, stale or corrupt: extract afresh, replacing the old copy.
            remove_copy(self.dir.root(), &dest)?;
            let started = Instant::now();
            let json = serde_json::to_vec(&record).expect("a record always serialises");
            let copy = artifact::extract_with(
                name,
                source,
                &dest,
                self.artifact_limits,
                &[(COPY_RECORD, &json)],
            )?;
            let bytes = dir_bytes(&dest);
            self.lock().download_time.record(started.elapsed());
            Ok((copy, bytes, true))
        })?;
        let mut state = self.lock();
        let tick = state.tick();
        let entry = state.entry(name);
        let old = entry
            .disk
            .replace(DiskCopy { bytes })
            .map_or(0, |d| d.bytes);
        entry.last_used = entry.last_used.max(tick);
        state.disk_used = state.disk_used - old + bytes;
        if fresh {
            self.log(
                &mut state,
                CacheEvent::Extract {
                    name: name.into(),
                    bytes,
                },
            );
        }
        drop(state);
        self.trim_disk(Some(name))?;
        Ok(extracted)
    }

    /// Deletes least-recently-used copies of models that are not in memory until the disk
    /// budget holds. `keep` (the copy about to be loaded) is never deleted; if the budget
    /// cannot be met without it, that copy is removed too and the load is refused.
    fn trim_disk(&self, keep: Option<&str>) -> Result<()> {
        let budget = self.options.disk_budget;
        let victims: Vec<(String, u64)> = {
            let state = self.lock();
            if state.disk_used <= budget {
                return Ok(());
            }
            let mut candidates: Vec<(u64, &String, u64)> = state
                .entries
                .iter()
                .filter(|(n, e)| {
                    Some(n.as_str()) != keep && e.disk.is_some() && matches!(e.slot, Slot::Unloaded)
                })
                .map(|(n, e)| (e.last_used, n, e.disk.map_or(0, |d| d.bytes)))
                .collect();
            candidates.sort();
            let mut over = state.disk_used - budget;
            let mut victims = Vec::new();
            for (_, n, bytes) in candidates {
                if over == 0 {
                    break;
                }
                victims.push((n.clone(), bytes));
                over = over.saturating_sub(bytes);
            }
            victims
        };
        for (name, bytes) in victims {
            let dir = self.models_dir.join(cache_dir_name(&name));
            self.with_disk_lock(|| remove_copy(self.dir.root(), &dir))?;
            let mut state = self.lock();
            if let Some(entry) = state.entries.get_mut(&name) {
                entry.disk = None;
            }
            state.disk_used -= bytes;
            self.log(&mut state, CacheEvent::DeleteCopy { name, bytes });
        }
        let state = self.lock();
        if let Some(name) = keep {
            if state.disk_used > budget {
                let needed = state
                    .entries
                    .get(name)
                    .and_then(|e| e.disk)
                    .map_or(0, |d| d.bytes);
                let available = budget.saturating_sub(state.disk_used - needed);
                drop(state);
                self.delete_copy(name)?;
                let reason = if needed > budget {
                    "the model's extracted copy is larger than the whole disk budget"
                } else {
                    "the rest of the disk budget holds copies of loaded models"
                };
                return Err(Error::InsufficientMemory {
                    name: name.to_string(),
                    resource: "disk",
                    needed,
                    available,
                    budget,
                    reason,
                });
            }
        }
        Ok(())
    }

    fn delete_copy(&self, name: &str) -> Result<()> {
        let dir = self.models_dir.join(cache_dir_name(name));
        self.with_disk_lock(|| remove_copy(self.dir.root(), &dir))?;
        let mut state = self.lock();
        let bytes = state
            .entries
            .get_mut(name)
            .and_then(|e| e.disk.take())
            .map_or(0, |d| d.bytes);
        state.disk_used -= bytes;
        Ok(())
    }
}

fn describe(state: &State, name: &str) -> ModelDescription {
    let Some(e) = state.entries.get(name) else {
        return ModelDescription {
            name: name.to_string(),
            state: ModelState::Unloaded,
            pinned: false,
            memory_bytes: 0,
            disk_bytes: 0,
            in_flight: 0,
            invocations: 0,
            hits: 0,
            loads: 0,
            evictions: 0,
            last_used_unix_ms: None,
            latency_p50_us: None,
            latency_p95_us: None,
        };
    };
    ModelDescription {
        name: name.to_string(),
        state: e.state(),
        pinned: e.pinned,
        memory_bytes: e.reserved,
        disk_bytes: e.disk.map_or(0, |d| d.bytes),
        in_flight: e.in_flight,
        invocations: e.invocations,
        hits: e.hits,
        loads: e.loads,
        evictions: e.evictions,
        last_used_unix_ms: e
            .last_used_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        latency_p50_us: e.latencies.percentile(50.0),
        latency_p95_us: e.latencies.percentile(95.0),
    }
}
