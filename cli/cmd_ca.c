/* cli: CA-wide commands: init, ca export, crl, audit verify. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"

#define MAX_HOSTNAMES 32

static void init_progress(const char *step)
{
    fprintf(stderr, "init: %s\n", step);
}

/* The CDP host of the new CA's certificates: a loopback name there means that no device,
 * broker or relying party elsewhere can fetch the CRL. */
static void warn_local_cdp(const char *home)
{
    struct datadir_config cfg;
    const char *h;
    size_t n;

    if (datadir_config_load(home, &cfg) != MQPKI_OK) {
        mqpki_err_clear();
        return;
    }
    h = strstr(cfg.url, "://");
    h = h != NULL ? h + 3 : cfg.url;
    n = h[0] == '[' ? strcspn(h, "]") + 1 : strcspn(h, ":/");
    if ((n == 9 && strncasecmp(h, "localhost", 9) == 0) || strncmp(h, "127.", 4) == 0 ||
        (n == 5 && strncmp(h, "[::1]", 5) == 0))
        fprintf(stderr,
                "mqpki init: warning: certificates name the CRL distribution point %s/crl/"
                "issuing.crl on this host only; devices and brokers elsewhere cannot fetch it. "
                "Use --url http://HOST:PORT with [http] crl_listen in mqpki.conf (docs/"
                "configuration.md)\n",
                cfg.url);
}

int cmd_init(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"ca-name", required_argument, NULL, 'n'},
        {"key", required_argument, NULL, 'k'},
        {"hostname", required_argument, NULL, 'H'},
        {"url", required_argument, NULL, 'u'},
        {"root-home", required_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct datadir_init_opts o;
    const char *hostnames[MAX_HOSTNAMES];
    int c, rc;

    memset(&o, 0, sizeof(o));
    o.hostnames = hostnames;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'n': o.ca_name = optarg; break;
        case 'k': o.key_type = optarg; break;
        case 'u': o.url = optarg; break;
        case 'R': o.root_home = optarg; break;
        case 'H':
            if (o.n_hostnames == MAX_HOSTNAMES)
                return cli_usage_error(cli, "at most %d --hostname", MAX_HOSTNAMES);
            hostnames[o.n_hostnames++] = optarg;
            break;
        case 'h':
            return cli_help(
                "usage: mqpki init [--ca-name NAME] [--key ec-p256|ec-p384|rsa-3072]\n"
                "                  [--hostname NAME ...] [--url https://HOST:PORT]\n"
                "                  [--root-home DIR]\n\n"
                "Creates a CA in the data directory: a SoftHSM token with a random PIN\n"
                "(secrets/pin, 0600), root and issuing CA keys generated inside the token,\n"
                "the inventory store, mqpkid's TLS certificate (localhost, 127.0.0.1, ::1,\n"
                "this host and every --hostname) and a first CRL.\n"
                "  --ca-name NAME   CA name in the certificates (default mqpki)\n"
                "  --key TYPE       CA key type (default ec-p256)\n"
                "  --hostname NAME  extra DNS name or IP address for mqpkid (repeatable)\n"
                "  --url URL        base of the CRL distribution point in every certificate,\n"
                "                   URL/crl/issuing.crl (default https://localhost:8443; an\n"
                "                   http:// URL points at mqpkid's [http] crl_listen). A\n"
                "                   localhost URL gets a warning: no one else can fetch it.\n"
                "  --root-home DIR  keep the root offline: DIR is a root made by `mqpki root\n"
                "                   init` (its own token); its key certifies the issuing CA\n"
                "                   and audit keys now and never enters this CA's token.\n"
                "                   Rollovers then take `ca rollover --csr-out` and `root\n"
                "                   sign` (docs/operations.md, \"Key ceremony\").\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    rc = datadir_init(cli->home, &o, init_progress);
    if (rc == MQPKI_OK)
        printf("CA ready in %s\n", cli->home);
    if (rc == MQPKI_OK)
        warn_local_cdp(cli->home);
    return rc;
}

int cmd_ca_export(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *out = NULL;
    struct datadir *dd = NULL;
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'h':
            return cli_help("usage: mqpki ca export [--out FILE]\n\n"
                            "Prints the CA chain as PEM: the issuing CA, every older generation\n"
                            "still trusted after a rollover (mqpki ca list), then the root: the\n"
                            "trust anchor to give devices, brokers and openssl verify -CAfile.\n"
                            "--out FILE: '-' is stdout; a regular file (also behind a link) is\n"
                            "replaced atomically, a device or FIFO written in place.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_output_check(out)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, 0, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_path(dd, "ca/chain.pem", path)) != MQPKI_OK)
        goto out;
    if ((rc = mqpki_file_read(path, 256 * 1024, &pem, &len)) != MQPKI_OK)
        goto out;
    rc = cli_output(out, pem, len);
out:
    free(pem);
    datadir_close(dd);
    return rc;
}

/* What `mqpki crl` shows of one CRL. */
static json_t *crl_json(const struct inventory_crl *c)
{
    static const char *const states[] = {"pending", "signed", "published"};

    return json_pack("{s:I, s:s, s:s, s:s, s:o, s:o, s:I, s:o, s:o}", "number",
                     (json_int_t)c->number, "kind", c->kind == INV_CRL_FULL ? "full" : "delta",
                     "state", c->state >= 0 && c->state < 3 ? states[c->state] : "?", "reason",
                     c->reason, "this_update", cli_json_time(c->this_update), "next_update",
                     cli_json_time(c->next_update), "entries", (json_int_t)c->entries, "base",
                     c->base >= 0 ? json_integer(c->base) : json_null(), "requested",
                     cli_json_time(c->created_at));
}

struct crl_show {
    json_t *open, *brokers;
};

static int show_open(const struct inventory_crl *c, void *ctx)
{
    struct crl_show *s = ctx;

    json_array_append_new(s->open, crl_json(c));
    return 0;
}

static int show_broker(const char *broker, int64_t full, int64_t delta, int64_t when, void *ctx)
{
    struct crl_show *s = ctx;

    json_array_append_new(s->brokers,
                          json_pack("{s:s, s:o, s:o, s:o}", "broker", broker, "full",
                                    full >= 0 ? json_integer(full) : json_null(), "delta",
                                    delta >= 0 ? json_integer(delta) : json_null(), "reported",
                                    cli_json_time(when)));
    return 0;
}

static void print_crl_line(const char *label, json_t *c)
{
    if (c == NULL || json_is_null(c)) {
        printf("%-6s none\n", label);
        return;
    }
    printf("%-6s CRL %lld  thisUpdate %s  nextUpdate %s  %lld entr%s", label,
           (long long)json_integer_value(json_object_get(c, "number")),
           json_string_value(json_object_get(c, "this_update")),
           json_string_value(json_object_get(c, "next_update")),
           (long long)json_integer_value(json_object_get(c, "entries")),
           json_integer_value(json_object_get(c, "entries")) == 1 ? "y" : "ies");
    if (json_is_integer(json_object_get(c, "base")))
        printf("  base %lld", (long long)json_integer_value(json_object_get(c, "base")));
    printf("\n");
}

/* Writes the newest CRL of kind from the store (the truth; crl/ holds the same bytes). */
static int crl_write(struct inventory *inv, int kind, const char *out, int as_der)
{
    struct inventory_crl c;
    unsigned char *der = NULL;
    const unsigned char *p;
    X509_CRL *crl = NULL;
    char *pem = NULL;
    size_t len = 0;
    int rc;

    if ((rc = inventory_crl_latest(inv, kind, &c)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc,
                            "no %s CRL in the store yet (a store from before CRLs were kept "
                            "there gets one from 'mqpki crl publish' or mqpkid's start)",
                            kind == INV_CRL_FULL ? "full" : "delta");
        return rc;
    }
    if ((rc = inventory_crl_der(inv, c.number, &der, &len)) != MQPKI_OK)
        return rc;
    if (as_der) {
        rc = cli_output(out, der, len);
        goto out;
    }
    p = der;
    if ((crl = d2i_X509_CRL(NULL, &p, (long)len)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "CRL %lld in the store does not parse",
                        (long long)c.number);
        goto out;
    }
    if ((rc = ca_crl_pem(crl, &pem, &len)) == MQPKI_OK)
        rc = cli_output(out, pem, len);
out:
    free(der);
    free(pem);
    X509_CRL_free(crl);
    return rc;
}

int cmd_crl(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"der", no_argument, NULL, 'd'},
                                         {"pem", no_argument, NULL, 'p'},
                                         {"delta", no_argument, NULL, 'D'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct crl_show show = {NULL, NULL};
    struct inventory_crl c;
    struct datadir *dd = NULL;
    struct inventory *inv;
    const char *out = NULL;
    json_t *v = NULL, *full = NULL, *delta = NULL;
    int64_t open = 0;
    int ch, rc, as_der = 0, as_pem = 0, kind = INV_CRL_FULL, json = 0;

    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'd': as_der = 1; break;
        case 'p': as_pem = 1; break;
        case 'D': kind = INV_CRL_DELTA; break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki crl [--json]\n"
                "       mqpki crl (--pem | --der | --out FILE) [--delta]\n\n"
                "Shows the CRLs without signing anything: the newest full and delta CRL\n"
                "(number, thisUpdate, nextUpdate, entries), publications still open, and\n"
                "which CRL each broker reported holding. --pem prints the newest full CRL\n"
                "(--delta: delta CRL) as PEM, --der as DER, --out FILE writes it to FILE.\n"
                "'mqpki crl publish' signs a new full CRL now.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (as_der && as_pem)
        return cli_usage_error(cli, "give one of --pem and --der");
    if (json && (as_der || as_pem || out != NULL))
        return cli_usage_error(cli, "--json shows the state; it does not go with --pem, --der, "
                                    "--out");
    if (as_der && cli_output_stdout(out) && isatty(1))
        return cli_usage_error(cli, "--der writes binary: give --out FILE or redirect stdout");
    if ((rc = cli_output_check(out)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    inv = datadir_inventory(dd);
    if (as_der || as_pem || out != NULL) {
        rc = crl_write(inv, kind, out, as_der);
        goto out;
    }
    show.open = json_array();
    show.brokers = json_array();
    if ((rc = inventory_crl_latest(inv, INV_CRL_FULL, &c)) == MQPKI_OK)
        full = crl_json(&c);
    if (rc == MQPKI_OK || rc == MQPKI_ERR_NOT_FOUND)
        rc = inventory_crl_latest(inv, INV_CRL_DELTA, &c);
    if (rc == MQPKI_OK)
        delta = crl_json(&c);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = MQPKI_OK;
    if (rc != MQPKI_OK || (rc = inventory_crl_open(inv, show_open, &show, &open)) != MQPKI_OK ||
        (rc = inventory_broker_crl_list(inv, show_broker, &show)) != MQPKI_OK)
        goto out;
    v = json_pack("{s:o, s:o, s:O, s:O}", "full", full ? full : json_null(), "delta",
                  delta ? delta : json_null(), "open", show.open, "brokers", show.brokers);
    full = delta = NULL;
    if (v == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (json) {
        rc = cli_print_json(v);
        v = NULL;
        goto out;
    }
    print_crl_line("full", json_object_get(v, "full"));
    print_crl_line("delta", json_object_get(v, "delta"));
    if (open > 0)
        printf("open   %lld publication%s not finished (any mutating mqpki command or mqpkid "
               "finishes %s)\n",
               (long long)open, open == 1 ? "" : "s", open == 1 ? "it" : "them");
    for (size_t i = 0; i < json_array_size(show.brokers); i++) {
        json_t *b = json_array_get(show.brokers, i);
        char f[24] = "none", d[24] = "none";
        if (json_is_integer(json_object_get(b, "full")))
            snprintf(f, sizeof(f), "%lld",
                     (long long)json_integer_value(json_object_get(b, "full")));
        if (json_is_integer(json_object_get(b, "delta")))
            snprintf(d, sizeof(d), "%lld",
                     (long long)json_integer_value(json_object_get(b, "delta")));
        printf("broker %-20s holds full CRL %s, delta CRL %s (reported %s)\n",
               json_string_value(json_object_get(b, "broker")), f, d,
               json_string_value(json_object_get(b, "reported")));
    }
out:
    json_decref(v);
    json_decref(full);
    json_decref(delta);
    json_decref(show.open);
    json_decref(show.brokers);
    datadir_close(dd);
    return rc;
}

int cmd_crl_publish(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct datadir_publication pub;
    struct datadir *dd = NULL;
    int64_t number = 0;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'h':
            return cli_help("usage: mqpki crl publish\n\n"
                            "Signs a new full CRL now from the store, publishes it (through\n"
                            "mqpkid to every broker when it runs) and writes crl/issuing.crl.\n"
                            "mqpkid does this by itself on its schedule ([ca] crl_full_every).\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = lifecycle_crl_request(datadir_lifecycle(dd), INV_CRL_FULL, "operator", "cli",
                                    &number)) != MQPKI_OK ||
        (rc = datadir_publish(dd, 0, &pub)) != MQPKI_OK)
        goto out;
    printf("full CRL %lld signed and published", (long long)pub.full_number);
    if (pub.by_daemon)
        printf("; mqpkid fed %d of %d broker%s\n", pub.brokers_linked, pub.brokers,
               pub.brokers == 1 ? "" : "s");
    else
        printf(" to crl/; mqpkid is not running: brokers get it when it starts\n");
out:
    datadir_close(dd);
    return rc;
}

/* A checkpoint in `audit` output. */
static json_t *checkpoint_json(const struct inventory_audit_checkpoint *cp)
{
    char head[2 * PROTO_AUDIT_HASH_LEN + 1];

    mqpki_hex(cp->head, PROTO_AUDIT_HASH_LEN, head);
    return json_pack("{s:I, s:I, s:s, s:o}", "id", (json_int_t)cp->id, "event", (json_int_t)cp->seq,
                     "head", head, "time", cli_json_time(cp->time));
}

int cmd_audit_verify(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'},
                                         {"checkpoint", required_argument, NULL, 'c'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *files[DATADIR_AUDIT_COPIES_MAX - 1];
    struct datadir_audit_report rep;
    const struct inventory_audit_report *r = &rep.store;
    struct datadir *dd = NULL;
    size_t n_files = 0;
    char when[32];
    int c, rc, json = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'c':
            if (n_files == sizeof(files) / sizeof(files[0]))
                return cli_usage_error(cli, "at most %zu --checkpoint files",
                                       sizeof(files) / sizeof(files[0]));
            files[n_files++] = optarg;
            break;
        case 'h':
            return cli_help(
                "usage: mqpki audit verify [--json] [--checkpoint FILE ...]\n\n"
                "Recomputes the audit log's hash chain and checks every signed checkpoint\n"
                "against the audit key (ca/audit.pem, certified by the root CA): each\n"
                "signature, gapless numbering, and the head each one certifies. Also checks\n"
                "the copies kept outside the store: crl/audit-checkpoint.json and every\n"
                "--checkpoint FILE (for example the retained message of a broker:\n"
                "mosquitto_sub ... -t " PROTO_TOPIC_AUDIT_CHECKPOINT " -C 1 > FILE).\n"
                "Exit 0 when intact, 1 when an event or checkpoint was edited, forged or\n"
                "deleted (the first one found is named). Events after the last checkpoint\n"
                "are only as good as the plain hash chain.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    rc = datadir_audit_verify(dd, files, n_files, &rep);
    if (rc != MQPKI_OK && rc != MQPKI_ERR_TAMPERED)
        goto out;
    if (json) {
        json_t *v = json_pack("{s:b, s:I, s:I, s:I}", "intact", rc == MQPKI_OK, "events",
                              (json_int_t)r->events, "checkpoints", (json_int_t)r->checkpoints,
                              "unanchored_events", (json_int_t)r->unanchored);
        json_t *copies = json_array();
        json_object_set_new(v, "audit_key_fingerprint",
                            rep.have_key ? json_string(rep.key_fp) : json_null());
        json_object_set_new(v, "last_checkpoint",
                            r->last.id > 0 ? checkpoint_json(&r->last) : json_null());
        for (size_t i = 0; i < rep.n_copies; i++)
            json_array_append_new(copies, json_pack("{s:s, s:I}", "source", rep.copies[i].source,
                                                    "id", (json_int_t)rep.copies[i].id));
        json_object_set_new(v, "published", copies);
        if (rc == MQPKI_ERR_TAMPERED) {
            json_object_set_new(v, "first_bad_event",
                                r->bad_seq > 0 ? json_integer(r->bad_seq) : json_null());
            json_object_set_new(v, "bad_checkpoint",
                                r->bad_checkpoint > 0 ? json_integer(r->bad_checkpoint)
                                                      : json_null());
            json_object_set_new(v, "error", json_string(mqpki_err_detail(rc)));
        }
        int prc = cli_print_json(v);
        if (rc == MQPKI_OK)
            rc = prc;
    } else if (rc == MQPKI_OK) {
        printf("audit log intact: %lld events, %lld signed checkpoint%s verified\n",
               (long long)r->events, (long long)r->checkpoints, r->checkpoints == 1 ? "" : "s");
        if (rep.have_key)
            printf("audit key: %s (ca/audit.pem, certified by the root CA)\n", rep.key_fp);
        else
            printf("no audit key yet: the log is only as good as the plain hash chain (the key\n"
                   "is made the next time a command or mqpkid opens the token)\n");
        if (r->last.id > 0) {
            mqpki_time_str(r->last.time, when);
            printf("last verified checkpoint: %lld at event %lld, signed %s\n",
                   (long long)r->last.id, (long long)r->last.seq, when);
        }
        for (size_t i = 0; i < rep.n_copies; i++)
            printf("copy checked: %s (checkpoint %lld)\n", rep.copies[i].source,
                   (long long)rep.copies[i].id);
        if (r->unanchored > 0 && rep.have_key)
            printf("%lld event%s after the last checkpoint %s only as good as the plain hash "
                   "chain until the next checkpoint\n",
                   (long long)r->unanchored, r->unanchored == 1 ? "" : "s",
                   r->unanchored == 1 ? "is" : "are");
    }
    if (rc == MQPKI_ERR_TAMPERED) {
        /* A copy: the detail is rewritten in the buffer it lives in. */
        const char *d = mqpki_err_detail(rc), *prefix = "audit log: ";
        char detail[512];
        snprintf(detail, sizeof(detail), "%s",
                 strncmp(d, prefix, strlen(prefix)) == 0 ? d + strlen(prefix) : d);
        rc = mqpki_fail(rc, "audit log tampered: %s", detail);
    }
out:
    datadir_close(dd);
    return rc;
}

int cmd_audit_checkpoint(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct inventory_audit_checkpoint cp;
    struct datadir *dd = NULL;
    char when[32], head[2 * PROTO_AUDIT_HASH_LEN + 1];
    int c, rc, json = 0, made = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help("usage: mqpki audit checkpoint [--json]\n\n"
                            "Signs a checkpoint of the audit log's head now with the audit key\n"
                            "(through mqpkid when it runs) and exports it to\n"
                            "crl/audit-checkpoint.json; mqpkid publishes it to the brokers.\n"
                            "Nothing is signed when the newest checkpoint already covers the\n"
                            "head. mqpkid signs one after every CRL publication and every\n"
                            "[audit] checkpoint_every.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE | DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK ||
        (rc = datadir_audit_checkpoint(dd, NULL, &cp, &made)) != MQPKI_OK)
        goto out;
    if (json) {
        json_t *v = checkpoint_json(&cp);
        json_object_set_new(v, "signed", json_boolean(made));
        rc = cli_print_json(v);
    } else {
        mqpki_time_str(cp.time, when);
        mqpki_hex(cp.head, PROTO_AUDIT_HASH_LEN, head);
        printf("%s %lld: event %lld (head %.16s...), %s%s\n",
               made ? "signed checkpoint" : "the newest checkpoint already covers the head:",
               (long long)cp.id, (long long)cp.seq, head, when,
               datadir_ca_remote(dd) ? " (by mqpkid)" : "");
    }
out:
    datadir_close(dd);
    return rc;
}
