/*
 * crlcheck: CRL verification shared by the broker plugin and `mqpki crl-sync` (DESIGN.md 6).
 * Every CRL arriving over MQTT is hostile until proven otherwise: this file checks that the
 * DER parses exactly, that one of the trusted CA certificates signed it, and where it stands in
 * the CRL number sequence (no rollback, RFC 5280 5.2.3). It depends on OpenSSL only, so that the
 * plugin links nothing of the CA side. Failures describe themselves in `why` (one line, no
 * secrets); functions return 0 on success and -1 on refusal.
 */
#ifndef MQPKI_CRLCHECK_H
#define MQPKI_CRLCHECK_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

/* Hard cap on a CRL payload: 1,000,000 entries of ~40 bytes fit well within it. */
#define CRLCHECK_MAX_DER (64u * 1024u * 1024u)
/* Serial numbers are compared as 16-byte keys (crlcheck_serial_key). */
#define CRLCHECK_KEY_LEN 16
/* SHA-256 of an issuer name's DER, to tell which CA a serial belongs to. */
#define CRLCHECK_ISSUER_LEN 32

struct crlcheck_info {
    int64_t number;      /* cRLNumber */
    int64_t base;        /* deltaCRLIndicator's BaseCRLNumber; -1 for a full CRL */
    int64_t this_update; /* seconds since the epoch */
    int64_t next_update; /* 0 when absent */
    unsigned char issuer[CRLCHECK_ISSUER_LEN];
    size_t n_entries;
};

/*
 * Loads the trusted CRL signers from a PEM bundle (the issuing chain). Only CA certificates are
 * kept; when the bundle holds a non-self-signed CA (the issuing CA), self-signed roots are left
 * out, so that a root's own CRL cannot replace the issuing CA's list. Caller frees with
 * sk_X509_pop_free(.., X509_free).
 */
int crlcheck_load_cas(const char *path, STACK_OF(X509) * *out, char *why, size_t why_len);

/* Parses a DER CRL of at most CRLCHECK_MAX_DER bytes, refusing trailing bytes. */
int crlcheck_parse(const unsigned char *der, size_t len, X509_CRL **out, char *why, size_t why_len);

/*
 * Verifies crl: issuer among cas (name and, when present, AKI = SKI of the CA), the CA may sign
 * CRLs (keyUsage cRLSign when keyUsage is present), the signature, a CRL number, and a base
 * for a delta CRL. Fills *info.
 */
int crlcheck_verify(X509_CRL *crl, STACK_OF(X509) * cas, struct crlcheck_info *info, char *why,
                    size_t why_len);

/* Verdicts of crlcheck_order. */
enum crlcheck_order {
    CRLCHECK_ACCEPT, /* newer: take it */
    CRLCHECK_SAME,   /* the one already held (a retained copy re-delivered): nothing to do */
    CRLCHECK_REFUSE, /* older than held, or a delta without a usable base */
};

/*
 * Places a verified CRL against what is held (held_full / held_delta: CRL numbers, -1 when none).
 * A full CRL is refused when its number is lower than the held full one; a delta when its
 * number is lower than the held delta, not above the held full CRL, or when its base is newer
 * than the held full CRL (RFC 5280 5.2.4: the delta extends a complete CRL numbered >= base).
 */
enum crlcheck_order crlcheck_order(const struct crlcheck_info *info, int64_t held_full,
                                   int64_t held_delta, char *why, size_t why_len);

/*
 * The 16-byte key of a serial number: its magnitude right-aligned when it has at most 15 bytes
 * (the first byte then holds the length), a 16-byte magnitude as is (mqpki's serials), else a
 * SHA-256 prefix. Equal serials give equal keys; distinct ones collide with negligible odds.
 */
void crlcheck_serial_key(const ASN1_INTEGER *serial, unsigned char key[CRLCHECK_KEY_LEN]);

/* SHA-256 of the DER of a name. Returns 0, or -1 when it cannot be encoded. */
int crlcheck_name_digest(const X509_NAME *name, unsigned char out[CRLCHECK_ISSUER_LEN]);

#endif
