/*
 * cli: crl-sync, the CRL feed for brokers other than the bundled one (docs/broker.md): it follows
 * a bundled broker's retained CRL topics, verifies every CRL like the plugin does and writes
 * the ones in force to a file such brokers read.
 *
 * After an issuing CA rollover (docs/operations.md) the CRLs in force are one per signing key:
 * the current key's (mqpki/v1/crl/full, /delta) and each older live generation's copy of it
 * (mqpki/v1/crl/generation/N/...). They are held by signer (authority key identifier), each
 * against rollback on its own, and written together, the current key's first; a signer leaves
 * the file when the issuing CA list (mqpki/v1/ca/issuers) no longer trusts it.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "cli.h"
#include "common.h"
#include "proto.h"

#define SYNC_SLOTS    16  /* signing keys held at once */
#define SYNC_QUIET_MS 500 /* --once: the retained burst is over after this long without a CRL */

/* The CRLs of one signing key: full [0] and delta [1], number and PEM. */
struct sync_slot {
    unsigned char akid[PROTO_AKID_MAX];
    size_t akid_len;
    int64_t held[2];
    char *pem[2];
};

struct sync {
    STACK_OF(X509) * cas;   /* CRL signers: --ca's issuing CAs, then PROTO_TOPIC_CA_ISSUERS' */
    STACK_OF(X509) * roots; /* --ca's roots: what certifies a new issuing CA */
    const char *out, *delta_out, *exec;
    struct sync_slot slot[SYNC_SLOTS];
    size_t n_slots;
    size_t current;     /* the slot of the key on the main topics (written first) */
    double last_msg_ms; /* when the last CRL came */
    int once, done, connected, failed;
};

static volatile sig_atomic_t sync_stop;

static void on_signal(int sig)
{
    (void)sig;
    sync_stop = 1;
}

static double mono_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

static void run_exec(const char *cmd)
{
    pid_t pid;
    int status = 0;

    fflush(NULL);
    if ((pid = fork()) < 0) {
        fprintf(stderr, "crl-sync: cannot run --exec: %s\n", strerror(errno));
        return;
    }
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        printf("  --exec done\n");
    else
        printf("  --exec failed (status %d)\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
}

/* A CRL as PEM (most brokers' crlfile wants PEM), heap. */
static char *crl_pem(X509_CRL *crl)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL, *pem = NULL;
    long len;

    if (bio != NULL && PEM_write_bio_X509_CRL(bio, crl) == 1 &&
        (len = BIO_get_mem_data(bio, &data)) > 0 && (pem = malloc((size_t)len + 1)) != NULL) {
        memcpy(pem, data, (size_t)len);
        pem[len] = '\0';
    }
    BIO_free(bio);
    return pem;
}

/* The slot of the key that signed a CRL (info->akid), made when new; NULL when full. */
static struct sync_slot *slot_for(struct sync *s, const struct proto_crl_info *info)
{
    struct sync_slot *sl;

    for (size_t i = 0; i < s->n_slots; i++)
        if (s->slot[i].akid_len == info->akid_len &&
            memcmp(s->slot[i].akid, info->akid, info->akid_len) == 0)
            return &s->slot[i];
    if (s->n_slots == SYNC_SLOTS)
        return NULL;
    sl = &s->slot[s->n_slots++];
    memset(sl, 0, sizeof(*sl));
    memcpy(sl->akid, info->akid, info->akid_len);
    sl->akid_len = info->akid_len;
    sl->held[0] = sl->held[1] = -1;
    return sl;
}

/* The held CRLs of one kind, the current key's first, to the user's path: a regular file
 * atomically, a FIFO or device in place (mqpki_file_write_user). */
static int write_held(struct sync *s, int delta)
{
    const char *path = delta ? s->delta_out : s->out;
    size_t len = 0, n;
    char *all = NULL, *grown;
    int rc;

    for (size_t k = 0; k < s->n_slots; k++) {
        size_t i = k == 0 ? s->current : (k == s->current ? 0 : k);
        if (s->slot[i].pem[delta] == NULL)
            continue;
        n = strlen(s->slot[i].pem[delta]);
        if ((grown = realloc(all, len + n + 1)) == NULL) {
            free(all);
            return mqpki_fail(MQPKI_ERR_NOMEM, "out of memory");
        }
        all = grown;
        memcpy(all + len, s->slot[i].pem[delta], n);
        len += n;
    }
    /* Nothing left (every key dropped): an empty file, never CRLs of a key no longer trusted. */
    rc = mqpki_file_write_user(path, all != NULL ? all : "", len, 0644);
    free(all);
    return rc;
}

/* A CRL from the main topics (main 1) or an older generation's topic, kind delta: verified,
 * then held by its signer and written with the others. */
static void sync_crl(struct sync *s, const unsigned char *der, size_t len, int delta, int main);

/*
 * Full CRLs announced by a notice are fetched from their URL on a thread of their own (the peer
 * checked with --ca's roots and the issuing CAs trusted when the notice came), so that deltas
 * (revocations) and the MQTT keepalive never wait for a transfer. One want per full CRL topic:
 * a newer notice replaces the one pending and cuts its fetch short, and anything else on the
 * topic (a CRL inline, the topic cleared at a retirement) drops it. A failed or stale fetch is
 * tried again with backoff (0.5 s doubling to 30 s) for as long as the notice is the newest; a
 * server that stops sending is cut after 30 s (proto_crl_fetch). The main loop takes what was
 * fetched and checks it like a CRL from the topic; --once waits for every want.
 */
#define WANT_MAX    SYNC_SLOTS
#define FETCH_MS    300000 /* one transfer's deadline (a 40 MB CRL over a slow link) */
#define BACKOFF_MAX 30000

struct want {
    int used, main, attempt;
    char topic[128];
    struct proto_crl_notice n;
    char *ca_pem;
    size_t ca_pem_len;
    uint64_t gen;      /* bumped by every notice taken for this topic, and when it is dropped */
    double not_before; /* mono_ms of the next attempt */
};

struct fetcher {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
    int started, stop;
    struct want w[WANT_MAX];
    int busy;          /* the index being fetched, or -1 */
    uint64_t busy_gen; /* its gen when the fetch began */
    /* A finished fetch for the main loop: the want's index and gen, and the bytes. */
    int ready, ready_idx;
    uint64_t ready_gen;
    unsigned char *der;
    size_t der_len;
    char why[256];
};

/* cond is set up by fetcher_start, on the monotonic clock. */
static struct fetcher fetcher = {.lock = PTHREAD_MUTEX_INITIALIZER, .busy = -1};

static int fetch_cancelled(void *ctx)
{
    struct fetcher *f = ctx;
    int stop;

    pthread_mutex_lock(&f->lock);
    stop = f->stop || (f->busy >= 0 && f->w[f->busy].gen != f->busy_gen);
    pthread_mutex_unlock(&f->lock);
    return stop;
}

static void *fetch_thread(void *arg)
{
    struct fetcher *f = arg;

    pthread_mutex_lock(&f->lock);
    while (!f->stop) {
        struct proto_crl_notice n;
        char *pem = NULL, why[256] = "";
        unsigned char *der = NULL;
        size_t pem_len = 0, der_len = 0;
        double now = mono_ms(), next = 0;
        int pick = -1, rc;

        if (!f->ready)
            for (int i = 0; i < WANT_MAX; i++)
                if (f->w[i].used && (pick < 0 || f->w[i].not_before < f->w[pick].not_before))
                    pick = i;
        if (pick >= 0 && f->w[pick].not_before > now)
            next = f->w[pick].not_before;
        if (pick < 0 || next > 0) {
            struct timespec until;
            double wait_ms = next > 0 ? next - now : 1000;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += (time_t)(wait_ms / 1000);
            until.tv_nsec += (long)((int64_t)wait_ms % 1000) * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&f->cond, &f->lock, &until);
            continue;
        }
        n = f->w[pick].n;
        if ((pem = malloc(f->w[pick].ca_pem_len + 1)) != NULL) {
            memcpy(pem, f->w[pick].ca_pem, f->w[pick].ca_pem_len + 1);
            pem_len = f->w[pick].ca_pem_len;
        }
        f->busy = pick;
        f->busy_gen = f->w[pick].gen;
        pthread_mutex_unlock(&f->lock);
        rc = pem == NULL ? -1
                         : proto_crl_fetch(n.url, NULL, pem, pem_len, 0, FETCH_MS, fetch_cancelled,
                                           f, &der, &der_len, why, sizeof(why));
        if (pem == NULL)
            snprintf(why, sizeof(why), "out of memory");
        free(pem);
        pthread_mutex_lock(&f->lock);
        f->busy = -1;
        if (f->stop || !f->w[pick].used || f->w[pick].gen != f->busy_gen) {
            free(der); /* a newer notice came meanwhile: its own fetch follows */
            continue;
        }
        f->ready = 1;
        f->ready_idx = pick;
        f->ready_gen = f->busy_gen;
        f->der = rc == 0 ? der : NULL;
        f->der_len = rc == 0 ? der_len : 0;
        if (rc != 0)
            free(der);
        snprintf(f->why, sizeof(f->why), "%s", rc == 0 ? "" : why);
    }
    pthread_mutex_unlock(&f->lock);
    return NULL;
}

/* Queues a notice's fetch (replacing an older one for the same topic). */
static void sync_notice(struct sync *s, const char *topic, const unsigned char *payload, size_t len,
                        int main)
{
    struct fetcher *f = &fetcher;
    struct proto_crl_notice n;
    char why[256] = "", *pem = NULL;
    size_t pem_len = 0;
    int slot = -1;

    if (proto_crl_notice_parse(payload, len, &n, why, sizeof(why)) != 0 ||
        proto_certs_pem(s->roots, s->cas, &pem, &pem_len) != 0) {
        if (pem == NULL && why[0] == '\0')
            snprintf(why, sizeof(why), "out of memory");
        printf("CRL notice ignored: %s\n", why);
        fflush(stdout);
        free(pem);
        return;
    }
    pthread_mutex_lock(&f->lock);
    for (int i = 0; i < WANT_MAX && slot < 0; i++)
        if (f->w[i].used && strcmp(f->w[i].topic, topic) == 0)
            slot = i;
    /* An older notice than the one pending, or the same one again (the retained copy at each
     * reconnect): the fetch under way goes on. */
    if (slot >= 0 && (f->w[slot].n.number > n.number ||
                      (f->w[slot].n.number == n.number &&
                       memcmp(f->w[slot].n.sha256, n.sha256, sizeof(n.sha256)) == 0 &&
                       strcmp(f->w[slot].n.url, n.url) == 0))) {
        pthread_mutex_unlock(&f->lock);
        free(pem);
        return;
    }
    for (int i = 0; i < WANT_MAX && slot < 0; i++)
        if (!f->w[i].used)
            slot = i;
    if (slot < 0) {
        pthread_mutex_unlock(&f->lock);
        printf("CRL notice %lld ignored: more than %d fetches pending\n", (long long)n.number,
               WANT_MAX);
        fflush(stdout);
        free(pem);
        return;
    }
    free(f->w[slot].ca_pem);
    f->w[slot].used = 1;
    snprintf(f->w[slot].topic, sizeof(f->w[slot].topic), "%s", topic);
    f->w[slot].main = main;
    f->w[slot].attempt = 0;
    f->w[slot].n = n;
    f->w[slot].ca_pem = pem;
    f->w[slot].ca_pem_len = pem_len;
    f->w[slot].gen++;
    f->w[slot].not_before = 0;
    pthread_cond_signal(&f->cond);
    pthread_mutex_unlock(&f->lock);
    printf("full CRL %lld announced: fetching %s\n", (long long)n.number, n.url);
    fflush(stdout);
}

/* The main loop's side: a finished fetch taken, checked and written, or tried again later. */
static void sync_fetched(struct sync *s)
{
    struct fetcher *f = &fetcher;
    struct proto_crl_notice n;
    unsigned char *der;
    size_t der_len;
    char why[256];
    int idx, main, newer = 0, attempt;

    pthread_mutex_lock(&f->lock);
    if (!f->ready) {
        pthread_mutex_unlock(&f->lock);
        return;
    }
    f->ready = 0;
    pthread_cond_signal(&f->cond); /* the thread may take the next want */
    idx = f->ready_idx;
    der = f->der;
    der_len = f->der_len;
    f->der = NULL;
    snprintf(why, sizeof(why), "%s", f->why);
    if (!f->w[idx].used || f->w[idx].gen != f->ready_gen) {
        pthread_mutex_unlock(&f->lock);
        free(der);
        return;
    }
    n = f->w[idx].n;
    main = f->w[idx].main;
    attempt = ++f->w[idx].attempt;
    pthread_mutex_unlock(&f->lock);
    if (der != NULL) {
        /* The one announced, or a newer one the URL serves by now. */
        X509_CRL *crl = NULL;
        struct proto_crl_info info;
        newer = proto_crl_parse(der, der_len, &crl, why, sizeof(why)) == 0 &&
                proto_crl_verify(crl, s->cas, &info, why, sizeof(why)) == 0 &&
                info.number > n.number;
        X509_CRL_free(crl);
        if (newer || proto_crl_notice_matches(&n, der, der_len)) {
            pthread_mutex_lock(&f->lock);
            if (f->w[idx].gen == f->ready_gen) {
                free(f->w[idx].ca_pem);
                f->w[idx].ca_pem = NULL;
                f->w[idx].used = 0;
            }
            pthread_mutex_unlock(&f->lock);
            sync_crl(s, der, der_len, 0, main);
            free(der);
            return;
        }
        snprintf(why, sizeof(why), "%.200s did not serve CRL %lld yet", n.url, (long long)n.number);
        free(der);
    }
    printf("full CRL %lld, attempt %d: %s; trying again\n", (long long)n.number, attempt, why);
    fflush(stdout);
    s->last_msg_ms = mono_ms();
    pthread_mutex_lock(&f->lock);
    if (f->w[idx].gen == f->ready_gen) {
        double backoff = 500.0 * (double)(1 << (attempt < 7 ? attempt - 1 : 6));
        f->w[idx].not_before = mono_ms() + (backoff < BACKOFF_MAX ? backoff : BACKOFF_MAX) *
                                               (0.75 + 0.5 * (double)(rand() % 1000) / 1000.0);
        pthread_cond_signal(&f->cond);
    }
    pthread_mutex_unlock(&f->lock);
}

/* Anything but a notice on a full CRL topic (a CRL inline, the topic cleared) replaces the
 * notice there: its fetch is dropped, and one under way cut short. */
static void fetch_forget(const char *topic)
{
    pthread_mutex_lock(&fetcher.lock);
    for (int i = 0; i < WANT_MAX; i++)
        if (fetcher.w[i].used && strcmp(fetcher.w[i].topic, topic) == 0) {
            free(fetcher.w[i].ca_pem);
            fetcher.w[i].ca_pem = NULL;
            fetcher.w[i].used = 0;
            fetcher.w[i].gen++;
        }
    pthread_mutex_unlock(&fetcher.lock);
}

/* Fetches queued, under way or fetched and not taken yet. */
static int fetch_pending(void)
{
    int n = 0;

    pthread_mutex_lock(&fetcher.lock);
    for (int i = 0; i < WANT_MAX; i++)
        n += fetcher.w[i].used;
    n += fetcher.ready;
    pthread_mutex_unlock(&fetcher.lock);
    return n;
}

static int fetcher_start(void)
{
    pthread_condattr_t ca;

    /* Waits measured on the monotonic clock: a step of the wall clock moves no retry. */
    if (pthread_condattr_init(&ca) != 0 || pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&fetcher.cond, &ca) != 0)
        return mqpki_fail(MQPKI_ERR_INTERNAL, "cannot set up the CRL fetch thread");
    pthread_condattr_destroy(&ca);
    fetcher.busy = -1;
    if (pthread_create(&fetcher.thread, NULL, fetch_thread, &fetcher) != 0)
        return mqpki_fail(MQPKI_ERR_INTERNAL, "cannot start the CRL fetch thread");
    fetcher.started = 1;
    return MQPKI_OK;
}

static void fetcher_stop(void)
{
    if (fetcher.started) {
        pthread_mutex_lock(&fetcher.lock);
        fetcher.stop = 1;
        pthread_cond_signal(&fetcher.cond);
        pthread_mutex_unlock(&fetcher.lock);
        pthread_join(fetcher.thread, NULL);
        fetcher.started = 0;
    }
    for (int i = 0; i < WANT_MAX; i++)
        free(fetcher.w[i].ca_pem);
    free(fetcher.der);
    memset(fetcher.w, 0, sizeof(fetcher.w));
    fetcher.der = NULL;
}

static void sync_crl(struct sync *s, const unsigned char *der, size_t len, int delta, int main)
{
    struct proto_crl_info info;
    struct sync_slot *sl;
    X509_CRL *crl = NULL;
    char why[256], *pem = NULL;
    enum proto_crl_order order;
    int rc;

    /* A retired generation's topics cleared: its CRLs leave with the issuing CA list. */
    if (len == 0)
        return;
    if (proto_crl_parse(der, len, &crl, why, sizeof(why)) != 0 ||
        proto_crl_verify(crl, s->cas, &info, why, sizeof(why)) != 0)
        goto refused;
    if ((info.base >= 0) != delta) {
        snprintf(why, sizeof(why), "a %s CRL on the %s topic", delta ? "full" : "delta",
                 delta ? "delta" : "full");
        goto refused;
    }
    if ((sl = slot_for(s, &info)) == NULL) {
        snprintf(why, sizeof(why), "more than %d signing keys", SYNC_SLOTS);
        goto refused;
    }
    order = proto_crl_order(&info, sl->held[0], sl->held[1], why, sizeof(why));
    if (order == PROTO_CRL_REFUSE)
        goto refused;
    if (main)
        s->current = (size_t)(sl - s->slot);
    /* The same as held (a restart, a re-delivered retained copy): written only when the file
     * lacks it (a key dropped and trusted again). */
    if (order == PROTO_CRL_SAME && (sl->pem[delta] != NULL || !main)) {
        if (!delta && main)
            s->done = 1;
        goto out;
    }
    if ((pem = crl_pem(crl)) == NULL) {
        printf("CRL %lld not written: cannot encode it\n", (long long)info.number);
        s->failed = 1;
        goto out;
    }
    free(sl->pem[delta]);
    sl->pem[delta] = pem;
    pem = NULL;
    sl->held[delta] = info.number;
    if ((rc = write_held(s, delta)) != MQPKI_OK) {
        printf("CRL %lld not written: %s\n", (long long)info.number, mqpki_err_detail(rc));
        s->failed = 1;
        goto out;
    }
    printf("%s CRL %lld (%zu entries%s) verified and written to %s\n", delta ? "delta" : "full",
           (long long)info.number, info.n_entries,
           main ? "" : ", an older issuing CA generation's copy", delta ? s->delta_out : s->out);
    fflush(stdout);
    if (s->exec != NULL)
        run_exec(s->exec);
    if (!delta && main)
        s->done = 1;
    goto out;
refused:
    printf("%s ignored: %s\n", delta ? "delta CRL" : "CRL", why);
    fflush(stdout);
out:
    /* After the work and --exec: --once waits for a quiet moment from here. */
    s->last_msg_ms = mono_ms();
    free(pem);
    X509_CRL_free(crl);
}

/* Drops the CRLs of every signer cas does not trust (a retired generation), rewriting. */
static void drop_untrusted(struct sync *s)
{
    int dropped = 0;

    for (size_t i = 0; i < s->n_slots; i++) {
        for (int k = 0; k < 2; k++) {
            BIO *bio;
            X509_CRL *crl;
            EVP_PKEY *key;
            int keep;
            if (s->slot[i].pem[k] == NULL ||
                (bio = BIO_new_mem_buf(s->slot[i].pem[k], (int)strlen(s->slot[i].pem[k]))) == NULL)
                continue;
            crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
            keep = crl != NULL && proto_crl_issuer_key(crl, s->cas, &key, NULL, 0) == 0;
            X509_CRL_free(crl);
            BIO_free(bio);
            if (keep)
                continue;
            free(s->slot[i].pem[k]);
            s->slot[i].pem[k] = NULL;
            printf("%s CRL %lld dropped: its issuing CA key is not trusted any more\n",
                   k ? "delta" : "full", (long long)s->slot[i].held[k]);
            s->slot[i].held[k] = -1;
            if ((k == 0 || s->delta_out != NULL) && write_held(s, k) != MQPKI_OK)
                s->failed = 1;
            dropped = 1;
        }
    }
    fflush(stdout);
    if (dropped && s->exec != NULL && !s->failed)
        run_exec(s->exec);
}

/* A new issuing CA list: the CRL signers from now on, each certified by a root of --ca. */
static void sync_issuers(struct sync *s, const void *pem, size_t len)
{
    STACK_OF(X509) *cas = NULL;
    char why[256];

    if (proto_issuers_verify(pem, len, s->roots, &cas, why, sizeof(why)) != 0) {
        printf("issuing CA list ignored: %s\n", why);
        fflush(stdout);
        return;
    }
    sk_X509_pop_free(s->cas, X509_free);
    s->cas = cas;
    printf("trusting %d issuing CA key%s for CRLs\n", sk_X509_num(cas),
           sk_X509_num(cas) == 1 ? "" : "s");
    drop_untrusted(s);
}

/* A full CRL topic's message: a notice to fetch, or a CRL inline (or the topic cleared) that
 * replaces any notice there. */
static void sync_full(struct sync *s, const char *topic, const void *payload, size_t len, int main)
{
    if (len > 0 && proto_crl_notice_is(payload, len)) {
        sync_notice(s, topic, payload, len, main);
        return;
    }
    fetch_forget(topic);
    sync_crl(s, payload, len, 0, main);
}

static void on_sync_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    struct sync *s = ud;
    int gen, delta;

    (void)m;
    if (strcmp(msg->topic, PROTO_TOPIC_CA_ISSUERS) == 0)
        sync_issuers(s, msg->payload, (size_t)msg->payloadlen);
    else if (strcmp(msg->topic, PROTO_TOPIC_CRL_FULL) == 0)
        sync_full(s, msg->topic, msg->payload, (size_t)msg->payloadlen, 1);
    else if (strcmp(msg->topic, PROTO_TOPIC_CRL_DELTA) == 0 && s->delta_out != NULL)
        sync_crl(s, msg->payload, (size_t)msg->payloadlen, 1, 1);
    else if (proto_topic_crl_generation_parse(msg->topic, &gen, &delta) == 0 && !delta)
        sync_full(s, msg->topic, msg->payload, (size_t)msg->payloadlen, 0);
    else if (proto_topic_crl_generation_parse(msg->topic, &gen, &delta) == 0 &&
             s->delta_out != NULL)
        sync_crl(s, msg->payload, (size_t)msg->payloadlen, 1, 0);
}

static void on_sync_connect(struct mosquitto *m, void *ud, int rc)
{
    struct sync *s = ud;

    if (rc != 0) {
        printf("broker refused the connection: %s\n", mosquitto_connack_string(rc));
        fflush(stdout);
        return;
    }
    s->connected = 1;
    /* The issuing CAs first: a CRL of a new generation verifies once they are known. */
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CA_ISSUERS, 1);
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_FULL, 1);
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_GENERATION "+/full", 1);
    if (s->delta_out != NULL) {
        mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_DELTA, 1);
        mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_GENERATION "+/delta", 1);
    }
}

static int parse_broker_url(struct cli *cli, const char *url, char *host, size_t size, int *port)
{
    const char *p, *colon, *end;
    size_t n;
    int rc = MQPKI_OK;

    *port = 8883;
    if (strncmp(url, "mqtts://", 8) != 0) {
        rc = cli_usage_error(cli, "--broker '%.80s': expected mqtts://HOST:PORT", url);
        goto out;
    }
    p = url + 8;
    if (*p == '[') {
        end = strchr(p, ']');
        if (end == NULL) {
            rc = cli_usage_error(cli, "--broker: unterminated [address]");
            goto out;
        }
        n = (size_t)(end - p - 1);
        p++;
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strrchr(p, ':');
        n = colon != NULL ? (size_t)(colon - p) : strlen(p);
    }
    if (n == 0 || n >= size) {
        rc = cli_usage_error(cli, "--broker '%.80s': missing or overlong host", url);
        goto out;
    }
    memcpy(host, p, n);
    host[n] = '\0';
    if (colon != NULL)
        rc = cli_parse_int(cli, "--broker port", colon + 1, 1, 65535, port);
out:
    return rc;
}

/* Takes the CRLs an existing file (PEM, or one DER CRL) holds that verify, each under its
 * signer; returns the first one's number (the current key's, as written), -1 when none. */
static int64_t load_held(struct sync *s, const char *path, int delta)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    X509_CRL *crl = NULL;
    struct proto_crl_info info;
    struct sync_slot *sl;
    int64_t first = -1;
    BIO *bio = NULL;
    struct stat st;
    char *pem;

    /* The current key's CRL and the older generations' copies of it: as large as it is. */
    if (stat(path, &st) != 0 || st.st_size <= 0 ||
        (uint64_t)st.st_size > (uint64_t)SYNC_SLOTS * PROTO_CRL_MAX_DER * 2 ||
        mqpki_file_read(path, (size_t)st.st_size, &buf, &len) != MQPKI_OK ||
        (bio = BIO_new_mem_buf(buf, (int)len)) == NULL)
        goto out;
    for (int n = 0; n < SYNC_SLOTS; n++) {
        crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
        if (crl == NULL && n == 0 && proto_crl_parse(buf, len, &crl, NULL, 0) != 0)
            crl = NULL;
        if (crl == NULL)
            break;
        if (proto_crl_verify(crl, s->cas, &info, NULL, 0) == 0 && (info.base >= 0) == delta &&
            (sl = slot_for(s, &info)) != NULL && sl->pem[delta] == NULL &&
            (pem = crl_pem(crl)) != NULL) {
            sl->pem[delta] = pem;
            sl->held[delta] = info.number;
            if (first < 0 && !delta) {
                first = info.number;
                s->current = (size_t)(sl - s->slot);
            }
        }
        X509_CRL_free(crl);
        crl = NULL;
    }
out:
    mqpki_err_clear();
    BIO_free(bio);
    X509_CRL_free(crl);
    free(buf);
    return first;
}

static int default_file(struct cli *cli, const char *rel, char out[PATH_MAX])
{
    struct stat st;

    return mqpki_path(out, PATH_MAX, "%s/%s", cli->home, rel) == MQPKI_OK && stat(out, &st) == 0;
}

int cmd_crl_sync(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"broker", required_argument, NULL, 'b'},
        {"out", required_argument, NULL, 'o'},
        {"delta-out", required_argument, NULL, 'd'},
        {"exec", required_argument, NULL, 'e'},
        {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},
        {"ca", required_argument, NULL, 'a'},
        {"client-id", required_argument, NULL, 'i'},
        {"once", no_argument, NULL, '1'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sync s;
    struct mosquitto *m = NULL;
    struct sigaction sa;
    const char *url = NULL, *cert = NULL, *key = NULL, *ca = NULL, *client_id = NULL;
    char host[256], dcert[PATH_MAX], dkey[PATH_MAX], dca[PATH_MAX], why[256], idbuf[64];
    int64_t timeout = 0, started, held;
    int c, rc = MQPKI_OK, port, delay = 1, lib = 0;

    memset(&s, 0, sizeof(s));
    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': url = optarg; break;
        case 'o': s.out = optarg; break;
        case 'd': s.delta_out = optarg; break;
        case 'e': s.exec = optarg; break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'a': ca = optarg; break;
        case 'i': client_id = optarg; break;
        case '1': s.once = 1; break;
        case 't':
            if ((timeout = mqpki_duration_parse(optarg)) <= 0)
                rc = cli_usage_error(cli, "--timeout '%.20s': expected e.g. 30s", optarg);
            break;
        case 'h':
            return cli_help(
                "usage: mqpki crl-sync --broker mqtts://HOST:PORT --out FILE [--exec CMD]\n"
                "                      [--delta-out FILE] [--cert FILE --key FILE] [--ca FILE]\n"
                "                      [--client-id ID] [--once [--timeout 30s]]\n\n"
                "Follows the CRL feed (" PROTO_TOPIC_CRL_FULL
                ") of a bundled broker for another broker:\n"
                "each CRL is verified against the issuing CA (--ca), refused when older than the\n"
                "one held, written to FILE as PEM (a regular file, also behind a link, is\n"
                "replaced atomically; a FIFO or device is written in place; '-' is refused:\n"
                "progress goes to stdout), then CMD runs (/bin/sh -c), e.g. a\n"
                "reload. Connects with --cert/--key (default: the data directory's tls/mqpkid.*;\n"
                "--ca defaults to ca/chain.pem). Runs until SIGINT/SIGTERM; --once stops after\n"
                "the first good CRL (exit 1 if none arrives within --timeout).\n"
                "After `mqpki ca rollover`, the issuing CAs come from the feed (each certified\n"
                "by a root in --ca) and FILE holds the current key's CRL followed by each older\n"
                "generation's copy signed by its own key, so that a broker checking every\n"
                "certificate against a CRL of its own issuing key finds one.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind != argc) {
        rc = cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (url == NULL || s.out == NULL) {
        rc = cli_usage_error(cli, "--broker and --out are required");
        goto out;
    }
    /* stdout carries the progress lines; a CRL among them would serve no broker. */
    if (strcmp(s.out, "-") == 0 || (s.delta_out != NULL && strcmp(s.delta_out, "-") == 0)) {
        rc = cli_usage_error(cli, "--out and --delta-out need a file: stdout carries progress");
        goto out;
    }
    if ((rc = mqpki_file_check_user(s.out)) != MQPKI_OK ||
        (s.delta_out != NULL && (rc = mqpki_file_check_user(s.delta_out)) != MQPKI_OK))
        goto out;
    if ((rc = parse_broker_url(cli, url, host, sizeof(host), &port)) != MQPKI_OK)
        goto out;
    if (cert == NULL && default_file(cli, "tls/mqpkid.pem", dcert))
        cert = dcert;
    if (key == NULL && default_file(cli, "tls/mqpkid.key", dkey))
        key = dkey;
    if (ca == NULL && default_file(cli, "ca/chain.pem", dca))
        ca = dca;
    if (cert == NULL || key == NULL || ca == NULL) {
        rc = cli_usage_error(cli, "--cert, --key and --ca are required outside a data directory");
        goto out;
    }
    if (proto_crl_load_cas(ca, &s.cas, why, sizeof(why)) != 0 ||
        proto_ca_roots_load(ca, &s.roots, why, sizeof(why)) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "--ca: %s", why);
        goto out;
    }
    /* What the files hold: rollback is refused across restarts too, and the older
     * generations' CRLs stay in FILE until newer ones come. */
    held = load_held(&s, s.out, 0);
    if (s.delta_out != NULL)
        (void)load_held(&s, s.delta_out, 1);
    if (timeout == 0)
        timeout = s.once ? 30 : 0;
    if (client_id == NULL) {
        snprintf(idbuf, sizeof(idbuf), "mqpki-crl-sync-%ld", (long)getpid());
        client_id = idbuf;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    mosquitto_lib_init();
    lib = 1;
    if ((m = mosquitto_new(client_id, true, &s)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "cannot create the MQTT client");
        goto out;
    }
    if (mosquitto_tls_set(m, ca, NULL, cert, key, NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_tls_opts_set(m, 1, "tlsv1.2", NULL) != MOSQ_ERR_SUCCESS) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "cannot use --cert %s / --key %s / --ca %s", cert, key,
                        ca);
        goto out;
    }
    mosquitto_connect_callback_set(m, on_sync_connect);
    mosquitto_message_callback_set(m, on_sync_message);
    if (held >= 0)
        printf("following %s (holding CRL %lld in %s)\n", url, (long long)held, s.out);
    else
        printf("following %s (no CRL held yet)\n", url);
    fflush(stdout);
    if ((rc = fetcher_start()) != MQPKI_OK)
        goto out;
    started = mqpki_now();
    rc = mosquitto_connect(m, host, port, 60);
    /* --once: done once the current key's full CRL is held and the retained copies of the other
     * keys, which follow it in the same burst, had a moment to arrive. */
    while (!sync_stop &&
           !(s.once && s.done && mono_ms() - s.last_msg_ms >= SYNC_QUIET_MS && !fetch_pending()) &&
           !s.failed) {
        if (timeout > 0 && mqpki_now() - started >= timeout)
            break;
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_loop(m, 200, 1);
        sync_fetched(&s);
        if (rc != MOSQ_ERR_SUCCESS && !sync_stop) {
            /* Back off up to a minute: a broker restart must not turn into a tight loop. */
            if (s.connected || delay == 1)
                printf("broker %s:%d unreachable (%s); retrying\n", host, port,
                       rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
            fflush(stdout);
            s.connected = 0;
            sleep((unsigned)delay);
            delay = delay < 60 ? delay * 2 : 60;
            rc = mosquitto_reconnect(m);
        } else if (s.connected) {
            delay = 1;
        }
    }
    rc = MQPKI_OK;
    if (s.failed)
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot write %s", s.out);
    else if (s.once && !s.done)
        rc = mqpki_fail(MQPKI_ERR_STATE, "no valid CRL from %s within %llds", url,
                        (long long)timeout);
    else if (s.once && !sync_stop && fetch_pending())
        rc = mqpki_fail(MQPKI_ERR_STATE, "%d announced full CRL%s not fetched within %llds",
                        fetch_pending(), fetch_pending() == 1 ? "" : "s", (long long)timeout);
    mosquitto_disconnect(m);
out:
    fetcher_stop();
    mosquitto_destroy(m);
    if (lib)
        mosquitto_lib_cleanup();
    sk_X509_pop_free(s.cas, X509_free);
    sk_X509_pop_free(s.roots, X509_free);
    for (size_t i = 0; i < s.n_slots; i++) {
        free(s.slot[i].pem[0]);
        free(s.slot[i].pem[1]);
    }
    return rc;
}
