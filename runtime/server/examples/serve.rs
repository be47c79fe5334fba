//! Starts the server from command-line flags, as `edgemm serve` does, without the CLI: what
//! the kill -9 test and the load bench run.
//!
//! ```text
//! cargo run -p edgemm-server --example serve -- --repo models/repository --bind 127.0.0.1:8080
//! ```
//!
//! Flags (see `ServerOptions` for each): `--repo DIR`, `--cache-dir DIR`, `--bind ADDR:PORT`,
//! `--auth-token T`, `--memory-budget-mb N`, `--workers N`, `--queue N`, `--max-payload-mb N`,
//! `--timeout-s N`, `--endpoint-name NAME`, `--default-model NAME`, `--no-access-log`,
//! `--sagemaker-container` (listen on 0.0.0.0:$SAGEMAKER_BIND_TO_PORT, read SageMaker's
//! variables). Stops on SIGTERM or SIGINT after draining the requests in flight.

use std::process::ExitCode;
use std::time::Duration;

use edgemm_server::ServerOptions;

fn parse_args(args: &[String]) -> Result<ServerOptions, String> {
    let mut repo = None;
    let mut rest: Vec<(&str, Option<&str>)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let takes_value = !matches!(flag, "--no-access-log" | "--sagemaker-container");
        let value = if takes_value {
            i += 1;
            Some(args.get(i).ok_or(format!("{flag} needs a value"))?.as_str())
        } else {
            None
        };
        if flag == "--repo" {
            repo = value;
        } else {
            rest.push((flag, value));
        }
        i += 1;
    }
    let mut o = ServerOptions::new(repo.ok_or("--repo DIR is required")?);
    let number = |flag: &str, v: Option<&str>| -> Result<u64, String> {
        v.unwrap_or("")
            .parse()
            .map_err(|_| format!("{flag} needs a number"))
    };
    for (flag, value) in rest {
        let text = || value.unwrap_or("").to_string();
        match flag {
            "--cache-dir" => o.runtime.cache_dir = text().into(),
            "--bind" => o.bind = text().parse().map_err(|e| format!("--bind: {e}"))?,
            "--auth-token" => o.auth_token = Some(text()),
            "--memory-budget-mb" => {
                o.runtime.cache.memory_budget = number(flag, value)?.saturating_mul(1 << 20)
            }
            "--workers" => o.workers = number(flag, value)? as usize,
            "--queue" => o.queue_depth = number(flag, value)? as usize,
            "--max-payload-mb" => {
                o.max_payload_bytes = (number(flag, value)? as usize).saturating_mul(1 << 20)
            }
            "--timeout-s" => o.request_timeout = Duration::from_secs(number(flag, value)?),
            "--endpoint-name" => o.endpoint_name = Some(text()),
            "--default-model" => o.default_model = Some(text()),
            "--no-access-log" => o.access_log = false,
            "--sagemaker-container" => o.apply_sagemaker_env().map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("serve: {e}");
            return ExitCode::from(2);
        }
    };
    match edgemm_server::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serve: {e}");
            ExitCode::FAILURE
        }
    }
}
