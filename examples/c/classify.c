/*
 * A firmware-style edgemm client: open the model repository, classify image files with a
 * model, print the top-3 and the cache metrics.
 *
 *   classify REPOSITORY MODEL IMAGE...
 *
 * Exit status: 0 when every image was classified, 1 otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgemm.h"

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
            buf = malloc(size > 0 ? (size_t)size : 1);
            if (buf != NULL && fread(buf, 1, (size_t)size, f) != (size_t)size) {
                free(buf);
                buf = NULL;
            }
            *len = (size_t)size;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s REPOSITORY MODEL IMAGE...\n", argv[0]);
        return 2;
    }
    if (strcmp(edgemm_version(), "") == 0) {
        return 2;
    }
    printf("edgemm %s (header %d.%d.%d)\n", edgemm_version(), EDGEMM_VERSION_MAJOR,
           EDGEMM_VERSION_MINOR, EDGEMM_VERSION_PATCH);

    edgemm_runtime_options options = edgemm_runtime_default_options();
    options.repository = argv[1];
    options.top_k = 3;
    edgemm_runtime *runtime = NULL;
    if (edgemm_runtime_new(&options, &runtime) != EDGEMM_OK) {
        fprintf(stderr, "edgemm_runtime_new: %s\n", edgemm_last_error_message());
        return 1;
    }

    int failures = 0;
    for (int i = 3; i < argc; i++) {
        size_t len = 0;
        unsigned char *bytes = read_file(argv[i], &len);
        if (bytes == NULL) {
            fprintf(stderr, "%s: cannot read\n", argv[i]);
            failures++;
            continue;
        }
        edgemm_result *result = NULL;
        edgemm_status status = edgemm_invoke_image(runtime, argv[2], bytes, len, &result);
        free(bytes);
        if (status != EDGEMM_OK) {
            fprintf(stderr, "%s: error %d: %s\n", argv[i], (int)status,
                    edgemm_last_error_message());
            failures++;
            continue;
        }
        const edgemm_prediction *p = &result->predictions[0];
        printf("%s:", argv[i]);
        for (uint32_t k = 0; k < p->top_k_len; k++) {
            printf(" %s%s %.3f", k ? ", " : "", p->top_k[k].label, p->top_k[k].probability);
        }
        printf("  [%.1f ms]\n", (double)(result->preprocess_us + result->inference_us) / 1e3);
        edgemm_result_free(result);
    }

    edgemm_metrics m;
    if (edgemm_runtime_metrics(runtime, &m) == EDGEMM_OK) {
        printf("metrics: requests %llu, ModelCacheHit %llu, LoadedModelCount %llu, "
               "ModelLoadingTime %llu us, ModelDownloadingTime %llu us, memory %llu/%llu bytes\n",
               (unsigned long long)m.requests, (unsigned long long)m.model_cache_hit,
               (unsigned long long)m.loaded_model_count,
               (unsigned long long)m.model_loading_time.sum_us,
               (unsigned long long)m.model_downloading_time.sum_us,
               (unsigned long long)m.memory_used_bytes, (unsigned long long)m.memory_budget_bytes);
    }
    edgemm_runtime_free(runtime);
    return failures == 0 ? 0 : 1;
}
