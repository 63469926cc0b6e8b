/*
 * dnrt.h - C API of dnrt, the Dense Normalization runtime.
 *
 * Translates images (gigapixel TIFFs or caller-owned pixel buffers) tile by tile through a
 * model bundle written by `export-model`, with the normalization modes of `trt-translate`.
 *
 *     dnrt_options options;
 *     dnrt_options_init(&options);
 *     options.backend = "ort";
 *     dnrt_model* model = NULL;
 *     if (dnrt_model_open("model.dnrt", &options, &model) != DNRT_OK) {
 *         fprintf(stderr, "error: %s\n", dnrt_last_error());
 *         return 1;
 *     }
 *     dnrt_status status = dnrt_translate_file(model, "slide.tif", "out.tif", NULL);
 *     dnrt_model_close(model);
 *
 * Conventions
 *
 * - Every function that can fail returns a dnrt_status; DNRT_OK (0) is success. After a
 *   failure, dnrt_last_error() on the same thread gives a one-line message. Nothing is ever
 *   thrown, nothing aborts the process, and no signal handler is installed.
 * - Out parameters are written only on success, except dnrt_model_open's `*model`, which is set
 *   to NULL on failure.
 * - Ownership: the library never takes ownership of, or keeps, a caller's pointer after the call
 *   returns (strings in the option structs are copied), except the progress callback's `user`
 *   pointer, kept until the model is closed or the callback is replaced. Everything the library
 *   allocates for a model is freed by dnrt_model_close(). Strings returned by the library are
 *   owned by it: never free them.
 * - Option structs begin with their `size`: fill them with dnrt_options_init() /
 *   dnrt_write_options_init() (which record the size your header knows), then change fields.
 *   Fields added in later versions are appended, and their zero value means "as before", so a
 *   program built against an older header keeps working with a newer library, and a newer
 *   program whose new fields are all left at zero keeps working with an older library (a
 *   non-zero field the library does not know is refused with DNRT_ERR_UNSUPPORTED).
 * - Strings are NUL-terminated. Paths are passed to the file system as given (bytes);
 *   backend, precision and compression names are ASCII.
 *
 * Threads
 *
 * - Any number of models may be open in one process and used from different threads at once.
 * - One model may be shared by several threads: calls on it are serialized by a lock inside the
 *   model (a second call waits until the first one returns). dnrt_model_close() must only be
 *   called once no other call on that model is running or can start.
 * - dnrt_last_error() is per thread.
 * - The progress callback runs on the thread that called the translate function. It must not
 *   call dnrt functions on the same model (such calls fail with DNRT_ERR_INVALID_ARGUMENT).
 * - The library starts worker threads of its own (reading, encoding, inference); they run only
 *   while a call is in progress or are idle pools. Do not use a model in a child after fork().
 *
 * The implementation behind this header currently embeds the Python runtime of dnrt (see
 * capi/README.md for what a host needs installed); nothing of it appears in this header.
 */
#ifndef DNRT_H
#define DNRT_H

#include <stddef.h>
#include <stdint.h>

#define DNRT_VERSION_MAJOR 0
#define DNRT_VERSION_MINOR 1
#define DNRT_VERSION_PATCH 0
#define DNRT_VERSION_STRING "0.1.0"
/** MAJOR * 10000 + MINOR * 100 + PATCH: compare with dnrt_version_number() at run time. */
#define DNRT_VERSION_NUMBER (DNRT_VERSION_MAJOR * 10000 + DNRT_VERSION_MINOR * 100 + DNRT_VERSION_PATCH)

#if defined(_WIN32)
#  if defined(DNRT_BUILDING_LIBRARY)
#    define DNRT_API __declspec(dllexport)
#  else
#    define DNRT_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define DNRT_API __attribute__((visibility("default")))
#else
#  define DNRT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** Result of every fallible call. The numeric values are part of the ABI and never change. */
typedef enum dnrt_status {
    DNRT_OK = 0,
    /** A NULL pointer, a size, stride or option value out of range, overlapping buffers, an option
     *  struct without its size, an unknown output suffix or compression name, or a call on a
     *  model from inside its own progress callback. */
    DNRT_ERR_INVALID_ARGUMENT = 1,
    /** The model bundle, the input image or the output's folder does not exist. */
    DNRT_ERR_NOT_FOUND = 2,
    /** A file could not be read, decoded or written, or the output exists and overwrite is 0. */
    DNRT_ERR_IO = 3,
    /** The path is not a valid dnrt model bundle, or its graphs do not load on the backend. */
    DNRT_ERR_MODEL = 4,
    /** Valid but not possible here: a backend, precision or device that is not installed or not
     *  visible, an image whose channel count the model does not take, a model that is not
     *  RGB -> RGB for dnrt_translate_rgb, or a non-zero option field from a newer dnrt. */
    DNRT_ERR_UNSUPPORTED = 5,
    /** The progress callback returned non-zero; no output file was written. */
    DNRT_ERR_CANCELLED = 6,
    /** The runtime could not start (see capi/README.md), or the backend failed while running. */
    DNRT_ERR_RUNTIME = 7,
    DNRT_ERR_OUT_OF_MEMORY = 8,
    /** A bug in dnrt; the message says what happened. Please report it. */
    DNRT_ERR_INTERNAL = 9
} dnrt_status;

/** Normalization modes (see the README): patch-wise, thumbnail, kernelized, dense. */
typedef enum dnrt_mode {
    DNRT_MODE_IN = 1,
    DNRT_MODE_TIN = 2,
    DNRT_MODE_KIN = 3,
    DNRT_MODE_DN = 4
} dnrt_mode;

/** Tile orders; both give bit-identical output. */
typedef enum dnrt_schedule {
    DNRT_SCHEDULE_STREAMING = 1,
    DNRT_SCHEDULE_TWO_PASS = 2
} dnrt_schedule;

/** Where a tile's margin comes from. */
typedef enum dnrt_margin_source {
    /** The margin mirrors the tile itself (the DN reference's geometry, for exact parity). */
    DNRT_MARGIN_SOURCE_TILE = 1,
    /** The margin is the neighbouring pixels of the image (true context, no seams; the default). */
    DNRT_MARGIN_SOURCE_IMAGE = 2
} dnrt_margin_source;

/** DN's rule for near-degenerate statistics (flat glass, saturation); see docs/semantics.md. */
typedef enum dnrt_degenerate_rule {
    /** dnrt's default rule (what trt-translate uses without --degenerate). */
    DNRT_DEGENERATE_DEFAULT = 0,
    /** The published arithmetic plus the std floor (compatibility). */
    DNRT_DEGENERATE_REFERENCE = 1,
    DNRT_DEGENERATE_RELATIVE_FLOOR = 2,
    DNRT_DEGENERATE_ZERO = 3,
    DNRT_DEGENERATE_ISOLATE = 4,
    DNRT_DEGENERATE_SLIDE = 5
} dnrt_degenerate_rule;

/** KIN's smoothing window shape. */
typedef enum dnrt_kin_kernel_type {
    DNRT_KIN_KERNEL_CONSTANT = 1,
    DNRT_KIN_KERNEL_GAUSSIAN = 2
} dnrt_kin_kernel_type;

/** For tri-state int fields (dnrt_options.overlap): let the library decide. */
#define DNRT_AUTO (-1)

/** Lower bound of every KIN/DN standard deviation by default: sqrt(1e-5). */
#define DNRT_STD_FLOOR_DEFAULT 0.0031622776601683794

/**
 * Progress of a translation: `done` of `total` work units (network runs over tiles; KIN and DN
 * run two per tile). Called on the calling thread, first with done = 0 before any work, then
 * as work completes (done increases), last with done == total on success. Return 0 to go on,
 * non-zero to cancel: the call then returns DNRT_ERR_CANCELLED and writes no output file.
 */
typedef int (*dnrt_progress_fn)(void* user, uint64_t done, uint64_t total);

/** An open model: a bundle loaded on a backend, with its translation settings. Opaque. */
typedef struct dnrt_model dnrt_model;

/** Settings of a model, fixed by dnrt_model_open. Fill with dnrt_options_init first. */
typedef struct dnrt_options {
    /** sizeof(dnrt_options) as the caller's header knows it; set by dnrt_options_init. */
    size_t size;
    /** "auto" (default; NULL means "auto"), "ort", "ort-cuda", "torch", "torch-cuda" or "trt". */
    const char* backend;
    /** "fp32", "fp16" (GPU backends) or "bf16" (torch, torch-cuda); NULL (default): fp32. */
    const char* precision;
    /** A dnrt_mode; default DNRT_MODE_DN. */
    int32_t mode;
    /** A dnrt_schedule; default DNRT_SCHEDULE_STREAMING. */
    int32_t schedule;
    /** Tile size in pixels; 0 (default): the bundle's. */
    int32_t tile;
    /** Margin around each tile; -1 (default): the bundle's. */
    int32_t margin;
    /** A dnrt_margin_source; default DNRT_MARGIN_SOURCE_IMAGE. */
    int32_t margin_source;
    /** Tiles per backend call; 0 (default): the backend's choice (1 on the CPU, 4 on a GPU). */
    int32_t batch;
    /** CPU threads for the model; 0 (default): all cores. */
    int32_t threads;
    /** GPU index for the CUDA backends; -1 (default): device 0. Ignored by CPU backends. */
    int32_t device_index;
    /** Streaming KIN/DN: statistics and inference side by side: 0, 1 or DNRT_AUTO (default). */
    int32_t overlap;
    /** KIN's smoothing window in tiles (odd); default 5. */
    int32_t kin_kernel;
    /** A dnrt_kin_kernel_type; default DNRT_KIN_KERNEL_CONSTANT. */
    int32_t kin_kernel_type;
    /** Lower bound of every KIN/DN std; default DNRT_STD_FLOOR_DEFAULT. */
    double std_floor;
    /** Progress callback for every translation of the model; NULL (default): none. */
    dnrt_progress_fn progress;
    /** Passed to `progress` as is; the library never dereferences it. */
    void* progress_user;
    /* Fields below were added in 0.2; a struct of the 0.1 size (without them) is still accepted. */
    /** A dnrt_degenerate_rule; default DNRT_DEGENERATE_DEFAULT. */
    int32_t degenerate;
    /** The std ratio below which the rule acts, in (0, 1]; 0 (default): dnrt's. */
    double degenerate_ratio;
    /* Fields below were added after degenerate_ratio; a struct ending there is still accepted. */
    /** Non-zero: translate even when the pre-flight estimate says the run will not fit in the
     *  memory or the output folder's free space (trt-translate --force). Default 0: refuse. */
    int32_t force;
} dnrt_options;

/** How dnrt_translate_file writes its output. Fill with dnrt_write_options_init first. */
typedef struct dnrt_write_options {
    /** sizeof(dnrt_write_options) as the caller's header knows it; set by the init function. */
    size_t size;
    /** TIFF compression: "zlib" (default; NULL means "zlib"), "none", "lzw", "zstd", "jpeg",
     *  "webp"; "NAME:LEVEL" sets the level, e.g. "zstd:9", "jpeg:95". */
    const char* compression;
    /** Non-zero: add reduced-resolution levels (OpenSlide/QuPath readable). Default 0. */
    int32_t pyramid;
    /** Non-zero: replace an existing output. Default 0: an existing output is an error. */
    int32_t overwrite;
    /** Side of the output TIFF's tiles in pixels (a multiple of 16); default 512. */
    int32_t tile;
} dnrt_write_options;

/** The library's version, e.g. "0.1.0". Static storage; never fails. */
DNRT_API const char* dnrt_version(void);

/** The library's DNRT_VERSION_NUMBER. Never fails. */
DNRT_API uint32_t dnrt_version_number(void);

/**
 * The message of the last failed call on this thread ("" if none failed since that thread's
 * last call). Valid until the next dnrt call on this thread; owned by the library.
 */
DNRT_API const char* dnrt_last_error(void);

/** A constant name for a status, e.g. "DNRT_ERR_IO"; "DNRT_ERR_UNKNOWN" for other values. */
DNRT_API const char* dnrt_status_string(dnrt_status status);

/** Fill `options` (of `size` bytes, sizeof(dnrt_options)) with the defaults. Prefer the inline
 *  dnrt_options_init; this form is for bindings that cannot use an inline function. */
DNRT_API dnrt_status dnrt_options_init_sized(dnrt_options* options, size_t size);

/** Fill `options` (of `size` bytes) with the defaults; see dnrt_options_init_sized. */
DNRT_API dnrt_status dnrt_write_options_init_sized(dnrt_write_options* options, size_t size);

/** Fill `options` with the defaults and record the size of the struct this header knows. */
static inline dnrt_status dnrt_options_init(dnrt_options* options) {
    return dnrt_options_init_sized(options, sizeof(dnrt_options));
}

/** Fill `options` with the defaults and record the size of the struct this header knows. */
static inline dnrt_status dnrt_write_options_init(dnrt_write_options* options) {
    return dnrt_write_options_init_sized(options, sizeof(dnrt_write_options));
}

/**
 * Load the model bundle at `path` (a directory written by export-model) on a backend, ready to
 * translate. `options` may be NULL (all defaults); it is copied and not needed afterwards. On
 * success `*model` is a new model, to be freed with dnrt_model_close; on failure it is NULL.
 * The first call in a process also starts the embedded runtime (about a second).
 */
DNRT_API dnrt_status dnrt_model_open(const char* path, const dnrt_options* options, dnrt_model** model);

/**
 * Free `model` and everything the library holds for it. NULL is allowed (does nothing). Waits
 * for a call running on the model in another thread. Fails (and frees nothing) only when called
 * from the model's own progress callback.
 */
DNRT_API dnrt_status dnrt_model_close(dnrt_model* model);

/** Replace the model's progress callback (NULL: none) for the translations that start later. */
DNRT_API dnrt_status dnrt_model_set_progress(dnrt_model* model, dnrt_progress_fn progress, void* user);

/**
 * Translate the image file `in_path` (TIFF family, SVS, PNG, JPEG, ...) into `out_path` (".tif":
 * tiled BigTIFF; ".png"/".jpg" for small images): the same file as `trt-translate IN -o OUT -m
 * MODEL` with the same options. `options` may be NULL (defaults). The output appears only when
 * complete (a temporary file beside it is renamed); after any failure or a cancellation,
 * nothing is left at `out_path` and an existing file there is untouched.
 */
DNRT_API dnrt_status dnrt_translate_file(dnrt_model* model, const char* in_path, const char* out_path,
                                         const dnrt_write_options* options);

/**
 * Translate an 8-bit RGB image held in memory: `height` rows of `width` pixels, 3 bytes per
 * pixel (R, G, B), row y starting at `in + y * in_stride`; the result, the same size, goes to
 * `out` laid out the same way with `out_stride`. Both buffers belong to the caller; strides
 * are in bytes, at least width * 3 (rows may be padded); the buffers must not overlap. Any
 * size from 1 x 1 up is accepted. The model must take and give 3-channel images. After a
 * failure or a cancellation the content of `out` is unspecified.
 */
DNRT_API dnrt_status dnrt_translate_rgb(dnrt_model* model, const uint8_t* in, int width, int height,
                                        size_t in_stride, uint8_t* out, size_t out_stride);

#ifdef __cplusplus
}
#endif

#endif /* DNRT_H */
