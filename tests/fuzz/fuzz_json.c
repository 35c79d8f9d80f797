/* fuzz_json: device.json, the device agent's state file, through mqpki_device_open (jansson with
 * duplicate keys refused, then the field checks of device/identity.c config_load). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mqpki_device.h"

static void drop(int level, const char *msg, void *ctx)
{
    (void)level;
    (void)msg;
    (void)ctx;
}

static char dir[64], path[96];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mqpki_device *dev = NULL;
    FILE *f;

    if (dir[0] == '\0') {
        mqpki_device_set_logger(drop, NULL, 0);
        snprintf(dir, sizeof(dir), "/tmp/mqpki-fuzz-json.XXXXXX");
        if (mkdtemp(dir) == NULL)
            __builtin_trap();
        snprintf(path, sizeof(path), "%s/device.json", dir);
    }
    f = fopen(path, "wb");
    if (f == NULL)
        __builtin_trap();
    if (size > 0 && fwrite(data, 1, size, f) != size)
        __builtin_trap();
    fclose(f);
    (void)mqpki_device_open(dir, &dev);
    mqpki_device_close(dev);
    return 0;
}
