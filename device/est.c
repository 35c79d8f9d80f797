/*
 * device/est.c: the EST client (RFC 7030) on libcurl with OpenSSL. HTTPS only, TLS 1.2 or
 * later, host name checked, trust limited to the provisioned CA (our own X509_STORE installed in
 * curl's SSL_CTX, so the system CA bundle never counts), every response body capped.
 */
#include <ctype.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/pkcs7.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "device_int.h"

#define EST_PREFIX      "/.well-known/est/"
#define REASON_MAX      200
#define CONNECT_TIMEOUT 10L
#define TOTAL_TIMEOUT   60L

struct buf {
    char *data;
    size_t len;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_init_once(void)
{
    curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

/* Refuses (returns a short count, which makes curl fail with CURLE_WRITE_ERROR) past the cap. */
static size_t body_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct buf *b = userdata;
    size_t n = size * nmemb;
    char *p;

    if (n > DEV_RESPONSE_MAX - b->len)
        return 0;
    p = realloc(b->data, b->len + n + 1);
    if (p == NULL)
        return 0;
    memcpy(p + b->len, ptr, n);
    b->data = p;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

/* Retry-After: delta-seconds only (an HTTP-date falls back to our own backoff). */
static size_t header_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct dev_est *est = userdata;
    size_t n = size * nmemb;
    char line[64];

    if (n > 12 && n < sizeof(line) && strncasecmp(ptr, "Retry-After:", 12) == 0) {
        memcpy(line, ptr + 12, n - 12);
        line[n - 12] = '\0';
        long v = strtol(line, NULL, 10);
        if (v > 0 && v <= 86400)
            est->retry_after = v;
    }
    return n;
}

/* Runs after curl has built its SSL_CTX: our trust store replaces whatever curl loaded, and
 * for re-enrollment the current identity becomes the TLS client certificate. */
static CURLcode sslctx_cb(CURL *curl, void *sslctx, void *userdata)
{
    struct dev_est *est = userdata;
    SSL_CTX *ctx = sslctx;
    CURLcode rc = CURLE_OK;

    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (est->trust != NULL) {
        if (X509_STORE_up_ref(est->trust) != 1) {
            rc = CURLE_SSL_CERTPROBLEM;
            goto out;
        }
        SSL_CTX_set_cert_store(ctx, est->trust);
    }
    if (est->client_cert != NULL) {
        if (SSL_CTX_use_certificate(ctx, est->client_cert) != 1 ||
            SSL_CTX_use_PrivateKey(ctx, est->client_key) != 1 ||
            (est->client_chain != NULL && SSL_CTX_set1_chain(ctx, est->client_chain) != 1)) {
            rc = CURLE_SSL_CERTPROBLEM;
            goto out;
        }
    }
out:
    return rc;
}

/* The first line of a plain-text error body, made printable, for the error detail. */
static void reason_of(const struct buf *b, char out[REASON_MAX + 1])
{
    size_t i, n = 0;

    for (i = 0; b->data != NULL && i < b->len && n < REASON_MAX; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (c == '\n' || c == '\r')
            break;
        out[n++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[n] = '\0';
    if (n == 0)
        strcpy(out, "no reason given");
}

static int status_error(struct dev_est *est, long status, const struct buf *b, const char *what)
{
    char reason[REASON_MAX + 1];
    int rc;

    reason_of(b, reason);
    switch (status) {
    case 202:
        rc = dev_fail(MQPKI_DEVICE_ERR_UNAVAILABLE,
                      "%s: request pending at the server (202); "
                      "retry later",
                      what);
        break;
    case 400:
        rc = dev_fail(MQPKI_DEVICE_ERR_BAD_REQUEST, "%s: bad request (400): %s", what, reason);
        break;
    case 401:
        rc = dev_fail(MQPKI_DEVICE_ERR_REFUSED, "%s: credentials refused (401): %s", what, reason);
        break;
    case 403:
        rc = dev_fail(MQPKI_DEVICE_ERR_POLICY, "%s: refused by policy (403): %s", what, reason);
        break;
    case 404:
        rc = dev_fail(MQPKI_DEVICE_ERR_BAD_REQUEST, "%s: not found on the server (404): %s", what,
                      reason);
        break;
    case 413:
        rc = dev_fail(MQPKI_DEVICE_ERR_BAD_REQUEST, "%s: request too large (413)", what);
        break;
    case 429:
        rc = dev_fail(MQPKI_DEVICE_ERR_RATE, "%s: rate limited (429), retry after %llds: %s", what,
                      (long long)est->retry_after, reason);
        break;
    case 503:
        rc = dev_fail(MQPKI_DEVICE_ERR_UNAVAILABLE, "%s: server unavailable (503): %s", what,
                      reason);
        break;
    default:
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL, "%s: unexpected HTTP status %ld: %s", what, status,
                      reason);
        break;
    }
    return rc;
}

static int curl_error(const struct dev_est *est, CURLcode cc, const char *errbuf, const char *what)
{
    const char *text = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(cc);
    int rc;

    switch (cc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
        rc = dev_fail(MQPKI_DEVICE_ERR_UNREACHABLE, "%s: server %s unreachable: %s", what,
                      est->server, text);
        break;
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
        rc = dev_fail(MQPKI_DEVICE_ERR_TLS,
                      "%s: server %s not trusted (its TLS certificate does not chain to the "
                      "provisioned CA or does not name the host): %s",
                      what, est->server, text);
        break;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_CERTPROBLEM:
        rc = dev_fail(MQPKI_DEVICE_ERR_TLS, "%s: TLS handshake with %s failed: %s", what,
                      est->server, text);
        break;
    case CURLE_WRITE_ERROR:
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL, "%s: response larger than %d bytes refused", what,
                      DEV_RESPONSE_MAX);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "server URL '%s': %s", est->server, text);
        break;
    default:
        rc = dev_fail(MQPKI_DEVICE_ERR_UNREACHABLE, "%s: %s: %s", what, est->server, text);
        break;
    }
    return rc;
}

/* One EST request: method GET when body is NULL. On success *resp holds a 200 body. */
static int est_request(struct dev_est *est, const char *path, const char *user, const char *pass,
                       const char *body, struct buf *resp, long *status)
{
    char url[DEV_PATH_MAX], errbuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL;
    struct curl_blob blob;
    CURLcode cc = CURLE_OK;
    CURL *c = NULL;
    int rc = MQPKI_DEVICE_OK;

    *status = 0;
    errbuf[0] = '\0';
    est->retry_after = 0;
    pthread_once(&curl_once, curl_init_once);
    if (!curl_ready || (c = curl_easy_init()) == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INTERNAL, "libcurl initialization failed");
        goto out;
    }
    if (mqpki_path(url, sizeof(url), "%s%s%s", est->server, EST_PREFIX, path) != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "server URL too long");
        goto out;
    }
#define SET(opt, val) (cc == CURLE_OK ? (cc = curl_easy_setopt(c, opt, val)) : cc)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PROTOCOLS_STR, "https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT);
    SET(CURLOPT_TIMEOUT, TOTAL_TIMEOUT);
    SET(CURLOPT_ERRORBUFFER, errbuf);
    SET(CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    SET(CURLOPT_WRITEFUNCTION, body_cb);
    SET(CURLOPT_WRITEDATA, resp);
    SET(CURLOPT_HEADERFUNCTION, header_cb);
    SET(CURLOPT_HEADERDATA, est);
    SET(CURLOPT_SSL_CTX_FUNCTION, sslctx_cb);
    SET(CURLOPT_SSL_CTX_DATA, est);
    /* No session reuse across identities: a resumed session would skip the client cert. */
    SET(CURLOPT_SSL_SESSIONID_CACHE, 0L);
    if (est->trust != NULL) {
        /* Also hand curl the same chain, so that nothing from the system bundle sneaks in
         * whatever the order of curl's own CA loading and our callback. */
        blob.data = (void *)est->ca_pem;
        blob.len = est->ca_pem_len;
        blob.flags = CURL_BLOB_COPY;
        SET(CURLOPT_CAINFO_BLOB, &blob);
        SET(CURLOPT_CAPATH, NULL);
        SET(CURLOPT_SSL_VERIFYPEER, 1L);
        SET(CURLOPT_SSL_VERIFYHOST, 2L);
    } else {
        /* Pin bootstrap only: the answer is checked against the fingerprint afterwards. */
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (user != NULL) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERNAME, user);
        SET(CURLOPT_PASSWORD, pass);
    }
    if (body != NULL) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/pkcs10");
        hdrs = curl_slist_append(hdrs, "Content-Transfer-Encoding: base64");
        if (hdrs == NULL) {
            rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
            goto out;
        }
        SET(CURLOPT_HTTPHEADER, hdrs);
        SET(CURLOPT_POSTFIELDS, body);
        SET(CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
#undef SET
    if (cc != CURLE_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INTERNAL, "libcurl option: %s", curl_easy_strerror(cc));
        goto out;
    }
    dev_log(DEV_LOG_DEBUG, "EST %s %s", body != NULL ? "POST" : "GET", url);
    cc = curl_easy_perform(c);
    if (cc != CURLE_OK) {
        rc = curl_error(est, cc, errbuf, path);
        goto out;
    }
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    if (*status != 200)
        rc = status_error(est, *status, resp, path);
out:
    curl_slist_free_all(hdrs);
    /* The password was copied by curl; curl_easy_cleanup frees its copy. */
    curl_easy_cleanup(c);
    ERR_clear_error();
    return rc;
}

int dev_p7_certs_decode(const char *body, size_t len, STACK_OF(X509) * *out)
{
    EVP_ENCODE_CTX *ectx = NULL;
    unsigned char *der = NULL;
    const unsigned char *p;
    STACK_OF(X509) *certs = NULL;
    PKCS7 *p7 = NULL;
    int n = 0, m = 0, rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (body == NULL || len == 0 || len > DEV_RESPONSE_MAX || len > INT32_MAX) {
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL, "empty or oversized PKCS#7 response");
        goto out;
    }
    der = malloc(len);
    ectx = EVP_ENCODE_CTX_new();
    if (der == NULL || ectx == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    /* EVP_DecodeUpdate skips the line breaks RFC 7030 servers put in their base64. */
    EVP_DecodeInit(ectx);
    if (EVP_DecodeUpdate(ectx, der, &n, (const unsigned char *)body, (int)len) < 0 ||
        EVP_DecodeFinal(ectx, der + n, &m) < 0 || n + m == 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL, "response is not base64");
        goto out;
    }
    p = der;
    p7 = d2i_PKCS7(NULL, &p, n + m);
    if (p7 == NULL || !PKCS7_type_is_signed(p7) || p7->d.sign == NULL || p7->d.sign->cert == NULL ||
        sk_X509_num(p7->d.sign->cert) == 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL,
                      "response is not a PKCS#7 certs-only structure with certificates");
        goto out;
    }
    certs = sk_X509_new_null();
    if (certs == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(p7->d.sign->cert); i++) {
        X509 *x = sk_X509_value(p7->d.sign->cert, i);
        if (X509_up_ref(x) != 1 || sk_X509_push(certs, x) <= 0) {
            rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
            goto out;
        }
    }
    *out = certs;
    certs = NULL;
out:
    sk_X509_pop_free(certs, X509_free);
    PKCS7_free(p7);
    EVP_ENCODE_CTX_free(ectx);
    free(der);
    ERR_clear_error();
    return rc;
}

int dev_fingerprint_parse(const char *text, unsigned char out[32])
{
    size_t n = 0;
    int hi = -1, rc = MQPKI_DEVICE_OK;

    if (text == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no CA fingerprint");
        goto out;
    }
    if (strncasecmp(text, "sha256:", 7) == 0 || strncasecmp(text, "sha256=", 7) == 0)
        text += 7;
    for (const char *p = text; *p != '\0'; p++) {
        int v;
        if (*p == ':' || *p == ' ')
            continue;
        if (!isxdigit((unsigned char)*p) || n == 32) {
            rc = dev_fail(MQPKI_DEVICE_ERR_INVALID,
                          "CA fingerprint: expected 64 hex digits of SHA-256 (colons allowed)");
            goto out;
        }
        v = isdigit((unsigned char)*p) ? *p - '0' : tolower((unsigned char)*p) - 'a' + 10;
        if (hi < 0) {
            hi = v;
        } else {
            out[n++] = (unsigned char)(hi << 4 | v);
            hi = -1;
        }
    }
    if (n != 32 || hi >= 0)
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID,
                      "CA fingerprint: expected 64 hex digits of SHA-256 (colons allowed)");
out:
    return rc;
}

int dev_est_cacerts(struct dev_est *est, STACK_OF(X509) * *certs)
{
    struct buf resp = {0};
    long status;
    int rc;

    *certs = NULL;
    rc = est_request(est, "cacerts", NULL, NULL, NULL, &resp, &status);
    if (rc == MQPKI_DEVICE_OK)
        rc = dev_p7_certs_decode(resp.data, resp.len, certs);
    free(resp.data);
    return rc;
}

int dev_est_enroll(struct dev_est *est, const char *asset, const char *token, X509_REQ *csr,
                   X509 **cert)
{
    unsigned char *der = NULL;
    char *b64 = NULL;
    STACK_OF(X509) *certs = NULL;
    struct buf resp = {0};
    const char *path;
    long status;
    int len, rc = MQPKI_DEVICE_OK;

    *cert = NULL;
    len = i2d_X509_REQ(csr, &der);
    if (len <= 0) {
        rc = dev_fail(MQPKI_DEVICE_ERR_CRYPTO, "CSR encoding failed");
        goto out;
    }
    b64 = malloc((size_t)len / 3 * 4 + 8);
    if (b64 == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    EVP_EncodeBlock((unsigned char *)b64, der, len);
    path = est->client_cert != NULL ? "simplereenroll" : "simpleenroll";
    rc = est_request(est, path, est->client_cert != NULL ? NULL : asset,
                     est->client_cert != NULL ? NULL : token, b64, &resp, &status);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    rc = dev_p7_certs_decode(resp.data, resp.len, &certs);
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    /* The response may carry the chain too: the new certificate is the one that is no CA. */
    for (int i = 0; i < sk_X509_num(certs) && *cert == NULL; i++) {
        X509 *x = sk_X509_value(certs, i);
        if (X509_check_ca(x) == 0 && X509_up_ref(x) == 1)
            *cert = x;
    }
    if (*cert == NULL)
        rc = dev_fail(MQPKI_DEVICE_ERR_PROTOCOL, "%s: response holds no end-entity certificate",
                      path);
out:
    sk_X509_pop_free(certs, X509_free);
    OPENSSL_free(der);
    free(b64);
    free(resp.data);
    return rc;
}
