/*
 * CSR intake: strict parsing of PKCS#10 requests as they arrive over EST or from the CLI, and
 * the CSR policy of DESIGN.md section 4 (proof of possession, key allow-list). The subject and
 * extensions of a request are never looked at: the issuance options decide those.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "ca_int.h"
#include "common.h"

/* Parses DER that must make up the whole of data (no trailing bytes). */
static int der_parse(const unsigned char *data, size_t len, X509_REQ **out)
{
    const unsigned char *p = data;
    X509_REQ *req;

    req = d2i_X509_REQ(NULL, &p, (long)len);
    if (req == NULL)
        return ca_ossl_fail(MQPKI_ERR_PARSE, "CSR: malformed or truncated DER");
    if (p != data + len) {
        X509_REQ_free(req);
        return mqpki_fail(MQPKI_ERR_PARSE, "CSR: %zu trailing bytes after the DER structure",
                          (size_t)(data + len - p));
    }
    *out = req;
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
static int pem_parse(const unsigned char *data, size_t len, X509_REQ **out)
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
    if ((rc = der_parse(der, (size_t)derlen, out)) != MQPKI_OK)
        goto out;
    /* A second object would be ignored silently by OpenSSL; refuse it instead. */
    restlen = BIO_get_mem_data(bio, &rest);
    for (i = 0; i < restlen; i++) {
        if (!is_space((unsigned char)rest[i])) {
            X509_REQ_free(*out);
            *out = NULL;
            rc = mqpki_fail(MQPKI_ERR_PARSE, "CSR: unexpected data after the PEM block");
            goto out;
        }
    }
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
static int b64_parse(const unsigned char *data, size_t len, X509_REQ **out)
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
    rc = der_parse(der, total, out);
out:
    EVP_ENCODE_CTX_free(ctx);
    free(der);
    return rc;
}

int ca_csr_parse(const unsigned char *data, size_t len, X509_REQ **out)
{
    static const char begin[] = "-----BEGIN";
    int rc;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_csr_parse: out is NULL");
    *out = NULL;
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
        rc = der_parse(data, len, out);
    else if (memmem(data, len, begin, sizeof(begin) - 1) != NULL)
        rc = pem_parse(data, len, out);
    else
        rc = b64_parse(data, len, out);
out:
    ERR_clear_error();
    return rc;
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
    return pk != NULL && pklen > 0 && pk[0] == 0x04 &&
           ((curve == NID_X9_62_prime256v1 && pklen == 65) ||
            (curve == NID_secp384r1 && pklen == 97));
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
