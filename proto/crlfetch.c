/*
 * proto: fetching a CRL a notice names (proto.h; crlnotice.c says why), with libcurl: the
 * plugin's worker and `mqpki crl-sync` use it. http or https only, no redirects, the peer
 * verified against the caller's CA certificates, bounded in size and time.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "proto.h"

#define STALL_S 30 /* seconds without a byte before a transfer is given up */

struct sink {
    unsigned char *buf;
    size_t len, cap, max;
    int too_large;
};

static size_t on_data(char *data, size_t size, size_t nmemb, void *ctx)
{
    struct sink *s = ctx;
    size_t n = size * nmemb;

    if (n > s->max - s->len) {
        s->too_large = 1;
        return 0;
    }
    if (s->len + n > s->cap) {
        size_t cap = s->cap != 0 ? s->cap : 64 * 1024;
        unsigned char *p;
        while (cap < s->len + n)
            cap = cap > s->max / 2 ? s->max : cap * 2;
        if ((p = realloc(s->buf, cap)) == NULL)
            return 0;
        s->buf = p;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, n);
    s->len += n;
    return n;
}

struct progress {
    int (*cancel)(void *ctx);
    void *ctx;
};

/* Nonzero stops the transfer (the plugin stopping). */
static int on_progress(void *ctx, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct progress *p = ctx;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return p->cancel != NULL && p->cancel(p->ctx);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int proto_crl_fetch(const char *url, const char *ca_file, const void *ca_pem, size_t ca_pem_len,
                    size_t expect, long timeout_ms, int (*cancel)(void *ctx), void *cancel_ctx,
                    unsigned char **der, size_t *len, char *why, size_t why_len)
{
    struct sink s = {NULL, 0, 0, expect > 0 ? expect : PROTO_CRL_MAX_DER, 0};
    struct progress pr = {cancel, cancel_ctx};
    CURL *c;
    CURLcode rc;
    long status = 0;

    *der = NULL;
    *len = 0;
    if (!proto_crl_url_ok(url)) {
        snprintf(why, why_len, "not an http(s) URL");
        return -1;
    }
    if (s.max > PROTO_CRL_MAX_DER)
        s.max = PROTO_CRL_MAX_DER;
    pthread_once(&curl_once, curl_init);
    if ((c = curl_easy_init()) == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms < 5000 ? timeout_ms : 5000L);
    /* A server that stops sending is cut after STALL_S, a slow transfer of a large CRL not. */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)STALL_S);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s.max);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &pr);
    /* Straight to mqpkid: no proxy from the environment sees or changes the CRL. */
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    rc = CURLE_OK;
    if (ca_pem != NULL) {
        struct curl_blob blob = {(void *)ca_pem, ca_pem_len, CURL_BLOB_COPY};
        rc = curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &blob);
    } else if (ca_file != NULL) {
        rc = curl_easy_setopt(c, CURLOPT_CAINFO, ca_file);
    }
    /* Only those CA certificates, never the system's: fail closed where the TLS library
     * cannot take them. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(c, CURLOPT_CAPATH, NULL);
    if (rc != CURLE_OK) {
        snprintf(why, why_len, "%s: the TLS library cannot take the CA certificates: %s", url,
                 curl_easy_strerror(rc));
        curl_easy_cleanup(c);
        return -1;
    }
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || status != 200) {
        if (s.too_large)
            snprintf(why, why_len, "%s: more than %zu bytes", url, s.max);
        else if (rc != CURLE_OK)
            snprintf(why, why_len, "%s: %s", url, curl_easy_strerror(rc));
        else
            snprintf(why, why_len, "%s: HTTP %ld", url, status);
        free(s.buf);
        return -1;
    }
    *der = s.buf;
    *len = s.len;
    return 0;
}
