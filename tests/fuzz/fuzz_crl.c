/* fuzz_crl: a payload on mqpki/v1/crl/full or /delta, through what the broker plugin does with
 * it (broker/plugin.c apply_crl): parse, verify against the issuing CA, place it in the CRL
 * number sequence, build the revoked-serial set and look serials up in it. The trusted CA is
 * tests/fuzz/crl-ca/ca.pem (the seeds in corpus/crl/ are signed by its key). So that the
 * serial-set code sees hostile entries too, a CRL that parses but does not verify is applied
 * as well, with numbers taken from the input. The same payload also goes through the plugin's
 * DER walker (proto_crl_der_*, revset_load_der); where OpenSSL's parser and the walker both take
 * it, they must find the same serials with the same removeFromCRL flags. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "broker.h"
#include "proto.h"

static STACK_OF(X509) * cas;
static struct revset *held; /* a full CRL 5 held, as a running broker would */

static void setup(void)
{
    char why[256];
    unsigned char der[4096];
    struct proto_crl_info info;
    struct revset *next = NULL;
    X509_CRL *crl = NULL;
    size_t len;
    FILE *f;

    if (proto_crl_load_cas(FUZZ_DIR "/crl-ca/ca.pem", &cas, why, sizeof(why)) != 0)
        __builtin_trap();
    held = revset_new_empty();
    f = fopen(FUZZ_DIR "/corpus/crl/full.der", "rb");
    if (held == NULL || f == NULL)
        __builtin_trap();
    len = fread(der, 1, sizeof(der), f);
    fclose(f);
    if (proto_crl_parse(der, len, &crl, why, sizeof(why)) != 0 ||
        proto_crl_verify(crl, cas, &info, why, sizeof(why)) != 0 ||
        revset_apply(NULL, crl, &info, &next) != 0)
        __builtin_trap();
    revset_free(held);
    held = next;
    X509_CRL_free(crl);
}

static void apply(X509_CRL *crl, const struct proto_crl_info *info)
{
    struct revset *next = NULL;
    unsigned char issuer[PROTO_ISSUER_LEN], key[PROTO_SERIAL_KEY_LEN];
    STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);

    if (revset_apply(held, crl, info, &next) != 0)
        return;
    memcpy(issuer, info->issuer, sizeof(issuer));
    for (int i = 0; i < sk_X509_REVOKED_num(revoked) && i < 64; i++) {
        X509_REVOKED *r = sk_X509_REVOKED_value(revoked, i);
        ASN1_ENUMERATED *reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
        int remove = reason != NULL && ASN1_ENUMERATED_get(reason) == CRL_REASON_REMOVE_FROM_CRL;
        ASN1_ENUMERATED_free(reason);
        proto_serial_key(X509_REVOKED_get0_serialNumber(r), key);
        /* A listed serial of a full CRL must be found (removeFromCRL entries mean nothing in a
         * full CRL and are skipped by design). */
        if (info->base < 0 && !remove && !revset_is_revoked(next, issuer, key))
            __builtin_trap();
    }
    (void)revset_count(next);
    revset_free(next);
}

/* The first 64 entries as the walker reads them. */
struct walked {
    unsigned char key[64][PROTO_SERIAL_KEY_LEN];
    int remove[64];
    size_t n;
};

static int walk_one(const unsigned char key[PROTO_SERIAL_KEY_LEN], int remove, void *ctx)
{
    struct walked *w = ctx;

    if (w->n < 64) {
        memcpy(w->key[w->n], key, PROTO_SERIAL_KEY_LEN);
        w->remove[w->n] = remove;
    }
    w->n++;
    return 0;
}

/* The walker against OpenSSL's parse of the same bytes (crl may be NULL: OpenSSL refused). */
static void der_path(const uint8_t *data, size_t size, X509_CRL *crl)
{
    struct proto_crl_der d;
    struct proto_crl_info info;
    struct revset *next = NULL;
    struct walked w;
    EVP_PKEY *key = NULL;
    char why[512];
    size_t n = 0;

    if (proto_crl_der_split(data, size, &d, why, sizeof(why)) != 0)
        return;
    memset(&w, 0, sizeof(w));
    if (proto_crl_der_entries(&d, walk_one, &w, &n, why, sizeof(why)) == 0 && crl != NULL) {
        STACK_OF(X509_REVOKED) *revoked = X509_CRL_get_REVOKED(crl);
        int m = sk_X509_REVOKED_num(revoked);
        if (n != (size_t)(m > 0 ? m : 0) || w.n != n)
            __builtin_trap();
        for (int i = 0; i < m && i < 64; i++) {
            X509_REVOKED *r = sk_X509_REVOKED_value(revoked, i);
            unsigned char k[PROTO_SERIAL_KEY_LEN];
            ASN1_ENUMERATED *reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
            int remove =
                reason != NULL && ASN1_ENUMERATED_get(reason) == CRL_REASON_REMOVE_FROM_CRL;
            ASN1_ENUMERATED_free(reason);
            proto_serial_key(X509_REVOKED_get0_serialNumber(r), k);
            if (memcmp(k, w.key[i], sizeof(k)) != 0 || remove != w.remove[i])
                __builtin_trap();
        }
    }
    if (proto_crl_der_check(&d, cas, &key, &info, why, sizeof(why)) == 0 &&
        proto_crl_order(&info, revset_full_number(held), revset_delta_number(held), why,
                        sizeof(why)) != PROTO_CRL_REFUSE &&
        revset_load_der(held, &d, key, &info, &next, why, sizeof(why)) == 0)
        (void)revset_count(next);
    revset_free(next);
    proto_crl_der_clear(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_crl_info info;
    X509_CRL *crl = NULL;
    char why[512];

    if (cas == NULL)
        setup();
    /* The full CRL topic carries a CRL or a notice naming one (proto_crl_notice). */
    if (proto_crl_notice_is(data, size)) {
        struct proto_crl_notice n;
        if (proto_crl_notice_parse(data, size, &n, why, sizeof(why)) == 0 &&
            (!proto_crl_url_ok(n.url) || n.size == 0 || n.size > PROTO_CRL_MAX_DER || n.number < 0))
            __builtin_trap();
        return 0;
    }
    if (proto_crl_parse(data, size, &crl, why, sizeof(why)) != 0)
        crl = NULL;
    der_path(data, size, crl);
    if (crl == NULL)
        goto out;
    memset(&info, 0, sizeof(info));
    if (proto_crl_verify(crl, cas, &info, why, sizeof(why)) == 0) {
        if (proto_crl_order(&info, revset_full_number(held), revset_delta_number(held), why,
                            sizeof(why)) != PROTO_CRL_REFUSE)
            apply(crl, &info);
    } else {
        memset(&info, 0, sizeof(info));
        info.number = size > 0 ? data[0] : 1;
        info.base = size > 1 && (data[1] & 1) ? data[1] : -1;
        if (proto_name_digest(X509_CRL_get_issuer(crl), info.issuer) == 0)
            apply(crl, &info);
    }
out:
    X509_CRL_free(crl);
    return 0;
}
