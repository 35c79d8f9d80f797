/*
 * CSR intake: strict parsing of PKCS#10 requests as they arrive over EST or from the CLI, and
 * the CSR policy of DESIGN.md section 4 (proof of possession, key allow-list). The subject and
 * extensions of a request are never looked at: the issuance options decide those.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1t.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "ca_int.h"
#include "common.h"

/* Where a parse goes: an X509_REQ (ca_csr_parse), or a request read for issuance
 * (ca_csr_read). */
struct target {
    X509_REQ **req;
    struct ca_csr *csr;
};

static int read_der(const unsigned char *data, size_t len, struct ca_csr *out);

/* Parses DER that must make up the whole of data (no trailing bytes). */
static int der_parse(const unsigned char *data, size_t len, struct target *t)
{
    const unsigned char *p = data;
    X509_REQ *req;

    if (t->csr != NULL)
        return read_der(data, len, t->csr);

    req = d2i_X509_REQ(NULL, &p, (long)len);
    if (req == NULL)
        return ca_ossl_fail(MQPKI_ERR_PARSE, "CSR: malformed or truncated DER");
    if (p != data + len) {
        X509_REQ_free(req);
        return mqpki_fail(MQPKI_ERR_PARSE, "CSR: %zu trailing bytes after the DER structure",
                          (size_t)(data + len - p));
    }
    *t->req = req;
    return MQPKI_OK;
}

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * PEM: one "CERTIFICATE REQUEST" (or the older "NEW CERTIFICATE REQUEST") block without
 * headers, whose DER is parsed as strictly as raw DER; only whitespace may follow it.
 */
static int pem_parse(const unsigned char *data, size_t len, struct target *t)
{
    BIO *bio = BIO_new_mem_buf(data, (int)len);
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long derlen = 0;
    char *rest = NULL;
    long restlen, i;
    int rc;

    if (bio == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!PEM_read_bio(bio, &name, &header, &der, &derlen)) {
        rc = ca_ossl_fail(MQPKI_ERR_PARSE, "CSR: malformed PEM");
        goto out;
    }
    if (strcmp(name, PEM_STRING_X509_REQ) != 0 && strcmp(name, PEM_STRING_X509_REQ_OLD) != 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: PEM block is \"%.40s\", not CERTIFICATE REQUEST",
                        name);
        goto out;
    }
    if (header[0] != '\0') {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: PEM headers (encryption) are not allowed");
        goto out;
    }
    if (derlen <= 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: empty PEM block");
        goto out;
    }
    /* A second object would be ignored silently by OpenSSL; refuse it instead. */
    restlen = BIO_get_mem_data(bio, &rest);
    for (i = 0; i < restlen; i++) {
        if (!is_space((unsigned char)rest[i])) {
            rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: unexpected data after the PEM block");
            goto out;
        }
    }
    rc = der_parse(der, (size_t)derlen, t);
out:
    BIO_free(bio);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    return rc;
}

static int is_b64(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/' || c == '=';
}

/*
 * Base64 of DER as RFC 7030 simpleenroll bodies carry it, with any line breaks. The alphabet is
 * checked first because EVP_DecodeUpdate() treats '-' as end of data and would ignore the rest.
 */
static int b64_parse(const unsigned char *data, size_t len, struct target *t)
{
    EVP_ENCODE_CTX *ctx = NULL;
    unsigned char *der = NULL;
    int n = 0, fin = 0;
    size_t i, total;
    int rc;

    for (i = 0; i < len; i++) {
        if (!is_b64(data[i]) && !is_space(data[i])) {
            rc = mqpki_fail(MQPKI_ERR_PARSE,
                            "CSR: not DER, PEM or base64 (byte 0x%02x at offset %zu)", data[i], i);
            goto out;
        }
    }
    ctx = EVP_ENCODE_CTX_new();
    der = malloc(len / 4 * 3 + 80);
    if (ctx == NULL || der == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    EVP_DecodeInit(ctx);
    if (EVP_DecodeUpdate(ctx, der, &n, data, (int)len) < 0 ||
        EVP_DecodeFinal(ctx, der + n, &fin) < 0) {
        ERR_clear_error();
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: invalid base64");
        goto out;
    }
    total = (size_t)n + (size_t)fin;
    if (total == 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: empty request");
        goto out;
    }
    if (der[0] != 0x30) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: base64 content is not a DER SEQUENCE");
        goto out;
    }
    rc = der_parse(der, total, t);
out:
    EVP_ENCODE_CTX_free(ctx);
    free(der);
    return rc;
}

/* DER, PEM or base64 of DER, at most CA_CSR_MAX bytes, into t. */
static int parse_any(const unsigned char *data, size_t len, struct target *t)
{
    static const char begin[] = "-----BEGIN";
    int rc;

    if (len > CA_CSR_MAX) {
        rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "CSR is %zu bytes; the limit is %d", len, CA_CSR_MAX);
        goto out;
    }
    if (data == NULL || len == 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: empty request");
        goto out;
    }
    /* A DER SEQUENCE starts with 0x30, which is '0' in text: base64 of DER starts with 'M'. */
    if (data[0] == 0x30)
        rc = der_parse(data, len, t);
    else if (memmem(data, len, begin, sizeof(begin) - 1) != NULL)
        rc = pem_parse(data, len, t);
    else
        rc = b64_parse(data, len, t);
out:
    ERR_clear_error();
    return rc;
}

int ca_csr_parse(const unsigned char *data, size_t len, X509_REQ **out)
{
    struct target t = {out, NULL};

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_csr_parse: out is NULL");
    *out = NULL;
    return parse_any(data, len, &t);
}

/* Display name of a curve: the NIST name when it has one ("P-256"), else OpenSSL's short name. */
static const char *curve_label(int nid, const char *group)
{
    const char *nist = nid != NID_undef ? EC_curve_nid2nist(nid) : NULL;

    return nist != NULL ? nist : group;
}

/* 1 when an EC key is encoded with a named curve, not explicit parameters. */
static int ec_named_curve(EVP_PKEY *pkey)
{
    char enc[32] = "";

    if (!EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_ENCODING, enc, sizeof(enc),
                                        NULL)) {
        ERR_clear_error();
        return 0;
    }
    return strcmp(enc, OSSL_PKEY_EC_ENCODING_GROUP) == 0;
}

int ca_key_check_named(EVP_PKEY *pkey)
{
    if (pkey != NULL && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC && !ec_named_curve(pkey))
        return mqpki_fail(MQPKI_ERR_POLICY, "EC key with explicit curve parameters; RFC 5480 "
                                            "2.1.1 needs a named curve");
    return MQPKI_OK;
}

/* The key allow-list: EC P-256, EC P-384, RSA 2048..8192. */
static int key_allowed(EVP_PKEY *pkey)
{
    char group[64];
    int nid, bits;

    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_EC:
        /* OpenSSL recognizes explicit parameters of a known curve and names the group, yet the
         * key stays encoded with them: it would be certified so (RFC 5480 2.1.1 allows only a
         * namedCurve) and fingerprinted differently from the same key named. */
        if (!ec_named_curve(pkey))
            return mqpki_fail(MQPKI_ERR_POLICY,
                              "CSR key is EC with explicit curve parameters; RFC 5480 2.1.1 needs "
                              "a named curve (EC P-256 or P-384)");
        if (!EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL)) {
            ERR_clear_error();
            return mqpki_fail(MQPKI_ERR_POLICY,
                              "CSR key is EC with explicit parameters; policy needs a named "
                              "curve: EC P-256, EC P-384 or RSA >= 2048");
        }
        nid = OBJ_sn2nid(group);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(group);
        if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1)
            return MQPKI_OK;
        return mqpki_fail(MQPKI_ERR_POLICY,
                          "CSR key is EC %s; policy needs EC P-256, EC P-384 or RSA >= 2048",
                          curve_label(nid, group));
    case EVP_PKEY_RSA:
        bits = EVP_PKEY_get_bits(pkey);
        if (bits < 2048)
            return mqpki_fail(MQPKI_ERR_POLICY,
                              "CSR key is RSA-%d; policy needs RSA >= 2048 or EC P-256/P-384",
                              bits);
        /* Large keys only cost verification time; 8192 bits is the sane upper end. */
        if (bits > 8192)
            return mqpki_fail(MQPKI_ERR_POLICY,
                              "CSR key is RSA-%d; policy needs RSA <= 8192 or EC P-256/P-384",
                              bits);
        return MQPKI_OK;
    default:
        return mqpki_fail(MQPKI_ERR_POLICY,
                          "CSR key is %s; policy needs EC P-256, EC P-384 or RSA >= 2048",
                          EVP_PKEY_get0_type_name(pkey) != NULL ? EVP_PKEY_get0_type_name(pkey)
                                                                : "of an unknown type");
    }
}

int ca_ca_key_check(EVP_PKEY *pkey)
{
    int rc = key_allowed(pkey);

    if (rc == MQPKI_OK && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA &&
        EVP_PKEY_get_bits(pkey) < 3072)
        rc = mqpki_fail(MQPKI_ERR_POLICY, "a CA key must be EC P-256, EC P-384 or RSA >= 3072");
    return rc;
}

int ca_csr_check(X509_REQ *req)
{
    EVP_PKEY *pkey;
    int rc;

    if (req == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_csr_check: no request");
    pkey = X509_REQ_get0_pubkey(req);
    if (pkey == NULL) {
        rc = mqpki_fail(MQPKI_ERR_POLICY, "CSR key is of an unknown algorithm; policy needs "
                                          "EC P-256, EC P-384 or RSA >= 2048");
        goto out;
    }
    /* The key comes first: no point verifying a signature under a key we would refuse. */
    if ((rc = key_allowed(pkey)) != MQPKI_OK)
        goto out;
    /* Only exactly 1 is success: X509_REQ_verify() returns -1 on internal errors. */
    if (X509_REQ_verify(req, pkey) != 1) {
        rc = mqpki_fail(MQPKI_ERR_POLICY, "CSR signature invalid (no proof of possession)");
        goto out;
    }
out:
    ERR_clear_error();
    return rc;
}

int ca_pubkey_fingerprint(EVP_PKEY *pub, char out[PROTO_FP_HEX_LEN + 1])
{
    EVP_PKEY *canon = NULL;
    unsigned char *der = NULL;
    unsigned char md[32];
    unsigned int mdlen = 0;
    int derlen, rc = MQPKI_OK;

    out[0] = '\0';
    if (pub == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_pubkey_fingerprint: no key");
    /* One EC key has several encodings (compressed, uncompressed, hybrid points; a named curve
     * or its explicit parameters): hash one form only, the named curve with the uncompressed
     * point, or a key refused for compromise or owned by another asset would pass re-encoded. */
    if (EVP_PKEY_base_id(pub) == EVP_PKEY_EC) {
        if ((canon = EVP_PKEY_dup(pub)) == NULL ||
            EVP_PKEY_set_utf8_string_param(canon, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                           OSSL_PKEY_EC_POINT_CONVERSION_FORMAT_UNCOMPRESSED) !=
                1 ||
            EVP_PKEY_set_utf8_string_param(canon, OSSL_PKEY_PARAM_EC_ENCODING,
                                           OSSL_PKEY_EC_ENCODING_GROUP) != 1) {
            rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "canonical EC public key");
            goto out;
        }
        pub = canon;
    }
    derlen = i2d_PUBKEY(pub, &der);
    if (derlen <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode SubjectPublicKeyInfo");
        goto out;
    }
    if (!EVP_Digest(der, (size_t)derlen, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "SHA-256 of SubjectPublicKeyInfo");
        goto out;
    }
    mqpki_hex(md, sizeof(md), out);
out:
    OPENSSL_free(der);
    EVP_PKEY_free(canon);
    return rc;
}

int ca_spki_canonical(const X509_PUBKEY *spki)
{
    ASN1_OBJECT *alg = NULL;
    const unsigned char *pk = NULL;
    int pklen = 0, ptype = V_ASN1_UNDEF, curve;
    X509_ALGOR *pa = NULL;
    const void *pval = NULL;

    if (spki == NULL || !X509_PUBKEY_get0_param(&alg, &pk, &pklen, &pa, spki) || pa == NULL ||
        OBJ_obj2nid(alg) != NID_X9_62_id_ecPublicKey)
        return 0;
    X509_ALGOR_get0(NULL, &ptype, &pval, pa);
    if (ptype != V_ASN1_OBJECT || pval == NULL)
        return 0;
    curve = OBJ_obj2nid(pval);
    if (pk == NULL || pklen <= 0 || pk[0] != 0x04 ||
        !((curve == NID_X9_62_prime256v1 && pklen == 65) ||
          (curve == NID_secp384r1 && pklen == 97)))
        return 0;
    /* The BIT STRING's unused-bits octet must be 0: OpenSSL's EC decoding ignores it, so a
     * key with another value would be the same key under another DER and fingerprint. */
    {
        unsigned char *der = NULL;
        int n = i2d_X509_PUBKEY(spki, &der), ok = n > pklen && der[n - pklen - 1] == 0;
        OPENSSL_free(der);
        return ok;
    }
}

int ca_spki_fingerprint(const X509_PUBKEY *spki, char out[PROTO_FP_HEX_LEN + 1])
{
    unsigned char *der = NULL;
    unsigned char md[32];
    int derlen, rc = MQPKI_OK;

    out[0] = '\0';
    if (!ca_spki_canonical(spki))
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_spki_fingerprint: key not in canonical form");
    /* The fields as parsed, encoded again as DER (no key object is involved). */
    if ((derlen = i2d_X509_PUBKEY(spki, &der)) <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode SubjectPublicKeyInfo");
        goto out;
    }
    if (SHA256(der, (size_t)derlen, md) == NULL) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "SHA-256 of SubjectPublicKeyInfo");
        goto out;
    }
    mqpki_hex(md, sizeof(md), out);
out:
    OPENSSL_free(der);
    return rc;
}

/*
 * The fast way in for issuance (ca_csr_read). OpenSSL 3.0 decodes the key of every parsed
 * request through its decoder framework, whose set-up per call (and its locks, under
 * concurrent requests) cost more than the request's ECDSA verification. Requests with a
 * canonical EC key and an ECDSA signature are read with OpenSSL's own templates for
 * CertificationRequest (RFC 2986 4), except that the key stays as the fields it was parsed
 * into; the key object is made once from the curve and the point, and the signature is
 * checked over the CertificationRequestInfo bytes as they came. Anything else, and anything
 * this path refuses, goes the way of ca_csr_parse() and ca_csr_check(), which also words the
 * errors: one verdict, whichever way a request takes.
 */
/* OpenSSL's template macros, laid out as OpenSSL lays them out. */
/* clang-format off */
typedef struct {
    X509_ALGOR *algor;
    ASN1_BIT_STRING *key;
} CSR_SPKI;

ASN1_SEQUENCE(CSR_SPKI) = {
    ASN1_SIMPLE(CSR_SPKI, algor, X509_ALGOR),
    ASN1_SIMPLE(CSR_SPKI, key, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(CSR_SPKI)

typedef struct {
    ASN1_ENCODING enc; /* the bytes as they came: what the signature covers */
    ASN1_INTEGER *version;
    X509_NAME *subject;
    CSR_SPKI *spki;
    STACK_OF(X509_ATTRIBUTE) *attributes;
} CSR_INFO;

/* As X509_REQ_INFO (OpenSSL's crypto/x509/x_req.c), attributes optional as there. */
ASN1_SEQUENCE_enc(CSR_INFO, enc, 0) = {
    ASN1_SIMPLE(CSR_INFO, version, ASN1_INTEGER),
    ASN1_SIMPLE(CSR_INFO, subject, X509_NAME),
    ASN1_SIMPLE(CSR_INFO, spki, CSR_SPKI),
    ASN1_IMP_SET_OF_OPT(CSR_INFO, attributes, X509_ATTRIBUTE, 0),
} static_ASN1_SEQUENCE_END_ref(CSR_INFO, CSR_INFO)

typedef struct {
    CSR_INFO *info;
    X509_ALGOR *sig_alg;
    ASN1_BIT_STRING *signature;
} CSR_RAW;

ASN1_SEQUENCE(CSR_RAW) = {
    ASN1_SIMPLE(CSR_RAW, info, CSR_INFO),
    ASN1_SIMPLE(CSR_RAW, sig_alg, X509_ALGOR),
    ASN1_SIMPLE(CSR_RAW, signature, ASN1_BIT_STRING),
} static_ASN1_SEQUENCE_END(CSR_RAW)

static X509_PUBKEY *spki_of(const CSR_SPKI *in);
/* clang-format on */

/* The key's fields as a X509_PUBKEY without a key object (nothing decoded). */
static X509_PUBKEY *spki_of(const CSR_SPKI *in)
{
    X509_PUBKEY *out = X509_PUBKEY_new();
    const ASN1_OBJECT *alg = NULL;
    const void *pval = NULL;
    ASN1_OBJECT *alg_dup = NULL, *curve = NULL;
    unsigned char *key = NULL;
    int ptype = V_ASN1_UNDEF;

    X509_ALGOR_get0(&alg, &ptype, &pval, in->algor);
    if (out == NULL || ptype != V_ASN1_OBJECT || pval == NULL || in->key->length <= 0 ||
        (in->key->flags & 0x07) != 0 || (alg_dup = OBJ_dup(alg)) == NULL ||
        (curve = OBJ_dup(pval)) == NULL ||
        (key = OPENSSL_memdup(in->key->data, (size_t)in->key->length)) == NULL ||
        !X509_PUBKEY_set0_param(out, alg_dup, V_ASN1_OBJECT, curve, key, in->key->length)) {
        ASN1_OBJECT_free(alg_dup);
        ASN1_OBJECT_free(curve);
        OPENSSL_free(key);
        X509_PUBKEY_free(out);
        return NULL;
    }
    return out;
}

/* The EC public key object from a canonical key's curve and point. */
static EVP_PKEY *ec_key_of(const X509_PUBKEY *spki)
{
    const unsigned char *pk = NULL;
    int pklen = 0, ptype = V_ASN1_UNDEF;
    X509_ALGOR *pa = NULL;
    const void *pval = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM params[3];

    if (!X509_PUBKEY_get0_param(NULL, &pk, &pklen, &pa, spki))
        return NULL;
    X509_ALGOR_get0(NULL, &ptype, &pval, pa);
    params[0] = OSSL_PARAM_construct_utf8_string(
        OSSL_PKEY_PARAM_GROUP_NAME,
        (char *)(OBJ_obj2nid(pval) == NID_secp384r1 ? SN_secp384r1 : SN_X9_62_prime256v1), 0);
    params[1] =
        OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pk, (size_t)pklen);
    params[2] = OSSL_PARAM_construct_end();
    /* The point is checked to lie on the curve here (EC_POINT_oct2point). */
    if ((ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL ||
        EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/* The digest of an ECDSA signature algorithm without parameters (RFC 5758 3.2); NULL else. */
static const char *ecdsa_digest(const X509_ALGOR *alg)
{
    const ASN1_OBJECT *obj = NULL;
    int ptype = V_ASN1_UNDEF;

    X509_ALGOR_get0(&obj, &ptype, NULL, alg);
    if (ptype != V_ASN1_UNDEF)
        return NULL;
    switch (OBJ_obj2nid(obj)) {
    case NID_ecdsa_with_SHA256: return "SHA256";
    case NID_ecdsa_with_SHA384: return "SHA384";
    case NID_ecdsa_with_SHA512: return "SHA512";
    default: return NULL;
    }
}

/*
 * The fast path: MQPKI_OK with out filled, MQPKI_ERR_POLICY for a signature that does not
 * verify, or 1 when the request is not one for this path (then nothing is filled in).
 */
static int read_fast(const unsigned char *data, size_t len, struct ca_csr *out)
{
    const unsigned char *p = data;
    CSR_RAW *raw = NULL;
    X509_PUBKEY *spki = NULL;
    EVP_PKEY *pub = NULL;
    EVP_MD_CTX *md = NULL;
    unsigned char *der = NULL;
    const char *digest;
    int rc = 1, n;

    raw = (CSR_RAW *)ASN1_item_d2i(NULL, &p, (long)len, ASN1_ITEM_rptr(CSR_RAW));
    if (raw == NULL || p != data + len || (digest = ecdsa_digest(raw->sig_alg)) == NULL ||
        (raw->signature->flags & 0x07) != 0 || raw->info->enc.enc == NULL ||
        (spki = spki_of(raw->info->spki)) == NULL || !ca_spki_canonical(spki) ||
        (pub = ec_key_of(spki)) == NULL)
        goto out;
    if ((md = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestVerifyInit_ex(md, NULL, digest, NULL, NULL, pub, NULL) != 1)
        goto out;
    if (EVP_DigestVerify(md, raw->signature->data, (size_t)raw->signature->length,
                         raw->info->enc.enc, (size_t)raw->info->enc.len) != 1) {
        rc = mqpki_fail(MQPKI_ERR_POLICY, "CSR signature invalid (no proof of possession)");
        goto out;
    }
    /* The request's identity, as ca_csr_parse() would encode it: the same DER. */
    if ((n = ASN1_item_i2d((ASN1_VALUE *)raw, &der, ASN1_ITEM_rptr(CSR_RAW))) <= 0 ||
        SHA256(der, (size_t)n, out->sha256) == NULL)
        goto out;
    out->spki = out->own_spki = spki;
    out->pub = pub;
    spki = NULL;
    pub = NULL;
    rc = MQPKI_OK;
out:
    OPENSSL_free(der);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pub);
    X509_PUBKEY_free(spki);
    ASN1_item_free((ASN1_VALUE *)raw, ASN1_ITEM_rptr(CSR_RAW));
    ERR_clear_error();
    return rc;
}

/* The DER of a request read for issuance: the fast path, else OpenSSL's full parse. */
static int read_der(const unsigned char *data, size_t len, struct ca_csr *out)
{
    struct target t = {&out->req, NULL};
    unsigned char *der = NULL;
    int rc, n;

    if ((rc = read_fast(data, len, out)) != 1)
        return rc;
    if ((rc = der_parse(data, len, &t)) != MQPKI_OK || (rc = ca_csr_check(out->req)) != MQPKI_OK)
        return rc;
    if ((out->pub = X509_REQ_get_pubkey(out->req)) == NULL)
        return mqpki_fail(MQPKI_ERR_PARSE, "CSR has no usable public key");
    /* No key as it came on this way: it is fingerprinted and certified from the decoded key,
     * canonically (an encoding the fast way did not take is never trusted as it is). */
    if ((n = i2d_X509_REQ(out->req, &der)) <= 0 || SHA256(der, (size_t)n, out->sha256) == NULL)
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot hash the CSR");
    OPENSSL_free(der);
    return rc;
}

int ca_csr_read(const unsigned char *data, size_t len, struct ca_csr *out)
{
    struct target t = {NULL, out};
    int rc;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_csr_read: out is NULL");
    memset(out, 0, sizeof(*out));
    if ((rc = parse_any(data, len, &t)) != MQPKI_OK)
        ca_csr_clear(out);
    return rc;
}

void ca_csr_clear(struct ca_csr *c)
{
    if (c == NULL)
        return;
    X509_REQ_free(c->req);
    X509_PUBKEY_free(c->own_spki);
    EVP_PKEY_free(c->pub);
    memset(c, 0, sizeof(*c));
}
