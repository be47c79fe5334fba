//! Issue #22 (reliability): edgemm touches nothing it did not create, memory stays bounded,
//! hostile input gets typed errors. Each test names the item of the issue it guards.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use edgemm::manifest::Manifest;
use edgemm::{Error, Input, Runtime, RuntimeOptions};

/// An alexnet-small with 8x8 input and a few channels: about 1 KB of weights.
fn tiny_manifest() -> Manifest {
    let mut m = common::alexnet_manifest();
    m.config = serde_json::json!({ "input_size": 8, "channels": [2, 2, 2], "hidden": 4 });
    m.input.height = 8;
    m.input.width = 8;
    m
}

/// Every file and directory under `root` (relative path -> contents; directories as `None`).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else {
                out.insert(rel, Some(fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn runtime_at(repo: &Path, cache_dir: &Path) -> edgemm::Result<Runtime> {
    let mut options = RuntimeOptions::new(repo);
    options.cache_dir = cache_dir.to_path_buf();
    Runtime::new(options)
}

fn foreign_entry(result: edgemm::Result<Runtime>, dir: &Path) -> PathBuf {
    match result {
        Err(Error::ForeignCacheDir { dir: d, entry }) => {
            assert_eq!(d, dir);
            entry
        }
        Err(other) => panic!("expected ForeignCacheDir, got {other}"),
        Ok(_) => panic!("a directory holding foreign files was accepted"),
    }
}

/// Item 1: `edgemm --cache-dir D stats` with the repository in `D/models/repository/` (the
/// README's layout under the working directory) used to delete the repository. The cache now
/// refuses D, naming the directory and the foreign entry, and deletes nothing.
#[test]
fn issue22_1_cache_dir_holding_a_repository_is_refused_and_nothing_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("D");
    let repo = d.join("models").join("repository");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    fs::write(repo.join("README.txt"), b"the device's models").unwrap();
    let before = snapshot(&d);

    let entry = foreign_entry(runtime_at(&repo, &d), &d);
    assert_eq!(entry, Path::new("models/repository"));
    assert_eq!(snapshot(&d), before, "the refused directory was changed");
    let message = runtime_at(&repo, &d).err().unwrap().to_string();
    assert!(
        message.contains("D\"") && message.contains("models/repository"),
        "{message}"
    );

    // A lock file edgemm did not create is neither truncated nor deleted.
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("lock"), b"someone else's lock").unwrap();
    assert_eq!(
        foreign_entry(runtime_at(&repo, &other), &other),
        Path::new("lock")
    );
    assert_eq!(
        fs::read(other.join("lock")).unwrap(),
        b"someone else's lock"
    );

    // Another tool's cache tag does not make a directory edgemm's.
    let tagged = tmp.path().join("tagged");
    fs::create_dir(&tagged).unwrap();
    fs::write(
        tagged.join("CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# cargo\n",
    )
    .unwrap();
    assert_eq!(
        foreign_entry(runtime_at(&repo, &tagged), &tagged),
        Path::new("CACHEDIR.TAG")
    );
}

/// Item 1, between processes: six `edgemm` processes opening one new cache directory at once
/// (runtime/cli/tests/cache_processes.rs) could see the marker another had created and not yet
/// written, and refuse the directory as foreign. A marker shorter than edgemm's is now read
/// again for a moment; another tool's complete tag is still refused at once.
#[test]
fn issue22_1_a_marker_being_written_by_another_process_is_waited_for() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let marked = tmp.path().join("marked");
    drop(runtime_at(&repo, &marked).unwrap());
    let marker = fs::read(marked.join("CACHEDIR.TAG")).unwrap();

    // Created (empty), then written 100 ms later, as another process would.
    let d = tmp.path().join("racing");
    fs::create_dir(&d).unwrap();
    fs::write(d.join("CACHEDIR.TAG"), b"").unwrap();
    let writer = {
        let path = d.join("CACHEDIR.TAG");
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            fs::write(path, marker).unwrap();
        })
    };
    runtime_at(&repo, &d).unwrap();
    writer.join().unwrap();

    // A short tag that never becomes edgemm's is refused once the wait is over.
    let short = tmp.path().join("short");
    fs::create_dir(&short).unwrap();
    fs::write(short.join("CACHEDIR.TAG"), b"Signature: 8a47").unwrap();
    assert_eq!(
        foreign_entry(runtime_at(&repo, &short), &short),
        Path::new("CACHEDIR.TAG")
    );
}

/// Item 1: a directory the cache created and marked is used; a file dropped into it later
/// makes the next start refuse (naming it) rather than delete it. The empty path is refused
/// rather than read as the current directory.
#[test]
fn issue22_1_owned_directory_is_used_and_foreign_files_in_it_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let d = tmp.path().join("cache");
    let input = vec![0.5f32; 8 * 8 * 3];
    let tensor = Input::Tensor {
        data: &input,
        shape: &[8, 8, 3],
    };
    {
        let runtime = runtime_at(&repo, &d).unwrap();
        runtime.invoke("m.tar.gz", tensor).unwrap();
    }
    assert!(d.join("CACHEDIR.TAG").is_file());
    assert!(d.join("models/m.tar.gz/edgemm-copy.json").is_file());
    // The same directory again: the copy is adopted.
    runtime_at(&repo, &d)
        .unwrap()
        .invoke("m.tar.gz", tensor)
        .unwrap();

    for foreign in ["models/photos", "notes.txt"] {
        let path = d.join(foreign);
        fs::write(&path, b"mine").unwrap();
        let before = snapshot(&d);
        assert_eq!(foreign_entry(runtime_at(&repo, &d), &d), Path::new(foreign));
        assert_eq!(snapshot(&d), before);
        fs::remove_file(&path).unwrap();
    }

    match runtime_at(&repo, Path::new("")) {
        Err(Error::InvalidOption(message)) => assert!(message.contains("empty"), "{message}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the empty cache directory was accepted"),
    }
}

/// Item 1: a cache directory written by edgemm before the marker existed (`lock` and
/// `models/` holding only recorded copies) is adopted, not refused.
#[test]
fn issue22_1_legacy_cache_directory_is_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let d = tmp.path().join("cache");
    runtime_at(&repo, &d)
        .unwrap()
        .cache()
        .load("m.tar.gz")
        .unwrap();
    // Make it look like the old layout: no marker, no scratch.
    fs::remove_file(d.join("CACHEDIR.TAG")).unwrap();
    fs::remove_dir(d.join("scratch")).unwrap();
    let runtime = runtime_at(&repo, &d).unwrap();
    assert!(runtime.cache().describe("m.tar.gz").unwrap().disk_bytes > 0);
    assert!(d.join("CACHEDIR.TAG").is_file());
}

/// A process id that is certainly not running: a child that has exited.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Item 7: a killed `inspect` left its scratch copy forever. Scratch copies whose process is
/// gone are removed at start-up (by the cache and by `inspect`); a live one stays; a foreign
/// file in `scratch/` is refused and kept.
#[test]
fn issue22_7_stale_inspect_scratch_is_removed_at_start_up() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let artifact = common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let d = tmp.path().join("cache");
    drop(runtime_at(&repo, &d).unwrap());
    let scratch = d.join("scratch");
    let dead = dead_pid();
    let make = |name: String| {
        let dir = scratch.join(name);
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join(".edgemm-owner"), format!("{dead}\n")).unwrap();
        fs::write(dir.join("model.safetensors"), b"half").unwrap();
        dir
    };
    let killed = make(format!("inspect-{dead}-0"));
    let killed_partial = make(format!(".partial-{dead}-1-inspect-{dead}-0"));
    let live = make(format!("inspect-{}-77", std::process::id()));
    // A crash between creating a directory and writing its owner file leaves it empty.
    let empty = scratch.join(format!(".partial-{dead}-2-inspect-{dead}-1"));
    fs::create_dir(&empty).unwrap();

    drop(runtime_at(&repo, &d).unwrap());
    assert!(!killed.exists() && !killed_partial.exists() && !empty.exists());
    assert!(
        live.exists(),
        "a scratch copy of a running process was removed"
    );

    // The CLI's inspect works in <cache_dir>/inspect, a cache directory of its own: the runtime
    // accepts that nested, marked directory and leaves it alone.
    let nested = d.join("inspect");
    edgemm::artifact::inspect(&artifact, &nested, Default::default()).unwrap();
    assert!(nested.join("CACHEDIR.TAG").is_file());
    drop(runtime_at(&repo, &d).unwrap());
    assert!(nested.join("CACHEDIR.TAG").is_file());
    let fresh = tmp.path().join("inspected-first");
    edgemm::artifact::inspect(&artifact, &fresh.join("inspect"), Default::default()).unwrap();
    drop(runtime_at(&repo, &fresh).unwrap());

    let again = make(format!("inspect-{dead}-3"));
    let info = edgemm::artifact::inspect(&artifact, &d, Default::default()).unwrap();
    assert_eq!(info.manifest.architecture, "alexnet-small");
    assert!(!again.exists());
    let left: Vec<_> = fs::read_dir(&scratch).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "inspect left its own scratch copy: {left:?}");

    fs::write(scratch.join("photo.jpg"), b"mine").unwrap();
    assert_eq!(
        foreign_entry(runtime_at(&repo, &d), &d),
        Path::new("scratch/photo.jpg")
    );
    assert_eq!(fs::read(scratch.join("photo.jpg")).unwrap(), b"mine");
}

/// A tiny PNG, `side` x `side`, as base64.
fn b64_png(side: u32) -> String {
    use base64::Engine;
    let image = image::RgbImage::from_pixel(side, side, image::Rgb([200, 30, 90]));
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Item 2: a JSON body of 4096 tiny b64 PNGs used to make one 4096-image batch (for a 224x224
/// model, 2.4 GB of input alone, and an abort on allocation). A request now runs in chunks of
/// at most `max_batch` items, sized to the memory budget by default, and answers every item.
/// (A 96x96 model keeps the test quick; the rule is the same.)
#[test]
fn issue22_2_a_large_batch_runs_in_bounded_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let mut big_input = tiny_manifest();
    big_input.config["input_size"] = serde_json::json!(96);
    big_input.input.height = 96;
    big_input.input.width = 96;
    common::pack_seeded(&big_input, 2, &repo, "big-input.tar.gz");

    let png = b64_png(2);
    let body = format!(
        "{{\"instances\": [{}]}}",
        vec![format!("{{\"b64\": \"{png}\"}}"); 4096].join(",")
    );
    let runtime = runtime_at(&repo, &tmp.path().join("cache")).unwrap();
    let answer = edgemm::json::invoke_json(&runtime, "big-input.tar.gz", body.as_bytes()).unwrap();
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 4096);

    // The default follows the memory budget: a quarter of it for one pass's activations.
    let model = runtime.model("big-input.tar.gz").unwrap();
    let max = runtime.max_batch(&model);
    let per_item = model.activation_bytes_per_item;
    assert!(per_item >= 4 * 3 * 96 * 96, "{per_item}");
    assert!((1..4096).contains(&max), "{max}");
    assert!(max as u64 * per_item <= runtime.options().cache.memory_budget / 4);
    drop(model);

    // Through the Rust API the passes are visible: ceil(items / max).
    let bytes: Vec<u8> = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&png)
            .unwrap()
    };
    let inputs = vec![Input::Image(&bytes); 2 * max + 1];
    let response = runtime.invoke_batch("big-input.tar.gz", &inputs).unwrap();
    assert_eq!(response.predictions.len(), 2 * max + 1);
    assert_eq!(response.forward_passes, 3);

    // A configured maximum, and a tensor of many items split along N.
    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = tmp.path().join("cache2");
    options.max_batch = 100;
    let runtime = Runtime::new(options).unwrap();
    let data = vec![0.25f32; 1000 * 8 * 8 * 3];
    let response = runtime
        .invoke(
            "m.tar.gz",
            Input::Tensor {
                data: &data,
                shape: &[1000, 8, 8, 3],
            },
        )
        .unwrap();
    assert_eq!(response.predictions.len(), 1000);
    assert_eq!(response.forward_passes, 10);
    assert_eq!(
        response.predictions[0].probabilities,
        response.predictions[999].probabilities
    );
}

/// `manifest` and `weights` as an artifact at `out`, without `pack`'s checks (a hostile or
/// broken packer).
fn raw_artifact(manifest: &Manifest, weights: &Path, out: &Path) {
    let mut manifest = manifest.clone();
    manifest.weights.sha256 = edgemm::artifact::sha256_file(weights).unwrap();
    let file = fs::File::create(out).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let json = manifest.to_json();
    let mut header = tar::Header::new_gnu();
    header.set_size(json.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "manifest.json", json.as_bytes())
        .unwrap();
    let bytes = fs::read(weights).unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "model.safetensors", &bytes[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

/// Seeded weights for `manifest` with `change` applied to the named tensors' values.
fn weights_with(
    manifest: &Manifest,
    path: &Path,
    change: &dyn Fn(&str, edgemm_models::Role, &mut Vec<f32>),
) {
    let arch = edgemm_models::architecture(&manifest.architecture).unwrap();
    let specs = arch.tensor_specs(&manifest.config).unwrap();
    let device = candle_core::Device::Cpu;
    let mut tensors = edgemm_models::init::seeded_weights(&specs, 3, &device).unwrap();
    for spec in &specs {
        let t = &tensors[&spec.name];
        let mut values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        change(&spec.name, spec.role, &mut values);
        let changed = candle_core::Tensor::from_vec(values, t.shape(), &device).unwrap();
        tensors.insert(spec.name.clone(), changed);
    }
    candle_core::safetensors::save(&tensors, path).unwrap();
}

/// Item 5: NaN weights answered NaN as success (`{"predictions":[[null,...]]}`); a negative
/// running variance was accepted. Both are refused with a typed error naming the tensor, by
/// `pack` and, for an artifact packed elsewhere, at extraction.
#[test]
fn issue22_5_non_finite_weights_and_negative_variance_are_refused() {
    use edgemm::ArtifactError;
    use edgemm_models::Role;
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    fs::create_dir(&repo).unwrap();
    let manifest = tiny_manifest();
    let runtime = runtime_at(&repo, &tmp.path().join("cache")).unwrap();
    let input = vec![0.5f32; 8 * 8 * 3];
    type Case = (&'static str, fn(&str, Role, &mut Vec<f32>));
    let cases: [Case; 3] = [
        ("nan.tar.gz", |name, _, v| {
            if name == "conv2.weight" {
                v[3] = f32::NAN;
            }
        }),
        ("inf.tar.gz", |name, _, v| {
            if name == "fc1.bias" {
                v[0] = f32::INFINITY;
            }
        }),
        ("negative-variance.tar.gz", |name, role, v| {
            if role == Role::BnVar && name.starts_with("bn1") {
                v[1] = -0.5;
            }
        }),
    ];
    for (name, change) in cases {
        let weights = tmp.path().join(format!("{name}.safetensors"));
        weights_with(&manifest, &weights, &change);
        let check = |err: Error| match err {
            Error::BadArtifact {
                source: ArtifactError::NonFiniteWeight { name: t, index },
                ..
            } => assert!(
                (t == "conv2.weight" && index == 3) || (t == "fc1.bias" && index == 0),
                "{t} {index}"
            ),
            Error::BadArtifact {
                source: ArtifactError::NegativeVariance { name: t, index, .. },
                ..
            } => assert_eq!((t.as_str(), index), ("bn1.running_var", 1)),
            other => panic!("{name}: {other}"),
        };
        check(edgemm::artifact::pack(&manifest, &weights, &tmp.path().join(name)).unwrap_err());
        raw_artifact(&manifest, &weights, &repo.join(name));
        let tensor = Input::Tensor {
            data: &input,
            shape: &[8, 8, 3],
        };
        check(runtime.invoke(name, tensor).unwrap_err());
    }

    // A negative epsilon is refused by the graph itself.
    let mut negative_eps = manifest.clone();
    negative_eps.config["bn_eps"] = serde_json::json!(-1e-3);
    let weights = tmp.path().join("eps.safetensors");
    common::write_seeded_weights(&manifest, 1, &weights);
    let err = edgemm::artifact::pack(&negative_eps, &weights, &tmp.path().join("eps.tar.gz"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("epsilon"), "{err}");
}

/// Item 5: finite weights that overflow on an input gave NaN probabilities as a success. The
/// answer is now checked before it is returned: a typed error, and `{"error": ...}` in JSON.
#[test]
fn issue22_5_non_finite_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    fs::create_dir(&repo).unwrap();
    let manifest = tiny_manifest();
    let weights = tmp.path().join("w.safetensors");
    weights_with(&manifest, &weights, &|name, _, v| {
        if name == "fc1.bias" || name == "fc2.weight" {
            v.iter_mut().for_each(|x| *x = 3e38);
        }
    });
    edgemm::artifact::pack(&manifest, &weights, &repo.join("overflow.tar.gz")).unwrap();
    let runtime = runtime_at(&repo, &tmp.path().join("cache")).unwrap();
    let input = vec![0.5f32; 2 * 8 * 8 * 3];
    let err = runtime
        .invoke(
            "overflow.tar.gz",
            Input::Tensor {
                data: &input,
                shape: &[2, 8, 8, 3],
            },
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteOutput { name, item: 0 } if name == "overflow.tar.gz"),
        "{err}"
    );
    assert_eq!(err.kind(), edgemm::ErrorKind::Internal);
    let rows: Vec<Vec<Vec<f32>>> = vec![vec![vec![0.5; 3]; 8]; 8];
    let body = serde_json::json!({ "instances": [rows] }).to_string();
    let err = edgemm::json::invoke_json(&runtime, "overflow.tar.gz", body.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("non-finite"), "{err}");
}

/// Item 6: a valid name over ~233 bytes failed with "File name too long" (the cache flattened
/// it into one path component); `sub/./x.tar.gz` and `sub//x.tar.gz` were separate aliases of
/// `sub/x.tar.gz`, each counted against the budgets.
#[test]
fn issue22_6_long_names_load_and_aliases_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let long = format!(
        "{}/{}/{}/model.tar.gz",
        "a".repeat(100),
        "b".repeat(100),
        "c".repeat(100)
    );
    let flat = common::pack_seeded(&tiny_manifest(), 1, &repo, "flat.tar.gz");
    fs::create_dir_all(repo.join(&long).parent().unwrap()).unwrap();
    fs::copy(&flat, repo.join(&long)).unwrap();
    fs::create_dir_all(repo.join("sub")).unwrap();
    fs::copy(&flat, repo.join("sub/x.tar.gz")).unwrap();

    let cache = tmp.path().join("cache");
    let input = vec![0.5f32; 8 * 8 * 3];
    let tensor = Input::Tensor {
        data: &input,
        shape: &[8, 8, 3],
    };
    {
        let runtime = runtime_at(&repo, &cache).unwrap();
        runtime.invoke(&long, tensor).unwrap();
        runtime.invoke("sub/x.tar.gz", tensor).unwrap();
        for alias in ["sub/./x.tar.gz", "sub//x.tar.gz", "./sub/x.tar.gz"] {
            assert!(
                matches!(
                    runtime.invoke(alias, tensor),
                    Err(Error::InvalidModelName { .. })
                ),
                "{alias}"
            );
        }
        let names: Vec<String> = runtime
            .cache()
            .metrics()
            .models
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
    // The long name's copy is adopted by the next process.
    let runtime = runtime_at(&repo, &cache).unwrap();
    assert!(runtime.cache().describe(&long).unwrap().disk_bytes > 0);
}

/// Item 8 (library side): hostile text from an archive is escaped in messages; a PNG claiming
/// 2^31-1 px names the size rule; a too-small disk budget says so; safetensors errors do not
/// quote the deleted `.partial-*` path; refused requests are counted.
#[test]
fn issue22_8_messages_name_the_rule_and_escape_hostile_text() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");

    // A Triton directory whose name carries terminal escapes, with a config.pbtxt that does
    // not parse: the message quotes the file's path.
    let path = repo.join("escape.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        for (file, data) in [
            ("m\x1b[2J\x07/config.pbtxt", &b"platform: %%%"[..]),
            ("m\x1b[2J\x07/1/model.onnx", &b"onnx"[..]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, file, data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    // Garbage weights whose checksum matches: the safetensors reader refuses them.
    let garbage = tmp.path().join("garbage.safetensors");
    fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot safetensors").unwrap();
    raw_artifact(&tiny_manifest(), &garbage, &repo.join("garbage.tar.gz"));

    let runtime = runtime_at(&repo, &tmp.path().join("cache")).unwrap();
    let tensor_data = vec![0.5f32; 8 * 8 * 3];
    let tensor = Input::Tensor {
        data: &tensor_data,
        shape: &[8, 8, 3],
    };
    let message = runtime
        .invoke("escape.tar.gz", tensor)
        .unwrap_err()
        .to_string();
    assert!(
        !message.chars().any(char::is_control) && message.contains("\\u{1b}[2J"),
        "{message:?}"
    );
    let message = runtime
        .invoke("garbage.tar.gz", tensor)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("model.safetensors") && !message.contains(".partial"),
        "{message}"
    );

    // A PNG header claiming 2^31-1 x 2^31-1 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = [0x7fu8, 0xff, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff].to_vec();
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend(common::png_chunk(b"IHDR", &ihdr));
    png.extend(common::png_chunk(b"IEND", b""));
    let err = runtime.invoke("m.tar.gz", Input::Image(&png)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BadInput(edgemm::InputError::TooManyPixels { limit: 4096, .. })
        ),
        "{err}"
    );

    // Refused requests (no such model, a bad name, bad input, bad artifacts) are requests.
    runtime.invoke("missing.tar.gz", tensor).unwrap_err();
    runtime.invoke("../x.tar.gz", tensor).unwrap_err();
    assert_eq!(runtime.cache().metrics().requests, 5);

    // A disk budget smaller than the one copy it must hold blames the copy, not loaded models.
    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = tmp.path().join("small-disk");
    options.cache.disk_budget = 100;
    let runtime = Runtime::new(options).unwrap();
    let message = runtime.invoke("m.tar.gz", tensor).unwrap_err().to_string();
    assert!(
        message.contains("larger than the whole disk budget") && !message.contains("loaded models"),
        "{message}"
    );
}

/// Item 3: the budget counted 4 bytes per stored weight, not what a loaded model holds (packed
/// and transformed weights, activations at the manifest's input size), so a manifest declaring
/// a huge input loaded "within budget" and then asked for gigabytes per image. A model is now
/// counted at its weights as held plus one item's activations, reserved before it loads.
#[test]
fn issue22_3_budget_counts_what_a_model_holds_and_caps_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let artifact = common::pack_seeded(&tiny_manifest(), 1, &repo, "m.tar.gz");
    let mut huge = tiny_manifest();
    huge.config["input_size"] = serde_json::json!(1024);
    huge.input.height = 1024;
    huge.input.width = 1024;
    common::pack_seeded(&huge, 2, &repo, "huge-input.tar.gz");

    let mut options = RuntimeOptions::new(&repo);
    options.cache_dir = tmp.path().join("cache");
    options.cache.memory_budget = 16 << 20;
    options.cache.memory_wait = std::time::Duration::from_millis(10);
    let runtime = Runtime::new(options).unwrap();

    // 1024x1024: every activation of one image is over 16 MiB. Refused before loading.
    let err = runtime.cache().load("huge-input.tar.gz").unwrap_err();
    assert!(
        matches!(err, Error::InsufficientMemory { needed, .. } if needed > 3 * 4 * 1024 * 1024),
        "{err}"
    );
    assert!(
        err.to_string().contains("larger than the whole budget"),
        "{err}"
    );
    assert_eq!(runtime.cache().memory_used(), 0);

    // The small model is counted at its weights as held plus its activations.
    runtime.cache().load("m.tar.gz").unwrap();
    let held = runtime.cache().describe("m.tar.gz").unwrap().memory_bytes;
    let model = runtime.model("m.tar.gz").unwrap();
    assert_eq!(held, model.resident_bytes);
    let info =
        edgemm::artifact::inspect(&artifact, &tmp.path().join("scratch"), Default::default())
            .unwrap();
    let f32_bytes: u64 = info
        .tensors
        .iter()
        .map(|t| 4 * t.shape.iter().product::<usize>() as u64)
        .sum();
    let packed: u64 = info.plan.iter().flatten().map(|s| s.bytes as u64).sum();
    assert_eq!(
        held,
        f32_bytes.max(packed) + model.activation_bytes_per_item,
        "f32 {f32_bytes}, packed {packed}"
    );
    assert!(model.activation_bytes_per_item >= 4 * 3 * 8 * 8);
}
