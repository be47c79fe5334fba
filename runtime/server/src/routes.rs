//! The routes of the three contracts, and what every request goes through: the auth check,
//! admission into the bounded queue, the bounded body read, the deadline, the blocking pool,
//! the access-log line and the request counters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use edgemm::{Input, ModelState, Runtime};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::{self, BodyKind};
use crate::errors::{ApiError, Dialect};
use crate::metrics::ServerMetrics;
use crate::ServerOptions;

const TARGET_MODEL: &str = "x-amzn-sagemaker-target-model";
const CUSTOM_ATTRIBUTES: &str = "x-amzn-sagemaker-custom-attributes";
const INVOKED_VARIANT: &str = "x-amzn-invoked-production-variant";
const REQUEST_ID: &str = "x-amzn-requestid";
/// SageMaker's limit on custom attributes.
const MAX_CUSTOM_ATTRIBUTES: usize = 1024;

/// What the handlers share.
pub struct AppState {
    pub runtime: Arc<Runtime>,
    pub options: ServerOptions,
    /// Requests admitted (running or waiting for a worker): `workers + queue_depth` permits.
    admission: Arc<Semaphore>,
    capacity: usize,
    /// Inference and loads running at once.
    workers: Arc<Semaphore>,
    metrics: ServerMetrics,
    /// Models loaded by `POST /models`, with the url they came from.
    urls: Mutex<BTreeMap<String, String>>,
    packed_dir: PathBuf,
    request_ids: AtomicU64,
    started_ns: u64,
}

impl AppState {
    pub fn new(runtime: Arc<Runtime>, options: ServerOptions) -> Self {
        let capacity = options.workers + options.queue_depth;
        let packed_dir = options.runtime.cache_dir.join("packed");
        Self {
            runtime,
            admission: Arc::new(Semaphore::new(capacity)),
            capacity,
            workers: Arc::new(Semaphore::new(options.workers)),
            metrics: ServerMetrics::default(),
            urls: Mutex::default(),
            packed_dir,
            request_ids: AtomicU64::new(0),
            started_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            options,
        }
    }

    fn urls(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.urls.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission.clone().try_acquire_owned().map_err(|_| {
            self.metrics.queue_full();
            ApiError::Overloaded {
                retry_after_s: self.options.retry_after_s,
            }
        })
    }

    /// Runs `f` on a blocking thread once a worker is free, under the request's deadline. A
    /// call that outlives the deadline finishes on its thread (holding its worker) but its
    /// answer is dropped.
    async fn on_worker<T: Send + 'static>(
        &self,
        deadline: tokio::time::Instant,
        f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let seconds = self.options.request_timeout.as_secs();
        let workers = self.workers.clone();
        let run = async move {
            let permit = workers
                .acquire_owned()
                .await
                .map_err(|_| ApiError::Internal("worker pool closed".into()))?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                f()
            })
            .await
            .map_err(|e| ApiError::Internal(format!("request handler failed: {e}")))?
        };
        tokio::time::timeout_at(deadline, run)
            .await
            .map_err(|_| ApiError::Timeout { seconds })?
    }
}

/// A handler's note to the access log: the model a request was for.
#[derive(Clone)]
struct ModelTag(String);

/// The router over `state` (routes and middleware; serve it with connect info for the
/// access log's remote address).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/metrics", get(metrics))
        .route("/endpoints/{endpoint}/invocations", post(invoke_endpoint))
        .route("/invocations", post(container_invocations))
        .route("/models", post(load_model).get(list_models))
        .route("/models/{name}", get(describe_model).delete(unload_model))
        .route("/models/{name}/invoke", post(invoke_model))
        .route("/v1/models/{*rest}", get(tf_status).post(tf_predict))
        .layer(axum::middleware::from_fn_with_state(state.clone(), around))
        .with_state(state)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.options.auth_token else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let session = headers
        .get("x-amz-security-token")
        .and_then(|v| v.to_str().ok());
    [bearer, session]
        .into_iter()
        .flatten()
        .any(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()))
}

/// Auth, request id, counters and the access-log line, around every route.
async fn around(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path: String = request.uri().path().chars().take(300).collect();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string());
    let bytes_in = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let id = format!(
        "{:016x}-{:08x}",
        state.started_ns,
        state.request_ids.fetch_add(1, Ordering::Relaxed)
    );
    let mut response = if path != "/ping" && !authorized(&state, request.headers()) {
        let dialect = if path.starts_with("/endpoints/") {
            Dialect::SageMakerRuntime
        } else {
            Dialect::Container
        };
        body::discard(request.into_body()).await;
        ApiError::Unauthorized.response(dialect, &state.options.production_variant)
    } else {
        next.run(request).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    let status = response.status().as_u16();
    state.metrics.request(&route, status);
    if state.options.access_log {
        let model = response.extensions().get::<ModelTag>().map(|m| m.0.clone());
        let line = json!({
            "ts_ms": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            "request_id": id,
            "remote": remote,
            "method": method.as_str(),
            "path": path,
            "route": route,
            "model": model,
            "status": status,
            "bytes_in": bytes_in,
            "duration_us": started.elapsed().as_micros() as u64,
        });
        eprintln!("{line}");
    }
    response
}

async fn ping() -> &'static str {
    ""
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let runtime = state.runtime.clone();
    let cache = match tokio::task::spawn_blocking(move || runtime.cache().metrics()).await {
        Ok(m) => m,
        Err(e) => return ApiError::Internal(e.to_string()).response(Dialect::Container, ""),
    };
    let in_flight = state.capacity - state.admission.available_permits();
    let text = state.metrics.render(&cache, in_flight, state.capacity);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Runs one invocation: TF Serving JSON or an encoded image, answered as TF Serving JSON.
fn predict(runtime: &Runtime, name: &str, kind: BodyKind, body: &[u8]) -> edgemm::Result<Vec<u8>> {
    // The model first, as the cloud does: an unknown model is a ValidationError whatever the body.
    runtime.repository().resolve(name)?;
    let answer = match kind {
        BodyKind::Json => edgemm::json::invoke_json(runtime, name, body)?,
        BodyKind::Image => {
            let response = runtime.invoke(name, Input::Image(body))?;
            let rows: Vec<&Vec<f32>> = response
                .predictions
                .iter()
                .map(|p| &p.probabilities)
                .collect();
            json!({ "predictions": rows })
        }
    };
    Ok(serde_json::to_vec(&answer).expect("JSON values always serialise"))
}

/// What every invocation route shares, from admission to the answer's body.
async fn invocation(
    state: &Arc<AppState>,
    name: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, Vec<u8>), ApiError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + state.options.request_timeout;
    let checks = (|| {
        let name = name
            .or_else(|| state.options.default_model.clone())
            .ok_or(ApiError::NoTargetModel)?;
        body::check_accept(headers)?;
        Ok::<_, ApiError>((name, body::body_kind(headers)?))
    })();
    let ((name, kind), _admitted) = match checks.and_then(|c| state.admit().map(|p| (c, p))) {
        Ok(v) => v,
        Err(e) => {
            body::discard(body).await;
            return Err(e);
        }
    };
    let seconds = state.options.request_timeout.as_secs();
    let bytes = tokio::time::timeout_at(
        deadline,
        body::read_limited(headers, body, state.options.max_payload_bytes),
    )
    .await
    .map_err(|_| ApiError::Timeout { seconds })??;
    let runtime = state.runtime.clone();
    let model = name.clone();
    let result = state
        .on_worker(deadline, move || {
            let t = Instant::now();
            let r = predict(&runtime, &model, kind, &bytes).map_err(ApiError::from);
            r.map(|body| (body, t.elapsed().as_micros() as u64))
        })
        .await;
    let total_us = started.elapsed().as_micros() as u64;
    match result {
        Ok((body, model_us)) => {
            state.metrics.invocation(&name, 200, model_us, total_us);
            Ok((name, body))
        }
        Err(e) => {
            let status = e.container_status().as_u16();
            let model_us = if matches!(e, ApiError::Runtime(_)) {
                total_us
            } else {
                0
            };
            state.metrics.invocation(&name, status, model_us, total_us);
            Err(e)
        }
    }
}

fn tag(mut response: Response, name: Option<&str>) -> Response {
    if let Some(name) = name {
        response.extensions_mut().insert(ModelTag(name.to_string()));
    }
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn header_text(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.to_string()))
            .map_err(|_| ApiError::BadRequest(format!("header {name} is not visible ASCII"))),
    }
}

/// `POST /endpoints/{EndpointName}/invocations`: SageMaker Runtime InvokeEndpoint.
async fn invoke_endpoint(
    State(state): State<Arc<AppState>>,
    Path(endpoint): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let variant = state.options.production_variant.clone();
    let early = (|| {
        if let Some(expected) = &state.options.endpoint_name {
            if &endpoint != expected {
                return Err(ApiError::UnknownEndpoint(
                    endpoint.chars().take(100).collect(),
                ));
            }
        }
        let attributes = header_text(&headers, CUSTOM_ATTRIBUTES)?;
        if attributes
            .as_ref()
            .is_some_and(|a| a.len() > MAX_CUSTOM_ATTRIBUTES)
        {
            return Err(ApiError::BadRequest(format!(
                "CustomAttributes is longer than {MAX_CUSTOM_ATTRIBUTES} characters"
            )));
        }
        Ok((header_text(&headers, TARGET_MODEL)?, attributes))
    })();
    let (target, attributes) = match early {
        Ok(v) => v,
        Err(e) => {
            body::discard(body).await;
            return e.response(Dialect::SageMakerRuntime, &variant);
        }
    };
    match invocation(&state, target.clone(), &headers, body).await {
        Ok((name, answer)) => {
            let mut response = json_response(StatusCode::OK, answer);
            let h = response.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&variant) {
                h.insert(INVOKED_VARIANT, v);
            }
            if let Some(a) = attributes.and_then(|a| HeaderValue::from_str(&a).ok()) {
                h.insert(CUSTOM_ATTRIBUTES, a);
            }
            tag(response, Some(&name))
        }
        Err(e) => tag(
            e.response(Dialect::SageMakerRuntime, &variant),
            target.as_deref(),
        ),
    }
}

async fn container_invoke(
    state: Arc<AppState>,
    name: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match invocation(&state, name.clone(), &headers, body).await {
        Ok((name, answer)) => tag(json_response(StatusCode::OK, answer), Some(&name)),
        Err(e) => tag(e.response(Dialect::Container, ""), name.as_deref()),
    }
}

/// `POST /invocations`: the container's invocation route; the platform names the model in
/// the target-model header.
async fn container_invocations(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match header_text(&headers, TARGET_MODEL) {
        Ok(name) => container_invoke(state, name, headers, body).await,
        Err(e) => e.response(Dialect::Container, ""),
    }
}

/// `POST /models/{name}/invoke`.
async fn invoke_model(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    container_invoke(state, Some(name), headers, body).await
}

/// A TF Serving model name may leave out `.tar.gz`.
fn tf_name(runtime: &Runtime, name: &str) -> String {
    let with_suffix = format!("{name}.tar.gz");
    if runtime.repository().resolve(name).is_err()
        && runtime.repository().resolve(&with_suffix).is_ok()
    {
        with_suffix
    } else {
        name.to_string()
    }
}

/// `NAME`, `NAME/versions/N` or `NAME/labels/L` -> `NAME`.
fn strip_version(path: &str) -> &str {
    for marker in ["/versions/", "/labels/"] {
        if let Some(i) = path.rfind(marker) {
            return &path[..i];
        }
    }
    path
}

/// `POST /v1/models/{name}[/versions/N]:predict`.
async fn tf_predict(
    State(state): State<Arc<AppState>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(name) = rest.strip_suffix(":predict") else {
        body::discard(body).await;
        let e = ApiError::BadRequest(format!(
            "unsupported TF Serving method in {rest:?}: only :predict is served"
        ));
        return e.response(Dialect::Container, "");
    };
    let name = tf_name(&state.runtime, strip_version(name));
    container_invoke(state, Some(name), headers, body).await
}

/// `GET /v1/models/{name}[/versions/N]`: TF Serving's model status.
async fn tf_status(State(state): State<Arc<AppState>>, Path(rest): Path<String>) -> Response {
    let name = tf_name(&state.runtime, strip_version(&rest));
    let runtime = state.runtime.clone();
    let described = tokio::task::spawn_blocking(move || {
        runtime.repository().resolve(&name)?;
        runtime.cache().describe(&name)
    })
    .await;
    match described {
        Ok(Ok(d)) => {
            // The runtime loads on first use: a model not in memory still answers requests.
            let state = match d.state {
                ModelState::Loading => "LOADING",
                ModelState::Unloading => "UNLOADING",
                ModelState::Loaded | ModelState::Unloaded => "AVAILABLE",
            };
            let body = json!({"model_version_status": [{
                "version": "1", "state": state,
                "status": {"error_code": "OK", "error_message": ""}
            }]});
            json_response(StatusCode::OK, body.to_string().into_bytes())
        }
        Ok(Err(e)) => ApiError::Runtime(e).response(Dialect::Container, ""),
        Err(e) => ApiError::Internal(e.to_string()).response(Dialect::Container, ""),
    }
}

/// `POST /models` `{"model_name": ..., "url": ...}`: MME LoadModel. 200 once loaded; 409 when
/// the name is loaded already; 507 when it does not fit the memory budget; 404 when the url
/// does not exist.
async fn load_model(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let deadline = tokio::time::Instant::now() + state.options.request_timeout;
        let bytes = body::read_limited(&headers, body, state.options.max_payload_bytes).await?;
        let request: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("body is not JSON: {e}")))?;
        let field = |k: &str| {
            request
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApiError::BadRequest(format!("body needs a string {k:?}")))
        };
        let (name, url) = (field("model_name")?, field("url")?);
        edgemm::repository::validate_name(&name)?;
        let in_memory = state
            .runtime
            .cache()
            .describe(&name)
            .is_ok_and(|d| matches!(d.state, ModelState::Loaded | ModelState::Loading));
        if in_memory || state.urls().contains_key(&name) {
            return Err(ApiError::AlreadyLoaded(name));
        }
        let runtime = state.runtime.clone();
        let packed = state.packed_dir.clone();
        let (n, u) = (name.clone(), url.clone());
        state
            .on_worker(deadline, move || {
                let artifact = crate::mme::artifact_for_url(&u, &packed, &n)?;
                if !runtime.repository().register(&n, artifact)? {
                    return Err(ApiError::AlreadyLoaded(n));
                }
                runtime.cache().load(&n).map_err(|e| {
                    runtime.repository().deregister(&n);
                    ApiError::Runtime(e)
                })
            })
            .await?;
        state.urls().insert(name.clone(), url);
        Ok(name)
    }
    .await;
    match result {
        Ok(name) => {
            let body = json!({ "status": format!("model {name:?} loaded") });
            tag(
                json_response(StatusCode::OK, body.to_string().into_bytes()),
                Some(&name),
            )
        }
        Err(e) => e.response(Dialect::Container, ""),
    }
}

fn model_json(state: &AppState, d: &edgemm::ModelDescription) -> Value {
    let url = state.urls().get(&d.name).cloned().unwrap_or_else(|| {
        state
            .runtime
            .repository()
            .resolve(&d.name)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    });
    json!({
        "modelName": d.name,
        "modelUrl": url,
        "state": d.state,
        "memoryBytes": d.memory_bytes,
        "diskBytes": d.disk_bytes,
        "invocations": d.invocations,
        "loads": d.loads,
        "evictions": d.evictions,
    })
}

/// `GET /models[?page_size=N&next_page_token=T]`: MME ListModels, every model the runtime can
/// serve (loaded, registered, or in the repository), with its state.
async fn list_models(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let mut page_size = 100usize;
    let mut start = 0usize;
    for pair in query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = v.parse::<usize>().ok();
        match (k, n) {
            ("page_size", Some(n)) if (1..=1000).contains(&n) => page_size = n,
            ("next_page_token", Some(n)) => start = n,
            ("page_size" | "next_page_token", _) => {
                return ApiError::BadRequest(format!("invalid {k} {v:?}"))
                    .response(Dialect::Container, "")
            }
            _ => {}
        }
    }
    let s = state.clone();
    // Models the cache still knows but that no longer resolve (unloaded by DELETE) are left out.
    let listed = tokio::task::spawn_blocking(move || {
        s.runtime.cache().list().map(|models| {
            models
                .into_iter()
                .filter(|m| s.runtime.repository().resolve(&m.name).is_ok())
                .collect::<Vec<_>>()
        })
    })
    .await;
    let models = match listed {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return ApiError::Runtime(e).response(Dialect::Container, ""),
        Err(e) => return ApiError::Internal(e.to_string()).response(Dialect::Container, ""),
    };
    let page: Vec<Value> = models
        .iter()
        .skip(start)
        .take(page_size)
        .map(|d| model_json(&state, d))
        .collect();
    let mut body = json!({ "models": page });
    if start.saturating_add(page_size) < models.len() {
        body["nextPageToken"] = json!((start + page_size).to_string());
    }
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// `GET /models/{name}`: MME DescribeModel; 404 when the name is neither registered nor in the
/// repository.
async fn describe_model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let s = state.clone();
    let n = name.clone();
    let described = move || {
        s.runtime.repository().resolve(&n)?;
        s.runtime.cache().describe(&n)
    };
    match tokio::task::spawn_blocking(described).await {
        Ok(Ok(d)) => tag(
            json_response(
                StatusCode::OK,
                model_json(&state, &d).to_string().into_bytes(),
            ),
            Some(&name),
        ),
        Ok(Err(e)) => ApiError::Runtime(e).response(Dialect::Container, ""),
        Err(e) => ApiError::Internal(e.to_string()).response(Dialect::Container, ""),
    }
}

/// `DELETE /models/{name}`: MME UnloadModel. Waits for the model's requests in flight, frees
/// its memory, forgets a `POST /models` registration (its extracted copy stays on disk); 404
/// when it is neither loaded nor registered.
async fn unload_model(State(state): State<Arc<AppState>>, Path(name): Path<String>) -> Response {
    let registered = state.urls().contains_key(&name);
    let in_memory = state
        .runtime
        .cache()
        .describe(&name)
        .is_ok_and(|d| !matches!(d.state, ModelState::Unloaded));
    if !registered && !in_memory {
        return ApiError::NotLoaded(name).response(Dialect::Container, "");
    }
    let s = state.clone();
    let n = name.clone();
    let deadline = tokio::time::Instant::now() + state.options.request_timeout;
    let result = state
        .on_worker(deadline, move || {
            s.runtime.cache().unload(&n)?;
            s.runtime.repository().deregister(&n);
            s.urls().remove(&n);
            Ok(())
        })
        .await;
    match result {
        Ok(()) => {
            let body = json!({ "status": format!("model {name:?} unloaded") });
            tag(
                json_response(StatusCode::OK, body.to_string().into_bytes()),
                Some(&name),
            )
        }
        Err(e) => e.response(Dialect::Container, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_paths() {
        assert_eq!(strip_version("cifar/versions/3"), "cifar");
        assert_eq!(strip_version("cifar"), "cifar");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
