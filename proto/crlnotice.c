/*
 * proto: the CRL notice (proto.h). A full CRL of a million entries is 40 MB; carried as one MQTT
 * message it holds Mosquitto's one thread for hundreds of milliseconds (reading, storing it as
 * the retained message, handing it to the plugin). Above a size the feed sends a notice
 * instead, and the plugin's worker (or crl-sync) fetches the CRL over HTTP(S) from mqpkid,
 * off the broker's thread. The notice is JSON:
 *   {"crl_ref":1, "number":N, "size":BYTES, "sha256":"HEX", "url":"https://HOST:PORT/crl/..."}
 * It is parsed as hostile (size, duplicate keys, every field); what it names is checked again
 * on the CRL itself, whose signature is what counts.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "proto.h"

int proto_crl_notice_is(const unsigned char *payload, size_t len)
{
    return len > 0 && payload[0] == '{';
}

int proto_crl_url_ok(const char *url)
{
    size_t n = url != NULL ? strlen(url) : 0;

    if (n == 0 || n > PROTO_URL_MAX ||
        (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isgraph((unsigned char)url[i]) || url[i] == '"' || url[i] == '\\')
            return 0;
    return 1;
}

int proto_crl_notice_make(int64_t number, const unsigned char *der, size_t len, const char *url,
                          char **out, size_t *out_len)
{
    unsigned char md[32];
    char hex[65];
    int n;

    *out = NULL;
    *out_len = 0;
    if (!proto_crl_url_ok(url) || len == 0 || len > PROTO_CRL_MAX_DER || number < 0)
        return -1;
    if (EVP_Digest(der, len, md, NULL, EVP_sha256(), NULL) != 1)
        return -1;
    for (size_t i = 0; i < sizeof(md); i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    if ((*out = malloc(PROTO_CRL_NOTICE_MAX)) == NULL)
        return -1;
    n = snprintf(*out, PROTO_CRL_NOTICE_MAX,
                 "{\"crl_ref\":1,\"number\":%lld,\"size\":%zu,\"sha256\":\"%s\",\"url\":\"%s\"}",
                 (long long)number, len, hex, url);
    if (n < 0 || n >= PROTO_CRL_NOTICE_MAX) {
        free(*out);
        *out = NULL;
        return -1;
    }
    *out_len = (size_t)n;
    return 0;
}

int proto_crl_notice_parse(const unsigned char *payload, size_t len, struct proto_crl_notice *n,
                           char *why, size_t why_len)
{
    json_t *v = NULL;
    json_int_t version = 0, number = -1, size = -1;
    const char *sha = NULL, *url = NULL;
    int rc = -1;

    memset(n, 0, sizeof(*n));
    if (len == 0 || len > PROTO_CRL_NOTICE_MAX) {
        snprintf(why, why_len, "CRL notice of %zu bytes (at most %d)", len, PROTO_CRL_NOTICE_MAX);
        return -1;
    }
    v = json_loadb((const char *)payload, len, JSON_REJECT_DUPLICATES, NULL);
    if (v == NULL || json_object_size(v) != 5 ||
        json_unpack(v, "{s:I, s:I, s:I, s:s, s:s}", "crl_ref", &version, "number", &number, "size",
                    &size, "sha256", &sha, "url", &url) != 0) {
        snprintf(why, why_len, "CRL notice: not {crl_ref, number, size, sha256, url}");
        goto out;
    }
    if (version != 1) {
        snprintf(why, why_len, "CRL notice version %lld (this broker reads 1)", (long long)version);
        goto out;
    }
    if (number < 0 || size <= 0 || (uint64_t)size > PROTO_CRL_MAX_DER) {
        snprintf(why, why_len, "CRL notice: number %lld or size %lld out of range",
                 (long long)number, (long long)size);
        goto out;
    }
    if (strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64) {
        snprintf(why, why_len, "CRL notice: sha256 is not 64 lower-case hex digits");
        goto out;
    }
    if (!proto_crl_url_ok(url)) {
        snprintf(why, why_len, "CRL notice: url is not an http(s) URL of at most %d characters",
                 PROTO_URL_MAX);
        goto out;
    }
    for (int i = 0; i < 32; i++) {
        unsigned int b;
        if (sscanf(sha + 2 * i, "%2x", &b) != 1)
            goto out;
        n->sha256[i] = (unsigned char)b;
    }
    n->number = number;
    n->size = (size_t)size;
    memcpy(n->url, url, strlen(url) + 1);
    rc = 0;
out:
    json_decref(v);
    return rc;
}

int proto_crl_notice_matches(const struct proto_crl_notice *n, const unsigned char *der, size_t len)
{
    unsigned char md[32];

    return len == n->size && EVP_Digest(der, len, md, NULL, EVP_sha256(), NULL) == 1 &&
           CRYPTO_memcmp(md, n->sha256, sizeof(md)) == 0;
}

int proto_certs_pem(STACK_OF(X509) * a, STACK_OF(X509) * b, char **out, size_t *out_len)
{
    STACK_OF(X509) * both[2] = {a, b};
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n;
    int rc = -1;

    *out = NULL;
    *out_len = 0;
    if (bio == NULL)
        return -1;
    for (int k = 0; k < 2; k++)
        for (int i = 0; both[k] != NULL && i < sk_X509_num(both[k]); i++)
            if (!PEM_write_bio_X509(bio, sk_X509_value(both[k], i)))
                goto out;
    if ((n = BIO_get_mem_data(bio, &data)) <= 0 || (*out = malloc((size_t)n + 1)) == NULL)
        goto out;
    memcpy(*out, data, (size_t)n);
    (*out)[n] = '\0';
    *out_len = (size_t)n;
    rc = 0;
out:
    BIO_free(bio);
    return rc;
}
