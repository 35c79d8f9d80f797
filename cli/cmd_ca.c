/* cli: CA-wide commands: init, ca export, crl, audit verify. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"

#define MAX_HOSTNAMES 32

static void init_progress(const char *step)
{
    fprintf(stderr, "init: %s\n", step);
}

int cmd_init(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"ca-name", required_argument, NULL, 'n'},  {"key", required_argument, NULL, 'k'},
        {"hostname", required_argument, NULL, 'H'}, {"url", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
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
        case 'H':
            if (o.n_hostnames == MAX_HOSTNAMES)
                return cli_usage_error(cli, "at most %d --hostname", MAX_HOSTNAMES);
            hostnames[o.n_hostnames++] = optarg;
            break;
        case 'h':
            return cli_help(
                "usage: mqpki init [--ca-name NAME] [--key ec-p256|ec-p384|rsa-3072]\n"
                "                  [--hostname NAME ...] [--url https://HOST:PORT]\n\n"
                "Creates a CA in the data directory: a SoftHSM token with a random PIN\n"
                "(secrets/pin, 0600), root and issuing CA keys generated inside the token,\n"
                "the inventory store, mqpkid's TLS certificate (localhost, 127.0.0.1, ::1,\n"
                "this host and every --hostname) and a first CRL.\n"
                "  --ca-name NAME   CA name in the certificates (default mqpki)\n"
                "  --key TYPE       CA key type (default ec-p256)\n"
                "  --hostname NAME  extra DNS name or IP address for mqpkid (repeatable)\n"
                "  --url URL        base URL of mqpkid for the CRL distribution point\n"
                "                   (default https://localhost:8443)\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    rc = datadir_init(cli->home, &o, init_progress);
    if (rc == MQPKI_OK)
        printf("CA ready in %s\n", cli->home);
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
                            "Prints the CA chain, issuing CA then root CA, as PEM: the trust\n"
                            "anchor to give devices, brokers and openssl verify -CAfile.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
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

int cmd_crl(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, NULL, 'o'},
                                         {"der", no_argument, NULL, 'd'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *out = NULL;
    struct datadir *dd = NULL;
    X509_CRL *crl = NULL;
    unsigned char *der = NULL;
    char *pem = NULL;
    size_t len;
    int c, rc, as_der = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'd': as_der = 1; break;
        case 'h':
            return cli_help("usage: mqpki crl [--out FILE] [--der]\n\n"
                            "Signs a new full CRL of every revoked or held, unexpired certificate\n"
                            "(also written to crl/issuing.crl) and prints it, PEM unless --der.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (as_der && out == NULL && isatty(1))
        return cli_usage_error(cli, "--der writes binary: give --out FILE or redirect stdout");
    if ((rc = cli_open(cli, DATADIR_CA, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_crl_refresh(dd, &crl)) != MQPKI_OK)
        goto out;
    if (as_der) {
        if ((rc = ca_crl_der(crl, &der, &len)) == MQPKI_OK)
            rc = cli_output(out, der, len);
    } else {
        if ((rc = ca_crl_pem(crl, &pem, &len)) == MQPKI_OK)
            rc = cli_output(out, pem, len);
    }
out:
    free(der);
    free(pem);
    X509_CRL_free(crl);
    datadir_close(dd);
    return rc;
}

int cmd_audit_verify(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    int64_t count = 0, bad = 0;
    int c, rc, json = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help("usage: mqpki audit verify [--json]\n\n"
                            "Recomputes the audit log's hash chain. Exit 0 when intact, 1 when\n"
                            "an event was edited or deleted (the first bad event is named).\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    rc = inventory_audit_verify(datadir_inventory(dd), &count, &bad);
    if (rc != MQPKI_OK && rc != MQPKI_ERR_TAMPERED)
        goto out;
    if (json) {
        json_t *v = json_pack("{s:b, s:I}", "intact", rc == MQPKI_OK, "events", (json_int_t)count);
        if (rc == MQPKI_ERR_TAMPERED)
            json_object_set_new(v, "first_bad_event", json_integer(bad));
        int prc = cli_print_json(v);
        if (rc == MQPKI_OK)
            rc = prc;
    } else if (rc == MQPKI_OK) {
        printf("audit log intact: %lld events\n", (long long)count);
    }
    if (rc == MQPKI_ERR_TAMPERED)
        rc = mqpki_fail(rc,
                        "audit log tampered: event %lld was edited, or an event near it "
                        "deleted",
                        (long long)bad);
out:
    datadir_close(dd);
    return rc;
}
