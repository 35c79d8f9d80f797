/*
 * broker: the plugin's security events (docs/detect.md). Callbacks push fixed-size records into
 * a ring of bounded capacity; a full ring drops the newest and counts it. The tick drains it
 * into batches (one JSON message of at most EVRING_BATCH_MAX events), so a flood costs the
 * broker a bounded amount of memory and a few messages a tick, never a blocked callback.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "broker.h"
#include "common.h"

struct evring {
    struct broker_event *v;
    size_t cap, head, n;
    uint64_t dropped, dropped_reported;
    /* Names every batch: this ring's random boot id and the batch's number. With the event's
     * place in the batch they make its id, by which replicas of mqpkid that all receive the
     * batch store it once (docs/ha.md). */
    char boot[2 * EVRING_BOOT_LEN + 1];
    uint64_t seq;
};

struct evring *evring_new(size_t cap)
{
    struct evring *r;

    if (cap == 0 || (r = calloc(1, sizeof(*r))) == NULL)
        return NULL;
    if ((r->v = calloc(cap, sizeof(*r->v))) == NULL) {
        free(r);
        return NULL;
    }
    r->cap = cap;
    {
        unsigned char b[EVRING_BOOT_LEN];
        if (RAND_bytes(b, sizeof(b)) != 1) {
            evring_free(r);
            return NULL;
        }
        for (size_t i = 0; i < sizeof(b); i++)
            snprintf(r->boot + 2 * i, 3, "%02x", b[i]);
    }
    return r;
}

void evring_free(struct evring *r)
{
    if (r == NULL)
        return;
    free(r->v);
    free(r);
}

size_t evring_count(const struct evring *r)
{
    return r != NULL ? r->n : 0;
}

uint64_t evring_dropped(const struct evring *r)
{
    return r != NULL ? r->dropped : 0;
}

/* Copies s into a field of size n, cut at n - 1 bytes ("" for NULL). */
#define FIELD(dst, s) snprintf((dst), sizeof(dst), "%s", (s) != NULL ? (s) : "")

struct broker_event *evring_push(struct evring *r, const char *type)
{
    struct broker_event *e;

    if (r == NULL)
        return NULL;
    if (r->n == r->cap) {
        r->dropped++;
        return NULL;
    }
    e = &r->v[(r->head + r->n) % r->cap];
    r->n++;
    memset(e, 0, sizeof(*e));
    FIELD(e->type, type);
    e->time = mqpki_now();
    return e;
}

void broker_event_set(char *dst, size_t size, const char *s)
{
    snprintf(dst, size, "%s", s != NULL ? s : "");
}

/* Sets key to s unless s is empty. */
static int put_text(json_t *o, const char *key, const char *s)
{
    return s[0] == '\0' ? 0 : json_object_set_new(o, key, json_string(s));
}

static json_t *event_json(const struct broker_event *e)
{
    json_t *o = json_object();
    char when[32];

    if (o == NULL)
        return NULL;
    mqpki_time_str(e->time, when);
    if (put_text(o, "type", e->type) || put_text(o, "asset", e->asset) ||
        put_text(o, "client_id", e->client_id) || put_text(o, "address", e->address) ||
        put_text(o, "serial", e->serial) || put_text(o, "reason", e->reason) ||
        put_text(o, "topic", e->topic) || put_text(o, "other_address", e->other_address) ||
        json_object_set_new(o, "time", json_string(when)))
        goto fail;
    if (e->has_counts && (json_object_set_new(o, "connects", json_integer(e->connects)) ||
                          json_object_set_new(o, "messages", json_integer(e->messages)) ||
                          json_object_set_new(o, "bytes", json_integer(e->bytes))))
        goto fail;
    if (e->denials_dropped > 0 &&
        json_object_set_new(o, "denials_dropped", json_integer(e->denials_dropped)))
        goto fail;
    if (e->wildcard && json_object_set_new(o, "wildcard", json_true()))
        goto fail;
    if (e->abnormal >= 0 && strcmp(e->type, "disconnect") == 0 &&
        json_object_set_new(o, "abnormal", json_boolean(e->abnormal)))
        goto fail;
    return o;
fail:
    json_decref(o);
    return NULL;
}

char *evring_take_batch(struct evring *r, const char *broker, size_t max)
{
    json_t *batch = NULL, *list = NULL;
    char *text = NULL;
    uint64_t dropped;

    if (r == NULL || (r->n == 0 && r->dropped == r->dropped_reported))
        return NULL;
    if (max == 0 || max > EVRING_BATCH_MAX)
        max = EVRING_BATCH_MAX;
    dropped = r->dropped - r->dropped_reported;
    if ((list = json_array()) == NULL)
        goto out;
    for (size_t i = 0; i < max && i < r->n; i++) {
        json_t *o = event_json(&r->v[(r->head + i) % r->cap]);
        if (o == NULL || json_array_append_new(list, o) != 0)
            goto out;
    }
    batch = json_pack("{s:s, s:s, s:s, s:I, s:I, s:O}", "type", "batch", "broker", broker, "boot",
                      r->boot, "seq", (json_int_t)(r->seq + 1), "dropped", (json_int_t)dropped,
                      "events", list);
    if (batch == NULL || (text = json_dumps(batch, JSON_COMPACT)) == NULL)
        goto out;
    /* Only what made it into the message leaves the ring. */
    r->head = (r->head + json_array_size(list)) % r->cap;
    r->n -= json_array_size(list);
    r->dropped_reported += dropped;
    r->seq++;
out:
    json_decref(list);
    json_decref(batch);
    return text;
}
