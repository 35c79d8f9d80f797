/*
 * inventory/store.c: opening the store (pragmas, schema migrations), the statement cache,
 * transactions and metadata.
 */
#include "inventory_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INV_SQL_TEXT_(name, sql) sql,
static const char *const sql_text[SQL_COUNT_] = {INV_SQL_LIST(INV_SQL_TEXT_)};
#undef INV_SQL_TEXT_

/*
 * Schema migrations: step i brings the schema from version i to i + 1. Each step runs in its
 * own transaction together with the user_version bump, so a crash leaves a whole version.
 * Never edit a released step: append a new one.
 */
static const char *const migrations[] = {
    /* 0 -> 1: initial schema. */
    "CREATE TABLE assets("
    " id TEXT PRIMARY KEY NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('device', 'broker', 'service')),"
    " state TEXT NOT NULL CHECK (state IN ('registered', 'enrolled', 'active', 'suspended',"
    "  'revoked', 'decommissioned')),"
    " model TEXT NOT NULL DEFAULT '',"
    " hw_serial TEXT NOT NULL DEFAULT '',"
    " firmware TEXT NOT NULL DEFAULT '',"
    " location TEXT NOT NULL DEFAULT '',"
    " tags TEXT NOT NULL DEFAULT '{}',"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL DEFAULT 0,"
    " last_address TEXT NOT NULL DEFAULT '',"
    " last_broker TEXT NOT NULL DEFAULT '');"
    /* (state, id) and (kind, id): listings by state or kind come out in id order from the
     * index alone, without sorting a million rows. */
    "CREATE INDEX assets_state ON assets(state, id);"
    "CREATE INDEX assets_kind ON assets(kind, id);"
    "CREATE TABLE certs("
    " serial TEXT PRIMARY KEY NOT NULL,"
    " asset_id TEXT NOT NULL REFERENCES assets(id),"
    " profile TEXT NOT NULL,"
    " not_before INTEGER NOT NULL,"
    " not_after INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('valid', 'revoked', 'superseded')),"
    " key_fp TEXT NOT NULL,"
    " pem TEXT,"
    " revoked_at INTEGER,"
    " reason INTEGER,"
    " issued_seq INTEGER NOT NULL UNIQUE);"
    "CREATE INDEX certs_asset ON certs(asset_id, issued_seq);"
    /* Issue order: MAX(issued_seq) on every insert must not scan the table. */
    "CREATE UNIQUE INDEX certs_seq ON certs(issued_seq);"
    "CREATE INDEX certs_key ON certs(key_fp);"
    "CREATE INDEX certs_state ON certs(state, not_after);"
    /* Superseding on renewal finds the asset's valid certificate here, not by walking the
     * asset's renewals or every valid certificate of the fleet. */
    "CREATE INDEX certs_live ON certs(asset_id) WHERE state = 'valid';"
    /* CRL building streams revocations in revocation order. */
    "CREATE INDEX certs_revoked ON certs(revoked_at, serial) WHERE state = 'revoked';"
    "CREATE TABLE tokens("
    " id INTEGER PRIMARY KEY,"
    " asset_id TEXT NOT NULL REFERENCES assets(id),"
    " salt BLOB NOT NULL,"
    " hash BLOB NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " used_at INTEGER,"
    " failures INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX tokens_asset ON tokens(asset_id);"
    "CREATE TABLE audit("
    " seq INTEGER PRIMARY KEY,"
    " time INTEGER NOT NULL,"
    " actor TEXT NOT NULL,"
    " action TEXT NOT NULL,"
    " subject TEXT NOT NULL,"
    " detail TEXT NOT NULL,"
    " prev_hash BLOB NOT NULL,"
    " hash BLOB NOT NULL);"
    "CREATE INDEX audit_subject ON audit(subject, seq);"
    "CREATE TABLE meta(key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL);"
    "CREATE TABLE counters(name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);"
    "INSERT INTO counters(name, value) VALUES ('crl_number', 0);",
    /*
     * 1 -> 2: the store owns CRL publication (docs/architecture.md, "A revocation").
     * rev_seq orders every change of a certificate's revocation state (revoke, hold, hold made
     * final, unhold) and rev_time dates it, so a delta CRL lists exactly what changed after its
     * base. crls is the outbox: a CRL number reserved in the revoking transaction, then signed
     * (DER kept), then exported; one number sequence for full and delta CRLs (RFC 5280 5.2.3).
     * CRL numbers go on from the old counter; the first publication after the upgrade finds no full
     * CRL in the outbox and signs one (a delta needs a base).
     */
    "ALTER TABLE certs ADD COLUMN rev_seq INTEGER;"
    "ALTER TABLE certs ADD COLUMN rev_time INTEGER;"
    "UPDATE certs SET rev_seq = r.n, rev_time = certs.revoked_at FROM"
    " (SELECT serial, ROW_NUMBER() OVER (ORDER BY revoked_at, serial) AS n FROM certs"
    "  WHERE state = 'revoked') AS r WHERE certs.serial = r.serial;"
    "CREATE UNIQUE INDEX certs_rev_seq ON certs(rev_seq) WHERE rev_seq IS NOT NULL;"
    "INSERT INTO counters(name, value) VALUES"
    " ('rev_seq', (SELECT COALESCE(MAX(rev_seq), 0) FROM certs));"
    "CREATE TABLE crls("
    " number INTEGER PRIMARY KEY NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('full', 'delta')),"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'signed', 'done')),"
    " reason TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " base INTEGER,"
    " cutoff INTEGER,"
    " this_update INTEGER,"
    " next_update INTEGER,"
    " entries INTEGER,"
    " der BLOB,"
    " signed_at INTEGER,"
    " done_at INTEGER,"
    " folded_into INTEGER);"
    "CREATE INDEX crls_open ON crls(number) WHERE state <> 'done';"
    "CREATE INDEX crls_kind ON crls(kind, number);"
    "DELETE FROM meta WHERE key IN ('crl.full.number', 'crl.full.time');"
    "CREATE TABLE broker_crls("
    " broker TEXT PRIMARY KEY NOT NULL,"
    " full_number INTEGER NOT NULL,"
    " delta_number INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL);",
    /*
     * 2 -> 3: stale credentials and the audit anchor (security review). A certificate records
     * when a broker first saw it and which certificate superseded it (re-enrollment is allowed
     * with the newest certificate, and with the one before it only for a grace window while
     * the newer one is unused); a token records why it stopped being usable and what it was
     * used for (a lost answer's retry gets the same certificate); signed checkpoints of the
     * audit chain head.
     */
    "ALTER TABLE certs ADD COLUMN seen_at INTEGER;"
    "ALTER TABLE certs ADD COLUMN superseded_at INTEGER;"
    "ALTER TABLE certs ADD COLUMN superseded_by TEXT;"
    "ALTER TABLE tokens ADD COLUMN revoked_at INTEGER;"
    "ALTER TABLE tokens ADD COLUMN csr_sha256 BLOB;"
    "ALTER TABLE tokens ADD COLUMN serial TEXT;"
    "CREATE TABLE audit_checkpoints("
    " id INTEGER PRIMARY KEY,"
    " seq INTEGER NOT NULL,"
    " head BLOB NOT NULL,"
    " time INTEGER NOT NULL,"
    " key_label TEXT NOT NULL,"
    " signature BLOB NOT NULL);",
    /*
     * 3 -> 4: an asset's certificates by state. Revoking counts the asset's live and held
     * certificates; without this index the planner walked certs_state, every revoked
     * certificate of the fleet (a million after years), on each revocation.
     */
    "CREATE INDEX certs_asset_state ON certs(asset_id, state, not_after);",
    /*
     * 4 -> 5: detect -> respond (docs/detect.md). The brokers' security events (bounded
     * retention, pruned by mqpkid), the alerts the detectors raised, and the assets under
     * quarantine (may publish only to fleet/ID/quarantine until released).
     */
    "CREATE TABLE events("
    " id INTEGER PRIMARY KEY,"
    " time INTEGER NOT NULL,"
    " broker TEXT NOT NULL,"
    " type TEXT NOT NULL,"
    " asset TEXT,"
    " address TEXT,"
    " detail TEXT NOT NULL);"
    "CREATE INDEX events_time ON events(time);"
    "CREATE INDEX events_asset ON events(asset, id);"
    "CREATE TABLE alerts("
    " id INTEGER PRIMARY KEY,"
    " time INTEGER NOT NULL,"
    " rule TEXT NOT NULL,"
    " asset TEXT,"
    " address TEXT,"
    " broker TEXT,"
    " response TEXT NOT NULL,"
    " outcome TEXT NOT NULL,"
    " evidence TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('open', 'acked')),"
    " acked_at INTEGER,"
    " acked_by TEXT);"
    "CREATE INDEX alerts_open ON alerts(id) WHERE state = 'open';"
    "CREATE TABLE quarantine("
    " asset TEXT PRIMARY KEY NOT NULL,"
    " since INTEGER NOT NULL,"
    " rule TEXT NOT NULL,"
    " alert_id INTEGER);",
    /*
     * 5 -> 6: re-issue campaigns. A campaign asks a set of assets to renew
     * ({"op":"renew"} on their command topic); each asset's row says where it stands (pending,
     * sent, renewed, failed, silent) and which certificate it should replace.
     */
    "CREATE TABLE campaigns("
    " id INTEGER PRIMARY KEY,"
    " selector TEXT NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " silent_after INTEGER NOT NULL,"
    " finished_at INTEGER);"
    "CREATE TABLE campaign_assets("
    " campaign INTEGER NOT NULL REFERENCES campaigns(id),"
    " asset TEXT NOT NULL,"
    " old_serial TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'renewed', 'failed', 'silent')),"
    " sent_at INTEGER,"
    " PRIMARY KEY (campaign, asset));",
    /*
     * 6 -> 7: operators (the dashboard's users) are assets of kind 'operator', identified by a
     * client certificate or by a bearer, one-time login or session token (salted hash only).
     * SQLite cannot widen a CHECK constraint in place: the assets table is rebuilt (migrate()
     * runs with foreign keys off, so certs and tokens keep pointing at "assets" by name).
     * PostgreSQL: ALTER TABLE assets DROP CONSTRAINT ..., ADD CHECK (...).
     */
    "CREATE TABLE assets_v7("
    " id TEXT PRIMARY KEY NOT NULL,"
    " kind TEXT NOT NULL CHECK (kind IN ('device', 'broker', 'service', 'operator')),"
    " state TEXT NOT NULL CHECK (state IN ('registered', 'enrolled', 'active', 'suspended',"
    "  'revoked', 'decommissioned')),"
    " model TEXT NOT NULL DEFAULT '',"
    " hw_serial TEXT NOT NULL DEFAULT '',"
    " firmware TEXT NOT NULL DEFAULT '',"
    " location TEXT NOT NULL DEFAULT '',"
    " tags TEXT NOT NULL DEFAULT '{}',"
    " created_at INTEGER NOT NULL,"
    " updated_at INTEGER NOT NULL,"
    " last_seen INTEGER NOT NULL DEFAULT 0,"
    " last_address TEXT NOT NULL DEFAULT '',"
    " last_broker TEXT NOT NULL DEFAULT '');"
    "INSERT INTO assets_v7(id, kind, state, model, hw_serial, firmware, location, tags,"
    " created_at, updated_at, last_seen, last_address, last_broker)"
    " SELECT id, kind, state, model, hw_serial, firmware, location, tags, created_at,"
    " updated_at, last_seen, last_address, last_broker FROM assets;"
    "DROP TABLE assets;"
    "ALTER TABLE assets_v7 RENAME TO assets;"
    "CREATE INDEX assets_state ON assets(state, id);"
    "CREATE INDEX assets_kind ON assets(kind, id);"
    "CREATE TABLE operator_tokens("
    " id INTEGER PRIMARY KEY,"
    " asset_id TEXT NOT NULL REFERENCES assets(id),"
    " use TEXT NOT NULL CHECK (use IN ('bearer', 'login', 'session')),"
    " salt BLOB NOT NULL,"
    " hash BLOB NOT NULL,"
    " created_at INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL,"
    " used_at INTEGER,"
    " revoked_at INTEGER);"
    "CREATE INDEX operator_tokens_asset ON operator_tokens(asset_id);",
    /* 7 -> 8: PostgreSQL only (byte-order indexes for the asset page's ranges, schema_pg.c). */
    "",
    /*
     * 8 -> 9: replicas of mqpkid each receive every broker event, and each runs the detectors
     * (docs/ha.md, "Detect with replicas"). An event's id (the plugin's boot id, batch number
     * and place in the batch) stores it once; an alert's cause (the event that fired it, or
     * the silence it reports) raises it once, and only the replica that raised it responds.
     */
    "ALTER TABLE events ADD COLUMN eid TEXT;"
    "CREATE UNIQUE INDEX events_eid ON events(broker, eid) WHERE eid IS NOT NULL;"
    "ALTER TABLE alerts ADD COLUMN cause TEXT;"
    "CREATE UNIQUE INDEX alerts_cause ON alerts(cause) WHERE cause IS NOT NULL;",
    /*
     * 9 -> 10: a CRL's DER in a table of its own. SQLite stores a row's columns in order and
     * reads or rewrites the whole row to reach a column behind a value: every look at a full
     * CRL's row (its state, its fold) read or wrote its tens of MB (docs/performance.md).
     * In parts of 1 MiB, each written in a transaction of its own, under the signer's attempt
     * id (crls.der_attempt names the one that counts; inventory/crls.c).
     */
    "CREATE TABLE crl_der("
    " number INTEGER NOT NULL REFERENCES crls(number),"
    " attempt INTEGER NOT NULL,"
    " part INTEGER NOT NULL,"
    " der BLOB NOT NULL,"
    " PRIMARY KEY (number, attempt, part));"
    "ALTER TABLE crls ADD COLUMN der_attempt INTEGER;"
    "INSERT INTO crl_der(number, attempt, part, der) SELECT number, 0, 0, der FROM crls"
    " WHERE der IS NOT NULL;"
    "UPDATE crls SET der_attempt = 0 WHERE der IS NOT NULL;"
    "ALTER TABLE crls DROP COLUMN der;",
};

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

int inv_db_fail(struct inventory *inv, int db_rc, const char *what)
{
    const char *path = inv != NULL && inv->path != NULL ? inv->path : "store";
    const char *msg = inv != NULL && inv->db != NULL ? inv->db->ops->errmsg(inv->db) : "error";
    char dir[PATH_MAX] = ".";

    switch (db_rc) {
    case DB_BUSY:
        return mqpki_fail(MQPKI_ERR_BUSY, "%s: %s: store busy (%s)", path, what, msg);
    case DB_NOMEM:
        return mqpki_fail(MQPKI_ERR_NOMEM, "%s: %s: out of memory", path, what);
    case DB_GONE:
        return mqpki_fail(MQPKI_ERR_BUSY, "%s: %s: connection to the store lost (%s)", path, what,
                          msg);
    case DB_FULL:
        if (inv != NULL && inv->ops == &db_pg_ops)
            return mqpki_fail(MQPKI_ERR_NOSPACE, "%s: disk full on the database server (%s)",
                              path, what);
        (void)mqpki_path_dir(path, dir, sizeof(dir));
        return mqpki_fail(MQPKI_ERR_NOSPACE,
                          "%s: disk full: no space left on the device holding %s; nothing was "
                          "changed (%s)",
                          path, dir, what);
    default:
        return mqpki_fail(MQPKI_ERR_STORE, "%s: %s: %s", path, what, msg);
    }
}

int inv_exec(struct inventory *inv, const char *sql)
{
    int src = inv->db->ops->exec(inv->db, sql);

    if (src != DB_OK)
        return inv_db_fail(inv, src, "exec");
    return MQPKI_OK;
}

int inv_prepare(struct inventory *inv, const char *sql, struct db_stmt **out)
{
    int src = inv->db->ops->prepare(inv->db, sql, 0, out);

    if (src != DB_OK) {
        *out = NULL;
        return inv_db_fail(inv, src, "prepare");
    }
    return MQPKI_OK;
}

int inv_stmt(struct inventory *inv, enum inv_sql which, struct db_stmt **out)
{
    int src;

    *out = NULL;
    if (which < 0 || which >= SQL_COUNT_)
        return mqpki_fail(MQPKI_ERR_INTERNAL, "inventory: unknown statement %d", (int)which);
    if (inv->stmt[which] == NULL) {
        /* persistent: the statement lives as long as the handle. */
        src = inv->db->ops->prepare(inv->db, sql_text[which], 1, &inv->stmt[which]);
        if (src != DB_OK) {
            inv->stmt[which] = NULL;
            return inv_db_fail(inv, src, "prepare");
        }
    }
    db_reset(inv->stmt[which]);
    *out = inv->stmt[which];
    return MQPKI_OK;
}

void inv_stmt_done(struct db_stmt *st)
{
    db_reset(st);
}

int inv_stmt_row(struct inventory *inv, enum inv_sql which, const char *key, const char *what,
                 struct db_stmt **st)
{
    int rc, src;

    if ((rc = inv_stmt(inv, which, st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, *st, 1, key)) != MQPKI_OK)
        return rc;
    src = db_step(*st);
    if (src == DB_ROW)
        return MQPKI_OK;
    if (src == DB_DONE)
        return mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s %s not found", what, key);
    return inv_db_fail(inv, src, what);
}

int inv_bind_text(struct inventory *inv, struct db_stmt *st, int idx, const char *s)
{
    int src = db_bind_text(st, idx, s);

    if (src != DB_OK)
        return inv_db_fail(inv, src, "bind");
    return MQPKI_OK;
}

void inv_col_text(struct db_stmt *st, int col, char *out, size_t size)
{
    const char *t = db_column_text(st, col);

    if (size == 0)
        return;
    if (t == NULL) {
        out[0] = '\0';
        return;
    }
    snprintf(out, size, "%s", t);
}

int inv_check_id(const char *id)
{
    char shown[PROTO_ASSET_ID_MAX + 8];
    size_t i;

    if (proto_asset_id_valid(id))
        return MQPKI_OK;
    if (id == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset id missing");
    /* Show the offending id, but never raw control characters in a log line. */
    for (i = 0; id[i] != '\0' && i < sizeof(shown) - 4; i++)
        shown[i] = (id[i] >= 0x20 && id[i] < 0x7f) ? id[i] : '?';
    if (id[i] != '\0')
        shown[i++] = '.', shown[i++] = '.', shown[i++] = '.';
    shown[i] = '\0';
    return mqpki_fail(MQPKI_ERR_INVALID,
                      "asset id '%s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters, "
                      "not starting with . or -",
                      shown);
}

int inv_check_text(const char *s, size_t max, const char *what)
{
    json_t *probe;

    if (s == NULL)
        return MQPKI_OK;
    if (memchr(s, '\0', max) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: longer than %zu characters", what, max - 1);
    /* jansson refuses invalid UTF-8; the audit detail must be valid JSON. */
    probe = json_string(s);
    if (probe == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: not valid UTF-8 text", what);
    json_decref(probe);
    return MQPKI_OK;
}

static int migrate(struct inventory *inv, int target)
{
    const char *const *steps = inv->ops == &db_pg_ops ? inv_pg_migrations : migrations;
    int n_steps = inv->ops == &db_pg_ops ? INV_PG_MIGRATIONS : N_MIGRATIONS;
    int version = 0, rc = MQPKI_OK, src;

    if ((src = inv->db->ops->schema_version(inv->db, &version)) != DB_OK) {
        rc = inv_db_fail(inv, src, "read schema version");
        goto out;
    }
    if (version > n_steps) {
        rc = mqpki_fail(MQPKI_ERR_STORE,
                        "%s: schema version %d is newer than this mqpki understands (%d)",
                        inv->path, version, n_steps);
        goto out;
    }
    while (version < target) {
        if ((src = inv->db->ops->begin_write(inv->db, INV_LOCK_MS)) != DB_OK) {
            rc = inv_db_fail(inv, src, "migrate");
            goto out;
        }
        /* Another process may have migrated while we waited for the write lock. */
        src = inv->db->ops->schema_version(inv->db, &version);
        if (src != DB_OK)
            rc = inv_db_fail(inv, src, "read schema version");
        if (rc == MQPKI_OK && version < target) {
            /* An empty step: this engine's schema needs nothing for that version. */
            if (steps[version][0] != '\0')
                rc = inv_exec(inv, steps[version]);
            if (rc == MQPKI_OK && (src = inv->db->ops->set_schema_version(inv->db, version + 1)) !=
                                      DB_OK)
                rc = inv_db_fail(inv, src, "set schema version");
            if (rc == MQPKI_OK)
                version++;
        }
        if (rc == MQPKI_OK)
            rc = inv_exec(inv, "COMMIT");
        if (rc != MQPKI_OK) {
            if (inv->db->ops->in_transaction(inv->db))
                (void)inv->db->ops->exec(inv->db, "ROLLBACK");
            goto out;
        }
    }
out:
    return rc;
}

static int open_at(const char *target, int target_version, struct inventory **out)
{
    struct inventory *inv = NULL;
    char err[512];
    int rc = MQPKI_OK, src;

    if (out == NULL || target == NULL || target[0] == '\0')
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_open: path missing");
    *out = NULL;
    inv = calloc(1, sizeof(*inv));
    if (inv == NULL || (inv->path = malloc(strlen(target) + 1)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    /* Messages name the store; a password in a URL never reaches them. */
    db_redact(target, inv->path, strlen(target) + 1);
    inv->ops = db_ops_for(target);
    src = inv->ops->open(target, &inv->db, err, sizeof(err));
    if (src != DB_OK) {
        if (src == DB_FULL && inv->ops == &db_pg_ops) {
            rc = mqpki_fail(MQPKI_ERR_NOSPACE, "%s: disk full on the database server (%s)",
                            inv->path, err);
        } else if (src == DB_FULL) {
            char dir[PATH_MAX] = ".";
            (void)mqpki_path_dir(inv->path, dir, sizeof(dir));
            rc = mqpki_fail(MQPKI_ERR_NOSPACE,
                            "%s: disk full: no space left on the device holding %s (%s)",
                            inv->path, dir, err);
        }
        else if (src == DB_BUSY)
            rc = mqpki_fail(MQPKI_ERR_BUSY, "%s: store busy (%s)", inv->path, err);
        else if (src == DB_GONE)
            rc = mqpki_fail(MQPKI_ERR_STORE, "%s: cannot connect: %s", inv->path, err);
        else
            rc = mqpki_fail(MQPKI_ERR_STORE, "%s: %s", inv->path, err);
        goto out;
    }
    rc = migrate(inv, target_version < 0 ? (inv->ops == &db_pg_ops ? INV_PG_MIGRATIONS
                                                                   : N_MIGRATIONS)
                                         : target_version);
    /* SQLite migrations run with foreign keys off (its procedure for rebuilding a table that
     * others reference, step 6 -> 7); every later statement with them on. */
    if (rc == MQPKI_OK && inv->ops == &db_sqlite_ops)
        rc = inv_exec(inv, "PRAGMA foreign_keys=ON");
out:
    if (rc != MQPKI_OK) {
        inventory_close(inv);
        inv = NULL;
    }
    if (out != NULL)
        *out = inv;
    return rc;
}

int inventory_open(const char *path, struct inventory **out)
{
    return open_at(path, -1, out);
}

int inventory_is_remote(const struct inventory *inv)
{
    return inv != NULL && inv->ops == &db_pg_ops;
}

int inventory_target_is_remote(const char *target)
{
    return db_target_is_pg(target);
}

int inventory_listen(struct inventory *inv)
{
    int src;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_listen: no store");
    src = inv->db->ops->listen(inv->db, INV_CHANNEL_OUTBOX);
    return src >= 0 && src != DB_ERROR ? MQPKI_OK : inv_db_fail(inv, src, "listen");
}

int inventory_wait(struct inventory *inv, int timeout_ms)
{
    int src;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_wait: no store");
    src = inv->db->ops->wait(inv->db, timeout_ms);
    if (src == 0 || src == 1)
        return src;
    return inv_db_fail(inv, src, "wait for notifications");
}

#ifdef UNIT_TESTING
int inv_test_open_version(const char *path, int version, struct inventory **out)
{
    return open_at(path, version, out);
}
#endif

void inventory_close(struct inventory *inv)
{
    if (inv == NULL)
        return;
    for (int i = 0; i < SQL_COUNT_; i++)
        db_finalize(inv->stmt[i]);
    if (inv->db != NULL)
        inv->db->ops->close(inv->db);
    free(inv->path);
    free(inv);
}

int inventory_begin(struct inventory *inv)
{
    int src;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_begin: no store");
    if (inv->in_tx || inv->in_snapshot)
        return mqpki_fail(MQPKI_ERR_STATE, "%s: a transaction is already open", inv->path);
    if ((src = inv->db->ops->begin_write(inv->db, INV_LOCK_MS)) != DB_OK)
        return inv_db_fail(inv, src, "begin");
    inv->in_tx = 1;
    return MQPKI_OK;
}

int inventory_commit(struct inventory *inv)
{
    int rc = MQPKI_OK;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_commit: no store");
    if (!inv->in_tx)
        return mqpki_fail(MQPKI_ERR_STATE, "%s: no transaction is open", inv->path);
    rc = inv_exec(inv, "COMMIT");
    if (rc != MQPKI_OK && inv->db->ops->in_transaction(inv->db))
        (void)inv->db->ops->exec(inv->db, "ROLLBACK");
    inv->in_tx = 0;
    return rc;
}

void inventory_rollback(struct inventory *inv)
{
    if (inv == NULL || inv->db == NULL)
        return;
    if (inv->db->ops->in_transaction(inv->db))
        (void)inv->db->ops->exec(inv->db, "ROLLBACK");
    inv->in_tx = 0;
}

int inventory_savepoint(struct inventory *inv)
{
    if (inv == NULL || !inv->in_tx)
        return mqpki_fail(MQPKI_ERR_STATE, "inventory_savepoint: no transaction is open");
    return inv_exec(inv, "SAVEPOINT inv_group");
}

int inventory_group_writer(struct inventory *inv)
{
    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_group_writer: no store");
    /* SQLite keeps each savepoint's undo pages in a temporary file by default: a pwrite per page
     * changed, some 28 per issuance. A batch's are bounded by the batch (BATCH_MAX records). */
    if (inv->ops == &db_sqlite_ops)
        return inv_exec(inv, "PRAGMA temp_store=MEMORY");
    return MQPKI_OK;
}

int inventory_savepoint_end(struct inventory *inv, int keep)
{
    if (inv == NULL || !inv->in_tx)
        return mqpki_fail(MQPKI_ERR_STATE, "inventory_savepoint_end: no transaction is open");
    /* Some errors (disk full, I/O, a lost connection) end the whole transaction. */
    if (inv->db->ops->tx_failed(inv->db)) {
        inv->in_tx = 0;
        return mqpki_fail(MQPKI_ERR_STORE, "%s: the transaction was rolled back", inv->path);
    }
    if (keep)
        return inv_exec(inv, "RELEASE inv_group");
    return inv_exec(inv, "ROLLBACK TO inv_group; RELEASE inv_group");
}

int inv_tx_start(struct inventory *inv, struct inv_tx *tx)
{
    int src;

    tx->own = 0;
    tx->savepoint = 0;
    if (inv->in_tx) {
        int rc = inv_exec(inv, "SAVEPOINT inv_call");
        if (rc == MQPKI_OK)
            tx->savepoint = 1;
        return rc;
    }
    if ((src = inv->db->ops->begin_write(inv->db, INV_LOCK_MS)) != DB_OK)
        return inv_db_fail(inv, src, "begin");
    tx->own = 1;
    return MQPKI_OK;
}

int inv_tx_end(struct inventory *inv, struct inv_tx *tx, int keep, int rc)
{
    const struct db_ops *ops = inv->db->ops;
    int crc;

    if (tx->own) {
        if (keep) {
            /* A failed commit outranks rc (which is an error only for kept refusals). */
            crc = inv_exec(inv, "COMMIT");
            if (crc != MQPKI_OK)
                rc = crc;
            if (crc != MQPKI_OK && ops->in_transaction(inv->db))
                (void)ops->exec(inv->db, "ROLLBACK");
        } else if (ops->in_transaction(inv->db)) {
            (void)ops->exec(inv->db, "ROLLBACK");
        }
    } else if (tx->savepoint) {
        /* Some errors (disk full, I/O, a lost connection) end the whole transaction. */
        if (ops->tx_failed(inv->db)) {
            inv->in_tx = 0;
        } else if (keep) {
            crc = inv_exec(inv, "RELEASE inv_call");
            if (crc != MQPKI_OK)
                rc = crc;
        } else {
            (void)ops->exec(inv->db, "ROLLBACK TO inv_call; RELEASE inv_call");
        }
    }
    tx->own = 0;
    tx->savepoint = 0;
    return rc;
}

#ifdef UNIT_TESTING
struct db *inv_test_db(struct inventory *inv)
{
    return inv->db;
}
#endif

int inventory_meta_set(struct inventory *inv, const char *key, const char *value)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc, src;

    if (inv == NULL || key == NULL || key[0] == '\0' || value == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_meta_set: key and value required");
    /* The audit chain head must only move with the chain itself. */
    if (strncmp(key, "audit.", 6) == 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "meta key '%s' is reserved", key);
    rc = inv_check_text(key, INV_TEXT_MAX, "meta key");
    if (rc == MQPKI_OK)
        rc = inv_check_text(value, 4096, "meta value");
    if (rc != MQPKI_OK)
        return rc;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        return rc;
    rc = inv_stmt(inv, SQL_META_SET, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, key)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, value)) != MQPKI_OK)
        goto out;
    src = db_step(st);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "meta set");
        goto out;
    }
    inv_stmt_done(st);
    st = NULL;
    rc = inv_audit(inv, "system", "meta.set", key, json_pack("{s:s}", "value", value));
out:
    inv_stmt_done(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_meta_get(struct inventory *inv, const char *key, char *out, size_t out_size)
{
    struct db_stmt *st = NULL;
    const char *v;
    int rc;

    if (inv == NULL || key == NULL || out == NULL || out_size == 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_meta_get: key and buffer required");
    out[0] = '\0';
    if ((rc = inv_stmt_row(inv, SQL_META_GET, key, "meta key", &st)) != MQPKI_OK)
        goto out;
    v = db_column_text(st, 0);
    if (v == NULL)
        v = "";
    if ((size_t)db_column_bytes(st, 0) >= out_size) {
        rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "meta key '%s': value longer than the buffer", key);
        goto out;
    }
    memcpy(out, v, (size_t)db_column_bytes(st, 0) + 1);
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_job_due(struct inventory *inv, const char *job, int64_t now, int64_t every,
                      int *due)
{
    char key[INV_TEXT_MAX], value[32], *end = NULL;
    int64_t last = 0;
    int rc;

    *due = 0;
    if (inv == NULL || job == NULL || job[0] == '\0' || every < 1)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_job_due: job and period required");
    if ((size_t)snprintf(key, sizeof(key), "job.%s.last_at", job) >= sizeof(key))
        return mqpki_fail(MQPKI_ERR_INVALID, "job name too long");
    /* One unit of work under the write lock: a second replica reads the first one's claim. */
    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        return rc;
    rc = inventory_meta_get(inv, key, value, sizeof(value));
    if (rc == MQPKI_ERR_NOT_FOUND) {
        mqpki_err_clear();
        rc = MQPKI_OK;
    } else if (rc == MQPKI_OK) {
        last = strtoll(value, &end, 10);
        if (end == value || *end != '\0')
            last = 0; /* unreadable: run, and write a good one */
    }
    /* A claim in the future (a clock set back) does not block the job for long. */
    if (rc == MQPKI_OK && (last == 0 || now - last >= every || last > now + every)) {
        snprintf(value, sizeof(value), "%lld", (long long)now);
        if ((rc = inventory_meta_set(inv, key, value)) == MQPKI_OK)
            *due = 1;
    }
    if (rc == MQPKI_OK && (rc = inventory_commit(inv)) == MQPKI_OK)
        return MQPKI_OK;
    inventory_rollback(inv);
    *due = 0;
    return rc;
}
