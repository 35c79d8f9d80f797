/*
 * broker: crlload, the worker that loads large full CRLs off Mosquitto's one thread
 * (broker.h). Hashing the TBS of a million-entry CRL (~37 MB) and walking its entries take
 * tens to hundreds of milliseconds; on the broker's thread that would hold up every client.
 * The broker's thread only copies the payload in and, on a later tick, swaps the finished set
 * in (O(1)). Until then the CRL held before stays in force. A full CRL announced by a notice
 * (proto_crl_notice) never passes through the broker's thread at all: the worker fetches it
 * from the notice's URL, retrying with backoff (0.5 s doubling to 30 s, with jitter, then
 * every 30 s) until it gets that CRL or a newer one, a newer job replaces it, or the plugin
 * stops (which also stops a transfer in flight). The retained notice is the truth: a broker
 * never settles for less than the CRL it announces.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "common.h"

#define WHY_MAX          256
#define FETCH_TIMEOUT_MS 300000 /* 40 MB over a slow link; the plugin's stop cuts it short */
#define FETCH_BACKOFF_MS 500
#define FETCH_WAIT_MAX   30000

struct job {
    unsigned char *der; /* the CRL; for a fetch job, NULL until fetched */
    size_t len;
    int64_t number;
    char *persist_path;
    int fetch;                      /* a notice: der comes from notice.url */
    struct proto_crl_notice notice; /* fetch jobs */
    char *ca_pem;                   /* fetch jobs: the certificates the peer is checked with */
    size_t ca_pem_len;
};

static int job_present(const struct job *j)
{
    return j->der != NULL || j->fetch;
}

struct crlload {
    STACK_OF(X509) * cas; /* the trusted CRL signers (own references), under lock */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int stop;
    struct job next;          /* waiting (der NULL: none) */
    int64_t running;          /* number of the job being loaded, -1 none */
    int have_result;          /* a result waits for crlload_take */
    struct serialset **trash; /* tables to free (crlload_reap) */
    size_t n_trash, cap_trash;
    struct revpart *part;
    struct proto_crl_info info;
    char why[WHY_MAX];
    char note[WHY_MAX]; /* a failed fetch attempt, for the broker's log (crlload_note) */
    int64_t held;       /* full CRL number in force (crlload_held; atomic): a fetch of that
                           number or lower stops */
};

/* Frees the tables waiting in trash (lock held; dropped meanwhile). */
static void empty_trash(struct crlload *l)
{
    struct serialset **t = l->trash;
    size_t n = l->n_trash;

    l->trash = NULL;
    l->n_trash = l->cap_trash = 0;
    pthread_mutex_unlock(&l->lock);
    for (size_t i = 0; i < n; i++)
        serialset_free(t[i]);
    free(t);
    pthread_mutex_lock(&l->lock);
}

static void job_clear(struct job *j)
{
    free(j->der);
    free(j->persist_path);
    free(j->ca_pem);
    memset(j, 0, sizeof(*j));
}

/* A fetched CRL is the one the notice names (size and SHA-256), or a newer one the URL serves
 * by now; an older one (the URL not updated yet) is retried. */
static int notice_fits(const struct job *j, const struct proto_crl_info *info, char *why,
                       size_t why_len)
{
    if (info->number > j->notice.number)
        return 1;
    if (info->number == j->notice.number && proto_crl_notice_matches(&j->notice, j->der, j->len))
        return 1;
    snprintf(why, why_len, "%.120s served CRL %lld%s, the notice names CRL %lld", j->notice.url,
             (long long)info->number,
             info->number == j->notice.number ? " with another size or SHA-256" : "",
             (long long)j->notice.number);
    return 0;
}

/* The worker's part of a job: everything but the swap. */
static struct revpart *load(struct crlload *l, const struct job *j, struct proto_crl_info *info,
                            char *why, size_t why_len)
{
    struct proto_crl_der d;
    struct revpart *part = NULL;
    STACK_OF(X509) * cas;
    EVP_PKEY *key = NULL;

    memset(info, 0, sizeof(*info));
    /* The signers as they are now (a new issuing CA may arrive meanwhile): references of our
     * own for the job. */
    pthread_mutex_lock(&l->lock);
    cas = X509_chain_up_ref(l->cas);
    pthread_mutex_unlock(&l->lock);
    if (cas == NULL) {
        snprintf(why, why_len, "out of memory");
        return NULL;
    }
    if (proto_crl_der_split(j->der, j->len, &d, why, why_len) != 0) {
        sk_X509_pop_free(cas, X509_free);
        return NULL;
    }
    if (proto_crl_der_check(&d, cas, &key, info, why, why_len) == 0 &&
        (!j->fetch || notice_fits(j, info, why, why_len)) &&
        proto_crl_der_verify_sig(&d, key, why, why_len) == 0 &&
        revpart_from_der(&d, info, &part, why, why_len) == 0 && j->persist_path != NULL &&
        mqpki_file_write_atomic(j->persist_path, j->der, j->len, 0600) != MQPKI_OK)
        snprintf(why, why_len, "CRL %lld loaded but not kept in %s: %s", (long long)info->number,
                 j->persist_path, mqpki_err_detail(MQPKI_ERR_IO));
    proto_crl_der_clear(&d);
    sk_X509_pop_free(cas, X509_free);
    return part;
}

/* The fetch in flight stops when the plugin does. */
static int stopping(void *ctx)
{
    struct crlload *l = ctx;

    return __atomic_load_n(&l->stop, __ATOMIC_ACQUIRE);
}

/* Sleeps the attempt's backoff, with up to a quarter more at random so that brokers told at
 * once do not come back at once; 1 when a newer job or the stop came meanwhile. */
static int wait_retry(struct crlload *l, int attempt, unsigned *seed)
{
    long ms = FETCH_BACKOFF_MS;
    struct timespec until;
    int done;

    for (int i = 0; i < attempt && ms < FETCH_WAIT_MAX; i++)
        ms *= 2;
    if (ms > FETCH_WAIT_MAX)
        ms = FETCH_WAIT_MAX;
    ms += (long)(rand_r(seed) % (unsigned)(ms / 4 + 1));
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&l->lock);
    /* The tables swaps release meanwhile are freed here too: a fetch may retry for long. */
    while (!l->stop && !job_present(&l->next)) {
        if (l->n_trash > 0) {
            empty_trash(l);
            continue;
        }
        if (pthread_cond_timedwait(&l->cond, &l->lock, &until) == ETIMEDOUT)
            break;
    }
    done = l->stop || job_present(&l->next);
    pthread_mutex_unlock(&l->lock);
    return done;
}

static void *run(void *arg)
{
    struct crlload *l = arg;

    pthread_mutex_lock(&l->lock);
    for (;;) {
        struct job j;
        struct proto_crl_info info;
        struct revpart *part;
        char why[WHY_MAX] = "";
        int fetch;
        unsigned seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)&j;

        while (!l->stop && (!job_present(&l->next) || l->have_result) && l->n_trash == 0)
            pthread_cond_wait(&l->cond, &l->lock);
        if (l->stop)
            break;
        if (l->n_trash > 0) {
            empty_trash(l);
            continue;
        }
        j = l->next;
        memset(&l->next, 0, sizeof(l->next));
        l->running = j.number;
        fetch = j.fetch;
        pthread_mutex_unlock(&l->lock);
        part = NULL;
        for (int attempt = 0;; attempt++) {
            int give_up;
            why[0] = '\0';
            if (j.fetch) {
                free(j.der);
                j.der = NULL;
                /* Capped at the largest CRL, not the notice's size: the URL may serve a newer,
                 * larger one by now. */
                if (proto_crl_fetch(j.notice.url, NULL, j.ca_pem, j.ca_pem_len, 0, FETCH_TIMEOUT_MS,
                                    stopping, l, &j.der, &j.len, why, sizeof(why)) != 0)
                    j.der = NULL;
            }
            if (j.der != NULL && (part = load(l, &j, &info, why, sizeof(why))) != NULL)
                break;
            /* Not for a number the broker holds by now (a CRL that came whole meanwhile). */
            if (!j.fetch || __atomic_load_n(&l->held, __ATOMIC_ACQUIRE) >= j.number)
                break;
            pthread_mutex_lock(&l->lock);
            snprintf(l->note, sizeof(l->note), "full CRL %lld, attempt %d: %s; retrying",
                     (long long)j.number, attempt + 1, why);
            pthread_mutex_unlock(&l->lock);
            /* Wait, unless a newer job or the stop comes first. */
            give_up = wait_retry(l, attempt, &seed);
            if (give_up)
                break;
        }
        job_clear(&j);
        pthread_mutex_lock(&l->lock);
        l->running = -1;
        /* A fetch replaced by a newer job (or stopped) before it got its CRL: no result. */
        if (part == NULL && fetch)
            continue;
        l->part = part;
        l->info = info;
        snprintf(l->why, sizeof(l->why), "%s", why);
        l->have_result = 1;
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

int crlload_start(STACK_OF(X509) * cas, struct crlload **out)
{
    struct crlload *l = calloc(1, sizeof(*l));

    *out = NULL;
    if (l == NULL)
        return -1;
    if ((l->cas = X509_chain_up_ref(cas)) == NULL) {
        free(l);
        return -1;
    }
    l->running = -1;
    l->held = -1;
    if (pthread_mutex_init(&l->lock, NULL) != 0) {
        sk_X509_pop_free(l->cas, X509_free);
        free(l);
        return -1;
    }
    if (pthread_cond_init(&l->cond, NULL) != 0) {
        pthread_mutex_destroy(&l->lock);
        sk_X509_pop_free(l->cas, X509_free);
        free(l);
        return -1;
    }
    if (pthread_create(&l->thread, NULL, run, l) != 0) {
        pthread_cond_destroy(&l->cond);
        pthread_mutex_destroy(&l->lock);
        sk_X509_pop_free(l->cas, X509_free);
        free(l);
        return -1;
    }
    *out = l;
    return 0;
}

void crlload_stop(struct crlload *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->lock);
    __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    for (size_t i = 0; i < l->n_trash; i++)
        serialset_free(l->trash[i]);
    free(l->trash);
    job_clear(&l->next);
    revpart_free(l->part);
    sk_X509_pop_free(l->cas, X509_free);
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->lock);
    free(l);
}

int crlload_set_cas(struct crlload *l, STACK_OF(X509) * cas)
{
    STACK_OF(X509) *copy = X509_chain_up_ref(cas), *old;

    if (copy == NULL)
        return -1;
    pthread_mutex_lock(&l->lock);
    old = l->cas;
    l->cas = copy;
    pthread_mutex_unlock(&l->lock);
    sk_X509_pop_free(old, X509_free);
    return 0;
}

/* The waiting slot takes j (a job waiting there is replaced) and the worker is woken. */
static void put_job(struct crlload *l, struct job *j)
{
    pthread_mutex_lock(&l->lock);
    job_clear(&l->next);
    l->next = *j;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->lock);
}

int crlload_submit(struct crlload *l, const unsigned char *der, size_t len, int64_t number,
                   const char *persist_path)
{
    struct job j = {0};

    if (len == 0 || len > PROTO_CRL_MAX_DER || (j.der = malloc(len)) == NULL ||
        (persist_path != NULL && (j.persist_path = strdup(persist_path)) == NULL)) {
        job_clear(&j);
        return -1;
    }
    memcpy(j.der, der, len);
    j.len = len;
    j.number = number;
    put_job(l, &j);
    return 0;
}

void crlload_held(struct crlload *l, int64_t number)
{
    __atomic_store_n(&l->held, number, __ATOMIC_RELEASE);
}

int crlload_note(struct crlload *l, char *out, size_t out_len)
{
    int got;

    pthread_mutex_lock(&l->lock);
    got = l->note[0] != '\0';
    if (got) {
        snprintf(out, out_len, "%s", l->note);
        l->note[0] = '\0';
    }
    pthread_mutex_unlock(&l->lock);
    return got;
}

int crlload_fetch(struct crlload *l, const struct proto_crl_notice *n, const char *ca_pem,
                  size_t ca_pem_len, const char *persist_path)
{
    struct job j = {0};

    if ((j.ca_pem = malloc(ca_pem_len + 1)) == NULL ||
        (persist_path != NULL && (j.persist_path = strdup(persist_path)) == NULL)) {
        job_clear(&j);
        return -1;
    }
    memcpy(j.ca_pem, ca_pem, ca_pem_len);
    j.ca_pem[ca_pem_len] = '\0';
    j.ca_pem_len = ca_pem_len;
    j.fetch = 1;
    j.notice = *n;
    j.number = n->number;
    put_job(l, &j);
    return 0;
}

void crlload_reap(struct serialset *s, void *ctx)
{
    struct crlload *l = ctx;
    int queued = 0;

    if (s == NULL)
        return;
    pthread_mutex_lock(&l->lock);
    if (!l->stop) {
        if (l->n_trash == l->cap_trash) {
            size_t cap = l->cap_trash ? 2 * l->cap_trash : 8;
            void *t = realloc(l->trash, cap * sizeof(*l->trash));
            if (t != NULL) {
                l->trash = t;
                l->cap_trash = cap;
            }
        }
        if (l->n_trash < l->cap_trash) {
            l->trash[l->n_trash++] = s;
            queued = 1;
            pthread_cond_broadcast(&l->cond);
        }
    }
    pthread_mutex_unlock(&l->lock);
    /* Out of memory for the list, or stopping: freed here rather than lost. */
    if (!queued)
        serialset_free(s);
}

int64_t crlload_pending(const struct crlload *l)
{
    struct crlload *m = (struct crlload *)l;
    int64_t n;

    pthread_mutex_lock(&m->lock);
    n = m->running;
    if (job_present(&m->next) && m->next.number > n)
        n = m->next.number;
    if (m->have_result && m->part != NULL && m->info.number > n)
        n = m->info.number;
    pthread_mutex_unlock(&m->lock);
    return n;
}

int crlload_take(struct crlload *l, struct revpart **part, struct proto_crl_info *info, char *why,
                 size_t why_len)
{
    int got = 0;

    *part = NULL;
    pthread_mutex_lock(&l->lock);
    if (l->have_result) {
        *part = l->part;
        *info = l->info;
        snprintf(why, why_len, "%s", l->why);
        l->part = NULL;
        l->have_result = 0;
        got = 1;
        pthread_cond_broadcast(&l->cond);
    }
    pthread_mutex_unlock(&l->lock);
    return got;
}
