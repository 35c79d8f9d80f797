/*
 * device/error.c: error texts, the per-thread error detail and the optional logger. The library
 * logs only through the logger its user installs; it never touches common's process-wide logger
 * (the program linking us may use it for itself). p11/ gets our logger per handle.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "device_int.h"

#define ERR_TEXT_(name, exit_status, text) text,
static const char *const err_text[] = {MQPKI_DEVICE_ERRORS(ERR_TEXT_)};
#undef ERR_TEXT_
#define ERR_EXIT_(name, exit_status, text) exit_status,
static const unsigned char err_exit[] = {MQPKI_DEVICE_ERRORS(ERR_EXIT_)};
#undef ERR_EXIT_

static _Thread_local char detail[512];

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static mqpki_device_log_fn log_fn;
static void *log_ctx;
static int log_max = DEV_LOG_INFO;

MQPKI_DEVICE_EXPORT const char *mqpki_device_strerror(int rc)
{
    if (rc < 0 || rc >= MQPKI_DEVICE_ERR_COUNT_)
        return "unknown error";
    return err_text[rc];
}

MQPKI_DEVICE_EXPORT int mqpki_device_exit_status(int rc)
{
    if (rc < 0 || rc >= MQPKI_DEVICE_ERR_COUNT_)
        return 2;
    return err_exit[rc];
}

MQPKI_DEVICE_EXPORT const char *mqpki_device_last_error(void)
{
    return detail;
}

int dev_fail(int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    /* Details quote server replies and file names; they end up on terminals. */
    for (char *p = detail; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    return rc;
}

void dev_clear_error(void)
{
    detail[0] = '\0';
}

int dev_from_common(int common_rc, int fallback)
{
    int rc = fallback;

    switch (common_rc) {
    case MQPKI_OK: rc = MQPKI_DEVICE_OK; break;
    case MQPKI_ERR_NOMEM: rc = MQPKI_DEVICE_ERR_NOMEM; break;
    case MQPKI_ERR_AUTH: rc = MQPKI_DEVICE_ERR_STORE_LOCKED; break;
    case MQPKI_ERR_IO: rc = MQPKI_DEVICE_ERR_IO; break;
    default: break;
    }
    if (rc != MQPKI_DEVICE_OK)
        dev_fail(rc, "%s", mqpki_err_detail(common_rc));
    return rc;
}

MQPKI_DEVICE_EXPORT void mqpki_device_set_logger(mqpki_device_log_fn fn, void *ctx, int max_level)
{
    pthread_mutex_lock(&log_lock);
    log_fn = fn;
    log_ctx = ctx;
    log_max = max_level;
    pthread_mutex_unlock(&log_lock);
}

void dev_log(int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    pthread_mutex_lock(&log_lock);
    if (log_fn != NULL && level <= log_max) {
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_fn(level, msg, log_ctx);
    }
    pthread_mutex_unlock(&log_lock);
}
