/* fuzz_config: mqpki.conf through datadir_config_load (size cap, NUL check, inih, every key's
 * value parser), from a file in a private temporary directory. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "datadir.h"
#include "fuzz.h"

static char home[64], conf[96];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct datadir_config cfg;
    FILE *f;

    fuzz_quiet();
    if (home[0] == '\0') {
        snprintf(home, sizeof(home), "/tmp/mqpki-fuzz-config.XXXXXX");
        if (mkdtemp(home) == NULL)
            __builtin_trap();
        snprintf(conf, sizeof(conf), "%s/mqpki.conf", home);
    }
    f = fopen(conf, "wb");
    if (f == NULL)
        __builtin_trap();
    if (size > 0 && fwrite(data, 1, size, f) != size)
        __builtin_trap();
    fclose(f);
    if (datadir_config_load(home, &cfg) == MQPKI_OK) {
        /* Whatever loads must be what the rest of mqpki assumes: terminated strings. */
        if (memchr(cfg.ca_name, '\0', sizeof(cfg.ca_name)) == NULL ||
            memchr(cfg.url, '\0', sizeof(cfg.url)) == NULL ||
            memchr(cfg.listen, '\0', sizeof(cfg.listen)) == NULL ||
            memchr(cfg.pin_file, '\0', sizeof(cfg.pin_file)) == NULL)
            __builtin_trap();
    }
    mqpki_err_clear();
    return 0;
}
