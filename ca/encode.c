/*
 * Encodings handed to the rest of mqpki: PEM and DER in malloc'd buffers (so callers free them
 * with free() and need not know about OPENSSL_free), a strict single-certificate PEM parser and
 * the serial format shared with ca_serial_new().
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>

#include "ca_int.h"
#include "common.h"

#define CERT_PEM_MAX (64 * 1024)

/* Copies the contents of a memory BIO into a NUL-terminated heap buffer. */
static int bio_take(BIO *bio, char **out, size_t *len)
{
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *buf;

    if (n < 0 || data == NULL)
        return ca_ossl_fail(MQPKI_ERR_CRYPTO, "PEM buffer");
    buf = malloc((size_t)n + 1);
    if (buf == NULL)
        return MQPKI_ERR_NOMEM;
    memcpy(buf, data, (size_t)n);
    buf[n] = '\0';
    *out = buf;
    *len = (size_t)n;
    return MQPKI_OK;
}

int ca_cert_pem(X509 *cert, char **out, size_t *len)
{
    BIO *bio = NULL;
    int rc;

    if (out == NULL || len == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_cert_pem: out and len are needed");
    *out = NULL;
    *len = 0;
    if (cert == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "ca_cert_pem: no certificate");
        goto out;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!PEM_write_bio_X509(bio, cert)) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode certificate PEM");
        goto out;
    }
    rc = bio_take(bio, out, len);
out:
    BIO_free(bio);
    return rc;
}

int ca_crl_der_pem(const unsigned char *der, size_t der_len, char **out, size_t *len)
{
    BIO *bio = NULL;
    int rc;

    if (out == NULL || len == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_der_pem: out and len are needed");
    *out = NULL;
    *len = 0;
    if (der == NULL || der_len == 0 || der_len > LONG_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_der_pem: no CRL");
    if ((bio = BIO_new(BIO_s_mem())) == NULL)
        return MQPKI_ERR_NOMEM;
    /* What PEM_write_bio_X509_CRL writes, from the DER as it is: no parse of its entries. */
    if (PEM_write_bio(bio, PEM_STRING_X509_CRL, "", der, (long)der_len) <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode CRL PEM");
        goto out;
    }
    rc = bio_take(bio, out, len);
out:
    BIO_free(bio);
    return rc;
}

int ca_crl_pem(X509_CRL *crl, char **out, size_t *len)
{
    BIO *bio = NULL;
    int rc;

    if (out == NULL || len == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_pem: out and len are needed");
    *out = NULL;
    *len = 0;
    if (crl == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_pem: no CRL");
        goto out;
    }
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!PEM_write_bio_X509_CRL(bio, crl)) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode CRL PEM");
        goto out;
    }
    rc = bio_take(bio, out, len);
out:
    BIO_free(bio);
    return rc;
}

int ca_crl_der(X509_CRL *crl, unsigned char **out, size_t *len)
{
    unsigned char *buf = NULL, *p;
    int n;
    int rc = MQPKI_OK;

    if (out == NULL || len == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_der: out and len are needed");
    *out = NULL;
    *len = 0;
    if (crl == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "ca_crl_der: no CRL");
        goto out;
    }
    n = i2d_X509_CRL(crl, NULL);
    if (n <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode CRL DER");
        goto out;
    }
    /* Encoded into our own malloc'd buffer so that the caller frees it with free(). */
    buf = malloc((size_t)n);
    if (buf == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    p = buf;
    if (i2d_X509_CRL(crl, &p) != n) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "encode CRL DER");
        goto out;
    }
    *out = buf;
    *len = (size_t)n;
    buf = NULL;
out:
    free(buf);
    return rc;
}

int ca_cert_from_pem(const char *pem, size_t len, X509 **out)
{
    BIO *bio = NULL;
    X509 *cert = NULL;
    char *name = NULL, *header = NULL;
    unsigned char *der = NULL;
    long derlen = 0;
    int rc = MQPKI_OK;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_cert_from_pem: out is NULL");
    *out = NULL;
    if (len > CERT_PEM_MAX) {
        rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "certificate PEM is %zu bytes; the limit is %d", len,
                        CERT_PEM_MAX);
        goto out;
    }
    if (pem == NULL || len == 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "certificate PEM is empty");
        goto out;
    }
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (cert == NULL) {
        rc = ca_ossl_fail(MQPKI_ERR_PARSE, "certificate PEM");
        goto out;
    }
    /* Exactly one: a second block (a chain, a key) means the caller passed the wrong thing. */
    if (PEM_read_bio(bio, &name, &header, &der, &derlen)) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "certificate PEM holds more than one block (\"%.40s\")",
                        name);
        goto out;
    }
    *out = cert;
    cert = NULL;
out:
    ERR_clear_error();
    BIO_free(bio);
    X509_free(cert);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    return rc;
}

int ca_cert_serial_hex(X509 *cert, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    out[0] = '\0';
    if (cert == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_cert_serial_hex: no certificate");
    if (proto_serial_hex(X509_get0_serialNumber(cert), out) != 0)
        return mqpki_fail(MQPKI_ERR_PARSE, "certificate serial is negative or longer than 20 "
                                           "octets (RFC 5280 4.1.2.2)");
    return MQPKI_OK;
}
