/*
 * posture/check.c: the fleet audit checks of `mqpki check` (docs/cli.md, docs/csf.md), each
 * from live data: the store, the CA certificates, the bundled brokers' configurations and the
 * CRLs they keep. Every check says pass, fail or n/a with a severity and the affected objects.
 */
#include "posture.h"

#include <ctype.h>
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"

/* The bundled brokers' configuration files are small; anything larger is not ours. */
#define CONF_MAX (64 * 1024)
#define ACL_MAX  (1024 * 1024)
/* Meta keys written by `mqpki backup` and the restore drill (RFC 3339 UTC). */
#define META_BACKUP "backup.last_at"
#define META_DRILL  "drill.last_at"

static const char *const severity_names[] = {"info", "low", "medium", "high", "critical"};

const char *posture_severity_name(int severity)
{
    return severity >= 0 && severity <= POSTURE_CRITICAL ? severity_names[severity] : "unknown";
}

void posture_opts_default(struct posture_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->now = mqpki_now();
    o->expiry_days = 30;
    o->max_age_days = 365;
    o->ca_expiry_days = 365;
    o->backup_days = 7;
    o->drill_days = 90;
    o->silent_days = 7;
    o->revoked_grace = 300;
    o->affected_max = 20;
}

struct run {
    struct datadir *dd;
    struct inventory *inv;
    const struct posture_opts *o;
    json_t *checks;
    json_t *facts;
    int failed, failed_high, worst;
};

/* The affected objects of one check: the first o->affected_max, and the total. */
struct affected {
    json_t *list;
    int64_t total;
    size_t max;
};

static void aff_init(struct affected *a, const struct run *r)
{
    a->list = json_array();
    a->total = 0;
    a->max = r->o->affected_max;
}

static void aff_add(struct affected *a, const char *object, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void aff_add(struct affected *a, const char *object, const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    a->total++;
    if (a->list == NULL || json_array_size(a->list) >= a->max)
        return;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    json_array_append_new(a->list, json_pack("{s:s, s:s}", "object", object, "detail", detail));
}

/*
 * Records one check. status: "pass", "fail" or "n/a"; severity is what a failure weighs
 * (kept on a pass so that the reader sees what the check guards). csf: space-separated CSF
 * 2.0 ids. Takes the affected list (may be NULL).
 */
static void report(struct run *r, const char *id, const char *title, int severity,
                   const char *status, struct affected *a, const char *csf, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));
static void report(struct run *r, const char *id, const char *title, int severity,
                   const char *status, struct affected *a, const char *csf, const char *fmt, ...)
{
    char summary[1024], ids[128], *save = NULL;
    json_t *c, *csf_ids = json_array();
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(summary, sizeof(summary), fmt, ap);
    va_end(ap);
    snprintf(ids, sizeof(ids), "%s", csf);
    for (char *t = strtok_r(ids, " ", &save); t != NULL; t = strtok_r(NULL, " ", &save))
        json_array_append_new(csf_ids, json_string(t));
    c = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:I, s:o}", "id", id, "title", title, "severity",
                  posture_severity_name(severity), "status", status, "summary", summary, "affected",
                  a != NULL && a->list != NULL ? a->list : json_array(), "affected_total",
                  (json_int_t)(a != NULL ? a->total : 0), "csf", csf_ids);
    if (a != NULL)
        a->list = NULL;
    json_array_append_new(r->checks, c);
    if (strcmp(status, "fail") == 0) {
        r->failed++;
        if (severity >= POSTURE_HIGH)
            r->failed_high++;
        if (severity > r->worst)
            r->worst = severity;
    }
}

static void aff_free(struct affected *a)
{
    json_decref(a->list);
    a->list = NULL;
}

static void time_str(int64_t t, char out[32])
{
    if (t <= 0)
        snprintf(out, 32, "never");
    else
        mqpki_time_str(t, out);
}

/* ---- keys ---- */

/*
 * Describes a public key ("EC P-256", "RSA-1024") and whether it meets the policy: EC P-256 or
 * P-384 (DESIGN.md 4), RSA of at least min_rsa bits.
 */
static int key_ok(EVP_PKEY *pkey, int min_rsa, char *label, size_t size)
{
    char group[64];
    int bits, nid;

    if (pkey == NULL) {
        snprintf(label, size, "unreadable key");
        return 0;
    }
    switch (EVP_PKEY_get_base_id(pkey)) {
    case EVP_PKEY_EC:
        if (!EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL)) {
            ERR_clear_error();
            snprintf(label, size, "EC with explicit parameters");
            return 0;
        }
        nid = OBJ_sn2nid(group);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(group);
        snprintf(label, size, "EC %.40s",
                 nid == NID_X9_62_prime256v1 ? "P-256"
                 : nid == NID_secp384r1      ? "P-384"
                                             : group);
        return nid == NID_X9_62_prime256v1 || nid == NID_secp384r1;
    case EVP_PKEY_RSA:
        bits = EVP_PKEY_get_bits(pkey);
        snprintf(label, size, "RSA-%d", bits);
        return bits >= min_rsa;
    default:
        snprintf(label, size, "%s",
                 EVP_PKEY_get0_type_name(pkey) != NULL ? EVP_PKEY_get0_type_name(pkey) : "unknown");
        return 0;
    }
}

static int64_t asn1_time(const ASN1_TIME *t)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

static X509 *load_cert(struct run *r, const char *rel)
{
    char path[4096];
    unsigned char *pem = NULL;
    size_t len = 0;
    X509 *cert = NULL;

    if (datadir_path(r->dd, rel, path) == MQPKI_OK &&
        mqpki_file_read(path, 64 * 1024, &pem, &len) == MQPKI_OK)
        (void)ca_cert_from_pem((const char *)pem, len, &cert);
    free(pem);
    return cert;
}

/* CA certificates: expiry and key strength (CA keys: EC P-256/P-384 or RSA >= 3072). */
static void check_ca(struct run *r)
{
    static const char *const files[] = {"ca/root.pem", "ca/issuing.pem"};
    struct affected exp, weak;
    int64_t horizon = r->o->now + (int64_t)r->o->ca_expiry_days * 86400, first = 0;
    int expired = 0;

    aff_init(&exp, r);
    aff_init(&weak, r);
    for (size_t i = 0; i < 2; i++) {
        X509 *c = load_cert(r, files[i]);
        char label[64], when[32];
        int64_t na;
        if (c == NULL) {
            aff_add(&exp, files[i], "missing or unreadable");
            expired = 1;
            continue;
        }
        na = asn1_time(X509_get0_notAfter(c));
        time_str(na, when);
        if (na <= horizon) {
            aff_add(&exp, files[i], "expires %s", when);
            if (na < r->o->now + 30 * 86400)
                expired = 1;
        }
        if (first == 0 || na < first)
            first = na;
        if (!key_ok(X509_get0_pubkey(c), 3072, label, sizeof(label)))
            aff_add(&weak, files[i], "%s; policy needs EC P-256, EC P-384 or RSA >= 3072 for a CA",
                    label);
        X509_free(c);
    }
    {
        char when[32];
        time_str(first, when);
        json_object_set_new(r->facts, "ca_not_after", json_string(when));
        if (exp.total > 0)
            report(r, "ca-expiry", "CA certificate expiring",
                   expired ? POSTURE_CRITICAL : POSTURE_HIGH, "fail", &exp, "ID.AM-01 PR.AA-01",
                   "%lld CA certificate(s) expire within %d days: plan the rollover",
                   (long long)exp.total, r->o->ca_expiry_days);
        else
            report(r, "ca-expiry", "CA certificate expiring", POSTURE_HIGH, "pass", &exp,
                   "ID.AM-01 PR.AA-01", "the first CA certificate expires %s (more than %d days)",
                   when, r->o->ca_expiry_days);
    }
    if (weak.total > 0)
        report(r, "ca-key-strength", "CA key too weak for policy", POSTURE_HIGH, "fail", &weak,
               "PR.AA-01 PR.DS-01", "%lld CA key(s) below policy", (long long)weak.total);
    else
        report(r, "ca-key-strength", "CA key too weak for policy", POSTURE_HIGH, "pass", &weak,
               "PR.AA-01 PR.DS-01", "root and issuing CA keys meet the policy");
    aff_free(&exp);
    aff_free(&weak);
}

struct keyscan {
    struct affected *a;
    int64_t now, scanned;
};

static int key_cb(const struct inventory_cert *c, void *ctx)
{
    struct keyscan *k = ctx;
    X509 *x = NULL;
    char label[64];

    if (c->not_after < k->now || c->pem == NULL)
        return 0;
    k->scanned++;
    if (ca_cert_from_pem(c->pem, strlen(c->pem), &x) != MQPKI_OK) {
        aff_add(k->a, c->serial, "asset %s: certificate unreadable", c->asset_id);
        return 0;
    }
    if (!key_ok(X509_get0_pubkey(x), 2048, label, sizeof(label)))
        aff_add(k->a, c->serial, "asset %s: %s; policy needs EC P-256, EC P-384 or RSA >= 2048",
                c->asset_id, label);
    X509_free(x);
    return 0;
}

static int check_device_keys(struct run *r)
{
    struct affected weak;
    struct keyscan k;
    int rc;

    aff_init(&weak, r);
    k.a = &weak;
    k.now = r->o->now;
    k.scanned = 0;
    if ((rc = inventory_cert_list(r->inv, NULL, INV_CERT_VALID, 1, key_cb, &k)) != MQPKI_OK ||
        (rc = inventory_cert_list(r->inv, NULL, INV_CERT_SUPERSEDED, 1, key_cb, &k)) != MQPKI_OK)
        goto out;
    if (weak.total > 0)
        report(r, "key-strength", "Device key too weak for policy", POSTURE_HIGH, "fail", &weak,
               "PR.AA-01", "%lld of %lld live certificate(s) certify a key below policy",
               (long long)weak.total, (long long)k.scanned);
    else
        report(r, "key-strength", "Device key too weak for policy", POSTURE_HIGH, "pass", &weak,
               "PR.AA-01", "%lld live certificate(s) checked, every key meets the policy",
               (long long)k.scanned);
out:
    aff_free(&weak);
    return rc;
}

/* ---- store findings ---- */

struct find_ctx {
    struct affected *a;
    int kind;
};

static int find_cb(const char *subject, const char *related, int64_t value, void *ctx)
{
    struct find_ctx *f = ctx;
    char when[32];

    switch (f->kind) {
    case INV_FIND_EXPIRING:
        time_str(value, when);
        aff_add(f->a, subject, "asset %s: expires %s", related, when);
        break;
    case INV_FIND_OLD:
        time_str(value, when);
        aff_add(f->a, subject, "asset %s: issued %s", related, when);
        break;
    case INV_FIND_SHARED_KEY:
        aff_add(f->a, subject, "key certified for %lld assets (mqpki cert list shows which)",
                (long long)value);
        break;
    case INV_FIND_ID_CONFLICT:
        aff_add(f->a, subject, "%lld asset ids differ only in letter case", (long long)value);
        break;
    case INV_FIND_REVOKED_SEEN:
        time_str(value, when);
        aff_add(f->a, subject, "asset %s: revoked, yet seen connected %s", related, when);
        break;
    }
    /* aff_add counts the total itself; the store's total is the authority. */
    return json_array_size(f->a->list) >= f->a->max;
}

static int find(struct run *r, int kind, int64_t a, int64_t b, struct affected *out)
{
    struct find_ctx f = {out, kind};
    int64_t total = 0;
    int rc;

    aff_init(out, r);
    rc = inventory_posture_find(r->inv, kind, r->o->now, a, b, find_cb, &f, &total);
    out->total = total;
    return rc;
}

static int check_store(struct run *r)
{
    const struct posture_opts *o = r->o;
    struct affected a = {0};
    int rc;

    if ((rc = find(r, INV_FIND_EXPIRING, o->now, o->now + (int64_t)o->expiry_days * 86400, &a)) !=
        MQPKI_OK)
        goto out;
    if (a.total > 0)
        report(r, "cert-expiring", "Device certificates expiring soon", POSTURE_MEDIUM, "fail", &a,
               "PR.AA-01", "%lld live certificate(s) expire within %d days (renewal is due)",
               (long long)a.total, o->expiry_days);
    else
        report(r, "cert-expiring", "Device certificates expiring soon", POSTURE_MEDIUM, "pass", &a,
               "PR.AA-01", "no live certificate expires within %d days", o->expiry_days);
    aff_free(&a);

    if ((rc = find(r, INV_FIND_OLD, o->now - (int64_t)o->max_age_days * 86400, 0, &a)) != MQPKI_OK)
        goto out;
    if (a.total > 0)
        report(r, "cert-old", "Device certificates older than policy", POSTURE_LOW, "fail", &a,
               "PR.AA-01", "%lld live certificate(s) were issued more than %d days ago",
               (long long)a.total, o->max_age_days);
    else
        report(r, "cert-old", "Device certificates older than policy", POSTURE_LOW, "pass", &a,
               "PR.AA-01", "no live certificate is older than %d days", o->max_age_days);
    aff_free(&a);

    if ((rc = find(r, INV_FIND_SHARED_KEY, 0, 0, &a)) != MQPKI_OK)
        goto out;
    if (a.total > 0)
        report(r, "shared-key", "Key shared by several assets", POSTURE_CRITICAL, "fail", &a,
               "PR.AA-01 PR.AA-02", "%lld public key(s) are certified for more than one asset",
               (long long)a.total);
    else
        report(r, "shared-key", "Key shared by several assets", POSTURE_CRITICAL, "pass", &a,
               "PR.AA-01 PR.AA-02", "every public key belongs to one asset");
    aff_free(&a);

    if ((rc = find(r, INV_FIND_ID_CONFLICT, 0, 0, &a)) != MQPKI_OK)
        goto out;
    if (a.total > 0)
        report(r, "client-id-conflict", "Conflicting client ids", POSTURE_MEDIUM, "fail", &a,
               "ID.AM-01 PR.AA-01", "%lld group(s) of asset ids differ only in letter case",
               (long long)a.total);
    else
        report(r, "client-id-conflict", "Conflicting client ids", POSTURE_MEDIUM, "pass", &a,
               "ID.AM-01 PR.AA-01", "no two asset ids differ only in letter case");
    aff_free(&a);

    if ((rc = find(r, INV_FIND_REVOKED_SEEN, o->revoked_grace, 0, &a)) != MQPKI_OK)
        goto out;
    if (a.total > 0)
        report(r, "revoked-connected", "Revoked certificate still connecting", POSTURE_CRITICAL,
               "fail", &a, "DE.CM-01 RS.MI-01",
               "%lld revoked certificate(s) whose asset was seen connected after revocation "
               "(a broker without the CRL feed?)",
               (long long)a.total);
    else
        report(r, "revoked-connected", "Revoked certificate still connecting", POSTURE_CRITICAL,
               "pass", &a, "DE.CM-01 RS.MI-01",
               "no asset was seen connected after its last certificate was revoked");
    aff_free(&a);

    /* One issuing CA under the root; the root signs no CRL in this build, so the issuing CA
     * cannot be revoked while in use. */
    report(r, "intermediate-revoked", "Intermediate CA revoked while in use", POSTURE_CRITICAL,
           "n/a", NULL, "PR.AA-01",
           "one issuing CA, never revoked by this build (rollover replaces it: docs/csf.md)");
out:
    aff_free(&a);
    return rc;
}

/* ---- brokers ---- */

struct broker_conf {
    int plugin, fail_closed, allow_anonymous, require_certificate, tls;
    char acl_file[4096];
    char state_dir[4096];
};

/* One `key value` line of a Mosquitto config; value "" when absent. */
static void conf_line(char *line, char **key, char **value)
{
    char *s = line, *e;

    while (isspace((unsigned char)*s))
        s++;
    *key = s;
    while (*s != '\0' && !isspace((unsigned char)*s))
        s++;
    if (*s != '\0')
        *s++ = '\0';
    while (isspace((unsigned char)*s))
        s++;
    *value = s;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
}

static int parse_conf(const char *path, struct broker_conf *bc)
{
    unsigned char *text = NULL;
    size_t len = 0;
    char *save = NULL;
    int rc;

    memset(bc, 0, sizeof(*bc));
    bc->allow_anonymous = -1;
    bc->fail_closed = 0;
    if ((rc = mqpki_file_read(path, CONF_MAX, &text, &len)) != MQPKI_OK)
        return rc;
    for (char *line = strtok_r((char *)text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *k, *v;
        conf_line(line, &k, &v);
        if (*k == '#' || *k == '\0')
            continue;
        if (strcmp(k, "plugin") == 0 || strcmp(k, "auth_plugin") == 0) {
            const char *base = strrchr(v, '/');
            if (strstr(base != NULL ? base : v, "mqpki") != NULL)
                bc->plugin = 1;
        } else if (strcmp(k, "plugin_opt_fail_closed") == 0) {
            bc->fail_closed = strcmp(v, "true") == 0;
        } else if (strcmp(k, "plugin_opt_acl_file") == 0) {
            snprintf(bc->acl_file, sizeof(bc->acl_file), "%s", v);
        } else if (strcmp(k, "plugin_opt_state_dir") == 0) {
            snprintf(bc->state_dir, sizeof(bc->state_dir), "%s", v);
        } else if (strcmp(k, "allow_anonymous") == 0) {
            bc->allow_anonymous = strcmp(v, "true") == 0;
        } else if (strcmp(k, "require_certificate") == 0) {
            bc->require_certificate = strcmp(v, "true") == 0;
        } else if (strcmp(k, "certfile") == 0) {
            bc->tls = 1;
        }
    }
    free(text);
    return MQPKI_OK;
}

/*
 * An ACL file's write rules that let a device write outside fleet/ID/: `WHO PATTERN ACCESS`
 * (broker/acl.c). A write rule is scoped when its pattern is fleet/%u/... ; otherwise it is
 * too broad: high when a wildcard reaches other identities' or arbitrary topics, medium for a
 * fixed topic or one scoped by %u elsewhere.
 */
static void scan_acl(const char *broker, const char *path, struct affected *a, int *worst)
{
    unsigned char *text = NULL;
    size_t len = 0;
    char *save = NULL, obj[300];
    int lineno = 0;

    if (mqpki_file_read(path, ACL_MAX, &text, &len) != MQPKI_OK) {
        snprintf(obj, sizeof(obj), "%s", broker);
        aff_add(a, obj, "ACL file %s unreadable: the plugin refuses to start", path);
        if (*worst < POSTURE_MEDIUM)
            *worst = POSTURE_MEDIUM;
        return;
    }
    for (char *line = strtok_r((char *)text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char *who, *pattern, *access, *s2 = NULL, *hash;
        lineno++;
        if ((hash = strchr(line, '#')) != NULL &&
            (hash == line || isspace((unsigned char)hash[-1])))
            *hash = '\0';
        who = strtok_r(line, " \t\r", &s2);
        pattern = strtok_r(NULL, " \t\r", &s2);
        access = strtok_r(NULL, " \t\r", &s2);
        if (who == NULL || pattern == NULL || access == NULL || strstr(access, "write") == NULL)
            continue;
        if (strncmp(pattern, "fleet/%u/", 9) == 0 || strcmp(pattern, "fleet/%u") == 0)
            continue;
        snprintf(obj, sizeof(obj), "%s:%d", broker, lineno);
        if (strpbrk(pattern, "+#") != NULL && strstr(pattern, "%u") == NULL) {
            aff_add(a, obj, "'%s %s %s' lets %s write to topics of any identity", who, pattern,
                    access, strcmp(who, "*") == 0 ? "every device" : who);
            *worst = POSTURE_HIGH;
        } else {
            aff_add(a, obj, "'%s %s %s' grants writes outside fleet/ID/", who, pattern, access);
            if (*worst < POSTURE_MEDIUM)
                *worst = POSTURE_MEDIUM;
        }
    }
    free(text);
}

/* The nextUpdate and CRL number of a DER CRL file; 0 when unreadable. */
static int64_t crl_file_next(const char *path, int64_t *number)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    size_t len = 0;
    X509_CRL *crl = NULL;
    int64_t next = 0;

    *number = -1;
    if (mqpki_file_read(path, PROTO_CRL_MAX_DER, &der, &len) != MQPKI_OK)
        return 0;
    p = der;
    if ((crl = d2i_X509_CRL(NULL, &p, (long)len)) != NULL) {
        ASN1_INTEGER *n = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
        long v;
        next = asn1_time(X509_CRL_get0_nextUpdate(crl));
        if (n != NULL && (v = ASN1_INTEGER_get(n)) >= 0)
            *number = v;
        ASN1_INTEGER_free(n);
        X509_CRL_free(crl);
    }
    ERR_clear_error();
    free(der);
    return next;
}

struct reported {
    struct run *r;
    struct affected *stale;
    json_t *list;
};

static int reported_cb(const char *broker, int64_t full, int64_t delta, int64_t when, void *ctx)
{
    struct reported *rp = ctx;
    struct inventory_crl c;
    char held[32], at[32];

    time_str(when, at);
    json_array_append_new(rp->list, json_pack("{s:s, s:I, s:I, s:s}", "broker", broker, "full",
                                              (json_int_t)full, "delta", (json_int_t)delta,
                                              "reported_at", at));
    if (full < 0)
        return 0;
    if (inventory_crl_get(rp->r->inv, full, &c) == MQPKI_OK && c.next_update > 0 &&
        c.next_update < rp->r->o->now) {
        time_str(c.next_update, held);
        aff_add(rp->stale, broker, "reports CRL %lld, whose nextUpdate %s has passed",
                (long long)full, held);
    }
    return 0;
}

static int check_brokers(struct run *r)
{
    struct affected noplug, failopen, acl, stale;
    char dir[4096];
    json_t *brokers = json_array(), *reports = json_array();
    struct reported rp;
    DIR *d = NULL;
    struct dirent *e;
    int n = 0, acl_worst = POSTURE_INFO, rc = MQPKI_OK;
    struct inventory_crl latest;

    aff_init(&noplug, r);
    aff_init(&failopen, r);
    aff_init(&acl, r);
    aff_init(&stale, r);
    if (datadir_path(r->dd, "brokers", dir) == MQPKI_OK)
        d = opendir(dir);
    while (d != NULL && (e = readdir(d)) != NULL) {
        char conf[4096 + 300], state[4096 + 300];
        struct broker_conf bc;
        int64_t next = 0, number = -1;
        if (e->d_name[0] == '.' ||
            mqpki_path(conf, sizeof(conf), "%s/%s/mosquitto.conf", dir, e->d_name) != MQPKI_OK ||
            parse_conf(conf, &bc) != MQPKI_OK)
            continue;
        n++;
        if (!bc.plugin)
            aff_add(&noplug, e->d_name,
                    "mosquitto.conf loads no mqpki plugin: revocations are "
                    "not enforced on connected clients");
        if (bc.allow_anonymous == 1)
            aff_add(&noplug, e->d_name, "allow_anonymous true");
        if (!bc.require_certificate)
            aff_add(&noplug, e->d_name, "require_certificate is not true");
        if (bc.plugin && !bc.fail_closed)
            aff_add(&failopen, e->d_name,
                    "plugin_opt_fail_closed false: after a restart without a fresh CRL it "
                    "admits every certificate the CA issued");
        if (bc.plugin && bc.acl_file[0] != '\0')
            scan_acl(e->d_name, bc.acl_file, &acl, &acl_worst);
        if (bc.state_dir[0] != '\0' &&
            mqpki_path(state, sizeof(state), "%s/full.der", bc.state_dir) == MQPKI_OK) {
            next = crl_file_next(state, &number);
            if (next > 0 && next < r->o->now) {
                char when[32];
                time_str(next, when);
                aff_add(&stale, e->d_name, "holds CRL %lld, whose nextUpdate %s has passed",
                        (long long)number, when);
            }
        }
        {
            char when[32];
            time_str(next, when);
            json_array_append_new(
                brokers,
                json_pack("{s:s, s:b, s:b, s:b, s:b, s:b, s:s, s:I, s:s}", "name", e->d_name,
                          "plugin", bc.plugin, "fail_closed", bc.fail_closed, "require_certificate",
                          bc.require_certificate, "allow_anonymous", bc.allow_anonymous == 1, "tls",
                          bc.tls, "acl_file", bc.acl_file, "crl_number", (json_int_t)number,
                          "crl_next_update", next > 0 ? when : "none held"));
        }
    }
    if (d != NULL)
        closedir(d);
    json_object_set_new(r->facts, "brokers", brokers);

    rp.r = r;
    rp.stale = &stale;
    rp.list = reports;
    if ((rc = inventory_broker_crl_list(r->inv, reported_cb, &rp)) != MQPKI_OK) {
        json_decref(reports);
        goto out;
    }
    json_object_set_new(r->facts, "broker_reports", reports);
    if (inventory_crl_latest(r->inv, INV_CRL_FULL, &latest) == MQPKI_OK) {
        char when[32];
        time_str(latest.next_update, when);
        json_object_set_new(
            r->facts, "crl",
            json_pack("{s:I, s:s}", "full_number", (json_int_t)latest.number, "next_update", when));
        if (latest.next_update < r->o->now)
            aff_add(&stale, "CA", "the newest full CRL %lld expired %s: is mqpkid running?",
                    (long long)latest.number, when);
    }

    if (noplug.total > 0)
        report(r, "broker-plugin", "Broker without the plugin or client certificates",
               POSTURE_CRITICAL, "fail", &noplug, "PR.AA-03 PR.AA-05 RS.MI-01",
               "%lld finding(s) on %d bundled broker(s)", (long long)noplug.total, n);
    else
        report(r, "broker-plugin", "Broker without the plugin or client certificates",
               POSTURE_CRITICAL, n > 0 ? "pass" : "n/a", &noplug, "PR.AA-03 PR.AA-05 RS.MI-01",
               n > 0 ? "%d bundled broker(s) load the plugin and require client certificates"
                     : "no bundled broker (%d): external brokers follow the feed (crl-sync)",
               n);
    if (failopen.total > 0)
        report(r, "broker-fail-open", "Broker plugin with fail_closed off", POSTURE_MEDIUM, "fail",
               &failopen, "PR.AA-03 RS.MI-01", "%lld bundled broker(s) fail open",
               (long long)failopen.total);
    else
        report(r, "broker-fail-open", "Broker plugin with fail_closed off", POSTURE_MEDIUM,
               n > 0 ? "pass" : "n/a", &failopen, "PR.AA-03 RS.MI-01",
               "%d bundled broker(s) with fail_closed on", n);
    if (acl.total > 0)
        report(r, "acl-permissive", "ACL overly permissive", acl_worst, "fail", &acl, "PR.AA-05",
               "%lld ACL rule(s) let devices write outside fleet/ID/", (long long)acl.total);
    else
        report(r, "acl-permissive", "ACL overly permissive", POSTURE_HIGH, n > 0 ? "pass" : "n/a",
               &acl, "PR.AA-05",
               "devices write only under fleet/ID/ (the plugin's rule) and what scoped ACL "
               "rules grant");
    if (stale.total > 0)
        report(r, "crl-stale", "CRL past its nextUpdate", POSTURE_HIGH, "fail", &stale,
               "PR.AA-03 RS.MI-01", "%lld CRL(s) held or published are past nextUpdate",
               (long long)stale.total);
    else
        report(r, "crl-stale", "CRL past its nextUpdate", POSTURE_HIGH, "pass", &stale,
               "PR.AA-03 RS.MI-01", "the CA's CRL and every CRL a broker holds are current");
out:
    aff_free(&noplug);
    aff_free(&failopen);
    aff_free(&acl);
    aff_free(&stale);
    return rc;
}

/* ---- recovery and audit ---- */

/* RFC 3339 UTC ("2026-11-30T21:00:00Z", fraction and "+00:00" allowed) -> seconds; 0 bad. */
static int64_t parse_rfc3339(const char *s)
{
    struct tm tm;
    int n = 0;
    const char *p;

    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec, &n) != 6)
        return 0;
    p = s + n;
    if (*p == '.')
        for (p++; isdigit((unsigned char)*p); p++)
            ;
    if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0 && strcmp(p, "z") != 0)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

static void check_age(struct run *r, const char *key, const char *id, const char *title, int days,
                      int severity, const char *csf, const char *what)
{
    char value[128] = "", when[32];
    int64_t t = 0;

    if (inventory_meta_get(r->inv, key, value, sizeof(value)) == MQPKI_OK)
        t = parse_rfc3339(value);
    time_str(t, when);
    json_object_set_new(r->facts, key, json_string(when));
    if (t == 0)
        report(r, id, title, severity, "fail", NULL, csf, "no %s recorded (%s: never)", what, key);
    else if (t < r->o->now - (int64_t)days * 86400)
        report(r, id, title, severity, "fail", NULL, csf, "last %s %s, more than %d days ago", what,
               when, days);
    else
        report(r, id, title, severity, "pass", NULL, csf, "last %s %s (within %d days)", what, when,
               days);
}

static void check_audit(struct run *r)
{
    struct datadir_audit_report rep;
    int rc;

    memset(&rep, 0, sizeof(rep));
    rc = datadir_audit_verify(r->dd, NULL, 0, &rep);
    json_object_set_new(r->facts, "audit",
                        json_pack("{s:b, s:I, s:I}", "intact", rc == MQPKI_OK, "events",
                                  (json_int_t)rep.store.events, "checkpoints",
                                  (json_int_t)rep.store.checkpoints));
    if (rc == MQPKI_OK)
        report(r, "audit-chain", "Audit chain broken", POSTURE_CRITICAL, "pass", NULL,
               "PR.PS-04 DE.CM-09", "%lld event(s) and %lld signed checkpoint(s) verify",
               (long long)rep.store.events, (long long)rep.store.checkpoints);
    else
        report(r, "audit-chain", "Audit chain broken", POSTURE_CRITICAL, "fail", NULL,
               "PR.PS-04 DE.CM-09", "%s", mqpki_err_detail(rc));
}

/*
 * Detection (the broker events, detectors and alerts) is not part of this build yet: its
 * checks report n/a until the events and alerts tables exist.
 * TODO(detection): once the store holds detector settings, report disabled detectors here.
 */
static void check_detection(struct run *r)
{
    json_object_set_new(r->facts, "detection", json_false());
    report(r, "detection-disabled", "Detection rules disabled", POSTURE_HIGH, "n/a", NULL,
           "DE.CM-01 DE.AE-02", "detection not available in this build");
}

static int facts_stats(struct run *r)
{
    struct inventory_posture p;
    json_t *st = json_object(), *kd = json_object();
    int rc;

    if ((rc = inventory_posture_stats(
             r->inv, r->o->now, r->o->now - (int64_t)r->o->silent_days * 86400, &p)) != MQPKI_OK) {
        json_decref(st);
        json_decref(kd);
        return rc;
    }
    for (int s = 0; s <= INV_STATE_DECOMMISSIONED; s++)
        json_object_set_new(st, inventory_state_name(s), json_integer(p.by_state[s]));
    for (int k = 0; k <= INV_KIND_OPERATOR; k++)
        json_object_set_new(kd, inventory_kind_name(k), json_integer(p.by_kind[k]));
    json_object_set_new(
        r->facts, "assets",
        json_pack("{s:I, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "total",
                  (json_int_t)p.assets, "by_state", st, "by_kind", kd, "in_service",
                  (json_int_t)p.in_service, "with_model", (json_int_t)p.with_model,
                  "with_hw_serial", (json_int_t)p.with_hw_serial, "with_firmware",
                  (json_int_t)p.with_firmware, "with_location", (json_int_t)p.with_location,
                  "with_valid_cert", (json_int_t)p.with_valid_cert, "seen", (json_int_t)p.seen,
                  "silent", (json_int_t)p.silent));
    json_object_set_new(r->facts, "certs",
                        json_pack("{s:I, s:I, s:I, s:I}", "valid", (json_int_t)p.certs_valid,
                                  "revoked", (json_int_t)p.certs_revoked, "held",
                                  (json_int_t)p.certs_held, "expired",
                                  (json_int_t)p.certs_expired));
    {
        const struct datadir_config *cfg = datadir_config(r->dd);
        json_object_set_new(
            r->facts, "hsm",
            json_string(cfg->hsm_module[0] == '\0' ? "embedded SoftHSM" : cfg->hsm_module));
    }
    return MQPKI_OK;
}

int posture_check(struct datadir *dd, struct inventory *inv, const struct posture_opts *o,
                  json_t **out, int *failed_high)
{
    struct run r;
    char when[32];
    int rc;

    *out = NULL;
    memset(&r, 0, sizeof(r));
    r.dd = dd;
    r.inv = inv != NULL ? inv : datadir_inventory(dd);
    r.o = o;
    r.checks = json_array();
    r.facts = json_object();
    if (r.inv == NULL || r.checks == NULL || r.facts == NULL) {
        rc = r.inv == NULL ? mqpki_fail(MQPKI_ERR_STATE, "posture: the store is not open")
                           : MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = facts_stats(&r)) != MQPKI_OK)
        goto out;
    check_ca(&r);
    if (o->quick)
        report(&r, "key-strength", "Device key too weak for policy", POSTURE_HIGH, "n/a", NULL,
               "PR.AA-01", "not scanned here (every certificate): run mqpki check");
    else if ((rc = check_device_keys(&r)) != MQPKI_OK)
        goto out;
    if ((rc = check_store(&r)) != MQPKI_OK || (rc = check_brokers(&r)) != MQPKI_OK)
        goto out;
    check_detection(&r);
    check_age(&r, META_BACKUP, "backup-age", "No recent backup", o->backup_days, POSTURE_HIGH,
              "PR.DS-11 RC.RP-03", "backup");
    check_age(&r, META_DRILL, "drill-age", "No recent restore drill", o->drill_days, POSTURE_MEDIUM,
              "RC.RP-01 RC.RP-03", "restore drill");
    if (o->quick) {
        json_object_set_new(r.facts, "audit", json_pack("{s:b}", "skipped", 1));
        report(&r, "audit-chain", "Audit chain broken", POSTURE_CRITICAL, "n/a", NULL,
               "PR.PS-04 DE.CM-09", "not verified here (every event): run mqpki audit verify");
    } else {
        check_audit(&r);
    }
    time_str(o->now, when);
    *out = json_pack("{s:s, s:o, s:o, s:i, s:i, s:s}", "time", when, "checks", r.checks, "facts",
                     r.facts, "failed", r.failed, "failed_high", r.failed_high, "worst",
                     r.failed > 0 ? posture_severity_name(r.worst) : "none");
    r.checks = r.facts = NULL;
    if (*out == NULL)
        rc = MQPKI_ERR_NOMEM;
    if (failed_high != NULL)
        *failed_high = r.failed_high;
out:
    json_decref(r.checks);
    json_decref(r.facts);
    return rc;
}
