/* fuzz_asset_id: asset ids become MQTT topic levels and file names; check the validator
 * against its rule (docs/security.md): 1..64 of [A-Za-z0-9._-], not starting with '.' or '-'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

static int reference(const char *id)
{
    size_t n = strlen(id);

    if (n < 1 || n > 64 || id[0] == '.' || id[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *id = malloc(size + 1);

    if (id == NULL)
        return 0;
    memcpy(id, data, size);
    id[size] = '\0';
    if ((proto_asset_id_valid(id) != 0) != reference(id))
        __builtin_trap();
    if (proto_asset_id_valid(id) && (strchr(id, '/') || strchr(id, '+') || strchr(id, '#')))
        __builtin_trap();
    free(id);
    return 0;
}
