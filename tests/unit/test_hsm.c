/*
 * Unit tests for hsm/ (the CA token on top of p11/): every test gets its own SoftHSM2 token in a
 * fresh temp directory. p11/ itself (bridge, guard) is tested in test_p11.c.
 */
#include <ftw.h>
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "common.h"
#include "hsm.h"
#include "p11_int.h"

/* Last: under UNIT_TESTING it swaps malloc/free for its leak-checking versions. */
#include <cmocka.h>

#define TOKEN    "mqpki-test"
#define SO_PIN   "so-secret-8231"
#define USER_PIN "user-secret-5519"

struct fixture {
    char dir[64];
    struct hsm *hsm;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    struct hsm_config cfg = {.module = HSM_SOFTHSM_MODULE, .token_label = TOKEN, .pin = USER_PIN};

    assert_non_null(f);
    strcpy(f->dir, "/tmp/mqpki-hsm-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    assert_int_equal(hsm_softhsm_prepare(f->dir), MQPKI_OK);
    assert_int_equal(hsm_token_init(HSM_SOFTHSM_MODULE, TOKEN, SO_PIN, USER_PIN), MQPKI_OK);
    assert_int_equal(hsm_open(&cfg, &f->hsm), MQPKI_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    hsm_close(f->hsm);
    nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    unsetenv("MQPKI_PIN");
    return 0;
}

/* The public half as a plain OpenSSL key, with nothing of the bridge in it. */
static EVP_PKEY *plain_public(EVP_PKEY *token_key)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    EVP_PKEY *pub;
    int n = i2d_PUBKEY(token_key, &der);

    assert_true(n > 0);
    p = der;
    pub = d2i_PUBKEY(NULL, &p, n);
    assert_non_null(pub);
    OPENSSL_free(der);
    return pub;
}

static int sign(EVP_PKEY *key, const EVP_MD *md, const unsigned char *msg, size_t len,
                unsigned char *sig, size_t *siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, md, NULL, key) == 1 &&
             EVP_DigestSign(ctx, sig, siglen, msg, len) == 1;

    EVP_MD_CTX_free(ctx);
    return ok;
}

static int verify(EVP_PKEY *pub, const EVP_MD *md, const unsigned char *msg, size_t len,
                  const unsigned char *sig, size_t siglen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, md, NULL, pub) == 1 &&
             EVP_DigestVerify(ctx, sig, siglen, msg, len) == 1;

    EVP_MD_CTX_free(ctx);
    return ok;
}

static void sign_and_verify(struct hsm *hsm, const char *label, enum hsm_key_type type, int base_id,
                            int bits, const EVP_MD *md)
{
    static const unsigned char msg[] = "mqpki: signed inside the token";
    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    EVP_PKEY *key = NULL, *pub;

    assert_int_equal(hsm_key_generate(hsm, label, type), MQPKI_OK);
    assert_int_equal(hsm_key_load(hsm, label, &key), MQPKI_OK);
    assert_non_null(key);
    assert_int_equal(EVP_PKEY_get_base_id(key), base_id);
    assert_int_equal(EVP_PKEY_get_bits(key), bits);
    pub = plain_public(key);
    assert_true(sign(key, md, msg, sizeof(msg), sig, &siglen));
    assert_true(verify(pub, md, msg, sizeof(msg), sig, siglen));
    /* A signature over other data must not verify: the check above means something. */
    assert_false(verify(pub, md, msg, sizeof(msg) - 1, sig, siglen));
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

static void test_ec_p256(void **state)
{
    struct fixture *f = *state;

    sign_and_verify(f->hsm, "ec256", HSM_KEY_EC_P256, EVP_PKEY_EC, 256, EVP_sha256());
}

static void test_ec_p384(void **state)
{
    struct fixture *f = *state;

    sign_and_verify(f->hsm, "ec384", HSM_KEY_EC_P384, EVP_PKEY_EC, 384, EVP_sha384());
}

static void test_rsa3072(void **state)
{
    struct fixture *f = *state;

    sign_and_verify(f->hsm, "rsa3072", HSM_KEY_RSA_3072, EVP_PKEY_RSA, 3072, EVP_sha256());
}

/* A self-signed certificate, a CSR and a CRL signed by the token key all verify. */
static void sign_x509(struct hsm *hsm, const char *label, enum hsm_key_type type)
{
    EVP_PKEY *key = NULL, *pub;
    X509 *cert = X509_new();
    X509_REQ *req = X509_REQ_new();
    X509_CRL *crl = X509_CRL_new();
    X509_NAME *name = X509_NAME_new();

    assert_int_equal(hsm_key_generate(hsm, label, type), MQPKI_OK);
    assert_int_equal(hsm_key_load(hsm, label, &key), MQPKI_OK);
    pub = plain_public(key);
    assert_true(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)label,
                                           -1, -1, 0));
    assert_true(X509_set_version(cert, 2));
    assert_true(ASN1_INTEGER_set(X509_get_serialNumber(cert), 1));
    assert_true(X509_set_subject_name(cert, name) && X509_set_issuer_name(cert, name));
    assert_non_null(X509_gmtime_adj(X509_getm_notBefore(cert), 0));
    assert_non_null(X509_gmtime_adj(X509_getm_notAfter(cert), 86400));
    assert_true(X509_set_pubkey(cert, pub));
    assert_true(X509_sign(cert, key, EVP_sha256()) > 0);
    assert_int_equal(X509_verify(cert, pub), 1);

    assert_true(X509_REQ_set_subject_name(req, name) && X509_REQ_set_pubkey(req, pub));
    assert_true(X509_REQ_sign(req, key, EVP_sha256()) > 0);
    assert_int_equal(X509_REQ_verify(req, pub), 1);

    assert_true(X509_CRL_set_version(crl, 1) && X509_CRL_set_issuer_name(crl, name));
    assert_true(X509_CRL_set1_lastUpdate(crl, X509_get0_notBefore(cert)));
    assert_true(X509_CRL_sign(crl, key, EVP_sha256()) > 0);
    assert_int_equal(X509_CRL_verify(crl, pub), 1);

    X509_NAME_free(name);
    X509_CRL_free(crl);
    X509_REQ_free(req);
    X509_free(cert);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

static void test_x509_sign(void **state)
{
    struct fixture *f = *state;

    sign_x509(f->hsm, "x509-ec256", HSM_KEY_EC_P256);
    sign_x509(f->hsm, "x509-ec384", HSM_KEY_EC_P384);
    sign_x509(f->hsm, "x509-rsa", HSM_KEY_RSA_3072);
}

#define THREAD_SIGNS 200

struct worker {
    EVP_PKEY *key;
    int id, signed_ok;
    unsigned char sig[THREAD_SIGNS][80]; /* DER ECDSA P-256 is at most 72 bytes */
    size_t siglen[THREAD_SIGNS];
};

static size_t thread_msg(unsigned char *msg, size_t size, int id, int i)
{
    return (size_t)snprintf((char *)msg, size, "thread %d message %d", id, i);
}

static void *sign_loop(void *arg)
{
    struct worker *w = arg;
    unsigned char msg[64];

    for (int i = 0; i < THREAD_SIGNS; i++) {
        size_t n = thread_msg(msg, sizeof(msg), w->id, i);

        w->siglen[i] = sizeof(w->sig[i]);
        if (sign(w->key, EVP_sha256(), msg, n, w->sig[i], &w->siglen[i]))
            w->signed_ok++;
    }
    return NULL;
}

/* Two threads sign at once through one key; signatures are checked after the clock stops. */
static void test_threads(void **state)
{
    struct fixture *f = *state;
    struct worker *w = calloc(2, sizeof(*w));
    unsigned char msg[64];
    pthread_t t[2];
    EVP_PKEY *key = NULL, *pub;
    struct timespec a, b;
    double secs;

    assert_non_null(w);
    assert_int_equal(hsm_key_generate(f->hsm, "threads", HSM_KEY_EC_P256), MQPKI_OK);
    assert_int_equal(hsm_key_load(f->hsm, "threads", &key), MQPKI_OK);
    pub = plain_public(key);
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < 2; i++) {
        w[i].key = key;
        w[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, sign_loop, &w[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    print_message("2 threads: %d EVP_DigestSign in %.3f s (%.0f/s)\n", 2 * THREAD_SIGNS, secs,
                  2 * THREAD_SIGNS / secs);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(w[k].signed_ok, THREAD_SIGNS);
        for (int i = 0; i < THREAD_SIGNS; i++) {
            size_t n = thread_msg(msg, sizeof(msg), k, i);

            assert_true(verify(pub, EVP_sha256(), msg, n, w[k].sig[i], w[k].siglen[i]));
        }
    }
    free(w);
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

/* Sessions closed behind our back (and the login with them): the retry recovers. */
static void test_session_recovery(void **state)
{
    struct fixture *f = *state;
    static const unsigned char msg[] = "after the token forgot us";
    unsigned char sig[256];
    size_t siglen = sizeof(sig);
    EVP_PKEY *key = NULL, *pub;

    assert_int_equal(hsm_key_generate(f->hsm, "recover", HSM_KEY_EC_P256), MQPKI_OK);
    assert_int_equal(hsm_key_load(f->hsm, "recover", &key), MQPKI_OK);
    pub = plain_public(key);
    assert_true(sign(key, EVP_sha256(), msg, sizeof(msg), sig, &siglen));
    assert_int_equal(hsm_p11(f->hsm)->p11->C_CloseAllSessions(hsm_p11(f->hsm)->slot), CKR_OK);
    siglen = sizeof(sig);
    assert_true(sign(key, EVP_sha256(), msg, sizeof(msg), sig, &siglen));
    assert_true(verify(pub, EVP_sha256(), msg, sizeof(msg), sig, siglen));
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

static void test_wrong_pin(void **state)
{
    struct fixture *f = *state;
    struct hsm_config cfg = {
        .module = HSM_SOFTHSM_MODULE, .token_label = TOKEN, .pin = "not-the-pin-4711"};
    struct hsm *h = (struct hsm *)&cfg;
    const char *detail;

    /* While another handle holds the login, the token itself would not check the PIN. */
    assert_int_equal(hsm_open(&cfg, &h), MQPKI_ERR_AUTH);
    assert_null(h);
    detail = mqpki_err_detail(MQPKI_ERR_AUTH);
    assert_non_null(strstr(detail, "wrong PIN"));
    assert_null(strstr(detail, "not-the-pin-4711"));

    /* The right PIN opens a second handle next to the first. */
    cfg.pin = USER_PIN;
    assert_int_equal(hsm_open(&cfg, &h), MQPKI_OK);
    hsm_close(h);

    /* With no handle open, the token checks it. */
    hsm_close(f->hsm);
    f->hsm = NULL;
    cfg.pin = "not-the-pin-4711";
    mqpki_err_clear();
    assert_int_equal(hsm_open(&cfg, &h), MQPKI_ERR_AUTH);
    detail = mqpki_err_detail(MQPKI_ERR_AUTH);
    assert_string_equal(detail, "HSM login refused: wrong PIN");
}

static void test_not_found(void **state)
{
    struct fixture *f = *state;
    struct hsm_config cfg = {
        .module = HSM_SOFTHSM_MODULE, .token_label = "no-such-token", .pin = USER_PIN};
    struct hsm *h = NULL;
    EVP_PKEY *key = NULL;

    assert_int_equal(hsm_open(&cfg, &h), MQPKI_ERR_NOT_FOUND);
    assert_null(h);
    cfg.module = "/nonexistent/libnothing.so";
    cfg.token_label = TOKEN;
    assert_int_equal(hsm_open(&cfg, &h), MQPKI_ERR_NOT_FOUND);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_NOT_FOUND),
                        "PKCS#11 module /nonexistent/libnothing.so: cannot load");
    assert_int_equal(hsm_key_load(f->hsm, "no-such-key", &key), MQPKI_ERR_NOT_FOUND);
    assert_null(key);
}

static void test_exists(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(hsm_key_generate(f->hsm, "twice", HSM_KEY_EC_P256), MQPKI_OK);
    assert_int_equal(hsm_key_generate(f->hsm, "twice", HSM_KEY_EC_P256), MQPKI_ERR_EXISTS);
    assert_int_equal(hsm_key_generate(f->hsm, "twice", HSM_KEY_RSA_3072), MQPKI_ERR_EXISTS);
    assert_int_equal(hsm_token_init(HSM_SOFTHSM_MODULE, TOKEN, SO_PIN, USER_PIN), MQPKI_ERR_EXISTS);
}

static void test_key_flags(void **state)
{
    struct fixture *f = *state;
    const char *labels[] = {"flags-ec", "flags-rsa"};
    enum hsm_key_type types[] = {HSM_KEY_EC_P256, HSM_KEY_RSA_3072};

    for (int i = 0; i < 2; i++) {
        int sensitive = 0, extractable = 1, refused = 0;

        assert_int_equal(hsm_key_generate(f->hsm, labels[i], types[i]), MQPKI_OK);
        assert_int_equal(
            p11_test_key_flags(hsm_p11(f->hsm), labels[i], &sensitive, &extractable, &refused),
            MQPKI_OK);
        assert_int_equal(sensitive, 1);
        assert_int_equal(extractable, 0);
        assert_int_equal(refused, 1);
    }
}

/* Keys live in the token: a new handle (module finalized and loaded again) finds them. */
static void test_reopen(void **state)
{
    struct fixture *f = *state;
    struct hsm_config cfg = {.module = HSM_SOFTHSM_MODULE, .token_label = TOKEN, .pin = USER_PIN};
    static const unsigned char msg[] = "still there";
    unsigned char sig[128];
    size_t siglen = sizeof(sig);
    EVP_PKEY *key = NULL, *pub;

    assert_int_equal(hsm_key_generate(f->hsm, "persist", HSM_KEY_EC_P256), MQPKI_OK);
    hsm_close(f->hsm);
    f->hsm = NULL;
    assert_int_equal(hsm_open(&cfg, &f->hsm), MQPKI_OK);
    assert_int_equal(hsm_key_load(f->hsm, "persist", &key), MQPKI_OK);
    pub = plain_public(key);
    assert_true(sign(key, EVP_sha256(), msg, sizeof(msg), sig, &siglen));
    assert_true(verify(pub, EVP_sha256(), msg, sizeof(msg), sig, siglen));
    EVP_PKEY_free(pub);
    EVP_PKEY_free(key);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *fp = fopen(path, "w");

    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_pin_read(void **state)
{
    char dir[] = "/tmp/mqpki-pin-XXXXXX", path[128], pin[HSM_PIN_MAX], big[300];

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/pin", dir);

    unsetenv("MQPKI_PIN");
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_ERR_NOT_FOUND);

    write_file(path, "file-pin-1\r\nsecond line\n", 0600);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "file-pin-1");

    write_file(path, "no-newline", 0400);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "no-newline");

    /* The environment wins over the file, and leaves the environment when read: no child
     * inherits it; later reads (a token opened again) still get it. */
    setenv("MQPKI_PIN", "env-pin-2", 1);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "env-pin-2");
    assert_null(getenv("MQPKI_PIN"));
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "env-pin-2");
    setenv("MQPKI_PIN", "", 1);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "no-newline");
    assert_null(getenv("MQPKI_PIN"));
    /* hsm_pin_forget drops the kept copy: the file again. */
    setenv("MQPKI_PIN", "env-pin-3", 1);
    hsm_pin_capture();
    assert_null(getenv("MQPKI_PIN"));
    hsm_pin_forget();
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_string_equal(pin, "no-newline");

    write_file(path, "file-pin-3\n", 0644);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_ERR_POLICY);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_POLICY), path));
    assert_null(strstr(mqpki_err_detail(MQPKI_ERR_POLICY), "file-pin-3"));

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    write_file(path, big, 0600);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_ERR_INVALID);
    big[HSM_PIN_MAX - 1] = '\0'; /* exactly the longest allowed */
    write_file(path, big, 0600);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_OK);
    assert_int_equal(strlen(pin), HSM_PIN_MAX - 1);
    big[HSM_PIN_MAX - 1] = 'x';
    big[HSM_PIN_MAX] = '\0';
    setenv("MQPKI_PIN", big, 1);
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_ERR_INVALID);
    assert_null(getenv("MQPKI_PIN"));
    assert_int_equal(hsm_pin_read(path, pin), MQPKI_ERR_INVALID); /* no silent fallback */
    hsm_pin_forget();

    unlink(path);
    rmdir(dir);
}

/* /proc/PID/environ shows the environment block as the process got it, which unsetenv does
 * not touch: the value must be wiped where it lies. */
static void test_pin_capture_wipes(void **state)
{
    static char entry[] = "MQPKI_PIN=env-secret-77";
    char pin[HSM_PIN_MAX];

    assert_int_equal(putenv(entry), 0);
    hsm_pin_capture();
    assert_null(getenv("MQPKI_PIN"));
    assert_string_equal(entry, "MQPKI_PIN=");
    for (size_t i = strlen("MQPKI_PIN="); i < sizeof(entry); i++)
        assert_int_equal(entry[i], 0);
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_OK);
    assert_string_equal(pin, "env-secret-77");
    hsm_pin_forget();
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_ERR_NOT_FOUND);
}

/* MQPKI_ROOT_PIN, the offline root token's, is captured and wiped with MQPKI_PIN, and neither
 * stands in for the other; mqpkid forgets the root's alone. */
static void test_root_pin(void **state)
{
    static char entry[] = "MQPKI_ROOT_PIN=root-secret-5";
    char pin[HSM_PIN_MAX];

    assert_int_equal(putenv(entry), 0);
    setenv("MQPKI_PIN", "ca-secret-6", 1);
    hsm_pin_capture();
    assert_null(getenv("MQPKI_ROOT_PIN"));
    assert_null(getenv("MQPKI_PIN"));
    assert_string_equal(entry, "MQPKI_ROOT_PIN=");
    assert_int_equal(hsm_root_pin_read(NULL, pin), MQPKI_OK);
    assert_string_equal(pin, "root-secret-5");
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_OK);
    assert_string_equal(pin, "ca-secret-6");
    hsm_root_pin_forget();
    assert_int_equal(hsm_root_pin_read(NULL, pin), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_OK);
    assert_string_equal(pin, "ca-secret-6");
    hsm_pin_forget();
    assert_int_equal(hsm_pin_read(NULL, pin), MQPKI_ERR_NOT_FOUND);
    /* A file for the one, whatever the other says. */
    setenv("MQPKI_PIN", "ca-secret-7", 1);
    assert_int_equal(hsm_root_pin_read("/nonexistent/pin", pin), MQPKI_ERR_NOT_FOUND);
    hsm_pin_forget();
}

/* softhsm2.conf has '#' comments and key = value lines: such paths are refused, before
 * anything is created. */
static void test_softhsm_path_check(void **state)
{
    char dir[] = "/tmp/mqpki-hsmpath-XXXXXX", bad[128], link[128], via[160];
    struct stat st;

    assert_non_null(mkdtemp(dir));
    assert_int_equal(hsm_softhsm_path_check(dir), MQPKI_OK);
    snprintf(bad, sizeof(bad), "%s/a#b/hsm", dir);
    assert_int_equal(hsm_softhsm_path_check(bad), MQPKI_ERR_INVALID);
    assert_int_equal(hsm_softhsm_prepare(bad), MQPKI_ERR_INVALID);
    snprintf(bad, sizeof(bad), "%s/a#b", dir);
    assert_int_not_equal(stat(bad, &st), 0); /* nothing made */
    snprintf(bad, sizeof(bad), "%s/a=b/hsm", dir);
    assert_int_equal(hsm_softhsm_path_check(bad), MQPKI_ERR_INVALID);
    snprintf(bad, sizeof(bad), "%s/a\nb/hsm", dir);
    assert_int_equal(hsm_softhsm_path_check(bad), MQPKI_ERR_INVALID);
    /* A clean name that leads through a link to such a directory. */
    snprintf(bad, sizeof(bad), "%s/x#y", dir);
    assert_int_equal(mkdir(bad, 0700), 0);
    snprintf(link, sizeof(link), "%s/clean", dir);
    assert_int_equal(symlink(bad, link), 0);
    snprintf(via, sizeof(via), "%s/home/hsm", link);
    assert_int_equal(hsm_softhsm_path_check(via), MQPKI_ERR_INVALID);
    unlink(link);
    rmdir(bad);
    rmdir(dir);
}

static void test_softhsm_prepare(void **state)
{
    struct fixture *f = *state;
    char conf[128];
    struct stat st;
    char text[1024];
    size_t len;
    FILE *fp;

    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", f->dir);
    assert_string_equal(getenv("SOFTHSM2_CONF"), conf);
    assert_int_equal(stat(conf, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    fp = fopen(conf, "r");
    assert_non_null(fp);
    len = fread(text, 1, sizeof(text) - 1, fp);
    fclose(fp);
    text[len] = '\0';
    assert_non_null(strstr(text, "directories.tokendir = /tmp/mqpki-hsm-"));
    assert_non_null(strstr(text, "objectstore.backend = file"));
    snprintf(conf, sizeof(conf), "%s/tokens", f->dir);
    assert_int_equal(stat(conf, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* A second call keeps the existing configuration. */
    assert_int_equal(hsm_softhsm_prepare(f->dir), MQPKI_OK);
}

/* softhsm_dir guards the embedded token: good copies in DIR/tokens.good, used after a crash. */
static void test_softhsm_guard(void **state)
{
    struct fixture *f = *state;
    struct hsm_config cfg = {
        .module = HSM_SOFTHSM_MODULE, .token_label = TOKEN, .pin = USER_PIN, .softhsm_dir = f->dir};
    char pattern[256], live[256], good[128];
    struct stat st;
    EVP_PKEY *key = NULL;
    FILE *fp;
    glob_t g;

    hsm_close(f->hsm);
    f->hsm = NULL;
    assert_int_equal(hsm_open(&cfg, &f->hsm), MQPKI_OK);
    assert_int_equal(hsm_key_generate(f->hsm, "guarded", HSM_KEY_EC_P256), MQPKI_OK);
    snprintf(good, sizeof(good), "%s/tokens.good", f->dir);
    assert_int_equal(stat(good, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    /* token.object and both halves of the new key pair have good copies. */
    snprintf(pattern, sizeof(pattern), "%s/*/*.object", good);
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    assert_int_equal(g.gl_pathc, 3);
    globfree(&g);
    hsm_close(f->hsm);
    f->hsm = NULL;

    /* A crash between SoftHSM's ftruncate and write: an empty token.object. */
    snprintf(pattern, sizeof(pattern), "%s/tokens/*/token.object", f->dir);
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    snprintf(live, sizeof(live), "%s", g.gl_pathv[0]);
    globfree(&g);
    fp = fopen(live, "w");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(hsm_open(&cfg, &f->hsm), MQPKI_OK);
    assert_int_equal(hsm_key_load(f->hsm, "guarded", &key), MQPKI_OK);
    EVP_PKEY_free(key);
    assert_int_equal(stat(live, &st), 0);
    assert_true(st.st_size > 0);
}

static void test_close_null(void **state)
{
    hsm_close(NULL);
    assert_null(hsm_p11(NULL));
}

int main(void)
{
    mqpki_log_set_level(MQPKI_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ec_p256, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ec_p384, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rsa3072, setup, teardown),
        cmocka_unit_test_setup_teardown(test_x509_sign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_recovery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wrong_pin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_key_flags, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_softhsm_prepare, setup, teardown),
        cmocka_unit_test_setup_teardown(test_softhsm_guard, setup, teardown),
        cmocka_unit_test(test_pin_read),
        cmocka_unit_test(test_pin_capture_wipes),
        cmocka_unit_test(test_root_pin),
        cmocka_unit_test(test_softhsm_path_check),
        cmocka_unit_test(test_close_null),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
