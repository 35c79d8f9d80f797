/*
 * control: mqpkid's end of the local control socket (datadir.h, run/mqpkid.sock). A thread
 * accepts; each connection is served on a thread of its own (at most CONTROL_THREADS at once),
 * so that a publish waiting for a large CRL never holds up a command's signature: ping,
 * publish (the publisher runs a cycle at once and reports), rescan (the broker registry),
 * sign (a C_Sign with the CA key this daemon alone holds), command (a device command through
 * the feed), rollover (a new issuing CA key, made where the token is open; or its request,
 * when the root is offline) and issuers (the
 * chain changed: a generation retired). Only peers of the daemon's own user, or root, are
 * answered; every request is size-capped and time-boxed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "feed.h"
#include "lifecycle.h"
#include "proto.h"

#define REQUEST_MS      5000 /* a peer has this long to send its request */
#define REPLY_MS        5000
#define CONTROL_THREADS 16 /* connections served at once; more wait in the listen backlog */

struct control {
    struct daemon_ctx *ctx;
    int fd;
    int wake[2];
    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    pthread_cond_t idle; /* a connection thread ended */
    int busy;            /* connection threads running */
};

struct conn {
    struct control *c;
    int fd;
};

/* Sends status + payload as one frame. */
static void reply(int fd, int status, const void *payload, size_t len)
{
    unsigned char *body = malloc(len + 1);

    if (body == NULL)
        return;
    body[0] = (unsigned char)status;
    if (len > 0)
        memcpy(body + 1, payload, len);
    if (datadir_control_send(fd, body, len + 1, REPLY_MS) != MQPKI_OK)
        mqpki_log(MQPKI_LOG_DEBUG, "control: %s", mqpki_err_detail(MQPKI_ERR_IO));
    free(body);
}

static void reply_error(int fd, int rc, const char *detail)
{
    reply(fd, rc, detail, strlen(detail));
}

static void on_publish(struct control *c, int fd, const unsigned char *req, size_t len)
{
    struct lifecycle_publication pub;
    char error[256], *text = NULL;
    json_t *v = NULL;
    int rc, total = 0, linked = 0;

    rc = publisher_run(c->ctx->publisher, len > 1 && (req[1] & 1), &pub, error, sizeof(error));
    if (rc != MQPKI_OK) {
        reply_error(fd, rc, error[0] != '\0' ? error : mqpki_strerror(rc));
        return;
    }
    feed_links(c->ctx->feed, &total, &linked);
    v = json_pack("{s:i, s:I, s:I, s:i, s:i}", "signed", pub.signed_count, "full",
                  (json_int_t)pub.full_number, "delta", (json_int_t)pub.delta_number, "brokers",
                  total, "linked", linked);
    if (v == NULL || (text = json_dumps(v, JSON_COMPACT)) == NULL)
        reply_error(fd, MQPKI_ERR_NOMEM, "out of memory");
    else
        reply(fd, MQPKI_OK, text, strlen(text));
    free(text);
    json_decref(v);
}

static void on_sign(struct control *c, int fd, const unsigned char *req, size_t len)
{
    unsigned char sig[DATADIR_SIGN_OUT_MAX];
    size_t sig_len = sizeof(sig);
    char label[DATADIR_SIGN_LABEL_MAX + 1];
    unsigned long mech;
    size_t n;
    int rc;

    /* op, label length, label, 4-byte mechanism, input */
    if (len < 2 || (n = req[1]) == 0 || n >= sizeof(label) || len < 2 + n + 4 + 1 ||
        len - (6 + n) > DATADIR_SIGN_IN_MAX) {
        reply_error(fd, MQPKI_ERR_PARSE, "malformed sign request");
        return;
    }
    memcpy(label, req + 2, n);
    label[n] = '\0';
    mech = (unsigned long)req[2 + n] << 24 | (unsigned long)req[3 + n] << 16 |
           (unsigned long)req[4 + n] << 8 | req[5 + n];
    rc = datadir_key_sign(c->ctx->dd, label, mech, req + 6 + n, len - 6 - n, sig, &sig_len);
    if (rc != MQPKI_OK)
        reply_error(fd, rc, mqpki_err_detail(rc));
    else
        reply(fd, MQPKI_OK, sig, sig_len);
}

/* Has the main thread reload (as on SIGHUP: EST and HTTPS with the CA and chain of now) and
 * waits until it did. */
static int reload_and_wait(struct control *c)
{
    int before = __atomic_load_n(&c->ctx->reloads, __ATOMIC_ACQUIRE);

    if (kill(getpid(), SIGHUP) != 0)
        return mqpki_fail(MQPKI_ERR_INTERNAL, "cannot signal the reload");
    for (int i = 0; i < 600; i++) {
        if (__atomic_load_n(&c->ctx->reloads, __ATOMIC_ACQUIRE) != before)
            return MQPKI_OK;
        usleep(50 * 1000);
    }
    return mqpki_fail(MQPKI_ERR_INTERNAL, "mqpkid did not reload within 30 s");
}

/* One rollover (or request for one) at a time in this daemon. */
static pthread_mutex_t rollover_one = PTHREAD_MUTEX_INITIALIZER;

static void issuers_ready(void *arg)
{
    struct control *c = arg;
    int rc = feed_offer_issuers(c->ctx->feed);

    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_ERROR, "feed: cannot send the issuing CAs: %s", mqpki_err_detail(rc));
}

/* op, 4-byte days[, the new generation's certificate (DER) when the root is offline]: a new
 * issuing CA generation, made here where the token is open. The brokers get the new chain
 * before the new key signs a CRL; EST and HTTPS serve it after. */
static void on_rollover(struct control *c, int fd, const unsigned char *req, size_t len)
{
    struct datadir_rollover r;
    const unsigned char *p = req + 5;
    X509 *cert = NULL;
    char text[128];
    int rc, days;

    if (len < 5 ||
        (len > 5 && ((cert = d2i_X509(NULL, &p, (long)(len - 5))) == NULL || p != req + len))) {
        X509_free(cert);
        reply_error(fd, MQPKI_ERR_PARSE, "malformed rollover request");
        return;
    }
    days = (int)((unsigned)req[1] << 24 | (unsigned)req[2] << 16 | (unsigned)req[3] << 8 | req[4]);
    pthread_mutex_lock(&rollover_one);
    rc = datadir_ca_rollover(c->ctx->dd, days, cert, issuers_ready, c, &r);
    if (rc == MQPKI_OK && !r.already) {
        mqpki_log(MQPKI_LOG_INFO, "issuing CA rolled over: generation %d replaces %d", r.gen,
                  r.previous);
        rc = reload_and_wait(c);
    }
    pthread_mutex_unlock(&rollover_one);
    X509_free(cert);
    if (rc != MQPKI_OK) {
        reply_error(fd, rc, mqpki_err_detail(rc));
        return;
    }
    snprintf(text, sizeof(text), "{\"gen\":%d,\"previous\":%d,\"resumed\":%s,\"already\":%s}",
             r.gen, r.previous, r.resumed ? "true" : "false", r.already ? "true" : "false");
    reply(fd, MQPKI_OK, text, strlen(text));
}

/* op: the request for the next generation's key (the root offline); reply: 4-byte
 * generation, then the request's PEM. */
static void on_rollover_request(struct control *c, int fd)
{
    unsigned char *body = NULL;
    char *pem = NULL;
    size_t len = 0;
    int rc, gen = 0;

    pthread_mutex_lock(&rollover_one);
    rc = datadir_ca_rollover_request(c->ctx->dd, &pem, &len, &gen);
    pthread_mutex_unlock(&rollover_one);
    if (rc == MQPKI_OK && (body = malloc(len + 4)) == NULL)
        rc = MQPKI_ERR_NOMEM;
    if (rc != MQPKI_OK) {
        reply_error(fd, rc, mqpki_err_detail(rc));
    } else {
        body[0] = (unsigned char)(gen >> 24);
        body[1] = (unsigned char)(gen >> 16);
        body[2] = (unsigned char)(gen >> 8);
        body[3] = (unsigned char)gen;
        memcpy(body + 4, pem, len);
        reply(fd, MQPKI_OK, body, len + 4);
    }
    free(body);
    free(pem);
}

/* ca/chain.pem changed (a generation retired): the brokers and EST trust it as it is now. */
static void on_issuers(struct control *c, int fd)
{
    int rc = feed_offer_issuers(c->ctx->feed);

    if (rc == MQPKI_OK)
        rc = reload_and_wait(c);
    if (rc != MQPKI_OK)
        reply_error(fd, rc, mqpki_err_detail(rc));
    else
        reply(fd, MQPKI_OK, NULL, 0);
}

/* op, asset id, NUL, JSON command: published on the asset's command topic. Only commands the
 * agent knows are relayed (the CLI composes them; nothing else may use mqpkid's identity). */
static void on_command(struct control *c, int fd, const unsigned char *req, size_t len)
{
    static const char *const allowed[] = {"{\"op\":\"renew\"}"};
    const char *asset = (const char *)req + 1, *json;
    const unsigned char *nul = len > 1 ? memchr(req + 1, '\0', len - 1) : NULL;
    char reply_text[32];
    size_t json_len;
    int ok = 0, sent;

    if (nul == NULL || !proto_asset_id_valid(asset)) {
        reply_error(fd, MQPKI_ERR_PARSE, "malformed command request");
        return;
    }
    json = (const char *)nul + 1;
    json_len = len - (size_t)((const unsigned char *)json - req);
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        ok |= json_len == strlen(allowed[i]) && memcmp(json, allowed[i], json_len) == 0;
    if (!ok) {
        reply_error(fd, MQPKI_ERR_INVALID, "command not allowed");
        return;
    }
    sent = feed_command(c->ctx->feed, asset, json, json_len);
    snprintf(reply_text, sizeof(reply_text), "%d", sent);
    reply(fd, MQPKI_OK, reply_text, strlen(reply_text));
}

static void serve(struct control *c, int fd)
{
    unsigned char *req = NULL;
    size_t len = 0;
    char pid[32];

    if (!datadir_control_peer_ok(fd)) {
        mqpki_log(MQPKI_LOG_WARN, "control: a process of another user was refused");
        reply_error(fd, MQPKI_ERR_AUTH, "not mqpkid's user");
        return;
    }
    if (datadir_control_recv(fd, &req, &len, REQUEST_MS) != MQPKI_OK)
        return;
    switch (req[0]) {
    case DATADIR_CTL_PING:
        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        reply(fd, MQPKI_OK, pid, strlen(pid));
        break;
    case DATADIR_CTL_PUBLISH: on_publish(c, fd, req, len); break;
    case DATADIR_CTL_SIGN: on_sign(c, fd, req, len); break;
    case DATADIR_CTL_RESCAN:
        feed_rescan(c->ctx->feed);
        reply(fd, MQPKI_OK, NULL, 0);
        break;
    case DATADIR_CTL_COMMAND: on_command(c, fd, req, len); break;
    case DATADIR_CTL_ROLLOVER: on_rollover(c, fd, req, len); break;
    case DATADIR_CTL_ROLLOVER_REQUEST: on_rollover_request(c, fd); break;
    case DATADIR_CTL_ISSUERS: on_issuers(c, fd); break;
    default: reply_error(fd, MQPKI_ERR_INVALID, "unknown request"); break;
    }
    free(req);
}

static void *serve_thread(void *arg)
{
    struct conn *k = arg;
    struct control *c = k->c;

    serve(c, k->fd);
    close(k->fd);
    free(k);
    pthread_mutex_lock(&c->lock);
    c->busy--;
    pthread_cond_broadcast(&c->idle);
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

static void *run(void *arg)
{
    struct control *c = arg;

    for (;;) {
        struct pollfd pfd[2] = {{c->fd, POLLIN, 0}, {c->wake[0], POLLIN, 0}};
        struct conn *k;
        pthread_t t;
        int fd;

        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            mqpki_log(MQPKI_LOG_ERROR, "control: poll: %s", strerror(errno));
            break;
        }
        if (pfd[1].revents != 0)
            break;
        pthread_mutex_lock(&c->lock);
        while (c->busy >= CONTROL_THREADS)
            pthread_cond_wait(&c->idle, &c->lock);
        pthread_mutex_unlock(&c->lock);
        if ((fd = accept4(c->fd, NULL, NULL, SOCK_CLOEXEC)) < 0)
            continue;
        if ((k = malloc(sizeof(*k))) == NULL) {
            close(fd);
            continue;
        }
        k->c = c;
        k->fd = fd;
        pthread_mutex_lock(&c->lock);
        c->busy++;
        pthread_mutex_unlock(&c->lock);
        if (pthread_create(&t, NULL, serve_thread, k) != 0) {
            /* No thread to spare: serve it here. */
            pthread_mutex_lock(&c->lock);
            c->busy--;
            pthread_mutex_unlock(&c->lock);
            serve(c, fd);
            close(fd);
            free(k);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

int control_start(struct daemon_ctx *ctx, struct control **out)
{
    struct control *c;
    int rc;

    *out = NULL;
    if ((c = calloc(1, sizeof(*c))) == NULL)
        return MQPKI_ERR_NOMEM;
    c->ctx = ctx;
    c->fd = c->wake[0] = c->wake[1] = -1;
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->idle, NULL);
    if ((rc = datadir_control_listen(datadir_home(ctx->dd), &c->fd)) != MQPKI_OK)
        goto out;
    if (pipe2(c->wake, O_CLOEXEC) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "control: pipe: %s", strerror(errno));
        goto out;
    }
    if (pthread_create(&c->thread, NULL, run, c) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "control: cannot start a thread");
        goto out;
    }
    c->started = 1;
    *out = c;
    c = NULL;
out:
    control_stop(c);
    return rc;
}

void control_stop(struct control *c)
{
    if (c == NULL)
        return;
    if (c->started) {
        if (write(c->wake[1], "x", 1) < 0)
            mqpki_log(MQPKI_LOG_WARN, "control: cannot wake the thread");
        pthread_join(c->thread, NULL);
        /* Connections in flight finish (each is time-boxed) before what they use goes. */
        pthread_mutex_lock(&c->lock);
        while (c->busy > 0)
            pthread_cond_wait(&c->idle, &c->lock);
        pthread_mutex_unlock(&c->lock);
    }
    if (c->fd >= 0)
        close(c->fd);
    if (c->wake[0] >= 0)
        close(c->wake[0]);
    if (c->wake[1] >= 0)
        close(c->wake[1]);
    pthread_cond_destroy(&c->idle);
    pthread_mutex_destroy(&c->lock);
    free(c);
}
