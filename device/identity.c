/*
 * device/identity.c: the device directory, enrollment, renewal and the identity switch.
 *
 * Layout (docs/device.md): device.json (the commit point: asset, server, store, generation N),
 * ca.pem (the provisioned CA chain), cert-N.pem (leaf + intermediates of generation N), the key
 * of generation N in the store (DIR/key-N.pem or token key "mqpki-ASSET-N"), cert.pem (a copy
 * of cert-N.pem for other tools; never read back), secret or pin (0600, optional).
 *
 * A renewal writes generation N+1 completely (key, then cert-(N+1).pem, fsynced) before it
 * replaces device.json atomically; only then are cert.pem refreshed and generation N removed.
 * A crash before the rename leaves generation N in force (N+1 files are unreferenced leftovers
 * that the next attempt overwrites); a crash after it leaves N+1 complete.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509v3.h>

#include "device_int.h"
#include "proto.h"

#define JSON_MAX        (16 * 1024)
#define CA_CERTS_MAX    16
#define TOKEN_LABEL_ENV "MQPKI_DEVICE_TOKEN_LABEL"
#define DEFAULT_LABEL   "device"

static int path_of(const struct mqpki_device *dev, char *buf, size_t size, const char *name)
{
    if (mqpki_path(buf, size, "%s/%s", dev->dir, name) != MQPKI_OK)
        return dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s: path too long", dev->dir);
    return MQPKI_DEVICE_OK;
}

static int write_file(const char *path, const void *data, size_t len, unsigned mode)
{
    int crc = mqpki_file_write_atomic(path, data, len, mode);

    return crc == MQPKI_OK ? MQPKI_DEVICE_OK : dev_from_common(crc, MQPKI_DEVICE_ERR_IO);
}

static int64_t asn1_time_epoch(const ASN1_TIME *t)
{
    int64_t v;

    return proto_asn1_time(t, &v) == 0 ? v : 0;
}

int64_t dev_renew_at(int64_t not_before, int64_t not_after, uint32_t jitter_seed)
{
    int64_t life = not_after - not_before;

    if (life <= 0)
        return not_before;
    /* Two thirds of the lifetime, plus up to a tenth of it so that a fleet enrolled in the
     * same hour does not come back in the same minute. */
    return not_before + life * 2 / 3 +
           (int64_t)((uint64_t)(life / 10) * (jitter_seed % 10001u) / 10000u);
}

int64_t dev_backoff(unsigned attempt, uint32_t r)
{
    int64_t d = DEV_RETRY_BASE;

    for (unsigned i = 0; i < attempt && d < DEV_RETRY_CAP; i++)
        d *= 2;
    if (d > DEV_RETRY_CAP)
        d = DEV_RETRY_CAP;
    /* "Equal jitter": at least half the exponential delay, the rest random. */
    return d / 2 + (int64_t)(r % (uint32_t)(d - d / 2 + 1));
}

/* PEM file of certificates -> stack (1..CA_CERTS_MAX) and its PEM text. */
static int certs_from_pem(const char *what, const unsigned char *pem, size_t len,
                          STACK_OF(X509) * *out)
{
    STACK_OF(X509) *certs = sk_X509_new_null();
    BIO *mem = BIO_new_mem_buf(pem, (int)len);
    X509 *x;
    int rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (certs == NULL || mem == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    while ((x = PEM_read_bio_X509(mem, NULL, NULL, NULL)) != NULL) {
        if (sk_X509_num(certs) == CA_CERTS_MAX || sk_X509_push(certs, x) <= 0) {
            X509_free(x);
            rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s: too many certificates", what);
            goto out;
        }
    }
    if (sk_X509_num(certs) == 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s: no PEM certificate", what);
        goto out;
    }
    *out = certs;
    certs = NULL;
out:
    ERR_clear_error();
    sk_X509_pop_free(certs, X509_free);
    BIO_free(mem);
    return rc;
}

static int certs_to_pem(X509 *leaf, STACK_OF(X509) * certs, char **out, size_t *out_len)
{
    BIO *mem = BIO_new(BIO_s_mem());
    char *p;
    long n;
    int rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (mem == NULL || (leaf != NULL && PEM_write_bio_X509(mem, leaf) != 1)) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(certs); i++)
        if (PEM_write_bio_X509(mem, sk_X509_value(certs, i)) != 1) {
            rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
            goto out;
        }
    n = BIO_get_mem_data(mem, &p);
    *out = malloc((size_t)n + 1);
    if (*out == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    memcpy(*out, p, (size_t)n);
    (*out)[n] = '\0';
    *out_len = (size_t)n;
out:
    BIO_free(mem);
    return rc;
}

/* Builds the trust store (every certificate a trust anchor candidate) from a CA chain. */
static int trust_build(STACK_OF(X509) * ca, X509_STORE **out)
{
    X509_STORE *st = X509_STORE_new();
    int rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (st == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(ca); i++)
        if (X509_STORE_add_cert(st, sk_X509_value(ca, i)) != 1) {
            rc = dev_fail(MQPKI_DEVICE_ERR_CRYPTO, "CA chain: cannot add certificate %d", i);
            goto out;
        }
    *out = st;
    st = NULL;
out:
    X509_STORE_free(st);
    return rc;
}

/* Sets the handle's trust from PEM text (ca.pem content). */
static int trust_set(struct mqpki_device *dev, const char *what, const unsigned char *pem,
                     size_t len)
{
    STACK_OF(X509) *ca = NULL;
    X509_STORE *st = NULL;
    char *copy = NULL;
    int rc;

    rc = certs_from_pem(what, pem, len, &ca);
    if (rc == MQPKI_DEVICE_OK)
        rc = trust_build(ca, &st);
    if (rc == MQPKI_DEVICE_OK && (copy = malloc(len + 1)) == NULL)
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    memcpy(copy, pem, len);
    copy[len] = '\0';
    sk_X509_pop_free(dev->ca_certs, X509_free);
    X509_STORE_free(dev->trust);
    free(dev->ca_pem);
    dev->ca_certs = ca;
    dev->trust = st;
    dev->ca_pem = copy;
    dev->ca_pem_len = len;
    ca = NULL;
    st = NULL;
out:
    sk_X509_pop_free(ca, X509_free);
    X509_STORE_free(st);
    return rc;
}

static void identity_drop(struct mqpki_device *dev)
{
    SSL_CTX_free(dev->ssl_ctx);
    dev->ssl_ctx = NULL;
    X509_free(dev->cert);
    dev->cert = NULL;
    sk_X509_pop_free(dev->chain, X509_free);
    dev->chain = NULL;
    EVP_PKEY_free(dev->key);
    dev->key = NULL;
    if (dev->ops != NULL)
        dev->ops->close(dev->store);
    dev->ops = NULL;
    dev->store = NULL;
    dev->enrolled = 0;
}

static int store_open(struct mqpki_device *dev, const char *spec, const char *label, int create)
{
    struct dev_store_args args = {0};
    const struct mqpki_keystore_ops *ops;
    int rc;

    rc = dev_store_lookup(spec, &ops, &args.param);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    args.asset = dev->asset;
    args.token_label = label;
    args.create = create;
    rc = ops->open(dev->dir, &args, &dev->store);
    if (rc == MQPKI_DEVICE_OK)
        dev->ops = ops;
out:
    return rc;
}

/* Reads cert-N.pem into leaf + intermediates. */
static int cert_load(struct mqpki_device *dev, unsigned gen, X509 **leaf, STACK_OF(X509) * *chain)
{
    char name[32], path[DEV_PATH_MAX];
    unsigned char *pem = NULL;
    STACK_OF(X509) *all = NULL;
    size_t len;
    int rc, crc;

    *leaf = NULL;
    *chain = NULL;
    snprintf(name, sizeof(name), "cert-%u.pem", gen);
    rc = path_of(dev, path, sizeof(path), name);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    crc = mqpki_file_read(path, DEV_FILE_MAX, &pem, &len);
    if (crc != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOT_ENROLLED, "%s: %s", path, mqpki_err_detail(crc));
        goto out;
    }
    rc = certs_from_pem(path, pem, len, &all);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    *leaf = sk_X509_shift(all);
    *chain = all;
    all = NULL;
out:
    sk_X509_pop_free(all, X509_free);
    free(pem);
    return rc;
}

/* device.json -> handle; MQPKI_DEVICE_ERR_NOT_ENROLLED when absent. */
static int config_load(struct mqpki_device *dev)
{
    char path[DEV_PATH_MAX];
    unsigned char *data = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    const char *asset, *server, *store, *label;
    json_t *pin = NULL;
    json_int_t gen, jitter;
    size_t len;
    int rc, crc;

    rc = path_of(dev, path, sizeof(path), "device.json");
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    crc = mqpki_file_read(path, JSON_MAX, &data, &len);
    if (crc == MQPKI_ERR_NOT_FOUND) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOT_ENROLLED, "%s: device not enrolled (no device.json)",
                      dev->dir);
        goto out;
    } else if (crc != MQPKI_OK) {
        rc = dev_from_common(crc, MQPKI_DEVICE_ERR_IO);
        goto out;
    }
    root = json_loadb((const char *)data, len, JSON_REJECT_DUPLICATES, &jerr);
    asset = server = store = label = NULL;
    if (root == NULL ||
        json_unpack(root, "{s:s, s:s, s:s, s:s, s?o, s:I, s:I}", "asset", &asset, "server", &server,
                    "store", &store, "token_label", &label, "ca_fingerprint", &pin, "generation",
                    &gen, "jitter", &jitter) != 0 ||
        !proto_asset_id_valid(asset) || gen < 1 || gen > 1000000 ||
        strlen(label) >= sizeof(dev->token_label)) {
        rc = dev_fail(MQPKI_DEVICE_ERR_IO, "%s: corrupted device.json", path);
        goto out;
    }
    strcpy(dev->asset, asset);
    strcpy(dev->token_label, label);
    free(dev->server);
    free(dev->store_spec);
    dev->server = strdup(server);
    dev->store_spec = strdup(store);
    dev->generation = (unsigned)gen;
    dev->jitter = (uint32_t)jitter;
    if (dev->server == NULL || dev->store_spec == NULL)
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
out:
    json_decref(root);
    free(data);
    return rc;
}

static int config_write(const struct mqpki_device *dev, const char *fingerprint)
{
    char path[DEV_PATH_MAX];
    json_t *root = NULL;
    char *text = NULL;
    int rc;

    rc = path_of(dev, path, sizeof(path), "device.json");
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    root = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s?, s:I, s:I}", "version", 1, "asset", dev->asset,
                     "server", dev->server, "store", dev->store_spec, "token_label",
                     dev->token_label, "ca_fingerprint", fingerprint, "generation",
                     (json_int_t)dev->generation, "jitter", (json_int_t)dev->jitter);
    text = root != NULL ? json_dumps(root, JSON_INDENT(2)) : NULL;
    if (text == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    rc = write_file(path, text, strlen(text), 0600);
out:
    free(text);
    json_decref(root);
    return rc;
}

/* Loads the committed identity: ca.pem, store, cert-N.pem, key N, and checks they match. */
static int identity_load(struct mqpki_device *dev)
{
    char path[DEV_PATH_MAX], name[24];
    unsigned char *pem = NULL;
    size_t len;
    int rc, crc;

    rc = config_load(dev);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = path_of(dev, path, sizeof(path), "ca.pem");
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    crc = mqpki_file_read(path, DEV_FILE_MAX, &pem, &len);
    if (crc != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_IO, "%s: %s", path, mqpki_err_detail(crc));
        goto out;
    }
    rc = trust_set(dev, path, pem, len);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = store_open(dev, dev->store_spec, dev->token_label, 0);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = cert_load(dev, dev->generation, &dev->cert, &dev->chain);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    snprintf(name, sizeof(name), "%u", dev->generation);
    rc = dev->ops->load(dev->store, name, &dev->key);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    if (X509_check_private_key(dev->cert, dev->key) != 1) {
        ERR_clear_error();
        rc = dev_fail(MQPKI_DEVICE_ERR_KEY_CORRUPT,
                      "%s: key of generation %u does not match its certificate", dev->dir,
                      dev->generation);
        goto out;
    }
    dev->enrolled = 1;
out:
    free(pem);
    if (rc != MQPKI_DEVICE_OK)
        identity_drop(dev);
    return rc;
}

MQPKI_DEVICE_EXPORT int mqpki_device_open(const char *dir, struct mqpki_device **out)
{
    struct mqpki_device *dev = NULL;
    struct stat st;
    int rc = MQPKI_DEVICE_OK;

    dev_clear_error();
    if (out == NULL || dir == NULL || dir[0] == '\0') {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no device directory");
        goto out;
    }
    *out = NULL;
    dev = calloc(1, sizeof(*dev));
    if (dev == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (mqpki_path(dev->dir, sizeof(dev->dir), "%s", dir) != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s: path too long", dir);
        goto out;
    }
    if (stat(dir, &st) != 0 && mqpki_mkdir_p(dir, 0700) != MQPKI_OK) {
        rc = dev_from_common(MQPKI_ERR_IO, MQPKI_DEVICE_ERR_IO);
        goto out;
    }
    rc = identity_load(dev);
    if (rc == MQPKI_DEVICE_ERR_NOT_ENROLLED && dev->generation == 0) {
        /* Not enrolled yet: a valid handle for mqpki_device_enroll. */
        dev_clear_error();
        rc = MQPKI_DEVICE_OK;
    }
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    *out = dev;
    dev = NULL;
out:
    mqpki_device_close(dev);
    return rc;
}

MQPKI_DEVICE_EXPORT void mqpki_device_close(struct mqpki_device *dev)
{
    if (dev == NULL)
        return;
    identity_drop(dev);
    sk_X509_pop_free(dev->ca_certs, X509_free);
    X509_STORE_free(dev->trust);
    free(dev->ca_pem);
    free(dev->server);
    free(dev->store_spec);
    free(dev);
}

/* A CSR for key: subject CN=asset (the CA takes the subject from its inventory anyway). */
static int csr_make(const char *asset, EVP_PKEY *key, X509_REQ **out)
{
    X509_REQ *req = X509_REQ_new();
    X509_NAME *name = NULL;
    int rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (req == NULL || (name = X509_NAME_new()) == NULL ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)asset, -1, -1,
                                   0) != 1 ||
        X509_REQ_set_version(req, 0) != 1 || X509_REQ_set_subject_name(req, name) != 1 ||
        X509_REQ_set_pubkey(req, key) != 1 || X509_REQ_sign(req, key, EVP_sha256()) <= 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_CRYPTO, "cannot build or sign the CSR");
        goto out;
    }
    *out = req;
    req = NULL;
out:
    ERR_clear_error();
    X509_NAME_free(name);
    X509_REQ_free(req);
    return rc;
}

/* The certificate names exactly our asset (the rule every side of mqpki applies, proto.h). */
static int has_asset_uri(X509 *cert, const char *asset)
{
    char named[PROTO_ASSET_ID_MAX + 1];

    return proto_cert_asset_id(cert, named) && strcmp(named, asset) == 0;
}

/*
 * The checks a new certificate passes before it may replace anything: it chains to the
 * provisioned CA for TLS client use, certifies the key we just generated, and names our asset.
 * *chain gets the intermediates to send along (the verified chain minus leaf and root).
 */
MQPKI_STATIC int verify_issued(X509_STORE *trust, STACK_OF(X509) * ca, X509 *cert, EVP_PKEY *key,
                               const char *asset, STACK_OF(X509) * *chain)
{
    X509_STORE_CTX *sctx = X509_STORE_CTX_new();
    STACK_OF(X509) *full = NULL;
    int rc = MQPKI_DEVICE_OK;

    *chain = NULL;
    if (sctx == NULL || X509_STORE_CTX_init(sctx, trust, cert, ca) != 1) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    X509_STORE_CTX_set_purpose(sctx, X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(sctx) != 1) {
        rc = dev_fail(MQPKI_DEVICE_ERR_VERIFY,
                      "issued certificate does not verify against the provisioned CA: %s",
                      X509_verify_cert_error_string(X509_STORE_CTX_get_error(sctx)));
        goto out;
    }
    if (X509_check_private_key(cert, key) != 1) {
        rc = dev_fail(MQPKI_DEVICE_ERR_VERIFY,
                      "issued certificate does not certify the key generated for it");
        goto out;
    }
    if (!has_asset_uri(cert, asset)) {
        rc = dev_fail(MQPKI_DEVICE_ERR_VERIFY, "issued certificate does not name %s%s",
                      PROTO_ASSET_URN, asset);
        goto out;
    }
    full = X509_STORE_CTX_get1_chain(sctx);
    if (full == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* Drop the leaf and a self-signed root: peers hold the root already. */
    X509_free(sk_X509_shift(full));
    if (sk_X509_num(full) > 0 &&
        X509_check_issued(sk_X509_value(full, sk_X509_num(full) - 1),
                          sk_X509_value(full, sk_X509_num(full) - 1)) == X509_V_OK)
        X509_free(sk_X509_pop(full));
    *chain = full;
    full = NULL;
out:
    ERR_clear_error();
    sk_X509_pop_free(full, X509_free);
    X509_STORE_CTX_free(sctx);
    return rc;
}

/*
 * Commits generation gen: cert-GEN.pem, then (optionally) ca.pem, then device.json (the
 * switch), then the cert.pem copy. See the order at the top of this file.
 */
static int commit(struct mqpki_device *dev, X509 *cert, STACK_OF(X509) * chain,
                  const char *fingerprint, int write_ca)
{
    char path[DEV_PATH_MAX], name[32];
    char *pem = NULL;
    size_t len = 0;
    int rc;

    rc = certs_to_pem(cert, chain, &pem, &len);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    snprintf(name, sizeof(name), "cert-%u.pem", dev->generation);
    rc = path_of(dev, path, sizeof(path), name);
    if (rc == MQPKI_DEVICE_OK)
        rc = write_file(path, pem, len, 0644);
    if (rc == MQPKI_DEVICE_OK && write_ca) {
        rc = path_of(dev, path, sizeof(path), "ca.pem");
        if (rc == MQPKI_DEVICE_OK)
            rc = write_file(path, dev->ca_pem, dev->ca_pem_len, 0644);
    }
    if (rc == MQPKI_DEVICE_OK)
        rc = config_write(dev, fingerprint);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    /* Committed. The copy for other tools is best effort: a stale one is repaired next time. */
    if (path_of(dev, path, sizeof(path), "cert.pem") != MQPKI_DEVICE_OK ||
        write_file(path, pem, len, 0644) != MQPKI_DEVICE_OK)
        dev_log(DEV_LOG_WARN, "%s: cannot refresh cert.pem: %s", dev->dir,
                mqpki_device_last_error());
out:
    free(pem);
    return rc;
}

/* Removes generation gen's files once it is superseded. */
static void generation_remove(struct mqpki_device *dev, const struct mqpki_keystore_ops *ops,
                              void *store, unsigned gen)
{
    char path[DEV_PATH_MAX], name[32];

    snprintf(name, sizeof(name), "%u", gen);
    if (ops != NULL)
        ops->remove(store, name);
    snprintf(name, sizeof(name), "cert-%u.pem", gen);
    if (path_of(dev, path, sizeof(path), name) == MQPKI_DEVICE_OK && unlink(path) != 0 &&
        errno != ENOENT)
        dev_log(DEV_LOG_WARN, "%s: cannot remove: %s", path, strerror(errno));
}

/* Trust from a fingerprint pin: the pinned certificate, plus those of /cacerts chaining to it. */
static int trust_from_pin(struct mqpki_device *dev, struct dev_est *est, const char *pin_text)
{
    unsigned char pin[32], md[32];
    STACK_OF(X509) *got = NULL, *kept = NULL;
    X509_STORE *anchor = NULL;
    X509_STORE_CTX *sctx = NULL;
    X509 *root = NULL;
    char *pem = NULL;
    size_t len = 0;
    int rc;

    rc = dev_fingerprint_parse(pin_text, pin);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    est->trust = NULL;
    rc = dev_est_cacerts(est, &got);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    for (int i = 0; i < sk_X509_num(got) && root == NULL; i++) {
        X509 *x = sk_X509_value(got, i);
        unsigned char *der = NULL;
        int n = i2d_X509(x, &der);
        if (n > 0 && SHA256(der, (size_t)n, md) != NULL && CRYPTO_memcmp(md, pin, 32) == 0)
            root = x;
        OPENSSL_free(der);
    }
    if (root == NULL || X509_check_ca(root) == 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_CA_PIN,
                      "CA pin mismatch: no CA certificate from %s has SHA-256 fingerprint %s",
                      est->server, pin_text);
        goto out;
    }
    /* Only the pinned certificate is authenticated; the others, fetched without TLS
     * verification, are kept only when they chain to it. */
    kept = sk_X509_new_null();
    anchor = X509_STORE_new();
    sctx = X509_STORE_CTX_new();
    if (kept == NULL || anchor == NULL || sctx == NULL || X509_STORE_add_cert(anchor, root) != 1 ||
        X509_up_ref(root) != 1 || sk_X509_push(kept, root) <= 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(got); i++) {
        X509 *x = sk_X509_value(got, i);
        if (x == root || X509_check_ca(x) == 0)
            continue;
        if (X509_STORE_CTX_init(sctx, anchor, x, got) == 1 && X509_verify_cert(sctx) == 1 &&
            X509_up_ref(x) == 1 && sk_X509_push(kept, x) > 0)
            dev_log(DEV_LOG_DEBUG, "CA certificate %d chains to the pinned root", i);
        X509_STORE_CTX_cleanup(sctx);
    }
    rc = certs_to_pem(NULL, kept, &pem, &len);
    if (rc == MQPKI_DEVICE_OK)
        rc = trust_set(dev, "pinned CA chain", (unsigned char *)pem, len);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    /* Now verified: this proves the server's TLS certificate chains to the pinned CA. */
    est->trust = dev->trust;
    est->ca_pem = dev->ca_pem;
    est->ca_pem_len = dev->ca_pem_len;
    sk_X509_pop_free(got, X509_free);
    got = NULL;
    rc = dev_est_cacerts(est, &got);
out:
    ERR_clear_error();
    free(pem);
    X509_STORE_CTX_free(sctx);
    X509_STORE_free(anchor);
    sk_X509_pop_free(kept, X509_free);
    sk_X509_pop_free(got, X509_free);
    return rc;
}

static int check_enroll_opts(const struct mqpki_device_enroll_opts *o)
{
    int rc = MQPKI_DEVICE_OK;

    if (o == NULL || o->server == NULL || strncmp(o->server, "https://", 8) != 0 ||
        strlen(o->server) > 1024)
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "server: expected an https:// URL");
    else if ((o->ca_file == NULL) == (o->ca_fingerprint == NULL))
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID,
                      "give exactly one of a CA file and a CA fingerprint");
    else if (o->asset == NULL || !proto_asset_id_valid(o->asset))
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID,
                      "asset id: 1 to 64 characters of [A-Za-z0-9._-], not starting with . or -");
    else if (o->token == NULL || o->token[0] == '\0' || strlen(o->token) >= DEV_TOKEN_MAX)
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no enrollment token");
    return rc;
}

MQPKI_DEVICE_EXPORT int mqpki_device_enroll(struct mqpki_device *dev,
                                            const struct mqpki_device_enroll_opts *opts)
{
    struct dev_est est = {0};
    unsigned char *pem = NULL;
    STACK_OF(X509) *chain = NULL;
    X509_REQ *csr = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    const char *label;
    unsigned old_gen = 0;
    char name[24];
    size_t len;
    int rc, crc, generated = 0;

    dev_clear_error();
    if (dev == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no device handle");
        goto out;
    }
    rc = check_enroll_opts(opts);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    if (dev->enrolled && !opts->force) {
        rc = dev_fail(MQPKI_DEVICE_ERR_EXISTS,
                      "%s: already enrolled as %s (renew, or force a "
                      "new enrollment)",
                      dev->dir, dev->asset);
        goto out;
    }
    /* The old identity stays on disk untouched until the commit; the handle reloads it on
     * failure. Its in-memory form is dropped so that the store can be reopened as asked. */
    old_gen = dev->generation;
    identity_drop(dev);
    strcpy(dev->asset, opts->asset);
    free(dev->server);
    free(dev->store_spec);
    dev->server = strdup(opts->server);
    dev->store_spec = strdup(opts->store != NULL ? opts->store : "file");
    if (dev->server == NULL || dev->store_spec == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* EST paths are appended to the base: no trailing slash. */
    while (strlen(dev->server) > 8 && dev->server[strlen(dev->server) - 1] == '/')
        dev->server[strlen(dev->server) - 1] = '\0';
    label = getenv(TOKEN_LABEL_ENV);
    if (label == NULL || label[0] == '\0')
        label = DEFAULT_LABEL;
    if (strlen(label) >= sizeof(dev->token_label)) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s too long", TOKEN_LABEL_ENV);
        goto out;
    }
    strcpy(dev->token_label, label);
    est.server = dev->server;
    if (opts->ca_file != NULL) {
        crc = mqpki_file_read(opts->ca_file, DEV_FILE_MAX, &pem, &len);
        if (crc != MQPKI_OK) {
            rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "CA file %s", mqpki_err_detail(crc));
            goto out;
        }
        rc = trust_set(dev, opts->ca_file, pem, len);
        est.trust = dev->trust;
        est.ca_pem = dev->ca_pem;
        est.ca_pem_len = dev->ca_pem_len;
    } else {
        rc = trust_from_pin(dev, &est, opts->ca_fingerprint);
    }
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = store_open(dev, dev->store_spec, dev->token_label, 1);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    RAND_bytes((unsigned char *)&dev->jitter, sizeof(dev->jitter));
    dev->generation = old_gen + 1;
    snprintf(name, sizeof(name), "%u", dev->generation);
    rc = dev->ops->generate(dev->store, name, &key);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    generated = 1;
    rc = csr_make(dev->asset, key, &csr);
    if (rc == MQPKI_DEVICE_OK)
        rc = dev_est_enroll(&est, dev->asset, opts->token, csr, &cert);
    dev->retry_after = est.retry_after;
    if (rc == MQPKI_DEVICE_OK)
        rc = verify_issued(dev->trust, dev->ca_certs, cert, key, dev->asset, &chain);
    if (rc == MQPKI_DEVICE_OK)
        rc = commit(dev, cert, chain, opts->ca_fingerprint, 1);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    dev_log(DEV_LOG_INFO, "%s: enrolled as %s (generation %u)", dev->dir, dev->asset,
            dev->generation);
    if (old_gen > 0)
        generation_remove(dev, NULL, NULL, old_gen);
    dev->cert = cert;
    dev->chain = chain;
    dev->key = key;
    dev->enrolled = 1;
    cert = NULL;
    chain = NULL;
    key = NULL;
out:
    if (rc != MQPKI_DEVICE_OK && dev != NULL) {
        char saved[512];
        /* The uncommitted key goes; then the committed identity (if any) comes back. */
        snprintf(saved, sizeof(saved), "%s", mqpki_device_last_error());
        EVP_PKEY_free(key);
        key = NULL;
        if (generated && dev->ops == &dev_store_file)
            generation_remove(dev, dev->ops, dev->store, dev->generation);
        identity_drop(dev);
        dev->generation = 0;
        if (old_gen > 0 && identity_load(dev) != MQPKI_DEVICE_OK)
            dev_log(DEV_LOG_WARN, "%s: previous identity not reloaded: %s", dev->dir,
                    mqpki_device_last_error());
        dev_fail(rc, "%s", saved);
    }
    EVP_PKEY_free(key);
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    X509_REQ_free(csr);
    free(pem);
    return rc;
}

MQPKI_DEVICE_EXPORT int mqpki_device_renewal_due(struct mqpki_device *dev, int64_t now)
{
    if (dev == NULL || !dev->enrolled)
        return 0;
    return now >= dev_renew_at(asn1_time_epoch(X509_get0_notBefore(dev->cert)),
                               asn1_time_epoch(X509_get0_notAfter(dev->cert)),
                               dev->jitter ^ (dev->generation * 2654435761u));
}

MQPKI_DEVICE_EXPORT int64_t mqpki_device_retry_delay(struct mqpki_device *dev, unsigned attempt)
{
    uint32_t r = 0;
    int64_t d;

    RAND_bytes((unsigned char *)&r, sizeof(r));
    d = dev_backoff(attempt, r);
    if (dev != NULL && dev->retry_after > d)
        d = dev->retry_after;
    return d;
}

/*
 * Before a renewal: the CA certificates /cacerts serves now (over TLS verified with the trust
 * held), so that a certificate from a new issuing CA (a rollover) verifies. Only CA
 * certificates that chain to the trust already held are added; nothing is ever removed here.
 * *changed is 1 when the trust grew (the caller writes ca.pem with the new identity). A
 * server without /cacerts, or any failure, leaves the trust as it was: the renewal goes on.
 */
static void ca_refresh(struct mqpki_device *dev, struct dev_est *est, int *changed)
{
    STACK_OF(X509) *got = NULL, *merged = NULL;
    X509_STORE_CTX *sctx = NULL;
    char *pem = NULL;
    size_t len = 0;
    int added = 0;

    *changed = 0;
    if (dev_est_cacerts(est, &got) != MQPKI_DEVICE_OK || (sctx = X509_STORE_CTX_new()) == NULL ||
        (merged = sk_X509_dup(dev->ca_certs)) == NULL)
        goto out;
    for (int i = 0; i < sk_X509_num(got); i++) {
        X509 *x = sk_X509_value(got, i);
        int known = 0;
        for (int j = 0; j < sk_X509_num(dev->ca_certs) && !known; j++)
            known = X509_cmp(x, sk_X509_value(dev->ca_certs, j)) == 0;
        if (known || X509_check_ca(x) == 0)
            continue;
        if (X509_STORE_CTX_init(sctx, dev->trust, x, got) == 1 && X509_verify_cert(sctx) == 1 &&
            sk_X509_push(merged, x) > 0)
            added++;
        X509_STORE_CTX_cleanup(sctx);
    }
    if (added == 0 || certs_to_pem(NULL, merged, &pem, &len) != MQPKI_DEVICE_OK ||
        trust_set(dev, "CA chain from /cacerts", (unsigned char *)pem, len) != MQPKI_DEVICE_OK)
        goto out;
    est->trust = dev->trust;
    est->ca_pem = dev->ca_pem;
    est->ca_pem_len = dev->ca_pem_len;
    dev_log(DEV_LOG_INFO, "%s: %d new CA certificate(s) from /cacerts trusted", dev->dir, added);
    *changed = 1;
out:
    dev_clear_error();
    ERR_clear_error();
    free(pem);
    X509_STORE_CTX_free(sctx);
    sk_X509_free(merged); /* the certificates are got's or dev->ca_certs' */
    sk_X509_pop_free(got, X509_free);
}

MQPKI_DEVICE_EXPORT int mqpki_device_renew(struct mqpki_device *dev, int force, int *renewed)
{
    struct dev_est est = {0};
    STACK_OF(X509) *chain = NULL;
    X509_REQ *csr = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    unsigned old_gen;
    char name[24];
    int rc = MQPKI_DEVICE_OK, generated = 0, ca_changed = 0;

    dev_clear_error();
    if (renewed != NULL)
        *renewed = 0;
    if (dev == NULL || !dev->enrolled) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOT_ENROLLED, "%s: device not enrolled",
                      dev != NULL ? dev->dir : "?");
        goto out;
    }
    if (!force && !mqpki_device_renewal_due(dev, mqpki_now()))
        goto out;
    /* Authenticated by the current identity: it stays the one in force until the commit. */
    est.server = dev->server;
    est.trust = dev->trust;
    est.ca_pem = dev->ca_pem;
    est.ca_pem_len = dev->ca_pem_len;
    est.client_cert = dev->cert;
    est.client_chain = dev->chain;
    est.client_key = dev->key;
    ca_refresh(dev, &est, &ca_changed);
    old_gen = dev->generation;
    snprintf(name, sizeof(name), "%u", old_gen + 1);
    rc = dev->ops->generate(dev->store, name, &key);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    generated = 1;
    rc = csr_make(dev->asset, key, &csr);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = dev_est_enroll(&est, dev->asset, NULL, csr, &cert);
    dev->retry_after = est.retry_after;
    if (rc == MQPKI_DEVICE_OK)
        rc = verify_issued(dev->trust, dev->ca_certs, cert, key, dev->asset, &chain);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    dev->generation = old_gen + 1;
    rc = commit(dev, cert, chain, NULL, ca_changed);
    if (rc != MQPKI_DEVICE_OK) {
        dev->generation = old_gen;
        goto out;
    }
    generated = 0;
    dev_log(DEV_LOG_INFO, "%s: renewed %s (generation %u)", dev->dir, dev->asset, dev->generation);
    /* Switch in memory, then forget the superseded generation. */
    X509_free(dev->cert);
    sk_X509_pop_free(dev->chain, X509_free);
    EVP_PKEY_free(dev->key);
    SSL_CTX_free(dev->ssl_ctx);
    dev->ssl_ctx = NULL;
    dev->cert = cert;
    dev->chain = chain;
    dev->key = key;
    cert = NULL;
    chain = NULL;
    key = NULL;
    generation_remove(dev, dev->ops, dev->store, old_gen);
    if (renewed != NULL)
        *renewed = 1;
out:
    EVP_PKEY_free(key);
    if (generated && dev->ops == &dev_store_file) {
        /* Keep the error detail of the failure, not of the clean-up. */
        char saved[512];
        snprintf(saved, sizeof(saved), "%s", mqpki_device_last_error());
        snprintf(name, sizeof(name), "%u", dev->generation + 1);
        dev->ops->remove(dev->store, name);
        dev_fail(rc, "%s", saved);
    }
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    X509_REQ_free(csr);
    return rc;
}

MQPKI_DEVICE_EXPORT int mqpki_device_info(struct mqpki_device *dev, struct mqpki_device_info *info)
{
    BIO *mem = NULL;
    int rc = MQPKI_DEVICE_OK, n;

    dev_clear_error();
    if (dev == NULL || info == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no device handle");
        goto out;
    }
    memset(info, 0, sizeof(*info));
    if (!dev->enrolled) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOT_ENROLLED, "%s: device not enrolled", dev->dir);
        goto out;
    }
    mem = BIO_new(BIO_s_mem());
    if (proto_serial_hex(X509_get0_serialNumber(dev->cert), dev->serial) != 0 || mem == NULL ||
        X509_NAME_print_ex(mem, X509_get_subject_name(dev->cert), 0, XN_FLAG_RFC2253) < 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (char *p = dev->serial; *p != '\0'; p++)
        *p = (char)tolower((unsigned char)*p);
    n = BIO_read(mem, dev->subject, sizeof(dev->subject) - 1);
    dev->subject[n > 0 ? n : 0] = '\0';
    info->asset = dev->asset;
    info->server = dev->server;
    info->store = dev->store_spec;
    info->serial = dev->serial;
    info->subject = dev->subject;
    info->not_before = asn1_time_epoch(X509_get0_notBefore(dev->cert));
    info->not_after = asn1_time_epoch(X509_get0_notAfter(dev->cert));
    info->renew_at = dev_renew_at(info->not_before, info->not_after,
                                  dev->jitter ^ (dev->generation * 2654435761u));
    info->generation = dev->generation;
out:
    BIO_free(mem);
    return rc;
}

MQPKI_DEVICE_EXPORT const char *mqpki_device_ca_path(struct mqpki_device *dev)
{
    if (dev == NULL)
        return NULL;
    snprintf(dev->ca_path, sizeof(dev->ca_path), "%s/ca.pem", dev->dir);
    return dev->ca_path;
}
