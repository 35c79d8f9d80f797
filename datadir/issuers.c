/*
 * datadir/issuers.c: the issuing CA's key generations (docs/operations.md, "CA rollover").
 *
 * `mqpki ca rollover` gives the issuing CA a new key, certified by the same root under the
 * same name: generation N's key is DATADIR_ISSUING_KEY "-N" in the token (generation 1 keeps
 * DATADIR_ISSUING_KEY), its certificate ca/issuers/N.pem. ca/issuing.pem is the current
 * generation: it signs every new certificate and every CRL. One name means one CRL: a CRL
 * signed by the current key covers the certificates of every generation (RFC 5280 6.3.3 (f):
 * a CRL issuer of the same name with another key, its own path validated), so an older
 * generation's key signs no certificate once it is replaced, only copies of the current key's
 * CRLs for relying parties that want a CRL of each certificate's own key
 * (datadir_generations_export). A generation stays trusted (ca/chain.pem, /cacerts, the brokers'
 * issuer list on the feed) until `mqpki ca retire N` marks it retired (ca/issuers/N.retired), which
 * it refuses while a certificate of that generation is still valid.
 *
 * Crash windows of a rollover, each finished by running it again: the key is made first (a
 * rerun finds it and uses it), its certificate goes to ca/issuers/N.pem, then ca/chain.pem,
 * and the atomic replacement of ca/issuing.pem is the switch. A rerun that finds a generation
 * newer than ca/issuing.pem, not retired, finishes that one instead of making another.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/x509v3.h>

#include "common.h"
#include "datadir_int.h"
#include "hsm.h"

int datadir_issuer_label(int gen, char out[DATADIR_ISSUER_LABEL_MAX])
{
    if (gen <= 1)
        snprintf(out, DATADIR_ISSUER_LABEL_MAX, "%s", DATADIR_ISSUING_KEY);
    else
        snprintf(out, DATADIR_ISSUER_LABEL_MAX, "%s-%d", DATADIR_ISSUING_KEY, gen);
    return MQPKI_OK;
}

static int exists(const char *home, const char *rel)
{
    char path[PATH_MAX];

    return mqpki_path(path, sizeof(path), "%s/%s", home, rel) == MQPKI_OK &&
           access(path, F_OK) == 0;
}

int datadir_issuers_rolled(const char *home)
{
    return exists(home, "ca/issuers");
}

void datadir_issuers_clear(struct datadir_issuers *is)
{
    for (size_t i = 0; i < is->n; i++)
        X509_free(is->v[i].cert);
    memset(is, 0, sizeof(*is));
}

int datadir_issuers_read(const char *home, struct datadir_issuers *out)
{
    X509 *issuing = NULL;
    char rel[64];
    int rc, have_current = 0;

    memset(out, 0, sizeof(*out));
    if ((rc = datadir_load_cert(home, "ca/issuing.pem", &issuing)) != MQPKI_OK)
        return rc;
    for (int gen = 1; gen <= DATADIR_ISSUERS_MAX; gen++) {
        struct datadir_issuer *g = &out->v[out->n];
        snprintf(rel, sizeof(rel), "ca/issuers/%d.pem", gen);
        if (!exists(home, rel))
            continue;
        if ((rc = datadir_load_cert(home, rel, &g->cert)) != MQPKI_OK)
            goto out;
        g->gen = gen;
        g->current = X509_cmp(g->cert, issuing) == 0;
        snprintf(rel, sizeof(rel), "ca/issuers/%d.retired", gen);
        g->retired = exists(home, rel);
        have_current |= g->current;
        if (g->current)
            out->current = out->n;
        out->n++;
    }
    if (!have_current) {
        /* Never rolled over (or only its first step done): ca/issuing.pem is generation 1. */
        if ((out->n > 0 && out->v[0].gen == 1) || out->n == DATADIR_ISSUERS_MAX) {
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "ca/issuing.pem is none of the generations in ca/issuers/");
            goto out;
        }
        memmove(&out->v[1], &out->v[0], out->n * sizeof(out->v[0]));
        out->v[0].gen = 1;
        out->v[0].current = 1;
        out->v[0].retired = 0;
        out->v[0].cert = issuing;
        out->v[0].unfiled = 1;
        issuing = NULL;
        out->current = 0;
        out->n++;
    }
    if (out->v[out->current].retired) {
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "the current issuing CA (generation %d) is marked "
                        "retired",
                        out->v[out->current].gen);
        goto out;
    }
    rc = MQPKI_OK;
out:
    X509_free(issuing);
    if (rc != MQPKI_OK)
        datadir_issuers_clear(out);
    return rc;
}

int datadir_issuer_gen_of(const char *home, X509 *cert, int *gen)
{
    struct datadir_issuers is;
    int rc;

    *gen = 1;
    if ((rc = datadir_issuers_read(home, &is)) != MQPKI_OK)
        return rc;
    rc = mqpki_fail(MQPKI_ERR_STATE, "ca/issuing.pem changed while it was read (a rollover?): "
                                     "run the command again");
    for (size_t i = 0; i < is.n; i++)
        if (X509_cmp(is.v[i].cert, cert) == 0) {
            *gen = is.v[i].gen;
            mqpki_err_clear();
            rc = MQPKI_OK;
        }
    datadir_issuers_clear(&is);
    return rc;
}

static int append_pem(char **all, size_t *len, X509 *cert)
{
    char *pem = NULL, *grown;
    size_t n = 0;
    int rc;

    if ((rc = ca_cert_pem(cert, &pem, &n)) != MQPKI_OK)
        return rc;
    if ((grown = realloc(*all, *len + n + 1)) == NULL) {
        free(pem);
        return MQPKI_ERR_NOMEM;
    }
    memcpy(grown + *len, pem, n);
    *len += n;
    grown[*len] = '\0';
    *all = grown;
    free(pem);
    return MQPKI_OK;
}

int datadir_issuers_pem(const struct datadir_issuers *is, int current_gen, X509 *root, char **out,
                        size_t *len)
{
    char *all = NULL;
    size_t n = 0;
    int rc = MQPKI_OK;

    *out = NULL;
    *len = 0;
    /* The current generation first (what a reader taking one issuing CA takes), then the other
     * live ones, newest first, then the root. */
    for (size_t i = 0; rc == MQPKI_OK && i < is->n; i++)
        if (is->v[i].gen == current_gen)
            rc = append_pem(&all, &n, is->v[i].cert);
    for (size_t i = is->n; rc == MQPKI_OK && i-- > 0;)
        if (is->v[i].gen != current_gen && !is->v[i].retired)
            rc = append_pem(&all, &n, is->v[i].cert);
    if (rc == MQPKI_OK && root != NULL)
        rc = append_pem(&all, &n, root);
    if (rc != MQPKI_OK) {
        free(all);
        return rc;
    }
    *out = all;
    *len = n;
    return MQPKI_OK;
}

static int write_chain(const char *home, const struct datadir_issuers *is, int current_gen,
                       X509 *root)
{
    char *pem = NULL;
    size_t len = 0;
    int rc;

    if ((rc = datadir_issuers_pem(is, current_gen, root, &pem, &len)) == MQPKI_OK)
        rc = datadir_write_file(home, "ca/chain.pem", pem, len, 0644);
    free(pem);
    return rc;
}

static int write_cert(const char *home, const char *rel, X509 *cert)
{
    char *pem = NULL;
    size_t len = 0;
    int rc;

    if ((rc = append_pem(&pem, &len, cert)) == MQPKI_OK)
        rc = datadir_write_file(home, rel, pem, len, 0644);
    free(pem);
    return rc;
}

/* ca/issuers/, made durable in ca/ before a file goes into it. */
static int issuers_dir(const char *home)
{
    char path[PATH_MAX];
    int fd;

    if (mqpki_path(path, sizeof(path), "%s/ca/issuers", home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return mqpki_fail_errno(errno, path);
    if (mqpki_path(path, sizeof(path), "%s/ca", home) != MQPKI_OK)
        return MQPKI_ERR_INVALID;
    if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return mqpki_fail_errno(errno, path);
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        return mqpki_fail_errno(err, path);
    }
    close(fd);
    return MQPKI_OK;
}

/* The CN of cert's subject into out. */
static int subject_cn(X509 *cert, char *out, size_t size)
{
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)size) <= 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "the issuing CA certificate has no common name");
    return MQPKI_OK;
}

/* The key type of cert's key: a new generation has the current one's, so that it signs with
 * the same algorithm and the older generations' CRL copies (ca_crl_resign) stay possible. */
static int key_type_of(X509 *cert, enum hsm_key_type *type)
{
    EVP_PKEY *pub = X509_get0_pubkey(cert);
    int bits = pub != NULL ? EVP_PKEY_get_bits(pub) : 0;

    if (pub != NULL && EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC && (bits == 256 || bits == 384)) {
        *type = bits == 256 ? HSM_KEY_EC_P256 : HSM_KEY_EC_P384;
        return MQPKI_OK;
    }
    if (pub != NULL && EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA && bits == 3072) {
        *type = HSM_KEY_RSA_3072;
        return MQPKI_OK;
    }
    return mqpki_fail(MQPKI_ERR_STATE,
                      "the issuing CA's key is of a type a rollover does not make");
}

/* The public keys of a and b are the same. */
static int same_key(EVP_PKEY *a, EVP_PKEY *b)
{
    return a != NULL && b != NULL && EVP_PKEY_eq(a, b) == 1;
}

static int rollover(struct datadir *dd, int days, X509 *signed_cert, void (*ready)(void *ctx),
                    void *ctx, struct datadir_rollover *out);

/* One change of the generations at a time, across processes (a rollover in mqpkid, a retire
 * by a command): an flock on ca/.issuers-lock; -1 when it cannot be had. */
static int issuers_lock(const char *home)
{
    char path[PATH_MAX];
    int fd;

    if (mqpki_path(path, sizeof(path), "%s/ca/.issuers-lock", home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home), -1;
    if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
        mqpki_fail_errno(errno, path);
        return -1;
    }
    while (flock(fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            mqpki_fail_errno(errno, path);
            close(fd);
            return -1;
        }
    }
    return fd;
}

int datadir_ca_rollover(struct datadir *dd, int days, X509 *signed_cert, void (*ready)(void *ctx),
                        void *ctx, struct datadir_rollover *out)
{
    int fd = issuers_lock(dd->home), rc;

    if (fd < 0)
        return MQPKI_ERR_IO;
    rc = rollover(dd, days, signed_cert, ready, ctx, out);
    close(fd);
    return rc;
}

/*
 * A certificate for generation gen's key made elsewhere (the root offline): it must be for
 * key, under the current generation's name, signed by the root, a CA that may sign
 * certificates and CRLs, valid now, with a key identifier of the current one's length (the
 * older generations' CRL copies swap it in place, ca_crl_resign).
 */
static int external_check(X509 *cert, EVP_PKEY *key, X509 *root, X509 *current, int gen)
{
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(cert),
                            *cur_ski = X509_get0_subject_key_id(current);
    uint32_t ku = X509_get_key_usage(cert);

    if (!same_key(key, X509_get0_pubkey(cert)))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "the certificate is not for generation %d's key (the one in the "
                          "request `mqpki ca rollover --csr-out` wrote)",
                          gen);
    if (X509_NAME_cmp(X509_get_subject_name(cert), X509_get_subject_name(current)) != 0)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "the certificate's subject is not the issuing CA's name");
    if (X509_check_issued(root, cert) != X509_V_OK ||
        X509_verify(cert, X509_get0_pubkey(root)) != 1)
        return mqpki_fail(MQPKI_ERR_INVALID, "the certificate is not signed by this CA's root "
                                             "(ca/root.pem)");
    if (X509_check_ca(cert) != 1 || !(X509_get_extension_flags(cert) & EXFLAG_CA) ||
        (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) != (KU_KEY_CERT_SIGN | KU_CRL_SIGN))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "the certificate is not a CA that signs certificates and CRLs "
                          "(basicConstraints CA:TRUE, keyUsage keyCertSign and cRLSign)");
    if (ski == NULL || cur_ski == NULL || ski->length != cur_ski->length)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "the certificate's subject key identifier is missing or not of the "
                          "current one's length");
    if (X509_cmp_current_time(X509_get0_notBefore(cert)) > 0 ||
        X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "the certificate is not valid now");
    return MQPKI_OK;
}

static const char offline_hint[] =
    "the root key is not in this CA's token (the root is kept offline): make the request with "
    "`mqpki ca rollover --csr-out FILE`, have the root sign it (`mqpki root sign`), then "
    "`mqpki ca rollover --cert CERT`";

int datadir_ca_rollover_request(struct datadir *dd, char **pem, size_t *len, int *gen_out)
{
    struct datadir_issuers is;
    char label[DATADIR_ISSUER_LABEL_MAX];
    enum hsm_key_type type = HSM_KEY_EC_P256;
    EVP_PKEY *key = NULL;
    int fd, rc, gen;

    *pem = NULL;
    *len = 0;
    memset(&is, 0, sizeof(is));
    if (dd->hsm == NULL)
        return mqpki_fail(MQPKI_ERR_STATE, "the CA token is not open in this process");
    if ((fd = issuers_lock(dd->home)) < 0)
        return MQPKI_ERR_IO;
    if ((rc = datadir_issuers_read(dd->home, &is)) != MQPKI_OK)
        goto out;
    gen = is.v[is.n - 1].gen;
    if (gen != is.v[is.current].gen && !is.v[is.n - 1].retired) {
        rc = mqpki_fail(MQPKI_ERR_STATE,
                        "a rollover to generation %d is half done: run `mqpki ca rollover` to "
                        "finish it",
                        gen);
        goto out;
    }
    if (++gen > DATADIR_ISSUERS_MAX) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "%d issuing CA generations: no more rollovers",
                        DATADIR_ISSUERS_MAX);
        goto out;
    }
    datadir_issuer_label(gen, label);
    /* The key waiting for its certificate, made once: a second request is for the same key. */
    if ((rc = key_type_of(is.v[is.current].cert, &type)) != MQPKI_OK)
        goto out;
    rc = hsm_key_generate(dd->hsm, label, type);
    if (rc == MQPKI_ERR_EXISTS) {
        mqpki_err_clear();
        rc = MQPKI_OK;
    }
    if (rc != MQPKI_OK || (rc = hsm_key_load(dd->hsm, label, &key)) != MQPKI_OK ||
        (rc = ca_ca_request(key, X509_get_subject_name(is.v[is.current].cert), pem, len)) !=
            MQPKI_OK)
        goto out;
    *gen_out = gen;
out:
    EVP_PKEY_free(key);
    datadir_issuers_clear(&is);
    close(fd);
    return rc;
}

static int rollover(struct datadir *dd, int days, X509 *signed_cert, void (*ready)(void *ctx),
                    void *ctx, struct datadir_rollover *out)
{
    struct datadir_issuers is;
    char label[DATADIR_ISSUER_LABEL_MAX], cn[128], rel[64];
    X509 *root = NULL, *cert = NULL;
    EVP_PKEY *key = NULL, *root_key = NULL;
    enum hsm_key_type type = HSM_KEY_EC_P256;
    struct ca *ca = NULL;
    int rc, gen, prev, resumed = 0;

    memset(out, 0, sizeof(*out));
    memset(&is, 0, sizeof(is));
    if (dd->hsm == NULL)
        return mqpki_fail(MQPKI_ERR_STATE, "the CA token is not open in this process");
    if (days <= 0 || days > 30 * 365)
        return mqpki_fail(MQPKI_ERR_INVALID, "--days %d: 1 to %d", days, 30 * 365);
    if ((rc = datadir_issuers_read(dd->home, &is)) != MQPKI_OK)
        return rc;
    prev = is.v[is.current].gen;
    if ((rc = datadir_load_cert(dd->home, "ca/root.pem", &root)) != MQPKI_OK)
        goto out;
    /* Generation 1 gets its file before anything else changes. */
    if ((rc = issuers_dir(dd->home)) != MQPKI_OK)
        goto out;
    if (is.v[0].unfiled &&
        (rc = write_cert(dd->home, "ca/issuers/1.pem", is.v[0].cert)) != MQPKI_OK)
        goto out;
    gen = is.v[is.n - 1].gen;
    if (signed_cert != NULL && X509_cmp(signed_cert, is.v[is.current].cert) == 0) {
        /* Run again after it finished: nothing to do. */
        out->gen = prev;
        for (size_t i = 0; i < is.n; i++)
            if (is.v[i].gen < prev)
                out->previous = is.v[i].gen;
        out->already = 1;
        rc = MQPKI_OK;
        goto out;
    }
    if (gen != prev && !is.v[is.n - 1].retired) {
        /* A rollover cut short after its certificate was filed: finish that one. */
        if (signed_cert != NULL && X509_cmp(signed_cert, is.v[is.n - 1].cert) != 0) {
            rc = mqpki_fail(MQPKI_ERR_STATE,
                            "a rollover to generation %d with another certificate is half "
                            "done: run `mqpki ca rollover` to finish it",
                            gen);
            goto out;
        }
        resumed = 1;
        if (!X509_up_ref(is.v[is.n - 1].cert)) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        cert = is.v[is.n - 1].cert;
        datadir_issuer_label(gen, label);
        if ((rc = hsm_key_load(dd->hsm, label, &key)) != MQPKI_OK)
            goto out;
        if (!same_key(key, X509_get0_pubkey(cert))) {
            rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                            "ca/issuers/%d.pem does not match the token key '%s'", gen, label);
            goto out;
        }
    } else {
        if (++gen > DATADIR_ISSUERS_MAX) {
            rc = mqpki_fail(MQPKI_ERR_STATE, "%d issuing CA generations: no more rollovers",
                            DATADIR_ISSUERS_MAX);
            goto out;
        }
        datadir_issuer_label(gen, label);
        if (signed_cert != NULL) {
            /* Certified elsewhere (the root offline) for the key the request was made with. */
            rc = hsm_key_load(dd->hsm, label, &key);
            if (rc == MQPKI_ERR_NOT_FOUND)
                rc = mqpki_fail(rc,
                                "no key of generation %d waits for a certificate: make the "
                                "request first (`mqpki ca rollover --csr-out FILE`)",
                                gen);
            if (rc != MQPKI_OK || (rc = external_check(signed_cert, key, root,
                                                       is.v[is.current].cert, gen)) != MQPKI_OK)
                goto out;
            if (!X509_up_ref(signed_cert)) {
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
            cert = signed_cert;
        } else {
            /* The root key first: without it (kept offline) no key is made for nothing. */
            rc = hsm_key_load(dd->hsm, DATADIR_ROOT_KEY, &root_key);
            if (rc == MQPKI_ERR_NOT_FOUND)
                rc = mqpki_fail(rc, "%s", offline_hint);
            if (rc != MQPKI_OK || (rc = key_type_of(is.v[is.current].cert, &type)) != MQPKI_OK)
                goto out;
            /* A key left by a rollover that died before filing its certificate is used as it
             * is. */
            rc = hsm_key_generate(dd->hsm, label, type);
            if (rc == MQPKI_ERR_EXISTS) {
                mqpki_err_clear();
                rc = MQPKI_OK;
            }
            if (rc != MQPKI_OK || (rc = hsm_key_load(dd->hsm, label, &key)) != MQPKI_OK)
                goto out;
            if ((rc = subject_cn(is.v[is.current].cert, cn, sizeof(cn))) != MQPKI_OK ||
                (rc = ca_issuing_create(root, root_key, key, cn, days, &cert)) != MQPKI_OK)
                goto out;
        }
        snprintf(rel, sizeof(rel), "ca/issuers/%d.pem", gen);
        if ((rc = write_cert(dd->home, rel, cert)) != MQPKI_OK)
            goto out;
        datadir_issuers_clear(&is);
        if ((rc = datadir_issuers_read(dd->home, &is)) != MQPKI_OK)
            goto out;
    }
    /* The new CA must sign before anyone is pointed at it. */
    if ((rc = ca_open(cert, key, root, dd->cfg.url, &ca)) != MQPKI_OK ||
        (rc = ca_selftest(ca)) != MQPKI_OK)
        goto out;
    if ((rc = write_chain(dd->home, &is, gen, root)) != MQPKI_OK ||
        (rc = write_cert(dd->home, "ca/issuing.pem", cert)) != MQPKI_OK)
        goto out;
    if (ready != NULL)
        ready(ctx);
    rc = datadir_ca_swap(dd, ca, key, gen);
    ca = NULL;
    key = NULL;
    if (rc != MQPKI_OK)
        goto out;
    out->gen = gen;
    out->previous = prev;
    out->resumed = resumed;
    rc = MQPKI_OK;
out:
    ca_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(root_key);
    X509_free(cert);
    X509_free(root);
    datadir_issuers_clear(&is);
    return rc;
}

/* Counts the valid certificates whose authority key identifier is ski. */
struct live_count {
    const ASN1_OCTET_STRING *ski;
    int64_t now, n;
};

static int count_issued(const struct inventory_cert *c, void *ctx)
{
    struct live_count *lc = ctx;
    X509 *x = NULL;
    const ASN1_OCTET_STRING *aki;

    if (c->pem == NULL || c->not_after < lc->now)
        return 0;
    if (ca_cert_from_pem(c->pem, strlen(c->pem), &x) != MQPKI_OK) {
        mqpki_err_clear();
        return 0;
    }
    aki = X509_get0_authority_key_id(x);
    if (aki != NULL && ASN1_OCTET_STRING_cmp(aki, lc->ski) == 0)
        lc->n++;
    X509_free(x);
    return 0;
}

int datadir_ca_issued_live(struct datadir *dd, X509 *issuer, int64_t *live)
{
    struct live_count lc;
    int rc;

    *live = 0;
    memset(&lc, 0, sizeof(lc));
    if ((lc.ski = X509_get0_subject_key_id(issuer)) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "the issuing CA certificate has no key identifier");
    lc.now = mqpki_now();
    if ((rc = inventory_cert_list(dd->inv, NULL, INV_CERT_VALID, 1, count_issued, &lc)) == MQPKI_OK)
        *live = lc.n;
    return rc;
}

int datadir_ca_retire(struct datadir *dd, int gen, int64_t *live, int *already)
{
    struct datadir_issuers is;
    X509 *root = NULL;
    char rel[64], stamp[32];
    size_t i;
    int rc, fd;

    *live = 0;
    *already = 0;
    if ((fd = issuers_lock(dd->home)) < 0)
        return MQPKI_ERR_IO;
    if ((rc = datadir_issuers_read(dd->home, &is)) != MQPKI_OK) {
        close(fd);
        return rc;
    }
    for (i = 0; i < is.n && is.v[i].gen != gen; i++)
        ;
    if (i == is.n) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no issuing CA generation %d (mqpki ca list)", gen);
        goto out;
    }
    if (is.v[i].current) {
        rc = mqpki_fail(MQPKI_ERR_STATE,
                        "generation %d is the current issuing CA: roll over first "
                        "(mqpki ca rollover)",
                        gen);
        goto out;
    }
    if ((rc = datadir_load_cert(dd->home, "ca/root.pem", &root)) != MQPKI_OK)
        goto out;
    /* Retired already (a run cut short after the mark, perhaps): the chain follows the marks
     * again, and the caller tells mqpkid again. */
    if (is.v[i].retired) {
        *already = 1;
        rc = write_chain(dd->home, &is, is.v[is.current].gen, root);
        goto out;
    }
    if ((rc = datadir_ca_issued_live(dd, is.v[i].cert, live)) != MQPKI_OK)
        goto out;
    if (*live > 0) {
        rc = mqpki_fail(MQPKI_ERR_STATE,
                        "%lld certificate%s of generation %d %s still valid: renew and revoke "
                        "them first (mqpki campaign renew --issuer %d, then "
                        "campaign finish --revoke-old)",
                        (long long)*live, *live == 1 ? "" : "s", gen, *live == 1 ? "is" : "are",
                        gen);
        goto out;
    }
    snprintf(rel, sizeof(rel), "ca/issuers/%d.retired", gen);
    snprintf(stamp, sizeof(stamp), "%lld\n", (long long)mqpki_now());
    if ((rc = datadir_write_file(dd->home, rel, stamp, strlen(stamp), 0644)) != MQPKI_OK)
        goto out;
    is.v[i].retired = 1;
    rc = write_chain(dd->home, &is, is.v[is.current].gen, root);
out:
    X509_free(root);
    datadir_issuers_clear(&is);
    close(fd);
    return rc;
}

/* Generation gen's CA with its token key, opened once (export lock held). */
static int gen_ca(struct datadir *dd, const struct datadir_issuer *g, X509 *root, struct ca **out)
{
    char label[DATADIR_ISSUER_LABEL_MAX];
    EVP_PKEY *key = NULL;
    int rc = MQPKI_OK;

    if (dd->gen_ca[g->gen] == NULL) {
        datadir_issuer_label(g->gen, label);
        if ((rc = hsm_key_load(dd->hsm, label, &key)) == MQPKI_OK)
            rc = ca_open(g->cert, key, root, dd->cfg.url, &dd->gen_ca[g->gen]);
        EVP_PKEY_free(key);
    }
    *out = dd->gen_ca[g->gen];
    return rc;
}

/* crl/generation-G/exported ("FULL DELTA"), -1 for what is not known. */
static void gen_exported(const char *home, int gen, int64_t have[2])
{
    char rel[64], path[PATH_MAX];
    unsigned char *text = NULL;
    size_t len = 0;
    long long f = -1, d = -1;

    have[0] = have[1] = -1;
    snprintf(rel, sizeof(rel), "crl/generation-%d/exported", gen);
    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) == MQPKI_OK &&
        mqpki_file_read(path, 64, &text, &len) == MQPKI_OK &&
        sscanf((const char *)text, "%lld %lld", &f, &d) == 2) {
        have[0] = f;
        have[1] = d;
    }
    free(text);
    mqpki_err_clear();
}

/* Signs crl/NAME again with ca into crl/generation-G/NAME (and the PEM of a full CRL). */
static int gen_write(struct datadir *dd, struct ca *ca, int gen, int kind)
{
    const char *name = kind == INV_CRL_FULL ? "issuing.crl" : "issuing-delta.crl";
    char rel[96], path[PATH_MAX], *pem = NULL;
    unsigned char *der = NULL, *again = NULL;
    size_t len = 0, again_len = 0, pem_len = 0;
    int rc;

    snprintf(rel, sizeof(rel), "crl/%s", name);
    if ((rc = datadir_path(dd, rel, path)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, PROTO_CRL_MAX_DER, &der, &len)) != MQPKI_OK ||
        (rc = ca_crl_resign(ca, der, len, &again, &again_len)) != MQPKI_OK)
        goto out;
    snprintf(rel, sizeof(rel), "crl/generation-%d/%s", gen, name);
    if ((rc = datadir_path(dd, rel, path)) != MQPKI_OK ||
        (rc = mqpki_file_write_atomic(path, again, again_len, 0644)) != MQPKI_OK)
        goto out;
    if (kind == INV_CRL_FULL) {
        snprintf(rel, sizeof(rel), "crl/generation-%d/issuing.pem", gen);
        if ((rc = ca_crl_der_pem(again, again_len, &pem, &pem_len)) == MQPKI_OK &&
            (rc = datadir_path(dd, rel, path)) == MQPKI_OK)
            rc = mqpki_file_write_atomic(path, pem, pem_len, 0644);
    }
out:
    free(der);
    free(again);
    free(pem);
    return rc;
}

void datadir_generations_export(struct datadir *dd)
{
    struct datadir_issuers is;
    X509 *root = NULL;

    /* Only where the keys are: mqpkid, or a command while mqpkid does not run; and only once a
     * rollover made older generations (a lookup per export, not a read of ca/). */
    if (dd->hsm == NULL || !datadir_issuers_rolled(dd->home))
        return;
    if (datadir_issuers_read(dd->home, &is) != MQPKI_OK) {
        mqpki_err_clear();
        return;
    }
    if (is.n < 2 || datadir_load_cert(dd->home, "ca/root.pem", &root) != MQPKI_OK)
        goto out;
    for (size_t i = 0; i < is.n; i++) {
        const struct datadir_issuer *g = &is.v[i];
        char rel[64], path[PATH_MAX], text[64];
        int64_t have[2];
        struct ca *ca;
        int n, rc = MQPKI_OK;

        if (g->current || g->retired)
            continue;
        gen_exported(dd->home, g->gen, have);
        if (have[0] >= dd->exported[INV_CRL_FULL] && have[1] >= dd->exported[INV_CRL_DELTA])
            continue;
        snprintf(rel, sizeof(rel), "crl/generation-%d", g->gen);
        if ((rc = datadir_path(dd, rel, path)) != MQPKI_OK ||
            (rc = mqpki_mkdir_p(path, 0755)) != MQPKI_OK ||
            (rc = gen_ca(dd, g, root, &ca)) != MQPKI_OK) {
            mqpki_log(MQPKI_LOG_WARN, "generation %d: its CRLs cannot be signed: %s", g->gen,
                      mqpki_err_detail(rc));
            continue;
        }
        /* The full CRL first: a delta never sits beside an older base. */
        for (int k = INV_CRL_FULL; k <= INV_CRL_DELTA && rc == MQPKI_OK; k++)
            if (dd->exported[k] > have[k] && (rc = gen_write(dd, ca, g->gen, k)) == MQPKI_OK)
                have[k] = dd->exported[k];
        n = snprintf(text, sizeof(text), "%lld %lld\n", (long long)have[0], (long long)have[1]);
        snprintf(rel, sizeof(rel), "crl/generation-%d/exported", g->gen);
        if (rc == MQPKI_OK && (rc = datadir_path(dd, rel, path)) == MQPKI_OK)
            rc = mqpki_file_write_atomic(path, text, (size_t)n, 0644);
        if (rc != MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN, "generation %d: its CRLs in crl/generation-%d/: %s", g->gen,
                      g->gen, mqpki_err_detail(rc));
    }
out:
    mqpki_err_clear();
    X509_free(root);
    datadir_issuers_clear(&is);
}

int datadir_ca_reload(struct datadir *dd)
{
    char label[DATADIR_ISSUER_LABEL_MAX];
    X509 *issuing = NULL, *root = NULL;
    EVP_PKEY *key = NULL;
    struct ca *ca = NULL;
    int gen, rc;

    if (dd->hsm == NULL || datadir_ca(dd) == NULL)
        return MQPKI_OK;
    if ((rc = datadir_load_cert(dd->home, "ca/issuing.pem", &issuing)) != MQPKI_OK)
        return rc;
    if (X509_cmp(issuing, ca_issuing_cert(datadir_ca(dd))) == 0)
        goto out;
    if ((rc = datadir_issuer_gen_of(dd->home, issuing, &gen)) != MQPKI_OK ||
        (rc = datadir_load_cert(dd->home, "ca/root.pem", &root)) != MQPKI_OK)
        goto out;
    datadir_issuer_label(gen, label);
    if ((rc = hsm_key_load(dd->hsm, label, &key)) != MQPKI_OK)
        goto out;
    if ((rc = ca_open(issuing, key, root, dd->cfg.url, &ca)) != MQPKI_OK ||
        (rc = ca_selftest(ca)) != MQPKI_OK)
        goto out;
    rc = datadir_ca_swap(dd, ca, key, gen);
    ca = NULL;
    key = NULL;
    if (rc != MQPKI_OK)
        goto out;
    mqpki_log(MQPKI_LOG_INFO, "issuing CA generation %d (ca/issuing.pem) opened", gen);
out:
    ca_free(ca);
    EVP_PKEY_free(key);
    X509_free(issuing);
    X509_free(root);
    return rc;
}
