/*
 * inventory/db_sqlite.c: the embedded back end (db.h). One file in the data directory, WAL
 * journal, synchronous=FULL: a certificate a client has received survives power loss. Writers
 * across processes queue on SQLite's write lock (BEGIN IMMEDIATE, 5 s busy timeout); CRL
 * publication is serialized by a lock file beside the database.
 */
#include "db.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct lite {
    struct db base;
    sqlite3 *h;
    char *path;
    int publish_fd;
    int failed; /* an error made SQLite roll the open transaction back by itself */
};

struct lite_stmt {
    struct db_stmt base;
    sqlite3_stmt *st;
};

#define LITE(db) ((struct lite *)(db))
#define LST(s) (((struct lite_stmt *)(s))->st)

static int map(struct lite *l, int src)
{
    int primary = src & 0xff;

    switch (primary) {
    case SQLITE_OK:
        return DB_OK;
    case SQLITE_ROW:
        return DB_ROW;
    case SQLITE_DONE:
        return DB_DONE;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return DB_BUSY;
    case SQLITE_CONSTRAINT:
        return DB_CONSTRAINT;
    case SQLITE_FULL:
        return DB_FULL;
    case SQLITE_NOMEM:
        return DB_NOMEM;
    default:
        break;
    }
    /* ENOSPC at an fsync (delayed allocation) reaches us as SQLite's "disk I/O error". */
    if (primary == SQLITE_IOERR && l != NULL) {
        int e = l->base.ops->sys_errno(&l->base);
        if (e == ENOSPC || e == EDQUOT)
            return DB_FULL;
    }
    return DB_ERROR;
}

static int lite_sys_errno(struct db *db)
{
    sqlite3 *h = LITE(db)->h;
    sqlite3_file *journal = NULL;
    int e;

    if (h == NULL)
        return 0;
    /* SQLite keeps the errno per file, and a failed commit's fsync is the WAL's (journal) own;
     * sqlite3_system_errno does not see that one. */
    e = sqlite3_system_errno(h);
    if (e == 0)
        (void)sqlite3_file_control(h, "main", SQLITE_FCNTL_LAST_ERRNO, &e);
    if (e == 0 && sqlite3_file_control(h, "main", SQLITE_FCNTL_JOURNAL_POINTER, &journal) == SQLITE_OK &&
        journal != NULL && journal->pMethods != NULL)
        (void)journal->pMethods->xFileControl(journal, SQLITE_FCNTL_LAST_ERRNO, &e);
    return e;
}

/*
 * The database holds token hashes and the audit log: create it 0600 rather than with the
 * process umask (SQLite gives the -wal and -shm files the database's mode).
 */
static int precreate(const char *path, char *err, size_t err_size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);

    if (fd < 0) {
        if (errno == EEXIST)
            return DB_OK;
        snprintf(err, err_size, "%s", strerror(errno));
        return errno == ENOSPC ? DB_FULL : DB_ERROR;
    }
    close(fd);
    return DB_OK;
}

static void lite_close(struct db *db)
{
    struct lite *l = LITE(db);

    if (l == NULL)
        return;
    if (l->h != NULL) {
        /* An abandoned caller transaction is rolled back, never committed implicitly. */
        if (!sqlite3_get_autocommit(l->h))
            sqlite3_exec(l->h, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close_v2(l->h);
    }
    db->ops->publish_unlock(db);
    free(l->path);
    free(l);
}

/*
 * The wait for the store's one writer: a poll every millisecond, for up to 5 s. SQLite's own
 * timeout backs off to 100 ms sleeps, so a writer holding the lock in short back-to-back
 * transactions (a large CRL's parts, inventory/crls.c) starved a revocation waiting behind it
 * for most of a second.
 */
#define BUSY_POLLS 5000

static int busy_poll(void *ctx, int count)
{
    struct timespec ms = {0, 1000 * 1000};

    (void)ctx;
    if (count >= BUSY_POLLS)
        return 0;
    nanosleep(&ms, NULL);
    return 1;
}

static int lite_open(const char *target, struct db **out, char *err, size_t err_size)
{
    struct lite *l;
    sqlite3_stmt *st = NULL;
    const unsigned char *mode;
    struct stat fst;
    int rc, src;

    *out = NULL;
    err[0] = '\0';
    if ((l = calloc(1, sizeof(*l))) == NULL || (l->path = strdup(target)) == NULL) {
        free(l);
        return DB_NOMEM;
    }
    l->base.ops = &db_sqlite_ops;
    l->publish_fd = -1;
    if ((rc = precreate(target, err, err_size)) != DB_OK)
        goto out;
    /* NOMUTEX: one handle is used by one thread at a time (the contract in inventory.h). */
    src = sqlite3_open_v2(target, &l->h,
                          SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (src != SQLITE_OK) {
        snprintf(err, err_size, "%s", l->h != NULL ? sqlite3_errmsg(l->h) : sqlite3_errstr(src));
        rc = DB_ERROR;
        goto out;
    }
    sqlite3_extended_result_codes(l->h, 1);
    sqlite3_busy_handler(l->h, busy_poll, NULL);
    /* A new (empty) store reclaims space by incremental vacuum (inventory_vacuum); the mode
     * is set before anything is written, WAL's header included (an older store switches at
     * its first `mqpki tidy`). */
    if (stat(target, &fst) == 0 && fst.st_size == 0 &&
        (src = sqlite3_exec(l->h, "PRAGMA auto_vacuum = INCREMENTAL", NULL, NULL, NULL)) !=
            SQLITE_OK) {
        snprintf(err, err_size, "%s", sqlite3_errmsg(l->h));
        rc = map(l, src);
        goto out;
    }
    /* The first statement reads the header: a file that is not a database fails here. */
    src = sqlite3_prepare_v2(l->h, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        /* "file is not a database" */
        snprintf(err, err_size, "%s", sqlite3_errmsg(l->h));
        rc = map(l, src);
        if (rc == DB_DONE || rc == DB_OK)
            rc = DB_ERROR;
        goto out;
    }
    mode = sqlite3_column_text(st, 0);
    if (mode == NULL || strcmp((const char *)mode, "wal") != 0) {
        snprintf(err, err_size, "cannot switch to WAL journal mode");
        rc = DB_ERROR;
        goto out;
    }
    /* A pending statement would keep the migration's COMMIT from completing. */
    sqlite3_finalize(st);
    st = NULL;
    /*
     * FULL: a certificate a client has received must survive power loss, so every commit is
     * fsynced (WAL + NORMAL could lose the last commits). Callers batch several issuances in
     * one transaction to share the fsync.
     */
    /* Foreign keys are switched on after the migrations (inventory/store.c, open_at). */
    src = sqlite3_exec(l->h, "PRAGMA synchronous=FULL", NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        snprintf(err, err_size, "%s", sqlite3_errmsg(l->h));
        rc = map(l, src);
        goto out;
    }
    rc = DB_OK;
out:
    sqlite3_finalize(st);
    if (rc != DB_OK) {
        lite_close(&l->base);
        return rc;
    }
    *out = &l->base;
    return DB_OK;
}

static int lite_exec(struct db *db, const char *sql)
{
    struct lite *l = LITE(db);
    int src = sqlite3_exec(l->h, sql, NULL, NULL, NULL);

    return src == SQLITE_OK ? DB_OK : map(l, src);
}

static int lite_prepare(struct db *db, const char *sql, int persistent, struct db_stmt **out)
{
    struct lite *l = LITE(db);
    struct lite_stmt *s;
    int src;

    *out = NULL;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return DB_NOMEM;
    s->base.db = db;
    src = sqlite3_prepare_v3(l->h, sql, -1, persistent ? SQLITE_PREPARE_PERSISTENT : 0, &s->st,
                             NULL);
    if (src != SQLITE_OK) {
        free(s);
        return map(l, src);
    }
    *out = &s->base;
    return DB_OK;
}

static void lite_finalize(struct db_stmt *st)
{
    sqlite3_finalize(LST(st));
    free(st);
}

static void lite_reset(struct db_stmt *st)
{
    sqlite3_reset(LST(st));
    sqlite3_clear_bindings(LST(st));
}

static int bound(struct db_stmt *st, int src)
{
    return src == SQLITE_OK ? DB_OK : map(LITE(st->db), src);
}

static int lite_bind_int64(struct db_stmt *st, int idx, int64_t v)
{
    return bound(st, sqlite3_bind_int64(LST(st), idx, v));
}

static int lite_bind_text(struct db_stmt *st, int idx, const char *s)
{
    if (s == NULL)
        return bound(st, sqlite3_bind_null(LST(st), idx));
    return bound(st, sqlite3_bind_text(LST(st), idx, s, -1, SQLITE_STATIC));
}

static int lite_bind_blob(struct db_stmt *st, int idx, const void *p, size_t len)
{
    if (len > INT_MAX)
        return DB_ERROR;
    return bound(st, sqlite3_bind_blob(LST(st), idx, p, (int)len, SQLITE_STATIC));
}

static int lite_bind_null(struct db_stmt *st, int idx)
{
    return bound(st, sqlite3_bind_null(LST(st), idx));
}

static int lite_step(struct db_stmt *st)
{
    return map(LITE(st->db), sqlite3_step(LST(st)));
}

static int lite_column_type(struct db_stmt *st, int col)
{
    switch (sqlite3_column_type(LST(st), col)) {
    case SQLITE_NULL:
        return DB_NULL;
    case SQLITE_INTEGER:
        return DB_INTEGER;
    case SQLITE_BLOB:
        return DB_BLOB;
    default:
        return DB_TEXT;
    }
}

static int64_t lite_column_int64(struct db_stmt *st, int col)
{
    return sqlite3_column_int64(LST(st), col);
}

static const char *lite_column_text(struct db_stmt *st, int col)
{
    return (const char *)sqlite3_column_text(LST(st), col);
}

static const void *lite_column_blob(struct db_stmt *st, int col)
{
    return sqlite3_column_blob(LST(st), col);
}

static size_t lite_column_bytes(struct db_stmt *st, int col)
{
    int n = sqlite3_column_bytes(LST(st), col);

    return n > 0 ? (size_t)n : 0;
}

static int64_t lite_changes(struct db *db)
{
    return sqlite3_changes64(LITE(db)->h);
}

static int lite_in_transaction(struct db *db)
{
    return !sqlite3_get_autocommit(LITE(db)->h);
}

static int lite_tx_failed(struct db *db)
{
    /* Some errors (disk full, I/O) make SQLite roll back the whole transaction itself. */
    return sqlite3_get_autocommit(LITE(db)->h);
}

static const char *lite_errmsg(struct db *db)
{
    return LITE(db)->h != NULL ? sqlite3_errmsg(LITE(db)->h) : "not open";
}

static int lite_begin_write(struct db *db, int timeout_ms)
{
    (void)timeout_ms; /* the busy timeout set at open */
    /* IMMEDIATE: writers queue for the lock up front instead of failing on upgrade. */
    return lite_exec(db, "BEGIN IMMEDIATE");
}

static int lite_begin_snapshot(struct db *db)
{
    /* DEFERRED: the first read fixes the snapshot; no write lock is taken. */
    return lite_exec(db, "BEGIN DEFERRED");
}

static int lite_publish_lock(struct db *db, int timeout_ms)
{
    struct lite *l = LITE(db);
    char path[PATH_MAX];
    int fd, waited = 0;

    if (l->publish_fd >= 0)
        return 1;
    if ((size_t)snprintf(path, sizeof(path), "%s.publish-lock", l->path) >= sizeof(path)) {
        errno = ENAMETOOLONG;
        return DB_ERROR;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == ENOSPC ? DB_FULL : DB_ERROR;
    /* flock, not fcntl locks: two handles of one process exclude each other too. */
    while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        if (errno != EWOULDBLOCK && errno != EINTR) {
            int err = errno;
            close(fd);
            errno = err;
            return DB_ERROR;
        }
        if (waited >= timeout_ms) {
            close(fd);
            return 0;
        }
        nanosleep(&ten_ms, NULL);
        waited += 10;
    }
    l->publish_fd = fd;
    return 1;
}

static void lite_publish_unlock(struct db *db)
{
    struct lite *l = LITE(db);

    if (l->publish_fd < 0)
        return;
    (void)flock(l->publish_fd, LOCK_UN);
    close(l->publish_fd);
    l->publish_fd = -1;
}

static int lite_schema_version(struct db *db, int *out)
{
    struct lite *l = LITE(db);
    sqlite3_stmt *st = NULL;
    int src = sqlite3_prepare_v2(l->h, "PRAGMA user_version", -1, &st, NULL);

    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *out = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return src == SQLITE_ROW ? DB_OK : map(l, src);
}

static int lite_set_schema_version(struct db *db, int version)
{
    char sql[64];

    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version);
    return lite_exec(db, sql);
}

static int lite_notify(struct db *db, const char *channel)
{
    (void)db;
    (void)channel;
    return DB_OK;
}

static int lite_listen(struct db *db, const char *channel)
{
    (void)db;
    (void)channel;
    return 0;
}

static int lite_wait(struct db *db, int timeout_ms)
{
    struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};

    (void)db;
    nanosleep(&ts, NULL);
    return 0;
}

static const struct db_dialect lite_dialect = {
    .name = "sqlite",
    .json_text = "json({})",
};

const struct db_ops db_sqlite_ops = {
    .dialect = &lite_dialect,
    .open = lite_open,
    .close = lite_close,
    .exec = lite_exec,
    .prepare = lite_prepare,
    .finalize = lite_finalize,
    .reset = lite_reset,
    .bind_int64 = lite_bind_int64,
    .bind_text = lite_bind_text,
    .bind_blob = lite_bind_blob,
    .bind_null = lite_bind_null,
    .step = lite_step,
    .column_type = lite_column_type,
    .column_int64 = lite_column_int64,
    .column_text = lite_column_text,
    .column_blob = lite_column_blob,
    .column_bytes = lite_column_bytes,
    .changes = lite_changes,
    .in_transaction = lite_in_transaction,
    .tx_failed = lite_tx_failed,
    .errmsg = lite_errmsg,
    .sys_errno = lite_sys_errno,
    .begin_write = lite_begin_write,
    .begin_snapshot = lite_begin_snapshot,
    .publish_lock = lite_publish_lock,
    .publish_unlock = lite_publish_unlock,
    .schema_version = lite_schema_version,
    .set_schema_version = lite_set_schema_version,
    .notify = lite_notify,
    .listen = lite_listen,
    .wait = lite_wait,
};

int db_target_is_pg(const char *target)
{
    return target != NULL &&
           (strncmp(target, "postgresql://", 13) == 0 || strncmp(target, "postgres://", 11) == 0);
}

const struct db_ops *db_ops_for(const char *target)
{
    return db_target_is_pg(target) ? &db_pg_ops : &db_sqlite_ops;
}

int db_sqlite_backup(struct db *db, const char *dest, char *err, size_t err_size)
{
    sqlite3 *out = NULL;
    sqlite3_backup *b = NULL;
    int rc = DB_OK, src;

    if (db == NULL || db->ops != &db_sqlite_ops) {
        snprintf(err, err_size, "not an SQLite store");
        return DB_ERROR;
    }
    src = sqlite3_open_v2(dest, &out, SQLITE_OPEN_READWRITE, NULL);
    if (src != SQLITE_OK) {
        snprintf(err, err_size, "%s: %s", dest, out != NULL ? sqlite3_errmsg(out) : "cannot open");
        rc = DB_ERROR;
        goto out;
    }
    if ((b = sqlite3_backup_init(out, "main", LITE(db)->h, "main")) == NULL) {
        snprintf(err, err_size, "%s", sqlite3_errmsg(out));
        rc = DB_ERROR;
        goto out;
    }
    /* All pages in one step: one read transaction on the source, hence one snapshot. A writer
     * holding the lock makes it busy for a moment: try again (the busy timeout is the store's). */
    for (int tries = 0; tries < 200; tries++) {
        src = sqlite3_backup_step(b, -1);
        if (src != SQLITE_BUSY && src != SQLITE_LOCKED)
            break;
        usleep(10 * 1000);
    }
    if (src != SQLITE_DONE) {
        snprintf(err, err_size, "%s", sqlite3_errstr(src));
        rc = DB_ERROR;
    }
out:
    if (b != NULL && (src = sqlite3_backup_finish(b)) != SQLITE_OK && rc == DB_OK) {
        snprintf(err, err_size, "%s", sqlite3_errstr(src));
        rc = DB_ERROR;
    }
    if (out != NULL && sqlite3_close(out) != SQLITE_OK && rc == DB_OK) {
        snprintf(err, err_size, "%s: cannot close", dest);
        rc = DB_ERROR;
    }
    return rc;
}
