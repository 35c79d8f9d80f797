/*
 * inventory/campaign.c: re-issue campaigns (docs/operations.md, "Campaigns"): which assets were
 * asked to renew, with which certificate, and where each stands. "renewed" is read from the
 * certificates themselves: the campaign's certificate was superseded by a re-enrollment.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "inventory_int.h"

/* One statement with int64/text bindings (?1.. in order; a NULL text binds NULL), stepped to
 * the end; a first column of a returned row (RETURNING id) into *first. */
static int exec_bound(struct inventory *inv, const char *sql, const char *what, int n_int,
                      const int64_t *ints, int n_text, const char *const *texts, int64_t *changes,
                      int64_t *first)
{
    struct db_stmt *st = NULL;
    int rc, src, k = 1;

    if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
        return rc;
    for (int i = 0; i < n_int; i++)
        db_bind_int64(st, k++, ints[i]);
    for (int i = 0; i < n_text; i++) {
        if (texts[i] != NULL)
            rc = inv_bind_text(inv, st, k++, texts[i]);
        else
            db_bind_null(st, k++);
        if (rc != MQPKI_OK)
            goto out;
    }
    while ((src = db_step(st)) == DB_ROW)
        if (first != NULL)
            *first = db_column_int64(st, 0);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, what);
        goto out;
    }
    if (changes != NULL)
        *changes = inv->db->ops->changes(inv->db);
out:
    db_finalize(st);
    return rc;
}

int inventory_campaign_create(struct inventory *inv, const char *selector, int64_t silent_after,
                              const struct inventory_campaign_target *targets, size_t n,
                              int64_t *id)
{
    struct inv_tx tx = {0};
    int64_t ints[2];
    int rc;

    *id = 0;
    if (selector == NULL || (rc = inv_check_text(selector, 4096, "campaign selector")) != MQPKI_OK)
        return selector == NULL ? mqpki_fail(MQPKI_ERR_INVALID, "campaign: no selector") : rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    ints[0] = (int64_t)time(NULL);
    ints[1] = silent_after;
    {
        const char *t[] = {selector};
        rc = exec_bound(inv,
                        "INSERT INTO campaigns(selector, created_at, silent_after) "
                        "VALUES (?3, ?1, ?2) RETURNING id",
                        "campaign", 2, ints, 1, t, NULL, id);
    }
    for (size_t i = 0; rc == MQPKI_OK && i < n; i++) {
        const char *t[] = {targets[i].asset, targets[i].old_serial};
        rc = exec_bound(inv,
                        "INSERT INTO campaign_assets(campaign, asset, old_serial, state) "
                        "VALUES (?1, ?2, ?3, 'pending')",
                        "campaign asset", 1, id, 2, t, NULL, NULL);
    }
    if (rc == MQPKI_OK) {
        char subject[32];
        snprintf(subject, sizeof(subject), "campaign %lld", (long long)*id);
        rc = inv_audit(inv, "cli", "campaign.create", subject,
                       json_pack("{s:s, s:I}", "selector", selector, "assets", (json_int_t)n));
    }
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_campaign_mark(struct inventory *inv, int64_t id, const char *asset, int sent)
{
    int64_t ints[2] = {id, (int64_t)time(NULL)};
    const char *t[] = {asset};

    return exec_bound(inv,
                      sent ? "UPDATE campaign_assets SET state = 'sent', sent_at = ?2 "
                             "WHERE campaign = ?1 AND asset = ?3"
                           : "UPDATE campaign_assets SET state = 'failed', sent_at = ?2 "
                             "WHERE campaign = ?1 AND asset = ?3",
                      "campaign state", 2, ints, 1, t, NULL, NULL);
}

int inventory_campaign_latest(struct inventory *inv, int64_t *id)
{
    struct db_stmt *st = NULL;
    int rc, src;

    *id = 0;
    if ((rc = inv_prepare(inv, "SELECT MAX(id) FROM campaigns", &st)) != MQPKI_OK)
        return rc;
    if ((src = db_step(st)) != DB_ROW)
        rc = inv_db_fail(inv, src, "latest campaign");
    else if (db_column_type(st, 0) == DB_NULL)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no campaign yet (mqpki campaign renew)");
    else
        *id = db_column_int64(st, 0);
    db_finalize(st);
    return rc;
}

int inventory_campaign_refresh(struct inventory *inv, int64_t id)
{
    struct inv_tx tx = {0};
    int64_t ints[2] = {id, (int64_t)time(NULL)};
    int rc;

    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    /* Renewed: the certificate the campaign asked to replace was superseded by a new one. */
    rc = exec_bound(inv,
                    "UPDATE campaign_assets SET state = 'renewed' WHERE campaign = ?1"
                    " AND state IN ('sent', 'silent', 'failed') AND EXISTS (SELECT 1 FROM certs c"
                    "  WHERE c.serial = campaign_assets.old_serial"
                    "  AND c.superseded_by IS NOT NULL AND c.superseded_by <> '')",
                    "campaign refresh", 1, ints, 0, NULL, NULL, NULL);
    /* Silent: sent longer ago than the campaign's patience, and not renewed. */
    if (rc == MQPKI_OK)
        rc = exec_bound(inv,
                        "UPDATE campaign_assets SET state = 'silent' WHERE campaign = ?1"
                        " AND state = 'sent' AND sent_at + (SELECT silent_after FROM campaigns"
                        "  WHERE id = ?1) < ?2",
                        "campaign refresh", 2, ints, 0, NULL, NULL, NULL);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_campaign_get(struct inventory *inv, int64_t id, struct inventory_campaign *out,
                           inventory_campaign_cb cb, void *ctx)
{
    struct db_stmt *st = NULL;
    int rc, src;

    memset(out, 0, sizeof(*out));
    if ((rc = inv_prepare(inv,
                          "SELECT id, selector, created_at, silent_after, finished_at "
                          "FROM campaigns WHERE id = ?1",
                          &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, id);
    if ((src = db_step(st)) != DB_ROW) {
        rc = src == DB_DONE ? mqpki_fail(MQPKI_ERR_NOT_FOUND, "no campaign %lld", (long long)id)
                            : inv_db_fail(inv, src, "campaign");
        goto out;
    }
    out->id = db_column_int64(st, 0);
    inv_col_text(st, 1, out->selector, sizeof(out->selector));
    out->created_at = db_column_int64(st, 2);
    out->silent_after = db_column_int64(st, 3);
    out->finished_at = db_column_int64(st, 4);
    db_finalize(st);
    st = NULL;
    if ((rc = inv_prepare(inv,
                          "SELECT asset, old_serial, state, sent_at FROM campaign_assets "
                          "WHERE campaign = ?1 ORDER BY asset",
                          &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, id);
    while ((src = db_step(st)) == DB_ROW) {
        struct inventory_campaign_asset a;
        char state[16];
        static const char *const names[] = {"pending", "sent", "renewed", "failed", "silent"};

        memset(&a, 0, sizeof(a));
        inv_col_text(st, 0, a.asset, sizeof(a.asset));
        inv_col_text(st, 1, a.old_serial, sizeof(a.old_serial));
        inv_col_text(st, 2, state, sizeof(state));
        for (int i = 0; i < INV_CAMPAIGN_STATES; i++)
            if (strcmp(state, names[i]) == 0)
                a.state = i;
        a.sent_at = db_column_int64(st, 3);
        out->count[a.state]++;
        out->total++;
        if (cb != NULL && (rc = cb(&a, ctx)) != MQPKI_OK)
            goto out;
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "campaign assets");
out:
    db_finalize(st);
    return rc;
}

int inventory_campaign_finish(struct inventory *inv, int64_t id)
{
    int64_t ints[2] = {id, (int64_t)time(NULL)};

    return exec_bound(inv, "UPDATE campaigns SET finished_at = ?2 WHERE id = ?1", "campaign finish",
                      2, ints, 0, NULL, NULL, NULL);
}

const char *inventory_campaign_state_name(int state)
{
    static const char *const names[] = {"pending", "sent", "renewed", "failed", "silent"};
    return state >= 0 && state < INV_CAMPAIGN_STATES ? names[state] : "?";
}
