/*
 * lifecycle: the use cases of a certificate's and an asset's life (DESIGN.md 8, 10): issue
 * (renew, supersede), revoke, hold, unhold, decommission, and CRL publication. Every front end (the
 * CLI, mqpkid, the dashboard) calls these; none composes them from store calls itself.
 *
 * A revocation, whatever its front end:
 *   1. one store transaction: certificate states, asset state, audit events, the revocation
 *      sequence, and a CRL number reserved in the outbox (pending);
 *   2. after the commit, publication (lifecycle_publish): the CRL is built from store state,
 *      signed, kept in the store (signed), handed to live consumers, exported, marked done.
 * Publication is idempotent and resumable: whoever runs it next finishes what a crash left
 * (a pending number is signed; a signed CRL is exported again, byte for byte the same); CRL
 * numbers only go up, on disk and at brokers, because one publisher at a time works through
 * the outbox in number order (the store's publication lock).
 *
 * Publication policy: a change of revocation state publishes a delta CRL at once; a full CRL is
 * signed when asked for (schedule, operator), when none exists yet, when the delta would carry
 * more than crl_delta_max entries, or crl_full_after the first delta since the last full CRL
 * (one full CRL for a whole burst of revocations, never one per revocation).
 */
#ifndef MQPKI_LIFECYCLE_H
#define MQPKI_LIFECYCLE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "ca.h"
#include "inventory.h"

/* A client whose answer was lost (connection dropped after the commit) and that sends the same
 * token with the same CSR within this many seconds gets the certificate already issued. */
#define LIFECYCLE_RETRY_SECONDS 600

struct lifecycle_issue_req {
    const char *asset_id;
    const unsigned char *csr; /* DER, PEM or base64 DER; at most CA_CSR_MAX bytes */
    size_t csr_len;
    int profile; /* enum ca_profile, or -1 for the one matching the asset's kind */
    int days;    /* validity; 0 for the configured default of the profile */
    int profile_days[CA_PROFILE_COUNT_]; /* configured defaults by profile ([ca] device_days,
                                            broker_days); 0: the profile's own */
    const char *token;       /* one-time token consumed with the record, or NULL (operator) */
    const char *auth_serial; /* re-enrollment: the client certificate that authenticated it,
                                checked again (valid or superseded, same asset) in the
                                transaction that records the new one; NULL otherwise */
    int supersede;           /* re-enrollment: the asset's other valid certificates superseded */
    int64_t reenroll_grace;  /* re-enrollment: how long a superseded certificate may still renew
                                (lifecycle_check_auth_cert) */
    const char *actor;       /* for the audit log: "cli", "est:ADDR", ... */
    const char *const *dns;  /* SAN DNS names (broker, service profiles) */
    size_t n_dns;
    const char *const *ips; /* SAN IP addresses (broker, service profiles) */
    size_t n_ips;
};

/*
 * Issuance, the one path for the operator CLI, EST and mqpkid's own identities. With a token,
 * authentication comes first: the asset must exist, not be decommissioned and hold a live
 * token matching it, else MQPKI_ERR_AUTH, the same for each of these, counted on the asset's
 * live tokens and audited ("enroll.refused") in one commit. Then the asset (profile matching its
 * kind), then the CSR (proof of possession, key policy); the certificate is signed and
 * recorded with its audit event, consuming the token (which records the CSR's hash and the
 * serial), in one transaction. A token already used for the same CSR (same DER) within
 * LIFECYCLE_RETRY_SECONDS gets that certificate again (a lost answer's retry: nothing is signed
 * or recorded, no second cert.issue); any other reuse is MQPKI_ERR_AUTH. *out is set only after
 * the commit: a certificate the store does not know never leaves. Errors as in common.h with a
 * one-line detail (MQPKI_ERR_PARSE bad CSR, MQPKI_ERR_POLICY refused, MQPKI_ERR_AUTH refused
 * token; without a token: MQPKI_ERR_NOT_FOUND unknown asset, MQPKI_ERR_STATE decommissioned).
 */
int lifecycle_issue(struct ca *ca, struct inventory *inv, const struct lifecycle_issue_req *req,
                    X509 **out);

/*
 * Group commit: one thread that records the certificates of many concurrent issuances in one
 * durable commit (its own store connection on db_path).
 */
struct lifecycle_committer;
int lifecycle_committer_start(const char *db_path, struct lifecycle_committer **out);
/* Finishes the queued records, then stops. NULL-safe. */
void lifecycle_committer_stop(struct lifecycle_committer *cm);

/* lifecycle_issue, with the record written by the committer cm (NULL: on inv, as
 * lifecycle_issue). inv is still used, read-only, for the asset checks. The certificate is for
 * encoding only (i2d, PEM, PKCS#7): when it carries the request's key as it came
 * (ca_issue_opts.spki) it holds no key object, and X509_get0_pubkey() gives NULL. */
int lifecycle_issue_batched(struct ca *ca, struct inventory *inv, struct lifecycle_committer *cm,
                            const struct lifecycle_issue_req *req, X509 **out);

/*
 * Records a refused enrollment in one transaction: the audit event "enroll.refused" (subject:
 * the asset the request named, "-" when none; detail: reason, which must never hold a token)
 * and, with token_failure, one failure on the asset's live tokens (attempt limits, burning).
 * lifecycle_issue records its own token refusals; EST calls this for the others (credentials
 * that do not parse, re-enrollment certificates refused).
 */
int lifecycle_record_refusal(struct inventory *inv, const char *asset, int token_failure,
                             const char *actor, const char *reason);

/*
 * The re-enrollment rule: MQPKI_OK when serial is in the store, of asset, and either valid (not
 * superseded, revoked, held or expired), or superseded less than `grace` seconds ago while it
 * asked for a renewal whose newest certificate (superseded_by) is still the asset's newest,
 * unused (it has not renewed itself, is not revoked, and no broker has seen it connect: the
 * device whose answers were lost retries);
 * MQPKI_ERR_AUTH with a detail otherwise. key_fp (may be NULL), the presented certificate's key
 * fingerprint (ca_pubkey_fingerprint), must be the stored certificate's: a certificate forged
 * with a stolen issuing CA key under a serial of ours carries another key. EST checks a
 * re-enrollment's client certificate with it; the recording transaction checks it again.
 */
int lifecycle_check_auth_cert(struct inventory *inv, const char *serial, const char *asset,
                              const char *key_fp, int64_t grace);

/*
 * Brings every stored key fingerprint to the canonical rule (ca_pubkey_fingerprint), once per
 * store, in one transaction (lifecycle/keys.c); *changed (may be NULL): how many changed.
 * Opening a data directory calls it.
 */
int lifecycle_keys_canonical(struct inventory *inv, int *changed);

struct lifecycle;

struct lifecycle_config {
    int64_t crl_validity;   /* nextUpdate - thisUpdate of every CRL, seconds */
    int64_t crl_full_every; /* a new full CRL is due once the newest is this old */
    int64_t crl_full_after; /* ... or once a delta CRL has extended it for this long (brokers
                               that read only full CRLs catch up); 0 turns this off */
    int64_t crl_delta_max;  /* a delta CRL with more entries is published as a full CRL */
};

/* Opens the use cases over a store handle (borrowed; one thread at a time, as the store). */
int lifecycle_new(struct inventory *inv, const struct lifecycle_config *cfg,
                  struct lifecycle **out);
void lifecycle_free(struct lifecycle *lc);

/* What a revocation-state change did. */
struct lifecycle_change {
    int changed;        /* certificates whose revocation state changed */
    int already;        /* certificates that were already in the asked-for state */
    int64_t crl_number; /* CRL number reserved for the publication; 0 when none */
    int64_t rev_seq;    /* highest revocation sequence value of the certificates concerned */
    int asset_state;    /* the asset's state afterwards (enum inventory_state), -1 unknown */
    int asset_was;      /* the asset's state before (decommission), -1 unknown */
    char asset[PROTO_ASSET_ID_MAX + 1];
    char serial[PROTO_SERIAL_HEX_MAX + 1]; /* the certificate (serial calls) */
    int assets;      /* a batch: assets whose certificates changed */
    int key_mates;   /* key compromise: other certificates of the same key revoked with it */
    char mates[256]; /* the first of them, "SERIAL (asset ID), ..." */
};

/*
 * Revokes one certificate with an RFC 5280 reason (CA_REASON_HOLD puts it on hold), or every
 * live certificate of an asset, in one transaction that also reserves the delta CRL's number.
 * A key compromise revokes every live certificate of the same public key with it, on every
 * asset (counted in key_mates): the key is what was compromised.
 * A certificate already revoked (or held, for a hold) is counted in `already`, not an error,
 * so that running the command again is safe; MQPKI_ERR_NOT_FOUND for an unknown serial or
 * asset; MQPKI_ERR_STATE when an asset has no certificate that could be revoked.
 */
int lifecycle_revoke(struct lifecycle *lc, const char *serial, int reason, const char *actor,
                     struct lifecycle_change *out);
int lifecycle_revoke_asset(struct lifecycle *lc, const char *asset, int reason, const char *actor,
                           struct lifecycle_change *out);

/* Called after each item of a batch: done of n. */
typedef void (*lifecycle_progress_cb)(size_t done, size_t n, void *ctx);

/*
 * A batch revocation (a selector: every asset of a location, tag or model): the live
 * certificates of the n assets, with one reason, in ONE transaction that reserves ONE delta CRL
 * number, so that one publication lists them all. Assets without a live certificate change
 * nothing. out->changed counts certificates, out->assets the assets that had some; crl_number
 * is 0 when nothing changed. progress (may be NULL) runs after each asset. Key compromise
 * revokes the same keys' other certificates too, as lifecycle_revoke.
 */
int lifecycle_revoke_assets(struct lifecycle *lc, const char *const *assets, size_t n, int reason,
                            const char *actor, lifecycle_progress_cb progress, void *ctx,
                            struct lifecycle_change *out);

/* Lifts a hold (the next delta CRL says removeFromCRL). MQPKI_ERR_STATE when not on hold. */
int lifecycle_unhold(struct lifecycle *lc, const char *serial, const char *actor,
                     struct lifecycle_change *out);

/* Lifts the holds of every certificate of the asset on hold, in one transaction with one delta
 * CRL number. MQPKI_ERR_STATE when none is on hold, MQPKI_ERR_NOT_FOUND for an unknown asset. */
int lifecycle_unhold_asset(struct lifecycle *lc, const char *asset, const char *actor,
                           struct lifecycle_change *out);

/* Revokes every live certificate of the asset (cessationOfOperation) and retires it, in one
 * transaction: no certificate can be issued in between. */
int lifecycle_decommission(struct lifecycle *lc, const char *asset, const char *actor,
                           struct lifecycle_change *out);

/* Reserves a CRL publication of kind (INV_CRL_FULL, INV_CRL_DELTA) for reason ("operator",
 * "schedule", "republish"). */
int lifecycle_crl_request(struct lifecycle *lc, int kind, const char *reason, const char *actor,
                          int64_t *number);

/* 1 in *due when a full CRL should be signed now: none yet, the newest is older than
 * crl_full_every, or a delta CRL has extended it for crl_full_after. */
int lifecycle_crl_due(struct lifecycle *lc, int64_t now, int *due);

/*
 * The scheduled full CRL, reserved at most once however many processes or replicas ask: the
 * due check and the reservation run in one write transaction, so the second to ask finds the
 * first one's pending CRL. *number: the reserved CRL number, 0 when none was due.
 */
int lifecycle_crl_schedule(struct lifecycle *lc, int64_t now, const char *actor, int64_t *number);

/* Number of publications not finished (pending or signed): work for lifecycle_publish. */
int lifecycle_open_count(struct lifecycle *lc, int64_t *count);

/* Where a publication goes besides the store. Either callback may be NULL. */
struct lifecycle_sink {
    /* A CRL was signed and is durable in the store: hand it to live consumers (the feed). */
    void (*signed_crl)(void *ctx, const struct inventory_crl *c, const unsigned char *der,
                       size_t len);
    /* Export it (the crl/ files): the newest signed CRL of each kind, never a lower number than
     * exported before. An error leaves it signed; the next lifecycle_publish exports the newest
     * signed CRL of its kind. MQPKI_ERR_BUSY for a delta: its base is not exported yet, or a
     * full CRL is being written to crl/ (a delta never waits for that); it stays signed,
     * without an error, for the exporter of the base (out->full_pending names it) or the next
     * publication. */
    int (*export_crl)(void *ctx, const struct inventory_crl *c, const unsigned char *der,
                      size_t len);
    void *ctx;
};

/* What lifecycle_publish did. */
struct lifecycle_publication {
    int signed_count;     /* CRLs signed by this call */
    int exported_count;   /* CRLs exported by this call */
    int64_t full_number;  /* newest signed full CRL afterwards, -1 when none */
    int64_t delta_number; /* newest signed delta CRL afterwards, -1 when none */
    int64_t entries;      /* entries of the last CRL signed by this call */
    int64_t full_pending; /* work left for lifecycle_full_sign: a scheduled full CRL to sign,
                           * or one to export (before the deltas on it); 0: none */
};

/*
 * Finishes every open publication under the store's publication lock (waiting up to lock_ms):
 * pending numbers are folded into one CRL built from current store state, signed with ca (needed
 * only when something is pending: MQPKI_ERR_STATE otherwise) and handed to sink->signed_crl;
 * then the newest signed CRL of each kind is exported. out may be NULL.
 */
int lifecycle_publish(struct lifecycle *lc, struct ca *ca, const struct lifecycle_sink *sink,
                      const char *actor, int lock_ms, struct lifecycle_publication *out);

/*
 * A full CRL of a million entries takes about a second to read from the store and encode; a
 * revocation's delta must not wait for it. So a full CRL asked for keeps the number it was given
 * (below the deltas signed meanwhile) and may be signed off the publication lock, by another
 * thread: lifecycle_publish_changes does what lifecycle_publish does but leaves a pending full
 * CRL that only the schedule asked for alone (out->full_pending names it; one an operator asked
 * for, who waits for it, is signed as before), and lifecycle_full_sign signs the highest pending
 * full CRL from a snapshot that holds everything committed before it was asked for, and hands
 * it to sink->signed_crl (the next lifecycle_publish* exports it). The deltas signed meanwhile
 * are based on the previous full CRL and list everything revoked since it, so the new full CRL
 * with the newest delta (RFC 5280 5.2.4: a delta applies to any complete CRL numbered at or
 * above its base) misses nothing, wherever they arrive in between. Two signers of one number:
 * the first to commit wins, the other's signature is never stored or seen.
 */
#define LIFECYCLE_FULL_SCHEDULED "schedule" /* the reason lifecycle_crl_schedule gives */
int lifecycle_publish_changes(struct lifecycle *lc, struct ca *ca,
                              const struct lifecycle_sink *sink, const char *actor, int lock_ms,
                              struct lifecycle_publication *out);
int lifecycle_full_sign(struct lifecycle *lc, struct ca *ca, const struct lifecycle_sink *sink,
                        const char *actor, struct lifecycle_publication *out);

/* Whether the newest signed CRL reflects revocation sequence value rev_seq (cutoff >= it). */
int lifecycle_crl_covers(struct lifecycle *lc, int64_t rev_seq, int *covered);

#endif
