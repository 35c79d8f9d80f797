/* enrollment: per-address and per-asset limits for EST. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "enrollment_int.h"

/* A fixed table: an attacker cycling addresses recycles entries instead of growing memory. */
#define SLOTS   4096
#define PROBE   8
#define KEY_MAX 80

struct slot {
    char key[KEY_MAX]; /* "a:ADDR" or "s:ASSET"; "" when free */
    double tokens;     /* request bucket (address keys) */
    double last;       /* time of the last refill, seconds */
    int64_t window;    /* start of the failure window */
    int failures;
    int64_t blocked_until;
};

struct ratelimit {
    struct est_config cfg;
    pthread_mutex_t lock;
    struct slot slots[SLOTS];
};

static double now_precise(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Finds or claims the slot of key; recycles the least recently used slot of its probe run. */
static struct slot *slot_for(struct ratelimit *rl, char kind, const char *name, double now)
{
    char key[KEY_MAX];
    struct slot *victim = NULL;
    uint64_t h;

    snprintf(key, sizeof(key), "%c:%s", kind, name);
    h = hash(key);
    for (int i = 0; i < PROBE; i++) {
        struct slot *s = &rl->slots[(h + (uint64_t)i) % SLOTS];
        if (strcmp(s->key, key) == 0)
            return s;
        if (victim == NULL || s->key[0] == '\0' ||
            (victim->key[0] != '\0' && s->last < victim->last))
            victim = s;
    }
    memset(victim, 0, sizeof(*victim));
    snprintf(victim->key, sizeof(victim->key), "%s", key);
    victim->tokens = rl->cfg.burst;
    victim->last = now;
    return victim;
}

int ratelimit_new(const struct est_config *cfg, struct ratelimit **out)
{
    struct ratelimit *rl = calloc(1, sizeof(*rl));

    *out = NULL;
    if (rl == NULL)
        return MQPKI_ERR_NOMEM;
    rl->cfg = *cfg;
    if (rl->cfg.window_seconds <= 0)
        rl->cfg.window_seconds = 60;
    if (rl->cfg.failures_per_window <= 0)
        rl->cfg.failures_per_window = 5;
    if (rl->cfg.burst <= 0)
        rl->cfg.burst = 1;
    pthread_mutex_init(&rl->lock, NULL);
    *out = rl;
    return MQPKI_OK;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (rl == NULL)
        return;
    pthread_mutex_destroy(&rl->lock);
    free(rl);
}

static int blocked(const struct slot *s, int64_t now)
{
    return s->blocked_until > now ? (int)(s->blocked_until - now) : 0;
}

int ratelimit_check(struct ratelimit *rl, const char *addr, const char *asset)
{
    double now = now_precise();
    int64_t secs = (int64_t)now;
    int wait = 0;

    pthread_mutex_lock(&rl->lock);
    if (addr != NULL) {
        struct slot *s = slot_for(rl, 'a', addr, now);
        wait = blocked(s, secs);
        if (wait == 0 && rl->cfg.requests_per_second > 0) {
            s->tokens += (now - s->last) * rl->cfg.requests_per_second;
            if (s->tokens > rl->cfg.burst)
                s->tokens = rl->cfg.burst;
            if (s->tokens < 1.0)
                wait = 1;
            else
                s->tokens -= 1.0;
        }
        s->last = now;
    }
    if (wait == 0 && asset != NULL) {
        struct slot *s = slot_for(rl, 's', asset, now);
        wait = blocked(s, secs);
        s->last = now;
    }
    pthread_mutex_unlock(&rl->lock);
    return wait;
}

static void fail_one(struct ratelimit *rl, char kind, const char *name, double now)
{
    struct slot *s = slot_for(rl, kind, name, now);
    int64_t secs = (int64_t)now;

    if (secs - s->window >= rl->cfg.window_seconds) {
        s->window = secs;
        s->failures = 0;
    }
    if (++s->failures >= rl->cfg.failures_per_window)
        s->blocked_until = s->window + rl->cfg.window_seconds;
    s->last = now;
}

void ratelimit_failure(struct ratelimit *rl, const char *addr, const char *asset)
{
    double now = now_precise();

    pthread_mutex_lock(&rl->lock);
    if (addr != NULL)
        fail_one(rl, 'a', addr, now);
    if (asset != NULL)
        fail_one(rl, 's', asset, now);
    pthread_mutex_unlock(&rl->lock);
}
