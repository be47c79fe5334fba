//! edgemm-server: `edgemm serve`, one [`edgemm::Runtime`] behind three HTTP contracts.
//!
//! - **SageMaker Runtime InvokeEndpoint** (`POST /endpoints/{EndpointName}/invocations`), as
//!   an unmodified boto3 `sagemaker-runtime` client sends it: the model is the
//!   `X-Amzn-SageMaker-Target-Model` header, errors come in the service's JSON error shapes
//!   (`x-amzn-ErrorType`), so botocore raises the classes a cloud call raises ([`errors`]).
//! - **The SageMaker multi-model container contract** (what the platform calls inside a BYOC
//!   multi-model container): `GET /ping`, `POST /models`, `GET /models`, `GET /models/{name}`,
//!   `DELETE /models/{name}`, `POST /models/{name}/invoke`, `POST /invocations` ([`routes`]).
//! - **TF Serving REST**: `POST /v1/models/{name}:predict`, `GET /v1/models/{name}`.
//!
//! Bodies are TF Serving JSON (`application/json`, through [`edgemm::json`]) or raw images
//! (`image/jpeg`, `image/png`, `application/x-image`). Every body is read under
//! [`ServerOptions::max_payload_bytes`]; inference runs on a bounded pool of blocking threads
//! behind a bounded admission queue (503 + `Retry-After` when full), each request under a
//! deadline. `GET /metrics` is Prometheus text with SageMaker's metric names; each request
//! writes one JSON access-log line to stderr.
//!
//! ```no_run
//! use edgemm_server::ServerOptions;
//!
//! let options = ServerOptions::new("models/repository");
//! // Blocks until SIGTERM or SIGINT, then drains the requests in flight.
//! edgemm_server::run(options)?;
//! # Ok::<(), edgemm_server::ServeError>(())
//! ```
//!
//! From async code: [`Server::bind`] then [`Server::serve`] with a shutdown future.

pub mod errors;
mod body;
mod metrics;
mod mme;
pub mod routes;

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edgemm::{Runtime, RuntimeOptions};

pub use routes::router;

/// Everything `edgemm serve` can be told. `ServerOptions::new(repo)` gives the defaults;
/// [`ServerOptions::apply_sagemaker_env`] reads the variables SageMaker sets in a container.
///
/// How the CLI's flags map (`edgemm serve --repo DIR ...`):
///
/// | flag | field |
/// |---|---|
/// | `--repo DIR` | `runtime.repository` (`RuntimeOptions::new(DIR)`) |
/// | `--cache-dir DIR` | `runtime.cache_dir` |
/// | `--memory-budget-mb N` | `runtime.cache.memory_budget` |
/// | `--bind ADDR:PORT` | `bind` (default `127.0.0.1:8080`) |
/// | `--auth-token T` | `auth_token` (required before binding a non-loopback address) |
/// | `--max-payload-mb N` | `max_payload_bytes` (default 6 MiB) |
/// | `--timeout-s N` | `request_timeout` (default 60 s) |
/// | `--workers N` | `workers` (default: the number of CPUs) |
/// | `--queue N` | `queue_depth` (default 64) |
/// | `--endpoint-name NAME` | `endpoint_name` (default: any name is accepted) |
/// | `--default-model NAME` | `default_model` |
/// | `--sagemaker-container` | `sagemaker_container` + `apply_sagemaker_env()` |
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The runtime: repository, cache directory, memory and disk budgets, image limits.
    pub runtime: RuntimeOptions,
    /// Where to listen. Default `127.0.0.1:8080`. Port 0 picks a free port
    /// ([`Server::local_addr`] tells which).
    pub bind: SocketAddr,
    /// A shared secret every request but `GET /ping` must carry, as `Authorization: Bearer T`
    /// or as `X-Amz-Security-Token: T` (what boto3 sends for a session token, so an unmodified
    /// client passes it with `aws_session_token=T`). Required before binding a non-loopback
    /// address, unless `sagemaker_container` is set.
    pub auth_token: Option<String>,
    /// Inside a SageMaker container the platform is the only client that can reach the port,
    /// and it sends no credentials: allows a non-loopback bind without `auth_token`.
    pub sagemaker_container: bool,
    /// Largest request body, in bytes; checked while the body is read (6 MiB, SageMaker
    /// real-time's limit). Encoded images have their own 4 MB limit in
    /// `runtime.image_limits`.
    pub max_payload_bytes: usize,
    /// Deadline of one request, from admission to answer (60 s, SageMaker's).
    pub request_timeout: Duration,
    /// Threads running inference (and loads) at once. Default: the number of CPUs.
    pub workers: usize,
    /// Requests admitted beyond `workers` to wait for one; past that, 503 + `Retry-After`.
    pub queue_depth: usize,
    /// Seconds in the `Retry-After` of a 503.
    pub retry_after_s: u64,
    /// `Some(name)`: `/endpoints/{other}/invocations` is refused as the cloud refuses an
    /// unknown endpoint. `None`: any endpoint name is accepted.
    pub endpoint_name: Option<String>,
    /// The model for invocations without a target-model header (a single-model endpoint).
    pub default_model: Option<String>,
    /// `X-Amzn-Invoked-Production-Variant` of every InvokeEndpoint answer.
    pub production_variant: String,
    /// After the shutdown signal, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// One JSON line per request on stderr.
    pub access_log: bool,
}

impl ServerOptions {
    pub fn new(repository: impl Into<PathBuf>) -> Self {
        Self {
            runtime: RuntimeOptions::new(repository),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            auth_token: None,
            sagemaker_container: false,
            max_payload_bytes: 6 << 20,
            request_timeout: Duration::from_secs(60),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_depth: 64,
            retry_after_s: 1,
            endpoint_name: None,
            default_model: None,
            production_variant: "AllTraffic".into(),
            drain_timeout: Duration::from_secs(65),
            access_log: true,
        }
    }

    /// Reads what SageMaker sets in a serving container: `SAGEMAKER_BIND_TO_PORT` (listen on
    /// `0.0.0.0:PORT`, else 8080), `SAGEMAKER_MODEL_SERVER_TIMEOUT` (seconds),
    /// `SAGEMAKER_MODEL_SERVER_WORKERS`, `SAGEMAKER_MAX_PAYLOAD_IN_MB`, and sets
    /// `sagemaker_container`. A variable that does not parse is an error, not a default.
    pub fn apply_sagemaker_env(&mut self) -> Result<(), ServeError> {
        self.apply_env(|k| std::env::var(k).ok())
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ServeError> {
        fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ServeError> {
            value
                .trim()
                .parse()
                .map_err(|_| ServeError::Option(format!("{key}={value:?} is not a number")))
        }
        self.sagemaker_container = true;
        let port = match var("SAGEMAKER_BIND_TO_PORT") {
            Some(v) => parse::<u16>("SAGEMAKER_BIND_TO_PORT", &v)?,
            None => 8080,
        };
        self.bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        if let Some(v) = var("SAGEMAKER_MODEL_SERVER_TIMEOUT") {
            self.request_timeout =
                Duration::from_secs(parse("SAGEMAKER_MODEL_SERVER_TIMEOUT", &v)?);
        }
        if let Some(v) = var("SAGEMAKER_MODEL_SERVER_WORKERS") {
            self.workers = parse("SAGEMAKER_MODEL_SERVER_WORKERS", &v)?;
        }
        if let Some(v) = var("SAGEMAKER_MAX_PAYLOAD_IN_MB") {
            let mb: usize = parse("SAGEMAKER_MAX_PAYLOAD_IN_MB", &v)?;
            self.max_payload_bytes = mb.saturating_mul(1 << 20);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ServeError> {
        if self.workers == 0 {
            return Err(ServeError::Option("workers must be at least 1".into()));
        }
        if self.max_payload_bytes == 0 {
            return Err(ServeError::Option(
                "max_payload_bytes must be positive".into(),
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(ServeError::Option(
                "request_timeout must be positive".into(),
            ));
        }
        if let Some(token) = &self.auth_token {
            if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ServeError::Option(
                    "auth_token must be at least 16 printable characters without spaces".into(),
                ));
            }
        }
        if !self.bind.ip().is_loopback() && self.auth_token.is_none() && !self.sagemaker_container {
            return Err(ServeError::Unauthenticated { bind: self.bind });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("refusing to listen on {bind} without --auth-token: only loopback addresses may be served without one")]
    Unauthenticated { bind: SocketAddr },
    #[error("invalid option: {0}")]
    Option(String),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] edgemm::Error),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, not yet serving, server.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<routes::AppState>,
}

impl Server {
    /// Checks the options, opens the runtime (adopting the cache directory's copies) and binds.
    pub async fn bind(options: ServerOptions) -> Result<Self, ServeError> {
        options.validate()?;
        let runtime_options = options.runtime.clone();
        let runtime = tokio::task::spawn_blocking(move || Runtime::new(runtime_options))
            .await
            .map_err(|e| ServeError::Option(format!("runtime start-up panicked: {e}")))??;
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|source| ServeError::Bind {
                bind: options.bind,
                source,
            })?;
        let state = Arc::new(routes::AppState::new(Arc::new(runtime), options));
        Ok(Self { listener, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The runtime the server answers with (shared with the request handlers).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.state.runtime.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting connections and waits up to
    /// `drain_timeout` for the requests in flight to be answered.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let drain = self.state.options.drain_timeout;
        let app = routes::router(self.state.clone());
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        let graceful = async move {
            shutdown.await;
            let _ = signalled_tx.send(());
        };
        let server = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(graceful);
        let server = std::pin::pin!(server.into_future());
        tokio::select! {
            result = server => result.map_err(ServeError::Io),
            () = async {
                if signalled_rx.await.is_ok() {
                    tokio::time::sleep(drain).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                eprintln!("{}", serde_json::json!({
                    "event": "shutdown",
                    "message": "requests still in flight after the drain timeout were dropped",
                }));
                Ok(())
            }
        }
    }
}

/// Binds and serves until `shutdown` completes (see [`Server::serve`]).
pub async fn serve(
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let server = Server::bind(options).await?;
    eprintln!(
        "{}",
        serde_json::json!({"event": "listening", "address": server.local_addr().to_string()})
    );
    server.serve(shutdown).await
}

/// Completes on SIGTERM (what `docker stop` and SageMaker send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!(
        "{}",
        serde_json::json!({"event": "shutdown", "message": "draining requests in flight"})
    );
}

/// Blocking entry point for the CLI: a tokio runtime (async workers: 2; inference runs on its
/// own bounded blocking threads), serving until SIGTERM or SIGINT.
pub fn run(options: ServerOptions) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(options, shutdown_signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token() {
        let mut o = ServerOptions::new("repo");
        o.bind = "0.0.0.0:8080".parse().unwrap();
        assert!(matches!(
            o.validate(),
            Err(ServeError::Unauthenticated { .. })
        ));
        o.auth_token = Some("0123456789abcdef".into());
        o.validate().unwrap();
        o.auth_token = Some("short".into());
        assert!(o.validate().is_err());
        o.auth_token = None;
        o.bind = "[::1]:8080".parse().unwrap();
        o.validate().unwrap();
    }

    #[test]
    fn sagemaker_environment() {
        let mut o = ServerOptions::new("repo");
        o.apply_env(|k| match k {
            "SAGEMAKER_BIND_TO_PORT" => Some("9001".into()),
            "SAGEMAKER_MODEL_SERVER_TIMEOUT" => Some("30".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(o.bind, "0.0.0.0:9001".parse().unwrap());
        assert_eq!(o.request_timeout, Duration::from_secs(30));
        o.validate().unwrap();
        let mut o = ServerOptions::new("repo");
        assert!(o
            .apply_env(|k| (k == "SAGEMAKER_BIND_TO_PORT").then(|| "eighty".into()))
            .is_err());
    }
}
