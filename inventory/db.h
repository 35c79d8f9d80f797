/*
 * inventory/db.h: the store's back-end interface. One small table of operations per SQL engine
 * (db_sqlite.c: the embedded default; db_pg.c: PostgreSQL through libpq, for replicas), the way
 * curl keeps its TLS back ends behind one table. The rest of inventory/ speaks only this
 * interface: statements with numbered parameters (?1, ?2 ...), stepped row by row.
 *
 * Dialect: SQL handed to db_prepare is the common subset of SQLite 3.40 and PostgreSQL 15 (both
 * have RETURNING, ON CONFLICT, FILTER, window functions, partial indexes). The PostgreSQL back
 * end rewrites ?N to $N and drops SQLite's INDEXED BY hints; what cannot be shared (the schema,
 * JSON and time formatting) comes from db_dialect.
 *
 * Not thread-safe: one connection is used by one thread at a time (inventory.h's contract).
 */
#ifndef MQPKI_INVENTORY_DB_H
#define MQPKI_INVENTORY_DB_H

#include <stddef.h>
#include <stdint.h>

/* Results of db_step and the other calls. The failures carry the engine's message in
 * db_errmsg; db_fail in store.c turns them into mqpki errors. */
enum db_rc {
    DB_OK = 0,
    DB_ROW,        /* a row is ready */
    DB_DONE,       /* the statement ran to its end */
    DB_BUSY,       /* lock timeout, serialization failure, deadlock: retry the transaction */
    DB_CONSTRAINT, /* unique, primary key, check or foreign key violated */
    DB_FULL,       /* no space left on the store's device */
    DB_NOMEM,
    DB_GONE,       /* the connection to the server was lost (the transaction is lost with it) */
    DB_ERROR       /* anything else */
};

/* Column types as db_column_type reports them. */
enum db_type { DB_NULL = 0, DB_INTEGER, DB_TEXT, DB_BLOB };

struct db;
struct db_stmt;

/*
 * What differs between the engines beyond the statement syntax. Each back end fills one.
 */
struct db_dialect {
    const char *name;        /* "sqlite" or "postgresql" */
    const char *json_text;   /* a column holding JSON text ({}) as a JSON value */
};

struct db_ops {
    const struct db_dialect *dialect;
    /* Opens target (a file path or a postgresql:// URL). On failure *out is NULL and err holds
     * a message; the return is a db_rc. */
    int (*open)(const char *target, struct db **out, char *err, size_t err_size);
    void (*close)(struct db *db);
    /* Runs SQL without results (several statements separated by ';' allowed). */
    int (*exec)(struct db *db, const char *sql);
    /* persistent: the statement is kept and reused for the connection's lifetime. */
    int (*prepare)(struct db *db, const char *sql, int persistent, struct db_stmt **out);
    void (*finalize)(struct db_stmt *st);
    /* Back to before the first step, bindings cleared. */
    void (*reset)(struct db_stmt *st);
    /* Bindings: text and blob are used in place until the statement's next reset (like
     * SQLITE_STATIC); idx counts from 1. */
    int (*bind_int64)(struct db_stmt *st, int idx, int64_t v);
    int (*bind_text)(struct db_stmt *st, int idx, const char *s);
    int (*bind_blob)(struct db_stmt *st, int idx, const void *p, size_t len);
    int (*bind_null)(struct db_stmt *st, int idx);
    int (*step)(struct db_stmt *st);
    int (*column_type)(struct db_stmt *st, int col);
    int64_t (*column_int64)(struct db_stmt *st, int col);
    /* NUL-terminated text, NULL for SQL NULL; valid until the next step or reset. */
    const char *(*column_text)(struct db_stmt *st, int col);
    const void *(*column_blob)(struct db_stmt *st, int col);
    size_t (*column_bytes)(struct db_stmt *st, int col);
    /* Rows changed by the last INSERT, UPDATE or DELETE on this connection. */
    int64_t (*changes)(struct db *db);
    /* 1 inside a transaction (also one the engine aborted and that awaits ROLLBACK). */
    int (*in_transaction)(struct db *db);
    /* 1 when the open transaction can no longer commit (an error undid it; ROLLBACK it). */
    int (*tx_failed)(struct db *db);
    const char *(*errmsg)(struct db *db);
    /* The errno behind the last I/O failure, 0 when unknown. */
    int (*sys_errno)(struct db *db);
    /* Starts the one write transaction: writers across every process and replica queue here. */
    int (*begin_write)(struct db *db, int timeout_ms);
    /* A read-only snapshot: every statement until COMMIT sees one state of the store. */
    int (*begin_snapshot)(struct db *db);
    /* The store-wide CRL publication lock (one CRL builder at a time): 1 taken, 0 timed out.
     * A lock lost with its session (PostgreSQL) fails every begin until publish_unlock: the
     * publication stops rather than go on unguarded. */
    int (*publish_lock)(struct db *db, int timeout_ms);
    void (*publish_unlock)(struct db *db);
    /* Schema version bookkeeping. */
    int (*schema_version)(struct db *db, int *out);
    int (*set_schema_version)(struct db *db, int version);
    /* Notifies listeners of channel when the current transaction commits (no-op when the engine
     * has no notifications: the listeners' timer covers it). */
    int (*notify)(struct db *db, const char *channel);
    /* Subscribes this connection to channel; 0 when unsupported (wait then only sleeps). */
    int (*listen)(struct db *db, const char *channel);
    /* Waits up to timeout_ms for a notification: 1 notified, 0 timed out, or a failure. */
    int (*wait)(struct db *db, int timeout_ms);
};

struct db {
    const struct db_ops *ops;
};

struct db_stmt {
    struct db *db;
};

extern const struct db_ops db_sqlite_ops;
extern const struct db_ops db_pg_ops;

/* The back end for target: PostgreSQL for postgresql:// and postgres:// URLs, else SQLite. */
const struct db_ops *db_ops_for(const char *target);

/* 1 when target names a PostgreSQL store. */
int db_target_is_pg(const char *target);

/* SQLite only: an online copy of the store into the new, empty file dest (one read snapshot). */
int db_sqlite_backup(struct db *db, const char *dest, char *err, size_t err_size);

/* target with the password of a URL replaced by ***, for messages (out as large as target). */
void db_redact(const char *target, char *out, size_t size);

static inline int db_bind_int64(struct db_stmt *st, int idx, int64_t v)
{
    return st->db->ops->bind_int64(st, idx, v);
}
static inline int db_bind_text(struct db_stmt *st, int idx, const char *s)
{
    return st->db->ops->bind_text(st, idx, s);
}
static inline int db_bind_blob(struct db_stmt *st, int idx, const void *p, size_t len)
{
    return st->db->ops->bind_blob(st, idx, p, len);
}
static inline int db_bind_null(struct db_stmt *st, int idx)
{
    return st->db->ops->bind_null(st, idx);
}
static inline int db_step(struct db_stmt *st)
{
    return st->db->ops->step(st);
}
static inline int db_column_type(struct db_stmt *st, int col)
{
    return st->db->ops->column_type(st, col);
}
static inline int64_t db_column_int64(struct db_stmt *st, int col)
{
    return st->db->ops->column_int64(st, col);
}
static inline int db_column_int(struct db_stmt *st, int col)
{
    return (int)st->db->ops->column_int64(st, col);
}
static inline const char *db_column_text(struct db_stmt *st, int col)
{
    return st->db->ops->column_text(st, col);
}
static inline const void *db_column_blob(struct db_stmt *st, int col)
{
    return st->db->ops->column_blob(st, col);
}
static inline size_t db_column_bytes(struct db_stmt *st, int col)
{
    return st->db->ops->column_bytes(st, col);
}
static inline void db_finalize(struct db_stmt *st)
{
    if (st != NULL)
        st->db->ops->finalize(st);
}
static inline void db_reset(struct db_stmt *st)
{
    if (st != NULL)
        st->db->ops->reset(st);
}

#endif
