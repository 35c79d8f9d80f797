/* cli: certificates: issue, cert list, revoke, unhold. */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"
#include "proto.h"

json_t *cli_cert_json(const struct inventory_cert *c);

json_t *cli_cert_json(const struct inventory_cert *c)
{
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:o, s:o, s:o, s:s?, s:s}", "serial", c->serial, "asset", c->asset_id,
        "profile", c->profile, "state", inventory_cert_state_name(c->state), "not_before",
        cli_json_time(c->not_before), "not_after", cli_json_time(c->not_after), "revoked_at",
        cli_json_time(c->revoked_at), "reason",
        c->reason >= 0 && c->revoked_at ? ca_reason_name((enum ca_reason)c->reason) : NULL,
        "key_fingerprint", c->key_fp);
}

int cmd_issue(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"asset", required_argument, NULL, 'a'},
        {"csr", required_argument, NULL, 'c'},
        {"profile", required_argument, NULL, 'p'},
        {"days", required_argument, NULL, 'd'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct lifecycle_issue_req req;
    struct datadir *dd = NULL;
    const char *csr_path = NULL, *out = NULL;
    unsigned char *csr = NULL;
    X509 *cert = NULL;
    char *pem = NULL;
    size_t csr_len = 0, pem_len;
    int c, rc = MQPKI_OK;

    memset(&req, 0, sizeof(req));
    req.profile = -1;
    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': req.asset_id = optarg; break;
        case 'c': csr_path = optarg; break;
        case 'o': out = optarg; break;
        case 'p':
            if ((req.profile = ca_profile_parse(optarg)) < 0 ||
                !ca_profile(req.profile)->requestable)
                rc = cli_usage_error(cli, "--profile '%.40s': use device or broker", optarg);
            break;
        case 'd': rc = cli_parse_int(cli, "--days", optarg, 1, 825, &req.days); break;
        case 'h':
            return cli_help(
                "usage: mqpki issue --asset ID --csr FILE [--profile device|broker] [--days N]\n"
                "                   [--out FILE]\n\n"
                "Issues a certificate for a registered asset from a PKCS#10 request (PEM or\n"
                "DER). The CA checks the request's signature and key (EC P-256/P-384, RSA >=\n"
                "2048) and sets subject and extensions itself: nothing is copied from the\n"
                "request. The profile defaults to the asset's kind. Prints the certificate\n"
                "(PEM) once it is recorded in the store, or writes it to --out FILE (checked\n"
                "before anything is signed; '-' is stdout). 'mqpki cert get' prints it again.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind != argc) {
        rc = cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (req.asset_id == NULL || csr_path == NULL) {
        rc = cli_usage_error(cli, "--asset and --csr are required");
        goto out;
    }
    if (!proto_asset_id_valid(req.asset_id)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters",
                        req.asset_id);
        goto out;
    }
    /* Before signing: a certificate recorded but never handed over is debris in the store. */
    if ((rc = cli_output_check(out)) != MQPKI_OK)
        goto out;
    if ((rc = mqpki_file_read(csr_path, CA_CSR_MAX, &csr, &csr_len)) != MQPKI_OK)
        goto out;
    if ((rc = cli_open(cli, DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    req.csr = csr;
    req.csr_len = csr_len;
    req.actor = "cli";
    datadir_profile_days(datadir_config(dd), req.profile_days);
    if ((rc = lifecycle_issue(datadir_ca(dd), datadir_inventory(dd), &req, &cert)) != MQPKI_OK)
        goto out;
    if ((rc = ca_cert_pem(cert, &pem, &pem_len)) != MQPKI_OK)
        goto out;
    if ((rc = cli_output(out, pem, pem_len)) != MQPKI_OK) {
        /* Checked above, yet the disk may fill up: say where the certificate still is. */
        char detail[300], serial[PROTO_SERIAL_HEX_MAX + 1] = "?";
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        (void)proto_serial_hex(X509_get0_serialNumber(cert), serial);
        rc = mqpki_fail(rc,
                        "certificate %s of asset %s issued and recorded, but not written: %s; "
                        "'mqpki cert get --serial %s --out FILE' writes it",
                        serial, req.asset_id, detail, serial);
    }
out:
    free(pem);
    free(csr);
    X509_free(cert);
    datadir_close(dd);
    return rc;
}

struct cert_list_ctx {
    int json;
    size_t n;
};

static void cert_header(void)
{
    printf("%-32s  %-20s %-8s %-10s %-14s %s\n", "SERIAL", "ASSET", "PROFILE", "STATE", "REASON",
           "NOT AFTER");
}

static int print_cert(const struct inventory_cert *c, void *ctx)
{
    struct cert_list_ctx *l = ctx;
    char t[32];

    if (l->json) {
        json_t *v = cli_cert_json(c);
        char *text = v != NULL ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        fputs(l->n ? ",\n  " : "\n  ", stdout);
        if (text != NULL)
            fputs(text, stdout);
        free(text);
        json_decref(v);
    } else {
        if (l->n == 0)
            cert_header();
        printf("%-32s  %-20s %-8s %-10s %-14s %s\n", c->serial, c->asset_id, c->profile,
               inventory_cert_state_name(c->state),
               c->revoked_at && c->reason >= 0 ? ca_reason_name((enum ca_reason)c->reason) : "-",
               cli_time(c->not_after, t));
    }
    l->n++;
    return 0;
}

int cmd_cert_list(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"asset", required_argument, NULL, 'a'},
        {"state", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cert_list_ctx l = {0};
    struct datadir *dd = NULL;
    const char *asset = NULL;
    int c, rc, state = -1;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': asset = optarg; break;
        case 's':
            if ((state = inventory_cert_state_parse(optarg)) < 0)
                return cli_usage_error(cli,
                                       "--state '%.40s': use valid, revoked, expired or "
                                       "superseded",
                                       optarg);
            break;
        case 'j': l.json = 1; break;
        case 'h':
            return cli_help("usage: mqpki cert list [--asset ID] [--state valid|revoked|expired|"
                            "superseded] [--json]\n\n"
                            "Lists certificates in issue order.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (asset != NULL && !proto_asset_id_valid(asset))
        return cli_usage_error(cli, "--asset '%.80s': not a valid asset id", asset);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if (l.json)
        fputs("[", stdout);
    rc = inventory_cert_list(datadir_inventory(dd), asset, state, 0, print_cert, &l);
    if (l.json)
        fputs(l.n ? "\n]\n" : "]\n", stdout);
    else if (rc == MQPKI_OK && l.n == 0)
        cert_header(); /* no rows: the header alone says the listing ran */
out:
    datadir_close(dd);
    return rc;
}

/* A serial as typed by a user: hex digits, optional 0x and colons; upper-cased. */
static int normalize_serial(struct cli *cli, const char *in, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    if (proto_serial_norm(in, out) != 0)
        return cli_usage_error(cli,
                               "--serial: expected a hexadecimal serial number (at most %d "
                               "digits)",
                               PROTO_SERIAL_HEX_MAX);
    return MQPKI_OK;
}

int cmd_cert_get(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"serial", required_argument, NULL, 's'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct inventory_cert cert;
    struct datadir *dd = NULL;
    const char *serial_arg = NULL, *out = NULL;
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    int c, rc;

    memset(&cert, 0, sizeof(cert));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': serial_arg = optarg; break;
        case 'o': out = optarg; break;
        case 'h':
            return cli_help("usage: mqpki cert get --serial HEX [--out FILE]\n\n"
                            "Prints a certificate recorded in the store, whatever its state\n"
                            "(valid, revoked, expired, superseded), as PEM; --out FILE writes\n"
                            "it there instead ('-' is stdout). Serials as 'mqpki cert list'\n"
                            "shows them; case, a 0x prefix and ':' separators do not matter.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (serial_arg == NULL)
        return cli_usage_error(cli, "--serial is required");
    if ((rc = normalize_serial(cli, serial_arg, serial)) != MQPKI_OK)
        return rc;
    if ((rc = cli_output_check(out)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    rc = inventory_cert_get(datadir_inventory(dd), serial, 1, &cert);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "no certificate with serial %s in the store", serial);
    if (rc != MQPKI_OK)
        goto out;
    if (cert.pem == NULL || cert.pem[0] == '\0') {
        rc = mqpki_fail(MQPKI_ERR_STORE, "certificate %s: the store holds no PEM for it", serial);
        goto out;
    }
    rc = cli_output(out, cert.pem, strlen(cert.pem));
out:
    inventory_cert_clear(&cert);
    datadir_close(dd);
    return rc;
}

int cmd_revoke(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"serial", required_argument, NULL, 's'},
        {"asset", required_argument, NULL, 'a'},
        {"reason", required_argument, NULL, 'r'},
        {"selector", required_argument, NULL, 'S'},
        {"tag", required_argument, NULL, 'T'},
        {"model", required_argument, NULL, 'M'},
        {"yes", no_argument, NULL, 'y'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct lifecycle_change ch;
    struct datadir *dd = NULL;
    const char *serial_arg = NULL, *asset = NULL, *sel = NULL, *sel_opt = NULL;
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    int c, rc, reason = CA_REASON_UNSPECIFIED, yes = 0, n_sel = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': serial_arg = optarg; break;
        case 'a': asset = optarg; break;
        case 'S': sel_opt = "--selector", sel = optarg, n_sel++; break;
        case 'T': sel_opt = "--tag", sel = optarg, n_sel++; break;
        case 'M': sel_opt = "--model", sel = optarg, n_sel++; break;
        case 'y': yes = 1; break;
        case 'r':
            if ((reason = ca_reason_parse(optarg)) < 0 || reason == CA_REASON_REMOVE_FROM_CRL)
                return cli_usage_error(cli,
                                       "--reason '%.40s': use key-compromise, ca-compromise, "
                                       "affiliation-changed, superseded, cessation or hold",
                                       optarg);
            break;
        case 'h':
            return cli_help(
                "usage: mqpki revoke (--serial HEX | --asset ID) [--reason REASON]\n"
                "       mqpki revoke (--selector FIELD=VALUE | --tag K[=V] | --model M)\n"
                "                    [--reason REASON] [--yes]\n\n"
                "Revokes one certificate, or every live certificate of an asset, and publishes\n"
                "a delta CRL at once: through mqpkid to every broker when it runs, and to\n"
                "crl/issuing-delta.crl. The revocation is recorded before anything is\n"
                "published; if publishing fails or is cut short, mqpkid and every later mqpki\n"
                "command finish it. Revoking again is safe: it says what is already revoked\n"
                "and publishes again if no CRL lists it yet.\n"
                "REASON: key-compromise, ca-compromise, affiliation-changed, superseded,\n"
                "cessation, hold (lifted again by 'mqpki unhold'); default unspecified.\n\n"
                "A selector revokes every live certificate of the assets it matches (FIELD:\n"
                "location, model, firmware, kind, tag.KEY) in one transaction and one CRL\n"
                "publication, after a confirmation on the terminal (--yes skips it), with a\n"
                "progress bar on a terminal. Example:\n"
                "  mqpki revoke --selector location=feeder-12 --reason cessation --yes\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (n_sel > 0) {
        if (n_sel > 1 || serial_arg != NULL || asset != NULL)
            return cli_usage_error(cli, "give one of --serial, --asset, --selector, --tag, "
                                        "--model");
        return cli_revoke_selector(cli, sel_opt, sel, reason, yes);
    }
    if (yes)
        return cli_usage_error(cli, "--yes goes with --selector, --tag or --model");
    if ((serial_arg == NULL) == (asset == NULL))
        return cli_usage_error(cli, "give exactly one of --serial and --asset");
    if (serial_arg != NULL && (rc = normalize_serial(cli, serial_arg, serial)) != MQPKI_OK)
        return rc;
    if (asset != NULL && !proto_asset_id_valid(asset))
        return cli_usage_error(cli, "--asset '%.80s': not a valid asset id", asset);
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if (asset != NULL)
        rc = lifecycle_revoke_asset(datadir_lifecycle(dd), asset, reason, "cli", &ch);
    else
        rc = lifecycle_revoke(datadir_lifecycle(dd), serial, reason, "cli", &ch);
    if (rc != MQPKI_OK)
        goto out;
    if (reason == CA_REASON_HOLD)
        rc = cli_publish_change(dd, &ch, "put on hold", NULL);
    else
        rc = cli_publish_change(dd, &ch, "revoked", ca_reason_name((enum ca_reason)reason));
out:
    datadir_close(dd);
    return rc;
}

int cmd_unhold(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"serial", required_argument, NULL, 's'},
                                         {"asset", required_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct lifecycle_change ch;
    struct datadir *dd = NULL;
    const char *serial_arg = NULL, *asset = NULL;
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': serial_arg = optarg; break;
        case 'a': asset = optarg; break;
        case 'h':
            return cli_help("usage: mqpki unhold (--serial HEX | --asset ID)\n\n"
                            "Lifts a 'hold' (certificateHold) revocation: the certificate is\n"
                            "valid again; a delta CRL says removeFromCRL at once and the next\n"
                            "full CRL no longer lists it. --asset lifts the holds of all the\n"
                            "asset's certificates on hold, in one step.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((serial_arg == NULL) == (asset == NULL))
        return cli_usage_error(cli, "give exactly one of --serial and --asset");
    if (asset != NULL)
        return cli_unhold_asset(cli, asset);
    if ((rc = normalize_serial(cli, serial_arg, serial)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = lifecycle_unhold(datadir_lifecycle(dd), serial, "cli", &ch)) != MQPKI_OK)
        goto out;
    rc = cli_publish_change(dd, &ch, "released from hold", NULL);
out:
    datadir_close(dd);
    return rc;
}
