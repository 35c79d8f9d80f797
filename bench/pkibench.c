/*
 * pkibench: the small drivers behind `make bench` that need mqpki's own modules or a precise
 * clock. One JSON line per run on stdout. Every loop is bounded in count and in time.
 *
 *   pkibench limits HOME SECONDS
 *       ECDSA P-256 through the CA's SoftHSM token (C_Sign via the hsm EVP_PKEY, 1 and 2
 *       threads) and in software (OpenSSL sign and verify, 1 and 2 threads).
 *   pkibench crl-build HOME N OUT.der
 *       builds and signs (issuing key in the token) a full CRL of N random serials.
 *   pkibench crl-load CHAIN.pem CRL.der
 *       what the broker plugin does with a CRL (split its DER, verify the signature over the TBS
 *       bytes, walk the entries into the revoked set), then
 *       the cost of one revoked-serial lookup; RSS before and after.
 *   pkibench connects HOST PORT CAFILE CERT KEY SECONDS
 *       TLS handshake + MQTT CONNECT/CONNACK + DISCONNECT in a loop, one connection at a time.
 *   pkibench revoke HOST PORT CAFILE DIR N MQPKI_BIN
 *       N subscribers DIR/rI.pem|key (client id rI) connect; each is revoked in turn with
 *       `MQPKI_BIN revoke --asset rI --reason key-compromise`; records the time from the
 *       command's exit to the broker closing that subscriber's connection.
 *   pkibench revoke-probe HOST PORT CAFILE DIR N MQPKI_BIN
 *       the same with subscribers vI, while a probe (DIR/conn.pem, client id conn:probe) publishes
 * to itself every 10 ms; adds the worst round trip seen during the revocations.
 *   pkibench clone HOST PORT HOST6 PORT6 CAFILE DIR N
 *       N devices DIR/cI.pem|key connect on HOST, then a copy of each identity on HOST6;
 *       records the time from the copy's CONNACK to the device's disconnect (detect -> hold).
 *   pkibench messages HOST PORT CAFILE CERT KEY SECONDS CLIENTID
 *       QoS 0 messages a client publishes to its own topic and receives back, per second.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "broker.h"
#include "ca.h"
#include "common.h"
#include "datadir.h"
#include "proto.h"

extern char **environ;

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* VmHWM (peak resident set) of this process, MB. */
static double peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmHWM: %lf kB", &kb) == 1)
            break;
    fclose(f);
    return kb / 1024.0;
}

static double rss_mb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;

    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2)
        res = 0;
    fclose(f);
    return (double)res * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

/* ---- limits ---- */

struct signer {
    EVP_PKEY *key;
    int verify;
    const unsigned char *sig;
    size_t sig_len;
    double seconds;
    long ops;
    pthread_t thread;
};

static void *sign_loop(void *arg)
{
    struct signer *s = arg;
    unsigned char dgst[32], sig[256];
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(s->key, NULL);
    double end = now() + s->seconds;

    memset(dgst, 7, sizeof(dgst));
    if (ctx == NULL || (s->verify ? EVP_PKEY_verify_init(ctx) : EVP_PKEY_sign_init(ctx)) != 1)
        goto out;
    /* Check the clock every 16 operations; at most 10 million operations. */
    while (s->ops < 10000000 && now() < end) {
        for (int i = 0; i < 16; i++) {
            size_t len = sizeof(sig);
            int ok = s->verify ? EVP_PKEY_verify(ctx, s->sig, s->sig_len, dgst, sizeof(dgst))
                               : EVP_PKEY_sign(ctx, sig, &len, dgst, sizeof(dgst));
            if (ok != 1)
                goto out;
            s->ops++;
        }
    }
out:
    EVP_PKEY_CTX_free(ctx);
    return NULL;
}

static double rate(EVP_PKEY *key, int verify, const unsigned char *sig, size_t sig_len, int threads,
                   double seconds)
{
    struct signer s[2];
    long ops = 0;
    double t0 = now();

    for (int i = 0; i < threads; i++) {
        memset(&s[i], 0, sizeof(s[i]));
        s[i].key = key;
        s[i].verify = verify;
        s[i].sig = sig;
        s[i].sig_len = sig_len;
        s[i].seconds = seconds;
        pthread_create(&s[i].thread, NULL, sign_loop, &s[i]);
    }
    for (int i = 0; i < threads; i++) {
        pthread_join(s[i].thread, NULL);
        ops += s[i].ops;
    }
    return (double)ops / (now() - t0);
}

static int cmd_limits(const char *home, double seconds)
{
    struct datadir *dd = NULL;
    EVP_PKEY *hkey = NULL, *skey = EVP_EC_gen("P-256");
    EVP_PKEY_CTX *ctx = NULL;
    unsigned char dgst[32], sig[128];
    size_t sig_len = sizeof(sig);
    int rc;

    /* The issuing key as mqpki opens it: in the token (run with mqpkid stopped). */
    if ((rc = datadir_open(home, DATADIR_CA, &dd)) != MQPKI_OK ||
        (hkey = datadir_ca_key(dd)) == NULL || datadir_ca_remote(dd)) {
        fprintf(stderr, "pkibench: %s\n",
                rc != MQPKI_OK ? mqpki_err_detail(rc) : "stop mqpkid: the token must be local");
        datadir_close(dd);
        return 1;
    }
    memset(dgst, 7, sizeof(dgst));
    ctx = EVP_PKEY_CTX_new(skey, NULL);
    if (ctx == NULL || EVP_PKEY_sign_init(ctx) != 1 ||
        EVP_PKEY_sign(ctx, sig, &sig_len, dgst, sizeof(dgst)) != 1)
        return 1;
    printf("{\"softhsm_sign_per_s\": %.0f, \"softhsm_sign_2t_per_s\": %.0f, "
           "\"openssl_sign_per_s\": %.0f, \"openssl_verify_per_s\": %.0f, "
           "\"openssl_verify_2t_per_s\": %.0f}\n",
           rate(hkey, 0, NULL, 0, 1, seconds), rate(hkey, 0, NULL, 0, 2, seconds),
           rate(skey, 0, NULL, 0, 1, seconds), rate(skey, 1, sig, sig_len, 1, seconds),
           rate(skey, 1, sig, sig_len, 2, seconds));
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(skey);
    datadir_close(dd);
    return 0;
}

/* ---- CRL ---- */

static int cmd_crl_build(const char *home, long n, const char *out)
{
    struct datadir *dd = NULL;
    struct ca_crl_entry *e = calloc((size_t)n + 1, sizeof(*e));
    char *hex = malloc((size_t)n * 33 + 1);
    unsigned char *der = NULL, raw[16];
    size_t der_len = 0;
    int64_t t = (int64_t)time(NULL);
    double t0, t1;
    FILE *f;
    int rc;

    if (e == NULL || hex == NULL || n < 1 || n > 5000000)
        return 1;
    if ((rc = datadir_open(home, DATADIR_CA, &dd)) != MQPKI_OK) {
        fprintf(stderr, "pkibench: %s\n", mqpki_err_detail(rc));
        return 1;
    }
    /* mqpki serials: 16 random bytes, top bit clear. */
    for (long i = 0; i < n; i++) {
        RAND_bytes(raw, sizeof(raw));
        raw[0] = (unsigned char)((raw[0] & 0x7f) | 0x01);
        for (int k = 0; k < 16; k++)
            sprintf(hex + i * 33 + k * 2, "%02X", raw[k]);
        e[i].serial_hex = hex + i * 33;
        e[i].revoked_at = t - (n - i);
        e[i].reason = (i % 4) == 0 ? 1 : 0;
    }
    /* What mqpkid's publisher does for a full CRL (lifecycle/publish.c): the signed DER, never
     * an X509_CRL of a million entries (ca_crl_build parses it back, for callers that want
     * one). */
    t0 = now();
    rc = ca_crl_encode(datadir_ca(dd), 1000000 + n, -1, e, (size_t)n, t, t + 86400, &der, &der_len);
    t1 = now();
    if (rc != MQPKI_OK) {
        fprintf(stderr, "pkibench: %s\n", mqpki_err_detail(rc));
        return 1;
    }
    if ((f = fopen(out, "wb")) == NULL || fwrite(der, 1, der_len, f) != der_len || fclose(f) != 0)
        return 1;
    printf("{\"entries\": %ld, \"build_s\": %.3f, \"der_bytes\": %zu}\n", n, t1 - t0, der_len);
    free(der);
    free(e);
    free(hex);
    datadir_close(dd);
    return 0;
}

/* Up to 4096 serial keys of a CRL, for the lookup figure's hits. */
struct some_keys {
    unsigned char k[4096][PROTO_SERIAL_KEY_LEN];
    size_t n;
};

static int keep_key(const unsigned char key[PROTO_SERIAL_KEY_LEN], int remove, void *ctx)
{
    struct some_keys *s = ctx;

    (void)remove;
    if (s->n < 4096)
        memcpy(s->k[s->n++], key, PROTO_SERIAL_KEY_LEN);
    return 0;
}

static int cmd_crl_load(const char *chain, const char *path)
{
    STACK_OF(X509) *cas = NULL;
    struct proto_crl_der d;
    struct proto_crl_info info;
    struct revset *empty = revset_new_empty(), *rs = NULL;
    struct some_keys *some = calloc(1, sizeof(*some));
    unsigned char *der = NULL, key[PROTO_SERIAL_KEY_LEN];
    EVP_PKEY *pub = NULL;
    size_t len = 0;
    char why[256];
    double rss0, rss1, rss_untrimmed, t0, t1, t2, t3;
    const long lookups = 2000000;
    long hits = 0;
    int rc;

    if (some == NULL || proto_crl_load_cas(chain, &cas, why, sizeof(why)) != 0) {
        fprintf(stderr, "pkibench: %s\n", why);
        return 1;
    }
    rss0 = rss_mb();
    t0 = now();
    /* As the plugin does (broker/plugin.c apply_crl, broker/crlload.c): read the DER, split it,
     * check the header, verify the signature over the TBS bytes, walk the entries into the set.
     * No X509_CRL of the entries is built. */
    if ((rc = mqpki_file_read(path, 512u * 1024 * 1024, &der, &len)) != MQPKI_OK)
        return 1;
    if (proto_crl_der_split(der, len, &d, why, sizeof(why)) != 0 ||
        proto_crl_der_check(&d, cas, &pub, &info, why, sizeof(why)) != 0 ||
        proto_crl_der_verify_sig(&d, pub, why, sizeof(why)) != 0) {
        fprintf(stderr, "pkibench: %s\n", why);
        return 1;
    }
    t1 = now();
    {
        struct revpart *part = NULL;
        if (revpart_from_der(&d, &info, &part, why, sizeof(why)) != 0 ||
            revset_with(empty, part, &rs) != 0) {
            fprintf(stderr, "pkibench: %s\n", why);
            return 1;
        }
    }
    t2 = now();
    (void)proto_crl_der_entries(&d, keep_key, some, NULL, why, sizeof(why));
    /* Lookups as connects do them: half revoked serials, half not. */
    t3 = now();
    for (long i = 0; i < lookups; i++) {
        if (i % 2 == 0 && some->n > 0) {
            memcpy(key, some->k[(size_t)(i / 2) % some->n], sizeof(key));
        } else {
            memset(key, 0, sizeof(key));
            memcpy(key, &i, sizeof(i));
            key[15] = 0x55;
        }
        hits += revset_is_revoked(rs, info.issuer, key);
    }
    t3 = now() - t3;
    /* As the plugin does: the DER is freed once the set is built. */
    proto_crl_der_clear(&d);
    free(der);
    rss_untrimmed = rss_mb();
    malloc_trim(0);
    rss1 = rss_mb();
    printf("{\"entries\": %zu, \"der_bytes\": %zu, \"parse_verify_s\": %.3f, "
           "\"index_s\": %.3f, \"load_s\": %.3f, \"rss_before_mb\": %.1f, "
           "\"rss_after_mb\": %.1f, \"rss_added_mb\": %.1f, \"peak_rss_mb\": %.1f, "
           "\"rss_untrimmed_mb\": %.1f, \"lookup_ns\": %.0f, \"lookup_hits\": %ld}\n",
           revset_count(rs), len, t1 - t0, t2 - t1, t2 - t0, rss0, rss1, rss1 - rss0, peak_rss_mb(),
           rss_untrimmed, t3 / (double)lookups * 1e9, hits);
    revset_free(rs);
    revset_free(empty);
    free(some);
    sk_X509_pop_free(cas, X509_free);
    return 0;
}

/* ---- broker connects ---- */

static int read_full(SSL *ssl, unsigned char *buf, int n)
{
    int got = 0;

    while (got < n) {
        int r = SSL_read(ssl, buf + got, n - got);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

/* One TLS connection, MQTT 3.1.1 CONNECT, CONNACK accepted, DISCONNECT. 0 on success. */
static int one_connect(SSL_CTX *ctx, const struct sockaddr_in *sa, const char *client_id)
{
    unsigned char pkt[128], ack[4];
    size_t idlen = strlen(client_id), n = 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1, rc = -1;
    SSL *ssl = NULL;

    if (fd < 0 || idlen > 64)
        goto out;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0)
        goto out;
    if ((ssl = SSL_new(ctx)) == NULL || SSL_set_fd(ssl, fd) != 1 || SSL_connect(ssl) != 1)
        goto out;
    pkt[n++] = 0x10;
    pkt[n++] = (unsigned char)(10 + 2 + idlen);
    memcpy(pkt + n, "\x00\x04MQTT\x04\x02\x00\x3c", 10); /* clean session, keepalive 60 */
    n += 10;
    pkt[n++] = 0;
    pkt[n++] = (unsigned char)idlen;
    memcpy(pkt + n, client_id, idlen);
    n += idlen;
    if (SSL_write(ssl, pkt, (int)n) != (int)n || read_full(ssl, ack, 4) != 0 || ack[0] != 0x20 ||
        ack[3] != 0)
        goto out;
    if (SSL_write(ssl, "\xe0\x00", 2) != 2)
        goto out;
    SSL_shutdown(ssl);
    rc = 0;
out:
    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    return rc;
}

static int cmd_connects(const char *host, int port, const char *cafile, const char *cert,
                        const char *key, double seconds, const char *client_id)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    struct sockaddr_in sa;
    long ok = 0, fail = 0;
    double t0, end;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (ctx == NULL || SSL_CTX_load_verify_locations(ctx, cafile, NULL) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        fprintf(stderr, "pkibench: cannot load the client identity\n");
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    /* Every connect is a full handshake, as a fleet reconnecting after a broker restart. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    t0 = now();
    end = t0 + seconds;
    while (now() < end && ok + fail < 1000000 && fail < 1000) {
        if (one_connect(ctx, &sa, client_id) == 0)
            ok++;
        else
            fail++;
    }
    printf("{\"connects\": %ld, \"failures\": %ld, \"per_s\": %.1f}\n", ok, fail,
           (double)ok / (now() - t0));
    SSL_CTX_free(ctx);
    return fail > ok ? 1 : 0;
}

/* ---- revocation -> disconnect ---- */

struct sub {
    struct mosquitto *m;
    char id[32];
    atomic_int connected;
    _Atomic double disconnected_at;
};

static void on_connect(struct mosquitto *m, void *obj, int rc)
{
    struct sub *s = obj;

    if (rc == 0) {
        char topic[64];
        snprintf(topic, sizeof(topic), "fleet/%s/#", s->id);
        mosquitto_subscribe(m, NULL, topic, 0);
        atomic_store(&s->connected, 1);
    }
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc)
{
    struct sub *s = obj;
    double zero = 0;

    (void)m;
    (void)rc;
    atomic_compare_exchange_strong(&s->disconnected_at, &zero, now());
}

/* The probe: a client that publishes to itself every 10 ms and times each round trip through
 * the broker, to see whether CRL work on the broker's thread holds client traffic up. */
struct probe {
    struct mosquitto *m;
    atomic_int connected, stop, measuring;
    _Atomic double worst_ms;
    atomic_long sent, received;
    pthread_t thread;
};

static void probe_on_connect(struct mosquitto *m, void *obj, int rc)
{
    struct probe *p = obj;

    if (rc == 0) {
        mosquitto_subscribe(m, NULL, "fleet/conn/probe", 0);
        atomic_store(&p->connected, 1);
    }
}

static void probe_on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    struct probe *p = obj;
    double sent, rtt, worst;

    (void)m;
    if (msg->payloadlen != (int)sizeof(sent) || !atomic_load(&p->measuring))
        return;
    memcpy(&sent, msg->payload, sizeof(sent));
    rtt = (now() - sent) * 1000;
    atomic_fetch_add(&p->received, 1);
    worst = atomic_load(&p->worst_ms);
    while (rtt > worst && !atomic_compare_exchange_weak(&p->worst_ms, &worst, rtt))
        ;
}

static void *probe_loop(void *arg)
{
    struct probe *p = arg;

    /* Bounded: at most 10 minutes of probes. */
    for (long i = 0; i < 60000 && !atomic_load(&p->stop); i++) {
        double t = now();
        if (mosquitto_publish(p->m, NULL, "fleet/conn/probe", sizeof(t), &t, 0, false) == 0)
            atomic_fetch_add(&p->sent, 1);
        usleep(10000);
    }
    return NULL;
}

static int probe_start(struct probe *p, const char *host, int port, const char *cafile,
                       const char *dir)
{
    char cert[512], key[512];
    double end;

    snprintf(cert, sizeof(cert), "%s/conn.pem", dir);
    snprintf(key, sizeof(key), "%s/conn.key", dir);
    p->m = mosquitto_new("conn:probe", true, p);
    if (p->m == NULL || mosquitto_tls_set(p->m, cafile, NULL, cert, key, NULL) != 0)
        return -1;
    mosquitto_connect_callback_set(p->m, probe_on_connect);
    mosquitto_message_callback_set(p->m, probe_on_message);
    if (mosquitto_connect(p->m, host, port, 60) != 0 || mosquitto_loop_start(p->m) != 0)
        return -1;
    end = now() + 10;
    while (!atomic_load(&p->connected) && now() < end)
        usleep(1000);
    if (!atomic_load(&p->connected) || pthread_create(&p->thread, NULL, probe_loop, p) != 0)
        return -1;
    return 0;
}

static void probe_stop(struct probe *p)
{
    atomic_store(&p->stop, 1);
    pthread_join(p->thread, NULL);
    mosquitto_disconnect(p->m);
    mosquitto_loop_stop(p->m, true);
    mosquitto_destroy(p->m);
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmd_revoke(const char *host, int port, const char *cafile, const char *dir, int n,
                      const char *mqpki, const char *prefix, int with_probe)
{
    struct probe probe;
    struct sub *subs = calloc((size_t)n, sizeof(*subs));
    double *lat = calloc((size_t)n, sizeof(double)), *lat_start = calloc((size_t)n, sizeof(double));
    double sum_cmd = 0;
    int got = 0, missed = 0;
    posix_spawn_file_actions_t quiet;

    memset(&probe, 0, sizeof(probe));
    if (subs == NULL || lat == NULL || lat_start == NULL || n < 1 || n > 1000)
        return 1;
    mosquitto_lib_init();
    if (with_probe && probe_start(&probe, host, port, cafile, dir) != 0) {
        fprintf(stderr, "pkibench: the probe cannot connect\n");
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char cert[512], key[512];
        struct sub *s = &subs[i];
        snprintf(s->id, sizeof(s->id), "%s%d", prefix, i);
        snprintf(cert, sizeof(cert), "%s/%s.pem", dir, s->id);
        snprintf(key, sizeof(key), "%s/%s.key", dir, s->id);
        s->m = mosquitto_new(s->id, true, s);
        if (s->m == NULL || mosquitto_tls_set(s->m, cafile, NULL, cert, key, NULL) != 0)
            return 1;
        mosquitto_connect_callback_set(s->m, on_connect);
        mosquitto_disconnect_callback_set(s->m, on_disconnect);
        /* Reconnect attempts would be refused anyway; keep them rare. */
        mosquitto_reconnect_delay_set(s->m, 30, 30, false);
        if (mosquitto_connect(s->m, host, port, 60) != 0 || mosquitto_loop_start(s->m) != 0) {
            fprintf(stderr, "pkibench: %s cannot connect\n", s->id);
            return 1;
        }
    }
    for (int i = 0; i < n; i++) {
        double end = now() + 10;
        while (!atomic_load(&subs[i].connected) && now() < end)
            usleep(1000);
        if (!atomic_load(&subs[i].connected)) {
            fprintf(stderr, "pkibench: %s did not connect\n", subs[i].id);
            return 1;
        }
    }
    usleep(300000); /* every subscription settled */
    /* The command's report goes to /dev/null: stdout carries this program's JSON. */
    posix_spawn_file_actions_init(&quiet);
    posix_spawn_file_actions_addopen(&quiet, 1, "/dev/null", O_WRONLY, 0);
    atomic_store(&probe.measuring, 1);
    for (int i = 0; i < n; i++) {
        char asset[32];
        char *argv[] = {(char *)mqpki, "revoke",         "--asset", asset,
                        "--reason",    "key-compromise", NULL};
        pid_t pid;
        int status = 0;
        double t0, t1, end;

        snprintf(asset, sizeof(asset), "%s", subs[i].id);
        t0 = now();
        if (posix_spawn(&pid, mqpki, &quiet, NULL, argv, environ) != 0 ||
            waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "pkibench: mqpki revoke --asset %s failed\n", asset);
            return 1;
        }
        t1 = now();
        sum_cmd += t1 - t0;
        end = t1 + 5;
        while (atomic_load(&subs[i].disconnected_at) == 0 && now() < end)
            usleep(200);
        if (atomic_load(&subs[i].disconnected_at) == 0) {
            missed++;
            continue;
        }
        lat[got] = (atomic_load(&subs[i].disconnected_at) - t1) * 1000;
        lat_start[got] = (atomic_load(&subs[i].disconnected_at) - t0) * 1000;
        got++;
        /* With the probe, revocations a second apart: long enough for mqpkid's schedule to
         * re-sign the full CRL in between (bench/revoke-big.sh sets crl_full_after). */
        usleep(with_probe ? 1000000 : 20000);
    }
    if (with_probe) {
        usleep(500000); /* the last revocation's CRL work, if any, is seen by the probe */
        atomic_store(&probe.measuring, 0);
        probe_stop(&probe);
    }
    qsort(lat, (size_t)got, sizeof(double), cmpd);
    qsort(lat_start, (size_t)got, sizeof(double), cmpd);
    printf("{\"revocations\": %d, \"disconnected\": %d, \"missed\": %d, \"p50_ms\": %.1f, "
           "\"p99_ms\": %.1f, \"max_ms\": %.1f, \"min_ms\": %.1f, \"from_start_p50_ms\": %.1f, "
           "\"from_start_p99_ms\": %.1f, \"revoke_cmd_mean_ms\": %.1f, \"probe_sent\": %ld, "
           "\"probe_received\": %ld, \"worst_rtt_ms\": %.1f}\n",
           n, got, missed, got ? lat[got / 2] : 0, got ? lat[(int)((got - 1) * 0.99 + 0.5)] : 0,
           got ? lat[got - 1] : 0, got ? lat[0] : 0, got ? lat_start[got / 2] : 0,
           got ? lat_start[(int)((got - 1) * 0.99 + 0.5)] : 0, sum_cmd / n * 1000,
           atomic_load(&probe.sent), atomic_load(&probe.received), atomic_load(&probe.worst_ms));
    for (int i = 0; i < n; i++) {
        mosquitto_disconnect(subs[i].m);
        mosquitto_loop_stop(subs[i].m, true);
        mosquitto_destroy(subs[i].m);
    }
    mosquitto_lib_cleanup();
    posix_spawn_file_actions_destroy(&quiet);
    free(subs);
    free(lat);
    free(lat_start);
    return missed > 0 ? 1 : 0;
}

/* ---- detect: cloned identity -> disconnect ---- */

/* Connects a subscriber of fleet/ASSET/# as client id, waits for its CONNACK. */
static struct mosquitto *sub_connect(struct sub *s, const char *client_id, const char *host,
                                     int port, const char *cafile, const char *cert,
                                     const char *key, int insecure)
{
    struct mosquitto *m = mosquitto_new(client_id, true, s);
    double end = now() + 10;

    if (m == NULL || mosquitto_tls_set(m, cafile, NULL, cert, key, NULL) != 0 ||
        (insecure && mosquitto_tls_insecure_set(m, true) != 0))
        goto fail;
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_disconnect_callback_set(m, on_disconnect);
    mosquitto_reconnect_delay_set(m, 30, 30, false);
    if (mosquitto_connect(m, host, port, 60) != 0 || mosquitto_loop_start(m) != 0)
        goto fail;
    while (!atomic_load(&s->connected) && now() < end)
        usleep(500);
    if (atomic_load(&s->connected))
        return m;
    mosquitto_loop_stop(m, true);
fail:
    mosquitto_destroy(m);
    return NULL;
}

/*
 * pkibench clone HOST PORT HOST6 PORT6 CAFILE DIR N: for each of N identities DIR/cI.pem|key,
 * the device (client id cI) connects on HOST, then a copy of its identity (client id cI:x)
 * on HOST6 (another address); mqpkid's cloned_identity rule holds the certificate and the
 * broker cuts both off. Records the time from the clone's CONNACK to the device's disconnect.
 */
static int cmd_clone(const char *host, int port, const char *host6, int port6, const char *cafile,
                     const char *dir, int n)
{
    double *lat = calloc((size_t)n, sizeof(double));
    int got = 0, missed = 0;

    if (lat == NULL || n < 1 || n > 1000)
        return 1;
    mosquitto_lib_init();
    for (int i = 0; i < n; i++) {
        struct sub dev, clone;
        struct mosquitto *md = NULL, *mc = NULL;
        char cert[512], key[512], cid[40];
        double t0, end;

        memset(&dev, 0, sizeof(dev));
        memset(&clone, 0, sizeof(clone));
        snprintf(dev.id, sizeof(dev.id), "c%d", i);
        snprintf(clone.id, sizeof(clone.id), "c%d", i);
        snprintf(cert, sizeof(cert), "%s/c%d.pem", dir, i);
        snprintf(key, sizeof(key), "%s/c%d.key", dir, i);
        snprintf(cid, sizeof(cid), "c%d:x", i);
        if ((md = sub_connect(&dev, dev.id, host, port, cafile, cert, key, 0)) == NULL) {
            fprintf(stderr, "pkibench: c%d cannot connect\n", i);
            return 1;
        }
        mc = sub_connect(&clone, cid, host6, port6, cafile, cert, key, 1);
        t0 = now();
        end = t0 + 5;
        while (mc != NULL && atomic_load(&dev.disconnected_at) == 0 && now() < end)
            usleep(200);
        if (mc == NULL || atomic_load(&dev.disconnected_at) == 0)
            missed++;
        else
            lat[got++] = (atomic_load(&dev.disconnected_at) - t0) * 1000;
        for (struct mosquitto *m = md; m != NULL; m = m == md ? mc : NULL) {
            mosquitto_disconnect(m);
            mosquitto_loop_stop(m, true);
            mosquitto_destroy(m);
        }
    }
    qsort(lat, (size_t)got, sizeof(double), cmpd);
    printf("{\"clones\": %d, \"disconnected\": %d, \"missed\": %d, \"p50_ms\": %.1f, "
           "\"p99_ms\": %.1f, \"max_ms\": %.1f, \"min_ms\": %.1f}\n",
           n, got, missed, got ? lat[got / 2] : 0, got ? lat[(int)((got - 1) * 0.99 + 0.5)] : 0,
           got ? lat[got - 1] : 0, got ? lat[0] : 0);
    mosquitto_lib_cleanup();
    free(lat);
    return missed > 0 ? 1 : 0;
}

/* ---- messages through the broker ---- */

struct msgs {
    struct sub s; /* first: the connect callbacks see the same object */
    atomic_long received;
};

static void on_msg(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    (void)m;
    (void)msg;
    atomic_fetch_add(&((struct msgs *)obj)->received, 1);
}

/*
 * pkibench messages HOST PORT CAFILE CERT KEY SECONDS CLIENTID: one client subscribes to its
 * own fleet/CLIENTID/# and publishes 64-byte QoS 0 messages there, at most 100 in flight;
 * messages received per second (each one a publish and a delivery through the plugin).
 */
static int cmd_messages(const char *host, int port, const char *cafile, const char *cert,
                        const char *key, double seconds, const char *client_id)
{
    struct msgs st;
    struct mosquitto *m;
    char topic[96], payload[64];
    long sent = 0;
    double t0, end;

    memset(&st, 0, sizeof(st));
    memset(payload, 'x', sizeof(payload));
    snprintf(st.s.id, sizeof(st.s.id), "%s", client_id);
    mosquitto_lib_init();
    if ((m = sub_connect(&st.s, client_id, host, port, cafile, cert, key, 0)) == NULL) {
        fprintf(stderr, "pkibench: %s cannot connect\n", client_id);
        return 1;
    }
    mosquitto_message_callback_set(m, on_msg);
    usleep(200000); /* the subscription settled */
    snprintf(topic, sizeof(topic), "fleet/%s/bench", client_id);
    t0 = now();
    end = t0 + seconds;
    while (now() < end) {
        if (sent - atomic_load(&st.received) >= 100) {
            usleep(50);
            continue;
        }
        if (mosquitto_publish(m, NULL, topic, sizeof(payload), payload, 0, false) == 0)
            sent++;
    }
    printf("{\"sent\": %ld, \"received\": %ld, \"per_s\": %.1f}\n", sent, atomic_load(&st.received),
           (double)atomic_load(&st.received) / (now() - t0));
    mosquitto_disconnect(m);
    mosquitto_loop_stop(m, true);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "";

    if (strcmp(cmd, "limits") == 0 && argc == 4)
        return cmd_limits(argv[2], atof(argv[3]));
    if (strcmp(cmd, "crl-build") == 0 && argc == 5)
        return cmd_crl_build(argv[2], atol(argv[3]), argv[4]);
    if (strcmp(cmd, "crl-load") == 0 && argc == 4)
        return cmd_crl_load(argv[2], argv[3]);
    if (strcmp(cmd, "connects") == 0 && argc == 9)
        return cmd_connects(argv[2], atoi(argv[3]), argv[4], argv[5], argv[6], atof(argv[7]),
                            argv[8]);
    if (strcmp(cmd, "revoke") == 0 && argc == 8)
        return cmd_revoke(argv[2], atoi(argv[3]), argv[4], argv[5], atoi(argv[6]), argv[7], "r", 0);
    /* The same with a probe publisher (DIR/conn.pem) and subscribers DIR/vI.pem. */
    if (strcmp(cmd, "revoke-probe") == 0 && argc == 8)
        return cmd_revoke(argv[2], atoi(argv[3]), argv[4], argv[5], atoi(argv[6]), argv[7], "v", 1);
    if (strcmp(cmd, "clone") == 0 && argc == 9)
        return cmd_clone(argv[2], atoi(argv[3]), argv[4], atoi(argv[5]), argv[6], argv[7],
                         atoi(argv[8]));
    if (strcmp(cmd, "messages") == 0 && argc == 9)
        return cmd_messages(argv[2], atoi(argv[3]), argv[4], argv[5], argv[6], atof(argv[7]),
                            argv[8]);
    fprintf(stderr, "usage: pkibench limits HOME SECONDS | crl-build HOME N OUT | "
                    "crl-load CHAIN CRL | connects HOST PORT CAFILE CERT KEY SECONDS CLIENTID | "
                    "revoke[-probe] HOST PORT CAFILE DIR N MQPKI_BIN | "
                    "clone HOST PORT HOST6 PORT6 CAFILE DIR N | "
                    "messages HOST PORT CAFILE CERT KEY SECONDS CLIENTID\n");
    return 2;
}
