/*
 * cli: day-two commands (docs/operations.md, "Day two"): cert show, cert expiring,
 * ca fingerprint, revoke by selector, unhold of an asset, asset import.
 */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"
#include "proto.h"

json_t *cli_cert_json(const struct inventory_cert *c);

/* ---- progress ------------------------------------------------------------------------- */

struct progress {
    const char *what;
    int tty;      /* only a terminal gets the bar */
    int last_pct; /* redrawn when the percentage changes */
};

static void progress_init(struct progress *p, const char *what)
{
    p->what = what;
    p->tty = isatty(STDERR_FILENO);
    p->last_pct = -1;
}

static void progress_show(struct progress *p, size_t done, size_t n)
{
    int pct, width = 30, filled;

    if (!p->tty || n == 0)
        return;
    pct = (int)(done * 100 / n);
    if (pct == p->last_pct && done != n)
        return;
    p->last_pct = pct;
    filled = pct * width / 100;
    fprintf(stderr, "\r%s [%.*s%*s] %3d%% %zu/%zu", p->what, filled,
            "##############################", width - filled, "", pct, done, n);
    if (done == n)
        fputc('\n', stderr);
    fflush(stderr);
}

static void progress_cb(size_t done, size_t n, void *ctx)
{
    progress_show(ctx, done, n);
}

/* ---- cert show ------------------------------------------------------------------------ */

int cmd_cert_show(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"serial", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct inventory_cert cert;
    struct datadir *dd = NULL;
    const char *serial_arg = NULL;
    char serial[PROTO_SERIAL_HEX_MAX + 1], t[32];
    json_t *v = NULL;
    int c, rc, json = 0;

    memset(&cert, 0, sizeof(cert));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': serial_arg = optarg; break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help("usage: mqpki cert show --serial HEX [--json]\n\n"
                            "One certificate's record: asset, profile, state, validity, key\n"
                            "fingerprint, revocation, first use and renewal. 'mqpki cert get'\n"
                            "prints its PEM.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (serial_arg == NULL)
        return cli_usage_error(cli, "--serial is required");
    if (proto_serial_norm(serial_arg, serial) != 0)
        return cli_usage_error(cli, "--serial: expected a hexadecimal serial number (at most %d "
                                    "digits)",
                               PROTO_SERIAL_HEX_MAX);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    rc = inventory_cert_get(datadir_inventory(dd), serial, 0, &cert);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "no certificate with serial %s in the store", serial);
    if (rc != MQPKI_OK)
        goto out;
    if (json) {
        if ((v = cli_cert_json(&cert)) == NULL ||
            json_object_set_new(v, "seen_at", cli_json_time(cert.seen_at)) != 0 ||
            json_object_set_new(v, "superseded_at", cli_json_time(cert.superseded_at)) != 0 ||
            json_object_set_new(v, "superseded_by", cert.superseded_by[0]
                                                        ? json_string(cert.superseded_by)
                                                        : json_null()) != 0) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        rc = cli_print_json(v);
        v = NULL;
        goto out;
    }
    printf("serial           %s\n", cert.serial);
    printf("asset            %s\n", cert.asset_id);
    printf("profile          %s\n", cert.profile);
    printf("state            %s\n", inventory_cert_state_name(cert.state));
    printf("not before       %s\n", cli_time(cert.not_before, t));
    printf("not after        %s\n", cli_time(cert.not_after, t));
    printf("key fingerprint  %s\n", cert.key_fp);
    if (cert.revoked_at) {
        printf("revoked at       %s\n", cli_time(cert.revoked_at, t));
        printf("reason           %s\n",
               cert.reason >= 0 ? ca_reason_name((enum ca_reason)cert.reason) : "-");
    }
    printf("first seen       %s\n", cli_time(cert.seen_at, t));
    if (cert.superseded_at) {
        printf("superseded at    %s\n", cli_time(cert.superseded_at, t));
        printf("superseded by    %s\n", cert.superseded_by[0] ? cert.superseded_by : "-");
    }
out:
    json_decref(v);
    inventory_cert_clear(&cert);
    datadir_close(dd);
    return rc;
}

/* ---- cert expiring -------------------------------------------------------------------- */

struct expiring {
    int json;
    size_t n;
};

static int print_expiring(const struct inventory_cert *c, void *ctx)
{
    struct expiring *e = ctx;
    char t[32];

    if (e->json) {
        json_t *v = cli_cert_json(c);
        char *text = v != NULL ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        fputs(e->n ? ",\n  " : "\n  ", stdout);
        if (text != NULL)
            fputs(text, stdout);
        free(text);
        json_decref(v);
    } else {
        if (e->n == 0)
            printf("%-20s  %-40s %-20s %s\n", "NOT AFTER", "SERIAL", "ASSET", "PROFILE");
        printf("%-20s  %-40s %-20s %s\n", cli_time(c->not_after, t), c->serial, c->asset_id,
               c->profile);
    }
    e->n++;
    return 0;
}

int cmd_cert_expiring(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"within", required_argument, NULL, 'w'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct expiring e = {0};
    struct datadir *dd = NULL;
    int64_t within = 30 * 86400, now = mqpki_now();
    int c, rc = MQPKI_OK;

    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'w':
            rc = cli_parse_duration(cli, "--within", optarg, 1, 3650LL * 86400, &within);
            break;
        case 'j': e.json = 1; break;
        case 'h':
            return cli_help("usage: mqpki cert expiring [--within 30d] [--json]\n\n"
                            "The valid certificates that expire within the window (default 30d;\n"
                            "units s, m, h, d), earliest first: devices that did not renew.\n"
                            "Superseded certificates are left out (their renewal happened).\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        return rc;
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (e.json)
        fputs("[", stdout);
    rc = inventory_cert_list_expiring(datadir_inventory(dd), now, now + within, print_expiring,
                                      &e);
    if (e.json)
        fputs(e.n ? "\n]\n" : "]\n", stdout);
    else if (rc == MQPKI_OK && e.n == 0)
        printf("no valid certificate expires within %lldd%s\n", (long long)(within / 86400),
               within % 86400 ? " (and part of a day)" : "");
out:
    datadir_close(dd);
    return rc;
}

/* ---- ca fingerprint ------------------------------------------------------------------- */

static int fingerprint(X509 *x, char out[3 * 32])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (x == NULL || X509_digest(x, EVP_sha256(), md, &n) != 1 || n != 32)
        return mqpki_fail(MQPKI_ERR_INTERNAL, "cannot hash a CA certificate");
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 3 * i, 4, "%02X%s", md[i], i + 1 < n ? ":" : "");
    return MQPKI_OK;
}

int cmd_ca_fingerprint(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    char root[3 * 32], issuing[3 * 32], subject[256];
    int c, rc, json = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help("usage: mqpki ca fingerprint [--json]\n\n"
                            "SHA-256 fingerprints of the root and issuing CA certificates, as\n"
                            "'openssl x509 -fingerprint -sha256' prints them: the root's is the\n"
                            "pin for 'mqpki-device enroll --ca-fingerprint'.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_CA, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = fingerprint(ca_root_cert(datadir_ca(dd)), root)) != MQPKI_OK ||
        (rc = fingerprint(ca_issuing_cert(datadir_ca(dd)), issuing)) != MQPKI_OK)
        goto out;
    if (json) {
        rc = cli_print_json(json_pack("{s:s, s:s}", "root", root, "issuing", issuing));
        goto out;
    }
    X509_NAME_oneline(X509_get_subject_name(ca_root_cert(datadir_ca(dd))), subject,
                      sizeof(subject));
    printf("root     SHA256 %s  %s\n", root, subject);
    X509_NAME_oneline(X509_get_subject_name(ca_issuing_cert(datadir_ca(dd))), subject,
                      sizeof(subject));
    printf("issuing  SHA256 %s  %s\n", issuing, subject);
out:
    datadir_close(dd);
    return rc;
}

/* ---- revoke by selector --------------------------------------------------------------- */

/* Which assets a selector names: FIELD=VALUE with FIELD location, model, firmware, kind or
 * tag.KEY; or --tag KEY[=VALUE], --model M. */
struct selector {
    char field[16];
    char key[65]; /* tag key */
    const char *value; /* NULL: a tag merely present */
    char **ids;
    size_t n, cap;
    int oom;
};

static int selector_parse(struct cli *cli, const char *opt, const char *text, struct selector *s)
{
    const char *eq = strchr(text, '=');
    size_t fl = eq != NULL ? (size_t)(eq - text) : strlen(text);

    memset(s, 0, sizeof(*s));
    if (strcmp(opt, "--model") == 0) {
        snprintf(s->field, sizeof(s->field), "model");
        s->value = text;
        return MQPKI_OK;
    }
    if (strcmp(opt, "--tag") == 0) {
        if (fl == 0 || fl >= sizeof(s->key))
            return cli_usage_error(cli, "--tag '%.80s': expected KEY or KEY=VALUE", text);
        snprintf(s->field, sizeof(s->field), "tag");
        memcpy(s->key, text, fl);
        s->value = eq != NULL ? eq + 1 : NULL;
        return MQPKI_OK;
    }
    if (eq == NULL || fl == 0)
        return cli_usage_error(cli, "--selector '%.80s': expected FIELD=VALUE (location, model, "
                                    "firmware, kind, tag.KEY)",
                               text);
    s->value = eq + 1;
    if (fl > 4 && strncmp(text, "tag.", 4) == 0 && fl - 4 < sizeof(s->key)) {
        snprintf(s->field, sizeof(s->field), "tag");
        memcpy(s->key, text + 4, fl - 4);
        return MQPKI_OK;
    }
    if (fl < sizeof(s->field)) {
        memcpy(s->field, text, fl);
        if (strcmp(s->field, "location") == 0 || strcmp(s->field, "model") == 0 ||
            strcmp(s->field, "firmware") == 0 || strcmp(s->field, "kind") == 0)
            return MQPKI_OK;
    }
    return cli_usage_error(cli, "--selector '%.80s': FIELD is location, model, firmware, kind or "
                                "tag.KEY",
                           text);
}

static int selector_match(const struct selector *s, const struct inventory_asset *a)
{
    json_t *tags, *v;
    int m = 0;

    if (strcmp(s->field, "location") == 0)
        return strcmp(a->location, s->value) == 0;
    if (strcmp(s->field, "model") == 0)
        return strcmp(a->model, s->value) == 0;
    if (strcmp(s->field, "firmware") == 0)
        return strcmp(a->firmware, s->value) == 0;
    if (strcmp(s->field, "kind") == 0)
        return strcmp(inventory_kind_name(a->kind), s->value) == 0;
    if (a->tags_json == NULL || strcmp(a->tags_json, "{}") == 0)
        return 0;
    if ((tags = json_loads(a->tags_json, 0, NULL)) == NULL)
        return 0;
    v = json_object_get(tags, s->key);
    m = v != NULL && (s->value == NULL ||
                      (json_is_string(v) && strcmp(json_string_value(v), s->value) == 0));
    json_decref(tags);
    return m;
}

static int collect_selected(const struct inventory_asset *a, void *ctx)
{
    struct selector *s = ctx;

    /* Decommissioned assets have nothing left to revoke. */
    if (a->state == INV_STATE_DECOMMISSIONED || !selector_match(s, a))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 64;
        void *v = realloc(s->ids, cap * sizeof(*s->ids));
        if (v == NULL) {
            s->oom = 1;
            return 1;
        }
        s->ids = v;
        s->cap = cap;
    }
    if ((s->ids[s->n] = strdup(a->id)) == NULL) {
        s->oom = 1;
        return 1;
    }
    s->n++;
    return 0;
}

/* Asks on the terminal (standard input and error); 1 for yes, 0 for no, -1 when standard input
 * is not a terminal (then only --yes goes on: a script must say so). */
static int confirm(const char *question)
{
    char line[16];

    if (!isatty(STDIN_FILENO))
        return -1;
    fprintf(stderr, "%s [y/N] ", question);
    fflush(stderr);
    if (fgets(line, sizeof(line), stdin) == NULL)
        line[0] = '\0';
    return line[0] == 'y' || line[0] == 'Y';
}

int cli_revoke_selector(struct cli *cli, const char *opt, const char *text, int reason, int yes)
{
    struct selector s;
    struct lifecycle_change ch;
    struct progress p;
    struct datadir *dd = NULL;
    char question[512], what[200];
    int rc, ok;

    if ((rc = selector_parse(cli, opt, text, &s)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_asset_list(datadir_inventory(dd), -1, -1, collect_selected, &s)) !=
        MQPKI_OK)
        goto out;
    if (s.oom) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "out of memory selecting assets");
        goto out;
    }
    snprintf(what, sizeof(what), "%s %.160s", opt, text);
    if (s.n == 0) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no asset matches %s", what);
        goto out;
    }
    if (!yes) {
        snprintf(question, sizeof(question),
                 "revoke (%s) every live certificate of %zu asset%s matching %s?",
                 ca_reason_name((enum ca_reason)reason), s.n, s.n == 1 ? "" : "s", what);
        if ((ok = confirm(question)) < 0) {
            rc = cli_usage_error(cli, "%zu assets match %s: confirm on a terminal or give --yes",
                                 s.n, what);
            goto out;
        }
        if (!ok) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "nothing revoked (not confirmed)");
            goto out;
        }
    }
    progress_init(&p, "revoking");
    if ((rc = lifecycle_revoke_assets(datadir_lifecycle(dd), (const char *const *)s.ids, s.n,
                                      reason, "cli", progress_cb, &p, &ch)) != MQPKI_OK)
        goto out;
    printf("%zu asset%s %s: ", s.n, s.n == 1 ? " matches" : "s match", what);
    if (ch.changed == 0) {
        printf("no live certificate to revoke (%d already revoked)\n", ch.already);
        goto out;
    }
    rc = cli_publish_change(dd, &ch, reason == CA_REASON_HOLD ? "put on hold" : "revoked",
                            reason == CA_REASON_HOLD ? NULL
                                                     : ca_reason_name((enum ca_reason)reason));
out:
    for (size_t i = 0; i < s.n; i++)
        free(s.ids[i]);
    free(s.ids);
    datadir_close(dd);
    return rc;
}

/* ---- unhold --asset ------------------------------------------------------------------- */

int cli_unhold_asset(struct cli *cli, const char *asset)
{
    struct lifecycle_change ch;
    struct datadir *dd = NULL;
    int rc;

    if (!proto_asset_id_valid(asset))
        return cli_usage_error(cli, "--asset '%.80s': not a valid asset id", asset);
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = lifecycle_unhold_asset(datadir_lifecycle(dd), asset, "cli", &ch)) != MQPKI_OK)
        goto out;
    rc = cli_publish_change(dd, &ch, "released from hold", NULL);
out:
    datadir_close(dd);
    return rc;
}

/* ---- asset import --------------------------------------------------------------------- */

#define IMPORT_FILE_MAX   (512u * 1024 * 1024) /* 100,000 rows are about 10 MB */
#define IMPORT_LINE_MAX   8192
#define IMPORT_BATCH      1000 /* rows per transaction */
#define IMPORT_ERRORS_MAX 50   /* lines reported before "... and N more" */

struct import_row {
    struct inventory_asset a;
    size_t line; /* CSV line, or JSON array entry (from 1) */
};

struct import {
    const char *file;
    int json;
    struct import_row *rows;
    size_t n, cap;
    size_t errors;
};

static void import_error(struct import *im, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void import_error(struct import *im, size_t line, const char *fmt, ...)
{
    va_list ap;

    if (im->errors++ < IMPORT_ERRORS_MAX) {
        fprintf(stderr, "%s:%s%zu: ", im->file, im->json ? " entry " : "", line);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
    }
}

static struct import_row *import_add(struct import *im, size_t line)
{
    struct import_row *r;

    if (im->n == im->cap) {
        size_t cap = im->cap ? 2 * im->cap : 1024;
        void *v = realloc(im->rows, cap * sizeof(*im->rows));
        if (v == NULL)
            return NULL;
        im->rows = v;
        im->cap = cap;
    }
    r = &im->rows[im->n++];
    memset(r, 0, sizeof(*r));
    r->a.kind = INV_KIND_DEVICE;
    r->line = line;
    return r;
}

/* Sets one field of an imported asset from text; 0 when valid, else reports the line. */
static int import_field(struct import *im, struct import_row *r, const char *name,
                        const char *value)
{
    struct inventory_asset *a = &r->a;
    char *dst = NULL;
    size_t size = 0;

    if (strcmp(name, "id") == 0) {
        if (!proto_asset_id_valid(value)) {
            import_error(im, r->line, "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 "
                                      "characters, not starting with . or -",
                         value);
            return -1;
        }
        snprintf(a->id, sizeof(a->id), "%s", value);
        return 0;
    }
    if (strcmp(name, "kind") == 0) {
        if ((a->kind = inventory_kind_parse(value)) < 0) {
            import_error(im, r->line, "kind '%.40s': use device, broker or service", value);
            return -1;
        }
        return 0;
    }
    if (strcmp(name, "tags") == 0) {
        json_t *tags;
        if (value[0] == '{') {
            tags = json_loads(value, JSON_REJECT_DUPLICATES, NULL);
        } else {
            /* k=v;k2=v2 */
            char buf[IMPORT_LINE_MAX], *save = NULL, *kv;
            tags = json_object();
            snprintf(buf, sizeof(buf), "%s", value);
            for (kv = strtok_r(buf, ";", &save); tags != NULL && kv != NULL;
                 kv = strtok_r(NULL, ";", &save)) {
                char *eq = strchr(kv, '=');
                if (eq == NULL || eq == kv || eq - kv > 64 ||
                    (*eq = '\0', json_object_set_new(tags, kv, json_string(eq + 1))) != 0) {
                    json_decref(tags);
                    tags = NULL;
                }
            }
        }
        if (tags == NULL || !json_is_object(tags) ||
            (a->tags_json = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
            import_error(im, r->line, "tags '%.80s': expected K=V;K2=V2 or a JSON object", value);
            json_decref(tags);
            return -1;
        }
        json_decref(tags);
        return 0;
    }
    if (strcmp(name, "model") == 0)
        dst = a->model, size = sizeof(a->model);
    else if (strcmp(name, "serial") == 0 || strcmp(name, "hw_serial") == 0)
        dst = a->hw_serial, size = sizeof(a->hw_serial);
    else if (strcmp(name, "firmware") == 0)
        dst = a->firmware, size = sizeof(a->firmware);
    else if (strcmp(name, "location") == 0)
        dst = a->location, size = sizeof(a->location);
    if (dst == NULL) {
        import_error(im, r->line, "unknown field '%.40s' (id, kind, model, serial, firmware, "
                                  "location, tags)",
                     name);
        return -1;
    }
    if (strlen(value) >= size) {
        import_error(im, r->line, "%s: at most %zu characters", name, size - 1);
        return -1;
    }
    memcpy(dst, value, strlen(value) + 1);
    return 0;
}

/* Splits one CSV line (RFC 4180 quoting, no line breaks inside a field) in place. */
static int csv_split(char *line, char **cells, int max)
{
    int n = 0;
    char *p = line, *w;

    for (;;) {
        if (n == max)
            return -1;
        if (*p == '"') {
            cells[n++] = w = ++p;
            for (;;) {
                if (*p == '\0')
                    return -1; /* unterminated quote */
                if (*p == '"' && p[1] == '"') {
                    *w++ = '"';
                    p += 2;
                } else if (*p == '"') {
                    p++;
                    break;
                } else {
                    *w++ = *p++;
                }
            }
            if (*p != ',' && *p != '\0')
                return -1;
            *w = '\0';
        } else {
            cells[n++] = p;
            while (*p != ',' && *p != '\0')
                p++;
        }
        if (*p == '\0')
            return n;
        *p++ = '\0';
    }
}

#define CSV_COLS_MAX 16

static int import_csv(struct import *im, char *text)
{
    char *cols[CSV_COLS_MAX], *cells[CSV_COLS_MAX], *line, *next;
    int ncols = -1, have_id = 0;
    size_t lineno = 0;

    for (line = text; line != NULL && *line != '\0'; line = next) {
        struct import_row *r;
        int n, bad = 0;
        size_t len;

        lineno++;
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        len = strlen(line);
        if (len > 0 && line[len - 1] == '\r')
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        if (len > IMPORT_LINE_MAX) {
            import_error(im, lineno, "line longer than %d bytes", IMPORT_LINE_MAX);
            continue;
        }
        if (ncols < 0) {
            /* The header names the columns. */
            if ((ncols = csv_split(line, cols, CSV_COLS_MAX)) < 0) {
                import_error(im, lineno, "header: malformed CSV");
                return -1;
            }
            for (int i = 0; i < ncols; i++)
                have_id |= strcmp(cols[i], "id") == 0;
            if (!have_id) {
                import_error(im, lineno, "header: no 'id' column (id, kind, model, serial, "
                                         "firmware, location, tags)");
                return -1;
            }
            continue;
        }
        if ((n = csv_split(line, cells, CSV_COLS_MAX)) < 0) {
            import_error(im, lineno, "malformed CSV: a quote not closed, text after a closing "
                                     "quote, or more than %d fields",
                         CSV_COLS_MAX);
            continue;
        }
        if (n != ncols) {
            import_error(im, lineno, "%d fields, the header has %d", n, ncols);
            continue;
        }
        if ((r = import_add(im, lineno)) == NULL)
            return mqpki_fail(MQPKI_ERR_NOMEM, "out of memory");
        for (int i = 0; i < ncols && !bad; i++)
            if (cells[i][0] != '\0' || strcmp(cols[i], "id") == 0)
                bad = import_field(im, r, cols[i], cells[i]) != 0;
        if (bad) {
            free(r->a.tags_json);
            im->n--;
        }
    }
    return 0;
}

static int import_json(struct import *im, const char *text, size_t len)
{
    json_error_t err;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err), *item, *val;
    const char *key;
    size_t i;
    int rc = 0;

    if (v == NULL || !json_is_array(v)) {
        fprintf(stderr, "%s:%d: %s\n", im->file, v == NULL ? err.line : 1,
                v == NULL ? err.text : "expected a JSON array of asset objects");
        im->errors++;
        json_decref(v);
        return -1;
    }
    json_array_foreach(v, i, item)
    {
        struct import_row *r;
        int bad = 0;

        if (!json_is_object(item)) {
            import_error(im, i + 1, "not an object");
            continue;
        }
        if ((r = import_add(im, i + 1)) == NULL) {
            rc = mqpki_fail(MQPKI_ERR_NOMEM, "out of memory");
            break;
        }
        if (!json_is_string(json_object_get(item, "id"))) {
            import_error(im, i + 1, "no \"id\"");
            bad = 1;
        }
        json_object_foreach(item, key, val)
        {
            char *dumped = NULL;
            const char *s;
            if (bad)
                break;
            if (strcmp(key, "tags") == 0 && json_is_object(val))
                s = dumped = json_dumps(val, JSON_COMPACT);
            else if (json_is_string(val))
                s = json_string_value(val);
            else if (json_is_null(val))
                continue;
            else {
                import_error(im, i + 1, "\"%.40s\": expected a string", key);
                bad = 1;
                break;
            }
            bad = s == NULL || import_field(im, r, key, s) != 0;
            free(dumped);
        }
        if (bad) {
            free(r->a.tags_json);
            im->n--;
        }
    }
    json_decref(v);
    return rc;
}

int cmd_asset_import(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct import im = {0};
    struct progress p;
    struct datadir *dd = NULL;
    struct inventory *inv;
    unsigned char *text = NULL;
    size_t len = 0, imported = 0, batches_bad = 0;
    const char *dot;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help(
                "usage: mqpki asset import FILE.csv|FILE.json\n\n"
                "Registers assets in bulk. CSV: a header naming the columns (id, kind, model,\n"
                "serial, firmware, location, tags as K=V;K2=V2), one asset a line. JSON: an\n"
                "array of objects with the same keys (tags an object). kind defaults to\n"
                "device. The whole file is checked first: any bad line is reported (FILE:LINE)\n"
                "and nothing is imported. Rows are then written 1,000 per transaction; a\n"
                "batch with a row the store refuses (an id that exists) is rolled back whole\n"
                "and its lines reported, the other batches stay. A progress bar shows on a\n"
                "terminal. Example:\n"
                "  printf 'id,kind,location\\nmeter-1,device,feeder-12\\n' > a.csv\n"
                "  mqpki asset import a.csv\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one FILE.csv or FILE.json");
    im.file = argv[optind];
    dot = strrchr(im.file, '.');
    if (dot == NULL || (strcasecmp(dot, ".csv") != 0 && strcasecmp(dot, ".json") != 0))
        return cli_usage_error(cli, "'%.80s': expected a .csv or .json file", im.file);
    im.json = strcasecmp(dot, ".json") == 0;
    if ((rc = mqpki_file_read(im.file, IMPORT_FILE_MAX, &text, &len)) != MQPKI_OK)
        goto out;
    if (memchr(text, '\0', len) != NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: not a text file (NUL byte)", im.file);
        goto out;
    }
    rc = im.json ? import_json(&im, (const char *)text, len) : import_csv(&im, (char *)text);
    if (rc > 0)
        goto out;
    if (im.errors > 0) {
        if (im.errors > IMPORT_ERRORS_MAX)
            fprintf(stderr, "%s: ... and %zu more\n", im.file, im.errors - IMPORT_ERRORS_MAX);
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: %zu bad %s; nothing imported", im.file, im.errors,
                        im.json ? (im.errors == 1 ? "entry" : "entries")
                                : (im.errors == 1 ? "line" : "lines"));
        goto out;
    }
    if (im.n == 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: no asset in it", im.file);
        goto out;
    }
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    inv = datadir_inventory(dd);
    progress_init(&p, "importing");
    for (size_t b = 0; b < im.n; b += IMPORT_BATCH) {
        size_t end = b + IMPORT_BATCH < im.n ? b + IMPORT_BATCH : im.n;
        int bad = 0;
        if ((rc = inventory_begin(inv)) != MQPKI_OK)
            goto out;
        for (size_t i = b; i < end; i++) {
            struct inventory_asset *a = &im.rows[i].a;
            if (a->tags_json == NULL && (a->tags_json = strdup("{}")) == NULL) {
                inventory_rollback(inv);
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
            /* Each add is a savepoint: a refused row leaves nothing; the batch then goes. */
            if ((rc = inventory_asset_add(inv, a, "cli:import")) != MQPKI_OK) {
                if (rc != MQPKI_ERR_EXISTS && rc != MQPKI_ERR_INVALID) {
                    inventory_rollback(inv);
                    goto out;
                }
                import_error(&im, im.rows[i].line, "%s", mqpki_err_detail(rc));
                mqpki_err_clear();
                bad = 1;
            }
        }
        if (bad) {
            inventory_rollback(inv);
            batches_bad++;
            fprintf(stderr, "%s: rows of lines %zu to %zu not imported (batch rolled back)\n",
                    im.file, im.rows[b].line, im.rows[end - 1].line);
        } else if ((rc = inventory_commit(inv)) != MQPKI_OK) {
            goto out;
        } else {
            imported += end - b;
        }
        progress_show(&p, end, im.n);
    }
    rc = MQPKI_OK;
    if (im.errors > IMPORT_ERRORS_MAX)
        fprintf(stderr, "%s: ... and %zu more refused rows\n", im.file,
                im.errors - IMPORT_ERRORS_MAX);
    printf("%zu asset%s imported from %s\n", imported, imported == 1 ? "" : "s", im.file);
    if (batches_bad > 0)
        rc = mqpki_fail(MQPKI_ERR_EXISTS,
                        "%s: %zu of %zu assets not imported (%zu batch%s rolled back, lines above)",
                        im.file, im.n - imported, im.n, batches_bad, batches_bad == 1 ? "" : "es");
out:
    for (size_t i = 0; i < im.n; i++)
        free(im.rows[i].a.tags_json);
    free(im.rows);
    free(text);
    datadir_close(dd);
    return rc;
}

/* ---- tidy ----------------------------------------------------------------------------- */

static long long store_bytes(const char *db)
{
    char wal[PATH_MAX];
    struct stat st;
    long long n = 0;

    if (stat(db, &st) == 0)
        n += st.st_size;
    if (mqpki_path(wal, sizeof(wal), "%s-wal", db) == MQPKI_OK && stat(wal, &st) == 0)
        n += st.st_size;
    return n;
}

int cmd_tidy(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"dry-run", no_argument, NULL, 'n'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const struct datadir_config *cfg;
    struct inventory_tidy t;
    struct datadir *dd = NULL;
    char db[PATH_MAX], t1[32], t2[32];
    int64_t now = mqpki_now(), cert_before, token_before, freed = 0;
    long long before = 0, after = 0;
    int c, rc, dry = 0, json = 0, switched = 0, remote = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': dry = 1; break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki tidy [--dry-run] [--json]\n\n"
                "Removes the certificates expired more than [retention] expired_cert_days ago\n"
                "(default 90) and the tokens used, revoked, burned or expired more than\n"
                "token_days ago (default 30), in one transaction with one audit event holding\n"
                "the counts; the audit log is kept whole, so 'mqpki audit verify' still\n"
                "passes, and no CRL changes (an expired certificate has left the CRLs). Then\n"
                "gives the space back (SQLite incremental vacuum, in small steps; on a\n"
                "PostgreSQL store the server's autovacuum does). A store made before mqpki used\n"
                "incremental vacuum is switched once by a full VACUUM, which blocks mqpkid's\n"
                "writes while it runs. --dry-run only counts. mqpkid runs the same every day.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE | (dry ? 0 : CLI_MUTATES), &dd)) != MQPKI_OK)
        goto out;
    cfg = datadir_config(dd);
    cert_before = now - (int64_t)cfg->expired_cert_days * 86400;
    token_before = now - (int64_t)cfg->token_days * 86400;
    /* The file's size: SQLite's alone (a PostgreSQL store's space is the server's). */
    remote = inventory_is_remote(datadir_inventory(dd));
    if ((rc = datadir_path(dd, "mqpki.db", db)) != MQPKI_OK)
        goto out;
    before = remote ? -1 : store_bytes(db);
    if ((rc = inventory_tidy(datadir_inventory(dd), now, cert_before, token_before, dry, "cli",
                             &t)) != MQPKI_OK)
        goto out;
    if (!dry && (rc = inventory_vacuum(datadir_inventory(dd), 256, 1, &freed, &switched)) !=
                    MQPKI_OK)
        goto out;
    after = remote ? -1 : store_bytes(db);
    if (json) {
        /* bytes_* are null on a PostgreSQL store. */
        rc = cli_print_json(json_pack("{s:b, s:I, s:I, s:o, s:o, s:I, s:b, s:o, s:o}", "dry_run",
                                      dry, "certs", (json_int_t)t.certs, "tokens",
                                      (json_int_t)t.tokens, "cert_before",
                                      cli_json_time(cert_before), "token_before",
                                      cli_json_time(token_before), "freed_pages",
                                      (json_int_t)freed, "switched_to_incremental", switched,
                                      "bytes_before",
                                      before >= 0 ? json_integer(before) : json_null(),
                                      "bytes_after",
                                      after >= 0 ? json_integer(after) : json_null()));
        goto out;
    }
    printf("%s %lld certificate%s expired before %s and %lld token%s dead before %s",
           dry ? "would remove" : "removed", (long long)t.certs, t.certs == 1 ? "" : "s",
           cli_time(cert_before, t1), (long long)t.tokens, t.tokens == 1 ? "" : "s",
           cli_time(token_before, t2));
    if (!dry && !remote)
        printf("; store %lld -> %lld bytes%s", before, after,
               switched ? " (switched to incremental vacuum: one full VACUUM)" : "");
    printf("\n");
out:
    datadir_close(dd);
    return rc;
}
