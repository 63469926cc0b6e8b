/*
 * The seam between the C side of libdnrt (dnrt_capi.c: argument checks, locks, errors) and
 * its embedded Python side (embedded.py, compiled in by cffi's embedding mode).
 *
 * The dnrtpy_* functions are implemented in Python (cffi `extern "Python"` entry points): they
 * run with the GIL taken by cffi, return a dnrt_status, and on failure set the message with
 * dnrtc_set_error. They are called only after dnrtc_start_python() succeeded, with arguments
 * already checked (non-NULL, option structs complete and in range). Not exported (libdnrt.map).
 */
#ifndef DNRT_INTERNAL_H
#define DNRT_INTERNAL_H

#include "dnrt.h"

/* Imports dnrt into the embedded interpreter; an error names what is missing. */
int dnrtpy_init(void);
int dnrtpy_model_open(const char* path, const dnrt_options* options, uint64_t* id);
int dnrtpy_model_close(uint64_t id);
int dnrtpy_translate_file(uint64_t id, const char* in_path, const char* out_path,
                          const dnrt_write_options* options, dnrt_progress_fn progress, void* user);
int dnrtpy_translate_rgb(uint64_t id, const uint8_t* in, int width, int height, size_t in_stride,
                         uint8_t* out, size_t out_stride, dnrt_progress_fn progress, void* user);

/* Sets this thread's dnrt_last_error() message (called from Python). */
void dnrtc_set_error(const char* message);

/* cffi's start-up of the embedded module (its init code); 0 on success. Defined in the cffi
 * translation unit, where cffi_start_python() is visible. */
int dnrtc_start_python(void);

#endif /* DNRT_INTERNAL_H */
