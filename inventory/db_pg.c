/*
 * inventory/db_pg.c: the PostgreSQL back end (db.h), through libpq, for several mqpkid replicas
 * over one database (docs/ha.md).
 *
 * Correct across replicas by construction: every write transaction first takes one cluster-wide
 * advisory transaction lock (begin_write), so writers from every process and replica run one
 * after the other exactly as they do on SQLite's single write lock, and every invariant the
 * lifecycle keeps on SQLite (one-time tokens, one audit chain head, one CRL number counter, the
 * outbox) holds unchanged. The conditional statements and unique constraints stay as a second
 * line. Group commit puts many issuances in one such transaction, so the lock is taken once per
 * batch, not per certificate. CRL publication has its own session-level advisory lock (one CRL
 * builder at a time); a replica that dies releases both with its connection.
 *
 * Results come in binary format (integers and bytea as they are) and are read whole: the largest
 * result the store asks for is the revocation list of a full CRL.
 */
#include "db.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Advisory lock keys (two int4 halves): "mqpk" and the lock's role. */
#define PG_LOCK_SPACE 1836085355
#define PG_LOCK_WRITE 1
#define PG_LOCK_PUBLISH 2

/* Type OIDs (server/catalog/pg_type_d.h; stable across releases). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT2 21
#define OID_INT4 23
#define OID_OID 26

#define PG_PARAMS_MAX 32
#define PG_NUM_LEN 24

struct pg {
    struct db base;
    PGconn *conn;
    unsigned gen;       /* bumped on each reconnection: server-side statements are gone */
    unsigned next_name; /* names of server-side prepared statements */
    int64_t changes;
    int publish_locked;
    int publish_lost;   /* the publication lock went with a lost session: fail until unlock */
    int setup_pending;  /* a reopened session still needs PG_SESSION_SETUP */
    int tx_open;        /* a transaction was open after the last statement the server answered */
    char listening[64];
    char err[512];
};

struct pg_param {
    const char *val;
    int len;
    int fmt; /* 0 text, 1 binary */
    char num[PG_NUM_LEN];
};

struct pg_stmt {
    struct db_stmt base;
    char *sql;       /* with $N parameters */
    int persistent;  /* prepared once on the server and reused */
    char name[24];
    unsigned gen;    /* the connection generation it was prepared in; 0 never */
    int nparams;
    Oid types[PG_PARAMS_MAX]; /* 0: the server infers; text for a number the SQL never uses */
    struct pg_param p[PG_PARAMS_MAX];
    PGresult *res;
    int row, nrows;
    char (*num)[PG_NUM_LEN]; /* integers asked for as text, one per column */
    int ncols;
};

#define PG(db) ((struct pg *)(db))
#define PST(s) ((struct pg_stmt *)(s))

static void quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* NOTICEs ("relation already exists") are not the user's business */
}

static void set_err(struct pg *p, const char *msg)
{
    size_t n;

    snprintf(p->err, sizeof(p->err), "%s", msg != NULL && msg[0] != '\0' ? msg : "error");
    /* libpq messages end with a newline (and may hold several lines): keep one line. */
    for (n = 0; p->err[n] != '\0'; n++)
        if (p->err[n] == '\n') {
            p->err[n] = '\0';
            break;
        }
}

/* Maps a failed result to db_rc by its SQLSTATE (Appendix A of the PostgreSQL manual). */
static int map_result(struct pg *p, PGresult *res)
{
    const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    set_err(p, res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(p->conn));
    if (PQstatus(p->conn) != CONNECTION_OK || state == NULL)
        return DB_GONE;
    if (strncmp(state, "23", 2) == 0)
        return DB_CONSTRAINT;
    /* serialization_failure, deadlock_detected, lock_not_available */
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0)
        return DB_BUSY;
    if (strcmp(state, "53100") == 0)
        return DB_FULL;
    if (strcmp(state, "53200") == 0)
        return DB_NOMEM;
    /* connection exceptions, admin shutdown, a standby refusing writes after a failover */
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0 ||
        strcmp(state, "25006") == 0)
        return DB_GONE;
    return DB_ERROR;
}

/* Every session: UTC, durable commits, and READ COMMITTED for any transaction that names no
 * level, whatever the server's default: with every write under the one advisory lock
 * (pg_begin_write) no transaction of ours can then fail with a serialization failure, and the
 * snapshots are REPEATABLE READ READ ONLY, which never do (docs/ha.md). */
#define PG_SESSION_SETUP                                                                           \
    "SET TIME ZONE 'UTC'; SET synchronous_commit = on; "                                           \
    "SET default_transaction_isolation = 'read committed'"

/*
 * A connection lost between transactions is opened again (a failover moved the primary), with
 * the session as open() made it: its settings, the LISTEN. A session lock ends with the old
 * session: a publication that held it is told so (publish_lost) and fails at its next
 * transaction rather than go on unguarded.
 */
static int ensure(struct pg *p)
{
    PGresult *res;

    if (PQstatus(p->conn) == CONNECTION_OK && !p->setup_pending)
        return DB_OK;
    if (PQstatus(p->conn) != CONNECTION_OK) {
        PQreset(p->conn);
        if (PQstatus(p->conn) != CONNECTION_OK) {
            set_err(p, PQerrorMessage(p->conn));
            return DB_GONE;
        }
        p->gen++;
        if (p->publish_locked) {
            p->publish_locked = 0;
            p->publish_lost = 1;
        }
        p->tx_open = 0;
        p->setup_pending = 1;
        PQsetNoticeProcessor(p->conn, quiet, NULL);
    }
    res = PQexec(p->conn, PG_SESSION_SETUP);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        set_err(p, PQerrorMessage(p->conn));
        PQclear(res);
        return DB_GONE;
    }
    PQclear(res);
    p->setup_pending = 0;
    if (p->listening[0] != '\0') {
        char sql[96];
        snprintf(sql, sizeof(sql), "LISTEN %s", p->listening);
        PQclear(PQexec(p->conn, sql));
    }
    return DB_OK;
}

/* Inside a transaction by what the server last said; a lost connection keeps the last word. */
static int in_tx(struct pg *p)
{
    PGTransactionStatusType ts = PQtransactionStatus(p->conn);

    return ts == PQTRANS_UNKNOWN ? p->tx_open : ts != PQTRANS_IDLE;
}

static void note_tx(struct pg *p)
{
    PGTransactionStatusType ts = PQtransactionStatus(p->conn);

    if (ts != PQTRANS_UNKNOWN)
        p->tx_open = ts != PQTRANS_IDLE;
}

static int starts_with(const char *sql, const char *word)
{
    while (*sql == ' ' || *sql == '\n' || *sql == '\t')
        sql++;
    return strncasecmp(sql, word, strlen(word)) == 0;
}

/*
 * libpq learns that the server closed the connection only when it next uses it. Outside a
 * transaction, a statement that changes nothing (a read, a BEGIN, a session setting) and fails
 * so is sent once more on a new connection; a write is not: the server may have run it.
 */
static int changes_nothing(const char *sql)
{
    return starts_with(sql, "SELECT") || starts_with(sql, "BEGIN") || starts_with(sql, "SET") ||
           starts_with(sql, "LISTEN");
}

static int again(struct pg *p, int safe, int was_outside, int attempt)
{
    return attempt == 0 && safe && was_outside && PQstatus(p->conn) == CONNECTION_BAD &&
           ensure(p) == DB_OK;
}

static int run(struct pg *p, const char *sql)
{
    PGresult *res;
    int rc = DB_OK;

    /* The transaction went with its connection: its ROLLBACK is done, its COMMIT failed (the
     * outcome unknown: a commit in flight may have happened), anything else fails. */
    if (PQstatus(p->conn) == CONNECTION_BAD && in_tx(p)) {
        if (starts_with(sql, "ROLLBACK") && !starts_with(sql, "ROLLBACK TO")) {
            p->tx_open = 0;
            return DB_OK;
        }
        if (starts_with(sql, "COMMIT"))
            p->tx_open = 0;
        set_err(p, "connection to the store lost inside a transaction");
        return DB_GONE;
    }
    for (int attempt = 0;; attempt++) {
        int was_outside = !in_tx(p);
        if (was_outside && ensure(p) != DB_OK)
            return DB_GONE;
        res = PQexec(p->conn, sql);
        note_tx(p);
        if (res != NULL && (PQresultStatus(res) == PGRES_COMMAND_OK ||
                            PQresultStatus(res) == PGRES_TUPLES_OK))
            break;
        if (again(p, changes_nothing(sql), was_outside, attempt)) {
            PQclear(res);
            continue;
        }
        rc = map_result(p, res);
        break;
    }
    PQclear(res);
    return rc;
}

static void pg_close(struct db *db)
{
    struct pg *p = PG(db);

    if (p == NULL)
        return;
    if (p->conn != NULL)
        PQfinish(p->conn); /* an open transaction is rolled back by the server */
    free(p);
}

void db_redact(const char *url, char *out, size_t size)
{
    const char *scheme = strstr(url, "://"), *at, *colon;

    snprintf(out, size, "%s", url);
    if (scheme == NULL)
        return;
    at = strchr(scheme + 3, '@');
    colon = strchr(scheme + 3, ':');
    if (at != NULL && colon != NULL && colon < at)
        snprintf(out, size, "%.*s:***%s", (int)(colon - url), url, at);
}

static int pg_open(const char *target, struct db **out, char *err, size_t err_size)
{
    /* target_session_attrs first: a value in the URL (processed later) wins. With several
     * hosts in the URL libpq tries them in order and keeps the one that accepts writes. */
    const char *keys[] = {"target_session_attrs", "connect_timeout", "application_name",
                          "dbname", NULL};
    const char *vals[] = {"read-write", "10", "mqpki", target, NULL};
    struct pg *p;

    *out = NULL;
    err[0] = '\0';
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return DB_NOMEM;
    p->base.ops = &db_pg_ops;
    p->gen = 1;
    p->conn = PQconnectdbParams(keys, vals, 1);
    if (p->conn == NULL) {
        free(p);
        return DB_NOMEM;
    }
    if (PQstatus(p->conn) != CONNECTION_OK) {
        set_err(p, PQerrorMessage(p->conn));
        snprintf(err, err_size, "%s", p->err);
        pg_close(&p->base);
        return DB_GONE;
    }
    PQsetNoticeProcessor(p->conn, quiet, NULL);
    /* Times are integers (seconds) in the store; only formatting for listings uses the clock. */
    if (run(p, PG_SESSION_SETUP) != DB_OK) {
        snprintf(err, err_size, "%s", p->err);
        pg_close(&p->base);
        return DB_ERROR;
    }
    *out = &p->base;
    return DB_OK;
}

static int pg_exec(struct db *db, const char *sql)
{
    return run(PG(db), sql);
}

/* ?N -> $N, bare ? -> the next number; SQLite's "INDEXED BY name" hints dropped; SQLite's
 * "COLLATE BINARY" (byte order) is PostgreSQL's COLLATE "C" (the database's own collation may
 * order otherwise). String literals are copied as they are. */
static char *translate(const char *sql, int *nparams, uint64_t *used)
{
    size_t n = strlen(sql);
    char *out = malloc(n * 2 + 1), *o = out;
    int next = 0, max = 0;

    if (out == NULL)
        return NULL;
    *used = 0;
    for (const char *s = sql; *s != '\0';) {
        if (*s == '\'') {
            const char *e = s + 1;
            while (*e != '\0' && !(*e == '\'' && e[1] != '\''))
                e += (*e == '\'' && e[1] == '\'') ? 2 : 1;
            if (*e == '\'')
                e++;
            memcpy(o, s, (size_t)(e - s));
            o += e - s;
            s = e;
        } else if (*s == '?') {
            int num = 0;
            s++;
            if (*s >= '0' && *s <= '9')
                num = (int)strtol(s, (char **)&s, 10);
            else
                num = ++next;
            if (num > max)
                max = num;
            if (num >= 1 && num <= 64)
                *used |= UINT64_C(1) << (num - 1);
            o += sprintf(o, "$%d", num);
        } else if (strncmp(s, "COLLATE BINARY", 14) == 0) {
            s += 14;
            o += sprintf(o, "COLLATE \"C\"");
        } else if (strncmp(s, "INDEXED BY ", 11) == 0) {
            s += 11;
            while (*s == '_' || (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
                   (*s >= '0' && *s <= '9'))
                s++;
        } else {
            *o++ = *s++;
        }
    }
    *o = '\0';
    *nparams = max;
    return out;
}

static int pg_prepare(struct db *db, const char *sql, int persistent, struct db_stmt **out)
{
    struct pg *p = PG(db);
    struct pg_stmt *s;

    *out = NULL;
    if ((s = calloc(1, sizeof(*s))) == NULL)
        return DB_NOMEM;
    s->base.db = db;
    s->persistent = persistent;
    s->row = -1;
    uint64_t used = 0;

    if ((s->sql = translate(sql, &s->nparams, &used)) == NULL) {
        free(s);
        return DB_NOMEM;
    }
    if (s->nparams > PG_PARAMS_MAX) {
        set_err(p, "statement has too many parameters");
        free(s->sql);
        free(s);
        return DB_ERROR;
    }
    /* A parameter the SQL skips (bound anyway by a caller sharing bindings between two forms
     * of a statement) has no type to infer: say text. One the SQL uses only where no type
     * follows from it (`?1 IS NULL` alone) needs a CAST in the SQL: the server refuses it. */
    for (int i = 0; i < s->nparams; i++)
        s->types[i] = (used >> i) & 1 ? 0 : 25;
    if (persistent)
        snprintf(s->name, sizeof(s->name), "mqpki_%u", ++p->next_name);
    *out = &s->base;
    return DB_OK;
}

static void clear_result(struct pg_stmt *s)
{
    PQclear(s->res);
    s->res = NULL;
    s->row = -1;
    s->nrows = 0;
    free(s->num);
    s->num = NULL;
    s->ncols = 0;
}

static void pg_reset(struct db_stmt *st)
{
    struct pg_stmt *s = PST(st);

    clear_result(s);
    memset(s->p, 0, sizeof(s->p));
}

static void pg_finalize(struct db_stmt *st)
{
    struct pg_stmt *s = PST(st);
    struct pg *p = PG(st->db);

    clear_result(s);
    if (s->gen != 0 && s->gen == p->gen && PQstatus(p->conn) == CONNECTION_OK &&
        PQtransactionStatus(p->conn) != PQTRANS_INERROR) {
        char sql[48];
        snprintf(sql, sizeof(sql), "DEALLOCATE %s", s->name);
        PQclear(PQexec(p->conn, sql));
    }
    free(s->sql);
    free(s);
}

static struct pg_param *param(struct db_stmt *st, int idx)
{
    struct pg_stmt *s = PST(st);

    if (idx < 1 || idx > s->nparams) {
        set_err(PG(st->db), "parameter index out of range");
        return NULL;
    }
    clear_result(s); /* binding after stepping starts a new run, as in SQLite after a reset */
    return &s->p[idx - 1];
}

static int pg_bind_int64(struct db_stmt *st, int idx, int64_t v)
{
    struct pg_param *x = param(st, idx);

    if (x == NULL)
        return DB_ERROR;
    snprintf(x->num, sizeof(x->num), "%lld", (long long)v);
    x->val = x->num;
    x->len = 0;
    x->fmt = 0;
    return DB_OK;
}

static int pg_bind_text(struct db_stmt *st, int idx, const char *t)
{
    struct pg_param *x = param(st, idx);

    if (x == NULL)
        return DB_ERROR;
    x->val = t;
    x->len = 0;
    x->fmt = 0;
    return DB_OK;
}

static int pg_bind_blob(struct db_stmt *st, int idx, const void *b, size_t len)
{
    struct pg_param *x = param(st, idx);

    if (x == NULL || len > 0x7fffffff)
        return DB_ERROR;
    /* A zero-length blob is an empty bytea, not NULL. */
    x->val = b != NULL ? (const char *)b : "";
    x->len = (int)len;
    x->fmt = 1;
    return DB_OK;
}

static int pg_bind_null(struct db_stmt *st, int idx)
{
    struct pg_param *x = param(st, idx);

    if (x == NULL)
        return DB_ERROR;
    x->val = NULL;
    return DB_OK;
}

static int execute(struct pg_stmt *s)
{
    struct pg *p = PG(s->base.db);
    const char *vals[PG_PARAMS_MAX];
    int lens[PG_PARAMS_MAX], fmts[PG_PARAMS_MAX];
    PGresult *res = NULL;
    ExecStatusType status;

    for (int i = 0; i < s->nparams; i++) {
        vals[i] = s->p[i].val;
        lens[i] = s->p[i].len;
        fmts[i] = s->p[i].fmt;
    }
    if (PQstatus(p->conn) == CONNECTION_BAD && in_tx(p)) {
        set_err(p, "connection to the store lost inside a transaction");
        return DB_GONE;
    }
    for (int attempt = 0;; attempt++) {
        int was_outside = !in_tx(p);
        if (was_outside && ensure(p) != DB_OK)
            return DB_GONE;
        if (s->persistent && s->gen != p->gen) {
            res = PQprepare(p->conn, s->name, s->sql, s->nparams, s->types);
            if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
                int rc;
                note_tx(p);
                /* Nothing ran: a statement not yet prepared may always be sent again. */
                if (again(p, 1, was_outside, attempt)) {
                    PQclear(res);
                    continue;
                }
                rc = map_result(p, res);
                PQclear(res);
                return rc;
            }
            PQclear(res);
            s->gen = p->gen;
        }
        if (s->persistent)
            res = PQexecPrepared(p->conn, s->name, s->nparams, vals, lens, fmts, 1);
        else
            res = PQexecParams(p->conn, s->sql, s->nparams, s->types, vals, lens, fmts, 1);
        note_tx(p);
        status = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
        if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK)
            break;
        if (again(p, changes_nothing(s->sql), was_outside, attempt)) {
            PQclear(res);
            continue;
        }
        int rc = map_result(p, res);
        PQclear(res);
        return rc;
    }
    p->changes = strtoll(PQcmdTuples(res), NULL, 10);
    s->res = res;
    s->nrows = PQntuples(res);
    s->ncols = PQnfields(res);
    if (s->ncols > 0 && (s->num = calloc((size_t)s->ncols, sizeof(*s->num))) == NULL) {
        clear_result(s);
        return DB_NOMEM;
    }
    return DB_OK;
}

static int pg_step(struct db_stmt *st)
{
    struct pg_stmt *s = PST(st);
    int rc;

    if (s->res == NULL) {
        if ((rc = execute(s)) != DB_OK)
            return rc;
        s->row = 0;
    } else if (s->row < s->nrows) {
        s->row++;
    }
    return s->row < s->nrows ? DB_ROW : DB_DONE;
}

static int valid(struct pg_stmt *s, int col)
{
    return s->res != NULL && s->row >= 0 && s->row < s->nrows && col >= 0 && col < s->ncols;
}

static int pg_column_type(struct db_stmt *st, int col)
{
    struct pg_stmt *s = PST(st);

    if (!valid(s, col) || PQgetisnull(s->res, s->row, col))
        return DB_NULL;
    switch (PQftype(s->res, col)) {
    case OID_BOOL:
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        return DB_INTEGER;
    case OID_BYTEA:
        return DB_BLOB;
    default:
        return DB_TEXT;
    }
}

static int64_t be(const unsigned char *b, int n)
{
    uint64_t v = (b[0] & 0x80) ? UINT64_MAX : 0; /* sign extension */

    for (int i = 0; i < n; i++)
        v = (v << 8) | b[i];
    return (int64_t)v;
}

static int64_t pg_column_int64(struct db_stmt *st, int col)
{
    struct pg_stmt *s = PST(st);
    const unsigned char *b;
    int len;

    if (!valid(s, col) || PQgetisnull(s->res, s->row, col))
        return 0;
    b = (const unsigned char *)PQgetvalue(s->res, s->row, col);
    len = PQgetlength(s->res, s->row, col);
    switch (PQftype(s->res, col)) {
    case OID_BOOL:
        return len == 1 && b[0] != 0;
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
        return (len == 2 || len == 4 || len == 8) ? be(b, len) : 0;
    case OID_OID:
        return len == 4 ? (int64_t)(uint32_t)be(b, 4) & 0xffffffff : 0;
    case OID_BYTEA:
        return 0;
    default:
        return strtoll((const char *)b, NULL, 10);
    }
}

static const char *pg_column_text(struct db_stmt *st, int col)
{
    struct pg_stmt *s = PST(st);

    if (!valid(s, col) || PQgetisnull(s->res, s->row, col))
        return NULL;
    if (pg_column_type(st, col) == DB_INTEGER) {
        snprintf(s->num[col], PG_NUM_LEN, "%lld", (long long)pg_column_int64(st, col));
        return s->num[col];
    }
    /* libpq ends every value with a NUL, binary ones included. */
    return PQgetvalue(s->res, s->row, col);
}

static const void *pg_column_blob(struct db_stmt *st, int col)
{
    struct pg_stmt *s = PST(st);

    if (!valid(s, col) || PQgetisnull(s->res, s->row, col))
        return NULL;
    return PQgetvalue(s->res, s->row, col);
}

static size_t pg_column_bytes(struct db_stmt *st, int col)
{
    struct pg_stmt *s = PST(st);

    if (!valid(s, col) || PQgetisnull(s->res, s->row, col))
        return 0;
    if (pg_column_type(st, col) == DB_INTEGER)
        return strlen(pg_column_text(st, col));
    return (size_t)PQgetlength(s->res, s->row, col);
}

static int64_t pg_changes(struct db *db)
{
    return PG(db)->changes;
}

static int pg_in_transaction(struct db *db)
{
    /* Also a transaction lost with its connection: the caller's ROLLBACK ends it. */
    return in_tx(PG(db));
}

/* A publication whose lock went with a lost session does no further work (db.h). */
static int publication_lost(struct pg *p)
{
    if (!p->publish_lost)
        return 0;
    set_err(p, "the CRL publication lock was lost with the connection to the store");
    return 1;
}

static int pg_tx_failed(struct db *db)
{
    /* An error inside a savepoint is undone by ROLLBACK TO; only a lost transaction is final. */
    PGTransactionStatusType t = PQtransactionStatus(PG(db)->conn);

    return t == PQTRANS_IDLE || t == PQTRANS_UNKNOWN;
}

static const char *pg_errmsg(struct db *db)
{
    return PG(db)->err;
}

static int pg_sys_errno(struct db *db)
{
    (void)db;
    return 0;
}

static int pg_begin_write(struct db *db, int timeout_ms)
{
    struct pg *p = PG(db);
    char sql[256];
    int rc;

    if ((rc = ensure(p)) != DB_OK)
        return rc;
    if (publication_lost(p))
        return DB_GONE;
    snprintf(sql, sizeof(sql),
             "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = %d; "
             "SELECT pg_advisory_xact_lock(%d, %d)",
             timeout_ms > 0 ? timeout_ms : 5000, PG_LOCK_SPACE, PG_LOCK_WRITE);
    if ((rc = run(p, sql)) != DB_OK && PQtransactionStatus(p->conn) != PQTRANS_IDLE)
        PQclear(PQexec(p->conn, "ROLLBACK"));
    return rc;
}

static int pg_begin_snapshot(struct db *db)
{
    struct pg *p = PG(db);
    int rc;

    if ((rc = ensure(p)) != DB_OK)
        return rc;
    if (publication_lost(p))
        return DB_GONE;
    return run(p, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
}

static int pg_publish_lock(struct db *db, int timeout_ms)
{
    struct pg *p = PG(db);
    char sql[96];
    int waited = 0;

    /* Held while the session that took it lives: a lost connection released it. */
    if (p->publish_locked && PQstatus(p->conn) == CONNECTION_OK)
        return 1;
    p->publish_locked = 0;
    p->publish_lost = 0; /* a new publication */
    if (ensure(p) != DB_OK)
        return DB_GONE;
    snprintf(sql, sizeof(sql), "SELECT pg_try_advisory_lock(%d, %d)", PG_LOCK_SPACE,
             PG_LOCK_PUBLISH);
    for (;;) {
        PGresult *res = PQexec(p->conn, sql);
        int got;
        if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
            int rc = map_result(p, res);
            PQclear(res);
            return rc;
        }
        got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (got) {
            p->publish_locked = 1;
            return 1;
        }
        if (waited >= timeout_ms)
            return 0;
        struct timespec ten_ms = {0, 10 * 1000 * 1000};
        nanosleep(&ten_ms, NULL);
        waited += 10;
    }
}

static void pg_publish_unlock(struct db *db)
{
    struct pg *p = PG(db);
    char sql[96];

    p->publish_lost = 0;
    if (!p->publish_locked)
        return;
    p->publish_locked = 0;
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_unlock(%d, %d)", PG_LOCK_SPACE,
             PG_LOCK_PUBLISH);
    PQclear(PQexec(p->conn, sql));
}

static int pg_schema_version(struct db *db, int *out)
{
    struct pg *p = PG(db);
    PGresult *res;
    int rc = DB_OK;

    *out = 0;
    if ((rc = ensure(p)) != DB_OK)
        return rc;
    /* Two statements: naming a table that does not exist would abort a transaction. */
    res = PQexec(p->conn, "SELECT to_regclass('mqpki_schema') IS NOT NULL");
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = map_result(p, res);
        PQclear(res);
        return rc;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return DB_OK;
    }
    PQclear(res);
    res = PQexec(p->conn, "SELECT max(version) FROM mqpki_schema");
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = map_result(p, res);
    else if (!PQgetisnull(res, 0, 0))
        *out = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

static int pg_set_schema_version(struct db *db, int version)
{
    char sql[192];

    snprintf(sql, sizeof(sql),
             "CREATE TABLE IF NOT EXISTS mqpki_schema(version BIGINT NOT NULL); "
             "DELETE FROM mqpki_schema; INSERT INTO mqpki_schema(version) VALUES (%d)",
             version);
    return run(PG(db), sql);
}

static int channel_ok(const char *channel)
{
    size_t n = strlen(channel);

    if (n == 0 || n >= 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(channel[i] == '_' || (channel[i] >= 'a' && channel[i] <= 'z')))
            return 0;
    return 1;
}

static int pg_notify(struct db *db, const char *channel)
{
    char sql[96];

    if (!channel_ok(channel))
        return DB_ERROR;
    /* Delivered when (and only if) the transaction commits. */
    snprintf(sql, sizeof(sql), "NOTIFY %s", channel);
    return run(PG(db), sql);
}

static int pg_listen(struct db *db, const char *channel)
{
    struct pg *p = PG(db);
    char sql[96];

    if (!channel_ok(channel))
        return DB_ERROR;
    snprintf(sql, sizeof(sql), "LISTEN %s", channel);
    if (run(p, sql) != DB_OK)
        return DB_ERROR;
    snprintf(p->listening, sizeof(p->listening), "%s", channel);
    return 1;
}

static int drain(struct pg *p)
{
    PGnotify *n;
    int got = 0;

    while ((n = PQnotifies(p->conn)) != NULL) {
        got = 1;
        PQfreemem(n);
    }
    return got;
}

static int pg_wait(struct db *db, int timeout_ms)
{
    struct pg *p = PG(db);
    struct pollfd pfd;

    if (ensure(p) != DB_OK) {
        struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        return DB_GONE;
    }
    if (PQconsumeInput(p->conn) && drain(p))
        return 1;
    pfd.fd = PQsocket(p->conn);
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (pfd.fd < 0 || poll(&pfd, 1, timeout_ms) < 0)
        return 0;
    if (pfd.revents != 0 && !PQconsumeInput(p->conn)) {
        set_err(p, PQerrorMessage(p->conn));
        return DB_GONE;
    }
    return drain(p);
}

static const struct db_dialect pg_dialect = {
    .name = "postgresql",
    .json_text = "({})::json",
};

const struct db_ops db_pg_ops = {
    .dialect = &pg_dialect,
    .open = pg_open,
    .close = pg_close,
    .exec = pg_exec,
    .prepare = pg_prepare,
    .finalize = pg_finalize,
    .reset = pg_reset,
    .bind_int64 = pg_bind_int64,
    .bind_text = pg_bind_text,
    .bind_blob = pg_bind_blob,
    .bind_null = pg_bind_null,
    .step = pg_step,
    .column_type = pg_column_type,
    .column_int64 = pg_column_int64,
    .column_text = pg_column_text,
    .column_blob = pg_column_blob,
    .column_bytes = pg_column_bytes,
    .changes = pg_changes,
    .in_transaction = pg_in_transaction,
    .tx_failed = pg_tx_failed,
    .errmsg = pg_errmsg,
    .sys_errno = pg_sys_errno,
    .begin_write = pg_begin_write,
    .begin_snapshot = pg_begin_snapshot,
    .publish_lock = pg_publish_lock,
    .publish_unlock = pg_publish_unlock,
    .schema_version = pg_schema_version,
    .set_schema_version = pg_set_schema_version,
    .notify = pg_notify,
    .listen = pg_listen,
    .wait = pg_wait,
};
