/* cli: the issuing CA's generations: ca list, ca rollover, ca retire (datadir/issuers.c). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/x509v3.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"

#define ROLLOVER_DAYS_DEFAULT (10 * 365)

/* One generation as `ca list --json` shows it. */
static json_t *issuer_json(struct datadir *dd, const struct datadir_issuer *g, int count)
{
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(g->cert);
    char hex[2 * 64 + 1] = "", serial[PROTO_SERIAL_HEX_MAX + 1] = "";
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(g->cert), NULL);
    char *s = bn != NULL ? BN_bn2hex(bn) : NULL;
    int64_t nb = 0, na = 0, live = -1;
    json_t *v;

    if (ski != NULL && ski->length <= 64)
        mqpki_hex(ski->data, (size_t)ski->length, hex);
    if (s != NULL)
        snprintf(serial, sizeof(serial), "%s", s);
    OPENSSL_free(s);
    BN_free(bn);
    (void)proto_asn1_time(X509_get0_notBefore(g->cert), &nb);
    (void)proto_asn1_time(X509_get0_notAfter(g->cert), &na);
    if (count && datadir_ca_issued_live(dd, g->cert, &live) != MQPKI_OK) {
        mqpki_err_clear();
        live = -1;
    }
    v = json_pack("{s:i, s:s, s:s, s:s, s:o, s:o, s:o}", "generation", g->gen, "state",
                  g->current   ? "current"
                  : g->retired ? "retired"
                               : "live",
                  "key_id", hex, "serial", serial, "not_before", cli_json_time(nb), "not_after",
                  cli_json_time(na), "valid_certificates",
                  live >= 0 ? json_integer(live) : json_null());
    return v;
}

int cmd_ca_list(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct datadir_issuers is;
    struct datadir *dd = NULL;
    json_t *arr = NULL;
    int c, rc, json = 0;

    memset(&is, 0, sizeof(is));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help("usage: mqpki ca list [--json]\n\n"
                            "The issuing CA's key generations (docs/operations.md, \"CA\n"
                            "rollover\"): generation, state (current: signs certificates and\n"
                            "CRLs; live: still trusted; retired), key identifier, validity and\n"
                            "how many valid certificates in the store it issued.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK ||
        (rc = datadir_issuers_read(cli->home, &is)) != MQPKI_OK)
        goto out;
    if ((arr = json_array()) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    for (size_t i = 0; i < is.n; i++)
        json_array_append_new(arr, issuer_json(dd, &is.v[i], 1));
    if (json) {
        rc = cli_print_json(arr); /* releases it */
        arr = NULL;
        goto out;
    }
    printf("%-4s %-8s %-40s %-20s %s\n", "GEN", "STATE", "KEY ID", "NOT AFTER", "VALID CERTS");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *g = json_array_get(arr, i);
        json_t *live = json_object_get(g, "valid_certificates");
        printf("%-4lld %-8s %-40.40s %-20s %s%lld\n",
               (long long)json_integer_value(json_object_get(g, "generation")),
               json_string_value(json_object_get(g, "state")),
               json_string_value(json_object_get(g, "key_id")),
               json_string_value(json_object_get(g, "not_after")), json_is_null(live) ? "?" : "",
               json_is_null(live) ? 0LL : (long long)json_integer_value(live));
    }
out:
    json_decref(arr);
    datadir_issuers_clear(&is);
    datadir_close(dd);
    return rc;
}

/* The rollover done by the running mqpkid, which holds the token; cert (DER, may be NULL) is
 * the new generation's certificate when the root is offline. */
static int rollover_remote(const char *home, int days, const unsigned char *cert, size_t cert_len,
                           struct datadir_rollover *r)
{
    unsigned char *req = malloc(5 + cert_len), *reply = NULL;
    size_t len = 0;
    json_t *v = NULL;
    int rc;

    if (req == NULL)
        return MQPKI_ERR_NOMEM;
    req[0] = DATADIR_CTL_ROLLOVER;
    req[1] = (unsigned char)(days >> 24);
    req[2] = (unsigned char)(days >> 16);
    req[3] = (unsigned char)(days >> 8);
    req[4] = (unsigned char)days;
    if (cert_len > 0)
        memcpy(req + 5, cert, cert_len);
    rc = datadir_control_call(home, req, 5 + cert_len, &reply, &len, 120000);
    free(req);
    if (rc != MQPKI_OK)
        return rc;
    if ((v = json_loadb((const char *)reply + 1, len - 1, 0, NULL)) == NULL ||
        json_unpack(v, "{s:i, s:i, s:b, s?b}", "gen", &r->gen, "previous", &r->previous, "resumed",
                    &r->resumed, "already", &r->already) != 0)
        rc = mqpki_fail(MQPKI_ERR_PARSE, "mqpkid's rollover reply does not parse");
    json_decref(v);
    free(reply);
    return rc;
}

/* `ca rollover --csr-out FILE`: the next generation's key and its request, for a root kept
 * offline; made by mqpkid when it runs (it holds the token). */
static int rollover_request(struct cli *cli, struct datadir *dd, const char *out, int json)
{
    unsigned char *reply = NULL;
    char *pem = NULL, subject[32], fp[PROTO_FP_HEX_LEN + 1] = "";
    size_t len = 0;
    int rc, gen = 0;

    if (datadir_ca_remote(dd)) {
        const unsigned char op = DATADIR_CTL_ROLLOVER_REQUEST;
        if ((rc = datadir_control_call(cli->home, &op, 1, &reply, &len, 120000)) != MQPKI_OK)
            return rc;
        if (len < 6) {
            free(reply);
            return mqpki_fail(MQPKI_ERR_PARSE, "mqpkid's request reply does not parse");
        }
        gen = (int)((unsigned)reply[1] << 24 | (unsigned)reply[2] << 16 | (unsigned)reply[3] << 8 |
                    reply[4]);
        if ((pem = malloc(len - 5)) == NULL) {
            free(reply);
            return MQPKI_ERR_NOMEM;
        }
        memcpy(pem, reply + 5, len - 5);
        len -= 5;
        free(reply);
    } else if ((rc = datadir_ca_rollover_request(dd, &pem, &len, &gen)) != MQPKI_OK) {
        return rc;
    }
    snprintf(subject, sizeof(subject), "issuing-ca-%d", gen);
    if ((rc = cli_output(out, pem, len)) != MQPKI_OK ||
        (rc = inventory_audit_append(datadir_inventory(dd), "cli", "ca.rollover.request", subject,
                                     "{\"offline_root\":true}")) != MQPKI_OK)
        goto out;
    {
        /* The key's fingerprint, for the officers to compare with what `mqpki root sign`
         * shows before it signs. */
        X509_REQ *req = NULL;
        if (ca_csr_parse((const unsigned char *)pem, len, &req) != MQPKI_OK ||
            ca_pubkey_fingerprint(X509_REQ_get0_pubkey(req), fp) != MQPKI_OK)
            fp[0] = '\0';
        X509_REQ_free(req);
        mqpki_err_clear();
    }
    if (json)
        rc = cli_print_json(json_pack("{s:i, s:s, s:s}", "generation", gen, "request",
                                      cli_output_stdout(out) ? "-" : out, "key_sha256", fp));
    else if (!cli_output_stdout(out))
        printf("generation %d's key is in the token; its request is in %s\n"
               "key SHA-256: %s\n"
               "next, where the root is: mqpki root sign --root-home DIR --csr %s \\\n"
               "  --expect-key %s --out CERT\n"
               "then here: mqpki ca rollover --cert CERT\n",
               gen, out, fp, out, fp);
out:
    free(pem);
    return rc;
}

/* Reads the certificate of --cert (PEM or DER) as DER. */
static int read_cert_der(const char *path, unsigned char **der, size_t *der_len)
{
    unsigned char *data = NULL, *p = NULL;
    const unsigned char *q;
    size_t len = 0;
    X509 *x = NULL;
    int rc, n;

    *der = NULL;
    if ((rc = mqpki_file_read(path, 64 * 1024, &data, &len)) != MQPKI_OK)
        return rc;
    q = data;
    if (len > 0 && data[0] == 0x30) {
        /* DER: one certificate and nothing after it. */
        if ((x = d2i_X509(NULL, &q, (long)len)) != NULL && q != data + len) {
            X509_free(x);
            x = NULL;
        }
    } else if (ca_cert_from_pem((const char *)data, len, &x) != MQPKI_OK) {
        x = NULL;
    }
    free(data);
    if (x == NULL || (n = i2d_X509(x, &p)) <= 0) {
        X509_free(x);
        mqpki_err_clear();
        return mqpki_fail(MQPKI_ERR_PARSE, "%s: not a certificate (PEM or DER)", path);
    }
    X509_free(x);
    *der = p;
    *der_len = (size_t)n;
    return MQPKI_OK;
}

int cmd_ca_rollover(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"days", required_argument, NULL, 'd'}, {"csr-out", required_argument, NULL, 'r'},
        {"cert", required_argument, NULL, 'c'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0}};
    struct datadir_rollover r;
    struct datadir_publication pub;
    struct datadir *dd = NULL;
    const char *csr_out = NULL, *cert_file = NULL;
    unsigned char *der = NULL;
    size_t der_len = 0;
    X509 *cert = NULL;
    char detail[160], subject[32];
    int64_t number = 0;
    int c, rc, json = 0, days = ROLLOVER_DAYS_DEFAULT, days_given = 0;

    memset(&r, 0, sizeof(r));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            if ((rc = cli_parse_int(cli, "--days", optarg, 1, 30 * 365, &days)) != MQPKI_OK)
                return rc;
            days_given = 1;
            break;
        case 'r': csr_out = optarg; break;
        case 'c': cert_file = optarg; break;
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki ca rollover [--days N] [--json]\n"
                "       mqpki ca rollover --csr-out FILE | --cert CERT   (root kept offline)\n\n"
                "Gives the issuing CA a new key: generated in the token, certified by the\n"
                "root under the same name for N days (default 3650), written to\n"
                "ca/issuers/GEN.pem, and made current. From then on it signs every new\n"
                "certificate and every CRL; a CRL it signs covers the certificates of every\n"
                "generation (the old key signs only copies of it, for brokers that want a CRL\n"
                "of each certificate's own key). The old generation stays trusted\n"
                "(ca/chain.pem, /cacerts, the brokers' feed) until `mqpki ca retire`.\n"
                "A running mqpkid makes the key itself (it holds the token) and serves the new\n"
                "CA at once; brokers learn it from the feed. Then move the fleet:\n"
                "  mqpki campaign renew --issuer OLD   (the generation number)\n"
                "A rollover cut short (a crash) is finished by running it again.\n\n"
                "When the root key is kept offline in a token of its own (mqpki init\n"
                "--root-home; docs/operations.md, \"Key ceremony\"), a rollover takes three\n"
                "steps:\n"
                "  --csr-out FILE  make the new key in the token and write its request (PEM;\n"
                "                  '-' is stdout); run again, it is the same key\n"
                "  (where the root is) mqpki root sign --root-home DIR --csr FILE --out CERT\n"
                "  --cert CERT     check the certificate (that key, the issuing CA's name,\n"
                "                  signed by ca/root.pem, a CA) and roll over to it\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (csr_out != NULL && cert_file != NULL)
        return cli_usage_error(cli, "--csr-out and --cert are two steps: one at a time");
    if (days_given && (csr_out != NULL || cert_file != NULL))
        return cli_usage_error(cli, "--days goes to `mqpki root sign` when the root is offline");
    if (json && csr_out != NULL && cli_output_stdout(csr_out))
        return cli_usage_error(cli, "--json and --csr-out - would share standard output");
    if (csr_out != NULL && (rc = cli_output_check(csr_out)) != MQPKI_OK)
        return rc;
    if (cert_file != NULL) {
        const unsigned char *p;
        if ((rc = read_cert_der(cert_file, &der, &der_len)) != MQPKI_OK)
            return rc;
        p = der;
        if ((cert = d2i_X509(NULL, &p, (long)der_len)) == NULL) {
            rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: not a certificate", cert_file);
            goto out;
        }
    }
    if ((rc = cli_open(cli, DATADIR_STORE | DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if (csr_out != NULL) {
        rc = rollover_request(cli, dd, csr_out, json);
        goto out;
    }
    if (datadir_ca_remote(dd)) {
        rc = rollover_remote(cli->home, days, der, der_len, &r);
    } else if ((rc = datadir_ca_rollover(dd, days, cert, NULL, NULL, &r)) == MQPKI_OK &&
               !r.already) {
        /* What mqpkid does on its own when it runs: its TLS identity and the bundled brokers'
         * certificates move to the new generation (each broker reloads its own). */
        int renewed = 0;
        if (datadir_tls_renew(dd, 0, &renewed) != MQPKI_OK)
            fprintf(stderr, "mqpki ca rollover: mqpkid's TLS certificate: %s\n",
                    mqpki_err_detail(MQPKI_ERR_IO));
        (void)datadir_brokers_renew(dd);
        mqpki_err_clear();
    }
    if (rc != MQPKI_OK)
        goto out;
    if (r.already) {
        /* This certificate is the current generation's: a rerun after it finished. */
        if (json)
            rc = cli_print_json(
                json_pack("{s:i, s:b, s:b}", "generation", r.gen, "resumed", 0, "already", 1));
        else
            printf("issuing CA generation %d is current with this certificate already; nothing "
                   "done\n",
                   r.gen);
        goto out;
    }
    snprintf(subject, sizeof(subject), "issuing-ca-%d", r.gen);
    /* With the root offline the validity is the certificate's (root sign), not --days. */
    if (cert != NULL)
        snprintf(detail, sizeof(detail),
                 "{\"generation\":%d,\"previous\":%d,\"resumed\":%s,\"offline_root\":true}", r.gen,
                 r.previous, r.resumed ? "true" : "false");
    else
        snprintf(detail, sizeof(detail),
                 "{\"generation\":%d,\"previous\":%d,\"days\":%d,\"resumed\":%s}", r.gen,
                 r.previous, days, r.resumed ? "true" : "false");
    if ((rc = inventory_audit_append(datadir_inventory(dd), "cli", "ca.rollover", subject,
                                     detail)) != MQPKI_OK)
        goto out;
    /* A full CRL by the new key at once: the deltas that follow extend a full CRL of their own
     * key (OpenSSL, like RFC 5280 5.2.4, pairs a delta only with a base of the same key). */
    if ((rc = lifecycle_crl_request(datadir_lifecycle(dd), INV_CRL_FULL, "rollover", "cli",
                                    &number)) != MQPKI_OK ||
        (rc = datadir_publish(dd, 0, &pub)) != MQPKI_OK)
        goto out;
    if (json) {
        json_t *v =
            json_pack("{s:i, s:i, s:b, s:s, s:I}", "generation", r.gen, "previous", r.previous,
                      "resumed", r.resumed, "certificate", "", "crl", (json_int_t)pub.full_number);
        char rel[64];
        snprintf(rel, sizeof(rel), "ca/issuers/%d.pem", r.gen);
        json_object_set_new(v, "certificate", json_string(rel));
        rc = cli_print_json(v); /* releases it */
    } else {
        printf("issuing CA generation %d is current (ca/issuers/%d.pem)%s; full CRL %lld signed "
               "by it; generation %d stays trusted until `mqpki ca retire %d`\n",
               r.gen, r.gen, r.resumed ? ", an interrupted rollover finished" : "",
               (long long)pub.full_number, r.previous, r.previous);
        printf("next: mqpki campaign renew --issuer %d\n", r.previous);
    }
out:
    X509_free(cert);
    OPENSSL_free(der);
    datadir_close(dd);
    return rc;
}

int cmd_ca_retire(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    const unsigned char req = DATADIR_CTL_ISSUERS;
    unsigned char *reply = NULL;
    size_t reply_len = 0;
    struct datadir *dd = NULL;
    char subject[32];
    int64_t live = 0;
    int c, rc, json = 0, gen = 0, told = 0, already = 0, running = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki ca retire GEN [--json]\n\n"
                "Retires issuing CA generation GEN (mqpki ca list): it leaves ca/chain.pem\n"
                "and /cacerts, and the brokers refuse every certificate it issued from the\n"
                "moment the feed tells them. Refused for the current generation and while a\n"
                "certificate of GEN is still valid (renew and revoke them first: campaign\n"
                "renew --issuer GEN, then campaign finish --revoke-old).\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "give the generation to retire (mqpki ca list)");
    if ((rc = cli_parse_int(cli, "GEN", argv[optind], 1, DATADIR_ISSUERS_MAX, &gen)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_ca_retire(dd, gen, &live, &already)) != MQPKI_OK)
        goto out;
    snprintf(subject, sizeof(subject), "issuing-ca-%d", gen);
    /* Also when a run cut short left the mark: the audit event is what it may not have written
     * (a second event for one retirement says it was finished twice). */
    if ((rc = inventory_audit_append(datadir_inventory(dd), "cli", "ca.retire", subject,
                                     already ? "{\"finished\":true}" : NULL)) != MQPKI_OK)
        goto out;
    /* A running mqpkid trusts the chain anew and tells the brokers. */
    rc = datadir_control_call(cli->home, &req, 1, &reply, &reply_len, 30000);
    told = rc == MQPKI_OK;
    running = rc != MQPKI_ERR_NOT_FOUND;
    mqpki_err_clear();
    if (!told && running)
        fprintf(stderr,
                "mqpki ca retire: retired, but mqpkid did not take it: run `mqpki ca "
                "retire %d` again\n",
                gen);
    rc = MQPKI_OK;
    if (json) {
        json_t *v =
            json_pack("{s:i, s:b, s:b}", "retired", gen, "already", already, "mqpkid_told", told);
        rc = cli_print_json(v); /* releases it */
    } else {
        printf("issuing CA generation %d %s%s\n", gen, already ? "was retired already" : "retired",
               told      ? "; mqpkid no longer trusts it and tells the brokers"
               : running ? "; mqpkid did not take it yet"
                         : "; mqpkid does not run: the brokers learn it when it starts");
    }
out:
    free(reply);
    datadir_close(dd);
    return rc;
}
