/*
 * ca internals shared by root.c, issue.c, crl.c, policy.c and encode.c. Not for other modules.
 */
#ifndef MQPKI_CA_INT_H
#define MQPKI_CA_INT_H

#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"

/*
 * An opened issuer. Everything here is written once in ca_open() and only read afterwards, so
 * that ca_issue_cert() and ca_crl_build() can run on many threads without a lock.
 */
struct ca {
    X509 *issuing;          /* issuing CA certificate (own reference) */
    X509 *root;             /* root CA certificate (own reference) */
    EVP_PKEY *key;          /* issuing CA key, possibly a token key (own reference) */
    const EVP_MD *md;       /* signature digest derived from key */
    X509_NAME *issuer_name; /* own copy of the issuing CA subject, already encoded */
    X509_EXTENSION *aki;    /* authorityKeyIdentifier (keyid of the issuing CA) for leaves, CRLs */
    X509_EXTENSION *crl_dp; /* cRLDistributionPoints for leaves; NULL without base_url */
    char *base_url;
};

/* Clock-skew allowance subtracted from "now" for notBefore. */
#define CA_SKEW_SECONDS 300

/*
 * Records an OpenSSL failure as rc with the step and the first queued OpenSSL error, then
 * clears the queue (so that a later failure does not report a stale reason). Returns rc.
 */
int ca_ossl_fail(int rc, const char *step);

/*
 * The signature digest for a CA key: SHA-384 for EC keys of 384 bits and more, SHA-256 for
 * EC P-256 and RSA. NULL for other key types, which the CA does not sign with. Only public
 * properties are read, so token keys work.
 */
const EVP_MD *ca_md_for_key(EVP_PKEY *key);

/* Adds to x the extension nid built from the structure val (i2d'd by nid's method), critical or
 * not, replacing one already there; `what` names it in the error. */
int ca_add_ext(X509 *x, int nid, void *val, int crit, const char *what);

/* Parses a serial in hex (1 to 40 digits, positive, non-zero) into a new ASN1_INTEGER. */
int ca_serial_parse(const char *hex, ASN1_INTEGER **out);

/* Same, into an existing ASN1_INTEGER, reusing bn as scratch (for the CRL's hot loop). */
int ca_serial_parse_into(const char *hex, BIGNUM *bn, ASN1_INTEGER *out);

/* SHA-1 of the subjectPublicKey BIT STRING (RFC 5280 4.2.1.2 method 1) as a new OCTET STRING. */
int ca_key_id(X509 *cert, ASN1_OCTET_STRING **out);

/*
 * Sets the validity of x to [not_before, not_before + seconds]. Times before 2050 are encoded
 * as UTCTime, later ones as GeneralizedTime (RFC 5280 4.1.2.5).
 */
int ca_set_validity(X509 *x, int64_t not_before, int64_t seconds);

/* Builds "O=mqpki, CN=cn" (CN of 1..64 characters, the X.520 upper bound). */
int ca_name_build(const char *cn, X509_NAME **out);

#endif
