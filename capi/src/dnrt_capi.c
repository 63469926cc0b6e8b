/*
 * dnrt_capi.c - the C side of libdnrt: everything of the ABI that does not need Python.
 *
 * Argument checks, option structs (size-versioned), the thread-local error message, the
 * per-model lock and the start of the embedded interpreter live here, so that a bad call is
 * refused without touching Python and the Python side only ever sees well-formed requests.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first, as Python.h asks */

#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dnrt.h"
#include "dnrt_build_config.h" /* generated: DNRT_BUILD_PYTHON, DNRT_BUILD_VERSION */
#include "dnrt_internal.h"

#define DNRT_ERROR_CAPACITY 4096
#define DNRT_MODEL_MAGIC 0x746e7264u /* "drnt" */
/* An options struct larger than this is not a struct from any dnrt header: refuse it. */
#define DNRT_MAX_STRUCT_SIZE 4096u

/* ------------------------------------------------------------------------------------------ */
/* Errors: one message per thread, valid until the thread's next dnrt call.                    */

static _Thread_local char tls_error[DNRT_ERROR_CAPACITY];

static void clear_error(void) { tls_error[0] = '\0'; }

/* Copy `message` into the thread's buffer, cut at a UTF-8 character boundary if too long. */
static void store_error(const char* message) {
    size_t n = strlen(message);
    if (n >= DNRT_ERROR_CAPACITY) {
        n = DNRT_ERROR_CAPACITY - 4; /* room for "..." */
        while (n > 0 && ((unsigned char)message[n] & 0xC0u) == 0x80u) n--;
        memcpy(tls_error, message, n);
        memcpy(tls_error + n, "...", 4);
        return;
    }
    memcpy(tls_error, message, n + 1);
}

__attribute__((format(printf, 2, 3))) static dnrt_status fail(dnrt_status status, const char* format, ...) {
    char message[DNRT_ERROR_CAPACITY];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    store_error(message);
    return status;
}

void dnrtc_set_error(const char* message) { store_error(message != NULL ? message : "(no message)"); }

const char* dnrt_last_error(void) { return tls_error; }

const char* dnrt_status_string(dnrt_status status) {
    switch (status) {
        case DNRT_OK: return "DNRT_OK";
        case DNRT_ERR_INVALID_ARGUMENT: return "DNRT_ERR_INVALID_ARGUMENT";
        case DNRT_ERR_NOT_FOUND: return "DNRT_ERR_NOT_FOUND";
        case DNRT_ERR_IO: return "DNRT_ERR_IO";
        case DNRT_ERR_MODEL: return "DNRT_ERR_MODEL";
        case DNRT_ERR_UNSUPPORTED: return "DNRT_ERR_UNSUPPORTED";
        case DNRT_ERR_CANCELLED: return "DNRT_ERR_CANCELLED";
        case DNRT_ERR_RUNTIME: return "DNRT_ERR_RUNTIME";
        case DNRT_ERR_OUT_OF_MEMORY: return "DNRT_ERR_OUT_OF_MEMORY";
        case DNRT_ERR_INTERNAL: return "DNRT_ERR_INTERNAL";
    }
    return "DNRT_ERR_UNKNOWN";
}

/* The Python side returns plain ints; anything outside the enum is a bug of ours. */
static dnrt_status checked_status(int code) {
    if (code < (int)DNRT_OK || code > (int)DNRT_ERR_INTERNAL) {
        return fail(DNRT_ERR_INTERNAL, "internal error: the runtime returned the unknown status %d", code);
    }
    if (code != DNRT_OK && tls_error[0] == '\0') {
        return fail((dnrt_status)code, "%s (no message)", dnrt_status_string((dnrt_status)code));
    }
    return (dnrt_status)code;
}

/* ------------------------------------------------------------------------------------------ */
/* Version.                                                                                    */

const char* dnrt_version(void) { return DNRT_VERSION_STRING; }

uint32_t dnrt_version_number(void) { return (uint32_t)DNRT_VERSION_NUMBER; }

/* ------------------------------------------------------------------------------------------ */
/* Option structs.                                                                             */

static dnrt_status check_struct_size(const char* what, size_t size, size_t known, const void* caller) {
    if (size < known || size > DNRT_MAX_STRUCT_SIZE) {
        /* Older layouts are accepted by the callers (see DNRT_OPTIONS_0_1_SIZE) before this check. */
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "%s->size is %zu, expected %zu: fill the struct with %s_init() before setting fields",
                    what, size, known, what);
    }
    /* A caller compiled against a newer header: its extra fields must be unset (zero). */
    const unsigned char* bytes = (const unsigned char*)caller;
    for (size_t i = known; i < size; i++) {
        if (bytes[i] != 0) {
            return fail(DNRT_ERR_UNSUPPORTED,
                        "%s sets fields that this libdnrt %s does not know (struct of %zu bytes, this "
                        "library knows %zu); use a newer libdnrt or leave them at zero",
                        what, DNRT_VERSION_STRING, size, known);
        }
    }
    return DNRT_OK;
}

dnrt_status dnrt_options_init_sized(dnrt_options* options, size_t size) {
    clear_error();
    if (options == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_options_init: options is NULL");
    if (size < sizeof(dnrt_options) || size > DNRT_MAX_STRUCT_SIZE) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_options_init: size %zu is not the size of a dnrt_options (%zu)",
                    size, sizeof(dnrt_options));
    }
    memset(options, 0, size);
    options->size = size;
    options->backend = NULL; /* "auto" */
    options->precision = NULL;
    options->mode = DNRT_MODE_DN;
    options->schedule = DNRT_SCHEDULE_STREAMING;
    options->tile = 0;
    options->margin = -1;
    options->margin_source = DNRT_MARGIN_SOURCE_IMAGE;
    options->batch = 0;
    options->threads = 0;
    options->device_index = -1;
    options->overlap = DNRT_AUTO;
    options->kin_kernel = 5;
    options->kin_kernel_type = DNRT_KIN_KERNEL_CONSTANT;
    options->std_floor = DNRT_STD_FLOOR_DEFAULT;
    options->progress = NULL;
    options->progress_user = NULL;
    options->degenerate = DNRT_DEGENERATE_DEFAULT;
    options->degenerate_ratio = 0.0;
    options->force = 0;
    return DNRT_OK;
}

dnrt_status dnrt_write_options_init_sized(dnrt_write_options* options, size_t size) {
    clear_error();
    if (options == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_write_options_init: options is NULL");
    if (size < sizeof(dnrt_write_options) || size > DNRT_MAX_STRUCT_SIZE) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "dnrt_write_options_init: size %zu is not the size of a dnrt_write_options (%zu)", size,
                    sizeof(dnrt_write_options));
    }
    memset(options, 0, size);
    options->size = size;
    options->compression = NULL; /* "zlib" */
    options->pyramid = 0;
    options->overwrite = 0;
    options->tile = 512;
    return DNRT_OK;
}

/* dnrt_options as libdnrt 0.1 knew it: everything before `degenerate`. */
#define DNRT_OPTIONS_0_1_SIZE offsetof(dnrt_options, degenerate)
/* ... and as the next layout did: everything before `force`. */
#define DNRT_OPTIONS_0_2_SIZE offsetof(dnrt_options, force)

/* The caller's options (NULL: defaults) as a complete struct of this library's layout. */
static dnrt_status read_options(const dnrt_options* given, dnrt_options* options) {
    dnrt_status status = dnrt_options_init_sized(options, sizeof *options);
    if (status != DNRT_OK || given == NULL) return status;
    if (given->size == DNRT_OPTIONS_0_1_SIZE || given->size == DNRT_OPTIONS_0_2_SIZE) {
        /* A caller built against an older header: its fields, and defaults for the newer ones. */
        memcpy(options, given, given->size);
    } else {
        status = check_struct_size("dnrt_options", given->size, sizeof *options, given);
        if (status != DNRT_OK) return status;
        memcpy(options, given, sizeof *options);
    }
    options->size = sizeof *options;

    if (options->mode < DNRT_MODE_IN || options->mode > DNRT_MODE_DN) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.mode is %d; expected DNRT_MODE_IN, DNRT_MODE_TIN, DNRT_MODE_KIN or DNRT_MODE_DN",
                    (int)options->mode);
    }
    if (options->schedule != DNRT_SCHEDULE_STREAMING && options->schedule != DNRT_SCHEDULE_TWO_PASS) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.schedule is %d; expected DNRT_SCHEDULE_STREAMING or DNRT_SCHEDULE_TWO_PASS",
                    (int)options->schedule);
    }
    if (options->tile < 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.tile is %d; expected 0 (the bundle's) or a size in pixels",
                    (int)options->tile);
    }
    if (options->margin < -1) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.margin is %d; expected -1 (the bundle's) or a margin >= 0",
                    (int)options->margin);
    }
    if (options->margin_source != DNRT_MARGIN_SOURCE_TILE && options->margin_source != DNRT_MARGIN_SOURCE_IMAGE) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.margin_source is %d; expected DNRT_MARGIN_SOURCE_TILE or DNRT_MARGIN_SOURCE_IMAGE",
                    (int)options->margin_source);
    }
    if (options->batch < 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.batch is %d; expected 0 (the backend's) or at least 1",
                    (int)options->batch);
    }
    if (options->threads < 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.threads is %d; expected 0 (all cores) or at least 1",
                    (int)options->threads);
    }
    if (options->device_index < -1) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.device_index is %d; expected -1 (default) or >= 0",
                    (int)options->device_index);
    }
    if (options->overlap < DNRT_AUTO || options->overlap > 1) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.overlap is %d; expected 0, 1 or DNRT_AUTO (-1)",
                    (int)options->overlap);
    }
    if (options->kin_kernel < 1 || options->kin_kernel % 2 == 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.kin_kernel is %d; expected a positive odd number of tiles",
                    (int)options->kin_kernel);
    }
    if (options->kin_kernel_type != DNRT_KIN_KERNEL_CONSTANT && options->kin_kernel_type != DNRT_KIN_KERNEL_GAUSSIAN) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.kin_kernel_type is %d; expected DNRT_KIN_KERNEL_CONSTANT or DNRT_KIN_KERNEL_GAUSSIAN",
                    (int)options->kin_kernel_type);
    }
    if (options->degenerate < DNRT_DEGENERATE_DEFAULT || options->degenerate > DNRT_DEGENERATE_SLIDE) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.degenerate is %d; expected a dnrt_degenerate_rule (DNRT_DEGENERATE_DEFAULT to "
                    "DNRT_DEGENERATE_SLIDE)",
                    (int)options->degenerate);
    }
    if (!isfinite(options->degenerate_ratio) || options->degenerate_ratio < 0.0 || options->degenerate_ratio > 1.0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "options.degenerate_ratio is %g; expected 0 (dnrt's default) or a ratio in (0, 1]",
                    options->degenerate_ratio);
    }
    if (!isfinite(options->std_floor) || options->std_floor < 0.0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.std_floor is %g; expected a finite number >= 0",
                    options->std_floor);
    }
    if (options->backend != NULL && options->backend[0] == '\0') {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.backend is empty; use NULL or \"auto\" for the default");
    }
    if (options->precision != NULL && options->precision[0] == '\0') {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "options.precision is empty; use NULL for the backend's default");
    }
    return DNRT_OK;
}

static dnrt_status read_write_options(const dnrt_write_options* given, dnrt_write_options* options) {
    dnrt_status status = dnrt_write_options_init_sized(options, sizeof *options);
    if (status != DNRT_OK || given == NULL) return status;
    status = check_struct_size("dnrt_write_options", given->size, sizeof *options, given);
    if (status != DNRT_OK) return status;
    memcpy(options, given, sizeof *options);
    options->size = sizeof *options;
    if (options->tile < 16 || options->tile % 16 != 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "write options.tile is %d; expected a positive multiple of 16",
                    (int)options->tile);
    }
    if (options->compression != NULL && options->compression[0] == '\0') {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "write options.compression is empty; use NULL for \"zlib\"");
    }
    return DNRT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* The embedded interpreter, started once per process on the first call that needs it.         */

static pthread_once_t python_once = PTHREAD_ONCE_INIT;
static dnrt_status python_status = DNRT_OK;
static char python_error[DNRT_ERROR_CAPACITY];

static void python_failed(dnrt_status status, const char* format, ...) __attribute__((format(printf, 2, 3)));

static void python_failed(dnrt_status status, const char* format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(python_error, sizeof python_error, format, args);
    va_end(args);
    python_status = status;
}

static const char* env_or(const char* name, const char* fallback) {
    const char* value = getenv(name);
    return value != NULL && value[0] != '\0' ? value : fallback;
}

/* The current Python exception as text (GIL held); clears it. */
static void exception_text(char* buffer, size_t size) {
    PyObject *type = NULL, *value = NULL, *traceback = NULL;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    snprintf(buffer, size, "unknown error");
    if (value != NULL) {
        PyObject* text = PyObject_Str(value);
        const char* utf8 = text != NULL ? PyUnicode_AsUTF8(text) : NULL;
        if (utf8 != NULL) snprintf(buffer, size, "%s: %s", Py_TYPE(value)->tp_name, utf8);
        Py_XDECREF(text);
    }
    PyErr_Clear();
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
}

/* sys.path[0:0] = entries of `path` (':'-separated, like PYTHONPATH); GIL held. -1 on error. */
static int prepend_python_path(const char* path) {
    if (path == NULL) return 0;
    PyObject* sys_path = PySys_GetObject("path"); /* borrowed */
    if (sys_path == NULL || !PyList_Check(sys_path)) {
        PyErr_SetString(PyExc_RuntimeError, "sys.path is not a list");
        return -1;
    }
    Py_ssize_t index = 0;
    const char* start = path;
    for (;;) {
        const char* end = strchr(start, ':');
        size_t length = end != NULL ? (size_t)(end - start) : strlen(start);
        if (length > 0) {
            PyObject* entry = PyUnicode_DecodeFSDefaultAndSize(start, (Py_ssize_t)length);
            if (entry == NULL) return -1;
            int failed = PyList_Insert(sys_path, index++, entry);
            Py_DECREF(entry);
            if (failed != 0) return -1;
        }
        if (end == NULL) break;
        start = end + 1;
    }
    return 0;
}

/*
 * A host that does not run Python itself gets an isolated interpreter that behaves like
 * DNRT_PYTHON (default: the python that built the library, typically a virtual environment's):
 * same standard library and site-packages, but no PYTHON* environment variables, no user site
 * directory and no signal handlers (SIGINT stays the host's). A host that already runs
 * Python shares its interpreter, and dnrt must be importable there.
 */
static void start_python(void) {
    const char* python = env_or("DNRT_PYTHON", DNRT_BUILD_PYTHON);
    if (!Py_IsInitialized()) {
        PyConfig config;
        PyConfig_InitIsolatedConfig(&config);
        config.install_signal_handlers = 0;
        config.site_import = 1;
        const char* home = env_or("DNRT_PYTHONHOME", NULL);
        PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, python);
        if (!PyStatus_Exception(status)) status = PyConfig_SetBytesString(&config, &config.executable, python);
        if (!PyStatus_Exception(status) && home != NULL) {
            status = PyConfig_SetBytesString(&config, &config.home, home);
        }
        if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(status)) {
            python_failed(DNRT_ERR_RUNTIME,
                          "could not start the embedded Python %s as %s (%s%s%s); check DNRT_PYTHON and "
                          "DNRT_PYTHONHOME (see capi/README.md)",
                          PY_VERSION, python, status.func != NULL ? status.func : "",
                          status.func != NULL ? ": " : "", status.err_msg != NULL ? status.err_msg : "failed");
            return;
        }
        /* An isolated config ignores pythonpath_env: put DNRT_PYTHONPATH first on sys.path here. */
        if (prepend_python_path(env_or("DNRT_PYTHONPATH", NULL)) != 0) {
            char text[1024];
            exception_text(text, sizeof text);
            python_failed(DNRT_ERR_RUNTIME, "could not apply DNRT_PYTHONPATH (%s)", text);
            PyEval_SaveThread();
            return;
        }
        /* cffi's start-up imports _cffi_backend and only prints to stderr if it cannot: check first. */
        PyObject* backend = PyImport_ImportModule("_cffi_backend");
        if (backend == NULL) {
            char text[1024];
            exception_text(text, sizeof text);
            python_failed(DNRT_ERR_RUNTIME,
                          "the embedded Python (as %s) cannot import cffi (%s); install cffi and dnrt in that "
                          "environment or set DNRT_PYTHON (see capi/README.md)",
                          python, text);
            PyEval_SaveThread();
            return;
        }
        Py_DECREF(backend);
        PyEval_SaveThread(); /* release the GIL: every entry point takes it when it needs it */
    }
    if (dnrtc_start_python() != 0) {
        python_failed(DNRT_ERR_RUNTIME, "the embedded dnrt runtime failed to start (details on stderr)");
        return;
    }
    clear_error();
    int code = dnrtpy_init();
    if (code != DNRT_OK) python_failed(DNRT_ERR_RUNTIME, "%s", tls_error[0] ? tls_error : "dnrt failed to load");
    clear_error();
}

static dnrt_status ensure_python(void) {
    pthread_once(&python_once, start_python);
    if (python_status != DNRT_OK) return fail(python_status, "%s", python_error);
    return DNRT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Models.                                                                                     */

struct dnrt_model {
    uint32_t magic;
    uint64_t id;                   /* key of the Python-side Translator */
    pthread_mutex_t lock;          /* serializes calls on the model */
    pthread_mutex_t progress_lock; /* guards progress/progress_user (set while a call runs) */
    dnrt_progress_fn progress;
    void* progress_user;
};

/* The model whose call is running on this thread (to refuse calls from its progress callback). */
static _Thread_local const dnrt_model* tls_running = NULL;

static dnrt_status check_model(const char* function, const dnrt_model* model) {
    if (model == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "%s: model is NULL", function);
    if (model->magic != DNRT_MODEL_MAGIC) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "%s: model is not an open dnrt_model (closed already?)", function);
    }
    if (tls_running == model) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "%s: called from inside the model's own progress callback", function);
    }
    return DNRT_OK;
}

dnrt_status dnrt_model_open(const char* path, const dnrt_options* options, dnrt_model** model) {
    clear_error();
    if (model == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_model_open: model (the out pointer) is NULL");
    *model = NULL;
    if (path == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_model_open: path is NULL");
    if (path[0] == '\0') return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_model_open: path is empty");
    dnrt_options settings;
    dnrt_status status = read_options(options, &settings);
    if (status != DNRT_OK) return status;
    status = ensure_python();
    if (status != DNRT_OK) return status;

    dnrt_model* created = calloc(1, sizeof *created);
    if (created == NULL) return fail(DNRT_ERR_OUT_OF_MEMORY, "dnrt_model_open: out of memory");
    if (pthread_mutex_init(&created->lock, NULL) != 0) {
        free(created);
        return fail(DNRT_ERR_RUNTIME, "dnrt_model_open: could not create the model's lock");
    }
    if (pthread_mutex_init(&created->progress_lock, NULL) != 0) {
        pthread_mutex_destroy(&created->lock);
        free(created);
        return fail(DNRT_ERR_RUNTIME, "dnrt_model_open: could not create the model's lock");
    }
    uint64_t id = 0;
    status = checked_status(dnrtpy_model_open(path, &settings, &id));
    if (status != DNRT_OK) {
        pthread_mutex_destroy(&created->progress_lock);
        pthread_mutex_destroy(&created->lock);
        free(created);
        return status;
    }
    created->magic = DNRT_MODEL_MAGIC;
    created->id = id;
    created->progress = settings.progress;
    created->progress_user = settings.progress_user;
    *model = created;
    return DNRT_OK;
}

dnrt_status dnrt_model_close(dnrt_model* model) {
    clear_error();
    if (model == NULL) return DNRT_OK;
    dnrt_status status = check_model("dnrt_model_close", model);
    if (status != DNRT_OK) return status;
    pthread_mutex_lock(&model->lock); /* wait for a call running in another thread */
    model->magic = 0;
    (void)dnrtpy_model_close(model->id); /* releases the backend; cannot fail in a way that matters */
    clear_error();
    pthread_mutex_unlock(&model->lock);
    pthread_mutex_destroy(&model->lock);
    pthread_mutex_destroy(&model->progress_lock);
    free(model);
    return DNRT_OK;
}

dnrt_status dnrt_model_set_progress(dnrt_model* model, dnrt_progress_fn progress, void* user) {
    clear_error();
    dnrt_status status = check_model("dnrt_model_set_progress", model);
    if (status != DNRT_OK) return status;
    pthread_mutex_lock(&model->progress_lock);
    model->progress = progress;
    model->progress_user = user;
    pthread_mutex_unlock(&model->progress_lock);
    return DNRT_OK;
}

/* Runs one call on the model under its lock; the progress callback is read at the start. */
typedef struct call_context {
    const dnrt_model* previous;
    dnrt_progress_fn progress;
    void* user;
} call_context;

static void enter_model(dnrt_model* model, call_context* context) {
    pthread_mutex_lock(&model->lock);
    context->previous = tls_running;
    tls_running = model;
    pthread_mutex_lock(&model->progress_lock);
    context->progress = model->progress;
    context->user = model->progress_user;
    pthread_mutex_unlock(&model->progress_lock);
}

/* Ends a call; a success leaves no message, even if its progress callback saw a failure. */
static dnrt_status leave_model(dnrt_model* model, const call_context* context, dnrt_status status) {
    tls_running = context->previous;
    pthread_mutex_unlock(&model->lock);
    if (status == DNRT_OK) clear_error();
    return status;
}

dnrt_status dnrt_translate_file(dnrt_model* model, const char* in_path, const char* out_path,
                                const dnrt_write_options* options) {
    clear_error();
    dnrt_status status = check_model("dnrt_translate_file", model);
    if (status != DNRT_OK) return status;
    if (in_path == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_file: in_path is NULL");
    if (out_path == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_file: out_path is NULL");
    if (in_path[0] == '\0') return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_file: in_path is empty");
    if (out_path[0] == '\0') return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_file: out_path is empty");
    dnrt_write_options settings;
    status = read_write_options(options, &settings);
    if (status != DNRT_OK) return status;

    call_context context;
    enter_model(model, &context);
    status = checked_status(
        dnrtpy_translate_file(model->id, in_path, out_path, &settings, context.progress, context.user));
    return leave_model(model, &context, status);
}

/* Bytes spanned by `rows` rows of `row_bytes` with `stride` between starts; 0 if too large. */
static size_t span_bytes(size_t rows, size_t row_bytes, size_t stride) {
    if (stride > (size_t)PTRDIFF_MAX) return 0;
    if (rows - 1 > ((size_t)PTRDIFF_MAX - row_bytes) / stride) return 0;
    return (rows - 1) * stride + row_bytes;
}

dnrt_status dnrt_translate_rgb(dnrt_model* model, const uint8_t* in, int width, int height, size_t in_stride,
                               uint8_t* out, size_t out_stride) {
    clear_error();
    dnrt_status status = check_model("dnrt_translate_rgb", model);
    if (status != DNRT_OK) return status;
    if (in == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: in is NULL");
    if (out == NULL) return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: out is NULL");
    if (width < 1 || height < 1) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: the image is %d x %d pixels; width and height "
                    "must be at least 1", width, height);
    }
    const size_t row_bytes = (size_t)width * 3u;
    if (in_stride < row_bytes) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: in_stride is %zu bytes, less than width * 3 = %zu",
                    in_stride, row_bytes);
    }
    if (out_stride < row_bytes) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "dnrt_translate_rgb: out_stride is %zu bytes, less than width * 3 = %zu", out_stride, row_bytes);
    }
    const size_t in_bytes = span_bytes((size_t)height, row_bytes, in_stride);
    const size_t out_bytes = span_bytes((size_t)height, row_bytes, out_stride);
    if (in_bytes == 0 || out_bytes == 0) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: the buffers (%d rows of stride %zu / %zu bytes) "
                    "exceed the address space", height, in_stride, out_stride);
    }
    const uintptr_t in_start = (uintptr_t)in, out_start = (uintptr_t)out;
    if (in_start > UINTPTR_MAX - in_bytes || out_start > UINTPTR_MAX - out_bytes) {
        return fail(DNRT_ERR_INVALID_ARGUMENT, "dnrt_translate_rgb: a buffer wraps around the address space");
    }
    if (in_start < out_start + out_bytes && out_start < in_start + in_bytes) {
        return fail(DNRT_ERR_INVALID_ARGUMENT,
                    "dnrt_translate_rgb: in and out overlap; translate into a separate buffer");
    }

    call_context context;
    enter_model(model, &context);
    status = checked_status(dnrtpy_translate_rgb(model->id, in, width, height, in_stride, out, out_stride,
                                                 context.progress, context.user));
    return leave_model(model, &context, status);
}
