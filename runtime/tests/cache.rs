//! The model cache's policy (issue #4): LRU under a memory budget, one load per residency,
//! unload semantics, refusals, the disk budget, stale and corrupt copies, cache-disabled mode
//! and pinning. Models are miniature alexnet-smalls with distinct seeded weights, so each
//! model's answer is known and a wrong model would be noticed.

mod common;

use common::cache_fixture::*;

use std::collections::HashMap;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use edgemm::{CacheEvent, CacheOptions, Error, ErrorKind, Input, ModelState};

/// Acceptance 1: 20 models, room for 3; a scripted sequence gives exactly the expected loads,
/// unloads and hits.
#[test]
fn lru_sequence_gives_expected_events() {
    let repo = Repo::new(20);
    let cache = repo.cache(repo.options(3));
    for i in [0, 1, 2, 0, 3, 1, 4, 0, 0, 5, 19] {
        answer(&cache, &name(i));
    }
    #[rustfmt::skip]
    let expected = strings(&[
        "extract m00", "load m00",
        "extract m01", "load m01",
        "extract m02", "load m02",
        "hit m00",
        // m01 is the least recently used of {m00, m01, m02}.
        "extract m03", "unload m01 evicted", "load m03",
        // m01's copy is still on disk: no extraction.
        "unload m02 evicted", "load m01",
        "extract m04", "unload m00 evicted", "load m04",
        "unload m03 evicted", "load m00",
        "hit m00",
        "extract m05", "unload m01 evicted", "load m05",
        "extract m19", "unload m04 evicted", "load m19",
    ]);
    assert_eq!(script(&cache.take_events()), expected);
    let m = cache.metrics();
    assert_eq!(m.loaded_model_count, 3);
    assert_eq!(m.memory_used_bytes, 3 * repo.model_bytes);
    assert_eq!((m.model_cache_hit, m.requests), (2, 11));
    let m00 = cache.describe(&name(0)).unwrap();
    assert_eq!(
        (m00.invocations, m00.hits, m00.loads, m00.evictions),
        (4, 2, 2, 1)
    );
    assert_eq!(m00.state, ModelState::Loaded);
}

/// Acceptance 2: 16 threads x 1000 requests over 10 models with room for 4: every answer is
/// the right model's, no model is loaded twice in one residency, the budget always holds, and
/// the storm ends (no deadlock).
#[test]
fn load_storm_is_correct_and_within_budget() {
    let repo = Repo::new(10);
    let expected = Arc::new(reference_answers(&repo, 10));
    let budget = 4 * repo.model_bytes;
    let cache = Arc::new(repo.cache(repo.options(4)));
    let (done_tx, done_rx) = mpsc::channel();
    for t in 0..16u64 {
        let (cache, expected, done_tx) = (cache.clone(), expected.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut x = t * 7919 + 1;
            for _ in 0..1000 {
                // A skewed choice, so some models stay hot and others churn.
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % 100;
                let i = if r < 50 {
                    (r % 3) as usize
                } else {
                    3 + (r % 7) as usize
                };
                assert_eq!(answer(&cache, &name(i)), expected[i], "model {i}");
            }
            done_tx.send(()).unwrap();
        });
    }
    for _ in 0..16 {
        done_rx
            .recv_timeout(Duration::from_secs(300))
            .expect("a storm thread did not finish: deadlock or starvation");
    }
    let events = cache.take_events();
    let mut resident: HashMap<String, bool> = HashMap::new();
    let (mut loads, mut unloads) = (0, 0);
    for event in &events {
        match event {
            CacheEvent::Load {
                name, memory_used, ..
            } => {
                assert!(*memory_used <= budget, "over budget after loading {name}");
                let was = resident.insert(name.clone(), true).unwrap_or(false);
                assert!(!was, "{name} loaded twice in one residency");
                loads += 1;
            }
            CacheEvent::Unload {
                name, memory_used, ..
            } => {
                assert!(*memory_used <= budget);
                assert_eq!(resident.insert(name.clone(), false), Some(true), "{name}");
                unloads += 1;
            }
            _ => {}
        }
    }
    let m = cache.metrics();
    println!(
        "storm: {} requests, {} hits, {loads} loads, {unloads} unloads",
        m.requests, m.model_cache_hit
    );
    assert_eq!(m.requests, 16_000);
    assert!(loads >= 10 && loads - unloads <= 4);
    assert!(m.memory_used_bytes <= budget);
}

/// Acceptance 3: unloading a model with a request in flight lets the request finish with the
/// right answer, and `unload` returns only after that, with the memory released.
#[test]
fn unload_waits_for_the_request_in_flight() {
    let repo = Repo::new(1);
    let expected = reference_answers(&repo, 1).remove(0);
    let cache = Arc::new(repo.cache(repo.options(1)));
    let lease = cache.lease(&name(0)).unwrap();
    let (tx, rx) = mpsc::channel();
    let unloader = {
        let cache = cache.clone();
        std::thread::spawn(move || {
            cache.unload(&name(0)).unwrap();
            tx.send(cache.memory_used()).unwrap();
        })
    };
    // While the lease lives, the unload must be waiting (the worker is blocked on it).
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(
        cache.describe(&name(0)).unwrap().state,
        ModelState::Unloading
    );
    let (data, n) = lease
        .batch(
            &[Input::Tensor {
                data: &input(),
                shape: &[8, 8, 3],
            }],
            &Default::default(),
        )
        .unwrap();
    assert_eq!(lease.probabilities(data, n).unwrap()[0], expected);
    drop(lease);
    let memory_after_unload = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    unloader.join().unwrap();
    assert_eq!(memory_after_unload, 0);
    assert_eq!(
        cache.describe(&name(0)).unwrap().state,
        ModelState::Unloaded
    );
    let script = script(&cache.take_events());
    assert_eq!(script.last().unwrap(), "unload m00 explicit");
}

fn insufficient(err: &Error) -> (&'static str, u64, u64) {
    match err {
        Error::InsufficientMemory {
            resource,
            needed,
            budget,
            ..
        } => (resource, *needed, *budget),
        other => panic!("expected InsufficientMemory, got {other:?}"),
    }
}

/// Acceptance 4: a model larger than the whole budget, and one that cannot fit because the
/// rest is pinned or in use, fail with InsufficientMemory; the budget is untouched and the
/// loaded models keep serving.
#[test]
fn too_big_or_all_pinned_is_refused() {
    let repo = Repo::new(3);
    common::pack_seeded(&tiny_manifest(4096), 9, &repo.repo(), "big.tar.gz");
    let expected = reference_answers(&repo, 3);
    let cache = repo.cache(CacheOptions {
        memory_wait: Duration::from_millis(200),
        ..repo.options(2)
    });

    let err = cache.lease("big.tar.gz").err().unwrap();
    let (resource, needed, budget) = insufficient(&err);
    assert_eq!(resource, "memory");
    assert!(needed > budget);
    assert!(
        err.to_string().contains("larger than the whole budget"),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::InsufficientMemory);
    assert_eq!(edgemm::json::http_status(&err), 507);
    assert_eq!(cache.memory_used(), 0);

    cache.pin(&name(0)).unwrap();
    cache.pin(&name(1)).unwrap();
    let used = cache.memory_used();
    let err = cache.lease(&name(2)).err().unwrap();
    assert!(err.to_string().contains("pinned models"), "{err}");
    assert_eq!(cache.memory_used(), used);
    assert_eq!(answer(&cache, &name(0)), expected[0]);
    assert_eq!(answer(&cache, &name(1)), expected[1]);

    // In use rather than pinned: the same refusal while both are leased.
    cache.unpin(&name(0)).unwrap();
    cache.unpin(&name(1)).unwrap();
    // A load waits (here 200 ms) for memory held by requests in flight, then gives up.
    let (a, b) = (
        cache.lease(&name(0)).unwrap(),
        cache.lease(&name(1)).unwrap(),
    );
    let err = cache.lease(&name(2)).err().unwrap();
    insufficient(&err);
    assert!(err.to_string().contains("in use"), "{err}");
    drop((a, b));
    // Once they are idle, the third model evicts one of them.
    assert_eq!(answer(&cache, &name(2)), expected[2]);
    assert!(cache.memory_used() <= 2 * repo.model_bytes);
}

/// Acceptance 5: under disk pressure only copies of models not in memory are deleted, least
/// recently used first, and a model whose copy was deleted is extracted again.
#[test]
fn disk_budget_deletes_lru_copies_of_unloaded_models() {
    let repo = Repo::new(4);
    let copy_bytes = {
        // Measure one extracted copy.
        let probe = repo.cache(repo.options(1));
        probe.load(&name(0)).unwrap();
        probe.describe(&name(0)).unwrap().disk_bytes
    };
    std::fs::remove_dir_all(repo.cache_dir()).unwrap();
    let options = CacheOptions {
        disk_budget: 2 * copy_bytes + copy_bytes / 2,
        ..repo.options(1)
    };
    let cache = repo.cache(options);
    for i in [0, 1, 2, 0] {
        answer(&cache, &name(i));
    }
    #[rustfmt::skip]
    let expected = strings(&[
        "extract m00", "load m00",
        "extract m01", "unload m00 evicted", "load m01",
        // Three copies do not fit: m00's (unloaded, least recently used) goes, not m01's.
        "extract m02", "delete m00", "unload m01 evicted", "load m02",
        // m00 comes back: extracted again; m01 is now the oldest unloaded copy.
        "extract m00", "delete m01", "unload m02 evicted", "load m00",
    ]);
    assert_eq!(script(&cache.take_events()), expected);
    assert!(cache.metrics().disk_used_bytes <= 2 * copy_bytes + copy_bytes / 2);
    let on_disk: Vec<String> = std::fs::read_dir(repo.cache_dir().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(on_disk, strings(&["m00.tar.gz", "m02.tar.gz"]));
}

/// Acceptance 6: replacing an artifact in the repository makes the next load use the new
/// weights.
#[test]
fn changed_artifact_is_extracted_again() {
    let repo = Repo::new(1);
    let cache = repo.cache(repo.options(1));
    let before = answer(&cache, &name(0));
    cache.unload(&name(0)).unwrap();

    let path = common::pack_seeded(&tiny_manifest(4), 555, &repo.repo(), &name(0));
    // Same size as before; make sure the mtime differs however coarse the filesystem clock.
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let after = answer(&cache, &name(0));
    assert_ne!(before, after);
    let fresh = reference_answers(&repo, 1).remove(0);
    assert_eq!(after, fresh);
    let script = script(&cache.take_events());
    assert_eq!(
        script.iter().filter(|e| *e == "extract m00").count(),
        2,
        "{script:?}"
    );
}

/// Acceptance 7: a half-extracted directory (a crash) is ignored and removed at start-up; a
/// corrupted copy is caught by its checksum and extracted again.
#[test]
fn crash_leftovers_are_cleaned_and_corrupt_copies_reextracted() {
    let repo = Repo::new(1);
    let expected = reference_answers(&repo, 1).remove(0);
    {
        let cache = repo.cache(repo.options(1));
        answer(&cache, &name(0));
    }
    let models = repo.cache_dir().join("models");
    let partial = models.join(".partial-999-0-m00.tar.gz");
    std::fs::create_dir_all(&partial).unwrap();
    // Written first into every directory edgemm creates, as proof it is its own.
    std::fs::write(partial.join(".edgemm-owner"), b"999\n").unwrap();
    std::fs::write(partial.join("model.safetensors"), b"half").unwrap();
    // Corrupt the complete copy's weights, keeping its size.
    let weights = models.join("m00.tar.gz").join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&weights, bytes).unwrap();

    let cache = repo.cache(repo.options(1));
    assert!(!partial.exists(), "partial extraction left in place");
    assert_eq!(answer(&cache, &name(0)), expected);
    assert_eq!(
        script(&cache.take_events()),
        strings(&["extract m00", "load m00"])
    );
}

/// A copy left by an earlier process is adopted: the next process loads it without
/// extracting.
#[test]
fn intact_copies_are_reused_across_processes() {
    let repo = Repo::new(1);
    drop({
        let cache = repo.cache(repo.options(1));
        answer(&cache, &name(0));
        cache
    });
    let cache = repo.cache(repo.options(1));
    assert!(cache.describe(&name(0)).unwrap().disk_bytes > 0);
    answer(&cache, &name(0));
    assert_eq!(script(&cache.take_events()), strings(&["load m00"]));
}

/// Acceptance 8: in cache-disabled mode a model leaves memory after each request, except a
/// pinned one; pinning keeps a model through memory pressure too.
#[test]
fn cache_disabled_mode_and_pinning() {
    let repo = Repo::new(3);
    let cache = repo.cache(CacheOptions {
        caching: false,
        ..repo.options(2)
    });
    answer(&cache, &name(0));
    assert_eq!(cache.memory_used(), 0);
    cache.pin(&name(1)).unwrap();
    answer(&cache, &name(1));
    answer(&cache, &name(1));
    assert_eq!(cache.memory_used(), repo.model_bytes);
    cache.unpin(&name(1)).unwrap();
    assert_eq!(cache.memory_used(), 0);
    #[rustfmt::skip]
    let expected = strings(&[
        "extract m00", "load m00", "unload m00 disabled",
        "extract m01", "load m01", "hit m01", "hit m01", "unload m01 disabled",
    ]);
    assert_eq!(script(&cache.take_events()), expected);

    // With caching on, a pinned model survives pressure that evicts the others.
    let cache = repo.cache(repo.options(2));
    cache.pin(&name(0)).unwrap();
    for i in [1, 2, 1, 2] {
        answer(&cache, &name(i));
    }
    assert_eq!(cache.describe(&name(0)).unwrap().state, ModelState::Loaded);
    assert!(cache.describe(&name(0)).unwrap().pinned);
    assert_eq!(cache.describe(&name(0)).unwrap().evictions, 0);
}

/// A failed load is reported to every request that waited on it, and retried by a later one.
#[test]
fn failed_load_reaches_every_waiter_and_is_retried_later() {
    let repo = Repo::new(1);
    let path = repo.repo().join(name(0));
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    let cache = Arc::new(repo.cache(repo.options(1)));
    let errors: Vec<Error> = (0..8)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || cache.lease(&name(0)).err().unwrap())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    for err in &errors {
        assert_eq!(err.kind(), ErrorKind::BadArtifact, "{err}");
        assert!(err.to_string().contains("gzip"), "{err}");
    }
    std::fs::write(&path, &good).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(answer(&cache, &name(0)), reference_answers(&repo, 1)[0]);
}

/// `list` shows every artifact of the repository and the state of the ones the cache knows.
#[test]
fn list_and_describe() {
    let repo = Repo::new(3);
    let cache = repo.cache(repo.options(2));
    answer(&cache, &name(1));
    let list = cache.list().unwrap();
    let names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["m00.tar.gz", "m01.tar.gz", "m02.tar.gz"]);
    assert_eq!(list[1].state, ModelState::Loaded);
    assert_eq!(list[1].memory_bytes, repo.model_bytes);
    assert_eq!(list[0].state, ModelState::Unloaded);
    assert!(matches!(
        cache.describe("nope.tar.gz"),
        Err(Error::ModelNotFound { .. })
    ));
    assert!(matches!(
        cache.describe("../x"),
        Err(Error::InvalidModelName { .. })
    ));
}
