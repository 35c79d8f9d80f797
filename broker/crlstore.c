/* broker: the revset, the revoked serials of the held full CRL and delta CRL. */
#include <stdlib.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "broker.h"

/* One held CRL: its serials (revoked or on hold) and, for a delta, those it takes off. */
struct revpart {
    struct serialset *listed;
    struct serialset *removed; /* delta only: removeFromCRL entries (RFC 5280 5.3.1) */
    unsigned char issuer[PROTO_ISSUER_LEN];
    int64_t number, base, next_update;
    int refs; /* the plugin runs on Mosquitto's one thread; plain counting is enough */
};

/* Deltas held ahead of their bases at most: past this many full CRLs in a row not in force
 * (a notice's URL down for hours, every failed fetch logged), the oldest base's delta goes. */
#define AHEAD_MAX 16

struct revset {
    struct revpart *full;  /* NULL: no CRL held */
    struct revpart *delta; /* NULL: no delta held */
    /* Verified deltas whose base is not in force yet, their serials only: the newest of each
     * such base. A delta lists only what changed since its base, so one on a newer base does
     * not list what one on an older base did: every base's newest is kept until a full CRL at
     * or above that base is in force. */
    struct revpart *ahead[AHEAD_MAX];
};

/* Who frees the table of a part nobody holds any more (revset_set_reaper); NULL: at once. */
static void (*reaper)(struct serialset *s, void *ctx);
static void *reaper_ctx;

void revset_set_reaper(void (*fn)(struct serialset *s, void *ctx), void *ctx)
{
    reaper = fn;
    reaper_ctx = ctx;
}

static void set_release(struct serialset *s)
{
    if (s == NULL)
        return;
    if (reaper != NULL)
        reaper(s, reaper_ctx);
    else
        serialset_free(s);
}

static void part_unref(struct revpart *p)
{
    if (p == NULL || --p->refs > 0)
        return;
    set_release(p->listed);
    set_release(p->removed);
    free(p);
}

static struct revpart *part_ref(struct revpart *p)
{
    if (p != NULL)
        p->refs++;
    return p;
}

static int part_build(X509_CRL *crl, const struct proto_crl_info *info, struct revpart **out)
{
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
    unsigned char key[PROTO_SERIAL_KEY_LEN];
    struct revpart *p;
    int rc = -1;

    *out = NULL;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        goto out;
    p->refs = 1;
    p->number = info->number;
    p->base = info->base;
    p->next_update = info->next_update;
    memcpy(p->issuer, info->issuer, sizeof(p->issuer));
    if ((p->listed = serialset_new(info->n_entries)) == NULL ||
        (p->removed = serialset_new(0)) == NULL)
        goto out;
    for (int i = 0; i < sk_X509_REVOKED_num(revoked); i++) {
        X509_REVOKED *r = sk_X509_REVOKED_value(revoked, i);
        ASN1_ENUMERATED *reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
        int remove = reason != NULL && ASN1_ENUMERATED_get(reason) == CRL_REASON_REMOVE_FROM_CRL;
        ASN1_ENUMERATED_free(reason);
        proto_serial_key(X509_REVOKED_get0_serialNumber(r), key);
        /* removeFromCRL only means something in a delta; in a full CRL the entry is ignored. */
        if (remove && info->base >= 0 && serialset_add(p->removed, key) != 0)
            goto out;
        if (!remove && serialset_add(p->listed, key) != 0)
            goto out;
    }
    *out = p;
    p = NULL;
    rc = 0;
out:
    part_unref(p);
    return rc;
}

/* An entry of a CRL read from its DER (proto_crl_der_entries) into a part. */
struct fill {
    struct revpart *p;
    int delta;
};

static int fill_one(const unsigned char key[PROTO_SERIAL_KEY_LEN], int remove, void *ctx)
{
    struct fill *f = ctx;

    /* removeFromCRL only means something in a delta; in a full CRL the entry is ignored. */
    if (remove)
        return f->delta ? serialset_add(f->p->removed, key) : 0;
    return serialset_add(f->p->listed, key);
}

int revpart_from_der(const struct proto_crl_der *d, const struct proto_crl_info *info,
                     struct revpart **out, char *why, size_t why_len)
{
    struct revpart *p;
    struct fill f;
    size_t n = 0;
    int rc = -1;

    *out = NULL;
    /* A first walk counts (and checks) the entries, so the set is sized once: growing it would
     * hold the old and the new table at once. */
    if (proto_crl_der_entries(d, NULL, NULL, &n, why, why_len) != 0)
        return -1;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        goto nomem;
    p->refs = 1;
    p->number = info->number;
    p->base = info->base;
    p->next_update = info->next_update;
    memcpy(p->issuer, info->issuer, sizeof(p->issuer));
    if ((p->listed = serialset_new(n)) == NULL || (p->removed = serialset_new(0)) == NULL)
        goto nomem;
    f.p = p;
    f.delta = info->base >= 0;
    if (proto_crl_der_entries(d, fill_one, &f, NULL, why, why_len) != 0)
        goto out;
    *out = p;
    p = NULL;
    rc = 0;
    goto out;
nomem:
    snprintf(why, why_len, "CRL %lld: out of memory", (long long)info->number);
out:
    part_unref(p);
    return rc;
}

void revpart_free(struct revpart *p)
{
    part_unref(p);
}

int64_t revpart_number(const struct revpart *p)
{
    return p != NULL ? p->number : -1;
}

int revset_with(const struct revset *cur, struct revpart *p, struct revset **out)
{
    struct revset *r;

    *out = NULL;
    if ((r = revset_new_empty()) == NULL)
        return -1;
    if (p->base < 0) {
        r->full = p;
        /* The held delta still extends the new full CRL only if it is newer and based on it
         * or an older one (RFC 5280 5.2.4). */
        if (cur != NULL && cur->delta != NULL && cur->delta->number > p->number &&
            cur->delta->base <= p->number)
            r->delta = part_ref(cur->delta);
    } else {
        r->full = cur != NULL ? part_ref(cur->full) : NULL;
        r->delta = p;
    }
    /* A delta held ahead of its base stays until that base is in force (a full CRL numbered at
     * or above its base), or a newer delta comes. */
    for (int i = 0, j = 0; cur != NULL && i < AHEAD_MAX; i++) {
        const struct revpart *a = cur->ahead[i];
        if (a != NULL && (p->base < 0 ? a->base > p->number : a->number > p->number))
            r->ahead[j++] = part_ref(cur->ahead[i]);
    }
    *out = r;
    return 0;
}

int revset_with_ahead(const struct revset *cur, struct revpart *p, struct revset **out)
{
    struct revset *r;

    *out = NULL;
    if (cur == NULL || p->base < 0 || (r = revset_new_empty()) == NULL)
        return -1;
    r->full = part_ref(cur->full);
    r->delta = part_ref(cur->delta);
    r->ahead[0] = p;
    for (int i = 0, j = 1; i < AHEAD_MAX; i++) {
        struct revpart *a = cur->ahead[i];
        int low = 1;
        /* A delta on the same base, older: p lists all it did. */
        if (a == NULL || (a->base == p->base && a->number <= p->number))
            continue;
        if (j < AHEAD_MAX) {
            r->ahead[j++] = part_ref(a);
            continue;
        }
        /* Full: the one on the oldest base goes (a lower base than every kept one). */
        for (int k = 1; k < AHEAD_MAX; k++)
            if (r->ahead[k]->base < r->ahead[low]->base)
                low = k;
        if (a->base > r->ahead[low]->base) {
            part_unref(r->ahead[low]);
            r->ahead[low] = part_ref(a);
        }
    }
    *out = r;
    return 0;
}

int revset_load_der(const struct revset *cur, const struct proto_crl_der *d, EVP_PKEY *key,
                    const struct proto_crl_info *info, struct revset **out, char *why,
                    size_t why_len)
{
    struct revpart *p = NULL;

    *out = NULL;
    if (proto_crl_der_verify_sig(d, key, why, why_len) != 0 ||
        revpart_from_der(d, info, &p, why, why_len) != 0)
        return -1;
    if (revset_with(cur, p, out) != 0) {
        part_unref(p);
        snprintf(why, why_len, "CRL %lld: out of memory", (long long)info->number);
        return -1;
    }
    return 0;
}

struct revset *revset_new_empty(void)
{
    return calloc(1, sizeof(struct revset));
}

void revset_free(struct revset *r)
{
    if (r == NULL)
        return;
    part_unref(r->full);
    part_unref(r->delta);
    for (int i = 0; i < AHEAD_MAX; i++)
        part_unref(r->ahead[i]);
    free(r);
}

int revset_apply(const struct revset *cur, X509_CRL *crl, const struct proto_crl_info *info,
                 struct revset **out)
{
    struct revpart *p = NULL;

    *out = NULL;
    if (part_build(crl, info, &p) != 0)
        return -1;
    if (revset_with(cur, p, out) != 0) {
        part_unref(p);
        return -1;
    }
    return 0;
}

int64_t revset_full_number(const struct revset *r)
{
    return r != NULL && r->full != NULL ? r->full->number : -1;
}

int64_t revset_delta_number(const struct revset *r)
{
    return r != NULL && r->delta != NULL ? r->delta->number : -1;
}

int64_t revset_next_update(const struct revset *r)
{
    return r != NULL && r->full != NULL ? r->full->next_update : 0;
}

size_t revset_count(const struct revset *r)
{
    size_t n = 0;

    if (r != NULL && r->full != NULL)
        n += serialset_count(r->full->listed);
    if (r != NULL && r->delta != NULL)
        n += serialset_count(r->delta->listed);
    return n;
}

int revset_is_revoked(const struct revset *r, const unsigned char issuer[PROTO_ISSUER_LEN],
                      const unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    int in_full = 0, revoked = 0;

    if (r == NULL)
        goto out;
    /* Listed by a delta whose base is still loading: revoked now. What it takes off waits for
     * that base to be in force (a hold lifted late is harmless, a revocation lost is not). */
    /* Packed from the first slot: the usual connect stops at ahead[0], empty. */
    for (int i = 0; i < AHEAD_MAX && r->ahead[i] != NULL; i++) {
        const struct revpart *a = r->ahead[i];
        if (memcmp(a->issuer, issuer, PROTO_ISSUER_LEN) == 0 && serialset_has(a->listed, key)) {
            revoked = 1;
            goto out;
        }
    }
    if (r->full == NULL)
        goto out;
    /* A serial only means something next to the CA that issued it. */
    if (memcmp(r->full->issuer, issuer, PROTO_ISSUER_LEN) == 0)
        in_full = serialset_has(r->full->listed, key);
    if (r->delta != NULL && memcmp(r->delta->issuer, issuer, PROTO_ISSUER_LEN) == 0) {
        if (serialset_has(r->delta->listed, key)) {
            revoked = 1;
            goto out;
        }
        if (serialset_has(r->delta->removed, key))
            in_full = 0;
    }
    revoked = in_full;
out:
    return revoked;
}
