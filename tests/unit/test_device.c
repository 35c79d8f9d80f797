/*
 * Unit tests of libmqpki-device: key stores (file, pkcs11 on a throw-away SoftHSM token),
 * PKCS#7 certs-only decoding, fingerprint pins, renewal schedule and retry backoff.
 */
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509.h>

#include "device_int.h"
#include "p11.h"

#define SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"

#include <cmocka.h>

static char tmpdir[256];

static int setup_dir(void **state)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_device.XXXXXX");
    assert_non_null(mkdtemp(tmpdir));
    unsetenv("MQPKI_DEVICE_SECRET");
    unsetenv("MQPKI_DEVICE_PIN");
    return 0;
}

static int teardown_dir(void **state)
{
    char cmd[300];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static unsigned file_mode(const char *name)
{
    char path[400];
    struct stat st;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 0777;
}

static void write_text(const char *name, const char *text)
{
    char path[400];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_file_store(void **state)
{
    struct dev_store_args args = {.param = "", .asset = "a1", .create = 1};
    EVP_PKEY *gen = NULL, *back = NULL;
    void *st = NULL;

    assert_int_equal(dev_store_file.open(tmpdir, &args, &st), MQPKI_DEVICE_OK);
    assert_int_equal(file_mode("secret"), 0600);
    assert_int_equal(dev_store_file.generate(st, "1", &gen), MQPKI_DEVICE_OK);
    assert_int_equal(file_mode("key-1.pem"), 0600);
    assert_int_equal(dev_store_file.load(st, "1", &back), MQPKI_DEVICE_OK);
    assert_int_equal(EVP_PKEY_eq(gen, back), 1);
    EVP_PKEY_free(back);
    back = NULL;
    assert_int_equal(dev_store_file.load(st, "2", &back), MQPKI_DEVICE_ERR_KEY_MISSING);
    dev_store_file.close(st);
    st = NULL;

    /* Wrong secret: a clear "locked" error, not corruption. */
    setenv("MQPKI_DEVICE_SECRET", "not-the-secret", 1);
    args.create = 0;
    assert_int_equal(dev_store_file.open(tmpdir, &args, &st), MQPKI_DEVICE_OK);
    assert_int_equal(dev_store_file.load(st, "1", &back), MQPKI_DEVICE_ERR_STORE_LOCKED);
    assert_non_null(strstr(mqpki_device_last_error(), "wrong device secret"));
    assert_null(back);
    dev_store_file.close(st);
    st = NULL;
    unsetenv("MQPKI_DEVICE_SECRET");

    /* Corrupted key file. */
    assert_int_equal(dev_store_file.open(tmpdir, &args, &st), MQPKI_DEVICE_OK);
    write_text("key-1.pem", "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                            "-----END ENCRYPTED PRIVATE KEY-----\n");
    assert_int_equal(dev_store_file.load(st, "1", &back), MQPKI_DEVICE_ERR_KEY_CORRUPT);
    assert_non_null(strstr(mqpki_device_last_error(), "corrupted key file"));
    dev_store_file.remove(st, "1");
    assert_int_equal(dev_store_file.load(st, "1", &back), MQPKI_DEVICE_ERR_KEY_MISSING);
    dev_store_file.close(st);

    /* A group-readable secret is refused rather than used. */
    write_text("secret", "0123\n");
    {
        char path[400];
        snprintf(path, sizeof(path), "%s/secret", tmpdir);
        assert_int_equal(chmod(path, 0640), 0);
    }
    assert_int_equal(dev_store_file.open(tmpdir, &args, &st), MQPKI_DEVICE_ERR_STORE_LOCKED);
    assert_null(st);
    EVP_PKEY_free(gen);
}

/* A private SoftHSM configuration (tokens in tmpdir/tokens) with one token, as a device has. */
static void softhsm_token(const char *label, const char *pin)
{
    struct p11_config cfg = {.module = SOFTHSM_MODULE, .token_label = label, .pin = pin};
    char conf[400], text[700];

    snprintf(conf, sizeof(conf), "%s/tokens", tmpdir);
    assert_int_equal(mkdir(conf, 0700), 0);
    snprintf(text, sizeof(text), "directories.tokendir = %s/tokens\nobjectstore.backend = file\n",
             tmpdir);
    write_text("softhsm2.conf", text);
    snprintf(conf, sizeof(conf), "%s/softhsm2.conf", tmpdir);
    assert_int_equal(setenv("SOFTHSM2_CONF", conf, 1), 0);
    assert_int_equal(p11_token_init(&cfg, "so-pin-1"), MQPKI_OK);
}

/* The token.object of the only token under tmpdir/tokens. */
static void token_object(char *out, size_t size)
{
    char pattern[400];
    glob_t g;

    snprintf(pattern, sizeof(pattern), "%s/tokens/*/token.object", tmpdir);
    assert_int_equal(glob(pattern, 0, NULL, &g), 0);
    assert_int_equal(g.gl_pathc, 1);
    snprintf(out, size, "%s", g.gl_pathv[0]);
    globfree(&g);
}

static int logged_restore;

static void capture_log(int level, const char *msg, void *ctx)
{
    if (strstr(msg, "restored from") != NULL)
        logged_restore++;
}

static void test_pkcs11_store(void **state)
{
    struct dev_store_args args = {.param = SOFTHSM_MODULE, .asset = "a1", .token_label = "devtest"};
    EVP_PKEY *gen = NULL, *back = NULL;
    unsigned char sig[128];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *md;
    void *st = NULL;

    softhsm_token("devtest", "1234");
    /* No PIN at all: locked. */
    assert_int_equal(dev_store_pkcs11.open(tmpdir, &args, &st), MQPKI_DEVICE_ERR_STORE_LOCKED);
    setenv("MQPKI_DEVICE_PIN", "9999", 1);
    assert_int_equal(dev_store_pkcs11.open(tmpdir, &args, &st), MQPKI_DEVICE_ERR_STORE_LOCKED);
    assert_non_null(strstr(mqpki_device_last_error(), "PIN refused"));
    setenv("MQPKI_DEVICE_PIN", "1234", 1);
    assert_int_equal(dev_store_pkcs11.open(tmpdir, &args, &st), MQPKI_DEVICE_OK);
    assert_int_equal(dev_store_pkcs11.load(st, "1", &back), MQPKI_DEVICE_ERR_KEY_MISSING);
    assert_int_equal(dev_store_pkcs11.generate(st, "1", &gen), MQPKI_DEVICE_OK);
    assert_int_equal(dev_store_pkcs11.load(st, "1", &back), MQPKI_DEVICE_OK);
    assert_int_equal(EVP_PKEY_eq(gen, back), 1);
    /* The key signs in the token; the public half verifies. */
    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, back), 1);
    assert_int_equal(EVP_DigestSign(md, sig, &siglen, (const unsigned char *)"hi", 2), 1);
    EVP_MD_CTX_free(md);
    md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, gen), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, siglen, (const unsigned char *)"hi", 2), 1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(gen);
    EVP_PKEY_free(back);
    back = NULL;
    /* SoftHSM is guarded: good copies beside the device files, private. */
    assert_int_equal(file_mode("softhsm.good"), 0700);
    /* A superseded key is really destroyed; a second generation under one name replaces. */
    dev_store_pkcs11.remove(st, "1");
    assert_int_equal(dev_store_pkcs11.load(st, "1", &back), MQPKI_DEVICE_ERR_KEY_MISSING);
    assert_int_equal(dev_store_pkcs11.generate(st, "2", &gen), MQPKI_DEVICE_OK);
    assert_int_equal(dev_store_pkcs11.generate(st, "2", &back), MQPKI_DEVICE_OK);
    assert_int_equal(EVP_PKEY_eq(gen, back), 0);
    EVP_PKEY_free(gen);
    EVP_PKEY_free(back);
    back = NULL;
    dev_store_pkcs11.close(st);
    st = NULL;

    /* token.object emptied by a crash: the next open restores it and says so in our log. */
    {
        char path[400];
        FILE *f;

        token_object(path, sizeof(path));
        f = fopen(path, "w");
        assert_non_null(f);
        fclose(f);
    }
    mqpki_device_set_logger(capture_log, NULL, DEV_LOG_DEBUG);
    assert_int_equal(dev_store_pkcs11.open(tmpdir, &args, &st), MQPKI_DEVICE_OK);
    mqpki_device_set_logger(NULL, NULL, DEV_LOG_INFO);
    assert_int_equal(logged_restore, 1);
    assert_int_equal(dev_store_pkcs11.load(st, "2", &back), MQPKI_DEVICE_OK);
    EVP_PKEY_free(back);
    dev_store_pkcs11.close(st);
    unsetenv("MQPKI_DEVICE_PIN");
}

static X509 *self_signed(const char *cn)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509_NAME *n = X509_get_subject_name(x);

    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    assert_true(X509_sign(x, k, EVP_sha256()) > 0);
    EVP_PKEY_free(k);
    return x;
}

/* certs-only PKCS#7 of the given certificates, base64 with line breaks as servers send it. */
static char *p7_b64(X509 *a, X509 *b)
{
    PKCS7 *p7 = PKCS7_new();
    unsigned char *der = NULL;
    BIO *b64 = BIO_new(BIO_f_base64()), *mem = BIO_new(BIO_s_mem());
    char *data, *out;
    long n;
    int len;

    assert_int_equal(PKCS7_set_type(p7, NID_pkcs7_signed), 1);
    assert_int_equal(PKCS7_content_new(p7, NID_pkcs7_data), 1);
    if (a != NULL)
        PKCS7_add_certificate(p7, a);
    if (b != NULL)
        PKCS7_add_certificate(p7, b);
    len = i2d_PKCS7(p7, &der);
    assert_true(len > 0);
    b64 = BIO_push(b64, mem);
    BIO_write(b64, der, len);
    (void)BIO_flush(b64);
    n = BIO_get_mem_data(mem, &data);
    out = calloc(1, (size_t)n + 1);
    memcpy(out, data, (size_t)n);
    BIO_free_all(b64);
    OPENSSL_free(der);
    PKCS7_free(p7);
    return out;
}

static void test_p7_decode(void **state)
{
    X509 *a = self_signed("root"), *b = self_signed("other");
    STACK_OF(X509) *certs = NULL;
    char *body = p7_b64(a, b);

    assert_non_null(strchr(body, '\n'));
    assert_int_equal(dev_p7_certs_decode(body, strlen(body), &certs), MQPKI_DEVICE_OK);
    assert_int_equal(sk_X509_num(certs), 2);
    assert_int_equal(
        X509_cmp(sk_X509_value(certs, 0), a) == 0 || X509_cmp(sk_X509_value(certs, 1), a) == 0, 1);
    sk_X509_pop_free(certs, X509_free);
    free(body);

    /* Garbage of every kind: an error, never a crash, never a partial result. */
    assert_int_equal(dev_p7_certs_decode("", 0, &certs), MQPKI_DEVICE_ERR_PROTOCOL);
    assert_null(certs);
    assert_int_equal(dev_p7_certs_decode("!!not base64!!", 14, &certs), MQPKI_DEVICE_ERR_PROTOCOL);
    assert_int_equal(dev_p7_certs_decode("aGVsbG8gd29ybGQ=", 16, &certs),
                     MQPKI_DEVICE_ERR_PROTOCOL);
    body = p7_b64(NULL, NULL);
    assert_int_equal(dev_p7_certs_decode(body, strlen(body), &certs), MQPKI_DEVICE_ERR_PROTOCOL);
    assert_null(certs);
    free(body);
    body = p7_b64(a, NULL);
    body[strlen(body) / 2] = '\0'; /* truncated */
    assert_int_equal(dev_p7_certs_decode(body, strlen(body), &certs), MQPKI_DEVICE_ERR_PROTOCOL);
    free(body);
    X509_free(a);
    X509_free(b);
}

static void test_fingerprint(void **state)
{
    const char *hex = "9b6578736bfb910f8fe29e1a70baca2528d5752cb758ee8c3fc30cb52fd81df0";
    const char *colons = "9B:65:78:73:6B:FB:91:0F:8F:E2:9E:1A:70:BA:CA:25:28:D5:75:2C:B7:58:"
                         "EE:8C:3F:C3:0C:B5:2F:D8:1D:F0";
    unsigned char a[32], b[32];

    assert_int_equal(dev_fingerprint_parse(hex, a), MQPKI_DEVICE_OK);
    assert_int_equal(dev_fingerprint_parse(colons, b), MQPKI_DEVICE_OK);
    assert_memory_equal(a, b, 32);
    assert_int_equal(a[0], 0x9b);
    assert_int_equal(a[31], 0xf0);
    assert_int_equal(dev_fingerprint_parse("sha256:9b6578736bfb910f8fe29e1a70baca2528d5752cb758ee8c"
                                           "3fc30cb52fd81df0",
                                           b),
                     MQPKI_DEVICE_OK);
    assert_memory_equal(a, b, 32);
    assert_int_equal(dev_fingerprint_parse("9b65", a), MQPKI_DEVICE_ERR_INVALID);
    assert_int_equal(dev_fingerprint_parse(NULL, a), MQPKI_DEVICE_ERR_INVALID);
    assert_int_equal(dev_fingerprint_parse("9b6578736bfb910f8fe29e1a70baca2528d5752cb758ee8c3fc3"
                                           "0cb52fd81df00",
                                           a),
                     MQPKI_DEVICE_ERR_INVALID);
    assert_int_equal(dev_fingerprint_parse("9g6578736bfb910f8fe29e1a70baca2528d5752cb758ee8c3fc3"
                                           "0cb52fd81df0",
                                           a),
                     MQPKI_DEVICE_ERR_INVALID);
    assert_int_equal(dev_fingerprint_parse("9b6578736bfb910f8fe29e1a70baca2528d5752cb758ee8c3fc3"
                                           "0cb52fd81df",
                                           a),
                     MQPKI_DEVICE_ERR_INVALID);
}

static void test_renew_schedule(void **state)
{
    const int64_t nb = 1000000, life = 90 * 86400, na = nb + life;

    assert_int_equal(dev_renew_at(nb, na, 0), nb + life * 2 / 3);
    assert_int_equal(dev_renew_at(nb, na, 10000), nb + life * 2 / 3 + life / 10);
    for (uint32_t s = 0; s < 200000; s += 997) {
        int64_t t = dev_renew_at(nb, na, s * 2654435761u);
        assert_true(t >= nb + life * 2 / 3);
        assert_true(t <= nb + life * 2 / 3 + life / 10);
        assert_true(t < na);
    }
    assert_int_equal(dev_renew_at(nb, nb, 5), nb); /* degenerate lifetime: due at once */
}

static void test_backoff(void **state)
{
    for (unsigned a = 0; a < 40; a++) {
        int64_t cap = 5;
        for (unsigned i = 0; i < a && cap < 3600; i++)
            cap *= 2;
        if (cap > 3600)
            cap = 3600;
        for (uint32_t r = 0; r < 100000; r += 1237) {
            int64_t d = dev_backoff(a, r * 2654435761u);
            assert_true(d >= cap / 2);
            assert_true(d <= cap);
        }
        assert_true(dev_backoff(a, UINT32_MAX) <= 3600);
    }
    assert_true(dev_backoff(0, 0) >= 2 && dev_backoff(0, 0) <= 5);
}

static void test_errors(void **state)
{
    assert_string_equal(mqpki_device_strerror(MQPKI_DEVICE_OK), "success");
    assert_string_equal(mqpki_device_strerror(-1), "unknown error");
    assert_int_equal(mqpki_device_exit_status(MQPKI_DEVICE_ERR_CA_PIN), 1);
    assert_int_equal(mqpki_device_exit_status(MQPKI_DEVICE_ERR_IO), 2);
    assert_int_equal(dev_fail(MQPKI_DEVICE_ERR_INVALID, "x\ny"), MQPKI_DEVICE_ERR_INVALID);
    assert_string_equal(mqpki_device_last_error(), "x?y");
}

static void test_open_unenrolled(void **state)
{
    struct mqpki_device *dev = NULL;
    struct mqpki_device_info info;
    char sub[400];

    snprintf(sub, sizeof(sub), "%s/new/dev", tmpdir);
    assert_int_equal(mqpki_device_open(sub, &dev), MQPKI_DEVICE_OK);
    assert_int_equal(mqpki_device_info(dev, &info), MQPKI_DEVICE_ERR_NOT_ENROLLED);
    assert_int_equal(mqpki_device_renew(dev, 1, NULL), MQPKI_DEVICE_ERR_NOT_ENROLLED);
    assert_int_equal(mqpki_device_renewal_due(dev, 0), 0);
    mqpki_device_close(dev);
    mqpki_device_close(NULL);
    write_text("new/dev/device.json", "{\"asset\": 1}");
    assert_int_equal(mqpki_device_open(sub, &dev), MQPKI_DEVICE_ERR_IO);
    assert_null(dev);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_file_store, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_pkcs11_store, setup_dir, teardown_dir),
        cmocka_unit_test(test_p7_decode),
        cmocka_unit_test(test_fingerprint),
        cmocka_unit_test(test_renew_schedule),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_errors),
        cmocka_unit_test_setup_teardown(test_open_unenrolled, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
