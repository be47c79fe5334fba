//! `GET /metrics`: Prometheus text. The cache's metrics keep SageMaker MME's CloudWatch names
//! (`ModelLoadingWaitTime`, `ModelDownloadingTime`, `ModelLoadingTime`, `ModelUnloadingTime`,
//! `ModelCacheHit`, `LoadedModelCount`) and the endpoint's (`Invocations`,
//! `Invocation4XXErrors`, `Invocation5XXErrors`, `ModelLatency`, `OverheadLatency`), each with a
//! `model` label where it is per model. Times are in microseconds, as CloudWatch reports them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use edgemm::CacheMetrics;

#[derive(Default)]
struct ModelSeries {
    invocations: u64,
    errors_4xx: u64,
    errors_5xx: u64,
    model_latency_us_sum: u64,
    overhead_latency_us_sum: u64,
}

#[derive(Default)]
struct Inner {
    /// (route, status) -> count.
    requests: BTreeMap<(String, u16), u64>,
    models: BTreeMap<String, ModelSeries>,
    rejected_queue_full: u64,
}

/// The server's own counters (the cache keeps its own).
#[derive(Default)]
pub struct ServerMetrics {
    inner: Mutex<Inner>,
}

impl ServerMetrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn request(&self, route: &str, status: u16) {
        *self
            .lock()
            .requests
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    pub fn queue_full(&self) {
        self.lock().rejected_queue_full += 1;
    }

    /// One invocation of a model: its status, the time in the model (preprocessing,
    /// inference, load) and the rest.
    pub fn invocation(&self, model: &str, status: u16, model_us: u64, total_us: u64) {
        let mut inner = self.lock();
        // Bounded by the names that reached the runtime; a 404 name is not a model.
        if status == 404 || (status == 400 && model_us == 0) {
            return;
        }
        let series = inner.models.entry(model.to_string()).or_default();
        series.invocations += 1;
        match status {
            400..=499 => series.errors_4xx += 1,
            500..=599 => series.errors_5xx += 1,
            _ => {}
        }
        series.model_latency_us_sum += model_us;
        series.overhead_latency_us_sum += total_us.saturating_sub(model_us);
    }

    pub fn render(&self, cache: &CacheMetrics, in_flight: usize, capacity: usize) -> String {
        let mut out = String::new();
        let inner = self.lock();
        let _ = writeln!(
            out,
            "# HELP edgemm_http_requests_total HTTP requests by route and status.\n# TYPE edgemm_http_requests_total counter"
        );
        for ((route, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "edgemm_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        gauge(
            &mut out,
            "edgemm_requests_in_flight",
            "Requests admitted and not yet answered.",
            in_flight as u64,
        );
        gauge(
            &mut out,
            "edgemm_request_capacity",
            "Requests that may be admitted at once (workers + queue).",
            capacity as u64,
        );
        counter(
            &mut out,
            "edgemm_requests_rejected_queue_full_total",
            "Requests answered 503 because the queue was full.",
            inner.rejected_queue_full,
        );
        for (name, help, t) in [
            (
                "ModelLoadingWaitTime",
                "Time requests waited for a model to be extracted and loaded.",
                cache.model_loading_wait_time,
            ),
            (
                "ModelDownloadingTime",
                "Time extracting artifacts (MME: downloading from S3).",
                cache.model_downloading_time,
            ),
            (
                "ModelLoadingTime",
                "Time loading models into memory.",
                cache.model_loading_time,
            ),
            (
                "ModelUnloadingTime",
                "Time unloading models.",
                cache.model_unloading_time,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name}_microseconds {help}\n# TYPE {name}_microseconds summary\n{name}_microseconds_sum {}\n{name}_microseconds_count {}\n# HELP {name}_microseconds_max Longest.\n# TYPE {name}_microseconds_max gauge\n{name}_microseconds_max {}",
                t.sum_us, t.count, t.max_us
            );
        }
        counter(
            &mut out,
            "ModelCacheHit_total",
            "Requests answered by an already loaded model.",
            cache.model_cache_hit,
        );
        counter(
            &mut out,
            "ModelRequests_total",
            "Requests that reached the model cache.",
            cache.requests,
        );
        gauge(
            &mut out,
            "LoadedModelCount",
            "Models in memory.",
            cache.loaded_model_count as u64,
        );
        gauge(
            &mut out,
            "edgemm_memory_used_bytes",
            "Bytes of model weights in memory.",
            cache.memory_used_bytes,
        );
        gauge(
            &mut out,
            "edgemm_memory_budget_bytes",
            "Memory budget of the model cache.",
            cache.memory_budget_bytes,
        );
        gauge(
            &mut out,
            "edgemm_disk_used_bytes",
            "Bytes of extracted copies on disk.",
            cache.disk_used_bytes,
        );
        gauge(
            &mut out,
            "edgemm_disk_budget_bytes",
            "Disk budget of the model cache.",
            cache.disk_budget_bytes,
        );

        let label = |name: &str| {
            name.replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        };
        let per_model: [(&str, &str, &str); 5] = [
            ("Invocations_total", "counter", "Invocations per model."),
            (
                "Invocation4XXErrors_total",
                "counter",
                "Invocations answered 4xx per model.",
            ),
            (
                "Invocation5XXErrors_total",
                "counter",
                "Invocations answered 5xx per model.",
            ),
            (
                "ModelLatency_microseconds_sum",
                "counter",
                "Time in the model (load, preprocessing, inference) per model.",
            ),
            (
                "OverheadLatency_microseconds_sum",
                "counter",
                "Time outside the model (queue, body, JSON) per model.",
            ),
        ];
        for (name, kind, help) in per_model {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (model, s) in &inner.models {
                let v = match name {
                    "Invocations_total" => s.invocations,
                    "Invocation4XXErrors_total" => s.errors_4xx,
                    "Invocation5XXErrors_total" => s.errors_5xx,
                    "ModelLatency_microseconds_sum" => s.model_latency_us_sum,
                    _ => s.overhead_latency_us_sum,
                };
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {v}", label(model));
            }
        }
        let cache_series: [(&str, &str, &str); 6] = [
            (
                "ModelCacheHit_model_total",
                "counter",
                "Cache hits per model.",
            ),
            ("ModelLoads_total", "counter", "Loads per model."),
            ("ModelEvictions_total", "counter", "Evictions per model."),
            ("ModelMemoryBytes", "gauge", "Bytes in memory per model."),
            ("ModelLoaded", "gauge", "1 when the model is in memory."),
            (
                "ModelLatency_p50_microseconds",
                "gauge",
                "Median latency over the last 1024 requests.",
            ),
        ];
        for (name, kind, help) in cache_series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in &cache.models {
                let v = match name {
                    "ModelCacheHit_model_total" => m.hits,
                    "ModelLoads_total" => m.loads,
                    "ModelEvictions_total" => m.evictions,
                    "ModelMemoryBytes" => m.memory_bytes,
                    "ModelLoaded" => u64::from(m.state == edgemm::ModelState::Loaded),
                    _ => match m.latency_p50_us {
                        Some(v) => v,
                        None => continue,
                    },
                };
                let _ = writeln!(out, "{name}{{model=\"{}\"}} {v}", label(&m.name));
            }
        }
        out
    }
}
