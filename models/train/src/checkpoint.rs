//! One checkpoint per epoch: `epoch-NNNN.safetensors` (the weights under their inference names
//! plus the optimiser state under `optim.*`) and `epoch-NNNN.json` (the epoch, the step count
//! and whatever the training loop records). Both are written to a temporary name and renamed,
//! the JSON last, so a JSON file marks a complete checkpoint even if the process was killed
//! while writing the next one.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::optim::Optimiser;
use edgemm_models::Result;

/// The JSON half of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Epochs completed (1 after the first epoch).
    pub epoch: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Free-form: losses, accuracies, the best epoch so far, the run's settings.
    pub log: serde_json::Value,
}

fn io(e: std::io::Error) -> edgemm_models::Error {
    candle_core::Error::from(e).into()
}

fn paths(dir: &Path, epoch: usize) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("epoch-{epoch:04}.safetensors")),
        dir.join(format!("epoch-{epoch:04}.json")),
    )
}

/// The tensors of `varmap` by name, in a stable order.
pub fn named_tensors(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut out: Vec<(String, Tensor)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Saves the weights of `varmap` alone (what an artifact packs).
pub fn save_weights(varmap: &VarMap, path: &Path) -> Result<()> {
    let tmp = path.with_extension("partial");
    candle_core::safetensors::save(
        &named_tensors(varmap).into_iter().collect::<HashMap<_, _>>(),
        &tmp,
    )?;
    fs::rename(&tmp, path).map_err(io)
}

/// Writes the checkpoint for `record.epoch` into `dir`.
pub fn save(
    dir: &Path,
    varmap: &VarMap,
    optimiser: &dyn Optimiser,
    record: &Record,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).map_err(io)?;
    let (weights, json) = paths(dir, record.epoch);
    let mut tensors: HashMap<String, Tensor> = named_tensors(varmap).into_iter().collect();
    tensors.extend(optimiser.state());
    let tmp = weights.with_extension("partial");
    candle_core::safetensors::save(&tensors, &tmp)?;
    fs::rename(&tmp, &weights).map_err(io)?;
    let tmp = json.with_extension("partial");
    let text = serde_json::to_string_pretty(record).expect("a record always serialises");
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, &json).map_err(io)?;
    Ok(weights)
}

/// The highest complete checkpoint in `dir`, if any.
pub fn latest(dir: &Path) -> Result<Option<Record>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut best: Option<usize> = None;
    for entry in entries {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if let Some(epoch) = name
            .strip_prefix("epoch-")
            .and_then(|s| s.strip_suffix(".json"))
            .and_then(|s| s.parse::<usize>().ok())
        {
            if paths(dir, epoch).0.exists() {
                best = best.max(Some(epoch));
            }
        }
    }
    let Some(epoch) = best else { return Ok(None) };
    let text = fs::read_to_string(paths(dir, epoch).1).map_err(io)?;
    let record = serde_json::from_str(&text).map_err(|e| edgemm_models::Error::Config {
        architecture: "checkpoint",
        reason: format!("epoch-{epoch:04}.json: {e}"),
    })?;
    Ok(Some(record))
}

/// Restores checkpoint `record` from `dir`: every variable of `varmap` and the optimiser state.
pub fn restore(
    dir: &Path,
    record: &Record,
    varmap: &VarMap,
    optimiser: &mut dyn Optimiser,
) -> Result<()> {
    let tensors = candle_core::safetensors::load(paths(dir, record.epoch).0, &Device::Cpu)?;
    {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, var) in data.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| edgemm_models::Error::Config {
                    architecture: "checkpoint",
                    reason: format!("epoch-{:04} has no tensor {name:?}", record.epoch),
                })?;
            var.set(&t.to_device(var.device())?)?;
        }
    }
    optimiser.load_state(&tensors, record.steps)
}
