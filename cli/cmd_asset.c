/* cli: the asset inventory: asset add|list|show|set|decommission, token create|list|revoke. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"
#include "proto.h"

#define MAX_TAGS 32
/* The longest token lifetime the store accepts (inventory/tokens.c). */
#define TOKEN_TTL_MAX (30 * 86400)

static int check_id(struct cli *cli, const char *id)
{
    if (!proto_asset_id_valid(id))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters, "
                          "not starting with . or -",
                          id);
    return MQPKI_OK;
}

/* Splits "K=V" into a tags object; K must be a non-empty short word. */
static int add_tag(struct cli *cli, json_t *tags, const char *kv)
{
    const char *eq = strchr(kv, '=');
    char key[65];

    if (eq == NULL || eq == kv || (size_t)(eq - kv) >= sizeof(key))
        return cli_usage_error(cli, "--tag '%.80s': expected KEY=VALUE", kv);
    memcpy(key, kv, (size_t)(eq - kv));
    key[eq - kv] = '\0';
    if (json_object_set_new(tags, key, json_string(eq + 1)) != 0)
        return cli_usage_error(cli, "--tag '%.80s': not valid UTF-8", kv);
    return MQPKI_OK;
}

static int copy_field(struct cli *cli, char *dst, size_t size, const char *opt, const char *v)
{
    if (strlen(v) >= size)
        return cli_usage_error(cli, "%s: at most %zu characters", opt, size - 1);
    memcpy(dst, v, strlen(v) + 1);
    return MQPKI_OK;
}

int cmd_asset_add(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"kind", required_argument, NULL, 'k'},     {"model", required_argument, NULL, 'm'},
        {"serial", required_argument, NULL, 's'},   {"firmware", required_argument, NULL, 'f'},
        {"location", required_argument, NULL, 'l'}, {"tag", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    struct inventory_asset a;
    struct datadir *dd = NULL;
    json_t *tags = json_object();
    int c, rc = MQPKI_OK;

    memset(&a, 0, sizeof(a));
    a.kind = -1;
    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'k':
            if ((a.kind = inventory_kind_parse(optarg)) < 0)
                rc = cli_usage_error(cli, "--kind '%.40s': use device, broker or service", optarg);
            break;
        case 'm': rc = copy_field(cli, a.model, sizeof(a.model), "--model", optarg); break;
        case 's': rc = copy_field(cli, a.hw_serial, sizeof(a.hw_serial), "--serial", optarg); break;
        case 'f': rc = copy_field(cli, a.firmware, sizeof(a.firmware), "--firmware", optarg); break;
        case 'l': rc = copy_field(cli, a.location, sizeof(a.location), "--location", optarg); break;
        case 't': rc = add_tag(cli, tags, optarg); break;
        case 'h':
            json_decref(tags);
            return cli_help(
                "usage: mqpki asset add ID --kind device|broker|service [--model M] [--serial S]\n"
                "                       [--firmware V] [--location L] [--tag K=V ...]\n\n"
                "Registers an asset in the inventory (state 'registered'). ID: 1 to 64 of\n"
                "A-Z a-z 0-9 . _ - (it becomes an MQTT topic level and the certificate name).\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind + 1 != argc) {
        rc = cli_usage_error(cli, optind == argc ? "asset ID missing" : "one asset ID expected");
        goto out;
    }
    if ((rc = check_id(cli, argv[optind])) != MQPKI_OK)
        goto out;
    if (a.kind < 0) {
        rc = cli_usage_error(cli, "--kind is required");
        goto out;
    }
    snprintf(a.id, sizeof(a.id), "%s", argv[optind]);
    if ((a.tags_json = json_dumps(tags, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_asset_add(datadir_inventory(dd), &a, "cli")) == MQPKI_OK)
        printf("asset %s registered (%s)\n", a.id, inventory_kind_name(a.kind));
out:
    free(a.tags_json);
    json_decref(tags);
    datadir_close(dd);
    return rc;
}

/* A text field as JSON: user input is checked as UTF-8 by jansson; null when empty (optional). */
static json_t *text_or_null(const char *t)
{
    return t[0] != '\0' ? json_string(t) : json_null();
}

/*
 * Fills v, a JSON object, with the asset's fields. A listing reuses one object for every asset:
 * a million assets then cost no per-asset object, key or hash-table allocation.
 */
static int asset_json_fill(json_t *v, const struct inventory_asset *a)
{
    const char *tags = a->tags_json != NULL ? a->tags_json : "{}";
    int bad = 0;

    bad |= json_object_set_new(v, "id", json_string_nocheck(a->id));
    bad |= json_object_set_new(v, "kind", json_string_nocheck(inventory_kind_name(a->kind)));
    bad |= json_object_set_new(v, "state", json_string_nocheck(inventory_state_name(a->state)));
    bad |= json_object_set_new(v, "model", json_string(a->model));
    bad |= json_object_set_new(v, "serial", json_string(a->hw_serial));
    bad |= json_object_set_new(v, "firmware", json_string(a->firmware));
    bad |= json_object_set_new(v, "location", json_string(a->location));
    bad |= json_object_set_new(v, "tags",
                               strcmp(tags, "{}") == 0 ? json_object() : json_loads(tags, 0, NULL));
    bad |= json_object_set_new(v, "created_at", cli_json_time(a->created_at));
    bad |= json_object_set_new(v, "updated_at", cli_json_time(a->updated_at));
    bad |= json_object_set_new(v, "last_seen", cli_json_time(a->last_seen));
    bad |= json_object_set_new(v, "last_address", text_or_null(a->last_address));
    bad |= json_object_set_new(v, "last_broker", text_or_null(a->last_broker));
    return bad ? mqpki_fail(MQPKI_ERR_INTERNAL, "asset %s: cannot encode as JSON", a->id)
               : MQPKI_OK;
}

static json_t *asset_json(const struct inventory_asset *a)
{
    json_t *v = json_object();

    if (v != NULL && asset_json_fill(v, a) != MQPKI_OK) {
        json_decref(v);
        v = NULL;
    }
    return v;
}

struct list_ctx {
    int json;
    size_t n;
    int failed;
};

static void list_header(void)
{
    printf("%-24s %-8s %-14s %-24s %-20s %s\n", "ID", "KIND", "STATE", "MODEL", "LAST SEEN",
           "LOCATION");
}

/* --json: the store encodes each asset; a million never sit in memory at once. */
static int print_asset_json(const char *json, size_t len, void *ctx)
{
    struct list_ctx *l = ctx;

    if (fputs(l->n ? ",\n  " : "\n  ", stdout) == EOF || fwrite(json, 1, len, stdout) != len)
        l->failed = 1;
    l->n++;
    return l->failed;
}

static int print_asset(const struct inventory_asset *a, void *ctx)
{
    struct list_ctx *l = ctx;
    char t[32], model[CLI_TEXT_MAX], location[CLI_TEXT_MAX];

    if (l->n == 0)
        list_header();
    /* A value wider than its column widens the row: never cut (docs/cli.md, "Tables"). */
    printf("%-24s %-8s %-14s %-24s %-20s %s\n", a->id, inventory_kind_name(a->kind),
           inventory_state_name(a->state), cli_text(a->model, model), cli_time(a->last_seen, t),
           cli_text(a->location, location));
    l->n++;
    return 0;
}

int cmd_asset_list(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"state", required_argument, NULL, 's'},
        {"kind", required_argument, NULL, 'k'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct list_ctx l = {0};
    struct datadir *dd = NULL;
    int c, rc, state = -1, kind = -1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if ((state = inventory_state_parse(optarg)) < 0)
                return cli_usage_error(cli,
                                       "--state '%.40s': use registered, enrolled, active, "
                                       "suspended, revoked or decommissioned",
                                       optarg);
            break;
        case 'k':
            if ((kind = inventory_kind_parse(optarg)) < 0)
                return cli_usage_error(cli, "--kind '%.40s': use device, broker or service",
                                       optarg);
            break;
        case 'j': l.json = 1; break;
        case 'h':
            return cli_help("usage: mqpki asset list [--state STATE] [--kind K] [--json]\n\n"
                            "Lists the inventory in id order.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    /* Large listings go out in large writes. */
    setvbuf(stdout, NULL, _IOFBF, 1 << 20);
    if (l.json) {
        fputs("[", stdout);
        rc = inventory_asset_list_json(datadir_inventory(dd), state, kind, print_asset_json, &l);
        fputs(l.n ? "\n]\n" : "]\n", stdout);
    } else {
        rc = inventory_asset_list(datadir_inventory(dd), state, kind, print_asset, &l);
        if (rc == MQPKI_OK && l.n == 0)
            list_header();
    }
    if (fflush(stdout) != 0)
        l.failed = 1;
    if (rc == MQPKI_OK && l.failed)
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot write to standard output");
out:
    datadir_close(dd);
    return rc;
}

json_t *cli_cert_json(const struct inventory_cert *c);

static int collect_cert(const struct inventory_cert *c, void *ctx)
{
    return json_array_append_new(ctx, cli_cert_json(c)) != 0;
}

static int collect_event(const struct inventory_event *e, void *ctx)
{
    json_t *detail = e->detail ? json_loads(e->detail, 0, NULL) : NULL;

    return json_array_append_new(
               ctx, json_pack("{s:I, s:o, s:s, s:s, s:s, s:o}", "seq", (json_int_t)e->seq, "time",
                              cli_json_time(e->time), "actor", e->actor, "action", e->action,
                              "subject", e->subject, "detail", detail ? detail : json_null())) != 0;
}

int cmd_asset_show(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct inventory_asset a;
    struct datadir *dd = NULL;
    json_t *v = NULL, *certs = json_array(), *history = json_array();
    int c, rc, json = 0;

    memset(&a, 0, sizeof(a));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            json_decref(certs);
            json_decref(history);
            return cli_help("usage: mqpki asset show ID [--json]\n\n"
                            "One asset: its attributes, certificates and lifecycle history.\n");
        default: rc = cli_usage_error(cli, "unknown option"); goto out;
        }
    }
    if (optind + 1 != argc) {
        rc = cli_usage_error(cli, optind == argc ? "asset ID missing" : "one asset ID expected");
        goto out;
    }
    if ((rc = check_id(cli, argv[optind])) != MQPKI_OK)
        goto out;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_asset_get(datadir_inventory(dd), argv[optind], &a)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "unknown asset %s", argv[optind]);
        goto out;
    }
    rc = inventory_cert_list(datadir_inventory(dd), a.id, -1, 0, collect_cert, certs);
    if (rc != MQPKI_OK)
        goto out;
    rc = inventory_asset_history(datadir_inventory(dd), a.id, collect_event, history);
    if (rc != MQPKI_OK)
        goto out;
    if (json) {
        v = asset_json(&a);
        json_object_set(v, "certificates", certs);
        json_object_set(v, "history", history);
        rc = cli_print_json(v);
        v = NULL;
        goto out;
    }
    {
        char t[32], b1[CLI_TEXT_MAX], b2[CLI_TEXT_MAX], b3[CLI_TEXT_MAX], b4[CLI_TEXT_MAX];
        size_t i;
        json_t *x;
        printf("asset     %s\nkind      %s\nstate     %s\nmodel     %s\nserial    %s\n"
               "firmware  %s\nlocation  %s\ntags      %s\nlast seen %s",
               a.id, inventory_kind_name(a.kind), inventory_state_name(a.state),
               cli_text(a.model, b1), cli_text(a.hw_serial, b2), cli_text(a.firmware, b3),
               cli_text(a.location, b4), a.tags_json ? a.tags_json : "{}",
               cli_time(a.last_seen, t));
        if (a.last_seen)
            printf(" from %s via %s", cli_text(a.last_address, b1), cli_text(a.last_broker, b2));
        printf("\n\ncertificates:\n");
        json_array_foreach(certs, i, x)
        {
            printf("  %s  %-10s %-8s until %s\n", json_string_value(json_object_get(x, "serial")),
                   json_string_value(json_object_get(x, "state")),
                   json_string_value(json_object_get(x, "profile")),
                   json_string_value(json_object_get(x, "not_after")));
        }
        printf("\nhistory:\n");
        json_array_foreach(history, i, x)
        {
            char *d = json_dumps(json_object_get(x, "detail"), JSON_COMPACT | JSON_ENCODE_ANY);
            printf("  %s  %-14s %-12s %s\n", json_string_value(json_object_get(x, "time")),
                   json_string_value(json_object_get(x, "action")),
                   json_string_value(json_object_get(x, "actor")), d ? d : "");
            free(d);
        }
    }
out:
    json_decref(v);
    json_decref(certs);
    json_decref(history);
    inventory_asset_clear(&a);
    datadir_close(dd);
    return rc;
}

int cmd_asset_set(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"firmware", required_argument, NULL, 'f'},
        {"location", required_argument, NULL, 'l'},
        {"tag", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *firmware = NULL, *location = NULL, *tags[MAX_TAGS];
    size_t n_tags = 0;
    struct datadir *dd = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': firmware = optarg; break;
        case 'l': location = optarg; break;
        case 't':
            if (n_tags == MAX_TAGS)
                return cli_usage_error(cli, "at most %d --tag", MAX_TAGS);
            if (strchr(optarg, '=') == NULL || optarg[0] == '=')
                return cli_usage_error(cli,
                                       "--tag '%.80s': expected KEY=VALUE (empty VALUE "
                                       "deletes)",
                                       optarg);
            tags[n_tags++] = optarg;
            break;
        case 'h':
            return cli_help("usage: mqpki asset set ID [--firmware V] [--location L] "
                            "[--tag K=V ...]\n\n"
                            "Updates an asset; --tag K= (empty value) deletes tag K. Every change\n"
                            "is an audit event with old and new values.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, optind == argc ? "asset ID missing" : "one asset ID expected");
    if ((rc = check_id(cli, argv[optind])) != MQPKI_OK)
        return rc;
    if (firmware == NULL && location == NULL && n_tags == 0)
        return cli_usage_error(cli, "nothing to set: give --firmware, --location or --tag");
    if ((firmware && strlen(firmware) >= INV_TEXT_MAX) ||
        (location && strlen(location) >= INV_TEXT_MAX))
        return cli_usage_error(cli, "values are at most %d characters", INV_TEXT_MAX - 1);
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    struct inventory *inv = datadir_inventory(dd);
    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        goto out;
    if (firmware != NULL || location != NULL)
        rc = inventory_asset_update(inv, argv[optind], firmware, location, NULL, NULL, "cli");
    for (size_t i = 0; rc == MQPKI_OK && i < n_tags; i++) {
        char key[65];
        const char *eq = strchr(tags[i], '=');
        if ((size_t)(eq - tags[i]) >= sizeof(key)) {
            rc = cli_usage_error(cli, "--tag: key at most 64 characters");
            break;
        }
        memcpy(key, tags[i], (size_t)(eq - tags[i]));
        key[eq - tags[i]] = '\0';
        rc = inventory_asset_update(inv, argv[optind], NULL, NULL, key, eq + 1, "cli");
    }
    if (rc == MQPKI_OK)
        rc = inventory_commit(inv);
    else
        inventory_rollback(inv);
    if (rc == MQPKI_OK)
        printf("asset %s updated\n", argv[optind]);
out:
    datadir_close(dd);
    return rc;
}

int cmd_asset_decommission(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct lifecycle_change ch;
    struct datadir *dd = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help("usage: mqpki asset decommission ID\n\n"
                            "Revokes the asset's live certificates (reason cessationOfOperation)\n"
                            "and retires the asset for good, in one step; publishes the delta\n"
                            "CRL as 'mqpki revoke' does.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, optind == argc ? "asset ID missing" : "one asset ID expected");
    if ((rc = check_id(cli, argv[optind])) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = lifecycle_decommission(datadir_lifecycle(dd), argv[optind], "cli", &ch)) != MQPKI_OK)
        goto out;
    if (ch.asset_was == INV_STATE_DECOMMISSIONED)
        printf("asset %s was already decommissioned; ", argv[optind]);
    else
        printf("asset %s decommissioned; ", argv[optind]);
    if (ch.changed == 0 && ch.already == 0) {
        printf("it has no unexpired certificate\n");
        goto out;
    }
    rc = cli_publish_change(dd, &ch, "revoked", ca_reason_name(CA_REASON_CESSATION));
out:
    datadir_close(dd);
    return rc;
}

int cmd_token_create(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"ttl", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    const char *ttl_text = NULL;
    char token[64] = "";
    int64_t ttl;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': ttl_text = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki token create ID [--ttl 24h]\n\n"
                "Creates a one-time enrollment token for the asset and prints it alone\n"
                "on stdout, once: only a salted hash is stored. The asset's older tokens\n"
                "not used yet are revoked. TTL: a number with its unit, Ns, Nm, Nh or Nd\n"
                "(90s, 15m, 24h, 30d), at most 30d (default: [enrollment] token_ttl, 24h).\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, optind == argc ? "asset ID missing" : "one asset ID expected");
    if ((rc = check_id(cli, argv[optind])) != MQPKI_OK)
        return rc;
    if (ttl_text != NULL &&
        (rc = cli_parse_duration(cli, "--ttl", ttl_text, 1, TOKEN_TTL_MAX, &ttl)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if (ttl_text == NULL)
        ttl = datadir_config(dd)->token_ttl;
    rc = inventory_token_create(datadir_inventory(dd), argv[optind], ttl, "cli", token);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "unknown asset %s", argv[optind]);
    if (rc == MQPKI_OK) {
        printf("%s\n", token);
        fflush(stdout);
    }
out:
    OPENSSL_cleanse(token, sizeof(token));
    datadir_close(dd);
    return rc;
}

struct token_list_ctx {
    int json;
    size_t n;
};

static json_t *token_json(const struct inventory_token *t)
{
    return json_pack("{s:I, s:s, s:o, s:o, s:s, s:i, s:o, s:o, s:s?}", "id", (json_int_t)t->id,
                     "asset", t->asset_id, "created_at", cli_json_time(t->created_at), "expires_at",
                     cli_json_time(t->expires_at), "state", inventory_token_state_name(t->state),
                     "failures", t->failures, "used_at", cli_json_time(t->used_at), "revoked_at",
                     cli_json_time(t->revoked_at), "serial",
                     t->serial[0] != '\0' ? t->serial : NULL);
}

static void token_header(void)
{
    printf("%-8s %-24s %-20s %-20s %-8s %s\n", "ID", "ASSET", "CREATED", "EXPIRES", "STATE",
           "FAILURES");
}

static int print_token(const struct inventory_token *t, void *ctx)
{
    struct token_list_ctx *l = ctx;
    char c[32], e[32];

    if (l->json) {
        json_t *v = token_json(t);
        char *text = v != NULL ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        fputs(l->n ? ",\n  " : "\n  ", stdout);
        if (text != NULL)
            fputs(text, stdout);
        free(text);
        json_decref(v);
    } else {
        if (l->n == 0)
            token_header();
        printf("%-8lld %-24s %-20s %-20s %-8s %d\n", (long long)t->id, t->asset_id,
               cli_time(t->created_at, c), cli_time(t->expires_at, e),
               inventory_token_state_name(t->state), t->failures);
    }
    l->n++;
    return 0;
}

int cmd_token_list(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"asset", required_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct token_list_ctx l = {0};
    struct datadir *dd = NULL;
    const char *asset = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': asset = optarg; break;
        case 'j': l.json = 1; break;
        case 'h':
            return cli_help("usage: mqpki token list [--asset ID] [--json]\n\n"
                            "Lists enrollment tokens in creation order: id, asset, created,\n"
                            "expires, state (live, used, expired, revoked, burned) and refused\n"
                            "attempts. Never the token itself: it was shown once, at creation.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (asset != NULL && (rc = check_id(cli, asset)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (l.json)
        fputs("[", stdout);
    rc = inventory_token_list(datadir_inventory(dd), asset, print_token, &l);
    if (l.json)
        fputs(l.n ? "\n]\n" : "]\n", stdout);
    else if (rc == MQPKI_OK && l.n == 0)
        token_header();
    if (fflush(stdout) != 0 && rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot write to standard output");
out:
    datadir_close(dd);
    return rc;
}

int cmd_token_revoke(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"asset", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct inventory_token t;
    struct datadir *dd = NULL;
    const char *asset = NULL;
    long long id = 0;
    char *end = NULL;
    int c, rc, n = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': asset = optarg; break;
        case 'h':
            return cli_help("usage: mqpki token revoke ID | --asset ID\n\n"
                            "Revokes an enrollment token by its id (see 'mqpki token list'), or\n"
                            "every token of the asset not used yet: they can no longer enroll.\n"
                            "A token already used, expired, burned or revoked is left as it is.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if ((asset == NULL) == (optind == argc) || optind + 1 < argc)
        return cli_usage_error(cli, "give one token ID or --asset ID");
    if (asset != NULL && (rc = check_id(cli, asset)) != MQPKI_OK)
        return rc;
    if (asset == NULL) {
        id = strtoll(argv[optind], &end, 10);
        if (end == argv[optind] || *end != '\0' || id <= 0)
            return cli_usage_error(cli,
                                   "token id '%.40s': expected a number from 'mqpki token "
                                   "list'",
                                   argv[optind]);
    }
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    rc = inventory_token_revoke(datadir_inventory(dd), id, asset, "cli", &n);
    if (rc == MQPKI_ERR_NOT_FOUND && asset != NULL)
        rc = mqpki_fail(rc, "unknown asset %s", asset);
    if (rc != MQPKI_OK)
        goto out;
    if (asset != NULL) {
        if (n > 0)
            printf("asset %s: %d token%s revoked\n", asset, n, n == 1 ? "" : "s");
        else
            printf("asset %s: no live token, nothing to revoke\n", asset);
    } else if ((rc = inventory_token_get(datadir_inventory(dd), id, &t)) == MQPKI_OK) {
        if (n > 0)
            printf("token %lld of asset %s revoked\n", id, t.asset_id);
        else
            printf("token %lld of asset %s is %s, nothing to revoke\n", id, t.asset_id,
                   t.state == INV_TOKEN_REVOKED ? "already revoked"
                                                : inventory_token_state_name(t.state));
    }
out:
    datadir_close(dd);
    return rc;
}
