/*
 * posture/csf.c: the NIST Cybersecurity Framework report (`mqpki report csf`, docs/csf.md).
 * Every subcategory that software can evidence, keyed to CSF 2.0 ids and to the CSF 1.x ids
 * that the OASIS note "MQTT and the NIST Cybersecurity Framework" uses, gets a state (met,
 * partial, not met) and the live evidence behind it, computed from a posture_check result.
 * The target profile is "met" for each; tiers are derived per function (docs/csf.md).
 */
#include "posture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum { MET, PARTIAL, NOT_MET };
static const char *const state_names[] = {"met", "partial", "not met"};

/* What an evaluator reads. */
struct in {
    const json_t *checks; /* the checks array */
    const json_t *facts;
    const struct posture_opts *o;
};

static json_int_t fact_int(const struct in *in, const char *obj, const char *key)
{
    const json_t *o = json_object_get(in->facts, obj);
    return json_integer_value(json_object_get(o, key));
}

static const char *fact_str(const struct in *in, const char *key)
{
    const char *s = json_string_value(json_object_get(in->facts, key));
    return s != NULL ? s : "";
}

/* A check's status ("pass", "fail", "n/a"), or "" when it did not run. */
static const char *status(const struct in *in, const char *id)
{
    size_t i;
    const json_t *c;

    json_array_foreach(in->checks, i, c)
    {
        if (strcmp(json_string_value(json_object_get(c, "id")), id) == 0)
            return json_string_value(json_object_get(c, "status"));
    }
    return "";
}

static int passed(const struct in *in, const char *id)
{
    return strcmp(status(in, id), "fail") != 0;
}

static int pct(json_int_t part, json_int_t whole)
{
    return whole > 0 ? (int)(part * 100 / whole) : 0;
}

/* Counts of the bundled brokers with a property. */
static int brokers(const struct in *in, const char *key, int *total)
{
    const json_t *list = json_object_get(in->facts, "brokers"), *b;
    size_t i;
    int n = 0;

    *total = (int)json_array_size(list);
    json_array_foreach(list, i, b)
    {
        if (key == NULL) {
            n += json_is_true(json_object_get(b, "plugin")) &&
                 json_is_true(json_object_get(b, "require_certificate")) &&
                 !json_is_true(json_object_get(b, "allow_anonymous"));
        } else {
            n += json_is_true(json_object_get(b, key));
        }
    }
    return n;
}

typedef int (*eval_fn)(const struct in *in, char *ev, size_t size);

static int ev_inventory(const struct in *in, char *ev, size_t size)
{
    json_int_t n = fact_int(in, "assets", "in_service"), total = fact_int(in, "assets", "total");
    int m = pct(fact_int(in, "assets", "with_model"), n);
    int h = pct(fact_int(in, "assets", "with_hw_serial"), n);
    int l = pct(fact_int(in, "assets", "with_location"), n);
    int low = m < h ? m : h;

    low = low < l ? low : l;
    snprintf(ev, size,
             "%lld assets (%lld in service); of those in service: model %d %%, hardware serial "
             "%d %%, location %d %% filled in; conflicting ids: %s",
             (long long)total, (long long)n, m, h, l,
             passed(in, "client-id-conflict") ? "none" : "found (mqpki check)");
    if (n == 0)
        return NOT_MET;
    return low >= 90 && passed(in, "client-id-conflict") ? MET : PARTIAL;
}

static int ev_software(const struct in *in, char *ev, size_t size)
{
    json_int_t n = fact_int(in, "assets", "in_service");
    int f = pct(fact_int(in, "assets", "with_firmware"), n);

    snprintf(ev, size, "firmware version recorded for %d %% of %lld assets in service", f,
             (long long)n);
    return n > 0 && f >= 90 ? MET : f > 0 ? PARTIAL : NOT_MET;
}

static int ev_flows(const struct in *in, char *ev, size_t size)
{
    json_int_t n = fact_int(in, "assets", "in_service"), seen = fact_int(in, "assets", "seen");
    int total, b = brokers(in, "plugin", &total);

    snprintf(ev, size,
             "%d bundled broker(s), %d reporting connections through the plugin; %lld of %lld "
             "assets in service seen connected (last broker and address recorded)",
             total, b, (long long)seen, (long long)n);
    if (b > 0 && n > 0 && pct(seen, n) >= 90)
        return MET;
    return b > 0 || seen > 0 ? PARTIAL : NOT_MET;
}

static int ev_checks(const struct in *in, char *ev, size_t size)
{
    const json_t *c;
    size_t i;
    int pass = 0, fail = 0, high = 0, na = 0;

    json_array_foreach(in->checks, i, c)
    {
        const char *s = json_string_value(json_object_get(c, "status"));
        const char *sev = json_string_value(json_object_get(c, "severity"));
        if (strcmp(s, "pass") == 0)
            pass++;
        else if (strcmp(s, "fail") == 0) {
            fail++;
            high += strcmp(sev, "high") == 0 || strcmp(sev, "critical") == 0;
        } else
            na++;
    }
    snprintf(ev, size, "mqpki check: %d pass, %d fail (%d high or critical), %d not applicable",
             pass, fail, high, na);
    return fail == 0 ? MET : high == 0 ? PARTIAL : NOT_MET;
}

static int ev_identity(const struct in *in, char *ev, size_t size)
{
    json_int_t n = fact_int(in, "assets", "in_service");
    json_int_t v = fact_int(in, "assets", "with_valid_cert");
    int p = pct(v, n);

    snprintf(ev, size,
             "%lld of %lld assets in service (%d %%) hold a valid certificate; keys shared "
             "across assets: %s; keys below policy: %s; certificates expiring within %d days: %s",
             (long long)v, (long long)n, p, passed(in, "shared-key") ? "none" : "found",
             passed(in, "key-strength") ? "none" : "found", in->o->expiry_days,
             passed(in, "cert-expiring") ? "none" : "some (renewal due)");
    if (!passed(in, "shared-key") || n == 0)
        return NOT_MET;
    return p >= 95 && passed(in, "key-strength") ? MET : PARTIAL;
}

static int ev_binding(const struct in *in, char *ev, size_t size)
{
    snprintf(ev, size,
             "each certificate is bound to one inventory asset (subject from the inventory, "
             "never the CSR; one-time enrollment tokens); keys shared: %s; ids conflicting: %s",
             passed(in, "shared-key") ? "none" : "found",
             passed(in, "client-id-conflict") ? "none" : "found");
    return passed(in, "shared-key") && passed(in, "client-id-conflict") ? MET : PARTIAL;
}

static int ev_authn(const struct in *in, char *ev, size_t size)
{
    int total, n = brokers(in, NULL, &total);

    snprintf(ev, size,
             "%d of %d bundled broker(s) require client certificates, refuse anonymous clients "
             "and run the mqpki plugin (revoked certificates refused); CRLs current: %s",
             n, total, passed(in, "crl-stale") ? "yes" : "no");
    if (total == 0)
        return PARTIAL;
    if (n == total && passed(in, "crl-stale"))
        return MET;
    return n > 0 ? PARTIAL : NOT_MET;
}

static int ev_access(const struct in *in, char *ev, size_t size)
{
    int total, n = brokers(in, "plugin", &total);

    snprintf(ev, size,
             "ACLs tied to identity: the plugin lets a device write only under fleet/ID/ on %d "
             "of %d bundled broker(s); ACL file rules reaching beyond it: %s",
             n, total, passed(in, "acl-permissive") ? "none" : "found (mqpki check)");
    if (total == 0)
        return PARTIAL;
    if (n == total && passed(in, "acl-permissive"))
        return MET;
    return n > 0 ? PARTIAL : NOT_MET;
}

static int ev_transit(const struct in *in, char *ev, size_t size)
{
    int total, n = brokers(in, "tls", &total);

    snprintf(ev, size,
             "EST and the dashboard: HTTPS only (TLS 1.2+); %d of %d bundled broker(s) listen "
             "with TLS and mutual authentication",
             n, total);
    return total == 0 ? PARTIAL : n == total ? MET : PARTIAL;
}

static int ev_rest(const struct in *in, char *ev, size_t size)
{
    const char *hsm = fact_str(in, "hsm");
    int embedded = strcmp(hsm, "embedded SoftHSM") == 0;

    snprintf(ev, size,
             "CA and audit keys generated in a PKCS#11 token, non-extractable (%s); CA keys meet "
             "policy: %s; enrollment tokens stored as salted hashes",
             embedded ? "embedded SoftHSM: a software token, keys encrypted at rest"
                      : "external "
                        "module",
             passed(in, "ca-key-strength") ? "yes" : "no");
    if (!passed(in, "ca-key-strength"))
        return NOT_MET;
    return embedded ? PARTIAL : MET;
}

static int ev_logs(const struct in *in, char *ev, size_t size)
{
    const json_t *a = json_object_get(in->facts, "audit");
    int intact = json_is_true(json_object_get(a, "intact"));
    json_int_t cps = json_integer_value(json_object_get(a, "checkpoints"));

    if (json_is_true(json_object_get(a, "skipped"))) {
        snprintf(ev, size,
                 "hash-chained audit log with signed checkpoints; not verified on "
                 "this page (mqpki audit verify, mqpki report csf)");
        return PARTIAL;
    }
    snprintf(ev, size, "hash-chained audit log of %lld event(s), %s; %lld signed checkpoint(s)",
             (long long)json_integer_value(json_object_get(a, "events")),
             intact ? "intact" : "BROKEN", (long long)cps);
    return !intact ? NOT_MET : cps > 0 ? MET : PARTIAL;
}

static int ev_age(const struct in *in, const char *check, const char *key, const char *what,
                  char *ev, size_t size)
{
    const char *when = fact_str(in, key);

    snprintf(ev, size, "last %s: %s", what, when[0] != '\0' ? when : "never");
    if (strcmp(status(in, check), "pass") == 0)
        return MET;
    return strcmp(when, "never") == 0 || when[0] == '\0' ? NOT_MET : PARTIAL;
}

static int ev_backup(const struct in *in, char *ev, size_t size)
{
    char tail[64];
    int s = ev_age(in, "backup-age", "backup.last_at", "backup", ev, size);

    snprintf(tail, sizeof(tail), " (target: within %d days)", in->o->backup_days);
    strncat(ev, tail, size - strlen(ev) - 1);
    return s;
}

static int ev_drill(const struct in *in, char *ev, size_t size)
{
    char tail[64];
    int s = ev_age(in, "drill-age", "drill.last_at", "restore drill", ev, size);

    snprintf(tail, sizeof(tail), " (target: within %d days)", in->o->drill_days);
    strncat(ev, tail, size - strlen(ev) - 1);
    return s;
}

static int ev_restore(const struct in *in, char *ev, size_t size)
{
    int b = strcmp(status(in, "backup-age"), "pass") == 0;
    int d = strcmp(status(in, "drill-age"), "pass") == 0;

    snprintf(ev, size,
             "last backup %s, last restore drill %s; the audit chain verifies the "
             "restored store: %s",
             fact_str(in, "backup.last_at"), fact_str(in, "drill.last_at"),
             passed(in, "audit-chain") ? "yes" : "no");
    return b && d && passed(in, "audit-chain") ? MET : b || d ? PARTIAL : NOT_MET;
}

static int ev_monitor(const struct in *in, char *ev, size_t size)
{
    int total, n = brokers(in, "plugin", &total);
    json_int_t seen = fact_int(in, "assets", "seen"), silent = fact_int(in, "assets", "silent");

    snprintf(ev, size,
             "%d of %d bundled broker(s) report connections; %lld asset(s) seen, %lld active "
             "asset(s) silent for more than %d days; revoked certificates seen connecting: %s; "
             "detectors and events in the last 24 h: detection not available in this build",
             n, total, (long long)seen, (long long)silent, in->o->silent_days,
             passed(in, "revoked-connected") ? "none" : "FOUND");
    if (!passed(in, "revoked-connected"))
        return NOT_MET;
    return n > 0 ? PARTIAL : NOT_MET;
}

static int ev_analysis(const struct in *in, char *ev, size_t size)
{
    snprintf(ev, size, "detection not available in this build (no detectors, events or alerts)");
    return NOT_MET;
}

static int ev_contain(const struct in *in, char *ev, size_t size)
{
    int total, n = brokers(in, "plugin", &total);
    const json_t *crl = json_object_get(in->facts, "crl");

    snprintf(ev, size,
             "revocation publishes a delta CRL at once and the plugin disconnects the client on "
             "%d of %d bundled broker(s); newest full CRL %lld; CRLs current: %s; "
             "revocation-to-disconnect latency: not recorded per revocation in the store "
             "(measured by make bench, docs/performance.md)",
             n, total, (long long)json_integer_value(json_object_get(crl, "full_number")),
             passed(in, "crl-stale") ? "yes" : "no");
    if (total > 0 && n == total && passed(in, "crl-stale") && passed(in, "revoked-connected"))
        return MET;
    return n > 0 ? PARTIAL : NOT_MET;
}

static int ev_mitigate(const struct in *in, char *ev, size_t size)
{
    snprintf(ev, size,
             "%lld certificate(s) revoked, %lld on hold; assets re-enroll with fresh keys "
             "after revocation; revoked certificates seen connecting: %s",
             (long long)fact_int(in, "certs", "revoked"), (long long)fact_int(in, "certs", "held"),
             passed(in, "revoked-connected") ? "none" : "FOUND");
    return passed(in, "revoked-connected") ? MET : NOT_MET;
}

static const struct function {
    const char *id, *name;
} functions[] = {
    {"ID", "Identify"}, {"PR", "Protect"}, {"DE", "Detect"}, {"RS", "Respond"}, {"RC", "Recover"},
};
#define N_FUNCTIONS ((int)(sizeof(functions) / sizeof(functions[0])))

/* The subcategories mqpki evidences (docs/csf.md lists the rest and who owns them). */
static const struct subcategory {
    const char *id;    /* CSF 2.0 */
    const char *oasis; /* CSF 1.x ids as the OASIS note uses them */
    const char *title; /* our short wording */
    eval_fn eval;
} subcategories[] = {
    {"ID.AM-01", "ID.AM-1", "Hardware inventory (devices, brokers, services)", ev_inventory},
    {"ID.AM-02", "ID.AM-2", "Software and firmware inventory", ev_software},
    {"ID.AM-03", "ID.AM-3 DE.AE-1", "Communication and data flows", ev_flows},
    {"ID.RA-01", "ID.RA-1", "Weaknesses of the fleet's credentials identified", ev_checks},
    {"PR.AA-01", "PR.AC-1", "Identities and credentials of devices managed", ev_identity},
    {"PR.AA-02", "PR.AC-6", "Identities proofed and bound to credentials", ev_binding},
    {"PR.AA-03", "PR.AC-7 PR.AC-3", "Devices and services authenticated", ev_authn},
    {"PR.AA-05", "PR.AC-4", "Access permissions least privilege (topic ACLs)", ev_access},
    {"PR.DS-01", "PR.DS-1", "Data at rest: CA keys and secrets", ev_rest},
    {"PR.DS-02", "PR.DS-2", "Data in transit protected (TLS, mutual auth)", ev_transit},
    {"PR.DS-11", "PR.IP-4", "Backups of the CA and store", ev_backup},
    {"PR.PS-04", "PR.PT-1", "Log records generated and protected", ev_logs},
    {"DE.CM-01", "DE.CM-1 DE.CM-7", "Network and connections monitored", ev_monitor},
    {"DE.AE-02", "DE.AE-2 DE.AE-3", "Adverse events analyzed", ev_analysis},
    {"RS.MI-01", "RS.MI-1", "Incidents contained (revocation and disconnect)", ev_contain},
    {"RS.MI-02", "RS.MI-2", "Incidents eradicated (re-issue with fresh keys)", ev_mitigate},
    {"RC.RP-01", "RC.RP-1", "Recovery plan executed (restore drill)", ev_drill},
    {"RC.RP-03", "RC.RP-1 PR.IP-4", "Backups verified before restoring", ev_restore},
};
#define N_SUBCATEGORIES ((int)(sizeof(subcategories) / sizeof(subcategories[0])))

static const char *const tier_names[] = {"", "Partial", "Risk Informed", "Repeatable", "Adaptive"};
#define TARGET_TIER 3

int posture_csf(const json_t *checks, const struct posture_opts *o, json_t **out)
{
    struct in in = {json_object_get(checks, "checks"), json_object_get(checks, "facts"), o};
    json_t *fns = json_array(), *subs = json_array(), *r;
    int counts[N_FUNCTIONS][3];

    memset(counts, 0, sizeof(counts));
    *out = NULL;
    for (int i = 0; i < N_SUBCATEGORIES; i++) {
        const struct subcategory *s = &subcategories[i];
        char ev[1024], fn[3] = {s->id[0], s->id[1], '\0'}, oasis[64], *save = NULL;
        json_t *ids = json_array();
        int st = s->eval(&in, ev, sizeof(ev));
        for (int f = 0; f < N_FUNCTIONS; f++)
            if (strcmp(functions[f].id, fn) == 0)
                counts[f][st]++;
        snprintf(oasis, sizeof(oasis), "%s", s->oasis);
        for (char *t = strtok_r(oasis, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save))
            json_array_append_new(ids, json_string(t));
        json_array_append_new(subs,
                              json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:s}", "id", s->id,
                                        "function", fn, "title", s->title, "oasis", ids, "state",
                                        state_names[st], "target", "met", "evidence", ev));
    }
    for (int f = 0; f < N_FUNCTIONS; f++) {
        int met = counts[f][MET], part = counts[f][PARTIAL], no = counts[f][NOT_MET];
        int n = met + part + no, tier;
        /* Tier from the share of the function's subcategories met (a partial counts half):
         * all met -> 3 Repeatable, at least half -> 2 Risk Informed, else 1 Partial. Tier 4
         * (Adaptive) needs organizational practice that no software can evidence. */
        if (n > 0 && met == n)
            tier = 3;
        else if (n > 0 && 2 * met + part >= n)
            tier = 2;
        else
            tier = 1;
        json_array_append_new(
            fns, json_pack("{s:s, s:s, s:i, s:s, s:i, s:s, s:i, s:i, s:i}", "id", functions[f].id,
                           "name", functions[f].name, "tier", tier, "tier_name", tier_names[tier],
                           "target_tier", TARGET_TIER, "target_tier_name", tier_names[TARGET_TIER],
                           "met", met, "partial", part, "not_met", no));
    }
    r = json_pack("{s:s, s:s, s:O, s:o, s:o, s:s}", "framework", "NIST CSF 2.0", "oasis_note",
                  "MQTT and the NIST Cybersecurity Framework v1.0 (CSF 1.x ids)", "time",
                  json_object_get(checks, "time"), "functions", fns, "subcategories", subs,
                  "target_profile",
                  "every listed subcategory met; tier 3 (Repeatable) per function");
    if (r == NULL)
        return MQPKI_ERR_NOMEM;
    *out = r;
    return MQPKI_OK;
}

/* ---- rendering ---- */

void posture_buf_html(struct mqpki_buf *b, const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        switch (*s) {
        case '&': mqpki_buf_str(b, "&amp;"); break;
        case '<': mqpki_buf_str(b, "&lt;"); break;
        case '>': mqpki_buf_str(b, "&gt;"); break;
        case '"': mqpki_buf_str(b, "&quot;"); break;
        case '\'': mqpki_buf_str(b, "&#39;"); break;
        default: mqpki_buf_put(b, s, 1);
        }
    }
}

static char *buf_done(struct mqpki_buf *b)
{
    if (b->oom || b->p == NULL) {
        free(b->p);
        return NULL;
    }
    return (char *)b->p;
}

static const char *jstr(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s != NULL ? s : "";
}

static int jint(const json_t *o, const char *k)
{
    return (int)json_integer_value(json_object_get(o, k));
}

static void oasis_ids(struct mqpki_buf *b, const json_t *sub, int html)
{
    const json_t *v;
    size_t i;

    json_array_foreach(json_object_get(sub, "oasis"), i, v)
    {
        if (i > 0)
            mqpki_buf_str(b, ", ");
        if (html)
            posture_buf_html(b, json_string_value(v));
        else
            mqpki_buf_str(b, json_string_value(v));
    }
}

static void function_line(struct mqpki_buf *b, const json_t *f)
{
    mqpki_buf_printf(b, "%s (%s): tier %d %s, target %d; %d met, %d partial, %d not met",
                     jstr(f, "name"), jstr(f, "id"), jint(f, "tier"), jstr(f, "tier_name"),
                     jint(f, "target_tier"), jint(f, "met"), jint(f, "partial"),
                     jint(f, "not_met"));
}

char *posture_csf_summary(const json_t *report)
{
    struct mqpki_buf b = {0};
    const json_t *f;
    size_t i;

    json_array_foreach(json_object_get(report, "functions"), i, f)
    {
        function_line(&b, f);
        mqpki_buf_str(&b, "\n");
    }
    return buf_done(&b);
}

char *posture_csf_text(const json_t *report)
{
    struct mqpki_buf b = {0};
    const json_t *f, *s;
    size_t i, j;

    mqpki_buf_printf(&b, "%s posture at %s (ids also as in the OASIS note: %s)\n",
                     jstr(report, "framework"), jstr(report, "time"), jstr(report, "oasis_note"));
    mqpki_buf_printf(&b, "target profile: %s\n", jstr(report, "target_profile"));
    json_array_foreach(json_object_get(report, "functions"), i, f)
    {
        mqpki_buf_str(&b, "\n");
        function_line(&b, f);
        mqpki_buf_str(&b, "\n");
        json_array_foreach(json_object_get(report, "subcategories"), j, s)
        {
            if (strcmp(jstr(s, "function"), jstr(f, "id")) != 0)
                continue;
            mqpki_buf_printf(&b, "  %-9s %-8s %s [OASIS: ", jstr(s, "id"), jstr(s, "state"),
                             jstr(s, "title"));
            oasis_ids(&b, s, 0);
            mqpki_buf_printf(&b, "]\n            %s\n", jstr(s, "evidence"));
        }
    }
    return buf_done(&b);
}

/* Inline CSS only: the file is read offline, by auditors, and never loads anything. */
static const char html_head[] =
    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>mqpki: NIST CSF posture</title>\n<style>\n"
    "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#1d2430;"
    "padding:0 1em}\n"
    "h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin:1.6em 0 .4em}\n"
    "table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .6em;"
    "border-bottom:1px solid #dde2ea;vertical-align:top}\n"
    "th{background:#f3f5f8;font-weight:600}.muted{color:#5b6472}\n"
    ".st{display:inline-block;padding:.05em .55em;border-radius:.8em;font-weight:600;"
    "white-space:nowrap}\n"
    ".met{background:#d7f2dd;color:#14532d}.partial{background:#fdf0c4;color:#6b4d00}"
    ".not-met{background:#fbd9d9;color:#7f1d1d}\n"
    ".tiers td,.tiers th{text-align:center}.tiers td:first-child{text-align:left}\n"
    "code{font-size:.95em}td code{white-space:nowrap}\n</style></head><body>\n";

void posture_csf_html_section(struct mqpki_buf *bp, const json_t *report)
{
#define b (*bp)
    const json_t *f, *s;
    size_t i, j;

    mqpki_buf_str(&b, "<h1>NIST Cybersecurity Framework posture</h1>\n<p class=\"muted\">");
    posture_buf_html(&b, jstr(report, "framework"));
    mqpki_buf_str(&b, " at ");
    posture_buf_html(&b, jstr(report, "time"));
    mqpki_buf_str(&b, "; identifiers also as in the OASIS note <em>");
    posture_buf_html(&b, jstr(report, "oasis_note"));
    mqpki_buf_str(&b, "</em>. Target profile: ");
    posture_buf_html(&b, jstr(report, "target_profile"));
    mqpki_buf_str(&b, ".</p>\n<table class=\"tiers\" id=\"functions\"><tr><th>Function</th>"
                      "<th>Current tier</th><th>Target tier</th><th>Met</th><th>Partial</th>"
                      "<th>Not met</th></tr>\n");
    json_array_foreach(json_object_get(report, "functions"), i, f)
    {
        mqpki_buf_str(&b, "<tr data-function=\"");
        posture_buf_html(&b, jstr(f, "id"));
        mqpki_buf_str(&b, "\"><td>");
        posture_buf_html(&b, jstr(f, "name"));
        mqpki_buf_printf(&b, " (%s)</td><td>%d ", jstr(f, "id"), jint(f, "tier"));
        posture_buf_html(&b, jstr(f, "tier_name"));
        mqpki_buf_printf(&b, "</td><td>%d ", jint(f, "target_tier"));
        posture_buf_html(&b, jstr(f, "target_tier_name"));
        mqpki_buf_printf(&b, "</td><td>%d</td><td>%d</td><td>%d</td></tr>\n", jint(f, "met"),
                         jint(f, "partial"), jint(f, "not_met"));
    }
    mqpki_buf_str(&b, "</table>\n");
    json_array_foreach(json_object_get(report, "functions"), i, f)
    {
        mqpki_buf_str(&b, "<h2>");
        posture_buf_html(&b, jstr(f, "name"));
        mqpki_buf_str(&b, "</h2>\n<table><tr><th>CSF 2.0</th><th>OASIS note</th>"
                          "<th>Subcategory</th><th>Current</th><th>Target</th>"
                          "<th>Evidence</th></tr>\n");
        json_array_foreach(json_object_get(report, "subcategories"), j, s)
        {
            const char *st = jstr(s, "state");
            if (strcmp(jstr(s, "function"), jstr(f, "id")) != 0)
                continue;
            mqpki_buf_str(&b, "<tr class=\"sub\" data-id=\"");
            posture_buf_html(&b, jstr(s, "id"));
            mqpki_buf_str(&b, "\"><td><code>");
            posture_buf_html(&b, jstr(s, "id"));
            mqpki_buf_str(&b, "</code></td><td><code>");
            oasis_ids(&b, s, 1);
            mqpki_buf_str(&b, "</code></td><td>");
            posture_buf_html(&b, jstr(s, "title"));
            mqpki_buf_printf(&b, "</td><td><span class=\"st %s\">",
                             strcmp(st, "met") == 0       ? "met"
                             : strcmp(st, "partial") == 0 ? "partial"
                                                          : "not-met");
            posture_buf_html(&b, st);
            mqpki_buf_str(&b, "</span></td><td>");
            posture_buf_html(&b, jstr(s, "target"));
            mqpki_buf_str(&b, "</td><td>");
            posture_buf_html(&b, jstr(s, "evidence"));
            mqpki_buf_str(&b, "</td></tr>\n");
        }
        mqpki_buf_str(&b, "</table>\n");
    }
    mqpki_buf_str(&b, "<p class=\"muted\">From live data; docs/csf.md maps every subcategory "
                      "and what stays the operator's job.</p>\n");
#undef b
}

char *posture_csf_html(const json_t *report)
{
    struct mqpki_buf b = {0};

    mqpki_buf_str(&b, html_head);
    posture_csf_html_section(&b, report);
    mqpki_buf_str(&b, "</body></html>\n");
    return buf_done(&b);
}
