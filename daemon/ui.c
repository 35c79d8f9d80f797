/*
 * daemon/ui.c: the read-only fleet dashboard under /ui/ on mqpkid's HTTPS listener
 * (docs/dashboard.md). Pages are rendered here, server side, with every value from the store
 * HTML-escaped; there is no script. Access needs an operator credential: a client certificate
 * of an asset of kind operator, a bearer token, or the session cookie a one-time login link
 * sets. No credential: 401; a valid certificate of another kind (a device): 403.
 */
#include "ui.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "common.h"
#include "datadir.h"
#include "enrollment.h"
#include "inventory.h"
#include "posture.h"
#include "web.h"

#define PAGE_SIZE       50
#define SESSION_TTL     (12 * 3600)
#define COOKIE_NAME     "mqpki_session"
#define CLIENT_CERT_MAX (64 * 1024)
#define EXPIRY_BUCKETS  13 /* weeks */
#define DAYS_SHOWN      30

int ui_handles(const char *url)
{
    return strncmp(url, "/ui", 3) == 0 && (url[3] == '\0' || url[3] == '/');
}

/* ---- credentials ---- */

enum { AUTH_OK = 0, AUTH_NONE = 401, AUTH_FORBIDDEN = 403 };

/*
 * The client certificate: verified against our CA, recorded in the store as valid (or
 * superseded) and unexpired, naming its asset. AUTH_OK for an operator, AUTH_FORBIDDEN for any
 * other asset (a device), AUTH_NONE when it proves nothing.
 */
static int auth_cert(struct daemon_ctx *ctx, struct inventory *inv, const unsigned char *der,
                     size_t len, char who[PROTO_ASSET_ID_MAX + 1])
{
    const unsigned char *p = der;
    X509 *cert = NULL;
    struct inventory_cert rec;
    struct inventory_asset a;
    char serial[PROTO_SERIAL_HEX_MAX + 1], fp[PROTO_FP_HEX_LEN + 1];
    int res = AUTH_NONE;

    memset(&rec, 0, sizeof(rec));
    memset(&a, 0, sizeof(a));
    if (der == NULL || len == 0 || len > CLIENT_CERT_MAX)
        goto out;
    if ((cert = d2i_X509(NULL, &p, (long)len)) == NULL || p != der + len)
        goto out;
    /* The issuing CA generations EST trusts (the current one and the older live ones). */
    if (est_client_cert_verify(ctx->est, cert) != MQPKI_OK)
        goto out;
    if (!proto_cert_asset_id(cert, who) || proto_serial_hex(X509_get0_serialNumber(cert), serial) ||
        ca_pubkey_fingerprint(X509_get0_pubkey(cert), fp) != MQPKI_OK)
        goto out;
    /* Ours by serial and by the key it was issued for (not one forged under its serial). */
    if (inventory_cert_get(inv, serial, 0, &rec) != MQPKI_OK || strcmp(rec.asset_id, who) != 0 ||
        strcmp(rec.key_fp, fp) != 0 ||
        (rec.state != INV_CERT_VALID && rec.state != INV_CERT_SUPERSEDED) ||
        inventory_asset_get(inv, who, &a) != MQPKI_OK)
        goto out;
    res = a.kind == INV_KIND_OPERATOR && a.state != INV_STATE_SUSPENDED &&
                  a.state != INV_STATE_REVOKED && a.state != INV_STATE_DECOMMISSIONED
              ? AUTH_OK
              : AUTH_FORBIDDEN;
out:
    ERR_clear_error();
    mqpki_err_clear();
    inventory_cert_clear(&rec);
    inventory_asset_clear(&a);
    X509_free(cert);
    if (res != AUTH_OK && res != AUTH_FORBIDDEN)
        who[0] = '\0';
    return res;
}

static int authenticate(struct daemon_ctx *ctx, struct inventory *inv, const struct ui_request *rq,
                        char who[PROTO_ASSET_ID_MAX + 1])
{
    const char *authz = rq->authorization, *cookie = rq->session_cookie;
    int res = AUTH_NONE;

    who[0] = '\0';
    if (rq->client_cert != NULL) {
        res = auth_cert(ctx, inv, rq->client_cert, rq->client_cert_len, who);
        if (res == AUTH_OK || res == AUTH_FORBIDDEN)
            return res;
    }
    if (authz != NULL && strncmp(authz, "Bearer ", 7) == 0 &&
        inventory_operator_token_check(inv, authz + 7, INV_OP_BEARER, mqpki_now(), who) == MQPKI_OK)
        return AUTH_OK;
    if (cookie != NULL &&
        inventory_operator_token_check(inv, cookie, INV_OP_SESSION, mqpki_now(), who) == MQPKI_OK)
        return AUTH_OK;
    return AUTH_NONE;
}

/* ---- page frame ---- */

static const struct {
    const char *path, *title;
} nav[] = {
    {"/ui/", "Overview"},     {"/ui/assets", "Assets"},   {"/ui/brokers", "Brokers"},
    {"/ui/alerts", "Alerts"}, {"/ui/csf", "CSF posture"},
};

static void page_begin(struct mqpki_buf *b, const char *title, const char *active, const char *who)
{
    mqpki_buf_str(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
                     "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
                     "<title>mqpki: ");
    posture_buf_html(b, title);
    mqpki_buf_str(b, "</title>\n<link rel=\"stylesheet\" href=\"/ui/static/style.css\">\n"
                     "</head><body>\n<header><b>mqpki</b>");
    for (size_t i = 0; i < sizeof(nav) / sizeof(nav[0]); i++) {
        mqpki_buf_printf(b, "<a href=\"%s\"%s>%s</a>", nav[i].path,
                         strcmp(nav[i].path, active) == 0 ? " class=\"on\"" : "", nav[i].title);
    }
    mqpki_buf_str(b, "<span class=\"muted\" style=\"margin-left:auto\">operator ");
    posture_buf_html(b, who);
    mqpki_buf_str(b, "</span></header>\n<main>\n");
}

static void page_end(struct mqpki_buf *b)
{
    mqpki_buf_str(b, "</main></body></html>\n");
}

static void time_cell(struct mqpki_buf *b, int64_t t)
{
    char s[32];

    if (t <= 0) {
        mqpki_buf_str(b, "<td class=\"muted\">never</td>");
        return;
    }
    mqpki_time_str(t, s);
    mqpki_buf_printf(b, "<td>%s</td>", s);
}

/* ---- overview ---- */

/* A bar chart as inline SVG: n bars of values v, labels under every `every`-th bar. */
static void svg_bars(struct mqpki_buf *b, const char *id, const char *title, const int64_t *v,
                     const int64_t *v2, int n, const char *const *labels, int every)
{
    const int w = 720, h = 180, top = 10, bottom = 30, left = 40;
    int64_t max = 1;
    int bw = (w - left - 10) / (n > 0 ? n : 1);

    for (int i = 0; i < n; i++) {
        if (v[i] > max)
            max = v[i];
        if (v2 != NULL && v2[i] > max)
            max = v2[i];
    }
    mqpki_buf_printf(b,
                     "<svg id=\"%s\" role=\"img\" viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\">"
                     "<title>",
                     id, w, h, w, h);
    posture_buf_html(b, title);
    mqpki_buf_printf(b, "</title><text x=\"4\" y=\"%d\">%lld</text><text x=\"4\" y=\"%d\">0</text>",
                     top + 10, (long long)max, h - bottom);
    for (int i = 0; i < n; i++) {
        int x = left + i * bw, bh = (int)((h - top - bottom) * v[i] / max);
        int half = v2 != NULL ? (bw - 4) / 2 : bw - 4;
        mqpki_buf_printf(b,
                         "<rect class=\"bar\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\">"
                         "<title>%s: %lld</title></rect>",
                         x + 2, h - bottom - bh, half, bh, labels[i], (long long)v[i]);
        if (v2 != NULL) {
            int bh2 = (int)((h - top - bottom) * v2[i] / max);
            mqpki_buf_printf(b,
                             "<rect class=\"bar-revoked\" x=\"%d\" y=\"%d\" width=\"%d\" "
                             "height=\"%d\"><title>%s: %lld revoked</title></rect>",
                             x + 2 + half, h - bottom - bh2, half, bh2, labels[i],
                             (long long)v2[i]);
        }
        if (i % every == 0)
            mqpki_buf_printf(b, "<text x=\"%d\" y=\"%d\">%s</text>", x + 2, h - bottom + 14,
                             labels[i]);
    }
    mqpki_buf_str(b, "</svg>\n");
}

struct days {
    int64_t from;
    int64_t issued[DAYS_SHOWN], revoked[DAYS_SHOWN];
};

static int day_cb(int64_t day, int64_t issued, int64_t revoked, void *ctx)
{
    struct days *d = ctx;
    int64_t i = (day - d->from) / 86400;

    if (i >= 0 && i < DAYS_SHOWN) {
        d->issued[i] += issued;
        d->revoked[i] += revoked;
    }
    return 0;
}

static int page_overview(struct inventory *inv, struct mqpki_buf *b, const char *who)
{
    struct inventory_posture p;
    int64_t now = mqpki_now(), buckets[EXPIRY_BUCKETS];
    char labels[DAYS_SHOWN > EXPIRY_BUCKETS ? DAYS_SHOWN : EXPIRY_BUCKETS][16];
    const char *lp[DAYS_SHOWN > EXPIRY_BUCKETS ? DAYS_SHOWN : EXPIRY_BUCKETS];
    struct days d;
    int rc;

    memset(&d, 0, sizeof(d));
    if ((rc = inventory_posture_counts(inv, now, &p)) != MQPKI_OK ||
        (rc = inventory_posture_expiry(inv, now, 7 * 86400, EXPIRY_BUCKETS, buckets)) != MQPKI_OK)
        return rc;
    d.from = (now / 86400 - (DAYS_SHOWN - 1)) * 86400;
    if ((rc = inventory_posture_days(inv, d.from, d.from + DAYS_SHOWN * 86400, day_cb, &d)) !=
        MQPKI_OK)
        return rc;
    page_begin(b, "Fleet overview", "/ui/", who);
    mqpki_buf_str(b, "<h1>Fleet overview</h1>\n<div class=\"cards\">");
    mqpki_buf_printf(b,
                     "<div class=\"card\"><div class=\"n\" id=\"assets-total\">%lld</div>"
                     "assets</div>",
                     (long long)p.assets);
    mqpki_buf_printf(b, "<div class=\"card\"><div class=\"n\">%lld</div>valid certificates</div>",
                     (long long)p.certs_valid);
    mqpki_buf_printf(b,
                     "<div class=\"card\"><div class=\"n\">%lld</div>revoked or on hold"
                     "</div>",
                     (long long)p.certs_revoked);
    mqpki_buf_printf(b, "<div class=\"card\"><div class=\"n\">%lld</div>expired</div></div>",
                     (long long)p.certs_expired);
    mqpki_buf_str(b, "<h2>Assets by lifecycle state</h2>\n<table id=\"by-state\"><tr>");
    for (int s = 0; s <= INV_STATE_DECOMMISSIONED; s++)
        mqpki_buf_printf(b, "<th><a href=\"/ui/assets?state=%s\">%s</a></th>",
                         inventory_state_name(s), inventory_state_name(s));
    mqpki_buf_str(b, "</tr><tr>");
    for (int s = 0; s <= INV_STATE_DECOMMISSIONED; s++)
        mqpki_buf_printf(b, "<td data-state=\"%s\">%lld</td>", inventory_state_name(s),
                         (long long)p.by_state[s]);
    mqpki_buf_str(b, "</tr></table>\n<h2>Assets by kind</h2>\n<table id=\"by-kind\"><tr>");
    for (int k = 0; k <= INV_KIND_OPERATOR; k++)
        mqpki_buf_printf(b, "<th>%s</th>", inventory_kind_name(k));
    mqpki_buf_str(b, "</tr><tr>");
    for (int k = 0; k <= INV_KIND_OPERATOR; k++)
        mqpki_buf_printf(b, "<td>%lld</td>", (long long)p.by_kind[k]);
    mqpki_buf_str(b, "</tr></table>\n<h2>Certificate expiry, by week from today</h2>\n");
    for (int i = 0; i < EXPIRY_BUCKETS; i++) {
        snprintf(labels[i], sizeof(labels[i]), i == EXPIRY_BUCKETS - 1 ? "w%d+" : "w%d", i + 1);
        lp[i] = labels[i];
    }
    svg_bars(b, "expiry-chart", "Live certificates expiring per week", buckets, NULL,
             EXPIRY_BUCKETS, lp, 1);
    mqpki_buf_printf(b,
                     "<h2>Certificates issued (blue) and revoked (red) per day, last %d "
                     "days</h2>\n",
                     DAYS_SHOWN);
    for (int i = 0; i < DAYS_SHOWN; i++) {
        time_t t = (time_t)(d.from + (int64_t)i * 86400);
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(labels[i], sizeof(labels[i]), "%m-%d", &tm);
        lp[i] = labels[i];
    }
    svg_bars(b, "daily-chart", "Certificates issued and revoked per day", d.issued, d.revoked,
             DAYS_SHOWN, lp, 5);
    page_end(b);
    return MQPKI_OK;
}

/* ---- assets ---- */

struct page_ctx {
    struct mqpki_buf *b;
    int n;
    char last[PROTO_ASSET_ID_MAX + 1];
};

static int asset_row(const struct inventory_asset *a, void *ctx)
{
    struct page_ctx *p = ctx;
    const char *state = inventory_state_name(a->state);

    mqpki_buf_printf(p->b,
                     "<tr class=\"asset\" data-state=\"%s\"><td><a href=\"/ui/asset?id=", state);
    posture_buf_html(p->b, a->id);
    mqpki_buf_str(p->b, "\">");
    posture_buf_html(p->b, a->id);
    mqpki_buf_printf(p->b, "</a></td><td>%s</td><td><span class=\"st state-%s\">%s</span></td><td>",
                     inventory_kind_name(a->kind), state, state);
    posture_buf_html(p->b, a->model);
    mqpki_buf_str(p->b, "</td><td>");
    posture_buf_html(p->b, a->location);
    mqpki_buf_str(p->b, "</td>");
    time_cell(p->b, a->last_seen);
    mqpki_buf_str(p->b, "</tr>\n");
    snprintf(p->last, sizeof(p->last), "%s", a->id);
    p->n++;
    return 0;
}

/* Query values are checked before use: ids and prefixes must be asset-id text. */
static int id_text_ok(const char *s)
{
    if (s == NULL || strlen(s) > PROTO_ASSET_ID_MAX)
        return 0;
    for (const char *p = s; *p != '\0'; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return 0;
    return 1;
}

static int page_assets(struct inventory *inv, const struct ui_request *rq, struct mqpki_buf *b,
                       const char *who)
{
    const char *q = rq->arg_q != NULL ? rq->arg_q : "", *after = rq->arg_after;
    const char *sname = rq->arg_state != NULL ? rq->arg_state : "";
    int state = sname[0] != '\0' ? inventory_state_parse(sname) : -1;
    struct page_ctx p = {b, 0, ""};
    int rc;

    if (!id_text_ok(q) || (after != NULL && !id_text_ok(after)) || (sname[0] != '\0' && state < 0))
        return mqpki_fail(MQPKI_ERR_INVALID, "bad query");
    page_begin(b, "Assets", "/ui/assets", who);
    mqpki_buf_str(b, "<h1>Assets</h1>\n<form method=\"get\" action=\"/ui/assets\">"
                     "<input name=\"q\" placeholder=\"id starts with\" value=\"");
    posture_buf_html(b, q);
    mqpki_buf_str(b, "\"> <select name=\"state\"><option value=\"\">any state</option>");
    for (int s = 0; s <= INV_STATE_DECOMMISSIONED; s++)
        mqpki_buf_printf(b, "<option%s>%s</option>", s == state ? " selected" : "",
                         inventory_state_name(s));
    mqpki_buf_str(b, "</select> <button>Search</button></form>\n<table id=\"assets\"><tr>"
                     "<th>ID</th><th>Kind</th><th>State</th><th>Model</th><th>Location</th>"
                     "<th>Last seen</th></tr>\n");
    if ((rc = inventory_asset_page(inv, state, q, after, PAGE_SIZE, asset_row, &p)) != MQPKI_OK)
        return rc;
    mqpki_buf_str(b, "</table>\n");
    if (p.n == 0)
        mqpki_buf_str(b, "<p class=\"muted\">No asset matches.</p>\n");
    if (p.n == PAGE_SIZE) {
        mqpki_buf_str(b, "<p><a id=\"next\" href=\"/ui/assets?q=");
        posture_buf_html(b, q);
        mqpki_buf_printf(b, "&amp;state=%s&amp;after=", state >= 0 ? sname : "");
        posture_buf_html(b, p.last);
        mqpki_buf_str(b, "\">Next page</a></p>\n");
    }
    page_end(b);
    return MQPKI_OK;
}

static int cert_row(const struct inventory_cert *c, void *ctx)
{
    struct mqpki_buf *b = ctx;
    const char *st = inventory_cert_state_name(c->state);

    mqpki_buf_printf(b,
                     "<tr><td><code>%s</code></td><td>%s</td>"
                     "<td><span class=\"st cert-%s\">%s</span></td>",
                     c->serial, c->profile, st, st);
    time_cell(b, c->not_before);
    time_cell(b, c->not_after);
    if (c->revoked_at > 0)
        time_cell(b, c->revoked_at);
    else
        mqpki_buf_str(b, "<td></td>");
    time_cell(b, c->seen_at);
    mqpki_buf_str(b, "</tr>\n");
    return 0;
}

static int event_row(const struct inventory_event *e, void *ctx)
{
    struct mqpki_buf *b = ctx;

    mqpki_buf_str(b, "<tr>");
    time_cell(b, e->time);
    mqpki_buf_str(b, "<td>");
    posture_buf_html(b, e->action);
    mqpki_buf_str(b, "</td><td>");
    posture_buf_html(b, e->actor);
    mqpki_buf_str(b, "</td><td><code>");
    posture_buf_html(b, e->detail);
    mqpki_buf_str(b, "</code></td></tr>\n");
    return 0;
}

static int page_asset(struct inventory *inv, const struct ui_request *rq, struct mqpki_buf *b,
                      const char *who)
{
    struct inventory_asset a;
    const char *st;
    int rc;

    memset(&a, 0, sizeof(a));
    if (rq->arg_id == NULL || !proto_asset_id_valid(rq->arg_id))
        return mqpki_fail(MQPKI_ERR_INVALID, "bad query");
    if ((rc = inventory_asset_get(inv, rq->arg_id, &a)) != MQPKI_OK)
        return rc;
    st = inventory_state_name(a.state);
    page_begin(b, a.id, "/ui/assets", who);
    mqpki_buf_str(b, "<h1>Asset ");
    posture_buf_html(b, a.id);
    mqpki_buf_printf(b,
                     " <span id=\"asset-state\" class=\"st state-%s\">%s</span></h1>\n"
                     "<table id=\"asset\"><tr><th>Kind</th><td>%s</td></tr>",
                     st, st, inventory_kind_name(a.kind));
    static const char *const names[] = {"Model", "Hardware serial", "Firmware",   "Location",
                                        "Tags",  "Last address",    "Last broker"};
    const char *vals[] = {a.model,     a.hw_serial,    a.firmware,   a.location,
                          a.tags_json, a.last_address, a.last_broker};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        mqpki_buf_printf(b, "<tr><th>%s</th><td>", names[i]);
        posture_buf_html(b, vals[i]);
        mqpki_buf_str(b, "</td></tr>");
    }
    mqpki_buf_str(b, "<tr><th>Last seen</th>");
    time_cell(b, a.last_seen);
    mqpki_buf_str(b, "</tr><tr><th>Registered</th>");
    time_cell(b, a.created_at);
    mqpki_buf_str(b, "</tr></table>\n<h2>Certificates</h2>\n<table id=\"certs\"><tr>"
                     "<th>Serial</th><th>Profile</th><th>State</th><th>Not before</th>"
                     "<th>Not after</th><th>Revoked</th><th>First seen</th></tr>\n");
    if ((rc = inventory_cert_list(inv, a.id, -1, 0, cert_row, b)) != MQPKI_OK)
        goto out;
    mqpki_buf_str(b, "</table>\n<h2>History</h2>\n<table id=\"history\"><tr><th>Time</th>"
                     "<th>Action</th><th>Actor</th><th>Detail</th></tr>\n");
    if ((rc = inventory_asset_history(inv, a.id, event_row, b)) != MQPKI_OK)
        goto out;
    mqpki_buf_str(b, "</table>\n<h2>Events</h2>\n<p class=\"muted\">Detection not available in "
                     "this build: broker events are not stored yet.</p>\n");
    page_end(b);
out:
    inventory_asset_clear(&a);
    return rc;
}

/* ---- brokers, alerts, posture ---- */

static int posture_facts(struct daemon_ctx *ctx, struct inventory *inv, json_t **res,
                         struct posture_opts *o)
{
    posture_opts_default(o);
    o->quick = 1;
    return posture_check(ctx->dd, inv, o, res, NULL);
}

static int page_brokers(struct daemon_ctx *ctx, struct inventory *inv, struct mqpki_buf *b,
                        const char *who)
{
    struct posture_opts o;
    const json_t *facts, *v, *r;
    json_t *res = NULL;
    size_t i, j;
    int rc;

    if ((rc = posture_facts(ctx, inv, &res, &o)) != MQPKI_OK)
        return rc;
    facts = json_object_get(res, "facts");
    page_begin(b, "Brokers", "/ui/brokers", who);
    mqpki_buf_str(b, "<h1>Brokers</h1>\n<h2>Bundled brokers</h2>\n<table id=\"brokers\"><tr>"
                     "<th>Broker</th><th>Plugin</th><th>fail_closed</th><th>Client "
                     "certificates</th><th>CRL held</th><th>its nextUpdate</th>"
                     "<th>Feed link (last report)</th></tr>\n");
    json_array_foreach(json_object_get(facts, "brokers"), i, v)
    {
        const char *name = json_string_value(json_object_get(v, "name"));
        const char *reported = "never reported";
        json_array_foreach(json_object_get(facts, "broker_reports"), j, r)
        {
            if (strcmp(json_string_value(json_object_get(r, "broker")), name) == 0)
                reported = json_string_value(json_object_get(r, "reported_at"));
        }
        mqpki_buf_str(b, "<tr><td>");
        posture_buf_html(b, name);
        mqpki_buf_printf(b, "</td><td>%s</td><td>%s</td><td>%s</td><td>%lld</td><td>",
                         json_is_true(json_object_get(v, "plugin")) ? "yes" : "NO",
                         json_is_true(json_object_get(v, "fail_closed")) ? "on" : "off",
                         json_is_true(json_object_get(v, "require_certificate")) ? "required"
                                                                                 : "NOT required",
                         (long long)json_integer_value(json_object_get(v, "crl_number")));
        posture_buf_html(b, json_string_value(json_object_get(v, "crl_next_update")));
        mqpki_buf_str(b, "</td><td>");
        posture_buf_html(b, reported);
        mqpki_buf_str(b, "</td></tr>\n");
    }
    mqpki_buf_str(b, "</table>\n<h2>CRL numbers reported over the feed</h2>\n"
                     "<table id=\"reports\"><tr><th>Broker</th><th>Full CRL</th><th>Delta CRL"
                     "</th><th>Reported</th></tr>\n");
    json_array_foreach(json_object_get(facts, "broker_reports"), i, r)
    {
        mqpki_buf_str(b, "<tr><td>");
        posture_buf_html(b, json_string_value(json_object_get(r, "broker")));
        mqpki_buf_printf(b, "</td><td>%lld</td><td>%lld</td><td>",
                         (long long)json_integer_value(json_object_get(r, "full")),
                         (long long)json_integer_value(json_object_get(r, "delta")));
        posture_buf_html(b, json_string_value(json_object_get(r, "reported_at")));
        mqpki_buf_str(b, "</td></tr>\n");
    }
    mqpki_buf_str(b, "</table>\n");
    page_end(b);
    json_decref(res);
    return MQPKI_OK;
}

/* Alerts and events: a marked place until detection (broker events, detectors, alerts) is in
 * the store. TODO(detection): list alerts and recent events here from their tables. */
static int page_alerts(struct mqpki_buf *b, const char *who)
{
    page_begin(b, "Alerts", "/ui/alerts", who);
    mqpki_buf_str(b, "<h1>Alerts and events</h1>\n<p id=\"alerts-unavailable\">Detection not "
                     "available in this build.</p>\n");
    page_end(b);
    return MQPKI_OK;
}

static int page_csf(struct daemon_ctx *ctx, struct inventory *inv, struct mqpki_buf *b,
                    const char *who)
{
    struct posture_opts o;
    json_t *res = NULL, *report = NULL;
    int rc;

    if ((rc = posture_facts(ctx, inv, &res, &o)) != MQPKI_OK ||
        (rc = posture_csf(res, &o, &report)) != MQPKI_OK)
        goto out;
    page_begin(b, "CSF posture", "/ui/csf", who);
    posture_csf_html_section(b, report);
    mqpki_buf_str(b, "<p class=\"muted\">This page skips the checks that read every "
                     "certificate or audit event; <code>mqpki report csf</code> runs them "
                     "all.</p>\n");
    page_end(b);
out:
    json_decref(report);
    json_decref(res);
    return rc;
}

/* ---- requests ---- */

static void respond_text(struct ui_response *out, int status, const char *text)
{
    out->status = status;
    out->content_type = "text/plain; charset=utf-8";
    out->body = strdup(text);
    out->len = out->body != NULL ? strlen(out->body) : 0;
}

/* A login link's next page: our own /ui/ path only (no open redirect, no header injection). */
static const char *safe_next(const char *next)
{
    if (next == NULL || strncmp(next, "/ui/", 4) != 0 || strlen(next) > 200 ||
        strstr(next, "//") != NULL || strpbrk(next, "\\\r\n\"<> ") != NULL)
        return "/ui/";
    return next;
}

static void login(struct inventory *inv, const struct ui_request *rq, struct ui_response *out)
{
    char who[PROTO_ASSET_ID_MAX + 1], session[INV_OP_TOKEN_MAX];

    if (rq->arg_t == NULL || inventory_operator_token_check(inv, rq->arg_t, INV_OP_LOGIN,
                                                            mqpki_now(), who) != MQPKI_OK) {
        respond_text(out, 401, "login link refused (used, expired or unknown)\n");
        out->www_authenticate = 1;
        return;
    }
    if (inventory_operator_token_create(inv, who, INV_OP_SESSION, SESSION_TTL, "ui", session) !=
        MQPKI_OK) {
        respond_text(out, 503, "service unavailable, retry later\n");
        return;
    }
    if (asprintf(&out->set_cookie,
                 COOKIE_NAME "=%s; Path=/ui/; Max-Age=%d; HttpOnly; Secure; SameSite=Strict",
                 session, SESSION_TTL) < 0)
        out->set_cookie = NULL;
    OPENSSL_cleanse(session, sizeof(session));
    snprintf(out->location, sizeof(out->location), "%s", safe_next(rq->arg_next));
    respond_text(out, 303, "logged in\n");
}

void ui_handle(struct daemon_ctx *ctx, struct inventory *inv, const struct ui_request *rq,
               struct ui_response *out)
{
    struct mqpki_buf b = {0};
    char who[PROTO_ASSET_ID_MAX + 1];
    const char *url = rq->url;
    int res, rc = MQPKI_ERR_NOT_FOUND;

    memset(out, 0, sizeof(*out));
    if (strncmp(url, "/ui/static/", 11) == 0) {
        /* The stylesheet holds nothing secret: served without a credential. */
        for (const struct web_asset *w = web_assets; w->name != NULL; w++) {
            if (strcmp(url + 11, w->name) == 0 && (out->body = malloc(w->len)) != NULL) {
                memcpy(out->body, w->data, w->len);
                out->len = w->len;
                out->status = 200;
                out->content_type = "text/css; charset=utf-8";
                return;
            }
        }
        respond_text(out, 404, "not found\n");
        return;
    }
    if (inv == NULL) {
        respond_text(out, 503, "service unavailable, retry later\n");
        return;
    }
    if (strcmp(url, "/ui/login") == 0) {
        login(inv, rq, out);
        return;
    }
    if ((res = authenticate(ctx, inv, rq, who)) != AUTH_OK) {
        respond_text(out, res,
                     res == AUTH_FORBIDDEN
                         ? "forbidden: this certificate is not an operator's\n"
                         : "operator credential required (client certificate, bearer token or "
                           "login link: mqpki operator token --login-url)\n");
        out->www_authenticate = res == AUTH_NONE;
        return;
    }
    if (strcmp(url, "/ui") == 0) {
        snprintf(out->location, sizeof(out->location), "/ui/");
        respond_text(out, 301, "see /ui/\n");
        return;
    }
    if (strcmp(url, "/ui/") == 0)
        rc = page_overview(inv, &b, who);
    else if (strcmp(url, "/ui/assets") == 0)
        rc = page_assets(inv, rq, &b, who);
    else if (strcmp(url, "/ui/asset") == 0)
        rc = page_asset(inv, rq, &b, who);
    else if (strcmp(url, "/ui/brokers") == 0)
        rc = page_brokers(ctx, inv, &b, who);
    else if (strcmp(url, "/ui/alerts") == 0)
        rc = page_alerts(&b, who);
    else if (strcmp(url, "/ui/csf") == 0)
        rc = page_csf(ctx, inv, &b, who);
    if (rc == MQPKI_OK && !b.oom && b.p != NULL) {
        out->status = 200;
        out->content_type = "text/html; charset=utf-8";
        out->body = (char *)b.p;
        out->len = b.len;
        return;
    }
    free(b.p);
    if (rc == MQPKI_ERR_NOT_FOUND)
        respond_text(out, 404, "not found\n");
    else if (rc == MQPKI_ERR_INVALID)
        respond_text(out, 400, "bad request\n");
    else {
        mqpki_log(MQPKI_LOG_WARN, "ui: %s: %s", url, mqpki_err_detail(rc));
        respond_text(out, 500, "internal error\n");
    }
}
