/*
 * proto: the wire contract between mqpki's parts (DESIGN.md 6, 10). Topic names, the asset URN
 * and the certificate-to-asset rule, asset identifiers, serial and time helpers, named sizes,
 * and the checks every consumer applies to a CRL arriving over MQTT. The publisher (mqpkid),
 * the broker plugin, `mqpki crl-sync`, the device library, the CA and the CLI all link this one
 * copy, so they cannot drift apart. Depends on OpenSSL only.
 *
 * Functions that refuse hostile input say why in `why` (one line, no secrets) where they take
 * one, and return 0 on success, -1 on refusal.
 */
#ifndef MQPKI_PROTO_H
#define MQPKI_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

/* Sizes, each named once next to what it measures (text lengths exclude the NUL). */
#define PROTO_ASSET_ID_MAX   64  /* asset id: 1 to 64 of [A-Za-z0-9._-], not starting . or - */
#define PROTO_SERIAL_HEX_MAX 40  /* any RFC 5280 serial (at most 20 octets) in hex */
#define PROTO_FP_HEX_LEN     64  /* SHA-256 key fingerprint in hex */
#define PROTO_TOPIC_MAX      128 /* longest topic mqpki builds, NUL included */

/* Topics (DESIGN.md 6). Every mqpki control topic lives under PROTO_TOPIC_ROOT. */
#define PROTO_TOPIC_ROOT       "mqpki/v1/"
#define PROTO_TOPIC_CRL_FULL   "mqpki/v1/crl/full"
#define PROTO_TOPIC_CRL_DELTA  "mqpki/v1/crl/delta"
#define PROTO_TOPIC_CRL_ALL    "mqpki/v1/crl/#"
/* An older issuing CA generation's CRLs after a rollover (the current key's CRLs, on the two
 * topics above, cover every generation): + G + "/full" or "/delta", the same CRLs signed by
 * generation G's own key, for relying parties that want them so (crl-sync). */
#define PROTO_TOPIC_CRL_GENERATION "mqpki/v1/crl/generation/"
#define PROTO_TOPIC_EVENTS     "mqpki/v1/events/" /* + BROKER */
#define PROTO_TOPIC_EVENTS_ALL "mqpki/v1/events/+"
#define PROTO_TOPIC_ASSETS     "mqpki/v1/assets/" /* + ID + PROTO_TOPIC_CMD_SUFFIX */
#define PROTO_TOPIC_CMD_SUFFIX "/cmd"
#define PROTO_TOPIC_ALERTS     "mqpki/v1/alerts"
/* The assets under quarantine (JSON {"assets":[...]}, retained, published by mqpkid). */
#define PROTO_TOPIC_QUARANTINE  "mqpki/v1/quarantine"
#define PROTO_QUARANTINE_SUFFIX "/quarantine" /* fleet/ID + this: a quarantined asset's topic */
/* The issuing CA generations brokers trust (PEM: the current one, the other live ones, the
 * root; retained, published by mqpkid, ca/chain.pem): each must chain to the broker's root. */
#define PROTO_TOPIC_CA_ISSUERS "mqpki/v1/ca/issuers"
#define PROTO_ISSUERS_MAX      (64 * 1024) /* its largest payload */
#define PROTO_AKID_MAX         64          /* a key identifier mqpki compares */
/* The newest signed checkpoint of the CA's audit log (JSON, retained): a copy of the anchor
 * that whoever can write the CA's store cannot take back (docs/security.md, "Audit"). */
#define PROTO_TOPIC_AUDIT_CHECKPOINT "mqpki/v1/audit/checkpoint"

/* What every certificate mqpki issues names its asset by: a SAN URI PROTO_ASSET_URN + ID. */
#define PROTO_ASSET_URN "urn:mqpki:asset:"
/* The asset id of mqpkid's own identity (TLS, feed): the one service that publishes under
 * PROTO_TOPIC_ROOT. */
#define PROTO_SERVICE_ID "mqpkid"

_Static_assert(sizeof(PROTO_TOPIC_ASSETS) - 1 + PROTO_ASSET_ID_MAX +
                       sizeof(PROTO_TOPIC_CMD_SUFFIX) <=
                   PROTO_TOPIC_MAX,
               "an asset's command topic fits PROTO_TOPIC_MAX");
_Static_assert(sizeof(PROTO_TOPIC_EVENTS) + PROTO_ASSET_ID_MAX <= PROTO_TOPIC_MAX,
               "a broker's events topic fits PROTO_TOPIC_MAX");

/* 1 when id is a valid asset id (it becomes topic levels, certificate names, file names). */
int proto_asset_id_valid(const char *id);

/*
 * The asset a certificate names: exactly one SAN URI PROTO_ASSET_URN + ID with a valid ID and
 * no embedded NUL. Returns 1 and fills out, else 0 with out empty (also when two such URIs name
 * different assets: a certificate never speaks for two).
 */
int proto_cert_asset_id(X509 *cert, char out[PROTO_ASSET_ID_MAX + 1]);

/* 1 when topic is PROTO_TOPIC_ROOT's level itself or below it (the control plane). */
int proto_topic_is_control(const char *topic);

/* "mqpki/v1/events/BROKER" and "mqpki/v1/assets/ID/cmd": 0, or -1 for an invalid id. */
int proto_topic_events(const char *broker, char out[PROTO_TOPIC_MAX]);
int proto_topic_asset_cmd(const char *asset, char out[PROTO_TOPIC_MAX]);
/* PROTO_TOPIC_CRL_GENERATION G "/full" (delta 0) or "/delta"; and back (-1: not such a topic). */
int proto_topic_crl_generation(int gen, int delta, char out[PROTO_TOPIC_MAX]);
int proto_topic_crl_generation_parse(const char *topic, int *gen, int *delta);

/* An ASN1_TIME as seconds since the epoch: 0, or -1 when unreadable. */
int proto_asn1_time(const ASN1_TIME *t, int64_t *out);

/* A serial as upper-case hex, whole octets, no sign ("0A1B..."): 0, or -1 for a negative or
 * longer than 20-octet serial. */
int proto_serial_hex(const ASN1_INTEGER *serial, char out[PROTO_SERIAL_HEX_MAX + 1]);

/* A serial as a person or a script types it (hex digits, optional 0x prefix and ':' between
 * octets, any case) in the form proto_serial_hex gives, leading zero octets kept: 0, or -1 when
 * it is not 1 to 40 hex digits. */
int proto_serial_norm(const char *in, char out[PROTO_SERIAL_HEX_MAX + 1]);

/*
 * CRL checks shared by the broker plugin, `mqpki crl-sync` and the CLI. Every CRL arriving over
 * MQTT is hostile until proven otherwise: it must parse exactly, be signed by one of the trusted
 * CA certificates, and fit the CRL number sequence held (no rollback, RFC 5280 5.2.3).
 */

/* Hard cap on a CRL payload: 1,000,000 entries of ~40 bytes fit well within it. */
#define PROTO_CRL_MAX_DER (64u * 1024u * 1024u)
/* Serial numbers are compared as 16-byte keys (proto_serial_key). */
#define PROTO_SERIAL_KEY_LEN 16
/* SHA-256 of an issuer name's DER, to tell which CA a serial belongs to. */
#define PROTO_ISSUER_LEN 32

struct proto_crl_info {
    int64_t number;      /* cRLNumber */
    int64_t base;        /* deltaCRLIndicator's BaseCRLNumber; -1 for a full CRL */
    int64_t this_update; /* seconds since the epoch */
    int64_t next_update; /* 0 when absent */
    unsigned char issuer[PROTO_ISSUER_LEN];
    size_t n_entries;
    unsigned char akid[PROTO_AKID_MAX]; /* authorityKeyIdentifier's keyid: the signing key */
    size_t akid_len;                    /* 0 when absent (or longer than PROTO_AKID_MAX) */
};

/*
 * Loads the trusted CRL signers from a PEM bundle (the issuing chain). Only CA certificates are
 * kept; when the bundle holds a non-self-signed CA (the issuing CA), self-signed roots are left
 * out, so that a root's own CRL cannot replace the issuing CA's list. Caller frees with
 * sk_X509_pop_free(.., X509_free).
 */
int proto_crl_load_cas(const char *path, STACK_OF(X509) * *out, char *why, size_t why_len);

/* The self-signed CA certificates (the roots) of a PEM bundle; may be none. Caller frees. */
int proto_ca_roots_load(const char *path, STACK_OF(X509) * *out, char *why, size_t why_len);

/*
 * The issuing CAs of a PROTO_TOPIC_CA_ISSUERS message (PEM, at most PROTO_ISSUERS_MAX bytes)
 * that one of roots certified (name and signature) and that may sign CRLs: the CRL signers and
 * the issuers of client certificates to trust from now on. -1 with why when none is left.
 * Caller frees with sk_X509_pop_free(.., X509_free).
 */
int proto_issuers_verify(const void *pem, size_t len, STACK_OF(X509) * roots, STACK_OF(X509) * *out,
                         char *why, size_t why_len);

/* Parses a DER CRL of at most PROTO_CRL_MAX_DER bytes, refusing trailing bytes. */
int proto_crl_parse(const unsigned char *der, size_t len, X509_CRL **out, char *why,
                    size_t why_len);

/*
 * Verifies crl: issuer among cas (name and, when present, AKI = SKI of the CA), the CA may sign
 * CRLs (keyUsage cRLSign when keyUsage is present), the signature, a CRL number, and a base
 * for a delta CRL. Fills *info.
 */
int proto_crl_verify(X509_CRL *crl, STACK_OF(X509) * cas, struct proto_crl_info *info, char *why,
                     size_t why_len);

/* The public key of the CA of cas that issued crl (name and AKI), checked to be allowed to sign
 * CRLs. *key is borrowed from cas. 0, or -1 with why. */
int proto_crl_issuer_key(X509_CRL *crl, STACK_OF(X509) * cas, EVP_PKEY **key, char *why,
                         size_t why_len);

/*
 * A large CRL read from its DER without an X509_CRL of its entries (proto/crlder.c): the
 * entries stay bytes and are walked once into the caller's set; the signature is checked over
 * the TBSCertList bytes as they are. A million entries cost no allocation per entry.
 */
struct proto_crl_der {
    const unsigned char *tbs; /* the signed TBSCertList, header included (borrowed) */
    size_t tbs_len;
    const unsigned char *revoked; /* contents of revokedCertificates (borrowed); NULL if none */
    size_t revoked_len;
    X509_CRL *head; /* the same CRL with revokedCertificates cut out: header and extensions
                       (its signature does not cover it; use proto_crl_der_verify_sig) */
};

/*
 * The CRL notice (crlnotice.c): a full CRL of at least the feed's inline maximum goes to the
 * brokers as {"crl_ref":1, "number", "size", "sha256", "url"} on its topic (retained), and is
 * fetched from url off Mosquitto's thread. A payload whose first byte is '{' is a notice, one
 * starting with 0x30 a CRL.
 */
#define PROTO_CRL_NOTICE_MAX 1024
#define PROTO_URL_MAX        512
struct proto_crl_notice {
    int64_t number;
    size_t size;
    unsigned char sha256[32];
    char url[PROTO_URL_MAX + 1];
};
int proto_crl_notice_is(const unsigned char *payload, size_t len);
/* 1 when url is http:// or https://, at most PROTO_URL_MAX printable characters, no quote,
 * backslash or space. */
int proto_crl_url_ok(const char *url);
/* The notice for the CRL der (its number) at url; heap. 0, or -1. */
int proto_crl_notice_make(int64_t number, const unsigned char *der, size_t len, const char *url,
                          char **out, size_t *out_len);
/* Strict: exactly the five fields, version 1, each in range. 0, or -1 with why. */
int proto_crl_notice_parse(const unsigned char *payload, size_t len, struct proto_crl_notice *n,
                           char *why, size_t why_len);
/* 1 when der has the notice's size and SHA-256. */
int proto_crl_notice_matches(const struct proto_crl_notice *n, const unsigned char *der,
                             size_t len);
/* The certificates of a then b (either may be NULL) as PEM, for proto_crl_fetch's ca_pem. */
int proto_certs_pem(STACK_OF(X509) * a, STACK_OF(X509) * b, char **out, size_t *out_len);
/*
 * GETs url (crlfetch.c, libcurl: http or https, no redirects, no proxy, the peer verified
 * against ca_pem (PEM certificates in memory) or else ca_file, never the system's), at most
 * expect bytes (0: PROTO_CRL_MAX_DER), within timeout_ms; cancel (may be NULL) returning
 * nonzero stops it. *der is heap. 0, or -1 with why.
 */
int proto_crl_fetch(const char *url, const char *ca_file, const void *ca_pem, size_t ca_pem_len,
                    size_t expect, long timeout_ms, int (*cancel)(void *ctx), void *cancel_ctx,
                    unsigned char **der, size_t *len, char *why, size_t why_len);

/* Splits der (at most PROTO_CRL_MAX_DER bytes, nothing after it) into its parts; der must
 * outlive *out. 0, or -1 with why (nothing to clear then). */
int proto_crl_der_split(const unsigned char *der, size_t len, struct proto_crl_der *out, char *why,
                        size_t why_len);
void proto_crl_der_clear(struct proto_crl_der *d);

/* The cheap checks of proto_crl_verify (issuer among cas, cRLSign, v2, CRL number, base,
 * times), no signature: *key gets the issuer's key (borrowed from cas), info the fields
 * (n_entries 0: see proto_crl_der_entries). */
int proto_crl_der_check(const struct proto_crl_der *d, STACK_OF(X509) * cas, EVP_PKEY **key,
                        struct proto_crl_info *info, char *why, size_t why_len);

/* The signature over d->tbs as it is, by key (same algorithm inside and outside the TBS;
 * RSA-PSS is not supported here). 0, or -1 with why. */
int proto_crl_der_verify_sig(const struct proto_crl_der *d, EVP_PKEY *key, char *why,
                             size_t why_len);

/* Called per entry with its serial's key (proto_serial_key) and whether its reasonCode is
 * removeFromCRL; nonzero stops the walk (out of memory). */
typedef int (*proto_crl_entry_fn)(const unsigned char key[PROTO_SERIAL_KEY_LEN], int remove,
                                  void *ctx);

/* Walks the entries strictly (DER lengths, tags, minimal serials, entry extensions); fn may be
 * NULL to count and check only; *count (may be NULL) gets the number of entries. 0, or -1
 * with why. */
int proto_crl_der_entries(const struct proto_crl_der *d, proto_crl_entry_fn fn, void *ctx,
                          size_t *count, char *why, size_t why_len);

/* proto_serial_key of one DER INTEGER element (tag, length, contents; nothing after it).
 * 0, or -1 when it is not a minimal DER INTEGER. */
int proto_serial_key_der(const unsigned char *tlv, size_t tlv_len,
                         unsigned char key[PROTO_SERIAL_KEY_LEN]);

/* Reads number, base, times and entry count of a CRL without checking its signature (for
 * showing what a file holds; never for trusting it). 0, or -1 when unreadable. */
int proto_crl_describe(X509_CRL *crl, struct proto_crl_info *info, char *why, size_t why_len);

/* Verdicts of proto_crl_order. */
enum proto_crl_order {
    PROTO_CRL_ACCEPT, /* newer: take it */
    PROTO_CRL_SAME,   /* the one already held (a retained copy re-delivered): nothing to do */
    PROTO_CRL_REFUSE, /* older than held, or a delta without a usable base */
};

/*
 * Places a verified CRL against what is held (held_full / held_delta: CRL numbers, -1 when none).
 * A full CRL is refused when its number is lower than the held full one; a delta when its
 * number is lower than the held delta, not above the held full CRL, or when its base is newer
 * than the held full CRL (RFC 5280 5.2.4: the delta extends a complete CRL numbered >= base).
 */
enum proto_crl_order proto_crl_order(const struct proto_crl_info *info, int64_t held_full,
                                     int64_t held_delta, char *why, size_t why_len);

/*
 * The 16-byte key of a serial number: its magnitude right-aligned when it has at most 15 bytes
 * (the first byte then holds the length), a 16-byte magnitude as is (mqpki's serials), else a
 * SHA-256 prefix. Equal serials give equal keys; distinct ones collide with negligible odds.
 */
void proto_serial_key(const ASN1_INTEGER *serial, unsigned char key[PROTO_SERIAL_KEY_LEN]);

/* SHA-256 of the DER of a name. Returns 0, or -1 when it cannot be encoded. */
int proto_name_digest(const X509_NAME *name, unsigned char out[PROTO_ISSUER_LEN]);

/*
 * Audit checkpoints: the audit key (in the CA's token) signs, at moments the CA chooses, the
 * head of its hash-chained audit log. What is signed is exactly PROTO_AUDIT_TBS_LEN bytes:
 *
 *   PROTO_AUDIT_MAGIC with its NUL (26 bytes) || id || seq || head || time
 *
 * id, seq and time as 8-byte big-endian integers (time: seconds since the epoch, two's
 * complement), head the PROTO_AUDIT_HASH_LEN-byte SHA-256 hash of event seq. The signature is
 * over SHA-256 of those bytes: ECDSA (DER Ecdsa-Sig-Value) for an EC audit key, RSA PKCS#1
 * v1.5 for an RSA one, as `openssl dgst -sha256 -verify` checks it. id numbers the checkpoints
 * 1, 2, ... without gaps, so that a deleted one leaves a hole no signature can close.
 */
#define PROTO_AUDIT_MAGIC    "mqpki-audit-checkpoint/v1"
#define PROTO_AUDIT_HASH_LEN 32   /* SHA-256 of an audit event */
#define PROTO_AUDIT_SIG_MAX  1024 /* a signature: RSA-8192 at most */
#define PROTO_AUDIT_TBS_LEN  (sizeof(PROTO_AUDIT_MAGIC) + 8 + 8 + PROTO_AUDIT_HASH_LEN + 8)
#define PROTO_AUDIT_JSON_MAX 4096 /* a checkpoint as JSON (file, retained message) */

_Static_assert(PROTO_AUDIT_TBS_LEN == 82, "the signed checkpoint bytes are a fixed 82 bytes");

/* The bytes a checkpoint's signature covers, into out. */
void proto_audit_tbs(int64_t id, int64_t seq, const unsigned char head[PROTO_AUDIT_HASH_LEN],
                     int64_t time, unsigned char out[PROTO_AUDIT_TBS_LEN]);

/* Verifies sig over tbs (SHA-256) with pub, EC or RSA: 0, or -1 with why. */
int proto_audit_verify(EVP_PKEY *pub, const unsigned char *tbs, size_t tbs_len,
                       const unsigned char *sig, size_t sig_len, char *why, size_t why_len);

/*
 * The name of an RFC 5280 CRLReason code (0 unspecified, 1 key-compromise, ... 6 hold,
 * 8 remove-from-crl), as every --json output and audit event spells it; NULL for a code
 * without one. The one table of these names (docs/cli.md, "JSON fields").
 */
const char *proto_reason_name(int code);

#endif
