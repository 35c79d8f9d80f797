/* cli: the root kept offline in a token of its own: root init, root sign
 * (datadir/offline_root.c, docs/operations.md "Key ceremony"). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/x509v3.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"

#define SIGN_DAYS_DEFAULT (10 * 365)

static void progress(const char *step)
{
    fprintf(stderr, "mqpki root: %s\n", step);
}

/* What the officers check: the subject's CN, the key's fingerprint, the validity. */
static json_t *cert_json(X509 *cert, const char *file)
{
    char cn[256] = "", fp[PROTO_FP_HEX_LEN + 1] = "", serial[PROTO_SERIAL_HEX_MAX + 1] = "";
    int64_t nb = 0, na = 0;

    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    (void)ca_pubkey_fingerprint(X509_get0_pubkey(cert), fp);
    (void)ca_cert_serial_hex(cert, serial);
    (void)proto_asn1_time(X509_get0_notBefore(cert), &nb);
    (void)proto_asn1_time(X509_get0_notAfter(cert), &na);
    mqpki_err_clear();
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:s}", "subject", cn, "serial", serial,
                     "key_sha256", fp, "not_before", cli_json_time(nb), "not_after",
                     cli_json_time(na), "file", file);
}

static int print_cert(X509 *cert, const char *file, int json, const char *what)
{
    json_t *v = cert_json(cert, file);
    char text[CLI_TEXT_MAX];

    if (v == NULL)
        return MQPKI_ERR_NOMEM;
    if (json)
        return cli_print_json(v); /* releases it */
    printf("%s: %s\n  subject CN  %s\n  serial      %s\n  key SHA-256 %s\n  valid until %s\n", what,
           json_string_value(json_object_get(v, "file")),
           cli_text(json_string_value(json_object_get(v, "subject")), text),
           json_string_value(json_object_get(v, "serial")),
           json_string_value(json_object_get(v, "key_sha256")),
           json_string_value(json_object_get(v, "not_after")));
    json_decref(v);
    return MQPKI_OK;
}

int cmd_root_init(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"root-home", required_argument, NULL, 'R'},
                                         {"ca-name", required_argument, NULL, 'n'},
                                         {"key", required_argument, NULL, 'k'},
                                         {"days", required_argument, NULL, 'd'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct datadir_root_opts o;
    const char *dir = NULL;
    char path[PATH_MAX];
    X509 *root = NULL;
    int c, rc, json = 0;

    memset(&o, 0, sizeof(o));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'R': dir = optarg; break;
        case 'n': o.ca_name = optarg; break;
        case 'k': o.key_type = optarg; break;
        case 'd':
            if ((rc = cli_parse_int(cli, "--days", optarg, 365, 30 * 365, &o.days)) != MQPKI_OK)
                return rc;
            break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki root init --root-home DIR [--ca-name NAME]\n"
                "                       [--key ec-p256|ec-p384|rsa-3072] [--days N] [--json]\n\n"
                "Creates a root CA kept offline, in a token of its own: DIR gets a SoftHSM\n"
                "token with a random PIN (DIR/secrets/pin, 0600; MQPKI_ROOT_PIN when set), the\n"
                "root key generated inside it, the self-signed root certificate DIR/root.pem\n"
                "(\"NAME Root CA\", N days, default 7300) and DIR/ceremony.log, one line per\n"
                "signature the root key makes. Put DIR on removable media or an offline\n"
                "machine. Then create the CA with it (the root key never enters the CA's\n"
                "token):\n"
                "  mqpki --home HOME init --root-home DIR ...\n"
                "and later roll the issuing CA over with `mqpki ca rollover --csr-out` and\n"
                "`mqpki root sign` (docs/operations.md, \"Key ceremony\").\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (dir == NULL)
        return cli_usage_error(cli, "--root-home DIR is required");
    if ((rc = datadir_root_init(dir, &o, json ? NULL : progress, &root)) != MQPKI_OK)
        return rc;
    if (mqpki_path(path, sizeof(path), "%s/root.pem", dir) != MQPKI_OK)
        snprintf(path, sizeof(path), "root.pem");
    rc = print_cert(root, path, json, "root ready");
    X509_free(root);
    return rc;
}

int cmd_root_sign(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"root-home", required_argument, NULL, 'R'},
                                         {"csr", required_argument, NULL, 'c'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"days", required_argument, NULL, 'd'},
                                         {"expect-key", required_argument, NULL, 'e'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *dir = NULL, *csr = NULL, *out = NULL, *expect = NULL;
    char fp[PROTO_FP_HEX_LEN + 1] = "";
    unsigned char *data = NULL;
    char cn[128] = "", *pem = NULL;
    size_t len = 0;
    X509_REQ *req = NULL;
    EVP_PKEY *pub = NULL;
    X509 *cert = NULL;
    int c, rc, json = 0, days = SIGN_DAYS_DEFAULT;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'R': dir = optarg; break;
        case 'c': csr = optarg; break;
        case 'o': out = optarg; break;
        case 'e': expect = optarg; break;
        case 'd':
            if ((rc = cli_parse_int(cli, "--days", optarg, 1, 30 * 365, &days)) != MQPKI_OK)
                return rc;
            break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki root sign --root-home DIR --csr FILE --expect-key SHA256\n"
                "                       --out CERT [--days N] [--json]\n\n"
                "Certifies a new issuing CA generation with the root key of DIR (mqpki root\n"
                "init): FILE is the request `mqpki ca rollover --csr-out` wrote, SHA256 the\n"
                "key SHA-256 that command printed, read out on the CA host: the key must be\n"
                "that one (else nothing is signed, and the request's key is shown). The\n"
                "request's signature must verify, its key be EC P-256, EC P-384 or RSA of\n"
                "3072 bits or more, and its common name one this root certified an issuing\n"
                "CA under before (ceremony.log). Nothing else of it is taken: the certificate\n"
                "is a CA of path length 0 that signs certificates and CRLs, valid N days\n"
                "(default 3650, never past the root). The signature is logged in\n"
                "DIR/ceremony.log first. Take CERT back to the CA and run\n"
                "  mqpki ca rollover --cert CERT\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (dir == NULL || csr == NULL || out == NULL || expect == NULL)
        return cli_usage_error(cli, "--root-home, --csr, --expect-key and --out are required");
    if ((rc = cli_output_check(out)) != MQPKI_OK)
        return rc;
    if ((rc = mqpki_file_read(csr, CA_CSR_MAX, &data, &len)) != MQPKI_OK)
        goto out;
    if ((rc = ca_csr_parse(data, len, &req)) != MQPKI_OK)
        goto out;
    if ((pub = X509_REQ_get_pubkey(req)) == NULL || X509_REQ_verify(req, pub) != 1) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: the request's signature does not verify", csr);
        goto out;
    }
    /* The kinds of key a CA of ours holds; nothing weaker gets the root's signature. */
    if ((rc = ca_ca_key_check(pub)) != MQPKI_OK)
        goto out;
    /* The key the CA host's token made, as its officers read it out: checked before signing. */
    if ((rc = ca_pubkey_fingerprint(pub, fp)) != MQPKI_OK)
        goto out;
    if (strlen(expect) != PROTO_FP_HEX_LEN || strcasecmp(expect, fp) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "%s: the request's key SHA-256 is %s, not the expected one; nothing "
                        "signed",
                        csr, fp);
        goto out;
    }
    if (X509_NAME_get_text_by_NID(X509_REQ_get_subject_name(req), NID_commonName, cn, sizeof(cn)) <=
            0 ||
        cn[0] == '\0') {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "%s: the request's subject has no common name (the issuing CA's)", csr);
        goto out;
    }
    if ((rc = datadir_root_certify(dir, pub, cn, DATADIR_ROOT_ISSUING, days, 0, &cert, NULL)) !=
            MQPKI_OK ||
        (rc = ca_cert_pem(cert, &pem, &len)) != MQPKI_OK ||
        (rc = cli_output(out, pem, len)) != MQPKI_OK)
        goto out;
    if (!cli_output_stdout(out))
        rc = print_cert(cert, out, json, "issuing CA certified");
out:
    free(data);
    free(pem);
    X509_REQ_free(req);
    EVP_PKEY_free(pub);
    X509_free(cert);
    return rc;
}
