/* datadir: `mqpki init`, creating one CA's data directory. */
#include "datadir.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "ca.h"
#include "common.h"
#include "datadir_int.h"
#include "hsm.h"
#include "inventory.h"
#include "lifecycle.h"

#define ISSUING_DAYS (10 * 365)

static void say(void (*progress)(const char *), const char *step)
{
    if (progress != NULL)
        progress(step);
}

/* A random secret as 32 hex digits (128 bits). */
int datadir_random_secret(char out[33])
{
    unsigned char raw[16];

    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return mqpki_fail(MQPKI_ERR_CRYPTO, "random generator failed");
    mqpki_hex(raw, sizeof(raw), out);
    OPENSSL_cleanse(raw, sizeof(raw));
    return MQPKI_OK;
}

int datadir_key_type(const char *name, enum hsm_key_type *out)
{
    if (strcmp(name, "ec-p256") == 0)
        *out = HSM_KEY_EC_P256;
    else if (strcmp(name, "ec-p384") == 0)
        *out = HSM_KEY_EC_P384;
    else if (strcmp(name, "rsa-3072") == 0)
        *out = HSM_KEY_RSA_3072;
    else
        return mqpki_fail(MQPKI_ERR_INVALID, "key type '%.40s': use ec-p256, ec-p384 or rsa-3072",
                          name);
    return MQPKI_OK;
}

int datadir_write_file(const char *home, const char *rel, const void *data, size_t len,
                       unsigned mode)
{
    char path[PATH_MAX];

    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    return mqpki_file_write_atomic(path, data, len, mode);
}

static int write_certs(const char *home, const char *rel, X509 *a, X509 *b)
{
    char *pa = NULL, *pb = NULL, *all = NULL;
    size_t la = 0, lb = 0;
    int rc;

    if ((rc = ca_cert_pem(a, &pa, &la)) != MQPKI_OK)
        goto out;
    if (b != NULL && (rc = ca_cert_pem(b, &pb, &lb)) != MQPKI_OK)
        goto out;
    if ((all = malloc(la + lb + 1)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    memcpy(all, pa, la);
    if (pb != NULL)
        memcpy(all + la, pb, lb);
    rc = datadir_write_file(home, rel, all, la + lb, 0644);
out:
    free(pa);
    free(pb);
    free(all);
    return rc;
}

/* mqpkid's names: localhost, this host, the loopback addresses and every --hostname. */
static int service_names(const struct datadir_init_opts *opts, struct datadir_names *n)
{
    memset(n, 0, sizeof(*n));
    snprintf(n->dns[n->n_dns++], sizeof(n->dns[0]), "localhost");
    if (gethostname(n->dns[n->n_dns], sizeof(n->dns[0])) == 0 && n->dns[n->n_dns][0] != '\0' &&
        strcmp(n->dns[n->n_dns], "localhost") != 0)
        n->n_dns++;
    snprintf(n->ips[n->n_ips++], sizeof(n->ips[0]), "127.0.0.1");
    snprintf(n->ips[n->n_ips++], sizeof(n->ips[0]), "::1");
    if (opts->n_hostnames > DATADIR_NAMES_MAX - 2)
        return mqpki_fail(MQPKI_ERR_INVALID, "at most %d --hostname names", DATADIR_NAMES_MAX - 2);
    for (size_t i = 0; i < opts->n_hostnames; i++) {
        unsigned char buf[16];
        const char *h = opts->hostnames[i];
        if (inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1)
            snprintf(n->ips[n->n_ips++], sizeof(n->ips[0]), "%s", h);
        else
            snprintf(n->dns[n->n_dns++], sizeof(n->dns[0]), "%s", h);
    }
    return MQPKI_OK;
}

static int write_config(const char *home, const struct datadir_config *c)
{
    char text[4096];
    int n;

    n = snprintf(text, sizeof(text),
                 "# mqpki configuration; every key is described in docs/configuration.md\n"
                 "[ca]\n"
                 "name = %s\n"
                 "key = %s\n"
                 "url = %s\n"
                 "crl_validity = %llds\n"
                 "crl_full_every = %llds\n"
                 "crl_full_after = %llds\n"
                 "crl_delta_max = %lld\n"
                 "device_days = %d\n"
                 "broker_days = %d\n"
                 "\n"
                 "[hsm]\n"
                 "# module = /path/to/pkcs11.so   (unset: the embedded SoftHSM token in hsm/)\n"
                 "token = %s\n"
                 "pin_file = secrets/pin\n"
                 "\n"
                 "[daemon]\n"
                 "listen = %s\n"
                 "\n"
                 "[enrollment]\n"
                 "token_ttl = %llds\n"
                 "reenroll_grace = %llds\n"
                 "auth_failures = %d\n"
                 "auth_window = %llds\n"
                 "rate = %d\n"
                 "burst = %d\n"
                 "\n"
                 "[audit]\n"
                 "checkpoint_every = %llds\n"
                 "# SHA-256 of the audit key (ca/audit.pem); `mqpki audit verify` checks it\n"
                 "key_fingerprint = %s\n"
                 "\n"
                 "[store]\n"
                 "%surl = %s\n",
                 c->ca_name, c->key_type, c->url, (long long)c->crl_validity,
                 (long long)c->crl_full_every, (long long)c->crl_full_after,
                 (long long)c->crl_delta_max, c->device_days, c->broker_days, c->hsm_token,
                 c->listen, (long long)c->token_ttl, (long long)c->reenroll_grace, c->auth_failures,
                 (long long)c->auth_window, (int)c->rate_per_address, c->rate_burst,
                 (long long)c->audit_every, c->audit_key_fp,
                 c->store_url[0] != '\0' ? "" : "# (unset: the embedded mqpki.db) ",
                 c->store_url[0] != '\0' ? c->store_url : "postgresql://HOST/DB (docs/ha.md)");
    if (n < 0 || (size_t)n >= sizeof(text))
        return mqpki_fail(MQPKI_ERR_INVALID, "configuration too long");
    return datadir_write_file(home, "mqpki.conf", text, (size_t)n, 0600);
}

static int make_layout(const char *home)
{
    static const char *const dirs[] = {"",     "/secrets", "/hsm",     "/ca",
                                       "/tls", "/crl",     "/brokers", "/run"};
    char path[PATH_MAX];
    int rc;

    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mqpki_path(path, sizeof(path), "%s%s", home, dirs[i]) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
        if ((rc = mqpki_mkdir_p(path, 0700)) != MQPKI_OK)
            return rc;
    }
    /* Only secrets/ and hsm/ hold secrets, but nothing here is for other users to browse. */
    if (chmod(home, 0700) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", home, strerror(errno));
    return MQPKI_OK;
}

/*
 * `mqpki init --root-home DIR`: the issuing CA and audit keys are made in the CA's token, their
 * public halves taken out, the CA's token closed (SoftHSM reads one configuration per
 * initialisation), both certified by DIR's root key in its own token, and the CA's token opened
 * again. The root key is never in the CA's token.
 */
static int offline_root_certs(struct datadir *dd, const char *root_home, enum hsm_key_type type,
                              void (*progress)(const char *), X509 **issuing, X509 **root,
                              X509 **audit)
{
    EVP_PKEY *key = NULL, *issuing_pub = NULL, *audit_pub = NULL;
    char name[160];
    int rc;

    say(progress, "generating the issuing CA and audit keys inside the token");
    if ((rc = hsm_key_generate(dd->hsm, DATADIR_ISSUING_KEY, type)) != MQPKI_OK ||
        (rc = hsm_key_generate(dd->hsm, DATADIR_AUDIT_KEY, type)) != MQPKI_OK ||
        (rc = hsm_key_load(dd->hsm, DATADIR_ISSUING_KEY, &key)) != MQPKI_OK ||
        (rc = datadir_public_copy(key, &issuing_pub)) != MQPKI_OK)
        goto out;
    EVP_PKEY_free(key);
    key = NULL;
    if ((rc = hsm_key_load(dd->hsm, DATADIR_AUDIT_KEY, &key)) != MQPKI_OK ||
        (rc = datadir_public_copy(key, &audit_pub)) != MQPKI_OK)
        goto out;
    EVP_PKEY_free(key);
    key = NULL;
    hsm_close(dd->hsm);
    dd->hsm = NULL;
    say(progress, "certifying them with the root key of the root home (its own token)");
    snprintf(name, sizeof(name), "%s Issuing CA", dd->cfg.ca_name);
    if ((rc = datadir_root_certify(root_home, issuing_pub, name, DATADIR_ROOT_ISSUING, ISSUING_DAYS,
                                   DATADIR_ROOT_NEW_NAME, issuing, root)) != MQPKI_OK)
        goto reopen;
    snprintf(name, sizeof(name), "%s Audit Key", dd->cfg.ca_name);
    rc = datadir_root_certify(root_home, audit_pub, name, DATADIR_ROOT_AUDIT, AUDIT_CERT_DAYS, 0,
                              audit, NULL);
reopen:
    if (rc == MQPKI_OK)
        rc = datadir_hsm_open(dd->home, &dd->cfg, &dd->hsm);
out:
    EVP_PKEY_free(key);
    EVP_PKEY_free(issuing_pub);
    EVP_PKEY_free(audit_pub);
    return rc;
}

int datadir_init(const char *home, const struct datadir_init_opts *opts,
                 void (*progress)(const char *step))
{
    struct datadir *dd = NULL;
    char path[PATH_MAX], pin[HSM_PIN_MAX] = "", so_pin[33] = "";
    enum hsm_key_type type = HSM_KEY_EC_P256;
    EVP_PKEY *root_key = NULL, *issuing_key = NULL;
    X509 *root = NULL, *issuing = NULL, *audit = NULL;
    struct inventory_asset svc;
    struct datadir_names names;
    struct stat st;
    int rc;

    memset(&svc, 0, sizeof(svc));
    if ((dd = calloc(1, sizeof(*dd))) == NULL)
        return MQPKI_ERR_NOMEM;
    snprintf(dd->home, sizeof(dd->home), "%s", home);
    dd->actor = "init";
    dd->token_lock = dd->daemon_lock = -1;
    datadir_config_defaults(home, &dd->cfg);
    /* `mqpki --store URL init`: the CA's store is that server's, and the config says so. */
    if (datadir_store_target(dd, path) == MQPKI_OK && inventory_target_is_remote(path) &&
        strlen(path) < sizeof(dd->cfg.store_url))
        memcpy(dd->cfg.store_url, path, strlen(path) + 1);
    if (opts->ca_name != NULL) {
        if (opts->ca_name[0] == '\0' || strlen(opts->ca_name) >= sizeof(dd->cfg.ca_name) ||
            strpbrk(opts->ca_name, "\n\r") != NULL) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "--ca-name: 1 to 127 characters on one line");
            goto out;
        }
        snprintf(dd->cfg.ca_name, sizeof(dd->cfg.ca_name), "%s", opts->ca_name);
    }
    if (opts->key_type != NULL)
        snprintf(dd->cfg.key_type, sizeof(dd->cfg.key_type), "%s", opts->key_type);
    if ((rc = datadir_key_type(dd->cfg.key_type, &type)) != MQPKI_OK)
        goto out;
    if (opts->url != NULL) {
        if ((strncmp(opts->url, "https://", 8) != 0 && strncmp(opts->url, "http://", 7) != 0) ||
            strlen(opts->url) >= sizeof(dd->cfg.url) || strpbrk(opts->url, " \n\r\t") != NULL) {
            rc = mqpki_fail(MQPKI_ERR_INVALID,
                            "--url: expected https://HOST:PORT or http://HOST:PORT");
            goto out;
        }
        snprintf(dd->cfg.url, sizeof(dd->cfg.url), "%s", opts->url);
    }
    for (size_t i = 0; i < opts->n_hostnames; i++) {
        const char *h = opts->hostnames[i];
        if (h[0] == '\0' || strlen(h) > 253 ||
            strspn(h, "abcdefghijklmnopqrstuvwxyz"
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") != strlen(h)) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "--hostname '%.80s': not a host name or address", h);
            goto out;
        }
    }

    /* Before anything is created: a data directory SoftHSM cannot be pointed at would be left
     * half-made by the token set-up. */
    if (mqpki_path(path, sizeof(path), "%s/hsm", home) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
        goto out;
    }
    if ((rc = hsm_softhsm_path_check(path)) != MQPKI_OK) {
        char detail[PATH_MAX + 200];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        rc = mqpki_fail(rc, "data directory refused, nothing created: %s; choose another --home",
                        detail);
        goto out;
    }
    /* A PIN given in MQPKI_PIN must be one SoftHSM takes, before anything is made. */
    if (hsm_pin_read(NULL, pin) == MQPKI_OK && (strlen(pin) < 4 || strlen(pin) > 255)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "MQPKI_PIN: 4 to 255 characters");
        goto out;
    }
    mqpki_err_clear();
    OPENSSL_cleanse(pin, sizeof(pin));
    /* The root home must open (its token, its PIN) before anything is made that needs it. */
    if (opts->root_home != NULL && (rc = datadir_root_check(opts->root_home)) != MQPKI_OK)
        goto out;
    /* mqpki.conf is written last: its presence means a complete CA. */
    if (mqpki_path(path, sizeof(path), "%s/mqpki.conf", home) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
        goto out;
    }
    if (stat(path, &st) == 0) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "%s already holds a CA (mqpki.conf exists)", home);
        goto out;
    }
    if (mqpki_path(path, sizeof(path), "%s/hsm/tokens", home) == MQPKI_OK && stat(path, &st) == 0) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS,
                        "%s holds an incomplete set-up (no mqpki.conf); remove it or pick "
                        "another --home",
                        home);
        goto out;
    }
    /* A shared store that already serves a CA gets replicas (`mqpki replica init`), never a
     * second CA mixed into its history: asked before anything is created. */
    if (dd->cfg.store_url[0] != '\0') {
        if ((rc = datadir_store_target(dd, path)) != MQPKI_OK ||
            (rc = inventory_open(path, &dd->inv)) != MQPKI_OK)
            goto out;
        if (inventory_asset_get(dd->inv, DATADIR_SERVICE_ASSET, &svc) == MQPKI_OK) {
            inventory_asset_clear(&svc);
            rc = mqpki_fail(MQPKI_ERR_EXISTS,
                            "the store already serves a CA, nothing created; add a replica with "
                            "`mqpki replica init --from HOME` instead");
            goto out;
        }
        mqpki_err_clear();
    }
    say(progress, "creating the data directory");
    if ((rc = make_layout(home)) != MQPKI_OK)
        goto out;

    say(progress, "creating the token (SoftHSM) and its PIN (MQPKI_PIN, else secrets/pin)");
    /* MQPKI_PIN set: it is the token's PIN, kept out of the data directory (every later open
     * takes it from there too), and so is the SO PIN, which could set a new one: it is not kept
     * at all (the token is never initialised again). Else both random, in secrets/ (0600). */
    rc = hsm_pin_read(NULL, pin);
    if (rc == MQPKI_ERR_NOT_FOUND) {
        mqpki_err_clear();
        if ((rc = datadir_random_secret(pin)) != MQPKI_OK ||
            (rc = datadir_random_secret(so_pin)) != MQPKI_OK ||
            (rc = datadir_write_file(home, "secrets/pin", pin, strlen(pin), 0600)) != MQPKI_OK ||
            (rc = datadir_write_file(home, "secrets/so-pin", so_pin, strlen(so_pin), 0600)) !=
                MQPKI_OK)
            goto out;
    } else if (rc != MQPKI_OK || (rc = datadir_random_secret(so_pin)) != MQPKI_OK) {
        goto out;
    }
    if (mqpki_path(path, sizeof(path), "%s/hsm", home) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
        goto out;
    }
    if ((rc = hsm_softhsm_prepare(path)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_lock_take(home, DATADIR_LOCK_TOKEN, 0, &dd->token_lock, NULL)) != MQPKI_OK)
        goto out;
    if ((rc = hsm_token_init(HSM_SOFTHSM_MODULE, dd->cfg.hsm_token, so_pin, pin)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_hsm_open(home, &dd->cfg, &dd->hsm)) != MQPKI_OK)
        goto out;

    if (opts->root_home != NULL) {
        if ((rc = offline_root_certs(dd, opts->root_home, type, progress, &issuing, &root,
                                     &audit)) != MQPKI_OK ||
            (rc = hsm_key_load(dd->hsm, DATADIR_ISSUING_KEY, &issuing_key)) != MQPKI_OK ||
            (rc = hsm_key_load(dd->hsm, DATADIR_AUDIT_KEY, &dd->audit_key)) != MQPKI_OK)
            goto out;
    } else {
        say(progress, "generating the root, issuing CA and audit keys inside the token");
        if ((rc = hsm_key_generate(dd->hsm, DATADIR_ROOT_KEY, type)) != MQPKI_OK ||
            (rc = hsm_key_generate(dd->hsm, DATADIR_ISSUING_KEY, type)) != MQPKI_OK ||
            (rc = hsm_key_generate(dd->hsm, DATADIR_AUDIT_KEY, type)) != MQPKI_OK)
            goto out;
        if ((rc = hsm_key_load(dd->hsm, DATADIR_ROOT_KEY, &root_key)) != MQPKI_OK ||
            (rc = hsm_key_load(dd->hsm, DATADIR_ISSUING_KEY, &issuing_key)) != MQPKI_OK ||
            (rc = hsm_key_load(dd->hsm, DATADIR_AUDIT_KEY, &dd->audit_key)) != MQPKI_OK)
            goto out;
        say(progress, "signing the root and issuing CA certificates");
        {
            char name[160];
            snprintf(name, sizeof(name), "%s Root CA", dd->cfg.ca_name);
            if ((rc = ca_root_create(root_key, name, DATADIR_ROOT_DAYS, &root)) != MQPKI_OK)
                goto out;
            snprintf(name, sizeof(name), "%s Issuing CA", dd->cfg.ca_name);
            rc = ca_issuing_create(root, root_key, issuing_key, name, ISSUING_DAYS, &issuing);
            if (rc != MQPKI_OK)
                goto out;
        }
        {
            /* The audit key's certificate binds it to the root (docs/security.md, "Audit"). */
            char name[160];
            snprintf(name, sizeof(name), "%s Audit Key", dd->cfg.ca_name);
            if ((rc = ca_audit_cert_create(root, root_key, dd->audit_key, name, AUDIT_CERT_DAYS,
                                           &audit)) != MQPKI_OK)
                goto out;
        }
    }
    if ((rc = write_certs(home, "ca/root.pem", root, NULL)) != MQPKI_OK ||
        (rc = write_certs(home, "ca/issuing.pem", issuing, NULL)) != MQPKI_OK ||
        (rc = write_certs(home, "ca/chain.pem", issuing, root)) != MQPKI_OK ||
        (rc = write_certs(home, DATADIR_AUDIT_CERT, audit, NULL)) != MQPKI_OK)
        goto out;
    /* Its fingerprint goes into mqpki.conf as a second, independent pin; from the file, whose
     * key is a plain public key (the one in `audit` is still the token's). */
    X509_free(audit);
    audit = NULL;
    if ((rc = datadir_audit_cert(home, &audit)) != MQPKI_OK ||
        (rc = ca_pubkey_fingerprint(X509_get0_pubkey(audit), dd->cfg.audit_key_fp)) != MQPKI_OK)
        goto out;
    {
        struct ca *ca = NULL;
        if ((rc = ca_open(issuing, issuing_key, root, dd->cfg.url, &ca)) != MQPKI_OK ||
            (rc = datadir_ca_swap(dd, ca, NULL, 1)) != MQPKI_OK)
            goto out;
    }

    say(progress, dd->cfg.store_url[0] != '\0' ? "creating the inventory store (PostgreSQL)"
                                                 : "creating the inventory store mqpki.db");
    if (dd->inv == NULL && ((rc = datadir_store_target(dd, path)) != MQPKI_OK ||
                            (rc = inventory_open(path, &dd->inv)) != MQPKI_OK))
        goto out;
    memset(&svc, 0, sizeof(svc));
    if ((rc = inventory_meta_set(dd->inv, "ca.name", dd->cfg.ca_name)) != MQPKI_OK)
        goto out;
    snprintf(svc.id, sizeof(svc.id), "%s", DATADIR_SERVICE_ASSET);
    svc.kind = INV_KIND_SERVICE;
    snprintf(svc.model, sizeof(svc.model), "mqpkid");
    if ((rc = inventory_asset_add(dd->inv, &svc, "init")) != MQPKI_OK)
        goto out;

    say(progress, "issuing mqpkid's TLS certificate into tls/");
    if ((rc = service_names(opts, &names)) != MQPKI_OK ||
        (rc = datadir_tls_issue(dd, &names, 0)) != MQPKI_OK)
        goto out;
    say(progress, "signing the first CRL into crl/issuing.crl");
    {
        struct lifecycle_config lcfg = {dd->cfg.crl_validity, dd->cfg.crl_full_every,
                                        dd->cfg.crl_full_after, dd->cfg.crl_delta_max};
        int64_t number = 0;
        if ((rc = lifecycle_new(dd->inv, &lcfg, &dd->lc)) != MQPKI_OK ||
            (rc = lifecycle_crl_request(dd->lc, INV_CRL_FULL, "init", "init", &number)) !=
                MQPKI_OK ||
            (rc = datadir_publish(dd, 0, NULL)) != MQPKI_OK)
            goto out;
    }
    if ((rc = write_config(home, &dd->cfg)) != MQPKI_OK)
        goto out;
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    OPENSSL_cleanse(so_pin, sizeof(so_pin));
    X509_free(root);
    X509_free(issuing);
    X509_free(audit);
    /* Token keys go before the token session they sign through. */
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(issuing_key);
    datadir_close(dd);
    return rc;
}
