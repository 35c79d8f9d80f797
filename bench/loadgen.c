/*
 * loadgen: issuance load generator for `make bench`. THREADS threads, each with one keep-alive
 * connection (libcurl), POST certificate requests in a loop for a fixed time and record each
 * request's latency; prints certificates/s and latency percentiles as one JSON line.
 *
 * Every request carries a fresh CSR (EC P-256, generated before the clock starts), so a run
 * looks like a fleet renewing with new keys, not one key certified again and again. The same
 * CSR pool is used against each server (--csr-seed makes it reproducible per thread).
 *
 * usage: loadgen est URL CAFILE DIR THREADS SECONDS CSRS
 *          EST simplereenroll over HTTPS; DIR/tN.pem, DIR/tN.key: thread N's client identity.
 *        loadgen cfssl URL - - THREADS SECONDS CSRS
 *          cfssl's /api/v1/cfssl/sign over plain HTTP (JSON with the PEM CSR).
 * CSRS: distinct CSRs per thread (cycled). Bounded: SECONDS <= 600, THREADS <= 256.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

enum mode { MODE_EST, MODE_CFSSL };

struct worker {
    int id;
    enum mode mode;
    const char *url, *cafile, *dir;
    double seconds;
    char **bodies; /* one request body per CSR */
    size_t n_bodies;
    double *lat;
    size_t n, cap, errors;
    long last_code;
    pthread_t thread;
};

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t sink(char *p, size_t s, size_t n, void *u)
{
    (void)p;
    (void)u;
    return s * n;
}

/* One CSR for CN=name: DER base64 (EST body) or a cfssl JSON sign request. */
static char *make_body(enum mode mode, const char *name)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509_REQ *req = X509_REQ_new();
    X509_NAME *subj = X509_NAME_new();
    BIO *mem = BIO_new(BIO_s_mem()), *b64 = NULL;
    char *out = NULL, *data = NULL;
    long n;

    if (key == NULL || req == NULL || subj == NULL || mem == NULL)
        goto out;
    X509_NAME_add_entry_by_txt(subj, "CN", MBSTRING_ASC, (const unsigned char *)name, -1, -1, 0);
    X509_REQ_set_subject_name(req, subj);
    X509_REQ_set_pubkey(req, key);
    if (X509_REQ_sign(req, key, EVP_sha256()) <= 0)
        goto out;
    if (mode == MODE_EST) {
        if ((b64 = BIO_new(BIO_f_base64())) == NULL)
            goto out;
        b64 = BIO_push(b64, mem);
        if (i2d_X509_REQ_bio(b64, req) != 1 || BIO_flush(b64) != 1)
            goto out;
    } else if (PEM_write_bio_X509_REQ(mem, req) != 1) {
        goto out;
    }
    n = BIO_get_mem_data(mem, &data);
    if (n <= 0 || (out = malloc((size_t)n * 2 + 64)) == NULL)
        goto out;
    if (mode == MODE_EST) {
        memcpy(out, data, (size_t)n);
        out[n] = '\0';
    } else {
        /* JSON string: newlines escaped. */
        size_t k = 0;
        k += (size_t)sprintf(out, "{\"certificate_request\":\"");
        for (long i = 0; i < n; i++) {
            if (data[i] == '\n') {
                out[k++] = '\\';
                out[k++] = 'n';
            } else {
                out[k++] = data[i];
            }
        }
        memcpy(out + k, "\"}", 3);
    }
out:
    if (b64 != NULL)
        BIO_free_all(b64);
    else
        BIO_free(mem);
    X509_NAME_free(subj);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    return out;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    char cert[512], key[512];
    struct curl_slist *hdr = NULL;
    CURL *c = curl_easy_init();
    double end;
    size_t i = 0;
    long code = 0;

    if (c == NULL)
        return NULL;
    if (w->mode == MODE_EST) {
        snprintf(cert, sizeof(cert), "%s/t%d.pem", w->dir, w->id);
        snprintf(key, sizeof(key), "%s/t%d.key", w->dir, w->id);
        hdr = curl_slist_append(NULL, "Content-Type: application/pkcs10");
        curl_easy_setopt(c, CURLOPT_CAINFO, w->cafile);
        curl_easy_setopt(c, CURLOPT_SSLCERT, cert);
        curl_easy_setopt(c, CURLOPT_SSLKEY, key);
    } else {
        hdr = curl_slist_append(NULL, "Content-Type: application/json");
    }
    curl_easy_setopt(c, CURLOPT_URL, w->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    end = now() + w->seconds;
    while (now() < end) {
        double t0 = now();
        const char *body = w->bodies[i++ % w->n_bodies];
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
        if (curl_easy_perform(c) != CURLE_OK ||
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code != 200) {
            w->errors++;
            w->last_code = code;
            continue;
        }
        if (w->n == w->cap) {
            w->cap = w->cap ? 2 * w->cap : 4096;
            w->lat = realloc(w->lat, w->cap * sizeof(double));
            if (w->lat == NULL)
                abort();
        }
        w->lat[w->n++] = now() - t0;
    }
    curl_easy_cleanup(c);
    curl_slist_free_all(hdr);
    return NULL;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    struct worker *w;
    double *all, t0, elapsed, seconds;
    size_t total = 0, errors = 0, k = 0, per;
    long last_code = 0;
    int n;
    enum mode mode;

    if (argc != 8 || (strcmp(argv[1], "est") != 0 && strcmp(argv[1], "cfssl") != 0)) {
        fprintf(stderr, "usage: loadgen est|cfssl URL CAFILE DIR THREADS SECONDS CSRS\n");
        return 2;
    }
    mode = strcmp(argv[1], "est") == 0 ? MODE_EST : MODE_CFSSL;
    n = atoi(argv[5]);
    seconds = atof(argv[6]);
    per = (size_t)atol(argv[7]);
    if (n < 1 || n > 256 || seconds <= 0 || seconds > 600 || per < 1 || per > 100000) {
        fprintf(stderr, "loadgen: THREADS 1..256, SECONDS 0..600, CSRS 1..100000\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_ALL);
    w = calloc((size_t)n, sizeof(*w));
    if (w == NULL)
        return 1;
    for (int i = 0; i < n; i++) {
        char name[64];
        w[i].id = i;
        w[i].mode = mode;
        w[i].url = argv[2];
        w[i].cafile = argv[3];
        w[i].dir = argv[4];
        w[i].seconds = seconds;
        w[i].n_bodies = per;
        w[i].bodies = calloc(per, sizeof(char *));
        snprintf(name, sizeof(name), "t%d", i);
        for (size_t j = 0; j < per; j++)
            if (w[i].bodies == NULL || (w[i].bodies[j] = make_body(mode, name)) == NULL) {
                fprintf(stderr, "loadgen: cannot make a CSR\n");
                return 1;
            }
    }
    t0 = now();
    for (int i = 0; i < n; i++)
        pthread_create(&w[i].thread, NULL, run, &w[i]);
    for (int i = 0; i < n; i++) {
        pthread_join(w[i].thread, NULL);
        total += w[i].n;
        errors += w[i].errors;
        if (w[i].errors)
            last_code = w[i].last_code;
    }
    elapsed = now() - t0;
    all = malloc((total + 1) * sizeof(double));
    for (int i = 0; i < n; i++)
        for (size_t j = 0; j < w[i].n; j++)
            all[k++] = w[i].lat[j];
    qsort(all, total, sizeof(double), cmp);
    printf("{\"threads\": %d, \"seconds\": %.2f, \"certificates\": %zu, \"errors\": %zu, "
           "\"last_error_status\": %ld, \"per_s\": %.1f, \"p50_ms\": %.2f, \"p99_ms\": %.2f}\n",
           n, elapsed, total, errors, last_code, (double)total / elapsed,
           total ? all[total / 2] * 1000 : 0,
           total ? all[(size_t)((double)total * 0.99)] * 1000 : 0);
    for (int i = 0; i < n; i++) {
        for (size_t j = 0; j < w[i].n_bodies; j++)
            free(w[i].bodies[j]);
        free(w[i].bodies);
        free(w[i].lat);
    }
    free(all);
    free(w);
    curl_global_cleanup();
    return 0;
}
