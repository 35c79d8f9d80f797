/*
 * inventory/posture.c: read-only aggregates and findings over the whole store for the posture
 * checks, the CSF report and the dashboard (inventory.h, "Posture"). Plain SQL both store back
 * ends accept (CASE, COUNT(DISTINCT), LOWER, integer division; sums cast to BIGINT, which
 * PostgreSQL would otherwise give as numeric).
 */
#include "inventory_int.h"

#include <stdlib.h>
#include <string.h>

/* A live certificate: valid or superseded (still usable until it expires), not expired. */
#define LIVE "state IN ('valid', 'superseded') AND not_after >= ?1"

/*
 * The findings, one row each (tables over branches). Parameters: ?1 now, ?2 a, ?3 b; a query
 * uses a prefix of them. Columns: subject, related, value.
 */
static const struct {
    const char *what;
    const char *sql;
} findings[] = {
    [INV_FIND_EXPIRING] = {"expiring certificates",
                           "SELECT serial, asset_id, not_after FROM certs WHERE " LIVE
                           " AND profile <> 'service' AND not_after >= ?2 AND not_after <= ?3 "
                           "ORDER BY not_after, serial"},
    [INV_FIND_OLD] = {"old certificates",
                      "SELECT serial, asset_id, not_before FROM certs WHERE " LIVE
                      " AND profile <> 'service' AND not_before < ?2 ORDER BY not_before, serial"},
    [INV_FIND_SHARED_KEY] = {"shared keys",
                             "SELECT key_fp, '', COUNT(DISTINCT asset_id) FROM certs "
                             "WHERE CAST(?1 AS BIGINT) IS NOT NULL GROUP BY key_fp "
                             "HAVING COUNT(DISTINCT asset_id) > 1 ORDER BY key_fp"},
    [INV_FIND_ID_CONFLICT] =
        {"conflicting ids",
         "SELECT LOWER(id), '', COUNT(*) FROM assets WHERE CAST(?1 AS BIGINT) IS NOT NULL "
         "GROUP BY LOWER(id) HAVING COUNT(*) > 1 ORDER BY LOWER(id)"},
    /* The asset was left without a live certificate (revoked, on hold or decommissioned: the
     * lifecycle moves it there with its last one), so a connection seen after the revocation
     * can only have used a revoked certificate. The revoked-certificate index drives the scan;
     * a correlated subquery over certificates would be quadratic. */
    [INV_FIND_REVOKED_SEEN] = {"revoked certificates seen",
                               "SELECT c.serial, c.asset_id, a.last_seen FROM certs c "
                               "JOIN assets a ON a.id = c.asset_id WHERE c.state = 'revoked' "
                               "AND a.last_seen > c.revoked_at + ?2 AND a.state IN ('revoked', "
                               "'suspended', 'decommissioned') AND CAST(?1 AS BIGINT) IS NOT NULL "
                               "ORDER BY c.serial"},
};
#define N_FINDINGS ((int)(sizeof(findings) / sizeof(findings[0])))

/* Binds ?1.. with the values given; a query may use only a prefix of them, and the back end
 * refuses the indexes beyond (ignored here). */
static void bind_params(struct db_stmt *st, const int64_t *v, int n)
{
    for (int i = 0; i < n; i++)
        (void)db_bind_int64(st, i + 1, v[i]);
}

/* Runs a one-row query of integer columns into out[0..n). */
static int row_ints(struct inventory *inv, const char *sql, const int64_t *params, int n_params,
                    int64_t *out, int n, const char *what)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    bind_params(st, params, n_params);
    if ((src = db_step(st)) == DB_ROW) {
        for (int i = 0; i < n; i++)
            out[i] = db_column_int64(st, i);
    } else if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, what);
    }
    db_finalize(st);
    return rc;
}

static int stats(struct inventory *inv, int64_t now, int64_t silent_before,
                 struct inventory_posture *out)
{
    const int64_t p[] = {now, silent_before};
    struct db_stmt *st = NULL;
    int64_t v[6] = {0};
    int rc, src;

    if ((rc = inv_prepare(inv, "SELECT state, kind, COUNT(*) FROM assets GROUP BY state, kind",
                          &st)) != MQPKI_OK)
        return rc;
    while ((src = db_step(st)) == DB_ROW) {
        int s = inventory_state_parse((const char *)db_column_text(st, 0));
        int k = inventory_kind_parse((const char *)db_column_text(st, 1));
        int64_t n = db_column_int64(st, 2);
        out->assets += n;
        if (s >= 0)
            out->by_state[s] += n;
        if (k >= 0)
            out->by_kind[k] += n;
    }
    db_finalize(st);
    if (src != DB_DONE)
        return inv_db_fail(inv, src, "asset counts");
    if ((rc = row_ints(inv,
                       "SELECT COUNT(*), "
                       "CAST(SUM(CASE WHEN model <> '' THEN 1 ELSE 0 END) AS BIGINT), "
                       "CAST(SUM(CASE WHEN hw_serial <> '' THEN 1 ELSE 0 END) AS BIGINT), "
                       "CAST(SUM(CASE WHEN firmware <> '' THEN 1 ELSE 0 END) AS BIGINT), "
                       "CAST(SUM(CASE WHEN location <> '' THEN 1 ELSE 0 END) AS BIGINT), "
                       "CAST(SUM(CASE WHEN last_seen > 0 THEN 1 ELSE 0 END) AS BIGINT) "
                       "FROM assets WHERE state NOT IN ('revoked', 'decommissioned')",
                       p, 0, v, 6, "asset fields")) != MQPKI_OK)
        return rc;
    out->in_service = v[0];
    out->with_model = v[1];
    out->with_hw_serial = v[2];
    out->with_firmware = v[3];
    out->with_location = v[4];
    out->seen = v[5];
    if ((rc = row_ints(inv,
                       /* A join, not a correlated EXISTS: without statistics the planner would
                        * walk the live-certificate index once per asset. */
                       "SELECT COUNT(DISTINCT c.asset_id) FROM certs c JOIN assets a "
                       "ON a.id = c.asset_id WHERE c.state IN ('valid', 'superseded') "
                       "AND c.not_after >= ?1 AND a.state NOT IN ('revoked', 'decommissioned')",
                       p, 1, &out->with_valid_cert, 1, "assets with a certificate")) != MQPKI_OK)
        return rc;
    if ((rc = row_ints(inv,
                       "SELECT COUNT(*) FROM assets WHERE state = 'active' AND last_seen < ?2 "
                       "AND CAST(?1 AS BIGINT) IS NOT NULL",
                       p, 2, &out->silent, 1, "silent assets")) != MQPKI_OK)
        return rc;
    if ((rc = row_ints(
             inv,
             "SELECT "
             "CAST(SUM(CASE WHEN state IN ('valid', 'superseded') AND not_after >= ?1 "
             "THEN 1 ELSE 0 END) AS BIGINT), "
             "CAST(SUM(CASE WHEN state = 'revoked' AND COALESCE(reason, -1) <> 6 "
             "THEN 1 ELSE 0 END) AS BIGINT), "
             "CAST(SUM(CASE WHEN state = 'revoked' AND reason = 6 THEN 1 ELSE 0 END) AS BIGINT), "
             "CAST(SUM(CASE WHEN state IN ('valid', 'superseded') AND not_after < ?1 "
             "THEN 1 ELSE 0 END) AS BIGINT) FROM certs",
             p, 1, v, 4, "certificate counts")) != MQPKI_OK)
        return rc;
    out->certs_valid = v[0];
    out->certs_revoked = v[1];
    out->certs_held = v[2];
    out->certs_expired = v[3];
    return MQPKI_OK;
}

int inventory_posture_stats(struct inventory *inv, int64_t now, int64_t silent_before,
                            struct inventory_posture *out)
{
    int rc;

    memset(out, 0, sizeof(*out));
    if ((rc = inventory_snapshot_begin(inv)) != MQPKI_OK)
        return rc;
    rc = stats(inv, now, silent_before, out);
    inventory_snapshot_end(inv);
    return rc;
}

int inventory_posture_counts(struct inventory *inv, int64_t now, struct inventory_posture *out)
{
    static const struct {
        const char *sql;
        int by; /* 0: state, 1: kind */
    } groups[] = {
        {"SELECT state, COUNT(*) FROM assets GROUP BY state", 0},
        {"SELECT kind, COUNT(*) FROM assets GROUP BY kind", 1},
    };
    const int64_t p[] = {now};
    struct db_stmt *st = NULL;
    int64_t v[1] = {0};
    int rc, src = DB_DONE;

    memset(out, 0, sizeof(*out));
    if ((rc = inventory_snapshot_begin(inv)) != MQPKI_OK)
        return rc;
    /* Every query here reads an index alone (assets_state, assets_kind, certs_state). */
    for (size_t g = 0; g < 2 && rc == MQPKI_OK; g++) {
        if ((rc = inv_prepare(inv, groups[g].sql, &st)) != MQPKI_OK)
            break;
        while ((src = db_step(st)) == DB_ROW) {
            const char *name = (const char *)db_column_text(st, 0);
            int i = groups[g].by ? inventory_kind_parse(name) : inventory_state_parse(name);
            int64_t n = db_column_int64(st, 1);
            if (g == 0)
                out->assets += n;
            if (i >= 0 && groups[g].by)
                out->by_kind[i] += n;
            else if (i >= 0)
                out->by_state[i] += n;
        }
        db_finalize(st);
        st = NULL;
        if (src != DB_DONE)
            rc = inv_db_fail(inv, src, "asset counts");
    }
    if (rc == MQPKI_OK &&
        (rc = row_ints(inv,
                       "SELECT COUNT(*) FROM certs WHERE state IN ('valid', 'superseded') "
                       "AND not_after >= ?1",
                       p, 1, v, 1, "live certificates")) == MQPKI_OK)
        out->certs_valid = v[0];
    if (rc == MQPKI_OK && (rc = row_ints(inv, "SELECT COUNT(*) FROM certs WHERE state = 'revoked'",
                                         p, 0, v, 1, "revoked certificates")) == MQPKI_OK)
        out->certs_revoked = v[0];
    if (rc == MQPKI_OK &&
        (rc = row_ints(inv,
                       "SELECT COUNT(*) FROM certs WHERE state IN ('valid', 'superseded') "
                       "AND not_after < ?1",
                       p, 1, v, 1, "expired certificates")) == MQPKI_OK)
        out->certs_expired = v[0];
    inventory_snapshot_end(inv);
    return rc;
}

int inventory_posture_find(struct inventory *inv, enum inventory_finding which, int64_t now,
                           int64_t a, int64_t b, inventory_finding_cb cb, void *ctx, int64_t *total)
{
    const int64_t p[] = {now, a, b};
    struct db_stmt *st = NULL;
    int64_t n = 0;
    int rc, src, taking = 1;

    if (total != NULL)
        *total = 0;
    if ((int)which < 0 || (int)which >= N_FINDINGS || findings[which].sql == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "unknown posture finding %d", (int)which);
    if ((rc = inv_prepare(inv, findings[which].sql, &st)) != MQPKI_OK)
        return rc;
    bind_params(st, p, 3);
    while ((src = db_step(st)) == DB_ROW) {
        n++;
        if (taking && cb != NULL) {
            const char *s = (const char *)db_column_text(st, 0);
            const char *r = (const char *)db_column_text(st, 1);
            if (cb(s != NULL ? s : "", r != NULL ? r : "", db_column_int64(st, 2), ctx) != 0)
                taking = 0;
        }
        if (!taking && total == NULL)
            break;
    }
    if (src != DB_ROW && src != DB_DONE)
        rc = inv_db_fail(inv, src, findings[which].what);
    db_finalize(st);
    if (total != NULL)
        *total = n;
    return rc;
}

/* Day counts of one query (day, count) into a sorted list. */
struct daylist {
    int64_t *day, *count;
    size_t n;
};

static int day_counts(struct inventory *inv, const char *sql, int64_t from, int64_t to,
                      struct daylist *out)
{
    const int64_t p[] = {from, to};
    struct db_stmt *st = NULL;
    int rc, src;

    memset(out, 0, sizeof(*out));
    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    bind_params(st, p, 2);
    while ((src = db_step(st)) == DB_ROW) {
        if (out->n % 32 == 0) {
            int64_t *d = realloc(out->day, (out->n + 32) * sizeof(*d));
            if (d != NULL)
                out->day = d;
            int64_t *c = realloc(out->count, (out->n + 32) * sizeof(*c));
            if (c != NULL)
                out->count = c;
            if (d == NULL || c == NULL) {
                rc = MQPKI_ERR_NOMEM;
                break;
            }
        }
        out->day[out->n] = db_column_int64(st, 0);
        out->count[out->n++] = db_column_int64(st, 1);
    }
    if (rc == MQPKI_OK && src != DB_DONE)
        rc = inv_db_fail(inv, src, "counts per day");
    db_finalize(st);
    return rc;
}

int inventory_posture_days(struct inventory *inv, int64_t from, int64_t to, inventory_day_cb cb,
                           void *ctx)
{
    struct daylist is = {0}, rv = {0};
    size_t i = 0, j = 0;
    int rc;

    if ((rc = inventory_snapshot_begin(inv)) != MQPKI_OK)
        return rc;
    if ((rc = day_counts(inv,
                         "SELECT (not_before / 86400) * 86400 AS d, COUNT(*) FROM certs "
                         "WHERE not_before >= ?1 AND not_before < ?2 GROUP BY d ORDER BY d",
                         from, to, &is)) != MQPKI_OK ||
        (rc = day_counts(inv,
                         "SELECT (revoked_at / 86400) * 86400 AS d, COUNT(*) FROM certs "
                         "WHERE state = 'revoked' AND revoked_at >= ?1 AND revoked_at < ?2 "
                         "GROUP BY d ORDER BY d",
                         from, to, &rv)) != MQPKI_OK)
        goto out;
    while (i < is.n || j < rv.n) {
        int64_t d, ni = 0, nr = 0;
        if (j >= rv.n || (i < is.n && is.day[i] <= rv.day[j]))
            d = is.day[i];
        else
            d = rv.day[j];
        if (i < is.n && is.day[i] == d)
            ni = is.count[i++];
        if (j < rv.n && rv.day[j] == d)
            nr = rv.count[j++];
        if (cb(d, ni, nr, ctx) != 0)
            break;
    }
out:
    inventory_snapshot_end(inv);
    free(is.day);
    free(is.count);
    free(rv.day);
    free(rv.count);
    return rc;
}

int inventory_posture_expiry(struct inventory *inv, int64_t now, int64_t width, int n,
                             int64_t *counts)
{
    const int64_t p[] = {now, width};
    struct db_stmt *st = NULL;
    int rc, src;

    if (width <= 0 || n <= 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "expiry buckets: width and count must be positive");
    memset(counts, 0, (size_t)n * sizeof(*counts));
    if ((rc = inv_prepare(inv,
                          "SELECT (not_after - ?1) / ?2 AS b, COUNT(*) FROM certs WHERE " LIVE
                          " GROUP BY b",
                          &st)) != MQPKI_OK)
        return rc;
    bind_params(st, p, 2);
    while ((src = db_step(st)) == DB_ROW) {
        int64_t b = db_column_int64(st, 0);
        counts[b < 0 ? 0 : b >= n ? n - 1 : b] += db_column_int64(st, 1);
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "expiry buckets");
    db_finalize(st);
    return rc;
}
