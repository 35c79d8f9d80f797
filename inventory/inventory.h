/*
 * inventory: the SQLite (WAL) store of one CA: assets and their lifecycle, certificates,
 * revocations, enrollment tokens, CRL numbers and the hash-chained audit log. Every change is
 * one transaction together with its audit event. Several processes may use one store at once
 * (SQLite locking, busy timeout); one handle is used by one thread at a time.
 */
#ifndef MQPKI_INVENTORY_H
#define MQPKI_INVENTORY_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

struct inventory;

/* Asset lifecycle (DESIGN.md 8). */
enum inventory_state {
    INV_STATE_REGISTERED,
    INV_STATE_ENROLLED,
    INV_STATE_ACTIVE,
    INV_STATE_SUSPENDED,
    INV_STATE_REVOKED,
    INV_STATE_DECOMMISSIONED,
    INV_STATE_COUNT_
};
/* "registered", ... <-> enum; -1 / NULL when unknown. */
int inventory_state_parse(const char *name);
const char *inventory_state_name(int state);

/* operator: a person using the dashboard (mqpki operator add), never a device. */
enum inventory_kind { INV_KIND_DEVICE, INV_KIND_BROKER, INV_KIND_SERVICE, INV_KIND_OPERATOR };
int inventory_kind_parse(const char *name);
const char *inventory_kind_name(int kind);

/* Certificate states. "valid", "revoked", "expired" (derived from not_after at read time),
 * "superseded" (replaced by a re-enrollment, still valid until it expires). */
enum inventory_cert_state {
    INV_CERT_VALID,
    INV_CERT_REVOKED,
    INV_CERT_EXPIRED,
    INV_CERT_SUPERSEDED
};
int inventory_cert_state_parse(const char *name);
const char *inventory_cert_state_name(int state);

#define INV_TEXT_MAX 256

struct inventory_asset {
    char id[PROTO_ASSET_ID_MAX + 1];
    int kind;                 /* enum inventory_kind */
    int state;                /* enum inventory_state */
    char model[INV_TEXT_MAX]; /* "" when unset */
    char hw_serial[INV_TEXT_MAX];
    char firmware[INV_TEXT_MAX];
    char location[INV_TEXT_MAX];
    char *tags_json; /* JSON object text, "{}" when none; freed by inventory_asset_clear */
    int64_t created_at;
    int64_t updated_at;
    int64_t last_seen; /* 0 when never seen by a broker */
    char last_address[INV_TEXT_MAX];
    char last_broker[INV_TEXT_MAX];
};
/* Frees what an inventory_asset owns (tags_json). NULL-safe. */
void inventory_asset_clear(struct inventory_asset *a);

struct inventory_cert {
    char serial[PROTO_SERIAL_HEX_MAX + 1]; /* upper-case hex */
    char asset_id[PROTO_ASSET_ID_MAX + 1];
    char profile[16]; /* "device", "broker", "service" */
    int64_t not_before;
    int64_t not_after;
    int state;                         /* enum inventory_cert_state, expiry derived at read time */
    char key_fp[PROTO_FP_HEX_LEN + 1]; /* SHA-256 of the SubjectPublicKeyInfo, hex */
    int64_t revoked_at;                /* 0 unless revoked */
    int reason;                        /* RFC 5280 reason code when revoked, else -1 */
    char *pem;                         /* freed by inventory_cert_clear; NULL when not requested */
    int64_t rev_seq;       /* place of its last revocation-state change in the revocation sequence
                              (0: never revoked); a CRL with cutoff >= rev_seq shows it */
    int64_t seen_at;       /* first connection a broker reported with it; 0: never */
    int64_t superseded_at; /* when a re-enrollment replaced it; 0: never */
    char superseded_by[PROTO_SERIAL_HEX_MAX + 1]; /* the certificate that replaced it, or "" */
};
void inventory_cert_clear(struct inventory_cert *c);

/*
 * Opens the store at target: an SQLite file path (created when missing; WAL, foreign keys, busy
 * timeout) or a postgresql:// URL (libpq syntax; several hosts allowed, the writable primary is
 * chosen). The schema is migrated to the current version, one transaction per step.
 * MQPKI_ERR_STORE with a detail when the file is not a database, is corrupt, or the server
 * cannot be reached. Error details never show a password the URL holds.
 */
int inventory_open(const char *target, struct inventory **out);
void inventory_close(struct inventory *inv);

/* 1 when the store is a PostgreSQL server shared by replicas, 0 for the embedded SQLite file. */
int inventory_is_remote(const struct inventory *inv);

/* 1 when target names a PostgreSQL store (a postgresql:// or postgres:// URL). */
int inventory_target_is_remote(const char *target);

/*
 * Publication wake-ups across replicas. inventory_listen subscribes this connection (use one
 * dedicated to waiting) to the outbox: every CRL reserved or signed by any process or replica
 * notifies it when its transaction commits. inventory_wait then returns 1 on a notification, 0
 * after timeout_ms without one (always 0 on SQLite, which has no notifications: it sleeps), or
 * an error (the connection was lost; the next wait reconnects).
 */
int inventory_listen(struct inventory *inv);
int inventory_wait(struct inventory *inv, int timeout_ms);

/*
 * Copies every row of the store `from` into the empty store `to` (`mqpki store migrate`): one
 * snapshot of the source, one transaction in the destination, row counts checked per table.
 * Values are copied exactly, so the audit chain and its checkpoints verify on the copy.
 * progress (may be NULL) is called every 10,000 rows and at the end of each table.
 * A destination that already holds exactly the source's rows (an earlier copy committed: the
 * same audit chain head and, table by table, the same rows) is left as it is: MQPKI_OK with
 * *already (may be NULL) set to 1; else *already is 0. MQPKI_ERR_EXISTS when the destination
 * holds anything else (another CA's store, a copy that diverged from the source), with a detail
 * saying which.
 */
typedef void (*inventory_copy_cb)(void *ctx, const char *table, int64_t rows);
int inventory_copy(struct inventory *from, struct inventory *to, inventory_copy_cb progress,
                   void *ctx, int *already);

/*
 * Transactions: several calls may be grouped in one durable commit (used by enrollment to
 * record a certificate and consume its token at once, and by the daemon to share one fsync among
 * several issuances). Calls made outside begin/commit run in their own transaction. Nested
 * begin is an error. rollback is NULL-safe and harmless without an open transaction.
 */
int inventory_begin(struct inventory *inv);
int inventory_commit(struct inventory *inv);
void inventory_rollback(struct inventory *inv);

/* A group of calls inside the open transaction that stand or fall together (one enrollment in
 * a batch sharing one commit): savepoint_end with keep 0 undoes the group only. */
int inventory_savepoint(struct inventory *inv);
int inventory_savepoint_end(struct inventory *inv, int keep);
/* This connection writes many savepoints per transaction (the group commit): their undo data
 * stays in memory where the engine allows it. */
int inventory_group_writer(struct inventory *inv);

/* Assets. actor names who acts ("cli:root", "est:10.0.0.5", "daemon") for the audit log. */
int inventory_asset_add(struct inventory *inv, const struct inventory_asset *a, const char *actor);
int inventory_asset_get(struct inventory *inv, const char *id, struct inventory_asset *out);

/* Lists assets in id order; state/kind -1 for any. The callback returns non-zero to stop. The
 * asset passed is valid only during the call. */
typedef int (*inventory_asset_cb)(const struct inventory_asset *a, void *ctx);
int inventory_asset_list(struct inventory *inv, int state, int kind, inventory_asset_cb cb,
                         void *ctx);

/* The same listing, each asset already encoded as one JSON object (text, len) by the store: the
 * fast path for `asset list --json` over a million assets. Keys as `asset show --json`. */
typedef int (*inventory_json_cb)(const char *json, size_t len, void *ctx);
int inventory_asset_list_json(struct inventory *inv, int state, int kind, inventory_json_cb cb,
                              void *ctx);

/*
 * One page of assets in id order for the dashboard: ids starting with prefix (NULL or "" for
 * all), after the cursor `after` (the last id of the previous page; NULL for the first page),
 * in state (-1 for any), at most limit. Keyset pagination on the primary key (or the
 * (state, id) index): as fast on page 10,000 as on page 1.
 */
int inventory_asset_page(struct inventory *inv, int state, const char *prefix, const char *after,
                         int limit, inventory_asset_cb cb, void *ctx);

/* Updates the fields given (NULL leaves a field as is); tag_key/tag_value sets one tag
 * (empty value deletes it). An audit event records old and new values. */
int inventory_asset_update(struct inventory *inv, const char *id, const char *firmware,
                           const char *location, const char *tag_key, const char *tag_value,
                           const char *actor);

/*
 * Moves an asset to a new lifecycle state if DESIGN.md 8 allows it (MQPKI_ERR_STATE with
 * "asset X: cannot go from A to B" otherwise); an audit event with actor and reason.
 */
int inventory_asset_transition(struct inventory *inv, const char *id, int new_state,
                               const char *actor, const char *reason);

/* Records that a broker saw the asset connect: last_seen, address, broker; registered or
 * enrolled assets become active. */
int inventory_asset_seen(struct inventory *inv, const char *id, int64_t when, const char *address,
                         const char *broker);

/* Lifecycle history of an asset, oldest first, from the audit log. */
struct inventory_event {
    int64_t seq;
    int64_t time;
    char actor[INV_TEXT_MAX];
    char action[64];            /* "asset.add", "asset.state", "cert.issue", "cert.revoke", ... */
    char subject[INV_TEXT_MAX]; /* asset id or serial */
    char *detail;               /* JSON text; valid only during the callback */
};
typedef int (*inventory_event_cb)(const struct inventory_event *e, void *ctx);
int inventory_asset_history(struct inventory *inv, const char *id, inventory_event_cb cb,
                            void *ctx);

/*
 * Records an issued certificate (serial unique: MQPKI_ERR_EXISTS on collision) with its audit
 * event; the asset goes from registered to enrolled. When supersede is set, the asset's other
 * valid certificates become superseded; renews (a re-enrollment: the certificate that
 * authenticated it, or NULL) is the one of them that keeps a grace window to renew again
 * (superseded_by set, lifecycle_check_auth_cert), the others get none. Refuses
 * (MQPKI_ERR_POLICY) a key fingerprint already certified for another asset.
 */
int inventory_cert_add(struct inventory *inv, const struct inventory_cert *c, int supersede,
                       const char *renews, const char *actor);

/* One certificate by serial (hex, any case); with_pem fills c->pem. */
int inventory_cert_get(struct inventory *inv, const char *serial, int with_pem,
                       struct inventory_cert *out);

/* Lists certificates in issue order; asset NULL for all, state -1 for any. */
typedef int (*inventory_cert_cb)(const struct inventory_cert *c, void *ctx);
int inventory_cert_list(struct inventory *inv, const char *asset_id, int state, int with_pem,
                        inventory_cert_cb cb, void *ctx);

/* Every certificate of one public key (SHA-256 fingerprint, hex), on any asset, in issue order. */
/* Replaces a certificate's key fingerprint (audited "cert.key_fp"): for the one-time step that
 * brings fingerprints taken by an older rule to the current one (lifecycle_keys_canonical). */
int inventory_cert_set_key_fp(struct inventory *inv, const char *serial, const char *key_fp,
                              const char *actor);

int inventory_cert_list_by_key(struct inventory *inv, const char *key_fp, inventory_cert_cb cb,
                               void *ctx);

/* Records the first time a broker saw the certificate `serial` of asset_id connect (a later
 * report changes nothing; an unknown serial or another asset's is ignored). */
int inventory_cert_seen(struct inventory *inv, const char *serial, const char *asset_id,
                        int64_t when);

/* Number of certificates in a state (-1 for all), expiry derived as in inventory_cert_list. */
int inventory_cert_count(struct inventory *inv, int state, int64_t *out);

/* Valid (live) certificates with now <= not_after < until, earliest expiry first. */
int inventory_cert_list_expiring(struct inventory *inv, int64_t now, int64_t until,
                                 inventory_cert_cb cb, void *ctx);

/* Expiry of the valid (live) certificates at now: the earliest not_after (0 when none) and how
 * many expire within 7 and 30 days. */
struct inventory_expiry {
    int64_t earliest;
    int64_t within_7d;
    int64_t within_30d;
    int64_t live;
};
int inventory_cert_expiry(struct inventory *inv, int64_t now, struct inventory_expiry *out);

/*
 * Retention. Removes the certificates with not_after < cert_before (capped at now: a certificate
 * not yet expired is never removed, so no CRL that could still list it loses its entry), except
 * those revoked for key compromise (they keep the key from being certified again), and the
 * tokens no longer usable (used, revoked, burned or expired) since before token_before, in one
 * transaction with one "store.tidy" audit event holding the counts. The audit log itself is
 * never pruned, so its chain stays verifiable. dry_run: counts only, nothing written.
 */
struct inventory_tidy {
    int64_t certs;
    int64_t tokens;
};
int inventory_tidy(struct inventory *inv, int64_t now, int64_t cert_before, int64_t token_before,
                   int dry_run, const char *actor, struct inventory_tidy *out);

/*
 * Gives free pages back to the file system: SQLite's incremental vacuum, step_pages pages per
 * short write transaction until none is free, then a WAL checkpoint. A store made before
 * incremental vacuum was on needs one full VACUUM to switch (the whole file rewritten under the
 * write lock): done only with allow_full (*switched 1), else MQPKI_ERR_STATE. *freed: pages.
 */
int inventory_vacuum(struct inventory *inv, int step_pages, int allow_full, int64_t *freed,
                     int *switched);

/* Number of assets in each state (indexed by enum inventory_state). */
int inventory_asset_count_by_state(struct inventory *inv, int64_t counts[INV_STATE_COUNT_]);

/*
 * Revokes one certificate (reason: RFC 5280 code). A hold (6) may later be lifted by
 * inventory_cert_unhold; any other reason is final (revoking an already revoked certificate is
 * MQPKI_ERR_STATE, except turning a hold into a final reason). Moves the asset: hold ->
 * suspended; final revocation of its last live certificate -> revoked. Takes the next value of
 * the revocation sequence. Audit event. Publication is the caller's (lifecycle/).
 */
int inventory_cert_revoke(struct inventory *inv, const char *serial, int reason, int64_t when,
                          const char *actor);

/* Lifts a hold: the certificate is valid again, the asset active again (enrolled if it was
 * never seen); a new place in the revocation sequence (the next delta CRL says removeFromCRL).
 * MQPKI_ERR_STATE when the certificate is not on hold. */
int inventory_cert_unhold(struct inventory *inv, const char *serial, const char *actor);

/*
 * The entries of a CRL as of revocation sequence value upto_seq (see inventory_rev_current).
 * Full CRL (since_seq < 0): every revoked or held certificate not yet expired at `now` (they
 * drop out of CRLs after expiry), in revocation order. Delta CRL (since_seq >= 0): every
 * unexpired certificate whose revocation state changed after since_seq: revoked or held ones
 * with their reason, those whose hold was lifted with CA reason 8 (removeFromCRL) dated when
 * it was lifted. Call inside a snapshot so that upto_seq and the rows agree.
 */
typedef int (*inventory_revoked_cb)(const char *serial, int64_t when, int reason, void *ctx);
int inventory_revoked_list(struct inventory *inv, int64_t now, int64_t since_seq, int64_t upto_seq,
                           inventory_revoked_cb cb, void *ctx);

/* The current value of the revocation sequence (the last revocation-state change). */
int inventory_rev_current(struct inventory *inv, int64_t *out);

/*
 * A read snapshot: every read between begin and end sees the store as of begin (WAL), without
 * taking the write lock, so a CRL of a million entries never blocks issuance. Not inside a
 * write transaction. end is NULL-safe and harmless without a snapshot.
 */
int inventory_snapshot_begin(struct inventory *inv);
void inventory_snapshot_end(struct inventory *inv);

/*
 * CRL publications: the outbox (docs/architecture.md, "A revocation"). A CRL number is reserved
 * in the transaction of the change that needs it (pending); the publisher signs it from store
 * state and keeps the DER (signed), exports it (done). Full and delta CRLs share one number
 * sequence (RFC 5280 5.2.3).
 */
enum inventory_crl_kind { INV_CRL_FULL, INV_CRL_DELTA };
enum inventory_crl_state { INV_CRL_PENDING, INV_CRL_SIGNED, INV_CRL_DONE };

struct inventory_crl {
    int64_t number;
    int kind;        /* enum inventory_crl_kind */
    int state;       /* enum inventory_crl_state */
    char reason[32]; /* what asked for it: "revoke", "unhold", "schedule", "operator", ... */
    int64_t created_at;
    int64_t base;        /* delta: the full CRL it extends; -1 otherwise or while pending */
    int64_t cutoff;      /* revocation sequence value it reflects; -1 while pending */
    int64_t this_update; /* 0 while pending */
    int64_t next_update;
    int64_t entries;
    int64_t signed_at, done_at;
    int64_t folded_into; /* a pending number published as part of a later CRL; 0 otherwise */
};
typedef int (*inventory_crl_cb)(const struct inventory_crl *c, void *ctx);

/* Reserves the next CRL number for a publication of kind, inside the caller's transaction when
 * one is open (else in its own); audit event "crl.reserve". */
int inventory_crl_reserve(struct inventory *inv, int kind, const char *reason, const char *actor,
                          int64_t *number);

/* The publications not done yet (pending or signed), lowest number first; *count when count is
 * not NULL and cb is NULL. */
int inventory_crl_open(struct inventory *inv, inventory_crl_cb cb, void *ctx, int64_t *count);

/* One publication by number; MQPKI_ERR_NOT_FOUND when unknown. */
int inventory_crl_get(struct inventory *inv, int64_t number, struct inventory_crl *out);

/* The newest signed or done CRL of kind; MQPKI_ERR_NOT_FOUND when there is none. */
int inventory_crl_latest(struct inventory *inv, int kind, struct inventory_crl *out);

/* The oldest signed or done CRL of kind numbered above `after` (a delta: one based on `after` or
 * later, not one signed while that full CRL was being prepared); MQPKI_ERR_NOT_FOUND when none. */
int inventory_crl_first_after(struct inventory *inv, int kind, int64_t after,
                              struct inventory_crl *out);

/* The DER of a signed CRL (heap, caller frees); MQPKI_ERR_NOT_FOUND when not kept (only the
 * newest full and delta CRLs keep theirs). */
int inventory_crl_der(struct inventory *inv, int64_t number, unsigned char **der, size_t *len);

/*
 * Records the signed CRL c (number, kind, base, cutoff, times, entries) with its DER in one
 * transaction: the pending row becomes signed, every lower pending row (a delta: every lower
 * pending delta row) is folded into it (done, folded_into = c->number), older DER of the same
 * kind is dropped, audit event "crl.sign".
 * MQPKI_ERR_STATE when the row is no longer pending (another publisher got there first).
 */
int inventory_crl_signed(struct inventory *inv, const struct inventory_crl *c,
                         const unsigned char *der, size_t len, const char *actor);

/* Marks the signed CRL `number` of kind done (exported), and every older signed CRL of the same
 * kind with it (superseded: an export never goes back to a lower number). */
int inventory_crl_done(struct inventory *inv, int kind, int64_t number);

/*
 * The publication lock: one publisher at a time across processes (a file lock beside the store
 * for SQLite), so that CRLs are signed and exported in number order. Waits up to timeout_ms;
 * MQPKI_ERR_BUSY when still held. unlock is harmless when not held; the lock also ends with the
 * handle or the process.
 */
int inventory_publish_lock(struct inventory *inv, int timeout_ms);
void inventory_publish_unlock(struct inventory *inv);

/* What each broker reported holding (its plugin's CRL numbers; -1 when none). */
int inventory_broker_crl_set(struct inventory *inv, const char *broker, int64_t full, int64_t delta,
                             int64_t when);
typedef int (*inventory_broker_crl_cb)(const char *broker, int64_t full, int64_t delta,
                                       int64_t when, void *ctx);
int inventory_broker_crl_list(struct inventory *inv, inventory_broker_crl_cb cb, void *ctx);

/*
 * Enrollment tokens. create: 16 random bytes -> token text (base64url, no padding, printed once,
 * at most 64 chars) into token_out; only a salted SHA-256 hash is stored; the asset's older live
 * tokens are revoked in the same transaction (one token out per asset). consume: checks asset,
 * hash (constant time), expiry and single use, and marks it used, inside the caller's
 * transaction when one is open. MQPKI_ERR_AUTH for any mismatch (no detail saying which).
 * A refused attempt is still recorded (failure count of the asset's live tokens; a token is
 * burned at 5 failures): committed at once when no transaction is open; inside the caller's
 * transaction otherwise, so after MQPKI_ERR_AUTH the caller should COMMIT, not roll back, or
 * the attempt limit does not hold. The call's own changes are atomic (savepoint) either way.
 */
int inventory_token_create(struct inventory *inv, const char *asset_id, int64_t ttl,
                           const char *actor, char token_out[64]);

/* SHA-256 of a CSR's DER, as a consumed token records it. */
#define INV_CSR_HASH_LEN 32

/* consume also records what the token was used for, when given: the SHA-256 of the CSR's DER
 * (INV_CSR_HASH_LEN bytes) and the serial of the certificate it enrolled (both or neither). */
int inventory_token_consume(struct inventory *inv, const char *asset_id, const char *token,
                            const unsigned char *csr_sha256, const char *serial);

/*
 * A lost answer's retry: the asset's token matching token (constant time) that enrolled a
 * certificate at or after `since`, with the CSR hash and the serial it recorded. MQPKI_ERR_AUTH
 * when there is none (the same refusal as any mismatch). Read-only.
 */
int inventory_token_find_used(struct inventory *inv, const char *asset_id, const char *token,
                              int64_t since, unsigned char csr_sha256[INV_CSR_HASH_LEN],
                              char serial[PROTO_SERIAL_HEX_MAX + 1]);

/* The same test as inventory_token_consume, read-only: MQPKI_OK when token would be accepted now,
 * MQPKI_ERR_AUTH otherwise. Nothing is written (no use, no failure count): a cheap gate before
 * work such as signing; the consume in the recording transaction stays the decision. */
int inventory_token_check(struct inventory *inv, const char *asset_id, const char *token);

/* Counts one refused attempt on the asset's live tokens (burning those that reach the limit),
 * with its audit events: what inventory_token_consume records on a mismatch. */
int inventory_token_refused(struct inventory *inv, const char *asset_id);

/*
 * What became of a token, as `mqpki token list` shows it: live (may enroll now), used (enrolled
 * a certificate), expired, revoked (by the operator, or superseded by a newer token of the same
 * asset: creating a token revokes the asset's older live ones), burned (reached the attempt
 * limit).
 */
enum inventory_token_state {
    INV_TOKEN_LIVE,
    INV_TOKEN_USED,
    INV_TOKEN_EXPIRED,
    INV_TOKEN_REVOKED,
    INV_TOKEN_BURNED
};
/* "live", "used", ... <-> enum; -1 / NULL when unknown. */
int inventory_token_state_parse(const char *name);
const char *inventory_token_state_name(int state);

/* One token's bookkeeping; never its text, salt or hash. */
struct inventory_token {
    int64_t id;
    char asset_id[PROTO_ASSET_ID_MAX + 1];
    int64_t created_at;
    int64_t expires_at;
    int64_t used_at;    /* 0 unless used or burned */
    int64_t revoked_at; /* 0 unless revoked */
    int failures;       /* refused attempts counted while it was live */
    int state;          /* enum inventory_token_state, expiry derived at read time */
    char serial[PROTO_SERIAL_HEX_MAX + 1]; /* the certificate it enrolled; "" otherwise */
};

/* One token by id; MQPKI_ERR_NOT_FOUND ("token N not found") when unknown. */
int inventory_token_get(struct inventory *inv, int64_t id, struct inventory_token *out);

/* Lists tokens in creation order; asset_id NULL for every asset. The callback returns non-zero
 * to stop; the token passed is valid only during the call. */
typedef int (*inventory_token_cb)(const struct inventory_token *t, void *ctx);
int inventory_token_list(struct inventory *inv, const char *asset_id, inventory_token_cb cb,
                         void *ctx);

/*
 * Revokes live tokens so that they can no longer enroll: the token `id` (> 0), or with id 0
 * every live token of asset_id. One transaction with the audit event "token.revoke". *revoked
 * (may be NULL) counts the tokens revoked now: 0 is not an error (the token was already used,
 * expired, burned or revoked; the asset had none live). MQPKI_ERR_NOT_FOUND for an unknown
 * token id or asset.
 */
int inventory_token_revoke(struct inventory *inv, int64_t id, const char *asset_id,
                           const char *actor, int *revoked);

/* Appends an audit event (time, actor, action, subject, detail JSON) to the hash chain. */
int inventory_audit_append(struct inventory *inv, const char *actor, const char *action,
                           const char *subject, const char *detail_json);

/*
 * Recomputes the hash chain. MQPKI_OK when intact (*count = events checked);
 * MQPKI_ERR_TAMPERED with *bad_seq = first sequence number whose row was edited, or after which
 * one was deleted.
 */
int inventory_audit_verify(struct inventory *inv, int64_t *count, int64_t *bad_seq);

/*
 * Signed checkpoints of the audit chain (docs/security.md, "Audit"). The chain alone only
 * shows edits by someone who cannot recompute it; a checkpoint is the chain head (seq and hash
 * of the newest event) signed with the audit key, which lives in the CA's token where whoever
 * can write the store cannot reach it. What is signed: proto_audit_tbs (proto.h).
 */
#define INV_AUDIT_LABEL_MAX 64
struct inventory_audit_checkpoint {
    int64_t id;                               /* 1, 2, ... without gaps; signed */
    int64_t seq;                              /* the event it certifies: the head then */
    unsigned char head[PROTO_AUDIT_HASH_LEN]; /* that event's hash */
    int64_t time;                             /* when it was signed (seconds since the epoch) */
    char key_label[INV_AUDIT_LABEL_MAX];      /* the token key that signed it */
    unsigned char signature[PROTO_AUDIT_SIG_MAX];
    size_t sig_len;
};

/* Signs tbs (tbs_len bytes; SHA-256, as proto_audit_verify checks) into sig, whose room is
 * *sig_len on entry and the signature's length on return. MQPKI_OK or an error with a detail. */
typedef int (*inventory_audit_sign_fn)(void *ctx, const unsigned char *tbs, size_t tbs_len,
                                       unsigned char *sig, size_t *sig_len);

/*
 * Makes a checkpoint of the current chain head in one transaction (its own, or a savepoint of
 * the caller's): reads the head, checks that the chain since the newest checkpoint extends it
 * (MQPKI_ERR_TAMPERED naming the event otherwise: a rewritten chain is never certified),
 * signs with sign under the write lock, so that the checkpoint numbers stay gapless and the
 * head cannot move meanwhile, and records it. When the newest checkpoint already certifies
 * the head nothing is signed: *made is 0 and *out is that checkpoint. An empty log is
 * MQPKI_ERR_STATE. out and made may be NULL.
 */
int inventory_audit_checkpoint(struct inventory *inv, const char *key_label,
                               inventory_audit_sign_fn sign, void *ctx,
                               struct inventory_audit_checkpoint *out, int *made);

/* The newest checkpoint; MQPKI_ERR_NOT_FOUND when there is none. */
int inventory_audit_checkpoint_latest(struct inventory *inv,
                                      struct inventory_audit_checkpoint *out);

/* What inventory_audit_verify_signed found. */
struct inventory_audit_report {
    int64_t events;      /* events whose hash was recomputed */
    int64_t checkpoints; /* checkpoints in the store, each signature and head verified */
    /* The newest verified checkpoint; last.id 0 when none. */
    struct inventory_audit_checkpoint last;
    int64_t unanchored;     /* events after it: only as good as the plain chain */
    int64_t bad_seq;        /* on MQPKI_ERR_TAMPERED: the event named, else 0 */
    int64_t bad_checkpoint; /* on MQPKI_ERR_TAMPERED: the checkpoint named, else 0 */
};

/*
 * inventory_audit_verify plus the checkpoints, in one read snapshot: every checkpoint's
 * signature verifies with pub (the audit public key; NULL only when the store holds no
 * checkpoint), their ids run 1, 2, ... without a gap and their seqs never go down, and the
 * recomputed chain has each one's head at its seq. published[0..n_published) are copies kept
 * outside the store (crl/audit-checkpoint.json, the retained message on the brokers), named by
 * sources[i] in details: each must verify and be in the store unchanged, which shows a deleted
 * newest checkpoint. MQPKI_ERR_TAMPERED with a detail naming the event or checkpoint, and
 * out->bad_seq / out->bad_checkpoint. out is filled in either case.
 */
int inventory_audit_verify_signed(struct inventory *inv, EVP_PKEY *pub,
                                  const struct inventory_audit_checkpoint *published,
                                  const char *const *sources, size_t n_published,
                                  struct inventory_audit_report *out);

/*
 * An online, consistent copy of the store into the new file dest (created 0600; removed again on
 * failure): SQLite's backup API in one step, so one read snapshot while others write.
 * MQPKI_ERR_STATE for a PostgreSQL store (the server's own backups cover it).
 */
int inventory_backup(struct inventory *inv, const char *dest);

/* The highest CRL number the store knows of: the counter, any recorded CRL, any broker's. */
int inventory_crl_number_high(struct inventory *inv, int64_t *out);

/* Raises the CRL number counter to floor when below it (the next CRL is floor + 1). */
int inventory_crl_number_raise(struct inventory *inv, int64_t floor);

/*
 * Re-issue campaigns: assets asked to renew ({"op":"renew"} on their command topic) and where
 * each stands. pending (recorded), sent (the command went to the brokers), failed (it could
 * not be sent), renewed (the certificate named was superseded by a re-enrollment), silent
 * (sent longer than silent_after seconds ago and not renewed).
 */
enum {
    INV_CAMPAIGN_PENDING,
    INV_CAMPAIGN_SENT,
    INV_CAMPAIGN_RENEWED,
    INV_CAMPAIGN_FAILED,
    INV_CAMPAIGN_SILENT,
    INV_CAMPAIGN_STATES
};
struct inventory_campaign_target {
    const char *asset;
    const char *old_serial; /* the certificate the asset is asked to replace */
};
struct inventory_campaign_asset {
    char asset[PROTO_ASSET_ID_MAX + 1];
    char old_serial[PROTO_SERIAL_HEX_MAX + 1];
    int state;
    int64_t sent_at; /* 0 when not sent */
};
struct inventory_campaign {
    int64_t id;
    char selector[256];
    int64_t created_at, silent_after, finished_at; /* finished_at 0 while open */
    int64_t total, count[INV_CAMPAIGN_STATES];
};
typedef int (*inventory_campaign_cb)(const struct inventory_campaign_asset *a, void *ctx);

/* Records a campaign over targets[0..n), all pending, and its audit event; *id its number. */
int inventory_campaign_create(struct inventory *inv, const char *selector, int64_t silent_after,
                              const struct inventory_campaign_target *targets, size_t n,
                              int64_t *id);
/* Marks an asset's command sent (sent 1) or failed (sent 0), now. */
int inventory_campaign_mark(struct inventory *inv, int64_t id, const char *asset, int sent);
/* The newest campaign's id; MQPKI_ERR_NOT_FOUND when none. */
int inventory_campaign_latest(struct inventory *inv, int64_t *id);
/* Moves states on from the certificates and the clock: renewed, silent. */
int inventory_campaign_refresh(struct inventory *inv, int64_t id);
/* The campaign with counts per state; cb (may be NULL) gets each asset in id order. */
int inventory_campaign_get(struct inventory *inv, int64_t id, struct inventory_campaign *out,
                           inventory_campaign_cb cb, void *ctx);
/* Records that the campaign is finished. */
int inventory_campaign_finish(struct inventory *inv, int64_t id);
const char *inventory_campaign_state_name(int state);

/*
 * Operator tokens (the dashboard, docs/dashboard.md): a bearer token for scripts, a one-time
 * login token (exchanged by mqpkid for a session cookie), a session token. The text
 * "ID.SECRET" (at most INV_OP_TOKEN_MAX - 1 characters) is shown once; the store keeps a
 * salted SHA-256 of the secret. Only assets of kind operator in state registered, enrolled or
 * active hold tokens.
 */
enum inventory_op_use { INV_OP_BEARER, INV_OP_LOGIN, INV_OP_SESSION };
#define INV_OP_TOKEN_MAX 80
#define INV_OP_TTL_MAX   (30 * 86400)

/* Creates a token of `use` for operator asset_id, valid ttl seconds (1..INV_OP_TTL_MAX); audit
 * event "operator.token" (bearer and login; sessions are audited as "operator.login"). */
int inventory_operator_token_create(struct inventory *inv, const char *asset_id, int use,
                                    int64_t ttl, const char *actor,
                                    char token_out[INV_OP_TOKEN_MAX]);

/*
 * Checks a presented token of `use` at time now: MQPKI_OK with the operator's asset id, else
 * MQPKI_ERR_AUTH with no detail saying why (unknown, wrong use, expired, used, revoked, or the
 * operator no longer usable). The secret is compared in constant time. A login token is
 * consumed in the same transaction (single use).
 */
int inventory_operator_token_check(struct inventory *inv, const char *token, int use, int64_t now,
                                   char asset_out[PROTO_ASSET_ID_MAX + 1]);

/* Revokes every live token of an operator; *count (may be NULL) how many. Audited. */
int inventory_operator_token_revoke(struct inventory *inv, const char *asset_id,
                                    const char *actor, int *count);

/* Key/value metadata (CA name, schema facts) stored with the data. */
int inventory_meta_set(struct inventory *inv, const char *key, const char *value);
int inventory_meta_get(struct inventory *inv, const char *key, char *out, size_t out_size);

/*
 * A scheduled job that must run once per period across every mqpkid sharing the store
 * (replicas, docs/ha.md): *due 1 when the job's last run (meta "job.NAME.last_at") is every
 * seconds or more before now, or never was, and now is recorded as its last run in the same
 * write transaction, so exactly one caller claims each period; *due 0 otherwise.
 */
int inventory_job_due(struct inventory *inv, const char *job, int64_t now, int64_t every,
                      int *due);

/*
 * Detect -> respond (inventory/events.c, docs/detect.md): the brokers' security events, kept
 * with a bounded retention; the alerts the detectors raise; the assets under quarantine.
 */
struct inventory_broker_event {
    int64_t id;
    int64_t time;
    char broker[PROTO_ASSET_ID_MAX + 1];
    char type[32];
    char asset[PROTO_ASSET_ID_MAX + 1]; /* "" when none */
    char address[64];                   /* "" when none */
    const char *detail;                 /* the event's JSON; valid only during the callback */
    char eid[64]; /* "BOOT-SEQ-N" from the plugin's batch, "" when none: stored once per broker */
};
typedef int (*inventory_broker_event_cb)(const struct inventory_broker_event *e, void *ctx);

/* Stores one event (detail: its JSON text, at most 4096 bytes). *id may be NULL; it is 0 when
 * an event with the same broker and eid is stored already (another replica stored it). */
int inventory_events_add(struct inventory *inv, const struct inventory_broker_event *e,
                         int64_t *id);
/* Deletes events older than min_time and the oldest beyond max_rows; *deleted may be NULL. */
int inventory_events_prune(struct inventory *inv, int64_t max_rows, int64_t min_time,
                           int64_t *deleted);
/* Events with id > after_id and time >= since (asset NULL for any), oldest first, at most
 * limit (<= 0: no limit). */
int inventory_events_list(struct inventory *inv, const char *asset, int64_t since, int64_t after_id,
                          int64_t limit, inventory_broker_event_cb cb, void *ctx);

enum inventory_alert_state { INV_ALERT_OPEN, INV_ALERT_ACKED };

struct inventory_alert {
    int64_t id;
    int64_t time;
    char rule[32];
    char asset[PROTO_ASSET_ID_MAX + 1]; /* "" when none (a rule on an address) */
    char address[64];
    char broker[PROTO_ASSET_ID_MAX + 1];
    char response[16];          /* "alert", "hold", "quarantine" */
    char outcome[INV_TEXT_MAX]; /* what the response did ("held 0A1B...", "failed: ...") */
    const char *evidence;       /* JSON text; valid only during the callback (list) */
    int state;                  /* enum inventory_alert_state */
    int64_t acked_at;
    char acked_by[INV_TEXT_MAX];
    char cause[256]; /* RULE:KEY:EVENT (the event that fired it: BROKER/EID, or silent-LAST_SEEN);
                      * "" when unknown */
};
typedef int (*inventory_alert_cb)(const struct inventory_alert *a, void *ctx);

/* Records an alert (id, state, acked_* ignored) with its audit event "detect.alert" (actor,
 * rule, response, outcome, evidence) in one transaction; *id the new alert's id. When an alert
 * with the same cause exists (another replica raised it), nothing is written and *id is 0. */
int inventory_alert_add(struct inventory *inv, const struct inventory_alert *a, const char *actor,
                        int64_t *id);
/* What the alert's response did, once done (audited "detect.response"). */
int inventory_alert_outcome(struct inventory *inv, int64_t id, const char *outcome,
                            const char *actor);
/* Alerts, newest first; open_only for the unacknowledged ones. */
int inventory_alert_list(struct inventory *inv, int open_only, inventory_alert_cb cb, void *ctx);
/* Acknowledges an alert (audited "detect.ack"). MQPKI_ERR_NOT_FOUND for an unknown id;
 * acknowledging twice is not an error (*changed 0). changed may be NULL. */
int inventory_alert_ack(struct inventory *inv, int64_t id, const char *actor, int *changed);

/* Puts an asset under quarantine (audited "detect.quarantine"); *added 0 when it already was. */
int inventory_quarantine_add(struct inventory *inv, const char *asset, const char *rule,
                             int64_t alert_id, const char *actor, int *added);
/* Lifts a quarantine (audited "detect.release"); *removed 0 when there was none. */
int inventory_quarantine_remove(struct inventory *inv, const char *asset, const char *actor,
                                int *removed);
/* The quarantined assets in id order. */
typedef int (*inventory_quarantine_cb)(const char *asset, int64_t since, const char *rule,
                                       void *ctx);
int inventory_quarantine_list(struct inventory *inv, inventory_quarantine_cb cb, void *ctx);

/*
 * Posture (inventory/posture.c): read-only aggregates and findings over the whole store for
 * `mqpki check`, `mqpki report csf` and the dashboard. Each runs in one read snapshot of its
 * own; none writes.
 */
struct inventory_posture {
    int64_t assets;                              /* every asset */
    int64_t by_state[INV_STATE_DECOMMISSIONED + 1];
    int64_t by_kind[INV_KIND_OPERATOR + 1];
    int64_t in_service;    /* assets neither revoked nor decommissioned */
    int64_t with_model;    /* of in_service: model filled in */
    int64_t with_hw_serial;
    int64_t with_firmware;
    int64_t with_location;
    int64_t with_valid_cert; /* of in_service: holding a valid, unexpired certificate */
    int64_t seen;            /* of in_service: ever reported connected by a broker */
    int64_t silent;          /* of active assets: not seen since the `silent_before` time */
    int64_t certs_valid;     /* valid or superseded, not expired */
    int64_t certs_revoked;   /* revoked, not on hold */
    int64_t certs_held;      /* revoked with reason certificateHold */
    int64_t certs_expired;
};

/* The aggregates as of now; active assets last seen before silent_before count as silent. */
int inventory_posture_stats(struct inventory *inv, int64_t now, int64_t silent_before,
                            struct inventory_posture *out);

/* The dashboard's cheap subset, from indexes alone: assets, by_state, by_kind, certs_valid,
 * certs_revoked (holds included), certs_expired; the other fields stay 0. */
int inventory_posture_counts(struct inventory *inv, int64_t now, struct inventory_posture *out);

/*
 * Findings: rows that a posture check reports. The callback gets a subject (a serial, a key
 * fingerprint, an asset id), a related object ("" when none: the asset of a certificate), a
 * time or count (what each kind says) and returns non-zero to stop. *total (may be NULL)
 * counts every row even after the callback stopped taking them, so a check can show the
 * first few and the total.
 */
enum inventory_finding {
    /* live certificates (valid or superseded) expiring in [a, b]: serial, asset, not_after;
     * this and INV_FIND_OLD leave out the service profile (mqpkid renews its own) */
    INV_FIND_EXPIRING,
    /* live certificates issued before a (not_before < a): serial, asset, not_before */
    INV_FIND_OLD,
    /* public keys certified for more than one asset: key_fp, "", number of assets */
    INV_FIND_SHARED_KEY,
    /* asset ids that differ only in letter case (MQTT client ids, topic levels and file names
     * that clash on case-insensitive systems): lower-case id, "", number of assets */
    INV_FIND_ID_CONFLICT,
    /* revoked or held certificates whose asset, left without any live certificate (state
     * revoked, suspended or decommissioned), was seen connected more than a seconds after the
     * revocation: serial, asset, last seen */
    INV_FIND_REVOKED_SEEN,
    /* assets sharing one last client address (several identities from one address or a
     * cloned identity): address, "", number of assets; only when a > 0 assets share it */
    INV_FIND_SHARED_ADDRESS,
};
typedef int (*inventory_finding_cb)(const char *subject, const char *related, int64_t value,
                                    void *ctx);
int inventory_posture_find(struct inventory *inv, enum inventory_finding which, int64_t now,
                           int64_t a, int64_t b, inventory_finding_cb cb, void *ctx,
                           int64_t *total);

/* Counts of certificates issued (by not_before) and revoked (by revocation time) per UTC day
 * in [from, to): cb(day_start, issued, revoked) for each day with either, oldest first. */
typedef int (*inventory_day_cb)(int64_t day, int64_t issued, int64_t revoked, void *ctx);
int inventory_posture_days(struct inventory *inv, int64_t from, int64_t to, inventory_day_cb cb,
                           void *ctx);

/* Live certificates by expiry bucket: counts[i] certificates expiring in
 * [now + i*width, now + (i+1)*width), i < n; the last bucket also takes everything later. */
int inventory_posture_expiry(struct inventory *inv, int64_t now, int64_t width, int n,
                             int64_t *counts);

#endif
