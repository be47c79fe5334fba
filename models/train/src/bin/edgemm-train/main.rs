//! `edgemm-train`: trains the two shipped classifiers on the data in `../shared/data` and packs
//! them as artifacts.
//!
//! - `edgemm-train sign`: transfer learning for `sign-language.tar.gz`. The ImageNet
//!   EfficientNet-Lite0 backbone stays frozen; its 1280 pooled features of every photo are
//!   computed once and cached, then a new 10-class `_fc` head is trained with AdamW on
//!   split=train, the epoch with the best split=val accuracy is kept, split=test is reported.
//! - `edgemm-train cifar`: alexnet-small from scratch on the 50,000 CIFAR-10 training images
//!   with random padded crops and horizontal flips, one checkpoint per epoch, resumed from the
//!   latest checkpoint when started again with the same `--work` directory.
//!
//! Images go through the runtime's own preprocessing (`edgemm::preprocess`, with the input spec
//! of the manifest that is packed), so what the network sees in training is what it sees when
//! served.

mod cifar;
mod data;
mod sign;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "edgemm-train",
    version,
    about = "Train edgemm's shipped classifiers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign Language Digits: frozen EfficientNet-Lite0 features, new 10-class head
    Sign(sign::Args),
    /// CIFAR-10: alexnet-small from scratch, checkpointed and resumable
    Cifar(cifar::Args),
}

/// `$EDGEMM_DATA`, else `../shared/data` (the layout described in README.md#data-sets).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("EDGEMM_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Sign(args) => sign::run(args),
        Command::Cifar(args) => cifar::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
