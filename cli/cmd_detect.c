/* cli: detect -> respond (docs/detect.md): events, alerts, alerts ack, release. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"

#define FOLLOW_PAGE 1000

struct events_out {
    int json;
    int64_t last_id;
};

static int print_event(const struct inventory_broker_event *e, void *ctx)
{
    struct events_out *o = ctx;
    char when[32];
    json_t *detail;

    o->last_id = e->id;
    if (o->json) {
        json_t *v;
        char *text;
        detail = json_loads(e->detail, 0, NULL);
        v = json_pack("{s:I, s:o, s:s, s:s, s:s?, s:s?, s:o}", "id", (json_int_t)e->id, "time",
                      cli_json_time(e->time), "broker", e->broker, "type", e->type, "asset",
                      e->asset[0] ? e->asset : NULL, "address", e->address[0] ? e->address : NULL,
                      "event", detail != NULL ? detail : json_object());
        /* One object a line, so that --follow can be piped into jq. */
        if (v != NULL && (text = json_dumps(v, JSON_COMPACT)) != NULL) {
            puts(text);
            free(text);
        }
        json_decref(v);
    } else {
        printf("%-6lld %s %-10s %-16s %-20s %-15s %s\n", (long long)e->id, cli_time(e->time, when),
               e->broker, e->type, e->asset[0] ? e->asset : "-", e->address[0] ? e->address : "-",
               e->detail);
    }
    fflush(stdout);
    return 0;
}

/* --since: a duration back from now (10m, 24h) or an RFC 3339 UTC time (2026-11-30T21:00:00Z). */
static int parse_since(struct cli *cli, const char *text, int64_t *out)
{
    struct tm tm;
    const char *end;
    int64_t d;

    memset(&tm, 0, sizeof(tm));
    end = strptime(text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (end != NULL && *end == '\0') {
        *out = (int64_t)timegm(&tm);
        return MQPKI_OK;
    }
    if (cli_parse_duration(cli, "--since", text, 1, 366LL * 86400, &d) != MQPKI_OK)
        return MQPKI_ERR_INVALID;
    *out = mqpki_now() - d;
    return MQPKI_OK;
}

int cmd_events(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"asset", required_argument, NULL, 'a'}, {"since", required_argument, NULL, 's'},
        {"follow", no_argument, NULL, 'f'},      {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0}};
    struct events_out o = {0, 0};
    struct datadir *dd = NULL;
    const char *asset = NULL;
    int64_t since = 0;
    int c, rc, follow = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': asset = optarg; break;
        case 's':
            if ((rc = parse_since(cli, optarg, &since)) != MQPKI_OK)
                return rc;
            break;
        case 'f': follow = 1; break;
        case 'j': o.json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki events [--asset ID] [--since T] [--follow] [--json]\n\n"
                "The brokers' security events mqpkid stored (docs/detect.md), oldest\n"
                "first: connects and refusals, ACL denials, disconnects, session\n"
                "takeovers, shared certificates, per-asset counters.\n"
                "  --since T   a duration back from now (15m, 24h) or an RFC 3339 time\n"
                "  --follow    keep printing new events as they arrive\n"
                "  --json      one JSON object a line\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (asset != NULL && !proto_asset_id_valid(asset))
        return cli_usage_error(cli, "--asset '%.80s' is not a valid asset id", asset);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (!o.json && !follow)
        printf("%-6s %-20s %-10s %-16s %-20s %-15s %s\n", "ID", "TIME", "BROKER", "TYPE", "ASSET",
               "ADDRESS", "EVENT");
    rc = inventory_events_list(datadir_inventory(dd), asset, since, 0, 0, print_event, &o);
    while (rc == MQPKI_OK && follow) {
        sleep(1);
        rc = inventory_events_list(datadir_inventory(dd), asset, since, o.last_id, FOLLOW_PAGE,
                                   print_event, &o);
    }
out:
    datadir_close(dd);
    return rc;
}

struct alerts_out {
    int json;
    json_t *list;
};

static int print_alert(const struct inventory_alert *a, void *ctx)
{
    struct alerts_out *o = ctx;
    char when[32];
    json_t *evidence;

    if (o->json) {
        evidence = json_loads(a->evidence, 0, NULL);
        return json_array_append_new(
                   o->list,
                   json_pack(
                       "{s:I, s:o, s:s, s:s?, s:s?, s:s?, s:s, s:s, s:o, s:s, s:o, s:s?, s:s?}",
                       "id", (json_int_t)a->id, "time", cli_json_time(a->time), "rule", a->rule,
                       "asset", a->asset[0] ? a->asset : NULL, "address",
                       a->address[0] ? a->address : NULL, "broker", a->broker[0] ? a->broker : NULL,
                       "response", a->response, "outcome", a->outcome, "evidence",
                       evidence != NULL ? evidence : json_object(), "state",
                       a->state == INV_ALERT_OPEN ? "open" : "acked", "acked_at",
                       cli_json_time(a->acked_at), "acked_by", a->acked_by[0] ? a->acked_by : NULL,
                       "cause", a->cause[0] ? a->cause : NULL)) != 0;
    }
    printf("%-5lld %s %-5s %-17s %-20s %-10s %s\n", (long long)a->id, cli_time(a->time, when),
           a->state == INV_ALERT_OPEN ? "open" : "acked", a->rule,
           a->asset[0] ? a->asset : a->address, a->response, a->outcome);
    return 0;
}

int cmd_alerts(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"open", no_argument, NULL, 'o'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct alerts_out o = {0, NULL};
    struct datadir *dd = NULL;
    int c, rc, open_only = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': open_only = 1; break;
        case 'j': o.json = 1; break;
        case 'h':
            return cli_help("usage: mqpki alerts [--open] [--json]\n\n"
                            "The alerts the detectors raised, newest first, with the response\n"
                            "each one took (docs/detect.md). --open: those not acknowledged.\n"
                            "Acknowledge one with 'mqpki alerts ack ID'.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (o.json && (o.list = json_array()) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!o.json)
        printf("%-5s %-20s %-5s %-17s %-20s %-10s %s\n", "ID", "TIME", "STATE", "RULE",
               "ASSET/ADDRESS", "RESPONSE", "OUTCOME");
    rc = inventory_alert_list(datadir_inventory(dd), open_only, print_alert, &o);
    if (rc == MQPKI_OK && o.json) {
        rc = cli_print_json(o.list);
        o.list = NULL;
    }
out:
    json_decref(o.list);
    datadir_close(dd);
    return rc;
}

int cmd_alerts_ack(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    char *end = NULL;
    long long id;
    int c, rc, changed = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help("usage: mqpki alerts ack ID\n\n"
                            "Marks an alert as seen (audited). It lifts no hold or quarantine:\n"
                            "that is 'mqpki release --asset ID'.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one alert ID");
    id = strtoll(argv[optind], &end, 10);
    if (end == argv[optind] || *end != '\0' || id < 1)
        return cli_usage_error(cli, "alert ID '%.40s' is not a positive number", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_alert_ack(datadir_inventory(dd), id, "cli", &changed)) != MQPKI_OK)
        goto out;
    printf(changed ? "alert %lld acknowledged\n" : "alert %lld was acknowledged already\n", id);
out:
    datadir_close(dd);
    return rc;
}

struct held {
    char serial[8][PROTO_SERIAL_HEX_MAX + 1];
    int n, compromised;
};

static int collect_held(const struct inventory_cert *c, void *ctx)
{
    struct held *h = ctx;

    if (c->reason == CA_REASON_KEY_COMPROMISE)
        h->compromised++;
    else if (c->reason == CA_REASON_HOLD && h->n < 8)
        snprintf(h->serial[h->n++], sizeof(h->serial[0]), "%s", c->serial);
    return 0;
}

int cmd_release(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"asset", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    struct held h;
    const char *asset = NULL;
    int c, rc, removed = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': asset = optarg; break;
        case 'h':
            return cli_help("usage: mqpki release --asset ID\n\n"
                            "After review, lifts what a detector put on the asset: its\n"
                            "certificates on hold become valid again (a delta CRL at once) and a\n"
                            "quarantine ends (mqpkid tells the brokers within a second). A\n"
                            "certificate revoked for key compromise stays revoked: release never\n"
                            "re-validates it.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (asset == NULL)
        return cli_usage_error(cli, "--asset is required");
    if (!proto_asset_id_valid(asset))
        return cli_usage_error(cli, "--asset '%.80s' is not a valid asset id", asset);
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    memset(&h, 0, sizeof(h));
    if ((rc = inventory_cert_list(datadir_inventory(dd), asset, INV_CERT_REVOKED, 0, collect_held,
                                  &h)) != MQPKI_OK)
        goto out;
    for (int i = 0; i < h.n; i++) {
        struct lifecycle_change ch;
        if ((rc = lifecycle_unhold(datadir_lifecycle(dd), h.serial[i], "cli", &ch)) != MQPKI_OK ||
            (rc = cli_publish_change(dd, &ch, "released from hold", NULL)) != MQPKI_OK)
            goto out;
    }
    if ((rc = inventory_quarantine_remove(datadir_inventory(dd), asset, "cli", &removed)) !=
        MQPKI_OK)
        goto out;
    if (removed)
        printf("asset %s released from quarantine (the brokers learn it from mqpkid)\n", asset);
    if (h.compromised > 0)
        printf("asset %s: %d certificate%s revoked for key compromise stay%s revoked\n", asset,
               h.compromised, h.compromised == 1 ? "" : "s", h.compromised == 1 ? "s" : "");
    if (h.n == 0 && !removed)
        printf("asset %s: nothing to release (no certificate on hold, no quarantine)\n", asset);
out:
    datadir_close(dd);
    return rc;
}
