/*
 * Full and delta CRLs (RFC 5280 section 5).
 *
 * A full CRL of a large fleet holds up to a million entries. Built as OpenSSL objects and
 * signed with X509_CRL_sign(), such a CRL takes about 6 s here: OpenSSL's template encoder
 * measures every nested element again at each level, and encodes the whole list twice. So the
 * TBSCertList is written here as DER directly: every field (issuer, times, INTEGER serials,
 * extensions, AlgorithmIdentifier) is still encoded by OpenSSL's own i2d functions, only the
 * SEQUENCE wrappers around them are ours. The bytes are signed with EVP_DigestSign* (the only
 * thing a token key can do) and parsed back with d2i_X509_CRL(), which also proves the
 * encoding well-formed and caches it, so ca_crl_der() costs a copy.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "ca_int.h"
#include "common.h"

#define REASON_COUNT  (CA_REASON_REMOVE_FROM_CRL + 1)
#define REASON_UNUSED 7 /* RFC 5280 5.3.1: value 7 is not used */
/* DER tags. */
#define TAG_SEQUENCE   0x30
#define TAG_BIT_STRING 0x03
#define TAG_EXPLICIT_0 0xA0 /* [0] EXPLICIT, constructed */
/* Latest revocation date GeneralizedTime can carry: 9999-12-31T23:59:59Z. */
#define TIME_MAX INT64_C(253402300799)

/* One revoked certificate: its serial already DER-encoded, for sorting and writing. */
struct rec {
    int64_t revoked_at;
    unsigned char serial[24]; /* INTEGER TLV: 20 octets + a sign octet + tag and length */
    unsigned char serial_len;
    unsigned char reason;
};

/* Tag and DER definite length (short form below 128, else 0x80 | number of octets). */
static void der_hdr(struct mqpki_buf *b, unsigned char tag, size_t len)
{
    unsigned char h[10];
    size_t n = 0, i;

    h[n++] = tag;
    if (len < 0x80) {
        h[n++] = (unsigned char)len;
    } else {
        size_t octets = 0, l;

        for (l = len; l > 0; l >>= 8)
            octets++;
        h[n++] = (unsigned char)(0x80 | octets);
        for (i = octets; i > 0; i--)
            h[n++] = (unsigned char)(len >> (8 * (i - 1)));
    }
    mqpki_buf_put(b, h, n);
}

/* Appends val encoded by OpenSSL as item it. */
static void der_item(struct mqpki_buf *b, const void *val, const ASN1_ITEM *it)
{
    int n = ASN1_item_i2d((const ASN1_VALUE *)val, NULL, it);
    unsigned char *q;

    if (n <= 0) {
        b->oom = 1;
        return;
    }
    if (mqpki_buf_reserve(b, (size_t)n)) {
        q = b->p + b->len;
        ASN1_item_i2d((const ASN1_VALUE *)val, &q, it);
        b->len += (size_t)n;
        b->p[b->len] = '\0';
    }
}

/* Same order as X509_CRL_sort(): positive minimal INTEGERs compare by length, then bytes. */
static int rec_cmp(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;

    if (x->serial_len != y->serial_len)
        return x->serial_len < y->serial_len ? -1 : 1;
    return memcmp(x->serial, y->serial, x->serial_len);
}

static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * A serial in hex straight into a DER INTEGER TLV (X.690 8.3: minimal octets, a leading zero
 * octet when the top bit is set). This is the CRL's hot loop: a BIGNUM round trip per entry
 * cost 0.7 s for a million entries.
 */
static int serial_der(const char *hex, struct rec *r)
{
    unsigned char v[20];
    size_t n = hex != NULL ? strlen(hex) : 0;
    size_t i, nbytes = (n + 1) / 2, skip = 0;
    unsigned char *q = r->serial;

    if (n == 0 || n > 2 * sizeof(v))
        goto bad;
    memset(v, 0, sizeof(v));
    /* Right-aligned: an odd number of digits leaves the first octet's high nibble zero. */
    for (i = 0; i < n; i++) {
        int d = hex_nibble(hex[n - 1 - i]);

        if (d < 0)
            goto bad;
        v[nbytes - 1 - i / 2] |= (unsigned char)(i % 2 ? d << 4 : d);
    }
    while (skip < nbytes && v[skip] == 0)
        skip++;
    if (skip == nbytes)
        return mqpki_fail(MQPKI_ERR_INVALID, "serial must not be zero (RFC 5280 4.1.2.2)");
    *q++ = V_ASN1_INTEGER;
    *q++ = (unsigned char)(nbytes - skip + (v[skip] & 0x80 ? 1 : 0));
    if (v[skip] & 0x80)
        *q++ = 0;
    memcpy(q, v + skip, nbytes - skip);
    r->serial_len = (unsigned char)(q + (nbytes - skip) - r->serial);
    return MQPKI_OK;
bad:
    return mqpki_fail(MQPKI_ERR_INVALID, "serial \"%.48s\" is not 1 to 40 hex digits",
                      hex != NULL ? hex : "(null)");
}

/* Checks and converts the caller's entries, then sorts them by serial. */
static int load_entries(const struct ca_crl_entry *entries, size_t n, int delta, struct rec *recs)
{
    size_t i;
    int rc;

    for (i = 0; i < n; i++) {
        if ((unsigned)entries[i].reason >= REASON_COUNT || entries[i].reason == REASON_UNUSED)
            return mqpki_fail(MQPKI_ERR_INVALID, "CRL entry %zu: unknown reason code %d", i,
                              (int)entries[i].reason);
        if (entries[i].reason == CA_REASON_REMOVE_FROM_CRL && !delta)
            return mqpki_fail(MQPKI_ERR_INVALID,
                              "CRL entry %zu: removeFromCRL only in a delta CRL (RFC 5280 5.3.1)",
                              i);
        if (entries[i].revoked_at < 0 || entries[i].revoked_at > TIME_MAX)
            return mqpki_fail(MQPKI_ERR_INVALID, "CRL entry %zu: revocation date out of range", i);
        if ((rc = serial_der(entries[i].serial_hex, &recs[i])) != MQPKI_OK)
            return rc;
        recs[i].revoked_at = entries[i].revoked_at;
        recs[i].reason = (unsigned char)entries[i].reason;
    }
    qsort(recs, n, sizeof(*recs), rec_cmp);
    return MQPKI_OK;
}

static unsigned char *put2(unsigned char *q, int v)
{
    *q++ = (unsigned char)('0' + v / 10 % 10);
    *q++ = (unsigned char)('0' + v % 10);
    return q;
}

/*
 * t (0 <= t <= TIME_MAX) as a DER Time: UTCTime for 1950 through 2049, GeneralizedTime
 * otherwise (RFC 5280 5.1.2.6). Formatted here rather than with ASN1_TIME_set() because it runs
 * once per CRL entry; the date is the proleptic Gregorian civil date of the day number.
 * Returns the TLV length.
 */
static size_t time_der(int64_t t, unsigned char out[17])
{
    int64_t days = t / 86400, secs = t % 86400;
    int64_t z = days + 719468, era = z / 146097, doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
    int day = (int)(doy - (153 * mp + 2) / 5 + 1), month = (int)(mp < 10 ? mp + 3 : mp - 9);
    int year = (int)(yoe + era * 400 + (month <= 2 ? 1 : 0));
    unsigned char *q = out;

    if (year >= 1950 && year <= 2049) {
        *q++ = V_ASN1_UTCTIME;
        *q++ = 13;
    } else {
        *q++ = V_ASN1_GENERALIZEDTIME;
        *q++ = 15;
        q = put2(q, year / 100);
    }
    q = put2(q, year % 100);
    q = put2(q, month);
    q = put2(q, day);
    q = put2(q, (int)(secs / 3600));
    q = put2(q, (int)(secs / 60 % 60));
    q = put2(q, (int)(secs % 60));
    *q++ = 'Z';
    return (size_t)(q - out);
}

/* The CRLReason entry extensions, encoded once per CRL; [0] (unspecified) stays empty. */
struct reason_der {
    unsigned char der[32];
    size_t len;
};

static int encode_reasons(struct reason_der r[REASON_COUNT])
{
    ASN1_ENUMERATED *e = ASN1_ENUMERATED_new();
    X509_EXTENSION *ext = NULL;
    int i, n, rc = MQPKI_OK;

    memset(r, 0, sizeof(*r) * REASON_COUNT);
    if (e == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    for (i = CA_REASON_KEY_COMPROMISE; i < REASON_COUNT; i++) {
        unsigned char *q = r[i].der;

        if (i == REASON_UNUSED)
            continue;

        /* The enum values are the RFC 5280 5.3.1 codes: hold is certificateHold (6). */
        if (!ASN1_ENUMERATED_set(e, i) || (ext = X509V3_EXT_i2d(NID_crl_reason, 0, e)) == NULL) {
            rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "CRL reason extension");
            goto out;
        }
        n = i2d_X509_EXTENSION(ext, NULL);
        if (n <= 0 || (size_t)n > sizeof(r[i].der) || i2d_X509_EXTENSION(ext, &q) != n) {
            rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "CRL reason extension");
            goto out;
        }
        r[i].len = (size_t)n;
        X509_EXTENSION_free(ext);
        ext = NULL;
    }
out:
    X509_EXTENSION_free(ext);
    ASN1_ENUMERATED_free(e);
    return rc;
}

/* revokedCertificates content: one SEQUENCE { serial, revocationDate, [entry exts] } each. */
static int encode_entries(const struct rec *recs, size_t n, const struct reason_der *reasons,
                          struct mqpki_buf *out)
{
    unsigned char tder[17];
    size_t i;

    if (!mqpki_buf_reserve(out, n * 48))
        return MQPKI_ERR_NOMEM;
    for (i = 0; i < n; i++) {
        const struct reason_der *r = &reasons[recs[i].reason];
        size_t tlen = time_der(recs[i].revoked_at, tder);
        /* RFC 5280 5.3.1: reasonCode unspecified SHOULD be absent rather than present. */
        size_t body = recs[i].serial_len + tlen + (r->len > 0 ? 2 + r->len : 0);

        der_hdr(out, TAG_SEQUENCE, body);
        mqpki_buf_put(out, recs[i].serial, recs[i].serial_len);
        mqpki_buf_put(out, tder, tlen);
        if (r->len > 0) {
            der_hdr(out, TAG_SEQUENCE, r->len);
            mqpki_buf_put(out, r->der, r->len);
        }
    }
    return out->oom ? MQPKI_ERR_NOMEM : MQPKI_OK;
}

/* crlExtensions: AKI, CRL number, and the critical deltaCRLIndicator of a delta CRL. */
static int crl_exts(struct ca *ca, int64_t number, int64_t base, STACK_OF(X509_EXTENSION) * *out)
{
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *aki = X509_EXTENSION_dup(ca->aki);
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    int rc = MQPKI_OK;

    *out = NULL;
    if (exts == NULL || aki == NULL || num == NULL || !sk_X509_EXTENSION_push(exts, aki)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    aki = NULL;
    if (!ASN1_INTEGER_set_int64(num, number) ||
        X509V3_add1_i2d(&exts, NID_crl_number, num, 0, X509V3_ADD_APPEND) != 1) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "CRL number extension");
        goto out;
    }
    /* RFC 5280 5.2.4: deltaCRLIndicator MUST be critical. */
    if (base >= 0 && (!ASN1_INTEGER_set_int64(num, base) ||
                      X509V3_add1_i2d(&exts, NID_delta_crl, num, 1, X509V3_ADD_APPEND) != 1)) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "deltaCRLIndicator extension");
        goto out;
    }
    *out = exts;
    exts = NULL;
out:
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_EXTENSION_free(aki);
    ASN1_INTEGER_free(num);
    return rc;
}

/*
 * The signature AlgorithmIdentifier for the CA key and digest, as OpenSSL writes it for
 * X509_sign(): parameters NULL for RSA (RFC 4055 5), absent for ECDSA (RFC 5758 3.2).
 */
static int sig_alg(struct ca *ca, X509_ALGOR **out)
{
    int base = EVP_PKEY_get_base_id(ca->key);
    int sigid = NID_undef;
    X509_ALGOR *alg = NULL;

    *out = NULL;
    if (!OBJ_find_sigid_by_algs(&sigid, EVP_MD_get_type(ca->md), base))
        return mqpki_fail(MQPKI_ERR_CRYPTO, "CRL: no signature algorithm for this CA key");
    alg = X509_ALGOR_new();
    if (alg == NULL || !X509_ALGOR_set0(alg, OBJ_nid2obj(sigid),
                                        base == EVP_PKEY_RSA ? V_ASN1_NULL : V_ASN1_UNDEF, NULL)) {
        X509_ALGOR_free(alg);
        return MQPKI_ERR_NOMEM;
    }
    *out = alg;
    return MQPKI_OK;
}

/* Signs the parts of the TBSCertList as one byte string with the CA key. */
static int sign_parts(struct ca *ca, const struct mqpki_buf *parts, size_t nparts,
                      unsigned char **sig, size_t *siglen)
{
    EVP_MD_CTX *mctx = EVP_MD_CTX_new();
    size_t i;
    int rc = MQPKI_OK;

    *sig = NULL;
    if (mctx == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (EVP_DigestSignInit(mctx, NULL, ca->md, NULL, ca->key) != 1) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign CRL: init");
        goto out;
    }
    for (i = 0; i < nparts; i++) {
        if (EVP_DigestSignUpdate(mctx, parts[i].p, parts[i].len) != 1) {
            rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign CRL: digest");
            goto out;
        }
    }
    if (EVP_DigestSignFinal(mctx, NULL, siglen) != 1 || (*sig = malloc(*siglen)) == NULL ||
        EVP_DigestSignFinal(mctx, *sig, siglen) != 1) {
        rc = *sig == NULL ? MQPKI_ERR_NOMEM : ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign CRL");
        free(*sig);
        *sig = NULL;
        goto out;
    }
out:
    EVP_MD_CTX_free(mctx);
    return rc;
}

static int check_args(struct ca *ca, int64_t crl_number, int64_t base_crl_number,
                      const struct ca_crl_entry *entries, size_t n_entries, int64_t this_update,
                      int64_t next_update)
{
    if (ca == NULL || (n_entries > 0 && entries == NULL))
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_build: CA and entries are needed");
    if (crl_number < 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL number must not be negative (RFC 5280 5.2.3)");
    if (base_crl_number >= crl_number)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "delta CRL %lld: base CRL number %lld must be lower (RFC 5280 5.2.4)",
                          (long long)crl_number, (long long)base_crl_number);
    if (next_update <= this_update)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL nextUpdate must be after thisUpdate");
    if (n_entries > SIZE_MAX / 64)
        return mqpki_fail(MQPKI_ERR_TOO_LARGE, "CRL: too many entries");
    return MQPKI_OK;
}

int ca_crl_encode(struct ca *ca, int64_t crl_number, int64_t base_crl_number,
                  const struct ca_crl_entry *entries, size_t n_entries, int64_t this_update,
                  int64_t next_update, unsigned char **der, size_t *der_len)
{
    static const unsigned char version_v2[] = {0x02, 0x01, 0x01}; /* INTEGER 1: v2 */
    struct reason_der reasons[REASON_COUNT];
    /* TBSCertList = head (SEQUENCE header + fields) || revoked entries || crlExtensions. */
    struct mqpki_buf tbs[3] = {{0}}, whole = {0}, revoked_hdr = {0};
    struct rec *recs = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_ALGOR *alg = NULL;
    ASN1_TIME *tm = NULL;
    unsigned char *sig = NULL;
    size_t siglen = 0, tbs_len, exts_len;
    struct mqpki_buf fields = {0};
    int i, rc;

    if (der == NULL || der_len == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_encode: der and der_len are needed");
    *der = NULL;
    *der_len = 0;
    if ((rc = check_args(ca, crl_number, base_crl_number, entries, n_entries, this_update,
                         next_update)) != MQPKI_OK)
        goto out;
    recs = malloc((n_entries > 0 ? n_entries : 1) * sizeof(*recs));
    tm = ASN1_TIME_new();
    if (recs == NULL || tm == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = load_entries(entries, n_entries, base_crl_number >= 0, recs)) != MQPKI_OK ||
        (rc = encode_reasons(reasons)) != MQPKI_OK ||
        (rc = encode_entries(recs, n_entries, reasons, &tbs[1])) != MQPKI_OK ||
        (rc = crl_exts(ca, crl_number, base_crl_number, &exts)) != MQPKI_OK ||
        (rc = sig_alg(ca, &alg)) != MQPKI_OK)
        goto out;
    free(recs);
    recs = NULL;

    /* version, signature, issuer, thisUpdate, nextUpdate (RFC 5280 5.1). */
    mqpki_buf_put(&fields, version_v2, sizeof(version_v2));
    der_item(&fields, alg, ASN1_ITEM_rptr(X509_ALGOR));
    der_item(&fields, ca->issuer_name, ASN1_ITEM_rptr(X509_NAME));
    if (ASN1_TIME_set(tm, (time_t)this_update) == NULL)
        fields.oom = 1;
    der_item(&fields, tm, ASN1_ITEM_rptr(ASN1_TIME));
    if (ASN1_TIME_set(tm, (time_t)next_update) == NULL)
        fields.oom = 1;
    der_item(&fields, tm, ASN1_ITEM_rptr(ASN1_TIME));
    /* An empty list MUST be absent, not an empty SEQUENCE (RFC 5280 5.1.2.6). */
    if (n_entries > 0)
        der_hdr(&revoked_hdr, TAG_SEQUENCE, tbs[1].len);
    exts_len = (size_t)i2d_X509_EXTENSIONS(exts, NULL);
    der_hdr(&tbs[2], TAG_EXPLICIT_0, exts_len);
    der_item(&tbs[2], exts, ASN1_ITEM_rptr(X509_EXTENSIONS));
    tbs_len = fields.len + revoked_hdr.len + tbs[1].len + tbs[2].len;
    der_hdr(&tbs[0], TAG_SEQUENCE, tbs_len);
    mqpki_buf_put(&tbs[0], fields.p, fields.len);
    mqpki_buf_put(&tbs[0], revoked_hdr.p, revoked_hdr.len);
    if (fields.oom || revoked_hdr.oom || tbs[0].oom || tbs[2].oom) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode TBSCertList");
        goto out;
    }
    if ((rc = sign_parts(ca, tbs, 3, &sig, &siglen)) != MQPKI_OK)
        goto out;

    /* CertificateList = SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue }. */
    tbs_len = tbs[0].len + tbs[1].len + tbs[2].len;
    {
        struct mqpki_buf tail = {0};

        der_item(&tail, alg, ASN1_ITEM_rptr(X509_ALGOR));
        der_hdr(&tail, TAG_BIT_STRING, siglen + 1);
        mqpki_buf_put(&tail, "", 1); /* no unused bits */
        mqpki_buf_put(&tail, sig, siglen);
        if (mqpki_buf_reserve(&whole, tbs_len + tail.len + 16)) {
            der_hdr(&whole, TAG_SEQUENCE, tbs_len + tail.len);
            for (i = 0; i < 3; i++)
                mqpki_buf_put(&whole, tbs[i].p, tbs[i].len);
            mqpki_buf_put(&whole, tail.p, tail.len);
        }
        if (tail.oom)
            whole.oom = 1;
        free(tail.p);
    }
    if (whole.oom) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    *der = whole.p;
    *der_len = whole.len;
    whole.p = NULL;
out:
    for (i = 0; i < 3; i++)
        free(tbs[i].p);
    free(whole.p);
    free(fields.p);
    free(revoked_hdr.p);
    free(recs);
    free(sig);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    X509_ALGOR_free(alg);
    ASN1_TIME_free(tm);
    return rc;
}

int ca_crl_build(struct ca *ca, int64_t crl_number, int64_t base_crl_number,
                 const struct ca_crl_entry *entries, size_t n_entries, int64_t this_update,
                 int64_t next_update, X509_CRL **out)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t len = 0;
    X509_CRL *crl = NULL;
    int rc;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_build: out is NULL");
    *out = NULL;
    if ((rc = ca_crl_encode(ca, crl_number, base_crl_number, entries, n_entries, this_update,
                            next_update, &der, &len)) != MQPKI_OK)
        goto out;
    /*
     * Parsing our own bytes back checks them and caches the encoding for ca_crl_der(). It is
     * the larger part of the cost for a big CRL (about 1.7 s of CPU for a million entries).
     */
    p = der;
    crl = d2i_X509_CRL(NULL, &p, (long)len);
    if (crl == NULL || p != der + len) {
        rc = ca_ossl_fail(MQPKI_ERR_INTERNAL, "CRL: re-parse of the signed CRL");
        goto out;
    }
    *out = crl;
    crl = NULL;
out:
    X509_CRL_free(crl);
    free(der);
    return rc;
}

/* One DER element at p (at most end): its tag, where its contents start and how long they are.
 * Single-octet tags and definite lengths of up to four octets only: what CRLs use. */
struct tlv {
    unsigned char tag;
    const unsigned char *start, *body;
    size_t len; /* of the contents */
};

static int tlv_read(const unsigned char *p, const unsigned char *end, struct tlv *t)
{
    size_t len = 0, n;

    if (end - p < 2 || (p[0] & 0x1f) == 0x1f)
        return -1;
    t->start = p;
    t->tag = *p++;
    if (*p < 0x80) {
        len = *p++;
    } else {
        n = *p++ & 0x7f;
        if (n == 0 || n > 4 || (size_t)(end - p) < n)
            return -1;
        while (n-- > 0)
            len = len << 8 | *p++;
    }
    if ((size_t)(end - p) < len)
        return -1;
    t->body = p;
    t->len = len;
    return 0;
}

/* The keyid of the authorityKeyIdentifier among the CRL extensions in [p, end) (the contents of
 * crlExtensions [0]): where its bytes are. */
static int find_akid(const unsigned char *p, const unsigned char *end, unsigned char **keyid,
                     size_t *len)
{
    static const unsigned char aki_oid[] = {0x06, 0x03, 0x55, 0x1d, 0x23};
    struct tlv exts, ext, oid, val, seq, id;

    if (tlv_read(p, end, &exts) != 0 || exts.tag != TAG_SEQUENCE)
        return -1;
    for (p = exts.body; p < exts.body + exts.len; p = ext.body + ext.len) {
        if (tlv_read(p, exts.body + exts.len, &ext) != 0 || ext.tag != TAG_SEQUENCE ||
            tlv_read(ext.body, ext.body + ext.len, &oid) != 0)
            return -1;
        if (oid.body + oid.len - oid.start != sizeof(aki_oid) ||
            memcmp(oid.start, aki_oid, sizeof(aki_oid)) != 0)
            continue;
        /* extnID, [critical BOOLEAN,] extnValue OCTET STRING { SEQUENCE { [0] keyid, ... } } */
        if (tlv_read(oid.body + oid.len, ext.body + ext.len, &val) != 0)
            return -1;
        if (val.tag == 0x01 && tlv_read(val.body + val.len, ext.body + ext.len, &val) != 0)
            return -1;
        if (val.tag != 0x04 || tlv_read(val.body, val.body + val.len, &seq) != 0 ||
            seq.tag != TAG_SEQUENCE || tlv_read(seq.body, seq.body + seq.len, &id) != 0 ||
            id.tag != 0x80)
            return -1;
        *keyid = (unsigned char *)id.body;
        *len = id.len;
        return 0;
    }
    return -1;
}

int ca_crl_resign(struct ca *ca, const unsigned char *der, size_t der_len, unsigned char **out,
                  size_t *out_len)
{
    struct tlv whole, tbs, alg, field;
    struct mqpki_buf part = {0}, res = {0}, tail = {0};
    const ASN1_OCTET_STRING *ski;
    X509_ALGOR *own = NULL;
    unsigned char *own_alg = NULL, *keyid, *sig = NULL;
    const unsigned char *p;
    size_t keyid_len, siglen = 0;
    int own_len, rc = MQPKI_ERR_PARSE;

    *out = NULL;
    *out_len = 0;
    if ((ski = X509_get0_subject_key_id(ca->issuing)) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "the issuing CA has no key identifier");
    if (tlv_read(der, der + der_len, &whole) != 0 || whole.tag != TAG_SEQUENCE ||
        whole.body + whole.len != der + der_len ||
        tlv_read(whole.body, whole.body + whole.len, &tbs) != 0 || tbs.tag != TAG_SEQUENCE ||
        tlv_read(tbs.body + tbs.len, whole.body + whole.len, &alg) != 0 || alg.tag != TAG_SEQUENCE)
        return mqpki_fail(rc, "CRL to sign again: not a CertificateList");
    /* The signature algorithm stays: it is inside the signed part too. */
    if ((rc = sig_alg(ca, &own)) != MQPKI_OK)
        return rc;
    own_len = i2d_X509_ALGOR(own, &own_alg);
    if (own_len <= 0 || (size_t)own_len != (size_t)(alg.body + alg.len - alg.start) ||
        memcmp(own_alg, alg.start, (size_t)own_len) != 0) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "CRL to sign again: made with another signature "
                                         "algorithm than this issuing CA's");
        goto out;
    }
    /* A copy of the TBS with the key identifier of this CA in the authorityKeyIdentifier:
     * crlExtensions [0] is the last field of TBSCertList. */
    mqpki_buf_put(&part, tbs.start, (size_t)(tbs.body + tbs.len - tbs.start));
    if (part.oom) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = mqpki_fail(MQPKI_ERR_PARSE, "CRL to sign again: no authority key identifier");
    for (p = part.p + (tbs.body - tbs.start); p < part.p + part.len; p = field.body + field.len) {
        if (tlv_read(p, part.p + part.len, &field) != 0)
            goto out;
        if (field.tag != TAG_EXPLICIT_0)
            continue;
        if (find_akid(field.body, field.body + field.len, &keyid, &keyid_len) != 0)
            goto out;
        if (keyid_len != (size_t)ski->length) {
            rc = mqpki_fail(MQPKI_ERR_STATE,
                            "CRL to sign again: key identifiers of %zu and %d "
                            "bytes",
                            keyid_len, ski->length);
            goto out;
        }
        memcpy(keyid, ski->data, keyid_len);
        rc = MQPKI_OK;
        break;
    }
    if (rc != MQPKI_OK)
        goto out;
    mqpki_err_clear();
    if ((rc = sign_parts(ca, &part, 1, &sig, &siglen)) != MQPKI_OK)
        goto out;
    mqpki_buf_put(&tail, alg.start, (size_t)(alg.body + alg.len - alg.start));
    der_hdr(&tail, TAG_BIT_STRING, siglen + 1);
    mqpki_buf_put(&tail, "", 1);
    mqpki_buf_put(&tail, sig, siglen);
    der_hdr(&res, TAG_SEQUENCE, part.len + tail.len);
    mqpki_buf_put(&res, part.p, part.len);
    mqpki_buf_put(&res, tail.p, tail.len);
    if (res.oom || tail.oom) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    *out = res.p;
    *out_len = res.len;
    res.p = NULL;
out:
    free(part.p);
    free(res.p);
    free(tail.p);
    free(sig);
    OPENSSL_free(own_alg);
    X509_ALGOR_free(own);
    return rc;
}
