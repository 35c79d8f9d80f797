/*
 * crlder: a CRL read from its DER without building an X509_CRL of its entries (proto.h). A
 * million-entry CRL parsed by d2i_X509_CRL makes a million small allocations (over 300 MB
 * at peak); here the entries stay bytes, walked once into the caller's set, and the signature
 * is checked over the TBSCertList bytes as they arrived. Only the CRL without its entries (a
 * few hundred bytes) goes through OpenSSL's parser, for the header fields and extensions.
 *
 * Every length is checked against what is left before it is used: the input is hostile until
 * its signature verifies, and the entries are walked strictly (DER lengths, known tags) also
 * after that.
 */
#include "proto.h"
#include "proto_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509v3.h>

#define TAG_BOOLEAN    0x01
#define TAG_INTEGER    0x02
#define TAG_BIT_STRING 0x03
#define TAG_OCTET      0x04
#define TAG_OID        0x06
#define TAG_ENUMERATED 0x0a
#define TAG_UTCTIME    0x17
#define TAG_GENTIME    0x18
#define TAG_SEQUENCE   0x30
#define TAG_EXPLICIT0  0xa0
/* A CRL entry's Time is 13 (UTCTime) or 15 (GeneralizedTime) bytes in RFC 5280's profile. */
#define TIME_MAX 32
/* RFC 5280 5.3.1: reasonCode's removeFromCRL, only meaningful in a delta CRL. */
#define REASON_REMOVE_FROM_CRL 8

static const unsigned char oid_reason_code[] = {0x55, 0x1d, 0x15}; /* 2.5.29.21 */

/* One DER element at *p (before end): single-byte tag, definite minimal length that fits. */
struct tlv {
    int tag;
    const unsigned char *start; /* the header's first byte */
    const unsigned char *val;   /* the contents */
    size_t len;                 /* of the contents */
    const unsigned char *next;  /* the byte after the element */
};

static int proto_der_next(const unsigned char *p, const unsigned char *end, struct tlv *t)
{
    size_t left, len = 0, n;

    if (p == NULL || end == NULL || p >= end || end - p < 2)
        return -1;
    left = (size_t)(end - p);
    t->start = p;
    t->tag = p[0];
    /* High tag numbers never occur in a CRL. */
    if ((t->tag & 0x1f) == 0x1f)
        return -1;
    if (p[1] < 0x80) {
        len = p[1];
        n = 2;
    } else {
        size_t k = p[1] & 0x7f;
        /* Indefinite (0x80) is BER; more than 4 length bytes exceeds any CRL we take. */
        if (k == 0 || k > 4 || left < 2 + k || p[2] == 0)
            return -1;
        for (size_t i = 0; i < k; i++)
            len = (len << 8) | p[2 + i];
        /* DER: the shortest form. */
        if (len < 0x80)
            return -1;
        n = 2 + k;
    }
    if (len > left - n)
        return -1;
    t->val = p + n;
    t->len = len;
    t->next = t->val + len;
    return 0;
}

/* proto_der_next expecting tag. */
static int expect(const unsigned char *p, const unsigned char *end, int tag, struct tlv *t)
{
    return proto_der_next(p, end, t) == 0 && t->tag == tag ? 0 : -1;
}

static void put_len(unsigned char **q, size_t len)
{
    unsigned char *o = *q;

    if (len < 0x80) {
        *o++ = (unsigned char)len;
    } else {
        int k = len > 0xffffff ? 4 : len > 0xffff ? 3 : len > 0xff ? 2 : 1;
        *o++ = (unsigned char)(0x80 | k);
        for (int i = k - 1; i >= 0; i--)
            *o++ = (unsigned char)(len >> (8 * i));
    }
    *q = o;
}

static size_t hdr_len(size_t len)
{
    return len < 0x80 ? 2 : len <= 0xff ? 3 : len <= 0xffff ? 4 : len <= 0xffffff ? 5 : 6;
}

int proto_serial_key_der(const unsigned char *tlv, size_t tlv_len,
                         unsigned char key[PROTO_SERIAL_KEY_LEN])
{
    struct tlv t;
    const unsigned char *v;
    size_t n;

    memset(key, 0, PROTO_SERIAL_KEY_LEN);
    if (expect(tlv, tlv + tlv_len, TAG_INTEGER, &t) != 0 || t.next != tlv + tlv_len || t.len == 0)
        return -1;
    v = t.val;
    n = t.len;
    /* DER integers are minimal: no 0x00 before a clear top bit, no 0xff before a set one. */
    if (n > 1 && ((v[0] == 0x00 && !(v[1] & 0x80)) || (v[0] == 0xff && (v[1] & 0x80))))
        return -1;
    if (v[0] & 0x80) {
        /* Negative: rare and never ours; OpenSSL's reading gives the same key as a connect's. */
        const unsigned char *p = tlv;
        ASN1_INTEGER *ai = d2i_ASN1_INTEGER(NULL, &p, (long)tlv_len);
        if (ai == NULL)
            return -1;
        proto_serial_key(ai, key);
        ASN1_INTEGER_free(ai);
        return 0;
    }
    /* The magnitude, as proto_serial_key reads it from an ASN1_INTEGER. */
    while (n > 0 && v[0] == 0) {
        v++;
        n--;
    }
    if (n == PROTO_SERIAL_KEY_LEN) {
        memcpy(key, v, n);
    } else if (n < PROTO_SERIAL_KEY_LEN) {
        key[0] = (unsigned char)n;
        memcpy(key + PROTO_SERIAL_KEY_LEN - n, v, n);
    } else {
        unsigned char md[32], tag = TAG_INTEGER;
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned int len = 0;
        if (ctx != NULL && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
            EVP_DigestUpdate(ctx, &tag, 1) == 1 && EVP_DigestUpdate(ctx, v, n) == 1 &&
            EVP_DigestFinal_ex(ctx, md, &len) == 1)
            memcpy(key, md, PROTO_SERIAL_KEY_LEN);
        else
            memset(key, 0xff, PROTO_SERIAL_KEY_LEN);
        EVP_MD_CTX_free(ctx);
    }
    return 0;
}

void proto_crl_der_clear(struct proto_crl_der *d)
{
    if (d == NULL)
        return;
    X509_CRL_free(d->head);
    memset(d, 0, sizeof(*d));
}

int proto_crl_der_split(const unsigned char *der, size_t len, struct proto_crl_der *out, char *why,
                        size_t why_len)
{
    const unsigned char *end = der + len, *tend, *p, *q;
    struct tlv outer, tbs, alg, sig, f, revoked;
    unsigned char *skel = NULL, *w;
    size_t tbs_inner, skel_inner, skel_len;
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (der == NULL || len == 0)
        return proto_refuse(why, why_len, "empty payload");
    if (len > PROTO_CRL_MAX_DER)
        return proto_refuse(why, why_len, "payload of %zu bytes exceeds the CRL limit of %u", len,
                            PROTO_CRL_MAX_DER);
    /* CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue } */
    if (expect(der, end, TAG_SEQUENCE, &outer) != 0 ||
        expect(outer.val, outer.next, TAG_SEQUENCE, &tbs) != 0 ||
        expect(tbs.next, outer.next, TAG_SEQUENCE, &alg) != 0 ||
        expect(alg.next, outer.next, TAG_BIT_STRING, &sig) != 0 || sig.next != outer.next)
        return proto_refuse(why, why_len, "not a DER CRL (truncated or garbage, %zu bytes)", len);
    /* Trailing bytes would let two different payloads carry the same signed CRL. */
    if (outer.next != end)
        return proto_refuse(why, why_len, "%zu bytes after the DER CRL",
                            (size_t)(end - outer.next));
    /* TBSCertList: version, signature, issuer, thisUpdate, [nextUpdate],
     * [revokedCertificates], [0] crlExtensions. */
    tend = tbs.next;
    p = tbs.val;
    if (proto_der_next(p, tend, &f) == 0 && f.tag == TAG_INTEGER)
        p = f.next;
    if (expect(p, tend, TAG_SEQUENCE, &f) != 0)
        return proto_refuse(why, why_len, "not a DER CRL (bad TBSCertList header)");
    /* RFC 5280 5.1.1.2: the signature field inside the TBS matches the outer algorithm. */
    if (f.next - f.start != alg.next - alg.start ||
        memcmp(f.start, alg.start, (size_t)(f.next - f.start)) != 0)
        return proto_refuse(why, why_len,
                            "CRL signature algorithm differs inside and outside the signed part");
    if (expect(f.next, tend, TAG_SEQUENCE, &f) != 0 || proto_der_next(f.next, tend, &f) != 0 ||
        (f.tag != TAG_UTCTIME && f.tag != TAG_GENTIME))
        return proto_refuse(why, why_len, "not a DER CRL (bad TBSCertList header)");
    p = f.next;
    if (p < tend && proto_der_next(p, tend, &f) == 0 &&
        (f.tag == TAG_UTCTIME || f.tag == TAG_GENTIME))
        p = f.next;
    memset(&revoked, 0, sizeof(revoked));
    if (p < tend) {
        if (proto_der_next(p, tend, &f) != 0)
            return proto_refuse(why, why_len, "not a DER CRL (bad TBSCertList element)");
        if (f.tag == TAG_SEQUENCE) {
            revoked = f;
            p = f.next;
        }
    }
    if (p < tend) {
        if (expect(p, tend, TAG_EXPLICIT0, &f) != 0 || f.next != tend)
            return proto_refuse(why, why_len, "not a DER CRL (bad TBSCertList end)");
    }
    out->tbs = tbs.start;
    out->tbs_len = (size_t)(tbs.next - tbs.start);
    out->revoked = revoked.start != NULL ? revoked.val : NULL;
    out->revoked_len = revoked.start != NULL ? revoked.len : 0;
    /* The head: the same CRL with revokedCertificates cut out, for OpenSSL's parser. */
    tbs_inner = tbs.len - (revoked.start != NULL ? (size_t)(revoked.next - revoked.start) : 0);
    skel_inner = hdr_len(tbs_inner) + tbs_inner + (size_t)(sig.next - alg.start);
    skel_len = hdr_len(skel_inner) + skel_inner;
    if ((skel = malloc(skel_len)) == NULL)
        return proto_refuse(why, why_len, "out of memory");
    w = skel;
    *w++ = TAG_SEQUENCE;
    put_len(&w, skel_inner);
    *w++ = TAG_SEQUENCE;
    put_len(&w, tbs_inner);
    if (revoked.start != NULL) {
        memcpy(w, tbs.val, (size_t)(revoked.start - tbs.val));
        w += revoked.start - tbs.val;
        memcpy(w, revoked.next, (size_t)(tbs.next - revoked.next));
        w += tbs.next - revoked.next;
    } else {
        memcpy(w, tbs.val, tbs.len);
        w += tbs.len;
    }
    memcpy(w, alg.start, (size_t)(sig.next - alg.start));
    w += sig.next - alg.start;
    q = skel;
    if ((size_t)(w - skel) != skel_len ||
        (out->head = d2i_X509_CRL(NULL, &q, (long)skel_len)) == NULL || q != skel + skel_len) {
        proto_refuse(why, why_len, "not a DER CRL (header or extensions do not parse)");
        goto out;
    }
    rc = 0;
out:
    free(skel);
    if (rc != 0)
        proto_crl_der_clear(out);
    return rc;
}

/* The reasonCode of one entry's extensions: *remove 1 for exactly one removeFromCRL. */
static int entry_reason(const unsigned char *p, const unsigned char *end, int *remove)
{
    int found = 0, value = -1;
    struct tlv ext, f, v;

    *remove = 0;
    while (p < end) {
        if (expect(p, end, TAG_SEQUENCE, &ext) != 0 || expect(ext.val, ext.next, TAG_OID, &f) != 0)
            return -1;
        p = ext.next;
        if (proto_der_next(f.next, ext.next, &v) != 0)
            return -1;
        if (v.tag == TAG_BOOLEAN && (v.len != 1 || proto_der_next(v.next, ext.next, &v) != 0))
            return -1;
        if (v.tag != TAG_OCTET || v.next != ext.next)
            return -1;
        if (f.len != sizeof(oid_reason_code) ||
            memcmp(f.val, oid_reason_code, sizeof(oid_reason_code)) != 0)
            continue;
        found++;
        if (expect(v.val, v.next, TAG_ENUMERATED, &f) != 0 || f.next != v.next || f.len != 1)
            return -1;
        value = f.val[0];
    }
    /* A repeated extension is read as absent, as OpenSSL's X509_REVOKED_get_ext_d2i does. */
    *remove = found == 1 && value == REASON_REMOVE_FROM_CRL;
    return 0;
}

int proto_crl_der_entries(const struct proto_crl_der *d, proto_crl_entry_fn fn, void *ctx,
                          size_t *count, char *why, size_t why_len)
{
    const unsigned char *p = d->revoked, *end;
    unsigned char key[PROTO_SERIAL_KEY_LEN];
    size_t n = 0;
    struct tlv e, serial, when, exts;

    if (count != NULL)
        *count = 0;
    if (p == NULL)
        return 0;
    end = p + d->revoked_len;
    /* revokedCertificates ::= SEQUENCE OF SEQUENCE { userCertificate, revocationDate,
     * crlEntryExtensions OPTIONAL } */
    while (p < end) {
        int remove = 0;
        if (expect(p, end, TAG_SEQUENCE, &e) != 0 ||
            expect(e.val, e.next, TAG_INTEGER, &serial) != 0 ||
            proto_der_next(serial.next, e.next, &when) != 0 ||
            (when.tag != TAG_UTCTIME && when.tag != TAG_GENTIME) || when.len > TIME_MAX)
            return proto_refuse(why, why_len, "CRL entry %zu: not a DER entry", n);
        if (when.next < e.next &&
            (expect(when.next, e.next, TAG_SEQUENCE, &exts) != 0 || exts.next != e.next ||
             entry_reason(exts.val, exts.next, &remove) != 0))
            return proto_refuse(why, why_len, "CRL entry %zu: bad entry extensions", n);
        if (proto_serial_key_der(serial.start, (size_t)(serial.next - serial.start), key) != 0)
            return proto_refuse(why, why_len, "CRL entry %zu: bad serial number", n);
        if (fn != NULL && fn(key, remove, ctx) != 0)
            return proto_refuse(why, why_len, "CRL entry %zu: out of memory", n);
        n++;
        p = e.next;
    }
    if (count != NULL)
        *count = n;
    return 0;
}

int proto_crl_der_check(const struct proto_crl_der *d, STACK_OF(X509) * cas, EVP_PKEY **key,
                        struct proto_crl_info *info, char *why, size_t why_len)
{
    int rc;

    if ((rc = proto_crl_issuer_key(d->head, cas, key, why, why_len)) != 0)
        return rc;
    return proto_crl_describe(d->head, info, why, why_len);
}

int proto_crl_der_verify_sig(const struct proto_crl_der *d, EVP_PKEY *key, char *why,
                             size_t why_len)
{
    const ASN1_BIT_STRING *sig = NULL;
    const X509_ALGOR *alg = NULL;
    const EVP_MD *md = NULL;
    EVP_MD_CTX *ctx = NULL;
    int md_nid = NID_undef, pk_nid = NID_undef, rc = -1;

    /* The outer algorithm; proto_crl_der_split checked that the TBS names the same one. */
    X509_CRL_get0_signature(d->head, &sig, &alg);
    if (sig == NULL || alg == NULL) {
        proto_refuse(why, why_len, "CRL without a signature");
        goto out;
    }
    if (OBJ_find_sigid_algs(OBJ_obj2nid(alg->algorithm), &md_nid, &pk_nid) != 1 ||
        pk_nid == NID_rsassaPss ||
        (md_nid != NID_undef && (md = EVP_get_digestbynid(md_nid)) == NULL) ||
        (sig->flags & 0x07) != 0) {
        proto_refuse(why, why_len, "CRL signature algorithm not supported");
        goto out;
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestVerify(ctx, sig->data, (size_t)sig->length, d->tbs, d->tbs_len) != 1) {
        proto_refuse(why, why_len, "CRL signature does not verify against the issuing CA");
        goto out;
    }
    rc = 0;
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}
