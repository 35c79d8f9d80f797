/* broker: the revoked-serial set, an open-addressing hash table of 16-byte keys. */
#include <stdlib.h>
#include <string.h>

#include "broker.h"

struct serialset {
    unsigned char (*slot)[PROTO_SERIAL_KEY_LEN];
    size_t cap;   /* power of two */
    size_t count; /* keys in slots, the zero key excluded */
    int has_zero; /* the all-zero key marks an empty slot, so it is held apart */
};

static const unsigned char zero_key[PROTO_SERIAL_KEY_LEN];

/* splitmix64 finalizer over both halves: CA serials are random, but other CAs count up. */
static uint64_t mix(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static size_t hash(const unsigned char key[PROTO_SERIAL_KEY_LEN], size_t cap)
{
    uint64_t a, b;

    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    return (size_t)(mix(a ^ mix(b)) & (cap - 1));
}

static int alloc_table(struct serialset *s, size_t cap)
{
    s->slot = calloc(cap, PROTO_SERIAL_KEY_LEN);
    if (s->slot == NULL)
        return -1;
    s->cap = cap;
    return 0;
}

struct serialset *serialset_new(size_t expected)
{
    struct serialset *s = calloc(1, sizeof(*s));
    size_t cap = 16;

    if (s == NULL)
        goto out;
    /* Load factor at most 1/2 keeps linear probes short. */
    while (cap < 2 * expected && cap < ((size_t)1 << 40))
        cap <<= 1;
    if (alloc_table(s, cap) != 0) {
        free(s);
        s = NULL;
    }
out:
    return s;
}

void serialset_free(struct serialset *s)
{
    if (s == NULL)
        return;
    free(s->slot);
    free(s);
}

static void insert_slot(struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    size_t i = hash(key, s->cap);

    while (memcmp(s->slot[i], zero_key, PROTO_SERIAL_KEY_LEN) != 0) {
        if (memcmp(s->slot[i], key, PROTO_SERIAL_KEY_LEN) == 0)
            return;
        i = (i + 1) & (s->cap - 1);
    }
    memcpy(s->slot[i], key, PROTO_SERIAL_KEY_LEN);
    s->count++;
}

static int grow(struct serialset *s)
{
    struct serialset bigger = {0};
    int rc = -1;

    if (alloc_table(&bigger, s->cap * 2) != 0)
        goto out;
    for (size_t i = 0; i < s->cap; i++)
        if (memcmp(s->slot[i], zero_key, PROTO_SERIAL_KEY_LEN) != 0)
            insert_slot(&bigger, s->slot[i]);
    free(s->slot);
    s->slot = bigger.slot;
    s->cap = bigger.cap;
    rc = 0;
out:
    return rc;
}

int serialset_add(struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    int rc = 0;

    if (memcmp(key, zero_key, PROTO_SERIAL_KEY_LEN) == 0) {
        s->has_zero = 1;
        goto out;
    }
    if (2 * (s->count + 1) > s->cap && (rc = grow(s)) != 0)
        goto out;
    insert_slot(s, key);
out:
    return rc;
}

static size_t find(const struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    size_t i = hash(key, s->cap);

    while (memcmp(s->slot[i], zero_key, PROTO_SERIAL_KEY_LEN) != 0) {
        if (memcmp(s->slot[i], key, PROTO_SERIAL_KEY_LEN) == 0)
            return i;
        i = (i + 1) & (s->cap - 1);
    }
    return s->cap;
}

void serialset_remove(struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    size_t i, j;

    if (memcmp(key, zero_key, PROTO_SERIAL_KEY_LEN) == 0) {
        s->has_zero = 0;
        return;
    }
    if ((i = find(s, key)) == s->cap)
        return;
    /* Backward-shift deletion: no tombstones, so lookups stay O(1) after many removals. */
    memset(s->slot[i], 0, PROTO_SERIAL_KEY_LEN);
    s->count--;
    j = i;
    for (;;) {
        size_t home;
        j = (j + 1) & (s->cap - 1);
        if (memcmp(s->slot[j], zero_key, PROTO_SERIAL_KEY_LEN) == 0)
            break;
        home = hash(s->slot[j], s->cap);
        /* Move slot j back to i unless its home lies cyclically in (i, j]. */
        if ((i <= j) ? (i < home && home <= j) : (i < home || home <= j))
            continue;
        memcpy(s->slot[i], s->slot[j], PROTO_SERIAL_KEY_LEN);
        memset(s->slot[j], 0, PROTO_SERIAL_KEY_LEN);
        i = j;
    }
}

int serialset_has(const struct serialset *s, const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    if (s == NULL)
        return 0;
    if (memcmp(key, zero_key, PROTO_SERIAL_KEY_LEN) == 0)
        return s->has_zero;
    return find(s, key) != s->cap;
}

size_t serialset_count(const struct serialset *s)
{
    return s == NULL ? 0 : s->count + (size_t)s->has_zero;
}

size_t serialset_bytes(const struct serialset *s)
{
    return s == NULL ? 0 : s->cap * PROTO_SERIAL_KEY_LEN + sizeof(*s);
}
