/*
 * inventory/events.c: detect -> respond (docs/detect.md). The brokers' security events with a
 * bounded retention, the detectors' alerts and the assets under quarantine. Plain SQL both
 * store back ends accept (db.h), one statement per call; new rows' ids come from RETURNING.
 */
#include "inventory_int.h"

#include <stdio.h>
#include <string.h>

#define EVENT_DETAIL_MAX 4096
#define EVIDENCE_MAX     16384

static int step_done(struct inventory *inv, struct db_stmt *st, const char *what)
{
    int src = db_step(st);

    return src == DB_DONE ? MQPKI_OK : inv_db_fail(inv, src, what);
}

/* An INSERT ... [ON CONFLICT DO NOTHING] RETURNING id run to its end: the new row's id, 0
 * when it conflicted. */
static int step_id_or_none(struct inventory *inv, struct db_stmt *st, const char *what, int64_t *id)
{
    int src = db_step(st);

    *id = 0;
    if (src == DB_DONE)
        return MQPKI_OK;
    if (src != DB_ROW)
        return inv_db_fail(inv, src, what);
    *id = db_column_int64(st, 0);
    return step_done(inv, st, what);
}

/* NULL for "" so that a missing asset or address is NULL in the store. */
static int bind_opt(struct inventory *inv, struct db_stmt *st, int idx, const char *s)
{
    if (s == NULL || s[0] == '\0')
        return db_bind_null(st, idx) == DB_OK ? MQPKI_OK : inv_db_fail(inv, DB_ERROR, "bind");
    return inv_bind_text(inv, st, idx, s);
}

int inventory_events_add(struct inventory *inv, const struct inventory_broker_event *e, int64_t *id)
{
    struct db_stmt *st = NULL;
    int64_t new_id = 0;
    int rc;

    if (inv == NULL || e == NULL || e->detail == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "event: nothing to store");
    if ((rc = inv_check_text(e->detail, EVENT_DETAIL_MAX + 1, "event detail")) != MQPKI_OK ||
        (rc = inv_check_text(e->type, sizeof(e->type), "event type")) != MQPKI_OK ||
        (rc = inv_check_text(e->address, sizeof(e->address), "event address")) != MQPKI_OK)
        return rc;
    if (!proto_asset_id_valid(e->broker) ||
        (e->asset[0] != '\0' && !proto_asset_id_valid(e->asset)))
        return mqpki_fail(MQPKI_ERR_INVALID, "event: bad broker or asset name");
    if ((rc = inv_check_text(e->eid, sizeof(e->eid), "event id")) != MQPKI_OK)
        return rc;
    /* An event another replica stored already (same broker and id) is not stored again. */
    if ((rc = inv_stmt(inv, SQL_EVENT_ADD, &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, e->time);
    if ((rc = inv_bind_text(inv, st, 2, e->broker)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, e->type)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 4, e->asset)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 5, e->address)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, e->detail)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 7, e->eid)) != MQPKI_OK)
        goto out;
    if ((rc = step_id_or_none(inv, st, "event add", &new_id)) == MQPKI_OK && id != NULL)
        *id = new_id;
out:
    inv_stmt_done(st);
    return rc;
}

int inventory_events_prune(struct inventory *inv, int64_t max_rows, int64_t min_time,
                           int64_t *deleted)
{
    struct db_stmt *st = NULL;
    int64_t n = 0;
    int rc;

    if (deleted != NULL)
        *deleted = 0;
    if ((rc = inv_prepare(inv, "DELETE FROM events WHERE time < ?1", &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, min_time);
    if ((rc = step_done(inv, st, "event prune")) != MQPKI_OK)
        goto out;
    n += inv->db->ops->changes(inv->db);
    db_finalize(st);
    st = NULL;
    /* The newest max_rows stay: everything below the max_rows-th newest id goes. */
    if ((rc = inv_prepare(inv,
                          "DELETE FROM events WHERE id < (SELECT id FROM events ORDER BY id DESC "
                          "LIMIT 1 OFFSET ?1)",
                          &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, max_rows > 0 ? max_rows - 1 : 0);
    if ((rc = step_done(inv, st, "event prune")) != MQPKI_OK)
        goto out;
    n += inv->db->ops->changes(inv->db);
    if (deleted != NULL)
        *deleted = n;
out:
    db_finalize(st);
    return rc;
}

int inventory_events_list(struct inventory *inv, const char *asset, int64_t since, int64_t after_id,
                          int64_t limit, inventory_broker_event_cb cb, void *ctx)
{
    struct inventory_broker_event e;
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(
             inv,
             "SELECT id, time, broker, type, asset, address, detail FROM events "
             "WHERE id > ?1 AND time >= ?2 AND (CAST(?3 AS TEXT) IS NULL OR asset = ?3) "
             "ORDER BY id LIMIT ?4",
             &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, after_id);
    db_bind_int64(st, 2, since);
    if ((rc = bind_opt(inv, st, 3, asset)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 4, limit > 0 ? limit : INT64_MAX);
    while ((src = db_step(st)) == DB_ROW) {
        memset(&e, 0, sizeof(e));
        e.id = db_column_int64(st, 0);
        e.time = db_column_int64(st, 1);
        inv_col_text(st, 2, e.broker, sizeof(e.broker));
        inv_col_text(st, 3, e.type, sizeof(e.type));
        inv_col_text(st, 4, e.asset, sizeof(e.asset));
        inv_col_text(st, 5, e.address, sizeof(e.address));
        e.detail = (const char *)db_column_text(st, 6);
        if (e.detail == NULL)
            e.detail = "{}";
        if (cb(&e, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "event list");
out:
    db_finalize(st);
    return rc;
}

int inventory_alert_add(struct inventory *inv, const struct inventory_alert *a, const char *actor,
                        int64_t *id)
{
    struct inv_tx tx;
    struct db_stmt *st = NULL;
    json_t *evidence = NULL;
    int64_t new_id = 0;
    int rc, started = 0;

    if (inv == NULL || a == NULL || a->evidence == NULL || actor == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "alert: incomplete");
    if ((rc = inv_check_text(a->evidence, EVIDENCE_MAX, "alert evidence")) != MQPKI_OK ||
        (rc = inv_check_text(a->outcome, sizeof(a->outcome), "alert outcome")) != MQPKI_OK ||
        (rc = inv_check_text(a->address, sizeof(a->address), "alert address")) != MQPKI_OK)
        return rc;
    if ((evidence = json_loads(a->evidence, 0, NULL)) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "alert: evidence is not JSON");
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        goto out;
    started = 1;
    /* An alert another replica raised for the same cause is not raised again: *id 0. */
    if ((rc = inv_prepare(inv,
                          "INSERT INTO alerts(time, rule, asset, address, broker, response, "
                          "outcome, evidence, state, cause) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, "
                          "?8, 'open', ?9) "
                          "ON CONFLICT (cause) WHERE cause IS NOT NULL DO NOTHING RETURNING id",
                          &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, a->time);
    if ((rc = inv_bind_text(inv, st, 2, a->rule)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 3, a->asset)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 4, a->address)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 5, a->broker)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, a->response)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 7, a->outcome)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 8, a->evidence)) != MQPKI_OK ||
        (rc = bind_opt(inv, st, 9, a->cause)) != MQPKI_OK ||
        (rc = step_id_or_none(inv, st, "alert add", &new_id)) != MQPKI_OK)
        goto out;
    if (id != NULL)
        *id = new_id;
    if (new_id == 0)
        goto out;
    rc = inv_audit(inv, actor, "detect.alert", a->asset[0] != '\0' ? a->asset : a->address,
                   json_pack("{s:I,s:s,s:s,s:s,s:O}", "alert", (json_int_t)new_id, "rule", a->rule,
                             "response", a->response, "outcome", a->outcome, "evidence", evidence));
out:
    db_finalize(st);
    json_decref(evidence);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    return rc;
}

int inventory_alert_outcome(struct inventory *inv, int64_t id, const char *outcome,
                            const char *actor)
{
    struct inv_tx tx;
    struct db_stmt *st = NULL;
    char subject[32];
    int rc, started = 0;

    if (inv == NULL || outcome == NULL || actor == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "alert outcome: incomplete");
    if ((rc = inv_check_text(outcome, INV_TEXT_MAX, "alert outcome")) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        goto out;
    started = 1;
    if ((rc = inv_prepare(inv, "UPDATE alerts SET outcome = ?2 WHERE id = ?1", &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, id);
    if ((rc = inv_bind_text(inv, st, 2, outcome)) != MQPKI_OK ||
        (rc = step_done(inv, st, "alert outcome")) != MQPKI_OK)
        goto out;
    if (inv->db->ops->changes(inv->db) == 0) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "alert %lld not found", (long long)id);
        goto out;
    }
    snprintf(subject, sizeof(subject), "alert:%lld", (long long)id);
    rc = inv_audit(inv, actor, "detect.response", subject,
                   json_pack("{s:I,s:s}", "alert", (json_int_t)id, "outcome", outcome));
out:
    db_finalize(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    return rc;
}

int inventory_alert_list(struct inventory *inv, int open_only, inventory_alert_cb cb, void *ctx)
{
    struct inventory_alert a;
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv,
                          "SELECT id, time, rule, asset, address, broker, response, outcome, "
                          "evidence, state, acked_at, acked_by, cause FROM alerts "
                          "WHERE ?1 = 0 OR state = 'open' ORDER BY id DESC",
                          &st)) != MQPKI_OK)
        return rc;
    db_bind_int64(st, 1, open_only != 0);
    while ((src = db_step(st)) == DB_ROW) {
        char state[16];
        memset(&a, 0, sizeof(a));
        a.id = db_column_int64(st, 0);
        a.time = db_column_int64(st, 1);
        inv_col_text(st, 2, a.rule, sizeof(a.rule));
        inv_col_text(st, 3, a.asset, sizeof(a.asset));
        inv_col_text(st, 4, a.address, sizeof(a.address));
        inv_col_text(st, 5, a.broker, sizeof(a.broker));
        inv_col_text(st, 6, a.response, sizeof(a.response));
        inv_col_text(st, 7, a.outcome, sizeof(a.outcome));
        a.evidence = (const char *)db_column_text(st, 8);
        if (a.evidence == NULL)
            a.evidence = "{}";
        inv_col_text(st, 9, state, sizeof(state));
        a.state = strcmp(state, "open") == 0 ? INV_ALERT_OPEN : INV_ALERT_ACKED;
        a.acked_at = db_column_int64(st, 10);
        inv_col_text(st, 11, a.acked_by, sizeof(a.acked_by));
        inv_col_text(st, 12, a.cause, sizeof(a.cause));
        if (cb(&a, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "alert list");
    db_finalize(st);
    return rc;
}

int inventory_alert_ack(struct inventory *inv, int64_t id, const char *actor, int *changed)
{
    struct inv_tx tx;
    struct db_stmt *st = NULL;
    char subject[32];
    int rc, src, n = 0;

    if (changed != NULL)
        *changed = 0;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv, "SELECT state FROM alerts WHERE id = ?1", &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, id);
    if ((src = db_step(st)) != DB_ROW) {
        rc = src == DB_DONE ? mqpki_fail(MQPKI_ERR_NOT_FOUND, "alert %lld not found", (long long)id)
                            : inv_db_fail(inv, src, "alert ack");
        goto out;
    }
    db_finalize(st);
    st = NULL;
    if ((rc = inv_prepare(inv,
                          "UPDATE alerts SET state = 'acked', acked_at = ?2, acked_by = ?3 "
                          "WHERE id = ?1 AND state = 'open'",
                          &st)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 1, id);
    db_bind_int64(st, 2, mqpki_now());
    if ((rc = inv_bind_text(inv, st, 3, actor)) != MQPKI_OK ||
        (rc = step_done(inv, st, "alert ack")) != MQPKI_OK)
        goto out;
    n = (int)inv->db->ops->changes(inv->db);
    if (n > 0) {
        snprintf(subject, sizeof(subject), "alert:%lld", (long long)id);
        rc = inv_audit(inv, actor, "detect.ack", subject,
                       json_pack("{s:I}", "alert", (json_int_t)id));
    }
    if (rc == MQPKI_OK && changed != NULL)
        *changed = n;
out:
    db_finalize(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_quarantine_add(struct inventory *inv, const char *asset, const char *rule,
                             int64_t alert_id, const char *actor, int *added)
{
    struct inv_tx tx;
    struct db_stmt *st = NULL;
    int rc, n = 0;

    if (added != NULL)
        *added = 0;
    if ((rc = inv_check_id(asset)) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv,
                          "INSERT INTO quarantine(asset, since, rule, alert_id) "
                          "VALUES(?1, ?2, ?3, ?4) ON CONFLICT(asset) DO NOTHING",
                          &st)) != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, asset)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, rule)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 2, mqpki_now());
    db_bind_int64(st, 4, alert_id);
    if ((rc = step_done(inv, st, "quarantine")) != MQPKI_OK)
        goto out;
    if ((n = (int)inv->db->ops->changes(inv->db)) > 0)
        rc = inv_audit(inv, actor, "detect.quarantine", asset,
                       json_pack("{s:s,s:I}", "rule", rule, "alert", (json_int_t)alert_id));
    if (rc == MQPKI_OK && added != NULL)
        *added = n;
out:
    db_finalize(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_quarantine_remove(struct inventory *inv, const char *asset, const char *actor,
                                int *removed)
{
    struct inv_tx tx;
    struct db_stmt *st = NULL;
    int rc, n = 0;

    if (removed != NULL)
        *removed = 0;
    if ((rc = inv_check_id(asset)) != MQPKI_OK)
        return rc;
    if ((rc = inv_tx_start(inv, &tx)) != MQPKI_OK)
        return rc;
    if ((rc = inv_prepare(inv, "DELETE FROM quarantine WHERE asset = ?1", &st)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 1, asset)) != MQPKI_OK ||
        (rc = step_done(inv, st, "quarantine release")) != MQPKI_OK)
        goto out;
    if ((n = (int)inv->db->ops->changes(inv->db)) > 0)
        rc = inv_audit(inv, actor, "detect.release", asset,
                       json_pack("{s:s}", "lifted", "quarantine"));
    if (rc == MQPKI_OK && removed != NULL)
        *removed = n;
out:
    db_finalize(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_quarantine_list(struct inventory *inv, inventory_quarantine_cb cb, void *ctx)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if ((rc = inv_prepare(inv, "SELECT asset, since, rule FROM quarantine ORDER BY asset", &st)) !=
        MQPKI_OK)
        return rc;
    while ((src = db_step(st)) == DB_ROW) {
        if (cb((const char *)db_column_text(st, 0), db_column_int64(st, 1),
               (const char *)db_column_text(st, 2), ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "quarantine list");
    db_finalize(st);
    return rc;
}
