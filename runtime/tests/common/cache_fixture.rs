//! Miniature alexnet-small models with distinct seeded weights in a temporary repository, so
//! each model's answer is known and a wrong model would be noticed: the cache tests' fixture
//! (`runtime/tests/cache.rs`, and the CLI's multi-process test).

use std::path::PathBuf;

use candle_core::Device;
use edgemm::cache::UnloadReason;
use edgemm::manifest::Manifest;
use edgemm::{ArtifactLimits, CacheEvent, CacheOptions, Input, ModelCache, ModelRepository};

/// An alexnet-small with 8x8 input and a few channels: about 1 KB of weights.
pub fn tiny_manifest(hidden: usize) -> Manifest {
    let mut m = super::alexnet_manifest();
    m.config = serde_json::json!({ "input_size": 8, "channels": [2, 2, 2], "hidden": hidden });
    m.input.height = 8;
    m.input.width = 8;
    m
}

pub fn name(i: usize) -> String {
    format!("m{i:02}.tar.gz")
}

/// The same 8x8 input for every request.
pub fn input() -> Vec<f32> {
    (0..8 * 8 * 3).map(|i| (i % 17) as f32 / 17.0).collect()
}

pub struct Repo {
    pub dir: tempfile::TempDir,
    /// Bytes one model holds in memory.
    pub model_bytes: u64,
}

impl Repo {
    /// `n` tiny models `m00.tar.gz`.. with seeds 100, 101, ...
    pub fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..n {
            super::pack_seeded(
                &tiny_manifest(4),
                100 + i as u64,
                &dir.path().join("repo"),
                &name(i),
            );
        }
        // What a loaded model is counted at (issue #22, item 3): its weights as held plus one
        // item's activations; asked of a cache of its own.
        let mut repo = Self {
            dir,
            model_bytes: 0,
        };
        if n > 0 {
            let probe = repo.cache_at(&repo.dir.path().join("probe"), CacheOptions::default());
            probe.load(&name(0)).unwrap();
            repo.model_bytes = probe.describe(&name(0)).unwrap().memory_bytes;
        }
        repo
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn cache(&self, options: CacheOptions) -> ModelCache {
        self.cache_at(&self.cache_dir(), options)
    }

    /// A cache over this repository with its copies somewhere else.
    pub fn cache_at(&self, cache_dir: &std::path::Path, options: CacheOptions) -> ModelCache {
        ModelCache::new(
            ModelRepository::new(self.repo()),
            cache_dir,
            Device::Cpu,
            ArtifactLimits::default(),
            options,
        )
        .unwrap()
    }

    pub fn options(&self, models_in_memory: u64) -> CacheOptions {
        CacheOptions {
            memory_budget: models_in_memory * self.model_bytes,
            event_log: 1 << 20,
            ..CacheOptions::default()
        }
    }
}

/// The probabilities a model answers for [`input`].
pub fn answer(cache: &ModelCache, name: &str) -> Vec<f32> {
    let lease = cache.lease(name).unwrap();
    let (data, n) = lease
        .batch(
            &[Input::Tensor {
                data: &input(),
                shape: &[8, 8, 3],
            }],
            &Default::default(),
        )
        .unwrap();
    lease.probabilities(data, n).unwrap().remove(0)
}

/// Reference answers, from a cache with room for everything.
pub fn reference_answers(repo: &Repo, n: usize) -> Vec<Vec<f32>> {
    let dir = tempfile::tempdir().unwrap();
    let cache = repo.cache_at(dir.path(), CacheOptions::default());
    (0..n).map(|i| answer(&cache, &name(i))).collect()
}

/// Events as short strings, e.g. "load m03", "unload m01 evicted", "hit m00".
pub fn script(events: &[CacheEvent]) -> Vec<String> {
    let short = |n: &str| n.trim_end_matches(".tar.gz").to_string();
    events
        .iter()
        .map(|e| match e {
            CacheEvent::Hit { name } => format!("hit {}", short(name)),
            CacheEvent::Extract { name, .. } => format!("extract {}", short(name)),
            CacheEvent::Load { name, .. } => format!("load {}", short(name)),
            CacheEvent::LoadFailed { name } => format!("failed {}", short(name)),
            CacheEvent::Unload { name, reason, .. } => {
                let reason = match reason {
                    UnloadReason::Evicted => "evicted",
                    UnloadReason::Explicit => "explicit",
                    UnloadReason::CacheDisabled => "disabled",
                };
                format!("unload {} {reason}", short(name))
            }
            CacheEvent::DeleteCopy { name, .. } => format!("delete {}", short(name)),
            CacheEvent::Refused { name, .. } => format!("refused {}", short(name)),
        })
        .collect()
}

pub fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}
