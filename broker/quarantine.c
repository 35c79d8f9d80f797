/*
 * broker: the quarantine list (broker.h). mqpkid publishes it retained on
 * PROTO_TOPIC_QUARANTINE; the plugin keeps the newest good one, sorted for bsearch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "broker.h"

#define QUARANTINE_JSON_MAX (QUARANTINE_MAX * (PROTO_ASSET_ID_MAX + 4) + 64)

struct quarantine {
    char **ids;
    size_t n;
};

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void quarantine_free(struct quarantine *q)
{
    if (q == NULL)
        return;
    for (size_t i = 0; i < q->n; i++)
        free(q->ids[i]);
    free(q->ids);
    free(q);
}

struct quarantine *quarantine_parse(const void *payload, size_t len, char *why, size_t why_len)
{
    struct quarantine *q = NULL;
    json_t *v = NULL, *list;
    size_t n;

    if (payload == NULL || len == 0 || len > QUARANTINE_JSON_MAX) {
        snprintf(why, why_len, "quarantine list of %zu bytes", len);
        goto fail;
    }
    v = json_loadb(payload, len, JSON_REJECT_DUPLICATES, NULL);
    list = json_object_get(v, "assets");
    if (!json_is_array(list) || (n = json_array_size(list)) > QUARANTINE_MAX) {
        snprintf(why, why_len, "quarantine list: expected {\"assets\":[...]} of at most %d",
                 QUARANTINE_MAX);
        goto fail;
    }
    if ((q = calloc(1, sizeof(*q))) == NULL ||
        (n > 0 && (q->ids = calloc(n, sizeof(char *))) == NULL)) {
        snprintf(why, why_len, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        const char *id = json_string_value(json_array_get(list, i));
        if (id == NULL || !proto_asset_id_valid(id)) {
            snprintf(why, why_len, "quarantine list: entry %zu is not an asset id", i);
            goto fail;
        }
        if ((q->ids[q->n] = strdup(id)) == NULL) {
            snprintf(why, why_len, "out of memory");
            goto fail;
        }
        q->n++;
    }
    if (q->n > 1)
        qsort(q->ids, q->n, sizeof(char *), by_name);
    json_decref(v);
    return q;
fail:
    json_decref(v);
    quarantine_free(q);
    return NULL;
}

int quarantine_has(const struct quarantine *q, const char *asset)
{
    return q != NULL && asset != NULL && q->n > 0 &&
           bsearch(&asset, q->ids, q->n, sizeof(char *), by_name) != NULL;
}

size_t quarantine_count(const struct quarantine *q)
{
    return q != NULL ? q->n : 0;
}
