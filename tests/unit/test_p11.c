/*
 * Unit tests for p11/: the signer bridge with a plain software signer (EC P-256, P-384, RSA;
 * copies; failures), token keys through the handle's own logger, and the SoftHSM file-store
 * guard against planted damage (empty, truncated, garbage, half-created objects) on a real
 * SoftHSM2 token in a fresh temp directory per test.
 */
/* The copy tests hold the bridge's legacy EC_KEY / RSA directly, as OpenSSL's copies do. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <ftw.h>
#include <glob.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common.h"
#include "p11_int.h"

/* Last: under UNIT_TESTING it swaps malloc/free for its leak-checking versions. */
#include <cmocka.h>

#define MODULE   "/usr/lib/softhsm/libsofthsm2.so"
#define TOKEN    "p11-test"
#define SO_PIN   "so-secret-8231"
#define USER_PIN "user-secret-5519"

/* ---- the bridge, with a software signer ---- */

struct soft {
    EVP_PKEY *priv;
    atomic_int calls;
    int fail;      /* sign returns an error */
    int *released; /* incremented by release */
};

/* C_Sign semantics over an OpenSSL key: raw r||s for ECDSA, PKCS#1 v1.5 of a DigestInfo. */
static int soft_sign(void *ctx, unsigned long mech, const unsigned char *in, size_t inlen,
                     unsigned char *out, size_t *outlen)
{
    struct soft *s = ctx;
    EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new(s->priv, NULL);
    unsigned char der[256];
    size_t derlen = sizeof(der);
    int rc = MQPKI_ERR_CRYPTO;

    atomic_fetch_add(&s->calls, 1);
    if (s->fail || pc == NULL || EVP_PKEY_sign_init(pc) != 1)
        goto out;
    if (mech == P11_MECH_ECDSA) {
        const unsigned char *p = der;
        ECDSA_SIG *sig;
        int half = (EVP_PKEY_get_bits(s->priv) + 7) / 8;

        if (EVP_PKEY_sign(pc, der, &derlen, in, inlen) != 1 ||
            (sig = d2i_ECDSA_SIG(NULL, &p, (long)derlen)) == NULL)
            goto out;
        if (*outlen >= (size_t)(2 * half) &&
            BN_bn2binpad(ECDSA_SIG_get0_r(sig), out, half) == half &&
            BN_bn2binpad(ECDSA_SIG_get0_s(sig), out + half, half) == half) {
            *outlen = (size_t)(2 * half);
            rc = MQPKI_OK;
        }
        ECDSA_SIG_free(sig);
    } else if (mech == P11_MECH_RSA_PKCS) {
        /* No digest set: OpenSSL pads and signs the DigestInfo as given, as CKM_RSA_PKCS does. */
        if (EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
            EVP_PKEY_sign(pc, out, outlen, in, inlen) == 1)
            rc = MQPKI_OK;
    }
out:
    EVP_PKEY_CTX_free(pc);
    return rc;
}

static void soft_release(void *ctx)
{
    struct soft *s = ctx;

    (*s->released)++;
    EVP_PKEY_free(s->priv);
    free(s);
}

static const struct p11_signer_ops soft_ops = {soft_sign, soft_release};

/* The public half as a plain OpenSSL key, with nothing of the bridge in it. */
static EVP_PKEY *plain_public(EVP_PKEY *key)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    EVP_PKEY *pub;
    int n = i2d_PUBKEY(key, &der);

    assert_true(n > 0);
    p = der;
    pub = d2i_PUBKEY(NULL, &p, n);
    assert_non_null(pub);
    OPENSSL_free(der);
    return pub;
}

static struct soft *soft_new(EVP_PKEY *priv, int *released)
{
    struct soft *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    s->priv = priv;
    s->released = released;
    return s;
}

/* A self-signed certificate signed by key, verified with pub. */
static int cert_signs(EVP_PKEY *key, EVP_PKEY *pub, const EVP_MD *md)
{
    X509 *cert = X509_new();
    X509_NAME *name = X509_NAME_new();
    int ok;

    assert_true(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                           (const unsigned char *)"bridge", -1, -1, 0));
    assert_true(X509_set_version(cert, 2));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(cert), 7));
    assert_true(X509_set_subject_name(cert, name) && X509_set_issuer_name(cert, name));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), 86400));
    assert_true(X509_set_pubkey(cert, pub));
    ok = X509_sign(cert, key, md) > 0 && X509_verify(cert, pub) == 1;
    X509_NAME_free(name);
    X509_free(cert);
    return ok;
}

static void bridge_round(EVP_PKEY *priv, const EVP_MD *md)
{
    int released = 0;
    struct soft *s = soft_new(priv, &released);
    EVP_PKEY *pub = plain_public(priv), *key = NULL, *other;
    X509 *cert;

    assert_int_equal(p11_pkey_from_signer(pub, &soft_ops, s, &key), MQPKI_OK);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_get_base_id(key), EVP_PKEY_get_base_id(priv));
    assert_int_equal(EVP_PKEY_get_bits(key), EVP_PKEY_get_bits(priv));
    assert_true(cert_signs(key, pub, md));
    assert_true(atomic_load(&s->calls) >= 1);
    /* The check above means something: a certificate verified with another key fails. */
    other = EVP_PKEY_get_base_id(priv) == EVP_PKEY_EC ? EVP_EC_gen("P-256") : EVP_RSA_gen(2048);
    cert = X509_new();
    assert_true(X509_set_pubkey(cert, pub));
    assert_true(X509_sign(cert, key, md) > 0);
    assert_int_equal(X509_verify(cert, other), 0);
    X509_free(cert);
    EVP_PKEY_free(other);
    assert_int_equal(released, 0);
    EVP_PKEY_free(key);
    assert_int_equal(released, 1);
    EVP_PKEY_free(pub);
}

static void test_bridge_ec_p256(void **state)
{
    bridge_round(EVP_EC_gen("P-256"), EVP_sha256());
}

static void test_bridge_ec_p384(void **state)
{
    bridge_round(EVP_EC_gen("P-384"), EVP_sha384());
}

static void test_bridge_rsa(void **state)
{
    bridge_round(EVP_RSA_gen(2048), EVP_sha256());
}

/* Copies share the signer: release runs once, after the last of them, in any order. */
static void test_bridge_copies(void **state)
{
    for (int order = 0; order < 2; order++) {
        int released = 0;
        EVP_PKEY *priv = EVP_EC_gen("P-256"), *pub = plain_public(priv), *key = NULL, *dup;
        EC_KEY *ec, *ecdup;

        assert_int_equal(p11_pkey_from_signer(pub, &soft_ops, soft_new(priv, &released), &key),
                         MQPKI_OK);
        dup = EVP_PKEY_dup(key);
        assert_non_null(dup);
        ec = EVP_PKEY_get1_EC_KEY(key);
        assert_non_null(ec);
        ecdup = EC_KEY_dup(ec);
        assert_non_null(ecdup);
        EC_KEY_free(ec);
        assert_true(cert_signs(dup, pub, EVP_sha256()));
        if (order == 0) {
            EVP_PKEY_free(key);
            EC_KEY_free(ecdup);
            assert_int_equal(released, 0);
            EVP_PKEY_free(dup);
        } else {
            EVP_PKEY_free(dup);
            EVP_PKEY_free(key);
            assert_int_equal(released, 0);
            EC_KEY_free(ecdup);
        }
        assert_int_equal(released, 1);
        EVP_PKEY_free(pub);
    }
    {
        /* RSA: a second holder of the same RSA object; OpenSSL refuses to dup a foreign one. */
        int released = 0;
        EVP_PKEY *priv = EVP_RSA_gen(2048), *pub = plain_public(priv), *key = NULL, *dup;
        EVP_PKEY *holder = EVP_PKEY_new();
        RSA *rsa;

        assert_int_equal(p11_pkey_from_signer(pub, &soft_ops, soft_new(priv, &released), &key),
                         MQPKI_OK);
        dup = EVP_PKEY_dup(key);
        rsa = EVP_PKEY_get1_RSA(key);
        assert_non_null(rsa);
        assert_true(EVP_PKEY_assign_RSA(holder, rsa));
        assert_true(cert_signs(holder, pub, EVP_sha256()));
        EVP_PKEY_free(key);
        assert_int_equal(released, 0);
        if (dup != NULL) {
            assert_true(cert_signs(dup, pub, EVP_sha256()));
            EVP_PKEY_free(dup);
        }
        assert_int_equal(released, 0);
        EVP_PKEY_free(holder);
        assert_int_equal(released, 1);
        EVP_PKEY_free(pub);
    }
}

#define THREAD_SIGNS 100

static void *sign_loop(void *arg)
{
    EVP_PKEY *key = arg;
    EVP_PKEY *pub = plain_public(key);
    intptr_t ok = 0;

    for (int i = 0; i < THREAD_SIGNS; i++)
        ok += cert_signs(key, pub, EVP_sha256());
    EVP_PKEY_free(pub);
    return (void *)ok;
}

static void test_bridge_threads(void **state)
{
    int released = 0;
    EVP_PKEY *priv = EVP_EC_gen("P-256"), *pub = plain_public(priv), *key = NULL;
    struct soft *s = soft_new(priv, &released);
    pthread_t t[2];
    void *ok;

    assert_int_equal(p11_pkey_from_signer(pub, &soft_ops, s, &key), MQPKI_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, sign_loop, key), 0);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(pthread_join(t[i], &ok), 0);
        assert_int_equal((intptr_t)ok, THREAD_SIGNS);
    }
    assert_int_equal(atomic_load(&s->calls), 2 * THREAD_SIGNS);
    EVP_PKEY_free(key);
    assert_int_equal(released, 1);
    EVP_PKEY_free(pub);
}

static void test_bridge_failures(void **state)
{
    int released = 0;
    EVP_PKEY *priv = EVP_EC_gen("P-256"), *pub = plain_public(priv), *key = NULL, *ed;
    struct soft *s = soft_new(priv, &released);
    struct p11_signer_ops no_sign = {NULL, soft_release};
    X509 *cert = X509_new();

    /* A signer that fails: the signature fails, nothing crashes. */
    assert_int_equal(p11_pkey_from_signer(pub, &soft_ops, s, &key), MQPKI_OK);
    s->fail = 1;
    assert_true(X509_set_pubkey(cert, pub));
    assert_true(X509_sign(cert, key, EVP_sha256()) <= 0);
    X509_free(cert);
    EVP_PKEY_free(key);
    assert_int_equal(released, 1);

    /* Refusals leave ctx the caller's: release is not called. */
    released = 0;
    s = soft_new(EVP_EC_gen("P-256"), &released);
    ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(ed);
    key = (EVP_PKEY *)&key;
    assert_int_equal(p11_pkey_from_signer(ed, &soft_ops, s, &key), MQPKI_ERR_INVALID);
    assert_null(key);
    assert_int_equal(p11_pkey_from_signer(pub, &no_sign, s, &key), MQPKI_ERR_INVALID);
    assert_int_equal(p11_pkey_from_signer(NULL, &soft_ops, s, &key), MQPKI_ERR_INVALID);
    assert_int_equal(released, 0);
    soft_release(s);
    EVP_PKEY_free(ed);
    EVP_PKEY_free(pub);
}

/* ---- token keys and the handle's logger ---- */

struct fixture {
    char dir[64], conf[128], tokendir[128], gooddir[128];
    struct p11_token *tok;
    int logs, relogins;
};

static int common_logs; /* lines that reached common's logger */

static void common_sink(enum mqpki_log_level level, const char *msg, void *ctx)
{
    common_logs++;
}

static void handle_sink(int level, const char *msg, void *ctx)
{
    struct fixture *f = ctx;

    f->logs++;
    if (strstr(msg, "logged in again") != NULL)
        f->relogins++;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void config_of(struct fixture *f, struct p11_config *cfg, int guard)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->module = MODULE;
    cfg->token_label = TOKEN;
    cfg->pin = USER_PIN;
    cfg->log_fn = handle_sink;
    cfg->log_ctx = f;
    if (guard) {
        cfg->softhsm_tokendir = f->tokendir;
        cfg->softhsm_gooddir = f->gooddir;
    }
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct p11_config cfg;
    FILE *fp;

    assert_non_null(f);
    strcpy(f->dir, "/tmp/mqpki-p11-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->conf, sizeof(f->conf), "%s/softhsm2.conf", f->dir);
    snprintf(f->tokendir, sizeof(f->tokendir), "%s/tokens", f->dir);
    snprintf(f->gooddir, sizeof(f->gooddir), "%s/tokens.good", f->dir);
    assert_int_equal(mkdir(f->tokendir, 0700), 0);
    fp = fopen(f->conf, "w");
    assert_non_null(fp);
    fprintf(fp, "# test\ndirectories.tokendir = %s\nobjectstore.backend = file\n", f->tokendir);
    fclose(fp);
    assert_int_equal(setenv("SOFTHSM2_CONF", f->conf, 1), 0);
    config_of(f, &cfg, 1);
    assert_int_equal(p11_token_init(&cfg, SO_PIN), MQPKI_OK);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_OK);
    mqpki_log_set_handler(common_sink, NULL);
    common_logs = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    mqpki_log_set_handler(NULL, NULL);
    p11_close(f->tok);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static void sign_verify(EVP_PKEY *key)
{
    static const unsigned char msg[] = "mqpki: signed inside the token";
    unsigned char sig[512];
    size_t siglen = sizeof(sig);
    EVP_PKEY *pub = plain_public(key);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();

    assert_int_equal(EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, key), 1);
    assert_int_equal(EVP_DigestSign(ctx, sig, &siglen, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(ctx);
    ctx = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pub), 1);
    assert_int_equal(EVP_DigestVerify(ctx, sig, siglen, msg, sizeof(msg)), 1);
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pub);
}

static void test_token_keys(void **state)
{
    struct fixture *f = *state;
    static const struct {
        const char *label;
        enum p11_key_type type;
        int bits;
    } keys[] = {{"k256", P11_KEY_EC_P256, 256},
                {"k384", P11_KEY_EC_P384, 384},
                {"krsa", P11_KEY_RSA_3072, 3072}};
    EVP_PKEY *key = NULL;

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        int sensitive = 0, extractable = 1, refused = 0;

        assert_int_equal(p11_key_generate(f->tok, keys[i].label, keys[i].type), MQPKI_OK);
        assert_int_equal(p11_key_load(f->tok, keys[i].label, &key), MQPKI_OK);
        assert_int_equal(EVP_PKEY_get_bits(key), keys[i].bits);
        {
            EVP_PKEY *pub = plain_public(key);

            assert_true(cert_signs(key, pub, EVP_sha256()));
            EVP_PKEY_free(pub);
        }
        sign_verify(key);
        EVP_PKEY_free(key);
        key = NULL;
        assert_int_equal(
            p11_test_key_flags(f->tok, keys[i].label, &sensitive, &extractable, &refused),
            MQPKI_OK);
        assert_true(sensitive && !extractable && refused);
    }
    assert_int_equal(p11_key_generate(f->tok, "k256", P11_KEY_EC_P256), MQPKI_ERR_EXISTS);
    /* Destruction takes both halves; the label can then be used again. */
    assert_int_equal(p11_key_destroy(f->tok, "k256"), MQPKI_OK);
    assert_int_equal(p11_key_load(f->tok, "k256", &key), MQPKI_ERR_NOT_FOUND);
    assert_null(key);
    assert_int_equal(p11_key_destroy(f->tok, "k256"), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(p11_key_generate(f->tok, "k256", P11_KEY_EC_P256), MQPKI_OK);
    assert_true(f->logs > 0);
    assert_int_equal(common_logs, 0);
}

/* The re-login after sessions vanished is logged through the handle, not common's logger. */
static void test_relogin_logger(void **state)
{
    struct fixture *f = *state;
    EVP_PKEY *key = NULL;

    assert_int_equal(p11_key_generate(f->tok, "relog", P11_KEY_EC_P256), MQPKI_OK);
    assert_int_equal(p11_key_load(f->tok, "relog", &key), MQPKI_OK);
    sign_verify(key);
    assert_int_equal(f->tok->p11->C_CloseAllSessions(f->tok->slot), CKR_OK);
    sign_verify(key);
    EVP_PKEY_free(key);
    assert_int_equal(f->relogins, 1);
    assert_int_equal(common_logs, 0);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    struct p11_config cfg;
    struct p11_token *t = (struct p11_token *)&cfg;

    config_of(f, &cfg, 0);
    cfg.pin = "not-the-pin-4711";
    assert_int_equal(p11_open(&cfg, &t), MQPKI_ERR_AUTH);
    assert_null(t);
    assert_null(strstr(mqpki_err_detail(MQPKI_ERR_AUTH), "not-the-pin"));
    config_of(f, &cfg, 0);
    cfg.token_label = "no-such-token";
    assert_int_equal(p11_open(&cfg, &t), MQPKI_ERR_NOT_FOUND);
    config_of(f, &cfg, 0);
    cfg.softhsm_tokendir = f->tokendir; /* a guard needs both directories */
    assert_int_equal(p11_open(&cfg, &t), MQPKI_ERR_INVALID);
    config_of(f, &cfg, 0);
    cfg.module = "/nonexistent/libnothing.so";
    assert_int_equal(p11_open(&cfg, &t), MQPKI_ERR_NOT_FOUND);
    assert_true(f->logs > 0); /* dlopen's reason went to the handle's logger */
    assert_int_equal(common_logs, 0);
    assert_int_equal(p11_token_init(&cfg, SO_PIN), MQPKI_ERR_NOT_FOUND);
    p11_close(NULL);
}

/* ---- the SoftHSM guard ---- */

static void path_of(struct fixture *f, const char *base, const char *name, char *out, size_t size)
{
    char pattern[256];
    glob_t g;

    snprintf(pattern, sizeof(pattern), "%s/*/%s", base, name);
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    assert_true(g.gl_pathc >= 1);
    snprintf(out, size, "%s", g.gl_pathv[0]);
    globfree(&g);
}

/* Read here, not with mqpki_file_read: cmocka's free must free cmocka's malloc. */
static unsigned char *slurp(const char *path, size_t *len)
{
    unsigned char *buf = malloc(1 << 16);
    FILE *fp = fopen(path, "r");

    assert_non_null(buf);
    assert_non_null(fp);
    *len = fread(buf, 1, 1 << 16, fp);
    fclose(fp);
    return buf;
}

static void spit(const char *path, const void *buf, size_t len)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    assert_int_equal(fwrite(buf, 1, len, fp), len);
    fclose(fp);
}

static int file_equal(const char *a, const char *b)
{
    size_t la, lb;
    unsigned char *x = slurp(a, &la), *y = slurp(b, &lb);
    int eq = la == lb && memcmp(x, y, la) == 0;

    free(x);
    free(y);
    return eq;
}

static void make_old(const char *path)
{
    struct timeval tv[2];

    gettimeofday(&tv[0], NULL);
    tv[0].tv_sec -= 3600;
    tv[1] = tv[0];
    assert_int_equal(utimes(path, tv), 0);
}

static unsigned mode_of(const char *path)
{
    struct stat st;

    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static int exists(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0;
}

static void guard_of(struct fixture *f, struct p11_softhsm_guard *g)
{
    g->tokendir = f->tokendir;
    g->gooddir = f->gooddir;
    g->log_fn = handle_sink;
    g->log_ctx = f;
}

/* Planted damage of token.object: each kind is restored from the good copy, and works. */
static void test_guard_token_object(void **state)
{
    struct fixture *f = *state;
    struct p11_softhsm_guard g;
    struct p11_config cfg;
    char live[256], good[256];
    unsigned char *orig, *bad;
    size_t len;
    unsigned repaired;
    EVP_PKEY *key = NULL;

    assert_int_equal(p11_key_generate(f->tok, "kept", P11_KEY_EC_P256), MQPKI_OK);
    p11_close(f->tok);
    f->tok = NULL;
    guard_of(f, &g);
    path_of(f, f->tokendir, "token.object", live, sizeof(live));
    path_of(f, f->gooddir, "token.object", good, sizeof(good));
    assert_int_equal(mode_of(f->gooddir), 0700);
    assert_int_equal(mode_of(good), 0600);
    orig = slurp(live, &len);
    bad = malloc(len);
    assert_non_null(bad);
    for (int kind = 0; kind < 4; kind++) {
        size_t n = len;

        memcpy(bad, orig, len);
        switch (kind) {
        case 0: n = 0; break;                          /* killed between ftruncate and write */
        case 1: n = len / 2; break;                    /* a short write */
        case 2: n = 5; break;                          /* not even the counter */
        case 3: memset(bad + 8, 0xAB, len - 8); break; /* garbage */
        }
        spit(live, bad, n);
        assert_int_equal(p11_softhsm_check(&g, &repaired), MQPKI_OK);
        assert_int_equal(repaired, 1);
        assert_true(file_equal(live, good));
        assert_int_equal(mode_of(live), 0600);
    }
    /* The token works, key included, and a second check finds nothing to do. */
    assert_int_equal(p11_softhsm_check(&g, &repaired), MQPKI_OK);
    assert_int_equal(repaired, 0);
    config_of(f, &cfg, 0);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_OK);
    assert_int_equal(p11_key_load(f->tok, "kept", &key), MQPKI_OK);
    sign_verify(key);
    EVP_PKEY_free(key);
    free(orig);
    free(bad);
}

/* The guarded open does the check itself: an emptied token.object costs nothing. */
static void test_guard_open(void **state)
{
    struct fixture *f = *state;
    struct p11_config cfg;
    char live[256], gen[256];
    int before = f->logs;

    p11_close(f->tok);
    f->tok = NULL;
    path_of(f, f->tokendir, "token.object", live, sizeof(live));
    spit(live, "", 0);
    path_of(f, f->tokendir, "generation", gen, sizeof(gen));
    spit(gen, "\0\0\0", 3);
    config_of(f, &cfg, 1);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_OK);
    assert_true(f->logs >= before + 2); /* what was done is logged, through the handle */
    assert_int_equal(common_logs, 0);
    p11_close(f->tok);
    f->tok = NULL;
    /* Unguarded, the same damage hides the token: the guard is what made the difference. */
    spit(live, "", 0);
    config_of(f, &cfg, 0);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_ERR_NOT_FOUND);
}

/* A token.object gone missing: not restored by the check, but by the open's fallback. */
static void test_guard_fallback(void **state)
{
    struct fixture *f = *state;
    struct p11_softhsm_guard g;
    struct p11_config cfg;
    char live[256];
    unsigned n = 0;

    p11_close(f->tok);
    f->tok = NULL;
    guard_of(f, &g);
    path_of(f, f->tokendir, "token.object", live, sizeof(live));
    assert_int_equal(unlink(live), 0);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_false(exists(live));
    config_of(f, &cfg, 1);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_OK);
    assert_true(exists(live));
    /* The fallback only touches the token asked for. */
    assert_int_equal(p11_softhsm_restore(&g, "other-token", &n), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(n, 0);
}

/* Objects: restored when a good copy exists, quarantined (not deleted) when none does. */
static void test_guard_objects(void **state)
{
    struct fixture *f = *state;
    struct p11_softhsm_guard g;
    char pattern[256], live[256], good[512], partial[512], q[512];
    unsigned char *buf;
    size_t len;
    unsigned n;
    glob_t gl;

    assert_int_equal(p11_key_generate(f->tok, "obj", P11_KEY_EC_P256), MQPKI_OK);
    p11_close(f->tok);
    f->tok = NULL;
    guard_of(f, &g);
    snprintf(pattern, sizeof(pattern), "%s/*/*-*.object", f->tokendir);
    assert_int_equal(glob(pattern, 0, NULL, &gl), 0);
    assert_int_equal(gl.gl_pathc, 2); /* the two halves of the pair */
    snprintf(live, sizeof(live), "%s", gl.gl_pathv[0]);
    globfree(&gl);
    /* Its good copy: GOODDIR/TOKEN/NAME for TOKENDIR/TOKEN/NAME. */
    snprintf(good, sizeof(good), "%s/%s", f->gooddir, live + strlen(f->tokendir) + 1);
    assert_true(file_equal(live, good));

    /* A key object truncated: restored. */
    buf = slurp(live, &len);
    spit(live, buf, len - 3);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_true(file_equal(live, good));

    /* A half-created object (counter only) with no good copy: left while young ... */
    snprintf(partial, sizeof(partial), "%.*s/00000000-0000-0000-0000-000000000001.object",
             (int)(strrchr(live, '/') - live), live);
    spit(partial, buf, 8);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_true(exists(partial));
    /* ... quarantined once old; never deleted. */
    make_old(partial);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_false(exists(partial));
    snprintf(pattern, sizeof(pattern), "%s/quarantine/*/00000000-*.object.*", f->gooddir);
    assert_int_equal(glob(pattern, 0, NULL, &gl), 0);
    assert_int_equal(gl.gl_pathc, 1);
    snprintf(q, sizeof(q), "%s", gl.gl_pathv[0]);
    globfree(&gl);
    assert_int_equal(mode_of(q), 0600);

    /* Leftover temporary files of our own atomic writes go; recent ones stay. */
    snprintf(partial, sizeof(partial), "%s.tmp.4242", live);
    spit(partial, buf, len);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_true(exists(partial));
    make_old(partial);
    assert_int_equal(p11_softhsm_check(&g, &n), MQPKI_OK);
    assert_false(exists(partial));
    free(buf);
}

/* Saving: a generation-only rewrite leaves the good copy alone; a real change replaces it. */
static void test_guard_save(void **state)
{
    struct fixture *f = *state;
    struct p11_softhsm_guard g;
    struct p11_config cfg;
    char live[256], good[256], pattern[256];
    struct stat before, after;
    unsigned char *buf;
    size_t len;
    unsigned n;
    glob_t gl;

    guard_of(f, &g);
    path_of(f, f->tokendir, "token.object", live, sizeof(live));
    path_of(f, f->gooddir, "token.object", good, sizeof(good));
    assert_int_equal(stat(good, &before), 0);
    /* A second login rewrites token.object with a new counter only. */
    config_of(f, &cfg, 1);
    p11_close(f->tok);
    f->tok = NULL;
    buf = slurp(live, &len);
    assert_int_equal(p11_open(&cfg, &f->tok), MQPKI_OK);
    {
        size_t len2;
        unsigned char *now = slurp(live, &len2);

        assert_int_equal(len2, len);
        assert_memory_not_equal(now, buf, 8); /* SoftHSM did bump the counter */
        assert_memory_equal(now + 8, buf + 8, len - 8);
        free(now);
    }
    assert_int_equal(p11_softhsm_save(&g, &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(stat(good, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino); /* not rewritten */
    /* New objects are saved; destroyed ones leave the good copy too. */
    assert_int_equal(p11_key_generate(f->tok, "saved", P11_KEY_EC_P256), MQPKI_OK);
    snprintf(pattern, sizeof(pattern), "%s/*/*-*.object", f->gooddir);
    assert_int_equal(glob(pattern, 0, NULL, &gl), 0);
    assert_int_equal(gl.gl_pathc, 2);
    globfree(&gl);
    assert_int_equal(p11_key_destroy(f->tok, "saved"), MQPKI_OK);
    assert_int_equal(glob(pattern, 0, NULL, &gl), GLOB_NOMATCH);
    /* A damaged live file is never saved over a good copy. */
    p11_close(f->tok);
    f->tok = NULL;
    spit(live, buf, len / 2);
    assert_int_equal(p11_softhsm_save(&g, &n), MQPKI_OK);
    assert_int_equal(n, 0);
    assert_int_equal(stat(good, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino);
    /* A real change (the flags of token.object) is saved. */
    buf[len - 1] ^= 0x01;
    spit(live, buf, len);
    assert_int_equal(p11_softhsm_save(&g, &n), MQPKI_OK);
    assert_int_equal(n, 1);
    assert_true(file_equal(live, good));
    free(buf);
}

/* The structural check, rule by rule. */
static void test_guard_format(void **state)
{
    /* counter 9, then CKA_CLASS (0) integer 3 at 8..31, CKA_TOKEN (1) boolean true at 32..48 */
    static const unsigned char ok[] = {
        0,   0, 0, 0, 0, 0, 0, 9,                         /* generation counter */
        0,   0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, /* CKA_CLASS, integer */
        0,   0, 0, 0, 0, 0, 0, 3,                         /* CKO_PRIVATE_KEY */
        0,   0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, /* CKA_TOKEN, boolean */
        0xFF};
    /* ... and a key object's attribute map (kind 4) and mechanism set (kind 5) */
    static const unsigned char m[] = {
        0,    0, 0, 0, 0,    0, 0,    1, /* generation counter */
        0,    0, 0, 0, 0,    0, 0,    0,
        0,    0, 0, 0, 0,    0, 0,    2, /* CKA_CLASS, integer */
        0,    0, 0, 0, 0,    0, 0,    3, /* CKO_PRIVATE_KEY */
        0,    0, 0, 0, 0x40, 0, 2,    0x12,
        0,    0, 0, 0, 0,    0, 0,    4,  /* CKA_UNWRAP_TEMPLATE, map */
        0,    0, 0, 0, 0,    0, 0,    17, /* 17 bytes of entries: */
        0,    0, 0, 0, 0,    0, 1,    4,
        0,    0, 0, 0, 0,    0, 0,    1, /* CKA_WRAP, boolean */
        0xFF,                            /* true */
        0,    0, 0, 0, 0x40, 0, 6,    0,
        0,    0, 0, 0, 0,    0, 0,    5, /* CKA_ALLOWED_MECHANISMS, set */
        0,    0, 0, 0, 0,    0, 0,    2, /* two of them */
        0,    0, 0, 0, 0,    0, 0x10, 0x41,
        0,    0, 0, 0, 0,    0, 0x10, 0x42};
    unsigned char buf[256];
    char why[160];
    size_t n = sizeof(ok), mn = sizeof(m);

    assert_int_equal(n, 49);
    assert_int_equal(mn, 113);
    assert_null(p11_softhsm_damage("a.object", ok, n, why, sizeof(why)));
    assert_non_null(p11_softhsm_damage("a.object", ok, 0, why, sizeof(why)));
    assert_string_equal(why, "empty");
    assert_non_null(p11_softhsm_damage("a.object", ok, 5, why, sizeof(why)));
    assert_non_null(strstr(why, "generation counter"));
    assert_non_null(p11_softhsm_damage("a.object", ok, 8, why, sizeof(why)));
    assert_non_null(strstr(why, "half-created"));
    assert_non_null(p11_softhsm_damage("a.object", ok, n - 1, why, sizeof(why)));
    assert_non_null(strstr(why, "truncated"));
    assert_non_null(p11_softhsm_damage("a.object", ok, 20, why, sizeof(why)));
    assert_non_null(strstr(why, "truncated"));
    assert_non_null(p11_softhsm_damage("a.object", ok, 28, why, sizeof(why)));
    memcpy(buf, ok, n);
    buf[48] = 0x01; /* a boolean SoftHSM would not write */
    assert_non_null(p11_softhsm_damage("a.object", buf, n, why, sizeof(why)));
    assert_non_null(strstr(why, "boolean"));
    memcpy(buf, ok, n);
    buf[47] = 7; /* unknown value kind */
    assert_non_null(p11_softhsm_damage("a.object", buf, n, why, sizeof(why)));
    assert_non_null(strstr(why, "kind"));
    memcpy(buf, ok, n);
    buf[39] = 0; /* CKA_TOKEN renumbered 0: out of order */
    assert_non_null(p11_softhsm_damage("a.object", buf, n, why, sizeof(why)));
    assert_non_null(strstr(why, "order"));
    memcpy(buf, ok, n);
    buf[15] = 5; /* the first attribute is not CKA_CLASS */
    assert_non_null(p11_softhsm_damage("a.object", buf, n, why, sizeof(why)));
    assert_non_null(strstr(why, "CKA_CLASS"));
    /* token.object needs its label; generation is exactly 8 bytes. */
    assert_non_null(p11_softhsm_damage("token.object", ok, n, why, sizeof(why)));
    assert_non_null(strstr(why, "label"));
    assert_null(p11_softhsm_damage("generation", ok, 8, why, sizeof(why)));
    assert_non_null(p11_softhsm_damage("generation", ok, 7, why, sizeof(why)));
    assert_non_null(p11_softhsm_damage("generation", ok, 0, why, sizeof(why)));
    assert_non_null(p11_softhsm_damage("generation", ok, 9, why, sizeof(why)));
    /* Maps and mechanism sets. */
    assert_null(p11_softhsm_damage("b.object", m, mn, why, sizeof(why)));
    memcpy(buf, m, mn);
    buf[55] = 18; /* the map announces more than its entries */
    assert_non_null(p11_softhsm_damage("b.object", buf, mn, why, sizeof(why)));
    memcpy(buf, m, mn);
    buf[71] = 4; /* a map inside a map */
    assert_non_null(p11_softhsm_damage("b.object", buf, mn, why, sizeof(why)));
    memcpy(buf, m, mn);
    buf[mn - 1] = 0x40; /* mechanism set out of order */
    assert_non_null(p11_softhsm_damage("b.object", buf, mn, why, sizeof(why)));
    assert_non_null(p11_softhsm_damage("b.object", m, mn - 8, why, sizeof(why)));
}

static void test_softhsm_helpers(void **state)
{
    struct fixture *f = *state;
    char out[256], conf[200];
    FILE *fp;

    assert_int_equal(p11_softhsm_tokendir(f->conf, out, sizeof(out)), MQPKI_OK);
    assert_string_equal(out, f->tokendir);
    assert_int_equal(p11_softhsm_tokendir(NULL, out, sizeof(out)), MQPKI_OK); /* SOFTHSM2_CONF */
    assert_string_equal(out, f->tokendir);
    assert_int_equal(p11_softhsm_tokendir(f->conf, out, 5), MQPKI_ERR_TOO_LARGE);
    snprintf(conf, sizeof(conf), "%s/other.conf", f->dir);
    fp = fopen(conf, "w");
    assert_non_null(fp);
    fputs("directories.tokendirx = /nope\n  directories.tokendir\t=\t/t/x \r\n", fp);
    fclose(fp);
    assert_int_equal(p11_softhsm_tokendir(conf, out, sizeof(out)), MQPKI_OK);
    assert_string_equal(out, "/t/x");
    fp = fopen(conf, "w");
    assert_non_null(fp);
    fputs("log.level = ERROR\n", fp);
    fclose(fp);
    assert_int_equal(p11_softhsm_tokendir(conf, out, sizeof(out)), MQPKI_ERR_NOT_FOUND);
    snprintf(conf, sizeof(conf), "%s/missing.conf", f->dir);
    assert_int_equal(p11_softhsm_tokendir(conf, out, sizeof(out)), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(p11_softhsm_module(MODULE), 1);
    assert_int_equal(p11_softhsm_module("libsofthsm2.so"), 1);
    assert_int_equal(p11_softhsm_module("/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so"), 0);
    assert_int_equal(p11_softhsm_module(NULL), 0);
    assert_string_equal(p11_ckr_name(CKR_PIN_INCORRECT), "CKR_PIN_INCORRECT");
    assert_string_equal(p11_ckr_name(0x12345), "CKR_0x12345");
}

int main(void)
{
    mqpki_log_set_level(MQPKI_LOG_DEBUG);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bridge_ec_p256),
        cmocka_unit_test(test_bridge_ec_p384),
        cmocka_unit_test(test_bridge_rsa),
        cmocka_unit_test(test_bridge_copies),
        cmocka_unit_test(test_bridge_threads),
        cmocka_unit_test(test_bridge_failures),
        cmocka_unit_test_setup_teardown(test_token_keys, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relogin_logger, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guard_token_object, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guard_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guard_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guard_objects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guard_save, setup, teardown),
        cmocka_unit_test(test_guard_format),
        cmocka_unit_test_setup_teardown(test_softhsm_helpers, setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
