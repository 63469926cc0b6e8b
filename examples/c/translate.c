/*
 * dnrt-translate-c: translate an image file with a dnrt model bundle through the C API.
 *
 *     dnrt-translate-c MODEL IN.tif OUT.tif [--mode in|tin|kin|dn] [--backend NAME] [--overwrite]
 *
 * The output is the same file `trt-translate IN.tif -o OUT.tif -m MODEL` writes with the same
 * options. Progress goes to stderr; on failure the library's message is printed and the exit
 * status is 1 (2 for usage errors).
 *
 * Build: cc $(dnrt-config --cflags) translate.c $(dnrt-config --libs) -o dnrt-translate-c
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnrt.h"

static const char* const USAGE =
    "usage: dnrt-translate-c MODEL IN OUT [options]\n"
    "  --mode in|tin|kin|dn           normalization (default dn)\n"
    "  --backend NAME                 auto (default), ort, ort-cuda, torch, torch-cuda, trt\n"
    "  --schedule streaming|two-pass  tile order (default streaming)\n"
    "  --tile N, --margin N           default: the bundle's\n"
    "  --margin-source image|tile     the margin is the neighbouring pixels (default) or mirrors the tile\n"
    "  --degenerate RULE              reference, relative-floor, zero, isolate, slide (default: dnrt's)\n"
    "  --batch N                      tiles per backend call (default: the backend's)\n"
    "  --threads N                    CPU threads for the model (default: all cores)\n"
    "  --kin-kernel K                 KIN window in tiles (odd, default 5)\n"
    "  --compression SPEC             zlib (default), none, lzw, zstd, jpeg, webp; NAME:LEVEL\n"
    "  --pyramid                      add reduced-resolution levels\n"
    "  --overwrite                    replace an existing OUT\n"
    "  --quiet                        no progress\n";

typedef struct progress_state {
    int quiet;
    int last_percent;
} progress_state;

/* Prints a line at 0%, every 10% and 100%; returning 0 lets the translation go on. */
static int on_progress(void* user, uint64_t done, uint64_t total) {
    progress_state* state = (progress_state*)user;
    if (state->quiet || total == 0) return 0;
    int percent = (int)(done * 100u / total);
    if (done == 0 || done == total || percent / 10 > state->last_percent / 10) {
        fprintf(stderr, "dnrt-translate-c: %3d%% (%llu of %llu tile runs)\n", percent, (unsigned long long)done,
                (unsigned long long)total);
        state->last_percent = percent;
    }
    return 0;
}

static int usage_error(const char* message, const char* value) {
    fprintf(stderr, "error: %s%s%s\n%s", message, value ? " " : "", value ? value : "", USAGE);
    return 2;
}

/* A non-negative decimal int, or -1. */
static int parse_count(const char* text) {
    char* end = NULL;
    long value = strtol(text, &end, 10);
    if (end == text || *end != '\0' || value < 0 || value > 1000000) return -1;
    return (int)value;
}

int main(int argc, char** argv) {
    dnrt_options options;
    dnrt_write_options write_options;
    if (dnrt_options_init(&options) != DNRT_OK || dnrt_write_options_init(&write_options) != DNRT_OK) {
        fprintf(stderr, "error: %s\n", dnrt_last_error());
        return 1;
    }
    progress_state state = {0, -1};
    const char* positional[3] = {NULL, NULL, NULL};
    int count = 0;

    for (int i = 1; i < argc; i++) {
        const char* arg = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(USAGE, stdout);
            return 0;
        } else if (strcmp(arg, "--overwrite") == 0) {
            write_options.overwrite = 1;
        } else if (strcmp(arg, "--pyramid") == 0) {
            write_options.pyramid = 1;
        } else if (strcmp(arg, "--quiet") == 0 || strcmp(arg, "-q") == 0) {
            state.quiet = 1;
        } else if (arg[0] == '-' && arg[1] == '-') {
            if (value == NULL) return usage_error("missing value after", arg);
            i++;
            if (strcmp(arg, "--mode") == 0) {
                if (strcmp(value, "in") == 0) options.mode = DNRT_MODE_IN;
                else if (strcmp(value, "tin") == 0) options.mode = DNRT_MODE_TIN;
                else if (strcmp(value, "kin") == 0) options.mode = DNRT_MODE_KIN;
                else if (strcmp(value, "dn") == 0) options.mode = DNRT_MODE_DN;
                else return usage_error("unknown mode", value);
            } else if (strcmp(arg, "--schedule") == 0) {
                if (strcmp(value, "streaming") == 0) options.schedule = DNRT_SCHEDULE_STREAMING;
                else if (strcmp(value, "two-pass") == 0) options.schedule = DNRT_SCHEDULE_TWO_PASS;
                else return usage_error("unknown schedule", value);
            } else if (strcmp(arg, "--margin-source") == 0) {
                if (strcmp(value, "tile") == 0) options.margin_source = DNRT_MARGIN_SOURCE_TILE;
                else if (strcmp(value, "image") == 0) options.margin_source = DNRT_MARGIN_SOURCE_IMAGE;
                else return usage_error("unknown margin source", value);
            } else if (strcmp(arg, "--degenerate") == 0) {
                if (strcmp(value, "reference") == 0) options.degenerate = DNRT_DEGENERATE_REFERENCE;
                else if (strcmp(value, "relative-floor") == 0) options.degenerate = DNRT_DEGENERATE_RELATIVE_FLOOR;
                else if (strcmp(value, "zero") == 0) options.degenerate = DNRT_DEGENERATE_ZERO;
                else if (strcmp(value, "isolate") == 0) options.degenerate = DNRT_DEGENERATE_ISOLATE;
                else if (strcmp(value, "slide") == 0) options.degenerate = DNRT_DEGENERATE_SLIDE;
                else return usage_error("unknown degenerate rule", value);
            } else if (strcmp(arg, "--backend") == 0) {
                options.backend = value; /* copied by dnrt_model_open */
            } else if (strcmp(arg, "--compression") == 0) {
                write_options.compression = value;
            } else {
                int number = parse_count(value);
                if (number < 0) return usage_error("expected a number after", arg);
                if (strcmp(arg, "--tile") == 0) options.tile = number;
                else if (strcmp(arg, "--margin") == 0) options.margin = number;
                else if (strcmp(arg, "--batch") == 0) options.batch = number;
                else if (strcmp(arg, "--threads") == 0) options.threads = number;
                else if (strcmp(arg, "--kin-kernel") == 0) options.kin_kernel = number;
                else return usage_error("unknown option", arg);
            }
        } else if (count < 3) {
            positional[count++] = arg;
        } else {
            return usage_error("unexpected argument", arg);
        }
    }
    if (count != 3) return usage_error("expected MODEL IN OUT", NULL);

    options.progress = on_progress;
    options.progress_user = &state;
    dnrt_model* model = NULL;
    dnrt_status status = dnrt_model_open(positional[0], &options, &model);
    if (status == DNRT_OK) {
        status = dnrt_translate_file(model, positional[1], positional[2], &write_options);
    }
    if (status != DNRT_OK) {
        /* Print before the next dnrt call: the message lives until then. */
        fprintf(stderr, "error: %s (%s)\n", dnrt_last_error(), dnrt_status_string(status));
    }
    dnrt_model_close(model); /* NULL when the open failed: does nothing */
    return status == DNRT_OK ? 0 : 1;
}
