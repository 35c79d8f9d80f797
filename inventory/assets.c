/*
 * inventory/assets.c: assets, their lifecycle (DESIGN.md 8), broker sightings and history.
 */
#include "inventory_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const state_names[] = {"registered", "enrolled", "active",
                                          "suspended",  "revoked",  "decommissioned"};
static const char *const kind_names[] = {"device", "broker", "service", "operator"};

#define N_STATES ((int)(sizeof(state_names) / sizeof(state_names[0])))
_Static_assert(N_STATES == INV_STATE_COUNT_, "a name for every asset state");
#define N_KINDS ((int)(sizeof(kind_names) / sizeof(kind_names[0])))

/* Tags: at most this many bytes of JSON per asset. */
#define TAGS_MAX 4096

static int name_parse(const char *const *names, int n, const char *name)
{
    if (name == NULL)
        return -1;
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return i;
    return -1;
}

int inventory_state_parse(const char *name)
{
    return name_parse(state_names, N_STATES, name);
}

const char *inventory_state_name(int state)
{
    return state >= 0 && state < N_STATES ? state_names[state] : NULL;
}

int inventory_kind_parse(const char *name)
{
    return name_parse(kind_names, N_KINDS, name);
}

const char *inventory_kind_name(int kind)
{
    return kind >= 0 && kind < N_KINDS ? kind_names[kind] : NULL;
}

void inventory_asset_clear(struct inventory_asset *a)
{
    if (a == NULL)
        return;
    free(a->tags_json);
    a->tags_json = NULL;
}

/*
 * The lifecycle table of DESIGN.md 8: allowed[from] is the set of states reachable from it.
 * revoked -> enrolled is recovery (a new certificate after revocation); decommissioned is
 * terminal.
 */
#define BIT(s) (1u << (s))
static const unsigned allowed[] = {
    [INV_STATE_REGISTERED] =
        BIT(INV_STATE_ENROLLED) | BIT(INV_STATE_REVOKED) | BIT(INV_STATE_DECOMMISSIONED),
    [INV_STATE_ENROLLED] = BIT(INV_STATE_ACTIVE) | BIT(INV_STATE_SUSPENDED) |
                           BIT(INV_STATE_REVOKED) | BIT(INV_STATE_DECOMMISSIONED),
    [INV_STATE_ACTIVE] =
        BIT(INV_STATE_SUSPENDED) | BIT(INV_STATE_REVOKED) | BIT(INV_STATE_DECOMMISSIONED),
    [INV_STATE_SUSPENDED] = BIT(INV_STATE_ACTIVE) | BIT(INV_STATE_ENROLLED) |
                            BIT(INV_STATE_REVOKED) | BIT(INV_STATE_DECOMMISSIONED),
    [INV_STATE_REVOKED] = BIT(INV_STATE_ENROLLED) | BIT(INV_STATE_DECOMMISSIONED),
    [INV_STATE_DECOMMISSIONED] = 0,
};

int inv_transition_allowed(int from, int to)
{
    if (from < 0 || from >= N_STATES || to < 0 || to >= N_STATES)
        return 0;
    return (allowed[from] & BIT(to)) != 0;
}

int inv_asset_state(struct inventory *inv, const char *id, int *state, int64_t *last_seen)
{
    struct db_stmt *st = NULL;
    int rc;

    if ((rc = inv_stmt_row(inv, SQL_ASSET_STATE_GET, id, "asset", &st)) != MQPKI_OK)
        goto out;
    *state = inventory_state_parse((const char *)db_column_text(st, 0));
    if (last_seen != NULL)
        *last_seen = db_column_int64(st, 1);
    if (*state < 0)
        rc = mqpki_fail(MQPKI_ERR_STORE, "asset %s: unknown state in the store", id);
out:
    inv_stmt_done(st);
    return rc;
}

int inv_asset_move(struct inventory *inv, const char *id, int from, int to, const char *actor,
                   const char *reason)
{
    struct db_stmt *st = NULL;
    int rc, src;

    if (!inv_transition_allowed(from, to)) {
        if (from == INV_STATE_DECOMMISSIONED)
            return mqpki_fail(MQPKI_ERR_STATE, "asset %s is decommissioned", id);
        return mqpki_fail(MQPKI_ERR_STATE, "asset %s: cannot go from %s to %s", id,
                          inventory_state_name(from) ? inventory_state_name(from) : "?",
                          inventory_state_name(to) ? inventory_state_name(to) : "?");
    }
    rc = inv_stmt(inv, SQL_ASSET_STATE_SET, &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, id)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, inventory_state_name(to))) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 3, mqpki_now());
    src = db_step(st);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "asset state");
        goto out;
    }
    inv_stmt_done(st);
    st = NULL;
    rc = inv_audit(inv, actor, "asset.state", id,
                   json_pack("{s:s,s:s,s:s?}", "from", inventory_state_name(from), "to",
                             inventory_state_name(to), "reason", reason));
out:
    inv_stmt_done(st);
    return rc;
}

/* Parses tags text into a JSON object whose values are all strings. */
static int tags_parse(const char *text, json_t **out)
{
    json_error_t jerr;
    json_t *tags = NULL, *v;
    const char *k;
    int rc = MQPKI_OK;

    *out = NULL;
    if (text == NULL)
        text = "{}";
    if (strlen(text) > TAGS_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "tags: longer than %d bytes of JSON", TAGS_MAX);
        goto out;
    }
    tags = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    if (tags == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "tags: invalid JSON: %s", jerr.text);
        goto out;
    }
    if (!json_is_object(tags)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "tags: a JSON object of strings expected");
        goto out;
    }
    json_object_foreach(tags, k, v)
    {
        if (!json_is_string(v)) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "tags: value of '%s' is not a string", k);
            goto out;
        }
    }
    *out = tags;
    tags = NULL;
out:
    json_decref(tags);
    return rc;
}

static int check_asset_fields(const struct inventory_asset *a)
{
    int rc = inv_check_id(a->id);

    if (rc == MQPKI_OK && inventory_kind_name(a->kind) == NULL)
        rc = mqpki_fail(MQPKI_ERR_INVALID, "asset %s: unknown kind %d", a->id, a->kind);
    if (rc == MQPKI_OK)
        rc = inv_check_text(a->model, INV_TEXT_MAX, "model");
    if (rc == MQPKI_OK)
        rc = inv_check_text(a->hw_serial, INV_TEXT_MAX, "hardware serial");
    if (rc == MQPKI_OK)
        rc = inv_check_text(a->firmware, INV_TEXT_MAX, "firmware");
    if (rc == MQPKI_OK)
        rc = inv_check_text(a->location, INV_TEXT_MAX, "location");
    return rc;
}

int inventory_asset_add(struct inventory *inv, const struct inventory_asset *a, const char *actor)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    json_t *tags = NULL;
    char *tags_text = NULL;
    int64_t now = mqpki_now();
    int rc, src, started = 0;

    if (inv == NULL || a == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset add: arguments missing");
    rc = check_asset_fields(a);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc == MQPKI_OK)
        rc = tags_parse(a->tags_json, &tags);
    if (rc != MQPKI_OK)
        goto out;
    tags_text = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS);
    if (tags_text == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inv_prepare(inv,
                     "INSERT INTO assets(id, kind, state, model, hw_serial, firmware, location, "
                     "tags, created_at, updated_at) VALUES(?1, ?2, 'registered', ?3, ?4, ?5, "
                     "?6, ?7, ?8, ?8)",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, a->id)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, inventory_kind_name(a->kind))) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, a->model)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 4, a->hw_serial)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 5, a->firmware)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 6, a->location)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 7, tags_text)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 8, now);
    src = db_step(st);
    if (src != DB_DONE) {
        if (src == DB_CONSTRAINT)
            rc = mqpki_fail(MQPKI_ERR_EXISTS, "asset %s already exists", a->id);
        else
            rc = inv_db_fail(inv, src, "asset add");
        goto out;
    }
    rc = inv_audit(inv, actor, "asset.add", a->id,
                   json_pack("{s:s,s:s,s:s,s:s,s:s,s:O}", "kind", inventory_kind_name(a->kind),
                             "model", a->model, "hw_serial", a->hw_serial, "firmware", a->firmware,
                             "location", a->location, "tags", tags));
out:
    db_finalize(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    free(tags_text);
    json_decref(tags);
    return rc;
}

/* Fills out from a row of INV_ASSET_COLS; tags_json points into the row (no copy). */
static void asset_from_row(struct db_stmt *st, struct inventory_asset *a)
{
    inv_col_text(st, 0, a->id, sizeof(a->id));
    a->kind = inventory_kind_parse((const char *)db_column_text(st, 1));
    a->state = inventory_state_parse((const char *)db_column_text(st, 2));
    inv_col_text(st, 3, a->model, sizeof(a->model));
    inv_col_text(st, 4, a->hw_serial, sizeof(a->hw_serial));
    inv_col_text(st, 5, a->firmware, sizeof(a->firmware));
    inv_col_text(st, 6, a->location, sizeof(a->location));
    a->tags_json = (char *)db_column_text(st, 7);
    a->created_at = db_column_int64(st, 8);
    a->updated_at = db_column_int64(st, 9);
    a->last_seen = db_column_int64(st, 10);
    inv_col_text(st, 11, a->last_address, sizeof(a->last_address));
    inv_col_text(st, 12, a->last_broker, sizeof(a->last_broker));
}

int inventory_asset_get(struct inventory *inv, const char *id, struct inventory_asset *out)
{
    struct db_stmt *st = NULL;
    const char *tags;
    int rc;

    if (out != NULL)
        memset(out, 0, sizeof(*out));
    if (inv == NULL || out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset get: arguments missing");
    rc = inv_check_id(id);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_stmt_row(inv, SQL_ASSET_GET, id, "asset", &st)) != MQPKI_OK)
        goto out;
    asset_from_row(st, out);
    tags = out->tags_json != NULL ? out->tags_json : "{}";
    out->tags_json = strdup(tags);
    if (out->tags_json == NULL)
        rc = MQPKI_ERR_NOMEM;
out:
    inv_stmt_done(st);
    return rc;
}

/*
 * One asset as a JSON object per row, built from the row's columns into one buffer reused from
 * row to row: a listing of a million assets makes no per-asset allocation. Times as RFC 3339 UTC
 * (the date part formatted once per day), null when never; empty optional texts as null.
 */
struct json_day {
    int64_t day;   /* the day date[] was formatted for */
    int ok;        /* date[] holds it; 0: a day gmtime_r cannot format */
    char date[16]; /* "YYYY-MM-DDT" */
};

struct json_row {
    struct mqpki_buf b;
    struct json_day days[3]; /* one per time column: each column's days change slowly */
};

static void jr_put(struct json_row *r, const char *s, size_t n)
{
    mqpki_buf_put(&r->b, s, n);
}

#define JR_LIT(r, lit) jr_put(r, lit, sizeof(lit) - 1)

/* A text column as a JSON string; printable ASCII goes as it is, anything else through jansson's
 * encoder (escapes, and UTF-8 checked: text that is not valid UTF-8 lists as null). */
static void jr_text(struct json_row *r, struct db_stmt *st, int col, int empty_null)
{
    const unsigned char *s = (const unsigned char *)db_column_text(st, col);
    size_t n = s != NULL ? db_column_bytes(st, col) : 0;
    size_t i = 0;
    json_t *j;

    if (s == NULL || (n == 0 && empty_null)) {
        JR_LIT(r, "null");
        return;
    }
    while (i < n && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\')
        i++;
    if (i == n) {
        JR_LIT(r, "\"");
        jr_put(r, (const char *)s, n);
        JR_LIT(r, "\"");
        return;
    }
    if ((j = json_stringn((const char *)s, n)) == NULL) {
        JR_LIT(r, "null");
        return;
    }
    n = json_dumpb(j, NULL, 0, JSON_ENCODE_ANY);
    if (n > 0) {
        char *buf = malloc(n);
        if (buf == NULL)
            r->b.oom = 1;
        else if (json_dumpb(j, buf, n, JSON_ENCODE_ANY) == n)
            jr_put(r, buf, n);
        free(buf);
    }
    json_decref(j);
}

static void jr_time(struct json_row *r, int64_t t, struct json_day *d)
{
    int64_t day, sec;
    char hms[10] = {0, 0, ':', 0, 0, ':', 0, 0, 'Z', '"'};
    int f[3];

    /* Never, or outside years 0001-9999 (what RFC 3339 can write). */
    if (t == 0 || t < INT64_C(-62135596800) || t > INT64_C(253402300799)) {
        JR_LIT(r, "null");
        return;
    }
    day = t / 86400 - (t % 86400 < 0);
    sec = t - day * 86400;
    if (!d->ok || day != d->day) {
        time_t tt = (time_t)(day * 86400);
        struct tm tm;
        d->day = day;
        d->ok = gmtime_r(&tt, &tm) != NULL && tm.tm_year + 1900 >= 0 && tm.tm_year + 1900 <= 9999 &&
                strftime(d->date, sizeof(d->date), "%Y-%m-%dT", &tm) == 11;
    }
    if (!d->ok) {
        JR_LIT(r, "null");
        return;
    }
    f[0] = (int)(sec / 3600);
    f[1] = (int)(sec / 60 % 60);
    f[2] = (int)(sec % 60);
    for (int i = 0; i < 3; i++) {
        hms[3 * i] = (char)('0' + f[i] / 10);
        hms[3 * i + 1] = (char)('0' + f[i] % 10);
    }
    JR_LIT(r, "\"");
    jr_put(r, d->date, 11);
    jr_put(r, hms, sizeof(hms));
}

/* pattern with every "{}" replaced by col. */
static void subst(const char *pattern, const char *col, char *out, size_t size)
{
    size_t o = 0, n = strlen(col);

    for (const char *p = pattern; *p != '\0' && o + 1 < size; p++) {
        if (p[0] == '{' && p[1] == '}' && o + n < size) {
            memcpy(out + o, col, n);
            o += n;
            p++;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

/* INV_ASSET_COLS with tags as the engine's JSON value (SQLite: checked and compact; PostgreSQL:
 * checked, the text as stored). */
static void asset_json_cols(const struct db_dialect *d, char *out, size_t size)
{
    char tags[64];

    subst(d->json_text, "tags", tags, sizeof(tags));
    snprintf(out, size,
             "id, kind, state, model, hw_serial, firmware, location, %s, created_at, updated_at, "
             "last_seen, last_address, last_broker",
             tags);
}

/* The row of asset_json_cols as one JSON object, in r: each key, its column, and how it is
 * written. */
static void jr_asset(struct json_row *r, struct db_stmt *st)
{
    enum { TEXT, TEXT_OR_NULL, JSON, TIME };
    static const struct {
        const char *key;
        int how;
    } cols[] = {{"id", TEXT},
                {"kind", TEXT},
                {"state", TEXT},
                {"model", TEXT},
                {"serial", TEXT},
                {"firmware", TEXT},
                {"location", TEXT},
                {"tags", JSON},
                {"created_at", TIME},
                {"updated_at", TIME},
                {"last_seen", TIME},
                {"last_address", TEXT_OR_NULL},
                {"last_broker", TEXT_OR_NULL}};
    int times = 0;

    r->b.len = 0;
    for (int c = 0; c < (int)(sizeof(cols) / sizeof(cols[0])); c++) {
        const char *tags;
        jr_put(r, c == 0 ? "{\"" : ",\"", 2);
        jr_put(r, cols[c].key, strlen(cols[c].key));
        JR_LIT(r, "\":");
        switch (cols[c].how) {
        case TEXT:
        case TEXT_OR_NULL: jr_text(r, st, c, cols[c].how == TEXT_OR_NULL); break;
        case JSON:
            if ((tags = (const char *)db_column_text(st, c)) != NULL)
                jr_put(r, tags, db_column_bytes(st, c));
            else
                JR_LIT(r, "{}");
            break;
        default: jr_time(r, db_column_int64(st, c), &r->days[times++]); break;
        }
    }
    JR_LIT(r, "}");
}

/* The shared filter of the listings: fixed fragments only, values bound as ?1 and ?2. */
static int list_prepare(struct inventory *inv, const char *cols, int state, int kind,
                        struct db_stmt **st)
{
    char sql[2048];
    int rc;

    *st = NULL;
    if (state != -1 && inventory_state_name(state) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset list: unknown state %d", state);
    if (kind != -1 && inventory_kind_name(kind) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset list: unknown kind %d", kind);
    /* Index (state, id) or (kind, id) yields id order without a sort. */
    snprintf(sql, sizeof(sql), "SELECT %s FROM assets%s%s%s ORDER BY id", cols,
             state != -1 || kind != -1 ? " WHERE " : "", state != -1 ? "state = ?1" : "",
             kind != -1 ? (state != -1 ? " AND kind = ?2" : "kind = ?2") : "");
    if ((rc = inv_prepare(inv, sql, st)) != MQPKI_OK)
        return rc;
    if (state != -1 && (rc = inv_bind_text(inv, *st, 1, inventory_state_name(state))) != MQPKI_OK)
        goto fail;
    if (kind != -1 && (rc = inv_bind_text(inv, *st, 2, inventory_kind_name(kind))) != MQPKI_OK)
        goto fail;
    return MQPKI_OK;
fail:
    db_finalize(*st);
    *st = NULL;
    return rc;
}

int inventory_asset_list_json(struct inventory *inv, int state, int kind, inventory_json_cb cb,
                              void *ctx)
{
    struct json_row r;
    struct db_stmt *st = NULL;
    char cols[512];
    int rc, src;

    memset(&r, 0, sizeof(r));
    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset list: arguments missing");
    asset_json_cols(inv->ops->dialect, cols, sizeof(cols));
    if ((rc = list_prepare(inv, cols, state, kind, &st)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        jr_asset(&r, st);
        if (r.b.oom) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        if (cb((const char *)r.b.p, r.b.len, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "asset list");
out:
    db_finalize(st);
    free(r.b.p);
    return rc;
}

int inventory_asset_list(struct inventory *inv, int state, int kind, inventory_asset_cb cb,
                         void *ctx)
{
    struct inventory_asset a;
    struct db_stmt *st = NULL;
    int rc = MQPKI_OK, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset list: arguments missing");
    if ((rc = list_prepare(inv, INV_ASSET_COLS, state, kind, &st)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        asset_from_row(st, &a);
        if (a.tags_json == NULL)
            a.tags_json = (char *)"{}";
        if (cb(&a, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "asset list");
out:
    db_finalize(st);
    return rc;
}

/* Adds {"from":old,"to":new} under name to changes when the text differs. */
static int note_change(json_t *changes, const char *name, const char *old, const char *new)
{
    if (strcmp(old, new) == 0)
        return 0;
    return json_object_set_new(changes, name, json_pack("{s:s,s:s}", "from", old, "to", new));
}

int inventory_asset_update(struct inventory *inv, const char *id, const char *firmware,
                           const char *location, const char *tag_key, const char *tag_value,
                           const char *actor)
{
    struct inventory_asset cur = {0};
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    json_t *tags = NULL, *changes = NULL, *old;
    char *tags_text = NULL, tag_name[INV_TEXT_MAX + 8];
    int rc, src, started = 0;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset update: no store");
    rc = inv_check_id(id);
    if (rc == MQPKI_OK)
        rc = inv_check_text(firmware, INV_TEXT_MAX, "firmware");
    if (rc == MQPKI_OK)
        rc = inv_check_text(location, INV_TEXT_MAX, "location");
    if (rc == MQPKI_OK)
        rc = inv_check_text(tag_key, INV_TEXT_MAX, "tag key");
    if (rc == MQPKI_OK)
        rc = inv_check_text(tag_value, INV_TEXT_MAX, "tag value");
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc == MQPKI_OK && tag_key != NULL && (tag_key[0] == '\0' || tag_value == NULL))
        rc = mqpki_fail(MQPKI_ERR_INVALID, "asset %s: a tag needs a non-empty key and a value", id);
    if (rc != MQPKI_OK)
        goto out;
    changes = json_object();
    if (changes == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        goto out;
    started = 1;
    rc = inventory_asset_get(inv, id, &cur);
    if (rc != MQPKI_OK)
        goto out;
    rc = tags_parse(cur.tags_json, &tags);
    if (rc != MQPKI_OK)
        goto out;
    if (firmware != NULL && note_change(changes, "firmware", cur.firmware, firmware) != 0)
        rc = MQPKI_ERR_NOMEM;
    if (location != NULL && note_change(changes, "location", cur.location, location) != 0)
        rc = MQPKI_ERR_NOMEM;
    if (rc == MQPKI_OK && tag_key != NULL) {
        old = json_object_get(tags, tag_key);
        snprintf(tag_name, sizeof(tag_name), "tag:%s", tag_key);
        if (note_change(changes, tag_name, old != NULL ? json_string_value(old) : "", tag_value) !=
            0)
            rc = MQPKI_ERR_NOMEM;
        else if (tag_value[0] == '\0')
            json_object_del(tags, tag_key);
        else if (json_object_set_new(tags, tag_key, json_string(tag_value)) != 0)
            rc = MQPKI_ERR_NOMEM;
    }
    if (rc != MQPKI_OK)
        goto out;
    tags_text = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS);
    if (tags_text == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (strlen(tags_text) > TAGS_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "asset %s: tags longer than %d bytes of JSON", id,
                        TAGS_MAX);
        goto out;
    }
    rc = inv_prepare(inv,
                     "UPDATE assets SET firmware = ?2, location = ?3, tags = ?4, "
                     "updated_at = ?5 WHERE id = ?1",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, id)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 2, firmware != NULL ? firmware : cur.firmware)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 3, location != NULL ? location : cur.location)) != MQPKI_OK ||
        (rc = inv_bind_text(inv, st, 4, tags_text)) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 5, mqpki_now());
    src = db_step(st);
    if (src != DB_DONE) {
        rc = inv_db_fail(inv, src, "asset update");
        goto out;
    }
    rc = inv_audit(inv, actor, "asset.update", id, changes);
    changes = NULL;
out:
    db_finalize(st);
    if (started)
        rc = inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
    inventory_asset_clear(&cur);
    json_decref(tags);
    json_decref(changes);
    free(tags_text);
    return rc;
}

int inventory_asset_transition(struct inventory *inv, const char *id, int new_state,
                               const char *actor, const char *reason)
{
    struct inv_tx tx = {0};
    int rc, from = -1;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset transition: no store");
    rc = inv_check_id(id);
    if (rc == MQPKI_OK && inventory_state_name(new_state) == NULL)
        rc = mqpki_fail(MQPKI_ERR_INVALID, "asset %s: unknown state %d", id, new_state);
    if (rc == MQPKI_OK)
        rc = inv_check_text(actor, INV_TEXT_MAX, "actor");
    if (rc == MQPKI_OK)
        rc = inv_check_text(reason, INV_TEXT_MAX, "reason");
    if (rc != MQPKI_OK)
        return rc;
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        return rc;
    rc = inv_asset_state(inv, id, &from, NULL);
    if (rc == MQPKI_OK)
        rc = inv_asset_move(inv, id, from, new_state, actor, reason);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_asset_seen(struct inventory *inv, const char *id, int64_t when, const char *address,
                         const char *broker)
{
    struct inv_tx tx = {0};
    struct db_stmt *st = NULL;
    const char *who = broker != NULL && broker[0] != '\0' ? broker : "broker";
    int64_t last_seen = 0;
    int rc, src, state = -1;

    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset seen: no store");
    rc = inv_check_id(id);
    if (rc == MQPKI_OK)
        rc = inv_check_text(address, INV_TEXT_MAX, "address");
    if (rc == MQPKI_OK)
        rc = inv_check_text(broker, INV_TEXT_MAX, "broker");
    if (rc != MQPKI_OK)
        return rc;
    if (when <= 0)
        when = mqpki_now();
    rc = inv_tx_start(inv, &tx);
    if (rc != MQPKI_OK)
        return rc;
    rc = inv_asset_state(inv, id, &state, &last_seen);
    if (rc != MQPKI_OK)
        goto out;
    /* Sightings are telemetry, not audited one by one; a state change they cause is. Reports
     * may arrive out of order: keep the newest. A sighting that changes nothing writes nothing
     * (a device reconnecting within the second, the same address and broker). */
    if (when >= last_seen) {
        if ((rc = inv_stmt(inv, SQL_ASSET_SEEN, &st)) != MQPKI_OK)
            goto out;
        if ((rc = inv_bind_text(inv, st, 1, id)) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 3, address != NULL ? address : "")) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 4, broker != NULL ? broker : "")) != MQPKI_OK)
            goto out;
        db_bind_int64(st, 2, when);
        src = db_step(st);
        if (src != DB_DONE) {
            rc = inv_db_fail(inv, src, "asset seen");
            goto out;
        }
    }
    /*
     * inventory.h: registered or enrolled assets become active when seen. The lifecycle table
     * has no registered -> active edge (a registered asset holds no certificate from us), so a
     * registered asset passes through enrolled: two audited steps, both allowed.
     */
    if (state == INV_STATE_ENROLLED) {
        rc = inv_asset_move(inv, id, state, INV_STATE_ACTIVE, who, "seen by broker");
    } else if (state == INV_STATE_REGISTERED) {
        rc = inv_asset_move(inv, id, state, INV_STATE_ENROLLED, who, "seen by broker");
        if (rc == MQPKI_OK)
            rc = inv_asset_move(inv, id, INV_STATE_ENROLLED, INV_STATE_ACTIVE, who,
                                "seen by broker");
    }
out:
    inv_stmt_done(st);
    return inv_tx_end(inv, &tx, rc == MQPKI_OK, rc);
}

int inventory_asset_history(struct inventory *inv, const char *id, inventory_event_cb cb, void *ctx)
{
    struct inventory_event e;
    struct db_stmt *st = NULL;
    int rc, src;

    if (inv == NULL || cb == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset history: arguments missing");
    rc = inv_check_id(id);
    if (rc != MQPKI_OK)
        return rc;
    /* Events about the asset itself and about each of its certificates (by serial). */
    rc = inv_prepare(inv,
                     "SELECT seq, time, actor, action, subject, detail FROM audit "
                     "WHERE subject = ?1 UNION "
                     "SELECT seq, time, actor, action, subject, detail FROM audit "
                     "WHERE subject IN (SELECT serial FROM certs WHERE asset_id = ?1) "
                     "ORDER BY seq",
                     &st);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inv_bind_text(inv, st, 1, id)) != MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW) {
        memset(&e, 0, sizeof(e));
        e.seq = db_column_int64(st, 0);
        e.time = db_column_int64(st, 1);
        inv_col_text(st, 2, e.actor, sizeof(e.actor));
        inv_col_text(st, 3, e.action, sizeof(e.action));
        inv_col_text(st, 4, e.subject, sizeof(e.subject));
        e.detail = (char *)db_column_text(st, 5);
        if (e.detail == NULL)
            e.detail = (char *)"{}";
        if (cb(&e, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "asset history");
out:
    db_finalize(st);
    return rc;
}

int inventory_asset_count_by_state(struct inventory *inv, int64_t counts[INV_STATE_COUNT_])
{
    struct db_stmt *st = NULL;
    int rc, src, s;

    memset(counts, 0, sizeof(int64_t) * INV_STATE_COUNT_);
    if ((rc = inv_prepare(inv, "SELECT state, COUNT(*) FROM assets GROUP BY state", &st)) !=
        MQPKI_OK)
        goto out;
    while ((src = db_step(st)) == DB_ROW)
        if ((s = inventory_state_parse((const char *)db_column_text(st, 0))) >= 0 &&
            s < INV_STATE_COUNT_)
            counts[s] = db_column_int64(st, 1);
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "asset count");
out:
    db_finalize(st);
    return rc;
}

int inventory_asset_page(struct inventory *inv, int state, const char *prefix, const char *after,
                         int limit, inventory_asset_cb cb, void *ctx)
{
    char end[PROTO_ASSET_ID_MAX + 2];
    struct inventory_asset a;
    struct db_stmt *st = NULL;
    size_t pl = prefix != NULL ? strlen(prefix) : 0;
    int rc, src;

    if (inv == NULL || cb == NULL || limit <= 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset page: arguments missing");
    if (state != -1 && inventory_state_name(state) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset page: unknown state %d", state);
    if (pl > PROTO_ASSET_ID_MAX || (after != NULL && strlen(after) > PROTO_ASSET_ID_MAX))
        return mqpki_fail(MQPKI_ERR_INVALID, "asset page: prefix or cursor too long");
    /* A prefix is the range [prefix, prefix + U+007F) in byte order (COLLATE BINARY, PostgreSQL's
     * "C", whatever the database's collation): asset ids are printable ASCII, so the range scan
     * runs on the primary key (or (state, id)) in SQLite, on assets_id_c (assets_state_id_c) in
     * PostgreSQL. */
    memcpy(end, prefix != NULL ? prefix : "", pl);
    end[pl] = 0x7f;
    end[pl + 1] = '\0';
    /* One lower bound, the tighter of the cursor and the prefix, so that the planner has a
     * single range: id > after, or id >= prefix. */
    {
        int by_after = after != NULL && strcmp(after, prefix != NULL ? prefix : "") >= 0;
        char sql[512];
        snprintf(sql, sizeof(sql),
                 "SELECT " INV_ASSET_COLS " FROM assets WHERE %s AND id COLLATE BINARY %s ?1 "
                 "AND id COLLATE BINARY < ?3 AND CAST(?2 AS TEXT) IS NOT NULL "
                 "ORDER BY id COLLATE BINARY LIMIT ?5",
                 state != -1 ? "state = ?4" : "CAST(?4 AS TEXT) IS NULL", by_after ? ">" : ">=");
        if ((rc = inv_prepare(inv, sql, &st)) != MQPKI_OK)
            return rc;
        if ((rc = inv_bind_text(inv, st, 1,
                                by_after         ? after
                                : prefix != NULL ? prefix
                                                 : "")) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 2, "")) != MQPKI_OK ||
            (rc = inv_bind_text(inv, st, 3, end)) != MQPKI_OK)
            goto out;
    }
    if (state != -1 && (rc = inv_bind_text(inv, st, 4, inventory_state_name(state))) != MQPKI_OK)
        goto out;
    db_bind_int64(st, 5, limit);
    while ((src = db_step(st)) == DB_ROW) {
        asset_from_row(st, &a);
        if (a.tags_json == NULL)
            a.tags_json = (char *)"{}";
        if (cb(&a, ctx) != 0) {
            src = DB_DONE;
            break;
        }
    }
    if (src != DB_DONE)
        rc = inv_db_fail(inv, src, "asset page");
out:
    db_finalize(st);
    return rc;
}
