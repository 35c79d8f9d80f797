/*
 * cli: re-issue campaigns (docs/operations.md, "Campaigns"). `campaign renew` picks assets,
 * records the campaign and has the running mqpkid publish {"op":"renew"} on each asset's
 * command topic through its feed; `campaign status` follows them; `campaign finish
 * --revoke-old` revokes the certificates the campaign replaced (reason superseded).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"
#include "proto.h"

#define RENEW_JSON "{\"op\":\"renew\"}"
#define ASSETS_MAX 64 /* --asset given at most this often */
#define CALL_MS    5000

struct target {
    char asset[PROTO_ASSET_ID_MAX + 1];
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    size_t order; /* issue order: the newest certificate of an asset wins */
};

struct pick {
    int all;
    const char *assets[ASSETS_MAX];
    size_t n_assets;
    const char *tag; /* K=V */
    X509 *issuer;
    struct inventory *inv;
    struct target *t;
    size_t n, cap;
    int rc;
};

static int tag_matches(struct inventory *inv, const char *asset, const char *kv)
{
    struct inventory_asset a;
    const char *eq = strchr(kv, '='), *v;
    char key[128];
    json_t *tags = NULL;
    int ok = 0;

    if (eq == NULL || (size_t)(eq - kv) >= sizeof(key))
        return 0;
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = '\0';
    memset(&a, 0, sizeof(a));
    if (inventory_asset_get(inv, asset, &a) == MQPKI_OK && a.tags_json != NULL &&
        (tags = json_loads(a.tags_json, 0, NULL)) != NULL &&
        (v = json_string_value(json_object_get(tags, key))) != NULL)
        ok = strcmp(v, eq + 1) == 0;
    mqpki_err_clear();
    json_decref(tags);
    inventory_asset_clear(&a);
    return ok;
}

static int issued_by(const char *pem, X509 *issuer)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = b != NULL ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    int ok = x != NULL && X509_check_issued(issuer, x) == X509_V_OK &&
             X509_verify(x, X509_get0_pubkey(issuer)) == 1;

    X509_free(x);
    BIO_free(b);
    return ok;
}

static int on_cert(const struct inventory_cert *c, void *ctx)
{
    struct pick *p = ctx;
    /* --issuer alone selects every device certificate that CA issued. */
    int want = p->all || p->issuer != NULL;

    if (strcmp(c->profile, "device") != 0)
        return MQPKI_OK;
    for (size_t i = 0; i < p->n_assets; i++)
        want |= strcmp(p->assets[i], c->asset_id) == 0;
    if (p->tag != NULL)
        want = tag_matches(p->inv, c->asset_id, p->tag);
    if (want && p->issuer != NULL)
        want = c->pem != NULL && issued_by(c->pem, p->issuer);
    if (!want)
        return MQPKI_OK;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        struct target *grown = realloc(p->t, cap * sizeof(*grown));
        if (grown == NULL)
            return MQPKI_ERR_NOMEM;
        p->t = grown;
        p->cap = cap;
    }
    snprintf(p->t[p->n].asset, sizeof(p->t[p->n].asset), "%s", c->asset_id);
    snprintf(p->t[p->n].serial, sizeof(p->t[p->n].serial), "%s", c->serial);
    p->t[p->n].order = p->n;
    p->n++;
    return MQPKI_OK;
}

static int by_asset_then_order(const void *a, const void *b)
{
    const struct target *x = a, *y = b;
    int c = strcmp(x->asset, y->asset);
    return c != 0 ? c : (x->order < y->order ? -1 : x->order > y->order);
}

/* One target per asset: its newest valid certificate. */
static void dedupe(struct pick *p)
{
    size_t out = 0;

    if (p->n == 0)
        return;
    qsort(p->t, p->n, sizeof(*p->t), by_asset_then_order);
    for (size_t i = 0; i < p->n; i++) {
        if (i + 1 < p->n && strcmp(p->t[i].asset, p->t[i + 1].asset) == 0)
            continue;
        p->t[out++] = p->t[i];
    }
    p->n = out;
}

static void progress(FILE *f, size_t done, size_t total, size_t failed)
{
    char bar[41];
    size_t fill = total ? done * 40 / total : 40;

    memset(bar, '#', fill);
    memset(bar + fill, '.', 40 - fill);
    bar[40] = '\0';
    fprintf(f, "\r[%s] %zu/%zu sent, %zu failed", bar, done, total, failed);
    fflush(f);
}

/* Asks mqpkid to publish the renew command for asset; *brokers: how many it went to. */
static int send_renew(const char *home, const char *asset, int *brokers)
{
    unsigned char req[1 + PROTO_ASSET_ID_MAX + 1 + sizeof(RENEW_JSON)], *reply = NULL;
    size_t n = strlen(asset), reply_len = 0;
    char text[16];
    int rc;

    *brokers = 0;
    req[0] = DATADIR_CTL_COMMAND;
    memcpy(req + 1, asset, n + 1);
    memcpy(req + 2 + n, RENEW_JSON, strlen(RENEW_JSON));
    rc = datadir_control_call(home, req, 2 + n + strlen(RENEW_JSON), &reply, &reply_len, CALL_MS);
    if (rc == MQPKI_OK && reply_len > 1 && reply_len - 1 < sizeof(text)) {
        memcpy(text, reply + 1, reply_len - 1);
        text[reply_len - 1] = '\0';
        *brokers = atoi(text);
    }
    free(reply);
    return rc;
}

int cmd_campaign_renew(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"all", no_argument, NULL, 'a'},        {"asset", required_argument, NULL, 'A'},
        {"tag", required_argument, NULL, 't'},  {"issuer", required_argument, NULL, 'i'},
        {"rate", required_argument, NULL, 'r'}, {"silent-after", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
    };
    struct inventory_campaign_target *targets = NULL;
    struct pick p;
    struct datadir *dd = NULL;
    const char *issuer_file = NULL;
    char selector[256];
    unsigned char *reply = NULL;
    size_t reply_len = 0, failed = 0;
    int64_t id = 0, silent_after = 15 * 60;
    int c, rc = MQPKI_OK, rate = 50, modes = 0, tty = isatty(STDERR_FILENO);
    unsigned char ping = DATADIR_CTL_PING;

    memset(&p, 0, sizeof(p));
    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a':
            p.all = 1;
            modes++;
            break;
        case 'A':
            if (p.n_assets == ASSETS_MAX || !proto_asset_id_valid(optarg))
                rc = cli_usage_error(cli, "--asset '%.80s': not an asset id (at most %d)", optarg,
                                     ASSETS_MAX);
            else
                p.assets[p.n_assets++] = optarg;
            modes += p.n_assets == 1;
            break;
        case 't':
            if (strchr(optarg, '=') == NULL || optarg[0] == '=')
                rc = cli_usage_error(cli, "--tag: expected K=V");
            p.tag = optarg;
            modes++;
            break;
        case 'i':
            issuer_file = optarg;
            modes++;
            break;
        case 'r': rc = cli_parse_int(cli, "--rate", optarg, 1, 10000, &rate); break;
        case 's':
            rc = cli_parse_duration(cli, "--silent-after", optarg, 1, 30 * 86400, &silent_after);
            break;
        case 'h':
            return cli_help(
                "usage: mqpki campaign renew --all | --issuer CA.pem|GEN | --asset ID ... |\n"
                "                            --tag K=V [--rate N] [--silent-after 15m]\n\n"
                "Asks devices to renew now: records a campaign over every device asset with a\n"
                "valid certificate (--all), those whose certificate CA.pem (or issuing CA\n"
                "generation GEN of mqpki ca list, after a rollover) issued, the assets\n"
                "named, or those tagged K=V, then has the running mqpkid publish "
                "{\"op\":\"renew\"}\n"
                "on mqpki/v1/assets/ID/cmd through its feed, N per second (default 50). An\n"
                "asset is silent when it has not renewed --silent-after the command. Follow it\n"
                "with 'mqpki campaign status'.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind != argc || modes != 1) {
        rc = cli_usage_error(cli, "give one of --all, --issuer, --asset, --tag");
        goto out;
    }
    if (issuer_file != NULL) {
        char gen_file[PATH_MAX];
        FILE *f;
        /* A generation number (mqpki ca list) names ca/issuers/N.pem of the data directory. */
        if (issuer_file[0] >= '1' && issuer_file[0] <= '9' &&
            strspn(issuer_file, "0123456789") == strlen(issuer_file) && strlen(issuer_file) <= 3 &&
            mqpki_path(gen_file, sizeof(gen_file), "%s/ca/issuers/%s.pem", cli->home,
                       issuer_file) == MQPKI_OK)
            issuer_file = gen_file;
        f = fopen(issuer_file, "r");
        p.issuer = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        if (f != NULL)
            fclose(f);
        if (p.issuer == NULL) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "--issuer %s: not a PEM certificate", issuer_file);
            goto out;
        }
    }
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    /* The commands travel through mqpkid's feed: without it nothing would reach a device. */
    if ((rc = datadir_control_call(cli->home, &ping, 1, &reply, &reply_len, CALL_MS)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(MQPKI_ERR_STATE, "a campaign needs mqpkid running: its feed carries "
                                             "the commands to the brokers");
        goto out;
    }
    p.inv = datadir_inventory(dd);
    if ((rc = inventory_cert_list(p.inv, NULL, INV_CERT_VALID, p.issuer != NULL, on_cert, &p)) !=
        MQPKI_OK)
        goto out;
    dedupe(&p);
    if (p.n == 0) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no device asset with a valid certificate matches");
        goto out;
    }
    if ((targets = calloc(p.n, sizeof(*targets))) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < p.n; i++) {
        targets[i].asset = p.t[i].asset;
        targets[i].old_serial = p.t[i].serial;
    }
    snprintf(selector, sizeof(selector), "%s%s%s%s", p.all ? "--all" : "",
             p.n_assets ? "--asset" : "", p.tag ? "--tag " : "",
             p.tag ? p.tag : (issuer_file ? "--issuer" : ""));
    if ((rc = inventory_campaign_create(p.inv, selector, silent_after, targets, p.n, &id)) !=
        MQPKI_OK)
        goto out;
    for (size_t i = 0; i < p.n; i++) {
        struct timespec pause = {0, 1000000000L / rate};
        int brokers = 0, sent;
        sent = send_renew(cli->home, p.t[i].asset, &brokers) == MQPKI_OK && brokers > 0;
        mqpki_err_clear();
        failed += !sent;
        if ((rc = inventory_campaign_mark(p.inv, id, p.t[i].asset, sent)) != MQPKI_OK)
            goto out;
        if (tty)
            progress(stderr, i + 1, p.n, failed);
        if (i + 1 < p.n)
            nanosleep(&pause, NULL);
    }
    if (tty)
        fputc('\n', stderr);
    printf("campaign %lld: renew sent to %zu assets, %zu failed; follow with 'mqpki campaign "
           "status'\n",
           (long long)id, p.n - failed, failed);
out:
    free(targets);
    free(p.t);
    free(reply);
    X509_free(p.issuer);
    datadir_close(dd);
    return rc;
}

static int parse_id_opt(struct cli *cli, int argc, char **argv, const char *usage, int *json,
                        int *revoke, int64_t *id)
{
    static const struct option opts[] = {
        {"id", required_argument, NULL, 'i'},
        {"json", no_argument, NULL, 'j'},
        {"revoke-old", no_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c, n, rc = MQPKI_OK;

    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            rc = cli_parse_int(cli, "--id", optarg, 1, 1000000000, &n);
            *id = n;
            break;
        case 'j':
            if (json == NULL)
                rc = cli_usage_error(cli, "unknown option");
            else
                *json = 1;
            break;
        case 'r':
            if (revoke == NULL)
                rc = cli_usage_error(cli, "unknown option");
            else
                *revoke = 1;
            break;
        case 'h': return cli_help(usage);
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc == MQPKI_OK && optind != argc)
        rc = cli_usage_error(cli, "unexpected argument");
    return rc;
}

struct show {
    json_t *list;
};

static int on_asset(const struct inventory_campaign_asset *a, void *ctx)
{
    struct show *s = ctx;

    if (s->list != NULL)
        return json_array_append_new(
                   s->list, json_pack("{s:s, s:s, s:s, s:I}", "asset", a->asset, "state",
                                      inventory_campaign_state_name(a->state), "old_serial",
                                      a->old_serial, "sent_at", (json_int_t)a->sent_at)) == 0
                   ? MQPKI_OK
                   : MQPKI_ERR_NOMEM;
    printf("%-24s %-8s %s\n", a->asset, inventory_campaign_state_name(a->state), a->old_serial);
    return MQPKI_OK;
}

int cmd_campaign_status(struct cli *cli, int argc, char **argv)
{
    struct inventory_campaign cp;
    struct datadir *dd = NULL;
    struct show s = {NULL};
    int64_t id = 0;
    int json = 0, rc;
    json_t *o = NULL;

    rc = parse_id_opt(cli, argc, argv,
                      "usage: mqpki campaign status [--id N] [--json]\n\n"
                      "Where each asset of the newest campaign (or campaign N) stands: pending,\n"
                      "sent, renewed, failed (not sent: no broker linked), silent (sent and not\n"
                      "renewed within --silent-after).\n",
                      &json, NULL, &id);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (id == 0 && (rc = inventory_campaign_latest(datadir_inventory(dd), &id)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_campaign_refresh(datadir_inventory(dd), id)) != MQPKI_OK)
        goto out;
    if (json && (s.list = json_array()) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = inventory_campaign_get(datadir_inventory(dd), id, &cp, on_asset, &s)) != MQPKI_OK)
        goto out;
    if (json) {
        o = json_pack("{s:I, s:s, s:I, s:b, s:I, s:{s:I, s:I, s:I, s:I, s:I}, s:O}", "id",
                      (json_int_t)cp.id, "selector", cp.selector, "created_at",
                      (json_int_t)cp.created_at, "finished", cp.finished_at != 0, "total",
                      (json_int_t)cp.total, "counts", "pending",
                      (json_int_t)cp.count[INV_CAMPAIGN_PENDING], "sent",
                      (json_int_t)cp.count[INV_CAMPAIGN_SENT], "renewed",
                      (json_int_t)cp.count[INV_CAMPAIGN_RENEWED], "failed",
                      (json_int_t)cp.count[INV_CAMPAIGN_FAILED], "silent",
                      (json_int_t)cp.count[INV_CAMPAIGN_SILENT], "assets", s.list);
        if (o == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        json_dumpf(o, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    } else {
        printf("campaign %lld (%s)%s: %lld assets: %lld renewed, %lld sent, %lld silent, "
               "%lld failed, %lld pending\n",
               (long long)cp.id, cp.selector, cp.finished_at ? " finished" : "",
               (long long)cp.total, (long long)cp.count[INV_CAMPAIGN_RENEWED],
               (long long)cp.count[INV_CAMPAIGN_SENT], (long long)cp.count[INV_CAMPAIGN_SILENT],
               (long long)cp.count[INV_CAMPAIGN_FAILED], (long long)cp.count[INV_CAMPAIGN_PENDING]);
    }
out:
    json_decref(o);
    json_decref(s.list);
    datadir_close(dd);
    return rc;
}

struct finish {
    char (*serials)[PROTO_SERIAL_HEX_MAX + 1]; /* the old certificates, taken first */
    size_t n, cap;
    int revoked, already, rc;
};

/* Collects: revoking here, inside the listing's read, would meet every commit mqpkid made
 * meanwhile as a stale snapshot (SQLite's BUSY_SNAPSHOT, "store busy"). */
static int on_finish(const struct inventory_campaign_asset *a, void *ctx)
{
    struct finish *f = ctx;

    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        void *p = realloc(f->serials, cap * sizeof(*f->serials));
        if (p == NULL)
            return MQPKI_ERR_NOMEM;
        f->serials = p;
        f->cap = cap;
    }
    snprintf(f->serials[f->n++], sizeof(f->serials[0]), "%s", a->old_serial);
    return MQPKI_OK;
}

static void revoke_old(struct lifecycle *lc, struct finish *f)
{
    for (size_t i = 0; i < f->n; i++) {
        struct lifecycle_change ch;
        memset(&ch, 0, sizeof(ch));
        if (lifecycle_revoke(lc, f->serials[i], CA_REASON_SUPERSEDED, "cli", &ch) != MQPKI_OK) {
            f->rc = MQPKI_ERR_STATE;
            mqpki_log(MQPKI_LOG_WARN, "campaign: %s: %s", f->serials[i],
                      mqpki_err_detail(MQPKI_ERR_STATE));
            mqpki_err_clear();
            continue;
        }
        f->revoked += ch.changed;
        f->already += ch.already;
    }
}

int cmd_campaign_finish(struct cli *cli, int argc, char **argv)
{
    struct inventory_campaign cp;
    struct finish f;
    struct datadir *dd = NULL;
    int64_t id = 0;
    int revoke = 0, rc;

    memset(&f, 0, sizeof(f));
    rc = parse_id_opt(cli, argc, argv,
                      "usage: mqpki campaign finish [--id N] [--revoke-old]\n\n"
                      "Closes the newest campaign (or campaign N). With --revoke-old, revokes\n"
                      "(reason superseded) every certificate the campaign asked its assets to\n"
                      "replace: those of renewed assets (superseded, still valid until they\n"
                      "expire) and the current ones of assets that did not renew, which are then\n"
                      "cut off. Publishes the CRL at once.\n",
                      NULL, &revoke, &id);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if (id == 0 && (rc = inventory_campaign_latest(datadir_inventory(dd), &id)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_campaign_refresh(datadir_inventory(dd), id)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_campaign_get(datadir_inventory(dd), id, &cp, revoke ? on_finish : NULL,
                                     &f)) != MQPKI_OK)
        goto out;
    revoke_old(datadir_lifecycle(dd), &f);
    if (revoke && f.revoked > 0 && (rc = datadir_publish(dd, 0, NULL)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_campaign_finish(datadir_inventory(dd), id)) != MQPKI_OK)
        goto out;
    printf("campaign %lld finished: %lld renewed, %lld not renewed", (long long)id,
           (long long)cp.count[INV_CAMPAIGN_RENEWED],
           (long long)(cp.total - cp.count[INV_CAMPAIGN_RENEWED]));
    if (revoke)
        printf("; %d old certificates revoked (superseded), %d already revoked", f.revoked,
               f.already);
    printf("\n");
    if (f.rc != MQPKI_OK)
        rc = mqpki_fail(f.rc, "some old certificates could not be revoked (see the log)");
out:
    free(f.serials);
    datadir_close(dd);
    return rc;
}
