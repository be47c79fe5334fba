/*
 * Tests of the C API: every error path returns its status and a message, outputs are written
 * only on success, free(NULL) is a no-op, a forced panic comes back as EDGEMM_ERR_PANIC, and
 * 8 threads invoking one runtime at once all get the right answers.
 *
 *   test_edgemm TINY_REPOSITORY CACHE_DIR
 *
 * TINY_REPOSITORY holds tiny.tar.gz (an 8x8 alexnet-small), big.tar.gz (a larger one) and
 * corrupt.tar.gz (not a gzip file); run-tests.sh makes them. Prints "N passed, M failed".
 *
 * The pipeline tests push NV12 frames from a C "camera" thread and check the callback's events
 * (user_data, ranges, order), the counters, and that edgemm_pipeline_free joins the workers.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgemm.h"

static int passed = 0;
static int failed = 0;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (cond) {                                                                   \
            passed++;                                                                 \
        } else {                                                                      \
            failed++;                                                                 \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__,    \
                    __LINE__, #cond, edgemm_last_error_message());                    \
        }                                                                             \
    } while (0)

#define CHECK_STATUS(call, expected, needle)                                          \
    do {                                                                              \
        edgemm_status s_ = (call);                                                    \
        CHECK(s_ == (expected));                                                      \
        CHECK(strstr(edgemm_last_error_message(), (needle)) != NULL);                 \
    } while (0)

static const char *repo;
static const char *cache_dir;

static edgemm_runtime *new_runtime(uint64_t memory_budget) {
    edgemm_runtime_options o = edgemm_runtime_default_options();
    o.repository = repo;
    o.cache_dir = cache_dir;
    o.memory_budget_bytes = memory_budget;
    o.memory_wait_ms = 1;
    edgemm_runtime *rt = NULL;
    edgemm_status s = edgemm_runtime_new(&o, &rt);
    CHECK(s == EDGEMM_OK && rt != NULL);
    return rt;
}

/* An 8x8x3 tensor whose values depend on `seed`. */
static void fill(float *data, int seed) {
    for (int i = 0; i < 8 * 8 * 3; i++) {
        data[i] = (float)((i * 7 + seed * 13) % 255) / 255.0f;
    }
}

static void test_version(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", EDGEMM_VERSION_MAJOR, EDGEMM_VERSION_MINOR,
             EDGEMM_VERSION_PATCH);
    CHECK(strcmp(edgemm_version(), expected) == 0);
}

static void test_null_arguments(void) {
    edgemm_runtime_options o = edgemm_runtime_default_options();
    edgemm_runtime *rt = (edgemm_runtime *)0x1; /* must stay untouched on failure */
    CHECK_STATUS(edgemm_runtime_new(NULL, &rt), EDGEMM_ERR_INVALID_ARGUMENT, "options is NULL");
    CHECK_STATUS(edgemm_runtime_new(&o, &rt), EDGEMM_ERR_INVALID_ARGUMENT,
                 "options->repository is NULL");
    CHECK(rt == (edgemm_runtime *)0x1);
    o.repository = repo;
    CHECK_STATUS(edgemm_runtime_new(&o, NULL), EDGEMM_ERR_INVALID_ARGUMENT, "out is NULL");

    edgemm_runtime *real = new_runtime(0);
    edgemm_result *result = (edgemm_result *)0x1;
    float data[8 * 8 * 3];
    size_t shape[3] = {8, 8, 3};
    fill(data, 0);
    CHECK_STATUS(edgemm_invoke_tensor(NULL, "tiny.tar.gz", data, shape, 3, &result),
                 EDGEMM_ERR_INVALID_ARGUMENT, "runtime is NULL");
    CHECK_STATUS(edgemm_invoke_tensor(real, NULL, data, shape, 3, &result),
                 EDGEMM_ERR_INVALID_ARGUMENT, "model is NULL");
    CHECK_STATUS(edgemm_invoke_tensor(real, "tiny.tar.gz", NULL, shape, 3, &result),
                 EDGEMM_ERR_INVALID_ARGUMENT, "data is NULL");
    CHECK_STATUS(edgemm_invoke_tensor(real, "tiny.tar.gz", data, shape, 3, NULL),
                 EDGEMM_ERR_INVALID_ARGUMENT, "out is NULL");
    CHECK_STATUS(edgemm_invoke_image(real, "tiny.tar.gz", NULL, 10, &result),
                 EDGEMM_ERR_INVALID_ARGUMENT, "bytes is NULL");
    CHECK(result == (edgemm_result *)0x1);
    CHECK_STATUS(edgemm_runtime_metrics(real, NULL), EDGEMM_ERR_INVALID_ARGUMENT, "out is NULL");
    CHECK_STATUS(edgemm_model_load(real, NULL), EDGEMM_ERR_INVALID_ARGUMENT, "model is NULL");
    CHECK_STATUS(edgemm_model_describe(real, "tiny.tar.gz", NULL), EDGEMM_ERR_INVALID_ARGUMENT,
                 "out is NULL");
    edgemm_runtime_free(real);
}

/* Issue #22, item 1: edgemm owns its cache directory. "" is refused rather than read as the
 * current directory, and a directory holding files edgemm did not create (here the repository
 * itself) is refused with nothing in it deleted. */
static void test_cache_dir_must_be_edgemms_own(void) {
    edgemm_runtime_options o = edgemm_runtime_default_options();
    o.repository = repo;
    edgemm_runtime *rt = NULL;
    o.cache_dir = "";
    CHECK_STATUS(edgemm_runtime_new(&o, &rt), EDGEMM_ERR_INVALID_ARGUMENT, "empty path");
    o.cache_dir = repo;
    CHECK_STATUS(edgemm_runtime_new(&o, &rt), EDGEMM_ERR_INVALID_ARGUMENT, "did not create");
    CHECK(rt == NULL);
    /* The repository is whole: its model still loads. */
    rt = new_runtime(0);
    CHECK(edgemm_model_load(rt, "tiny.tar.gz") == EDGEMM_OK);
    edgemm_runtime_free(rt);
}

/* Issue #22, item 4: every count in the runtime options is bounded, and the message names the
 * field and its range. */
static void test_runtime_option_bounds(void) {
    const char *fields[] = {"options->top_k", "options->max_image_bytes", "options->max_image_side",
                            "options->max_aspect_ratio"};
    for (int i = 0; i < 4; i++) {
        edgemm_runtime_options o = edgemm_runtime_default_options();
        o.repository = repo;
        o.cache_dir = cache_dir;
        uint32_t *field[] = {&o.top_k, &o.max_image_bytes, &o.max_image_side, &o.max_aspect_ratio};
        *field[i] = UINT32_MAX;
        edgemm_runtime *rt = NULL;
        CHECK_STATUS(edgemm_runtime_new(&o, &rt), EDGEMM_ERR_INVALID_ARGUMENT, fields[i]);
        CHECK(strstr(edgemm_last_error_message(), "outside its range") != NULL);
        CHECK(rt == NULL);
    }
}

static void test_free_null_is_a_no_op(void) {
    edgemm_runtime_free(NULL);
    edgemm_result_free(NULL);
    edgemm_string_free(NULL);
    edgemm_model_list_free(NULL);
    CHECK(1);
}

static void test_error_paths(void) {
    edgemm_runtime *rt = new_runtime(0);
    edgemm_result *result = NULL;
    float data[8 * 8 * 3];
    size_t shape[3] = {8, 8, 3};
    fill(data, 0);

    CHECK_STATUS(edgemm_invoke_tensor(rt, "nope.tar.gz", data, shape, 3, &result),
                 EDGEMM_ERR_NOT_FOUND, "not found");
    CHECK_STATUS(edgemm_invoke_tensor(rt, "../escape.tar.gz", data, shape, 3, &result),
                 EDGEMM_ERR_INVALID_ARGUMENT, "..");
    CHECK_STATUS(edgemm_invoke_tensor(rt, "corrupt.tar.gz", data, shape, 3, &result),
                 EDGEMM_ERR_BAD_ARTIFACT, "gzip");

    const unsigned char gif[] = "GIF89a\x01\x00\x01\x00\x00\x00\x00;";
    CHECK_STATUS(edgemm_invoke_image(rt, "tiny.tar.gz", gif, sizeof gif, &result),
                 EDGEMM_ERR_BAD_INPUT, "only PNG and JPEG");
    const unsigned char garbage[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 1, 2, 3};
    CHECK_STATUS(edgemm_invoke_image(rt, "tiny.tar.gz", garbage, sizeof garbage, &result),
                 EDGEMM_ERR_BAD_INPUT, "decoded");
    size_t bad_shape[3] = {8, 8, 1};
    CHECK_STATUS(edgemm_invoke_tensor(rt, "tiny.tar.gz", data, bad_shape, 3, &result),
                 EDGEMM_ERR_BAD_INPUT, "shape");
    const char *both = "{\"instances\": [], \"inputs\": []}";
    char *json = NULL;
    CHECK_STATUS(edgemm_invoke_json(rt, "tiny.tar.gz", both, strlen(both), &json),
                 EDGEMM_ERR_BAD_INPUT, "both");
    CHECK(json == NULL);
    CHECK(result == NULL);
    edgemm_runtime_free(rt);

    /* Too big for the budget: 507's equivalent, and the small model keeps serving. */
    rt = new_runtime(65536); /* tiny holds ~12 KB (packed weights + activations), big ~200 KB */
    CHECK_STATUS(edgemm_model_load(rt, "big.tar.gz"), EDGEMM_ERR_INSUFFICIENT_MEMORY,
                 "larger than the whole budget");
    CHECK(edgemm_invoke_tensor(rt, "tiny.tar.gz", data, shape, 3, &result) == EDGEMM_OK);
    edgemm_result_free(result);
    /* Issue #22, item 9: like errno, the message stays until the next failing call; successful
     * calls (an invoke, a free of NULL) do not clear it. */
    edgemm_runtime_free(NULL);
    CHECK(strstr(edgemm_last_error_message(), "larger than the whole budget") != NULL);
    CHECK_STATUS(edgemm_model_load(rt, "missing.tar.gz"), EDGEMM_ERR_NOT_FOUND, "not found");
    edgemm_runtime_free(rt);
}

static void test_results_and_cache_verbs(void) {
    edgemm_runtime *rt = new_runtime(0);
    float data[8 * 8 * 3];
    size_t shape[4] = {2, 8, 8, 3};
    float batch[2 * 8 * 8 * 3];
    fill(batch, 1);
    fill(batch + 8 * 8 * 3, 2);
    fill(data, 1);
    edgemm_result *result = NULL;
    CHECK(edgemm_invoke_tensor(rt, "tiny.tar.gz", batch, shape, 4, &result) == EDGEMM_OK);
    CHECK(result->batch_size == 2);
    for (uint32_t b = 0; b < result->batch_size; b++) {
        const edgemm_prediction *p = &result->predictions[b];
        float sum = 0;
        for (uint32_t c = 0; c < p->num_classes; c++) {
            sum += p->probabilities[c];
        }
        CHECK(p->num_classes == 10 && sum > 0.999f && sum < 1.001f);
        CHECK(p->top_k_len == 5 && p->top_k[0].probability >= p->top_k[1].probability);
        CHECK(p->probabilities[p->top_k[0].index] == p->top_k[0].probability);
        CHECK(strlen(p->top_k[0].label) > 0);
    }
    edgemm_result_free(result);

    char *json = NULL;
    char body[8192];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"instances\": [[");
    for (int y = 0; y < 8; y++) {
        n += (size_t)snprintf(body + n, sizeof body - n, "%s[", y ? "," : "");
        for (int x = 0; x < 8; x++) {
            const float *px = &data[(y * 8 + x) * 3];
            n += (size_t)snprintf(body + n, sizeof body - n, "%s[%f,%f,%f]", x ? "," : "",
                                  (double)px[0], (double)px[1], (double)px[2]);
        }
        n += (size_t)snprintf(body + n, sizeof body - n, "]");
    }
    n += (size_t)snprintf(body + n, sizeof body - n, "]]}");
    CHECK(edgemm_invoke_json(rt, "tiny.tar.gz", body, n, &json) == EDGEMM_OK);
    CHECK(json != NULL && strncmp(json, "{\"predictions\":[[", 17) == 0);
    edgemm_string_free(json);

    edgemm_model_info info;
    CHECK(edgemm_model_pin(rt, "tiny.tar.gz") == EDGEMM_OK);
    CHECK(edgemm_model_describe(rt, "tiny.tar.gz", &info) == EDGEMM_OK);
    CHECK(info.state == EDGEMM_MODEL_LOADED && info.pinned == 1 && info.memory_bytes > 0);
    CHECK(info.invocations == 2 && info.loads == 1);
    CHECK(edgemm_model_unpin(rt, "tiny.tar.gz") == EDGEMM_OK);
    CHECK(edgemm_model_unload(rt, "tiny.tar.gz") == EDGEMM_OK);
    CHECK(edgemm_model_describe(rt, "tiny.tar.gz", &info) == EDGEMM_OK);
    CHECK(info.state == EDGEMM_MODEL_UNLOADED && info.memory_bytes == 0 && info.disk_bytes > 0);
    CHECK(edgemm_model_load(rt, "tiny.tar.gz") == EDGEMM_OK);

    edgemm_model_list *list = NULL;
    CHECK(edgemm_model_list_new(rt, &list) == EDGEMM_OK);
    CHECK(list->len == 3);
    CHECK(strcmp(list->names[0], "big.tar.gz") == 0 && strcmp(list->names[2], "tiny.tar.gz") == 0);
    edgemm_model_list_free(list);

    edgemm_metrics m;
    CHECK(edgemm_runtime_metrics(rt, &m) == EDGEMM_OK);
    CHECK(m.requests == 2 && m.loaded_model_count == 1 && m.model_loading_time.count == 2);
    CHECK(m.memory_used_bytes > 0 && m.memory_used_bytes <= m.memory_budget_bytes);
    edgemm_runtime_free(rt);
}

static void test_panic_boundary(void) {
    CHECK_STATUS(edgemm_debug_force_panic(), EDGEMM_ERR_PANIC, "panic");
    /* The process keeps running and the library keeps working. */
    edgemm_runtime *rt = new_runtime(0);
    CHECK(edgemm_model_load(rt, "tiny.tar.gz") == EDGEMM_OK);
    edgemm_runtime_free(rt);
}

#define THREADS 8
#define ROUNDS 25

struct job {
    edgemm_runtime *rt;
    int seed;
    float expected[10];
    int wrong;
};

static void *worker(void *arg) {
    struct job *job = arg;
    float data[8 * 8 * 3];
    size_t shape[3] = {8, 8, 3};
    fill(data, job->seed);
    for (int r = 0; r < ROUNDS; r++) {
        edgemm_result *result = NULL;
        if (edgemm_invoke_tensor(job->rt, "tiny.tar.gz", data, shape, 3, &result) != EDGEMM_OK) {
            job->wrong++;
            continue;
        }
        if (memcmp(result->predictions[0].probabilities, job->expected, sizeof job->expected)) {
            job->wrong++;
        }
        edgemm_result_free(result);
    }
    return NULL;
}

static void test_concurrent_invokes(void) {
    edgemm_runtime *rt = new_runtime(0);
    struct job jobs[THREADS];
    for (int t = 0; t < THREADS; t++) {
        float data[8 * 8 * 3];
        size_t shape[3] = {8, 8, 3};
        edgemm_result *result = NULL;
        jobs[t].rt = rt;
        jobs[t].seed = t;
        jobs[t].wrong = 0;
        fill(data, t);
        CHECK(edgemm_invoke_tensor(rt, "tiny.tar.gz", data, shape, 3, &result) == EDGEMM_OK);
        memcpy(jobs[t].expected, result->predictions[0].probabilities, sizeof jobs[t].expected);
        edgemm_result_free(result);
    }
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        CHECK(pthread_create(&threads[t], NULL, worker, &jobs[t]) == 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        CHECK(jobs[t].wrong == 0);
    }
    edgemm_runtime_free(rt);
}

/* ---- Pipeline ---- */

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* What the callback saw; user_data points here. */
struct sink {
    pthread_mutex_t lock;
    void *self;
    int bad_user_data;
    int frames, changes, errors;
    int bad_events; /* events whose fields break their documented ranges or order */
    uint64_t last_sequence;
    int last_digit;
};

static void sink_init(struct sink *s) {
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
    s->self = s;
    s->last_digit = -2;
}

static void on_event(const edgemm_pipeline_event *e, void *user_data) {
    struct sink *s = user_data;
    pthread_mutex_lock(&s->lock);
    if (s->self != user_data) {
        s->bad_user_data++;
    }
    if (e->kind == EDGEMM_PIPELINE_EVENT_FRAME) {
        float sum = 0.0f;
        for (uint32_t i = 0; i < e->num_classes; i++) {
            sum += e->probabilities[i];
        }
        if (e->num_classes != 10 || sum < 0.99f || sum > 1.01f || e->best_class < 0 ||
            e->best_class > 9 || e->message != NULL ||
            (s->frames > 0 && e->sequence <= s->last_sequence)) {
            s->bad_events++;
        }
        s->frames++;
        s->last_sequence = e->sequence;
    } else if (e->kind == EDGEMM_PIPELINE_EVENT_SIGN_CHANGED) {
        if (e->digit < -1 || e->digit > 9 || e->probabilities != NULL || e->confidence < 0.0f ||
            e->confidence > 1.0f) {
            s->bad_events++;
        }
        s->changes++;
        s->last_digit = e->digit;
    } else {
        s->errors++;
    }
    pthread_mutex_unlock(&s->lock);
}

#define CAM_W 63 /* odd, so chroma is ceil(63 / 2) = 32 pairs wide */
#define CAM_H 47
#define CAM_STRIDE 64
#define CAM_FRAMES 200

struct camera {
    edgemm_pipeline *pipeline;
    int failures;
};

/* A camera thread: NV12 frames with padded rows, its buffers reused for every frame. */
static void *camera(void *arg) {
    struct camera *c = arg;
    static uint8_t y[CAM_STRIDE * CAM_H];
    static uint8_t uv[CAM_STRIDE * ((CAM_H + 1) / 2)];
    for (int i = 0; i < CAM_FRAMES; i++) {
        memset(y, (i * 5) & 0xff, sizeof y);
        memset(uv, 128 + (i % 7), sizeof uv);
        edgemm_frame f;
        memset(&f, 0, sizeof f);
        f.planes[0] = y;
        f.planes[1] = uv;
        f.strides[0] = CAM_STRIDE;
        f.strides[1] = CAM_STRIDE;
        f.plane_bytes[0] = sizeof y;
        f.plane_bytes[1] = sizeof uv;
        f.width = CAM_W;
        f.height = CAM_H;
        f.format = EDGEMM_PIXEL_NV12;
        f.timestamp_us = (uint64_t)i * 33333u;
        if (edgemm_pipeline_push_frame(c->pipeline, &f) != EDGEMM_OK) {
            c->failures++;
        }
        if (i % 20 == 0) {
            sleep_ms(1);
        }
    }
    return NULL;
}

static void test_pipeline_arguments(void) {
    edgemm_runtime *rt = new_runtime(0);
    struct sink s;
    sink_init(&s);
    edgemm_pipeline_options o = edgemm_pipeline_default_options();
    CHECK(o.workers == 1 && o.hold_frames == 3 && o.frame_results == 1 && o.roi_width == 0);
    CHECK(o.yuv_range == EDGEMM_YUV_LIMITED && o.exit_threshold < o.enter_threshold);
    edgemm_pipeline *p = (edgemm_pipeline *)0x1; /* must stay untouched on failure */
    CHECK_STATUS(edgemm_pipeline_new(NULL, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "runtime is NULL");
    CHECK_STATUS(edgemm_pipeline_new(rt, NULL, &o, on_event, &s, &p), EDGEMM_ERR_INVALID_ARGUMENT,
                 "model is NULL");
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", NULL, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "options is NULL");
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, NULL, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "callback is NULL");
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, NULL),
                 EDGEMM_ERR_INVALID_ARGUMENT, "out is NULL");
    CHECK_STATUS(edgemm_pipeline_new(rt, "missing.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_NOT_FOUND, "not found");
    o.hold_frames = 0;
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "hold_frames");
    /* Issue #22, item 4: counts are bounded before anything is sized by them (UINT32_MAX
     * workers used to abort the process allocating a channel). */
    o = edgemm_pipeline_default_options();
    o.workers = UINT32_MAX;
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "options->workers is 4294967295, outside its range 1..=64");
    o.workers = 0;
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "options->workers is 0");
    o = edgemm_pipeline_default_options();
    o.hold_frames = UINT32_MAX;
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "options->hold_frames is 4294967295");
    o = edgemm_pipeline_default_options();
    o.yuv_range = (edgemm_yuv_range)7;
    CHECK_STATUS(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p),
                 EDGEMM_ERR_INVALID_ARGUMENT, "yuv_range");
    CHECK(p == (edgemm_pipeline *)0x1);

    o = edgemm_pipeline_default_options();
    p = NULL;
    CHECK(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p) == EDGEMM_OK && p);
    edgemm_frame f;
    memset(&f, 0, sizeof f);
    CHECK_STATUS(edgemm_pipeline_push_frame(NULL, &f), EDGEMM_ERR_INVALID_ARGUMENT,
                 "pipeline is NULL");
    CHECK_STATUS(edgemm_pipeline_push_frame(p, NULL), EDGEMM_ERR_INVALID_ARGUMENT,
                 "frame is NULL");
    f.width = 4;
    f.height = 2;
    f.format = EDGEMM_PIXEL_I420;
    CHECK_STATUS(edgemm_pipeline_push_frame(p, &f), EDGEMM_ERR_INVALID_ARGUMENT,
                 "frame->planes[0] is NULL");
    uint8_t buf[16] = {0};
    f.planes[0] = f.planes[1] = f.planes[2] = buf;
    f.strides[0] = 2;
    CHECK_STATUS(edgemm_pipeline_push_frame(p, &f), EDGEMM_ERR_BAD_INPUT, "stride");
    f.strides[0] = 0;
    f.plane_bytes[0] = 4; /* a 4x2 Y plane needs 8 */
    CHECK_STATUS(edgemm_pipeline_push_frame(p, &f), EDGEMM_ERR_BAD_INPUT, "holds 4 bytes");
    f.format = (edgemm_pixel_format)99;
    CHECK_STATUS(edgemm_pipeline_push_frame(p, &f), EDGEMM_ERR_BAD_INPUT,
                 "not an edgemm_pixel_format");
    f.width = 0;
    f.format = EDGEMM_PIXEL_GRAY8;
    CHECK_STATUS(edgemm_pipeline_push_frame(p, &f), EDGEMM_ERR_BAD_INPUT, "0x2");

    edgemm_pipeline_metrics st;
    CHECK_STATUS(edgemm_pipeline_stats(NULL, &st), EDGEMM_ERR_INVALID_ARGUMENT,
                 "pipeline is NULL");
    CHECK_STATUS(edgemm_pipeline_stats(p, NULL), EDGEMM_ERR_INVALID_ARGUMENT, "out is NULL");
    CHECK(edgemm_pipeline_stats(p, &st) == EDGEMM_OK && st.frames_pushed == 0);
    edgemm_pipeline_free(p);
    edgemm_pipeline_free(NULL);
    edgemm_runtime_free(rt);
    CHECK(s.frames == 0 && s.changes == 0 && s.errors == 0);
    pthread_mutex_destroy(&s.lock);
}

static void test_pipeline_events(void) {
    edgemm_runtime *rt = new_runtime(0);
    struct sink s;
    sink_init(&s);
    edgemm_pipeline_options o = edgemm_pipeline_default_options();
    /* The tiny model has random weights and is rarely confident: with both thresholds at 0
     * its best class is the digit, so digit changes are certain to be reported. */
    o.enter_threshold = 0.0f;
    o.exit_threshold = 0.0f;
    o.hold_frames = 1;
    edgemm_pipeline *p = NULL;
    CHECK(edgemm_pipeline_new(rt, "tiny.tar.gz", &o, on_event, &s, &p) == EDGEMM_OK && p);
    /* The pipeline holds the runtime: freeing it first is allowed. */
    edgemm_runtime_free(rt);

    struct camera cam = {p, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, camera, &cam) == 0);
    pthread_join(t, NULL);
    CHECK(cam.failures == 0);

    /* The last frame pushed is never dropped: wait until it is processed. */
    edgemm_pipeline_metrics st;
    memset(&st, 0, sizeof st);
    for (int i = 0; i < 3000; i++) {
        if (edgemm_pipeline_stats(p, &st) != EDGEMM_OK ||
            st.frames_processed + st.frames_dropped == CAM_FRAMES) {
            break;
        }
        sleep_ms(10);
    }
    CHECK(st.frames_pushed == CAM_FRAMES);
    CHECK(st.frames_processed + st.frames_dropped == CAM_FRAMES);
    CHECK(st.frames_processed >= 1 && st.frames_failed == 0);
    CHECK(st.infer.count == st.frames_processed && st.convert.count == st.frames_processed);
    CHECK(st.infer.max_us >= st.infer.p95_us && st.infer.p95_us >= st.infer.p50_us);

    edgemm_pipeline_free(p); /* joins the workers */
    pthread_mutex_lock(&s.lock);
    int frames = s.frames;
    CHECK(frames == (int)st.frames_processed);
    CHECK(s.last_sequence == CAM_FRAMES - 1);
    CHECK(s.changes >= 1 && s.last_digit >= 0 && s.last_digit <= 9);
    CHECK(s.bad_user_data == 0 && s.bad_events == 0 && s.errors == 0);
    pthread_mutex_unlock(&s.lock);
    sleep_ms(50);
    pthread_mutex_lock(&s.lock);
    CHECK(s.frames == frames); /* no callback after free returned */
    pthread_mutex_unlock(&s.lock);
    pthread_mutex_destroy(&s.lock);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s TINY_REPOSITORY CACHE_DIR\n", argv[0]);
        return 2;
    }
    repo = argv[1];
    cache_dir = argv[2];
    test_version();
    test_null_arguments();
    test_free_null_is_a_no_op();
    test_cache_dir_must_be_edgemms_own();
    test_runtime_option_bounds();
    test_error_paths();
    test_results_and_cache_verbs();
    test_panic_boundary();
    test_concurrent_invokes();
    test_pipeline_arguments();
    test_pipeline_events();
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
