/* Helpers shared by the libFuzzer targets. */
#ifndef MQPKI_FUZZ_H
#define MQPKI_FUZZ_H

#include "common.h"

static void fuzz_log_drop(enum mqpki_log_level level, const char *msg, void *ctx)
{
    (void)level;
    (void)msg;
    (void)ctx;
}

/* Libraries log refusals; thousands of them a second would only slow the fuzzer down. */
static inline void fuzz_quiet(void)
{
    static int done;

    if (!done) {
        mqpki_log_set_handler(fuzz_log_drop, NULL);
        done = 1;
    }
}

#endif
