/*
 * inventory internals shared by store.c, assets.c, certs.c, tokens.c and audit.c. Not part of
 * the public API: the CLI and the daemon use inventory.h only.
 */
#ifndef MQPKI_INVENTORY_INT_H
#define MQPKI_INVENTORY_INT_H

#include <jansson.h>

#include "common.h"
#include "db.h"
#include "inventory.h"
#include "proto.h"

/* Current schema version (PRAGMA user_version). */
#define INV_SCHEMA_VERSION 10

/* SHA-256 length of audit hashes and token hashes. */
#define INV_HASH_LEN 32
_Static_assert(INV_HASH_LEN == PROTO_AUDIT_HASH_LEN, "a checkpoint signs an audit event's hash");

/* Token failures after which a token is burned. */
#define INV_TOKEN_MAX_FAILURES 5

/* Reserved meta key holding the audit chain head: "SEQ HEXHASH". */
#define INV_META_AUDIT_HEAD "audit.head"

#define INV_ASSET_COLS                                                                             \
    "id, kind, state, model, hw_serial, firmware, location, tags, created_at, updated_at, "        \
    "last_seen, last_address, last_broker"

#define INV_CERT_COLS                                                                              \
    "serial, asset_id, profile, not_before, not_after, state, key_fp, revoked_at, reason, pem, "   \
    "rev_seq, seen_at, superseded_at, superseded_by"

/* Never salt or hash: listings show what a token is for, not what could test a guess. */
#define INV_TOKEN_COLS "id, asset_id, created_at, expires_at, used_at, revoked_at, failures, serial"

#define INV_AUDIT_CP_COLS "id, seq, head, time, key_label, signature"

#define INV_CRL_COLS                                                                               \
    "number, kind, state, reason, created_at, base, cutoff, this_update, next_update, entries, "   \
    "signed_at, done_at, folded_into"

/*
 * Statements prepared once per handle and reused (hot paths and fixed lookups). X(name, sql).
 * Dynamic list queries are prepared per call instead: they run once per listing.
 */
#define INV_SQL_LIST(X)                                                                            \
    X(SQL_ASSET_GET, "SELECT " INV_ASSET_COLS " FROM assets WHERE id = ?1")                        \
    X(SQL_ASSET_STATE_GET, "SELECT state, last_seen FROM assets WHERE id = ?1")                    \
    X(SQL_ASSET_STATE_SET, "UPDATE assets SET state = ?2, updated_at = ?3 WHERE id = ?1")          \
    X(SQL_CERT_GET, "SELECT " INV_CERT_COLS " FROM certs WHERE serial = ?1")                       \
    X(SQL_CERT_EXISTS, "SELECT 1 FROM certs WHERE serial = ?1")                                    \
    X(SQL_CERT_KEY_USE, "SELECT asset_id, reason FROM certs WHERE key_fp = ?1 "                    \
                        "AND (asset_id <> ?2 OR reason = 1) ORDER BY reason = 1 DESC LIMIT 1")     \
    X(SQL_CERT_SUPERSEDE,                                                                          \
      "UPDATE certs SET state = 'superseded', superseded_at = ?2, "                                \
      "superseded_by = CASE WHEN serial = ?4 THEN ?3 END WHERE asset_id = ?1 AND state = 'valid'") \
    X(SQL_CERT_BY_KEY, "SELECT " INV_CERT_COLS " FROM certs INDEXED BY certs_key "                 \
                       "WHERE key_fp = ?1 ORDER BY issued_seq")                                    \
    X(SQL_CERT_RENEWED_AGAIN, "UPDATE certs SET superseded_by = ?2 WHERE serial = ?1 "             \
                              "AND asset_id = ?3 AND state = 'superseded'")                        \
    X(SQL_CERT_KEY_FP, "UPDATE certs SET key_fp = ?2 WHERE serial = ?1")                           \
    X(SQL_ASSET_SEEN,                                                                              \
      "UPDATE assets SET last_seen = ?2, last_address = ?3, last_broker = ?4 "                     \
      "WHERE id = ?1 AND (last_seen <> ?2 OR last_address <> ?3 OR last_broker <> ?4)")            \
    X(SQL_EVENT_ADD, "INSERT INTO events(time, broker, type, asset, address, detail, eid) "        \
                     "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) "                                         \
                     "ON CONFLICT (broker, eid) WHERE eid IS NOT NULL DO NOTHING RETURNING id")    \
    X(SQL_CERT_SEEN, "UPDATE certs SET seen_at = ?3 WHERE serial = ?1 AND asset_id = ?2 "          \
                     "AND seen_at IS NULL")                                                        \
    X(SQL_CERT_INSERT,                                                                             \
      "INSERT INTO certs(serial, asset_id, profile, not_before, not_after, state, key_fp, "        \
      "pem, issued_seq) VALUES(?1, ?2, ?3, ?4, ?5, 'valid', ?6, ?7, "                              \
      "(SELECT COALESCE(MAX(issued_seq), 0) + 1 FROM certs))")                                     \
    X(SQL_CERT_COUNT_LIVE,                                                                         \
      "SELECT COUNT(*) FROM certs WHERE asset_id = ?1 AND state IN ('valid', 'superseded') "       \
      "AND not_after >= ?2")                                                                       \
    X(SQL_CERT_COUNT_HELD,                                                                         \
      "SELECT COUNT(*) FROM certs WHERE asset_id = ?1 AND state = 'revoked' AND reason = 6 "       \
      "AND not_after >= ?2")                                                                       \
    X(SQL_CERT_REVOKE,                                                                             \
      "UPDATE certs SET state = 'revoked', revoked_at = ?2, reason = ?3, rev_seq = ?4, "           \
      "rev_time = ?2 WHERE serial = ?1")                                                           \
    X(SQL_CERT_UNHOLD, "UPDATE certs SET state = 'valid', revoked_at = NULL, reason = NULL, "      \
                       "rev_seq = ?2, rev_time = ?3 WHERE serial = ?1")                            \
    X(SQL_TOKEN_INSERT, "INSERT INTO tokens(asset_id, salt, hash, created_at, expires_at) "        \
                        "VALUES(?1, ?2, ?3, ?4, ?5) RETURNING id")                                 \
    X(SQL_TOKEN_LIVE, "SELECT id, salt, hash FROM tokens WHERE asset_id = ?1 AND used_at IS NULL " \
                      "AND revoked_at IS NULL AND expires_at > ?2 ORDER BY id")                    \
    /* Consumes a token in one conditional statement: exactly one transaction wins it. */          \
    X(SQL_TOKEN_USE,                                                                               \
      "UPDATE tokens SET used_at = ?2, csr_sha256 = ?3, serial = ?4 WHERE id = ?1 "                \
      "AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?2 RETURNING id")               \
    /* Tokens that enrolled a certificate since ?2: a lost answer's retry may get it again. */     \
    X(SQL_TOKEN_USED_SINCE,                                                                        \
      "SELECT id, salt, hash, csr_sha256, serial FROM tokens WHERE asset_id = ?1 "                 \
      "AND used_at >= ?2 AND serial IS NOT NULL AND csr_sha256 IS NOT NULL ORDER BY id")           \
    X(SQL_TOKEN_FAIL,                                                                              \
      "UPDATE tokens SET failures = failures + 1 WHERE asset_id = ?1 AND used_at IS NULL "         \
      "AND revoked_at IS NULL AND expires_at > ?2")                                                \
    X(SQL_TOKEN_BURN, "UPDATE tokens SET used_at = ?2 WHERE asset_id = ?1 AND used_at IS NULL "    \
                      "AND revoked_at IS NULL AND failures >= ?3 RETURNING id")                    \
    /* A new token makes the asset's older live ones unusable (one token out per asset). */        \
    X(SQL_TOKEN_SUPERSEDE,                                                                         \
      "UPDATE tokens SET revoked_at = ?2 WHERE asset_id = ?1 AND id <> ?3 AND used_at IS NULL "    \
      "AND revoked_at IS NULL AND expires_at > ?2 RETURNING id")                                   \
    X(SQL_TOKEN_REVOKE_ID, "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND used_at IS NULL "  \
                           "AND revoked_at IS NULL AND expires_at > ?2 RETURNING id")              \
    X(SQL_TOKEN_REVOKE_ASSET,                                                                      \
      "UPDATE tokens SET revoked_at = ?2 WHERE asset_id = ?1 AND used_at IS NULL "                 \
      "AND revoked_at IS NULL AND expires_at > ?2 RETURNING id")                                   \
    X(SQL_TOKEN_GET, "SELECT " INV_TOKEN_COLS " FROM tokens WHERE id = ?1")                        \
    X(SQL_TOKEN_LIST, "SELECT " INV_TOKEN_COLS " FROM tokens ORDER BY id")                         \
    X(SQL_TOKEN_LIST_ASSET,                                                                        \
      "SELECT " INV_TOKEN_COLS " FROM tokens WHERE asset_id = ?1 ORDER BY id")                     \
    X(SQL_AUDIT_INSERT,                                                                            \
      "INSERT INTO audit(seq, time, actor, action, subject, detail, prev_hash, hash) "             \
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")                                                    \
    X(SQL_AUDIT_WALK, "SELECT seq, time, actor, action, subject, detail, prev_hash, hash "         \
                      "FROM audit WHERE seq > ?1 ORDER BY seq")                                    \
    X(SQL_AUDIT_HASH_AT, "SELECT hash FROM audit WHERE seq = ?1")                                  \
    X(SQL_AUDIT_CP_INSERT, "INSERT INTO audit_checkpoints(" INV_AUDIT_CP_COLS ") "                 \
                           "VALUES(?1, ?2, ?3, ?4, ?5, ?6)")                                       \
    X(SQL_AUDIT_CP_LATEST,                                                                         \
      "SELECT " INV_AUDIT_CP_COLS " FROM audit_checkpoints ORDER BY id DESC LIMIT 1")              \
    X(SQL_AUDIT_CP_GET, "SELECT " INV_AUDIT_CP_COLS " FROM audit_checkpoints WHERE id = ?1")       \
    X(SQL_AUDIT_CP_LIST, "SELECT " INV_AUDIT_CP_COLS " FROM audit_checkpoints ORDER BY id")        \
    X(SQL_META_GET, "SELECT value FROM meta WHERE key = ?1")                                       \
    X(SQL_META_SET, "INSERT INTO meta(key, value) VALUES(?1, ?2) "                                 \
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value")                       \
    X(SQL_CRL_NEXT,                                                                                \
      "UPDATE counters SET value = value + 1 WHERE name = 'crl_number' RETURNING value")           \
    X(SQL_REV_NEXT,                                                                                \
      "UPDATE counters SET value = value + 1 WHERE name = 'rev_seq' RETURNING value")              \
    X(SQL_REV_CURRENT, "SELECT value FROM counters WHERE name = 'rev_seq'")                        \
    X(SQL_CRL_INSERT, "INSERT INTO crls(number, kind, state, reason, created_at) "                 \
                      "VALUES(?1, ?2, 'pending', ?3, ?4)")                                         \
    X(SQL_CRL_GET, "SELECT " INV_CRL_COLS " FROM crls WHERE number = ?1")                          \
    X(SQL_CRL_DER, "SELECT d.der FROM crl_der d JOIN crls c ON c.number = d.number AND "           \
                   "c.der_attempt = d.attempt WHERE d.number = ?1 ORDER BY d.part")                \
    X(SQL_CRL_DER_PUT, "INSERT INTO crl_der(number, attempt, part, der) VALUES(?1, ?2, ?3, ?4)")   \
    X(SQL_CRL_DER_DROP, "DELETE FROM crl_der WHERE number = ?1 AND attempt = ?2")                  \
    X(SQL_CRL_DER_OTHERS, "DELETE FROM crl_der WHERE number = ?1 AND attempt <> ?2")               \
    X(SQL_CRL_OPEN, "SELECT " INV_CRL_COLS " FROM crls WHERE state <> 'done' ORDER BY number")     \
    X(SQL_CRL_LATEST, "SELECT " INV_CRL_COLS " FROM crls WHERE kind = ?1 AND state <> 'pending' "  \
                      "AND folded_into IS NULL ORDER BY number DESC LIMIT 1")                      \
    X(SQL_CRL_FIRST_AFTER, "SELECT " INV_CRL_COLS " FROM crls WHERE kind = ?1 AND number > ?2 "    \
                           "AND (base IS NULL OR base >= ?2) AND state <> 'pending' "              \
                           "AND folded_into IS NULL ORDER BY number LIMIT 1")                      \
    X(SQL_CRL_SIGN,                                                                                \
      "UPDATE crls SET state = 'signed', kind = ?2, base = ?3, cutoff = ?4, this_update = ?5, "    \
      "next_update = ?6, entries = ?7, signed_at = ?8, der_attempt = ?9 WHERE number = ?1 "        \
      "AND state = 'pending'")                                                                     \
    X(SQL_CRL_FOLD, "UPDATE crls SET state = 'done', folded_into = ?1, done_at = ?2 "              \
                    "WHERE number < ?1 AND state = 'pending' AND (?3 = 'full' OR kind = 'delta')") \
    X(SQL_CRL_DONE, "UPDATE crls SET state = 'done', done_at = ?2 WHERE kind = ?3 "                \
                    "AND number <= ?1 AND state = 'signed'")                                       \
    X(SQL_CRL_PRUNE, "DELETE FROM crl_der WHERE number < ?2 AND number IN "                        \
                     "(SELECT number FROM crls WHERE kind = ?1 AND state = 'done')")               \
    X(SQL_BROKER_CRL_SET,                                                                          \
      "INSERT INTO broker_crls(broker, full_number, delta_number, updated_at) "                    \
      "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(broker) DO UPDATE SET "                                  \
      "full_number = excluded.full_number, delta_number = excluded.delta_number, "                 \
      "updated_at = excluded.updated_at")

#define INV_SQL_ENUM_(name, sql) name,
enum inv_sql { INV_SQL_LIST(INV_SQL_ENUM_) SQL_COUNT_ };
#undef INV_SQL_ENUM_

/* How long a writer waits for the store's write lock. */
#define INV_LOCK_MS 5000

/* PostgreSQL's schema steps (schema_pg.c), numbered like the SQLite ones in store.c. */
extern const char *const inv_pg_migrations[];
#define INV_PG_MIGRATIONS INV_SCHEMA_VERSION

/* The notification channel of the CRL outbox: committed revocations wake every replica. */
#define INV_CHANNEL_OUTBOX "mqpki_outbox"

struct inventory {
    struct db *db;
    const struct db_ops *ops;
    char *path;      /* for error details: the file, or the URL without its password */
    int in_tx;       /* 1 while the caller holds an inventory_begin transaction */
    int in_snapshot; /* 1 while a read snapshot (inventory_snapshot_begin) is open */
    struct db_stmt *stmt[SQL_COUNT_];
};

/*
 * A unit of work of one public call: its own BEGIN IMMEDIATE transaction when the caller has
 * none open, else a savepoint inside the caller's transaction so that a failed call leaves
 * nothing half-done behind (the caller may still commit its other work).
 */
struct inv_tx {
    int own;
    int savepoint;
};

/* Starts the unit of work. */
int inv_tx_start(struct inventory *inv, struct inv_tx *tx);

/*
 * Ends it: keep != 0 commits (or releases the savepoint), else rolls back. Returns rc unchanged
 * when rc is an error, or the commit's failure when committing failed.
 */
int inv_tx_end(struct inventory *inv, struct inv_tx *tx, int keep, int rc);

/* The cached statement `which`, reset with its bindings cleared. */
int inv_stmt(struct inventory *inv, enum inv_sql which, struct db_stmt **out);

/* Resets a statement after use (releases its read snapshot). NULL-safe. */
void inv_stmt_done(struct db_stmt *st);

/* Runs a cached one-row lookup by key (?1): MQPKI_OK with the row ready in *st,
 * MQPKI_ERR_NOT_FOUND ("WHAT KEY not found") or a store failure. inv_stmt_done(*st) after. */
int inv_stmt_row(struct inventory *inv, enum inv_sql which, const char *key, const char *what,
                 struct db_stmt **st);

/* Prepares a one-off statement (caller finalizes). */
int inv_prepare(struct inventory *inv, const char *sql, struct db_stmt **out);

/* Runs SQL without results. */
int inv_exec(struct inventory *inv, const char *sql);

/*
 * Turns a failed store call (a db_rc) into an mqpki error with a detail naming the store and
 * what was being done: BUSY for lock timeouts and lost connections (retry), NOSPACE for a full
 * disk, STORE otherwise.
 */
int inv_db_fail(struct inventory *inv, int db_rc, const char *what);

/* Binds a C string as TEXT (static lifetime for the statement's current run). */
int inv_bind_text(struct inventory *inv, struct db_stmt *st, int idx, const char *s);

/* Copies column col as text into out (truncating safely; "" for NULL). */
void inv_col_text(struct db_stmt *st, int col, char *out, size_t size);

/* MQPKI_ERR_INVALID with the standard detail unless id is a valid asset identifier. */
int inv_check_id(const char *id);

/*
 * MQPKI_ERR_INVALID unless s is NUL-terminated within max bytes (so at most max-1 characters)
 * and valid UTF-8 (the audit log is JSON). what names the field in the detail.
 */
int inv_check_text(const char *s, size_t max, const char *what);

/* Current state of an asset; MQPKI_ERR_NOT_FOUND with a detail when unknown. */
int inv_asset_state(struct inventory *inv, const char *id, int *state, int64_t *last_seen);

/* 1 when DESIGN.md 8 allows the move from -> to. */
int inv_transition_allowed(int from, int to);

/*
 * Moves an asset from its current state `from` to `to` inside the current unit of work and
 * appends the "asset.state" event. Checks the lifecycle table.
 */
int inv_asset_move(struct inventory *inv, const char *id, int from, int to, const char *actor,
                   const char *reason);

/*
 * Appends an audit event inside the current transaction. Takes ownership of detail (a JSON
 * object, dumped compact with sorted keys); NULL detail means the caller's json_pack failed.
 */
int inv_audit(struct inventory *inv, const char *actor, const char *action, const char *subject,
              json_t *detail);

/*
 * Reads the audit chain head from meta: *seq 0 and a zero hash when the log is empty.
 * MQPKI_ERR_TAMPERED when the head is malformed.
 */
int inv_audit_head(struct inventory *inv, int64_t *seq, unsigned char hash[INV_HASH_LEN]);
/* Token hashing shared by enrollment and operator tokens: a random salt of INV_SALT_BYTES and
 * SHA-256(salt || token); base64url without padding (RFC 4648 section 5) of len bytes, out
 * holding 4*ceil(len/3)+1. */
#define INV_SALT_BYTES 16
int inv_token_hash(const unsigned char *salt, const char *token, size_t len,
                   unsigned char out[INV_HASH_LEN]);
void inv_base64url(const unsigned char *in, int len, char *out);

/* Takes the next value of the revocation sequence (inside the current unit of work). */
int inv_rev_next(struct inventory *inv, int64_t *out);

/* Under UNIT_TESTING only: the raw connection, to plant rows that time cannot produce. */
#ifdef UNIT_TESTING
struct db *inv_test_db(struct inventory *inv);
/* Opens a store migrated only up to schema version `version` (to test later migrations). */
int inv_test_open_version(const char *path, int version, struct inventory **out);
#endif

#endif
