/* datadir: opening one data directory and deriving its CRL files. */
#include "datadir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "ca.h"
#include "common.h"
#include "datadir_int.h"
#include "hsm.h"
#include "inventory.h"

int datadir_resolve_home(const char *arg, char out[PATH_MAX])
{
    const char *home = arg;
    char cwd[PATH_MAX];

    if (home == NULL || home[0] == '\0')
        home = getenv("MQPKI_HOME");
    if (home == NULL || home[0] == '\0')
        home = "mqpki-data";
    if (home[0] == '/')
        return mqpki_path(out, PATH_MAX, "%s", home) == MQPKI_OK
                   ? MQPKI_OK
                   : mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return mqpki_fail(MQPKI_ERR_IO, "cannot read the current directory");
    if (mqpki_path(out, PATH_MAX, "%s/%s", cwd, home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    return MQPKI_OK;
}

int datadir_path(const struct datadir *dd, const char *rel, char out[PATH_MAX])
{
    if (mqpki_path(out, PATH_MAX, "%s/%s", dd->home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dd->home);
    return MQPKI_OK;
}

int datadir_hsm_open(const char *home, const struct datadir_config *cfg, struct hsm **out)
{
    struct hsm_config hc;
    char pin[HSM_PIN_MAX], dir[PATH_MAX];
    int rc;

    *out = NULL;
    memset(&hc, 0, sizeof(hc));
    hc.module = cfg->hsm_module[0] != '\0' ? cfg->hsm_module : HSM_SOFTHSM_MODULE;
    hc.token_label = cfg->hsm_token;
    if (cfg->hsm_module[0] == '\0') {
        if (mqpki_path(dir, sizeof(dir), "%s/hsm", home) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
        if ((rc = hsm_softhsm_prepare(dir)) != MQPKI_OK)
            return rc;
        hc.softhsm_dir = dir; /* guarded: good copies in hsm/tokens.good */
    }
    rc = hsm_pin_read(cfg->pin_file, pin);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "no token PIN: set MQPKI_PIN or [hsm] pin_file (%s is missing)",
                        cfg->pin_file);
    if (rc != MQPKI_OK)
        goto out;
    hc.pin = pin;
    rc = hsm_open(&hc, out);
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    return rc;
}

static int load_pem_cert(const char *home, const char *rel, X509 **out)
{
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len;
    int rc;

    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((rc = mqpki_file_read(path, 64 * 1024, &pem, &len)) != MQPKI_OK)
        return rc;
    rc = ca_cert_from_pem((const char *)pem, len, out);
    free(pem);
    return rc;
}

int datadir_open(const char *home, unsigned what, struct datadir **out)
{
    struct datadir *dd;
    X509 *root = NULL, *issuing = NULL;
    EVP_PKEY *key = NULL;
    char path[PATH_MAX];
    int rc;

    *out = NULL;
    if ((dd = calloc(1, sizeof(*dd))) == NULL)
        return MQPKI_ERR_NOMEM;
    snprintf(dd->home, sizeof(dd->home), "%s", home);
    if ((rc = datadir_config_load(home, &dd->cfg)) != MQPKI_OK)
        goto out;
    if (what & (DATADIR_STORE | DATADIR_CA)) {
        if ((rc = datadir_path(dd, "mqpki.db", path)) != MQPKI_OK)
            goto out;
        if ((rc = inventory_open(path, &dd->inv)) != MQPKI_OK)
            goto out;
    }
    if (what & DATADIR_CA) {
        if ((rc = datadir_hsm_open(home, &dd->cfg, &dd->hsm)) != MQPKI_OK)
            goto out;
        if ((rc = hsm_key_load(dd->hsm, DATADIR_ISSUING_KEY, &key)) != MQPKI_OK)
            goto out;
        if ((rc = load_pem_cert(home, "ca/root.pem", &root)) != MQPKI_OK)
            goto out;
        if ((rc = load_pem_cert(home, "ca/issuing.pem", &issuing)) != MQPKI_OK)
            goto out;
        if ((rc = ca_open(issuing, key, root, dd->cfg.url, &dd->ca)) != MQPKI_OK)
            goto out;
    }
    *out = dd;
    dd = NULL;
out:
    X509_free(root);
    X509_free(issuing);
    EVP_PKEY_free(key);
    datadir_close(dd);
    return rc;
}

void datadir_close(struct datadir *dd)
{
    if (dd == NULL)
        return;
    ca_free(dd->ca);
    hsm_close(dd->hsm);
    inventory_close(dd->inv);
    free(dd);
}

const char *datadir_home(const struct datadir *dd)
{
    return dd->home;
}

const struct datadir_config *datadir_config(const struct datadir *dd)
{
    return &dd->cfg;
}

struct inventory *datadir_inventory(struct datadir *dd)
{
    return dd->inv;
}

struct ca *datadir_ca(struct datadir *dd)
{
    return dd->ca;
}

struct entry_list {
    struct ca_crl_entry *v;
    char (*serials)[PROTO_SERIAL_HEX_MAX + 1];
    size_t n, cap;
};

static int collect_revoked(const char *serial, int64_t revoked_at, int reason, void *ctx)
{
    struct entry_list *l = ctx;

    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        void *v = realloc(l->v, cap * sizeof(*l->v));
        if (v == NULL)
            return 1;
        l->v = v;
        v = realloc(l->serials, cap * sizeof(*l->serials));
        if (v == NULL)
            return 1;
        l->serials = v;
        l->cap = cap;
    }
    snprintf(l->serials[l->n], sizeof(l->serials[l->n]), "%s", serial);
    l->v[l->n].revoked_at = revoked_at;
    l->v[l->n].reason = (enum ca_reason)(reason < 0 ? 0 : reason);
    l->n++;
    return 0;
}

/* Builds, signs and writes a full (base < 0) or delta CRL of revocations since `since`. */
static int crl_publish(struct datadir *dd, int delta, X509_CRL **out)
{
    struct entry_list l = {0};
    X509_CRL *crl = NULL;
    unsigned char *der = NULL;
    char path[PATH_MAX], text[32];
    int64_t now = mqpki_now(), number, base = -1, since = 0;
    size_t der_len;
    int rc;

    if (out != NULL)
        *out = NULL;
    if (delta) {
        /* A delta names the full CRL it extends (RFC 5280 5.2.4); without one there is none. */
        if (inventory_meta_get(dd->inv, "crl.full.number", text, sizeof(text)) != MQPKI_OK ||
            inventory_meta_get(dd->inv, "crl.full.time", path, sizeof(path)) != MQPKI_OK) {
            rc = mqpki_fail(MQPKI_ERR_STATE, "no full CRL yet to base a delta CRL on");
            goto out;
        }
        base = strtoll(text, NULL, 10);
        since = strtoll(path, NULL, 10);
    }
    rc = inventory_revoked_list(dd->inv, now, since, collect_revoked, &l);
    if (rc != MQPKI_OK)
        goto out;
    for (size_t i = 0; i < l.n; i++)
        l.v[i].serial_hex = l.serials[i];
    if ((rc = inventory_crl_number_next(dd->inv, &number)) != MQPKI_OK)
        goto out;
    rc = ca_crl_build(dd->ca, number, base, l.v, l.n, now, now + dd->cfg.crl_validity, &crl);
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = ca_crl_der(crl, &der, &der_len)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_path(dd, delta ? "crl/issuing-delta.crl" : "crl/issuing.crl", path)))
        goto out;
    if ((rc = mqpki_file_write_atomic(path, der, der_len, 0644)) != MQPKI_OK)
        goto out;
    /* The same full CRL as PEM, for mqpkid's /crl/issuing.pem and tools that want PEM; after
     * the DER, which is what brokers are waiting for. */
    if (!delta) {
        char *pem = NULL;
        size_t pem_len = 0;
        if ((rc = ca_crl_pem(crl, &pem, &pem_len)) == MQPKI_OK &&
            (rc = datadir_path(dd, "crl/issuing.pem", path)) == MQPKI_OK)
            rc = mqpki_file_write_atomic(path, pem, pem_len, 0644);
        free(pem);
        if (rc != MQPKI_OK)
            goto out;
    }
    if (!delta) {
        snprintf(text, sizeof(text), "%lld", (long long)number);
        if ((rc = inventory_meta_set(dd->inv, "crl.full.number", text)) != MQPKI_OK)
            goto out;
        snprintf(text, sizeof(text), "%lld", (long long)now);
        if ((rc = inventory_meta_set(dd->inv, "crl.full.time", text)) != MQPKI_OK)
            goto out;
    }
    if (out != NULL) {
        *out = crl;
        crl = NULL;
    }
out:
    free(der);
    free(l.v);
    free(l.serials);
    X509_CRL_free(crl);
    return rc;
}

int datadir_crl_refresh(struct datadir *dd, X509_CRL **out)
{
    return crl_publish(dd, 0, out);
}

int datadir_crl_delta(struct datadir *dd, X509_CRL **out)
{
    return crl_publish(dd, 1, out);
}

int datadir_crl_update(struct datadir *dd, X509_CRL **out)
{
    int rc = crl_publish(dd, 1, NULL);

    /* Without a full CRL to base it on there is no delta: the full CRL says it all. */
    if (rc != MQPKI_OK && rc != MQPKI_ERR_STATE)
        return rc;
    return crl_publish(dd, 0, out);
}
