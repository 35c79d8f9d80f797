/*
 * lifecycle/keys.c: key fingerprints taken by an older rule brought to the current one.
 *
 * A store written before the canonical rule (ca_pubkey_fingerprint: named curve, uncompressed
 * point) holds fingerprints of whatever encoding a CSR used: an EC key certified with explicit
 * parameters or a compressed point then has another fingerprint than the same key sent today,
 * and the key-compromise and one-key-one-asset checks would miss it. Every opening of a data
 * directory calls lifecycle_keys_canonical; the first one recomputes every certificate's
 * fingerprint from its PEM in one transaction and records that it did (meta
 * "keys.fingerprint"), so a kill at any point leaves either nothing or all of it done.
 */
#include "lifecycle.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "inventory.h"

#define KEYS_META      "keys.fingerprint"
#define KEYS_CANONICAL "canonical-v1"

struct refp {
    size_t n, cap;
    int oom, bad;
    struct {
        char serial[PROTO_SERIAL_HEX_MAX + 1];
        char fp[PROTO_FP_HEX_LEN + 1];
    } * v;
};

static int refp_cb(const struct inventory_cert *c, void *ctx)
{
    struct refp *r = ctx;
    char fp[PROTO_FP_HEX_LEN + 1];
    X509 *x = NULL;
    BIO *b;

    if (c->pem == NULL || (b = BIO_new_mem_buf(c->pem, -1)) == NULL) {
        r->bad++;
        return 0;
    }
    x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (x == NULL || ca_pubkey_fingerprint(X509_get0_pubkey(x), fp) != MQPKI_OK) {
        /* Left as it is: a record that does not parse is no key to compare. */
        r->bad++;
        X509_free(x);
        return 0;
    }
    X509_free(x);
    if (strcmp(fp, c->key_fp) == 0)
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 8;
        void *v = realloc(r->v, cap * sizeof(*r->v));
        if (v == NULL) {
            r->oom = 1;
            return 1;
        }
        r->v = v;
        r->cap = cap;
    }
    snprintf(r->v[r->n].serial, sizeof(r->v[0].serial), "%s", c->serial);
    snprintf(r->v[r->n].fp, sizeof(r->v[0].fp), "%s", fp);
    r->n++;
    return 0;
}

static int done_already(struct inventory *inv)
{
    char v[32];

    return inventory_meta_get(inv, KEYS_META, v, sizeof(v)) == MQPKI_OK &&
           strcmp(v, KEYS_CANONICAL) == 0;
}

int lifecycle_keys_canonical(struct inventory *inv, int *changed)
{
    struct refp r = {0};
    int rc, in_tx = 0;

    if (changed != NULL)
        *changed = 0;
    if (done_already(inv))
        return MQPKI_OK;
    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        return rc;
    in_tx = 1;
    /* Another process may have done it while this one waited for the write lock. */
    if (done_already(inv))
        goto out;
    if ((rc = inventory_cert_list(inv, NULL, -1, 1, refp_cb, &r)) != MQPKI_OK)
        goto out;
    if (r.oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "out of memory recomputing key fingerprints");
        goto out;
    }
    for (size_t i = 0; i < r.n; i++)
        if ((rc = inventory_cert_set_key_fp(inv, r.v[i].serial, r.v[i].fp, "system")) != MQPKI_OK)
            goto out;
    if ((rc = inventory_meta_set(inv, KEYS_META, KEYS_CANONICAL)) != MQPKI_OK ||
        (rc = inventory_commit(inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
    if (r.n > 0 || r.bad > 0)
        mqpki_log(MQPKI_LOG_INFO,
                  "key fingerprints: %zu certificate%s brought to the canonical form "
                  "(named curve, uncompressed point)%s",
                  r.n, r.n == 1 ? "" : "s", r.bad > 0 ? "; some records did not parse" : "");
    if (changed != NULL)
        *changed = (int)r.n;
out:
    if (in_tx)
        inventory_rollback(inv);
    free(r.v);
    return rc;
}
