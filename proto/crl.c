/* crlcheck: CRL parsing, signature and ordering checks shared by the plugin and crl-sync. */
#include "proto.h"
#include "proto_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

int proto_refuse(char *why, size_t why_len, const char *fmt, ...)
{
    va_list ap;

    if (why != NULL && why_len > 0) {
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int is_self_signed(X509 *c)
{
    return X509_NAME_cmp(X509_get_subject_name(c), X509_get_issuer_name(c)) == 0;
}

int proto_crl_load_cas(const char *path, STACK_OF(X509) * *out, char *why, size_t why_len)
{
    STACK_OF(X509) *all = NULL, *keep = NULL;
    X509 *c = NULL;
    BIO *bio = NULL;
    int rc = -1, have_issuing = 0;

    *out = NULL;
    if ((bio = BIO_new_file(path, "r")) == NULL) {
        proto_refuse(why, why_len, "%s: cannot read the CA file", path);
        goto out;
    }
    if ((all = sk_X509_new_null()) == NULL || (keep = sk_X509_new_null()) == NULL)
        goto nomem;
    /* A bounded loop: a CA bundle with more than 64 certificates is not ours. */
    while (sk_X509_num(all) < 64 && (c = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        if (X509_check_ca(c) == 0) {
            X509_free(c);
            continue;
        }
        if (!is_self_signed(c))
            have_issuing = 1;
        if (!sk_X509_push(all, c)) {
            X509_free(c);
            goto nomem;
        }
    }
    c = NULL;
    for (int i = 0; i < sk_X509_num(all); i++) {
        X509 *ca = sk_X509_value(all, i);
        if (have_issuing && is_self_signed(ca))
            continue;
        if (!X509_up_ref(ca) || !sk_X509_push(keep, ca)) {
            X509_free(ca);
            goto nomem;
        }
    }
    if (sk_X509_num(keep) == 0) {
        proto_refuse(why, why_len, "%s: no CA certificate in the file", path);
        goto out;
    }
    *out = keep;
    keep = NULL;
    rc = 0;
    goto out;
nomem:
    proto_refuse(why, why_len, "%s: out of memory", path);
out:
    sk_X509_pop_free(all, X509_free);
    sk_X509_pop_free(keep, X509_free);
    BIO_free(bio);
    return rc;
}

/* The CA certificates of a PEM bundle (at most 64), split into self-signed ones (roots) and the
 * others; either out may be NULL. */
static int pem_cas(BIO *bio, STACK_OF(X509) * *issuing, STACK_OF(X509) * *roots, char *why,
                   size_t why_len)
{
    STACK_OF(X509) *iss = sk_X509_new_null(), *rts = sk_X509_new_null();
    X509 *c;
    int n = 0, rc = -1;

    if (iss == NULL || rts == NULL)
        goto nomem;
    while (n++ < 64 && (c = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        STACK_OF(X509) *to = is_self_signed(c) ? rts : iss;
        if (X509_check_ca(c) == 0) {
            X509_free(c);
            continue;
        }
        if (!sk_X509_push(to, c)) {
            X509_free(c);
            goto nomem;
        }
    }
    if (issuing != NULL) {
        *issuing = iss;
        iss = NULL;
    }
    if (roots != NULL) {
        *roots = rts;
        rts = NULL;
    }
    rc = 0;
    goto out;
nomem:
    proto_refuse(why, why_len, "out of memory");
out:
    sk_X509_pop_free(iss, X509_free);
    sk_X509_pop_free(rts, X509_free);
    return rc;
}

int proto_ca_roots_load(const char *path, STACK_OF(X509) * *out, char *why, size_t why_len)
{
    BIO *bio = BIO_new_file(path, "r");
    int rc;

    *out = NULL;
    if (bio == NULL)
        return proto_refuse(why, why_len, "%s: cannot read the CA file", path);
    rc = pem_cas(bio, NULL, out, why, why_len);
    BIO_free(bio);
    return rc;
}

int proto_issuers_verify(const void *pem, size_t len, STACK_OF(X509) * roots, STACK_OF(X509) * *out,
                         char *why, size_t why_len)
{
    STACK_OF(X509) *all = NULL, *keep = NULL;
    BIO *bio = NULL;
    int rc = -1;

    *out = NULL;
    if (len == 0 || len > PROTO_ISSUERS_MAX)
        return proto_refuse(why, why_len, "%zu bytes: not an issuing CA list", len);
    if ((bio = BIO_new_mem_buf(pem, (int)len)) == NULL ||
        pem_cas(bio, &all, NULL, why, why_len) != 0)
        goto out;
    if ((keep = sk_X509_new_null()) == NULL) {
        proto_refuse(why, why_len, "out of memory");
        goto out;
    }
    /* Only what a root we hold certified, allowed to sign CRLs: the list is a hint, the
     * signatures are the trust. */
    for (int i = 0; i < sk_X509_num(all); i++) {
        X509 *c = sk_X509_value(all, i);
        int ok = 0;
        for (int r = 0; r < sk_X509_num(roots) && !ok; r++) {
            X509 *root = sk_X509_value(roots, r);
            ok = X509_check_issued(root, c) == X509_V_OK &&
                 X509_verify(c, X509_get0_pubkey(root)) == 1;
        }
        if (ok && (X509_get_extension_flags(c) & EXFLAG_KUSAGE) &&
            !(X509_get_key_usage(c) & KU_CRL_SIGN))
            ok = 0;
        if (!ok)
            continue;
        if (!X509_up_ref(c) || !sk_X509_push(keep, c)) {
            X509_free(c);
            proto_refuse(why, why_len, "out of memory");
            goto out;
        }
    }
    if (sk_X509_num(keep) == 0) {
        proto_refuse(why, why_len, "no issuing CA in the list is certified by a trusted root");
        goto out;
    }
    *out = keep;
    keep = NULL;
    rc = 0;
out:
    sk_X509_pop_free(all, X509_free);
    sk_X509_pop_free(keep, X509_free);
    BIO_free(bio);
    return rc;
}

int proto_crl_parse(const unsigned char *der, size_t len, X509_CRL **out, char *why, size_t why_len)
{
    const unsigned char *p = der;
    X509_CRL *crl = NULL;
    int rc = -1;

    *out = NULL;
    if (der == NULL || len == 0) {
        proto_refuse(why, why_len, "empty payload");
        goto out;
    }
    if (len > PROTO_CRL_MAX_DER) {
        proto_refuse(why, why_len, "payload of %zu bytes exceeds the CRL limit of %u", len,
                     PROTO_CRL_MAX_DER);
        goto out;
    }
    crl = d2i_X509_CRL(NULL, &p, (long)len);
    if (crl == NULL) {
        proto_refuse(why, why_len, "not a DER CRL (truncated or garbage, %zu bytes)", len);
        goto out;
    }
    /* Trailing bytes would let two different payloads carry the same signed CRL. */
    if ((size_t)(p - der) != len) {
        proto_refuse(why, why_len, "%zu bytes after the DER CRL", len - (size_t)(p - der));
        goto out;
    }
    *out = crl;
    crl = NULL;
    rc = 0;
out:
    X509_CRL_free(crl);
    return rc;
}

int proto_name_digest(const X509_NAME *name, unsigned char out[PROTO_ISSUER_LEN])
{
    unsigned int n = 0;

    if (X509_NAME_digest(name, EVP_sha256(), out, &n) != 1 || n != PROTO_ISSUER_LEN)
        return -1;
    return 0;
}

/* The CA of cas that issued crl: same subject as the CRL issuer, and SKI = AKI when given. */
static X509 *find_issuer(X509_CRL *crl, STACK_OF(X509) * cas)
{
    AUTHORITY_KEYID *akid = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
    X509 *found = NULL;

    for (int i = 0; i < sk_X509_num(cas) && found == NULL; i++) {
        X509 *ca = sk_X509_value(cas, i);
        const ASN1_OCTET_STRING *ski;
        if (X509_NAME_cmp(X509_get_subject_name(ca), X509_CRL_get_issuer(crl)) != 0)
            continue;
        if (akid != NULL && akid->keyid != NULL) {
            ski = X509_get0_subject_key_id(ca);
            if (ski == NULL || ASN1_OCTET_STRING_cmp(ski, akid->keyid) != 0)
                continue;
        }
        found = ca;
    }
    AUTHORITY_KEYID_free(akid);
    return found;
}

static int int_ext(X509_CRL *crl, int nid, int64_t *out, int *present)
{
    int crit = -1;
    ASN1_INTEGER *v = X509_CRL_get_ext_d2i(crl, nid, &crit, NULL);
    int rc = 0;

    *present = v != NULL;
    *out = -1;
    if (v == NULL) {
        /* -1: absent; anything else: present but unreadable (or repeated). */
        rc = crit == -1 ? 0 : -1;
        goto out;
    }
    if (ASN1_INTEGER_get_int64(out, v) != 1 || *out < 0)
        rc = -1;
out:
    ASN1_INTEGER_free(v);
    return rc;
}

int proto_crl_issuer_key(X509_CRL *crl, STACK_OF(X509) * cas, EVP_PKEY **key, char *why,
                         size_t why_len)
{
    X509 *ca;

    *key = NULL;
    if ((ca = find_issuer(crl, cas)) == NULL)
        return proto_refuse(why, why_len,
                            "CRL signed by an unknown CA (issuer not in the trusted CA file)");
    if ((X509_get_extension_flags(ca) & EXFLAG_KUSAGE) && !(X509_get_key_usage(ca) & KU_CRL_SIGN))
        return proto_refuse(why, why_len,
                            "CRL issuer's certificate lacks keyUsage cRLSign (RFC 5280 4.2.1.3)");
    if ((*key = X509_get0_pubkey(ca)) == NULL)
        return proto_refuse(why, why_len, "CRL issuer's public key cannot be read");
    return 0;
}

int proto_crl_verify(X509_CRL *crl, STACK_OF(X509) * cas, struct proto_crl_info *info, char *why,
                     size_t why_len)
{
    EVP_PKEY *pub;
    int rc = -1;

    memset(info, 0, sizeof(*info));
    info->base = -1;
    if (proto_crl_issuer_key(crl, cas, &pub, why, why_len) != 0)
        goto out;
    if (X509_CRL_verify(crl, pub) != 1) {
        proto_refuse(why, why_len, "CRL signature does not verify against the issuing CA");
        goto out;
    }
    rc = proto_crl_describe(crl, info, why, why_len);
out:
    return rc;
}

int proto_crl_describe(X509_CRL *crl, struct proto_crl_info *info, char *why, size_t why_len)
{
    int present, n, rc = -1;

    memset(info, 0, sizeof(*info));
    info->base = -1;
    {
        AUTHORITY_KEYID *akid = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
        if (akid != NULL && akid->keyid != NULL && akid->keyid->length > 0 &&
            (size_t)akid->keyid->length <= sizeof(info->akid)) {
            memcpy(info->akid, akid->keyid->data, (size_t)akid->keyid->length);
            info->akid_len = (size_t)akid->keyid->length;
        }
        AUTHORITY_KEYID_free(akid);
    }
    if (X509_CRL_get_version(crl) != 1) {
        proto_refuse(why, why_len, "CRL is not v2 (RFC 5280 5.1.2.1)");
        goto out;
    }
    if (int_ext(crl, NID_crl_number, &info->number, &present) != 0 || !present) {
        proto_refuse(why, why_len, "CRL without a readable CRL number (RFC 5280 5.2.3)");
        goto out;
    }
    if (int_ext(crl, NID_delta_crl, &info->base, &present) != 0) {
        proto_refuse(why, why_len, "CRL %lld: unreadable deltaCRLIndicator (RFC 5280 5.2.4)",
                     (long long)info->number);
        goto out;
    }
    if (proto_asn1_time(X509_CRL_get0_lastUpdate(crl), &info->this_update) != 0) {
        proto_refuse(why, why_len, "CRL %lld: unreadable thisUpdate", (long long)info->number);
        goto out;
    }
    if (X509_CRL_get0_nextUpdate(crl) != NULL &&
        proto_asn1_time(X509_CRL_get0_nextUpdate(crl), &info->next_update) != 0) {
        proto_refuse(why, why_len, "CRL %lld: unreadable nextUpdate", (long long)info->number);
        goto out;
    }
    if (proto_name_digest(X509_CRL_get_issuer(crl), info->issuer) != 0) {
        proto_refuse(why, why_len, "CRL issuer name cannot be encoded");
        goto out;
    }
    /* An empty CRL has no list at all: sk_..._num(NULL) is -1. */
    n = sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl));
    info->n_entries = n > 0 ? (size_t)n : 0;
    rc = 0;
out:
    return rc;
}

enum proto_crl_order proto_crl_order(const struct proto_crl_info *info, int64_t held_full,
                                     int64_t held_delta, char *why, size_t why_len)
{
    enum proto_crl_order v = PROTO_CRL_REFUSE;
    long long n = (long long)info->number;

    if (info->base < 0) {
        if (info->number < held_full)
            proto_refuse(why, why_len,
                         "CRL %lld refused: CRL number lower than held %lld "
                         "(RFC 5280 5.2.3)",
                         n, (long long)held_full);
        else
            v = info->number == held_full ? PROTO_CRL_SAME : PROTO_CRL_ACCEPT;
    } else if (held_full < 0) {
        proto_refuse(why, why_len, "delta CRL %lld refused: no full CRL held to apply it to", n);
    } else if (info->number < held_delta || info->number <= held_full) {
        /* Full and delta CRLs share one number sequence (RFC 5280 5.2.3). */
        proto_refuse(why, why_len,
                     "delta CRL %lld refused: CRL number lower than held %lld "
                     "(RFC 5280 5.2.3)",
                     n, (long long)(held_delta > held_full ? held_delta : held_full));
    } else if (info->base > held_full) {
        proto_refuse(why, why_len,
                     "delta CRL %lld refused: its base CRL %lld is newer than the "
                     "held full CRL %lld (RFC 5280 5.2.4)",
                     n, (long long)info->base, (long long)held_full);
    } else {
        v = info->number == held_delta ? PROTO_CRL_SAME : PROTO_CRL_ACCEPT;
    }
    return v;
}

void proto_serial_key(const ASN1_INTEGER *serial, unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    const unsigned char *p = ASN1_STRING_get0_data(serial);
    size_t n = (size_t)ASN1_STRING_length(serial);
    unsigned char md[32];

    memset(key, 0, PROTO_SERIAL_KEY_LEN);
    /* Magnitudes come without leading zero bytes; skip any a hostile encoder left. */
    while (n > 0 && p[0] == 0) {
        p++;
        n--;
    }
    if (ASN1_STRING_type(serial) == V_ASN1_INTEGER && n == PROTO_SERIAL_KEY_LEN) {
        memcpy(key, p, n);
    } else if (ASN1_STRING_type(serial) == V_ASN1_INTEGER && n < PROTO_SERIAL_KEY_LEN) {
        key[0] = (unsigned char)n;
        memcpy(key + PROTO_SERIAL_KEY_LEN - n, p, n);
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned char tag = (unsigned char)(ASN1_STRING_type(serial) & 0xff);
        unsigned int len = 0;
        if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
            EVP_DigestUpdate(ctx, &tag, 1) == 1 && EVP_DigestUpdate(ctx, p, n) == 1 &&
            EVP_DigestFinal_ex(ctx, md, &len) == 1)
            memcpy(key, md, PROTO_SERIAL_KEY_LEN);
        else
            memset(key, 0xff, PROTO_SERIAL_KEY_LEN);
        EVP_MD_CTX_free(ctx);
    }
}
