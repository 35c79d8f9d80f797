/* fuzz_est: one EST request, as mqpkid hands it over after reading it off the connection, through
 * est_handle with the real enrollment sources: path and label parsing, method and content type,
 * HTTP Basic parsing, the rate limits, the client certificate of a re-enrollment, the CSR, the
 * token check and, with a valid token, issuance and the store record. The CA key is a software
 * key and the store a SQLite file in a private temporary directory.
 *
 * Input: byte 0 holds flags, then "PATH\nCONTENT-TYPE\nAUTHORIZATION\n" and the body.
 *   flag 1: POST (else GET)
 *   flag 2: an empty AUTHORIZATION line becomes a valid Basic header for asset dev1 (a fresh
 *           token each time), so that CSRs reach the CA
 *   flag 4: the body starts with a 2-byte big-endian length of a DER client certificate */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "enrollment.h"
#include "fuzz.h"
#include "inventory.h"

static struct est *est;
static struct inventory *inv;

static EVP_PKEY *ec_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");

    if (k == NULL)
        __builtin_trap();
    return k;
}

static void setup(void)
{
    static char dir[64];
    char db[96];
    EVP_PKEY *root_key = ec_key(), *issuing_key = ec_key();
    X509 *root = NULL, *issuing = NULL;
    struct ca *ca = NULL;
    struct inventory_asset a;
    struct est_config cfg = {.profile_days = {30, 30, 30},
                             .failures_per_window = 1000000,
                             .window_seconds = 1,
                             .requests_per_second = 0,
                             .burst = 0};

    fuzz_quiet();
    snprintf(dir, sizeof(dir), "/tmp/mqpki-fuzz-est.XXXXXX");
    if (mkdtemp(dir) == NULL)
        __builtin_trap();
    snprintf(db, sizeof(db), "%s/mqpki.db", dir);
    if (ca_root_create(root_key, "fuzz root", 3650, &root) != MQPKI_OK ||
        ca_issuing_create(root, root_key, issuing_key, "fuzz issuing", 3650, &issuing) !=
            MQPKI_OK ||
        ca_open(issuing, issuing_key, root, "https://localhost:8443", &ca) != MQPKI_OK ||
        inventory_open(db, &inv) != MQPKI_OK)
        __builtin_trap();
    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "dev1");
    a.kind = INV_KIND_DEVICE;
    if (inventory_asset_add(inv, &a, "fuzz") != MQPKI_OK || est_new(ca, NULL, &cfg, &est) != 0)
        __builtin_trap();
    /* est keeps its own references to the CA. */
    X509_free(root);
    X509_free(issuing);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(issuing_key);
}

/* The next line of [*p, end) as a new string; *p moves past its newline. */
static char *line(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *nl = memchr(*p, '\n', (size_t)(end - *p));
    size_t n = nl != NULL ? (size_t)(nl - *p) : (size_t)(end - *p);
    char *s = malloc(n + 1);

    if (s == NULL)
        __builtin_trap();
    memcpy(s, *p, n);
    s[n] = '\0';
    *p += n + (nl != NULL);
    return s;
}

static char *basic_for_dev1(void)
{
    char token[64], cred[128];
    unsigned char b64[200];

    if (inventory_token_create(inv, "dev1", 3600, "fuzz", token) != MQPKI_OK)
        return strdup("");
    snprintf(cred, sizeof(cred), "dev1:%s", token);
    memcpy(b64, "Basic ", 6);
    EVP_EncodeBlock(b64 + 6, (const unsigned char *)cred, (int)strlen(cred));
    return strdup((char *)b64);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data + 1, *end = data + size;
    struct est_request req;
    struct est_response resp;
    char *path, *ct, *auth;
    unsigned flags;

    if (size < 1)
        return 0;
    if (est == NULL)
        setup();
    flags = data[0];
    path = line(&p, end);
    ct = line(&p, end);
    auth = line(&p, end);
    if ((flags & 2) && auth[0] == '\0') {
        free(auth);
        auth = basic_for_dev1();
    }
    memset(&req, 0, sizeof(req));
    req.method = (flags & 1) ? "POST" : "GET";
    req.path = path;
    req.content_type = ct[0] != '\0' ? ct : NULL;
    req.authorization = auth[0] != '\0' ? auth : NULL;
    req.client_addr = "192.0.2.1";
    if ((flags & 4) && end - p >= 2) {
        size_t n = (size_t)p[0] << 8 | p[1];
        p += 2;
        if (n > (size_t)(end - p))
            n = (size_t)(end - p);
        req.client_cert = p;
        req.client_cert_len = n;
        p += n;
    }
    req.body = p;
    req.body_len = (size_t)(end - p);
    /* mqpkid only routes paths under /.well-known/est/ here. */
    if (est_handles(path)) {
        est_handle(est, inv, &req, &resp);
        if (resp.status < 200 || resp.status > 599 || (resp.body == NULL && resp.body_len > 0))
            __builtin_trap();
        est_response_clear(&resp);
    }
    free(path);
    free(ct);
    free(auth);
    mqpki_err_clear();
    return 0;
}
