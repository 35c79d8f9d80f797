/*
 * ca: pure CA logic on OpenSSL. Builds the root and issuing CA certificates, parses and checks
 * PKCS#10 requests under the CSR policy, issues leaves under fixed profiles and builds full and
 * delta CRLs. It signs through the EVP_PKEY that hsm/ hands it and never touches sockets, files
 * or SQL: the caller decides, the CA signs.
 */
#ifndef MQPKI_CA_H
#define MQPKI_CA_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "proto.h"

/* A CSR larger than this is refused before parsing. */
#define CA_CSR_MAX    (64 * 1024)
#define CA_SERIAL_LEN 16

struct ca;

enum ca_profile {
    CA_PROFILE_DEVICE,
    CA_PROFILE_BROKER,
    CA_PROFILE_SERVICE,
    CA_PROFILE_OPERATOR,
    CA_PROFILE_COUNT_
};

/* Key usage bits of a profile; KEY_ENCIPHERMENT_RSA applies to RSA subject keys only. */
enum { CA_KU_DIGITAL_SIGNATURE = 1, CA_KU_KEY_ENCIPHERMENT_RSA = 2 };
/* subjectAltName kinds a profile may carry (the asset URI always). */
enum { CA_SAN_URI = 1, CA_SAN_DNS = 2, CA_SAN_IP = 4 };
#define CA_PROFILE_EKU_MAX 4

/* A certificate profile (DESIGN.md 4): one row of the table in ca/profile.c. */
struct ca_profile_info {
    enum ca_profile id;
    const char *name;            /* "device", "broker", "service": also the asset kind it fits */
    unsigned key_usage;          /* CA_KU_* */
    int eku[CA_PROFILE_EKU_MAX]; /* extended key usage NIDs, 0-terminated */
    int default_days;            /* validity when the request names none */
    unsigned san;                /* CA_SAN_* allowed */
    int requestable;             /* may be asked for by an operator or over EST (not: service) */
};

/* The profile's row; NULL for an unknown profile. */
const struct ca_profile_info *ca_profile(int profile);

/* RFC 5280 5.3.1 reason codes (numeric values as in the standard). */
enum ca_reason {
    CA_REASON_UNSPECIFIED = 0,
    CA_REASON_KEY_COMPROMISE = 1,
    CA_REASON_CA_COMPROMISE = 2,
    CA_REASON_AFFILIATION_CHANGED = 3,
    CA_REASON_SUPERSEDED = 4,
    CA_REASON_CESSATION = 5,
    CA_REASON_HOLD = 6,
    /* 7 is not used; removeFromCRL (8) appears only in delta CRLs: a hold lifted. */
    CA_REASON_REMOVE_FROM_CRL = 8,
};

/* "device", "broker", "service" <-> enum; -1 / NULL when unknown. */
int ca_profile_parse(const char *name);
const char *ca_profile_name(enum ca_profile profile);

/* CLI names ("key-compromise", "ca-compromise", "affiliation-changed", "superseded",
 * "cessation", "hold", "unspecified", "remove-from-crl") <-> enum; -1 / NULL when unknown. */
int ca_reason_parse(const char *name);
const char *ca_reason_name(enum ca_reason reason);

/*
 * Self-signed root CA: subject CN=name, basicConstraints critical CA:TRUE, keyUsage critical
 * keyCertSign+cRLSign, SKI. Signed with key (an hsm/ key).
 */
int ca_root_create(EVP_PKEY *key, const char *name, int days, X509 **out);

/*
 * Issuing CA under root: subject CN=name, CA:TRUE pathlen 0, keyCertSign+cRLSign, SKI/AKI.
 * issuing_key supplies the public key; root_key signs.
 */
int ca_issuing_create(X509 *root, EVP_PKEY *root_key, EVP_PKEY *issuing_key, const char *name,
                      int days, X509 **out);

/*
 * The certificate of the CA's audit key (the key that signs audit checkpoints): subject
 * CN=name, issued and signed by the root, basicConstraints critical CA:FALSE, keyUsage critical
 * digitalSignature+nonRepudiation, SKI/AKI. audit_key supplies the public key; root_key signs.
 * It binds the audit key to the root that devices and brokers already trust, so that replacing
 * it needs the root key (docs/security.md, "Audit").
 */
int ca_audit_cert_create(X509 *root, EVP_PKEY *root_key, EVP_PKEY *audit_key, const char *name,
                         int days, X509 **out);

/*
 * A PKCS#10 request for a CA key (a new issuing CA generation whose root is offline): subject
 * copied from subject, the public key of key, signed by key (a token key: proof of
 * possession). No extensions: the root decides them (ca_issuing_create). PEM, heap.
 */
int ca_ca_request(EVP_PKEY *key, const X509_NAME *subject, char **pem, size_t *len);

/*
 * Opens an issuer: the issuing CA certificate and its (token) key, the root, and the base URL
 * for the CRL distribution point (URL/crl/issuing.crl; NULL for none). Takes its own
 * references; the caller keeps and frees its own. Checks that key matches issuing_cert.
 */
int ca_open(X509 *issuing_cert, EVP_PKEY *issuing_key, X509 *root, const char *base_url,
            struct ca **out);
void ca_free(struct ca *ca);

/* Signs a fixed message with the issuing key and verifies it with the issuing certificate:
 * MQPKI_OK when the token is reachable and holds the key (health checks). */
int ca_selftest(struct ca *ca);

/* The issuing CA certificate and the root (borrowed references). */
X509 *ca_issuing_cert(const struct ca *ca);
X509 *ca_root_cert(const struct ca *ca);

/*
 * Parses a PKCS#10 request from DER, PEM, or base64 DER (as EST sends it), at most CA_CSR_MAX
 * bytes, and rejects trailing garbage. MQPKI_ERR_TOO_LARGE, MQPKI_ERR_PARSE; *out NULL on
 * failure.
 */
int ca_csr_parse(const unsigned char *data, size_t len, X509_REQ **out);

/* A request read for issuance (ca_csr_read). */
struct ca_csr {
    X509_REQ *req;            /* OpenSSL's parse, when the request took that way; else NULL */
    const X509_PUBKEY *spki;  /* its key as it came when canonical (ca_spki_canonical), else
                               * NULL: for ca_spki_fingerprint() and ca_issue_opts.spki */
    X509_PUBKEY *own_spki;    /* what spki points to when req does not hold it */
    EVP_PKEY *pub;            /* the key */
    unsigned char sha256[32]; /* SHA-256 of the request's DER: its identity for a retry */
};

/*
 * ca_csr_parse() and ca_csr_check() in one, for issuance: the same formats, limits, policy and
 * error details. A request with a canonical EC key and an ECDSA signature is read without
 * OpenSSL decoding its key through the decoder framework (one key object made from the curve
 * and point, the signature checked over the signed bytes as they came); any other request,
 * and any such request this fast way refuses, is parsed and checked in full. ca_csr_clear()
 * frees it, also after a failure.
 */
int ca_csr_read(const unsigned char *data, size_t len, struct ca_csr *out);
void ca_csr_clear(struct ca_csr *c);

/*
 * CSR policy (DESIGN.md 4): the self-signature verifies (proof of possession) and the key is
 * EC P-256, EC P-384 or RSA >= 2048 (and <= 8192). MQPKI_ERR_POLICY with a detail naming the
 * rule. Extensions and subject in the request are ignored, never refused or copied.
 */
int ca_csr_check(X509_REQ *req);

/* The same allow-list for a CA's key (a new issuing CA generation, `mqpki root sign`): EC P-256
 * or P-384 on a named curve, or RSA of 3072 to 8192 bits. MQPKI_ERR_POLICY otherwise. */
int ca_ca_key_check(EVP_PKEY *pkey);

/* MQPKI_ERR_POLICY for an EC key encoded with explicit curve parameters (RFC 5480 2.1.1). */
int ca_key_check_named(EVP_PKEY *pkey);

/* SHA-256 of the DER SubjectPublicKeyInfo in one canonical form (EC: named curve, uncompressed
 * point), hex, to detect key reuse across assets whatever the key's encoding. */
int ca_pubkey_fingerprint(EVP_PKEY *pub, char out[PROTO_FP_HEX_LEN + 1]);

/* 1 when spki is an EC key in the one form ca_pubkey_fingerprint() hashes (a named curve, an
 * uncompressed P-256 or P-384 point): its DER is then the canonical encoding as it is, and
 * ca_spki_fingerprint() and ca_issue_cert() use it without decoding or encoding the key. RSA
 * keys are never taken as they are (their inner INTEGERs could be re-encoded): 0. */
int ca_spki_canonical(const X509_PUBKEY *spki);

/* ca_pubkey_fingerprint() of a key in canonical form (ca_spki_canonical), from its DER alone;
 * MQPKI_ERR_INVALID for any other. */
int ca_spki_fingerprint(const X509_PUBKEY *spki, char out[PROTO_FP_HEX_LEN + 1]);

/* Fresh random serial: CA_SERIAL_LEN bytes from the CSPRNG, top bit cleared, never zero; as
 * upper-case hex without leading zeros stripped (always 32 digits). */
int ca_serial_new(char out[PROTO_SERIAL_HEX_MAX + 1]);

struct ca_issue_opts {
    enum ca_profile profile;
    const char *asset_id;   /* CN, and the SAN URI PROTO_ASSET_URN + ID */
    const char *const *dns; /* SAN dNSName entries (broker, service) */
    size_t n_dns;
    const char *const *ips; /* SAN iPAddress entries, textual v4/v6 (broker, service) */
    size_t n_ips;
    int days;               /* validity; the profile's default when 0 */
    int64_t not_before;     /* 0: now minus 5 minutes of clock-skew allowance */
    const char *serial_hex; /* from ca_serial_new */
    /* The request's SubjectPublicKeyInfo, the one pub was decoded from, when
     * ca_spki_canonical() says so: the certificate carries its fields as they are, without
     * encoding pub again (OpenSSL 3.0 encodes and decodes the key once more for that). The
     * certificate then holds no key object (X509_get0_pubkey() gives NULL until it is parsed
     * again). NULL: the key is encoded from pub. */
    const X509_PUBKEY *spki;
};

/*
 * Issues a leaf for pub under opts. Sets subject, validity, KU/EKU by profile, basicConstraints
 * critical CA:FALSE, SKI/AKI, SAN, CRL distribution point; nothing comes from the request.
 * Signs with the issuing key (SHA-256, or SHA-384 for a P-384 CA). Thread-safe.
 */
int ca_issue_cert(struct ca *ca, EVP_PKEY *pub, const struct ca_issue_opts *opts, X509 **out);

struct ca_crl_entry {
    const char *serial_hex;
    int64_t revoked_at;
    enum ca_reason reason;
};

/*
 * Builds and signs a v2 CRL: CRL number, AKI, entries with reason codes (unspecified is
 * omitted, as RFC 5280 5.3.1 recommends), thisUpdate/nextUpdate. base_crl_number >= 0 makes it
 * a delta CRL (critical deltaCRLIndicator naming that base), the only kind that may carry
 * removeFromCRL entries. Entries must be valid.
 */
int ca_crl_build(struct ca *ca, int64_t crl_number, int64_t base_crl_number,
                 const struct ca_crl_entry *entries, size_t n_entries, int64_t this_update,
                 int64_t next_update, X509_CRL **out);

/*
 * ca_crl_build() without the final parse into an X509_CRL: the signed CRL as DER in a malloc'd
 * buffer (*der, caller frees with free()). For callers that only store and publish the bytes,
 * this skips OpenSSL's decoding of every entry, the larger part of the cost of a big CRL.
 */
int ca_crl_encode(struct ca *ca, int64_t crl_number, int64_t base_crl_number,
                  const struct ca_crl_entry *entries, size_t n_entries, int64_t this_update,
                  int64_t next_update, unsigned char **der, size_t *der_len);

/*
 * The CRL der (ca_crl_encode's, signed by another key of this CA's name) signed by ca: the same
 * TBSCertList (number, times, entries, extensions) but for the authorityKeyIdentifier, which
 * names ca's key, signed by it. For an older issuing CA generation after a rollover: relying
 * parties that want each certificate's CRL from its own issuing key get it. MQPKI_ERR_STATE
 * when ca signs with another algorithm or has a key identifier of another length.
 */
int ca_crl_resign(struct ca *ca, const unsigned char *der, size_t der_len, unsigned char **out,
                  size_t *out_len);

/* PEM / DER encodings into a heap buffer the caller frees (OPENSSL_free is not needed: free). */
int ca_cert_pem(X509 *cert, char **out, size_t *len);
int ca_crl_pem(X509_CRL *crl, char **out, size_t *len);
/* The PEM of a DER CRL, byte for byte what ca_crl_pem writes, without parsing it (a million
 * entries parsed cost seconds and hundreds of MB). The DER is not checked. */
int ca_crl_der_pem(const unsigned char *der, size_t der_len, char **out, size_t *len);
int ca_crl_der(X509_CRL *crl, unsigned char **out, size_t *len);

/* Parses one PEM certificate (at most 64 KiB). */
int ca_cert_from_pem(const char *pem, size_t len, X509 **out);

/* Serial of cert as upper-case hex (as ca_serial_new formats it). */
int ca_cert_serial_hex(X509 *cert, char out[PROTO_SERIAL_HEX_MAX + 1]);

#endif
