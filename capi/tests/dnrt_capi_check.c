/*
 * dnrt-capi-check: the C side of tests/test_capi.py. Each subcommand drives the C API and
 * prints what happened; the Python test holds the expectations.
 *
 *   rgb MODEL IN.raw W H IN_STRIDE OUT.raw OUT_STRIDE
 *       translate the buffer in IN.raw (exactly (H-1)*IN_STRIDE + W*3 bytes) into a buffer of
 *       (H-1)*OUT_STRIDE + W*3 bytes first filled with 0xAB, written to OUT.raw
 *   errors MODEL DIR
 *       run the error paths; one line per case: NAME <TAB> STATUS <TAB> MESSAGE
 *   threads MODEL IN.raw W H
 *       one model shared by two threads and two models in two more threads, same image; prints
 *       "threads ok" when all four results are equal and every thread kept its own error message
 */
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dnrt.h"

static void report(const char* name, dnrt_status status) {
    printf("%s\t%s\t%s\n", name, dnrt_status_string(status), dnrt_last_error());
    fflush(stdout);
}

static unsigned char* read_file(const char* path, size_t expected) {
    FILE* file = fopen(path, "rb");
    if (file == NULL) return NULL;
    unsigned char* data = malloc(expected);
    size_t got = data != NULL ? fread(data, 1, expected, file) : 0;
    fclose(file);
    if (got != expected) {
        free(data);
        return NULL;
    }
    return data;
}

static int write_file(const char* path, const unsigned char* data, size_t size) {
    FILE* file = fopen(path, "wb");
    if (file == NULL) return -1;
    size_t put = fwrite(data, 1, size, file);
    return fclose(file) == 0 && put == size ? 0 : -1;
}

static size_t span(int width, int height, size_t stride) { return (size_t)(height - 1) * stride + (size_t)width * 3u; }

static dnrt_status open_ort(const char* path, dnrt_model** model) {
    dnrt_options options;
    dnrt_options_init(&options);
    options.backend = "ort";
    return dnrt_model_open(path, &options, model);
}

/* ------------------------------------------------------------------------------------------ rgb */

static int run_rgb(char** argv) {
    const int width = atoi(argv[4]), height = atoi(argv[5]);
    const size_t in_stride = (size_t)atol(argv[6]), out_stride = (size_t)atol(argv[8]);
    const size_t in_bytes = span(width, height, in_stride), out_bytes = span(width, height, out_stride);
    /* Exactly the spans, so that a read or write past them is caught (valgrind, ASan). */
    unsigned char* in = read_file(argv[3], in_bytes);
    unsigned char* out = malloc(out_bytes);
    if (in == NULL || out == NULL) {
        fprintf(stderr, "rgb: cannot read %s\n", argv[3]);
        return 2;
    }
    memset(out, 0xAB, out_bytes);
    dnrt_model* model = NULL;
    dnrt_status status = open_ort(argv[2], &model);
    if (status == DNRT_OK) status = dnrt_translate_rgb(model, in, width, height, in_stride, out, out_stride);
    report("rgb", status);
    dnrt_model_close(model);
    int rc = status == DNRT_OK && write_file(argv[7], out, out_bytes) == 0 ? 0 : 1;
    free(in);
    free(out);
    return rc;
}

/* ------------------------------------------------------------------------------------------ errors */

typedef struct cancel_state {
    uint64_t cancel_at; /* cancel once done >= cancel_at */
    uint64_t calls;
    uint64_t last_done;
    uint64_t total;
    int monotonic;
} cancel_state;

static int cancelling(void* user, uint64_t done, uint64_t total) {
    cancel_state* state = (cancel_state*)user;
    if (state->calls > 0 && done < state->last_done) state->monotonic = 0;
    state->calls++;
    state->last_done = done;
    state->total = total;
    return done >= state->cancel_at ? 1 : 0;
}

typedef struct reentry_state {
    dnrt_model* model;
    dnrt_status inner;
    char message[512];
} reentry_state;

static int reentering(void* user, uint64_t done, uint64_t total) {
    (void)total;
    reentry_state* state = (reentry_state*)user;
    if (done == 0) {
        uint8_t pixel[3] = {1, 2, 3}, result[3];
        state->inner = dnrt_translate_rgb(state->model, pixel, 1, 1, 3, result, 3);
        snprintf(state->message, sizeof state->message, "%s", dnrt_last_error());
    }
    return 0;
}

static void path_in(char* buffer, size_t size, const char* dir, const char* name) {
    snprintf(buffer, size, "%s/%s", dir, name);
}

static int exists(const char* path) {
    struct stat info;
    return stat(path, &info) == 0;
}

static int run_errors(char** argv) {
    const char* bundle = argv[2];
    const char* dir = argv[3];
    char missing[4096], input[4096], gray[4096], garbage[4096], out[4096], existing[4096], nofolder[4096];
    char badsuffix[4096];
    path_in(missing, sizeof missing, dir, "missing.dnrt");
    path_in(input, sizeof input, dir, "in.tif");
    path_in(gray, sizeof gray, dir, "gray.tif");
    path_in(garbage, sizeof garbage, dir, "garbage.tif");
    path_in(out, sizeof out, dir, "out.tif");
    path_in(existing, sizeof existing, dir, "existing.tif");
    path_in(nofolder, sizeof nofolder, dir, "no/such/folder/out.tif");
    path_in(badsuffix, sizeof badsuffix, dir, "out.xyz");

    printf("version\t%s\t%u\n", dnrt_version(), (unsigned)dnrt_version_number());
    printf("header_version\t%s\t%u\n", DNRT_VERSION_STRING, (unsigned)DNRT_VERSION_NUMBER);
    printf("status_unknown\t%s\t\n", dnrt_status_string((dnrt_status)999));

    dnrt_model* model = (dnrt_model*)&model; /* must be reset to NULL on failure */
    dnrt_options options;
    dnrt_write_options write_options;

    report("init_null", dnrt_options_init(NULL));
    report("init_short", dnrt_options_init_sized(&options, 8));
    report("write_init_null", dnrt_write_options_init(NULL));
    report("open_null_out", dnrt_model_open(bundle, NULL, NULL));
    report("open_null_path", dnrt_model_open(NULL, NULL, &model));
    printf("open_null_path_model\t%s\t\n", model == NULL ? "NULL" : "SET");
    report("open_empty_path", dnrt_model_open("", NULL, &model));
    report("open_missing", dnrt_model_open(missing, NULL, &model));
    report("open_not_bundle", dnrt_model_open(dir, NULL, &model));

    dnrt_options_init(&options);
    options.size = 3;
    report("open_bad_size", dnrt_model_open(bundle, &options, &model));
    memset(&options, 0, sizeof options); /* never initialized: size 0 */
    report("open_uninitialized", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.mode = 0;
    report("open_bad_mode", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.margin_source = 3;
    report("open_bad_margin_source", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.degenerate = 9;
    report("open_bad_degenerate", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.degenerate_ratio = 1.5;
    report("open_bad_degenerate_ratio", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.kin_kernel = 4;
    report("open_even_kernel", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.backend = "nope";
    report("open_bad_backend", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.backend = "ort";
    options.precision = "fp8";
    report("open_bad_precision", dnrt_model_open(bundle, &options, &model));
    options.precision = "fp16";
    report("open_fp16_ort", dnrt_model_open(bundle, &options, &model));
    dnrt_options_init(&options);
    options.backend = "ort-cuda";
    report("open_ort_cuda", dnrt_model_open(bundle, &options, &model));
    dnrt_model_close(model);
    model = NULL;
    dnrt_options_init(&options);
    options.backend = "ort";
    options.tile = 30;
    report("open_bad_tile", dnrt_model_open(bundle, &options, &model));
    options.tile = 32;
    options.margin = 40;
    report("open_big_margin", dnrt_model_open(bundle, &options, &model));

    /* A caller whose header is newer: a longer struct, new fields zero (accepted) or set (refused). */
    {
        struct {
            dnrt_options options;
            int64_t newer_field;
        } newer;
        dnrt_options_init_sized(&newer.options, sizeof newer);
        newer.options.backend = "ort";
        report("open_newer_zero", dnrt_model_open(bundle, &newer.options, &model));
        dnrt_model_close(model);
        model = NULL;
        newer.newer_field = 7;
        report("open_newer_set", dnrt_model_open(bundle, &newer.options, &model));
    }
    {
        /* A caller built against the 0.1 header: its struct ends before `degenerate`. */
        dnrt_options older;
        dnrt_options_init(&older);
        older.backend = "ort";
        older.size = offsetof(dnrt_options, degenerate);
        older.degenerate = 77; /* beyond the caller's struct: must be ignored */
        report("open_size_0_1", dnrt_model_open(bundle, &older, &model));
        dnrt_model_close(model);
        model = NULL;
        /* ... and against the one before `force`. */
        dnrt_options_init(&older);
        older.backend = "ort";
        older.size = offsetof(dnrt_options, force);
        older.force = 77;
        report("open_size_0_2", dnrt_model_open(bundle, &older, &model));
        dnrt_model_close(model);
        model = NULL;
    }

    dnrt_status status = open_ort(bundle, &model);
    report("open_ok", status);
    if (status != DNRT_OK) return 1;
    report("after_success", DNRT_OK); /* dnrt_last_error() must be "" now */

    struct sigaction action;
    sigaction(SIGINT, NULL, &action);
    printf("sigint\t%s\t\n", action.sa_handler == SIG_DFL ? "default" : "changed");

    report("file_null_model", dnrt_translate_file(NULL, input, out, NULL));
    report("file_null_in", dnrt_translate_file(model, NULL, out, NULL));
    report("file_null_out", dnrt_translate_file(model, input, NULL, NULL));
    report("file_empty_in", dnrt_translate_file(model, "", out, NULL));
    report("file_missing_input", dnrt_translate_file(model, missing, out, NULL));
    report("file_unreadable", dnrt_translate_file(model, garbage, out, NULL));
    report("file_gray", dnrt_translate_file(model, gray, out, NULL));
    report("file_bad_suffix", dnrt_translate_file(model, input, badsuffix, NULL));
    report("file_no_folder", dnrt_translate_file(model, input, nofolder, NULL));
    report("file_exists", dnrt_translate_file(model, input, existing, NULL));
    report("file_same_as_input", dnrt_translate_file(model, input, input, NULL));
    dnrt_write_options_init(&write_options);
    write_options.compression = "brotli";
    report("file_bad_compression", dnrt_translate_file(model, input, out, &write_options));
    dnrt_write_options_init(&write_options);
    write_options.tile = 100;
    report("file_bad_writer_tile", dnrt_translate_file(model, input, out, &write_options));
    write_options.size = 0;
    report("file_bad_write_size", dnrt_translate_file(model, input, out, &write_options));
    printf("file_no_output\t%s\t\n", exists(out) ? "EXISTS" : "absent");

    uint8_t in_pixels[2 * 8 * 3] = {0}, out_pixels[2 * 8 * 3];
    report("rgb_null_model", dnrt_translate_rgb(NULL, in_pixels, 8, 2, 24, out_pixels, 24));
    report("rgb_null_in", dnrt_translate_rgb(model, NULL, 8, 2, 24, out_pixels, 24));
    report("rgb_null_out", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, NULL, 24));
    report("rgb_zero_width", dnrt_translate_rgb(model, in_pixels, 0, 2, 24, out_pixels, 24));
    report("rgb_zero_height", dnrt_translate_rgb(model, in_pixels, 8, 0, 24, out_pixels, 24));
    report("rgb_negative", dnrt_translate_rgb(model, in_pixels, -8, 2, 24, out_pixels, 24));
    report("rgb_small_in_stride", dnrt_translate_rgb(model, in_pixels, 8, 2, 23, out_pixels, 24));
    report("rgb_small_out_stride", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, out_pixels, 0));
    report("rgb_huge_stride", dnrt_translate_rgb(model, in_pixels, 8, 2, SIZE_MAX / 2, out_pixels, 24));
    report("rgb_in_place", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, in_pixels, 24));
    report("rgb_overlap", dnrt_translate_rgb(model, in_pixels, 4, 2, 24, in_pixels + 12, 24));
    report("rgb_1x1", dnrt_translate_rgb(model, in_pixels, 1, 1, 3, out_pixels, 3));
    report("rgb_8x2", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, out_pixels, 24));

    /* Cancellation: at the first report (before any work) and halfway. */
    cancel_state first = {0, 0, 0, 0, 1};
    report("set_progress_null", dnrt_model_set_progress(NULL, cancelling, &first));
    dnrt_model_set_progress(model, cancelling, &first);
    report("cancel_file_first", dnrt_translate_file(model, input, out, NULL));
    printf("cancel_file_first_output\t%s\t%llu\n", exists(out) ? "EXISTS" : "absent",
           (unsigned long long)first.calls);
    cancel_state half = {0, 0, 0, 0, 1};
    half.cancel_at = 1; /* learn the total on the first call, cancel once anything is done */
    dnrt_model_set_progress(model, cancelling, &half);
    report("cancel_file_half", dnrt_translate_file(model, input, out, NULL));
    printf("cancel_file_half_output\t%s\t%llu %llu %llu\n", exists(out) ? "EXISTS" : "absent",
           (unsigned long long)half.calls, (unsigned long long)half.last_done, (unsigned long long)half.total);
    cancel_state rgb = {0, 0, 0, 0, 1};
    dnrt_model_set_progress(model, cancelling, &rgb);
    report("cancel_rgb", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, out_pixels, 24));

    /* A full run reports 0 first and total last, never going back. */
    cancel_state never = {UINT64_MAX, 0, 0, 0, 1};
    dnrt_model_set_progress(model, cancelling, &never);
    report("progress_full", dnrt_translate_file(model, input, out, NULL));
    printf("progress_full_counts\t%llu\t%llu %llu %d %s\n", (unsigned long long)never.calls,
           (unsigned long long)never.last_done, (unsigned long long)never.total, never.monotonic,
           exists(out) ? "EXISTS" : "absent");

    /* The progress callback must not call back into the same model. */
    reentry_state reentry = {model, DNRT_OK, ""};
    dnrt_model_set_progress(model, reentering, &reentry);
    report("reentry_outer", dnrt_translate_rgb(model, in_pixels, 8, 2, 24, out_pixels, 24));
    printf("reentry_inner\t%s\t%s\n", dnrt_status_string(reentry.inner), reentry.message);
    dnrt_model_set_progress(model, NULL, NULL);

    report("close", dnrt_model_close(model));
    report("close_null", dnrt_model_close(NULL));
    return 0;
}

/* ------------------------------------------------------------------------------------------ threads */

typedef struct job {
    dnrt_model* model;
    const unsigned char* in;
    unsigned char* out;
    int width, height;
    int index;
    dnrt_status status;
    int own_error; /* 1 if this thread's dnrt_last_error() was its own message */
} job;

static void* run_job(void* argument) {
    job* work = (job*)argument;
    char expected[64]; /* this thread's own error message names its own height */
    snprintf(expected, sizeof expected, "the image is 0 x %d pixels", work->index + 1);
    work->own_error = 1;
    for (int round = 0; round < 2 && work->status == DNRT_OK; round++) {
        work->status = dnrt_translate_rgb(work->model, work->in, work->width, work->height, (size_t)work->width * 3,
                                          work->out, (size_t)work->width * 3);
        dnrt_translate_rgb(work->model, work->in, 0, work->index + 1, 3, work->out, 3);
        usleep(2000); /* let the other threads fail and succeed meanwhile */
        if (strstr(dnrt_last_error(), expected) == NULL) work->own_error = 0;
    }
    return NULL;
}

static int run_threads(char** argv) {
    const int width = atoi(argv[4]), height = atoi(argv[5]);
    const size_t bytes = (size_t)width * (size_t)height * 3u;
    unsigned char* in = read_file(argv[3], bytes);
    if (in == NULL) return 2;
    dnrt_model *shared = NULL, *own1 = NULL, *own2 = NULL;
    if (open_ort(argv[2], &shared) != DNRT_OK || open_ort(argv[2], &own1) != DNRT_OK ||
        open_ort(argv[2], &own2) != DNRT_OK) {
        fprintf(stderr, "threads: %s\n", dnrt_last_error());
        return 1;
    }
    job jobs[4];
    pthread_t threads[4];
    dnrt_model* models[4] = {shared, shared, own1, own2};
    for (int i = 0; i < 4; i++) {
        jobs[i] = (job){models[i], in, malloc(bytes), width, height, i, DNRT_OK, 0};
        pthread_create(&threads[i], NULL, run_job, &jobs[i]);
    }
    int ok = 1;
    for (int i = 0; i < 4; i++) pthread_join(threads[i], NULL);
    for (int i = 0; i < 4; i++) {
        if (jobs[i].status != DNRT_OK || !jobs[i].own_error) {
            printf("thread %d: %s own_error=%d\n", i, dnrt_status_string(jobs[i].status), jobs[i].own_error);
            ok = 0;
        }
        if (i > 0 && memcmp(jobs[i].out, jobs[0].out, bytes) != 0) {
            printf("thread %d: result differs from thread 0\n", i);
            ok = 0;
        }
    }
    for (int i = 0; i < 4; i++) free(jobs[i].out);
    dnrt_model_close(shared);
    dnrt_model_close(own1);
    dnrt_model_close(own2);
    free(in);
    if (ok) printf("threads ok\n");
    return ok ? 0 : 1;
}

/* ---------------------------------------------------------------------------------------- force */

static int cancel_at_once(void* user, uint64_t done, uint64_t total) {
    (void)user;
    (void)done;
    (void)total;
    return 1;
}

/* force BUNDLE INPUT OUT: the same file without and with options.force; the progress callback
 * cancels at its first call, so a run that got past the pre-flight ends at once. */
static int run_force(char** argv) {
    for (int force = 0; force <= 1; force++) {
        dnrt_options options;
        dnrt_options_init(&options);
        options.backend = "ort";
        options.force = force;
        options.progress = cancel_at_once;
        dnrt_model* model = NULL;
        dnrt_status status = dnrt_model_open(argv[2], &options, &model);
        if (status == DNRT_OK) status = dnrt_translate_file(model, argv[3], argv[4], NULL);
        report(force ? "force_on" : "force_off", status);
        dnrt_model_close(model);
    }
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 9 && strcmp(argv[1], "rgb") == 0) return run_rgb(argv);
    if (argc == 4 && strcmp(argv[1], "errors") == 0) return run_errors(argv);
    if (argc == 6 && strcmp(argv[1], "threads") == 0) return run_threads(argv);
    if (argc == 5 && strcmp(argv[1], "force") == 0) return run_force(argv);
    fprintf(stderr, "usage: dnrt-capi-check rgb|errors|threads|force ... (see the source)\n");
    return 2;
}
