/* mqpki operator add | token: the dashboard's operators (docs/dashboard.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"

/* A fresh EC P-256 key and a CSR signed with it (proof of possession), DER. */
static int make_key_csr(const char *name, EVP_PKEY **key, unsigned char **der, int *len)
{
    X509_REQ *req = NULL;
    X509_NAME *subj = NULL;
    int rc = MQPKI_ERR_CRYPTO;

    *der = NULL;
    if ((*key = EVP_EC_gen("P-256")) == NULL || (req = X509_REQ_new()) == NULL ||
        (subj = X509_NAME_new()) == NULL ||
        !X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_UTF8, (const unsigned char *)name, -1, -1,
                                    0) ||
        !X509_REQ_set_subject_name(req, subj) || !X509_REQ_set_pubkey(req, *key) ||
        !X509_REQ_sign(req, *key, EVP_sha256()) || (*len = i2d_X509_REQ(req, der)) <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "operator %s: cannot make a key and request", name);
        goto out;
    }
    rc = MQPKI_OK;
out:
    X509_NAME_free(subj);
    X509_REQ_free(req);
    return rc;
}

/* Writes DIR/NAME.EXT with mode (atomically: write, fsync, rename). */
static int write_file(const char *dir, const char *name, const char *ext, const void *data,
                      size_t len, unsigned mode, char path[4096])
{
    int rc;

    if ((rc = mqpki_path(path, 4096, "%s/%s.%s", dir, name, ext)) != MQPKI_OK)
        return rc;
    return mqpki_file_write_atomic(path, data, len, mode);
}

static int write_identity(const char *dir, const char *name, EVP_PKEY *key, X509 *cert)
{
    BIO *b = BIO_new(BIO_s_mem());
    PKCS12 *p12 = NULL;
    unsigned char *der = NULL;
    char *mem = NULL, path[4096];
    long n;
    int len, rc = MQPKI_ERR_CRYPTO;

    if (b == NULL || !PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL) ||
        (n = BIO_get_mem_data(b, &mem)) <= 0)
        goto out;
    /* The key is a secret: 0600, never in argv or a log. */
    if ((rc = write_file(dir, name, "key", mem, (size_t)n, 0600, path)) != MQPKI_OK)
        goto out;
    printf("key:         %s (0600)\n", path);
    (void)BIO_reset(b);
    rc = MQPKI_ERR_CRYPTO;
    if (!PEM_write_bio_X509(b, cert) || (n = BIO_get_mem_data(b, &mem)) <= 0)
        goto out;
    if ((rc = write_file(dir, name, "pem", mem, (size_t)n, 0600, path)) != MQPKI_OK)
        goto out;
    printf("certificate: %s\n", path);
    /* PKCS#12 for browsers, without a password: the file itself is the secret (0600). */
    rc = MQPKI_ERR_CRYPTO;
    if ((p12 = PKCS12_create(NULL, name, key, cert, NULL, 0, 0, 0, 0, 0)) == NULL ||
        (len = i2d_PKCS12(p12, &der)) <= 0)
        goto out;
    if ((rc = write_file(dir, name, "p12", der, (size_t)len, 0600, path)) != MQPKI_OK)
        goto out;
    printf("PKCS#12:     %s (0600, no password)\n", path);
out:
    if (rc == MQPKI_ERR_CRYPTO)
        rc = mqpki_fail(rc, "operator %s: cannot encode the identity", name);
    if (der != NULL)
        OPENSSL_clear_free(der, (size_t)len);
    PKCS12_free(p12);
    BIO_free(b);
    return rc;
}

int cmd_operator_add(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out-dir", required_argument, NULL, 'o'},
        {"days", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct lifecycle_issue_req req;
    struct inventory_asset a;
    struct datadir *dd = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    unsigned char *csr = NULL;
    const char *dir = ".", *name;
    int c, rc, days = 0, csr_len = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': dir = optarg; break;
        case 'd':
            if ((rc = cli_parse_int(cli, "--days", optarg, 1, 825, &days)) != MQPKI_OK)
                return rc;
            break;
        case 'h':
            return cli_help(
                "usage: mqpki operator add NAME [--out-dir DIR] [--days N]\n\n"
                "Registers operator NAME (asset kind operator) and issues its client\n"
                "certificate for the dashboard: DIR/NAME.key (0600), DIR/NAME.pem and\n"
                "DIR/NAME.p12 (0600, no password), DIR defaulting to the current one.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one operator NAME");
    name = argv[optind];
    if (!proto_asset_id_valid(name))
        return cli_usage_error(cli, "'%.80s': not a valid name (as an asset id)", name);
    if ((rc = cli_open(cli, DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "%s", name);
    a.kind = INV_KIND_OPERATOR;
    a.state = INV_STATE_REGISTERED;
    /* Registered by an earlier run whose issuance failed: issue now (lifecycle_issue refuses
     * an asset of another kind, the profile being the kind's). */
    rc = inventory_asset_add(datadir_inventory(dd), &a, "cli");
    if (rc == MQPKI_ERR_EXISTS &&
        (rc = inventory_asset_get(datadir_inventory(dd), name, &a)) == MQPKI_OK) {
        if (a.kind != INV_KIND_OPERATOR)
            rc = mqpki_fail(MQPKI_ERR_EXISTS, "asset %s exists and is a %s, not an operator", name,
                            inventory_kind_name(a.kind));
        inventory_asset_clear(&a);
    }
    if (rc != MQPKI_OK || (rc = make_key_csr(name, &key, &csr, &csr_len)) != MQPKI_OK)
        goto out;
    memset(&req, 0, sizeof(req));
    req.asset_id = name;
    req.csr = csr;
    req.csr_len = (size_t)csr_len;
    req.profile = -1;
    req.days = days;
    req.actor = "cli";
    datadir_profile_days(datadir_config(dd), req.profile_days);
    if ((rc = lifecycle_issue(datadir_ca(dd), datadir_inventory(dd), &req, &cert)) != MQPKI_OK)
        goto out;
    printf("operator %s registered\n", name);
    rc = write_identity(dir, name, key, cert);
out:
    OPENSSL_free(csr);
    X509_free(cert);
    EVP_PKEY_free(key);
    datadir_close(dd);
    return rc;
}

int cmd_operator_token(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"ttl", required_argument, NULL, 't'},
        {"login-url", no_argument, NULL, 'l'},
        {"url", required_argument, NULL, 'u'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    char token[INV_OP_TOKEN_MAX];
    struct datadir *dd = NULL;
    const char *url = NULL;
    int64_t ttl = -1;
    int c, rc, login = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            if ((rc = cli_parse_duration(cli, "--ttl", optarg, 60, INV_OP_TTL_MAX, &ttl)) !=
                MQPKI_OK)
                return rc;
            break;
        case 'l': login = 1; break;
        case 'u': url = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki operator token NAME [--ttl 12h] [--login-url [--url BASE]]\n\n"
                "Prints, once, a bearer token for the dashboard (Authorization: Bearer TOKEN),\n"
                "valid --ttl (default 12h, at most 30d). With --login-url: a one-time login link\n"
                "instead (default 10m) that mqpkid exchanges for a session cookie (HttpOnly,\n"
                "Secure, SameSite=Strict), on BASE (default [ca] url). Only a salted hash is\n"
                "stored.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one operator NAME");
    if (ttl < 0)
        ttl = login ? 600 : 12 * 3600;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_operator_token_create(datadir_inventory(dd), argv[optind],
                                              login ? INV_OP_LOGIN : INV_OP_BEARER, ttl, "cli",
                                              token)) != MQPKI_OK)
        goto out;
    if (login)
        printf("%s/ui/login?t=%s\n", url != NULL ? url : datadir_config(dd)->url, token);
    else
        printf("%s\n", token);
    OPENSSL_cleanse(token, sizeof(token));
out:
    datadir_close(dd);
    return rc;
}
