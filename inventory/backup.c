/*
 * inventory/backup.c: an online copy of the store (SQLite's backup API, db_sqlite_backup: one
 * read snapshot, so the copy is consistent while other processes write) and the CRL number floor a restored store
 * continues above (docs/operations.md, "Restore").
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "inventory_int.h"

int inventory_backup(struct inventory *inv, const char *dest)
{
    char err[256] = "";
    int rc = MQPKI_OK, fd;

    if (inv == NULL || dest == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_backup: store and destination required");
    /* A PostgreSQL store is the server's to back up (pg_dump, base backups: docs/ha.md). */
    if (inv->ops != &db_sqlite_ops)
        return mqpki_fail(MQPKI_ERR_STATE,
                          "%s: a PostgreSQL store is backed up with the server's own tools "
                          "(pg_dump or base backups; docs/ha.md), not by mqpki backup",
                          inv->path);
    /* Created here, 0600 and new: the copy holds everything the store does. */
    if ((fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return mqpki_fail_errno(errno, dest);
    close(fd);
    if (db_sqlite_backup(inv->db, dest, err, sizeof(err)) != DB_OK) {
        rc = mqpki_fail(MQPKI_ERR_STORE, "backup of %s: %s", inv->path, err);
        unlink(dest);
    }
    return rc;
}

/* The highest CRL number the store knows of: reserved, recorded, or held by a broker. */
#define SQL_CRL_HIGH                                                                               \
    "SELECT MAX(v) FROM ("                                                                         \
    " SELECT value AS v FROM counters WHERE name = 'crl_number'"                                   \
    " UNION ALL SELECT MAX(number) FROM crls"                                                      \
    " UNION ALL SELECT MAX(full_number) FROM broker_crls"                                          \
    " UNION ALL SELECT MAX(delta_number) FROM broker_crls) AS t"

int inventory_crl_number_high(struct inventory *inv, int64_t *out)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *out = 0;
    if ((rc = inv_prepare(inv, SQL_CRL_HIGH, &st)) != MQPKI_OK)
        return rc;
    if ((src = db_step(st)) != DB_ROW)
        rc = inv_db_fail(inv, src, "highest CRL number");
    else
        *out = db_column_int64(st, 0);
    db_finalize(st);
    return rc;
}

int inventory_crl_number_raise(struct inventory *inv, int64_t floor)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv,
                          "UPDATE counters SET value = ?1 WHERE name = 'crl_number' AND value < ?1",
                          &st)) == MQPKI_OK) {
        db_bind_int64(st, 1, floor);
        if ((src = db_step(st)) != DB_DONE)
            rc = inv_db_fail(inv, src, "CRL number floor");
    }
    db_finalize(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}
