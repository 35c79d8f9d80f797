/*
 * inventory/backup.c: an online copy of the store (SQLite's backup API: one read snapshot, so
 * the copy is consistent while other processes write) and the CRL number floor a restored store
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
    sqlite3 *out = NULL;
    sqlite3_backup *b = NULL;
    int rc = MQPKI_OK, src, fd;

    if (inv == NULL || dest == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "inventory_backup: store and destination required");
    /* Created here, 0600 and new: the copy holds everything the store does. */
    if ((fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return mqpki_fail_errno(errno, dest);
    close(fd);
    src = sqlite3_open_v2(dest, &out, SQLITE_OPEN_READWRITE, NULL);
    if (src != SQLITE_OK) {
        rc = mqpki_fail(MQPKI_ERR_STORE, "%s: %s", dest, out ? sqlite3_errmsg(out) : "cannot open");
        goto out;
    }
    if ((b = sqlite3_backup_init(out, "main", inv->db, "main")) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_STORE, "backup of %s: %s", inv->path, sqlite3_errmsg(out));
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
        rc = mqpki_fail(MQPKI_ERR_STORE, "backup of %s: %s", inv->path, sqlite3_errstr(src));
        goto out;
    }
out:
    if (b != NULL && (src = sqlite3_backup_finish(b)) != SQLITE_OK && rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_STORE, "backup of %s: %s", inv->path, sqlite3_errstr(src));
    if (out != NULL && sqlite3_close(out) != SQLITE_OK && rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_STORE, "%s: cannot close", dest);
    if (rc != MQPKI_OK)
        unlink(dest);
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
    sqlite3_stmt *st = NULL;
    int rc = MQPKI_OK, src;

    *out = 0;
    if ((src = sqlite3_prepare_v2(inv->db, SQL_CRL_HIGH, -1, &st, NULL)) != SQLITE_OK) {
        rc = inv_db_fail(inv, src, "highest CRL number");
        goto out;
    }
    if ((src = sqlite3_step(st)) != SQLITE_ROW) {
        rc = inv_db_fail(inv, src, "highest CRL number");
        goto out;
    }
    *out = sqlite3_column_int64(st, 0);
out:
    sqlite3_finalize(st);
    return rc;
}

int inventory_crl_number_raise(struct inventory *inv, int64_t floor)
{
    struct inv_tx tx = {0};
    sqlite3_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    src = sqlite3_prepare_v2(
        inv->db, "UPDATE counters SET value = ?1 WHERE name = 'crl_number' AND value < ?1", -1, &st,
        NULL);
    if (src != SQLITE_OK || (src = sqlite3_bind_int64(st, 1, floor)) != SQLITE_OK ||
        (src = sqlite3_step(st)) != SQLITE_DONE)
        rc = inv_db_fail(inv, src, "CRL number floor");
    sqlite3_finalize(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}
