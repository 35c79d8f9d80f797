/*
 * daemon: mqpkid's parts. main.c owns the process (arguments, signals, TLS renewal), http.c the
 * HTTPS server (libmicrohttpd), metrics.c the counters behind /metrics and /healthz,
 * publisher.c the CRL publisher working through the store's outbox, feed.c the CRL feed over
 * MQTT (feed.h), control.c the local socket the CLI talks to.
 */
#ifndef MQPKI_DAEMON_H
#define MQPKI_DAEMON_H

#include <stddef.h>
#include <stdint.h>

struct datadir;
struct lifecycle_publication;
struct publisher;
struct control;
struct est;
struct est_config;
struct lifecycle_committer;
struct feed;
struct detect;
struct http;
struct retention;
struct crl_http;
struct inventory;

/* Everything the request handlers need, shared by all server threads. */
struct daemon_ctx {
    struct datadir *dd;                    /* the CA (thread-safe signing) and configuration */
    struct est *est;                       /* EST handler */
    struct lifecycle_committer *committer; /* group commit of issued certificates */
    struct feed *feed;                     /* NULL when no broker feed runs */
    struct publisher *publisher;           /* the one CRL publisher */
    struct control *control;               /* the local control socket (run/mqpkid.sock) */
    struct retention *retention;           /* the daily tidy ([retention]) */
    struct detect *detect;                 /* detect -> respond (detect.c) */
    char db_path[4096];                    /* each server thread opens its own store connection */
    int reloads; /* reloads done (SIGHUP, a rollover): the control socket waits for the next */
};

/* est_new over the current CA, trusting the older issuing CA generations not retired too. */
int daemon_est_new(struct daemon_ctx *ctx, struct est_config *ec, struct est **out);

/*
 * Starts the HTTPS server on listen ("ADDR:PORT", "[V6]:PORT"; port 0 picks a free one) with
 * tls/mqpkid.pem + tls/mqpkid.key, requesting (not requiring) client certificates from the CA,
 * TLS 1.2+, `threads` worker threads. listen_fd >= 0 reuses an already bound socket (restart
 * after a certificate renewal or SIGHUP, without refusing connections meanwhile).
 */
int http_start(struct daemon_ctx *ctx, const char *listen, int listen_fd, unsigned threads,
               struct http **out);

/* Binds and listens on listen ("ADDR:PORT") before anything else starts, so that a second
 * mqpkid that cannot listen stops before it touches a broker; the socket goes to http_start. */
int http_bind(const char *listen, int *fd);

/* The optional plain-HTTP listener for CRL distribution points ([http] crl_listen): GET and
 * HEAD of /crl/issuing.crl, /crl/issuing.pem and /crl/issuing-delta.crl only, read-only, from
 * the socket http_bind made (owned from here on). */
int http_crl_start(struct daemon_ctx *ctx, int listen_fd, struct crl_http **out);
void http_crl_stop(struct crl_http *ch);

/* The calling server thread's own store connection, opened on first use; NULL when the store
 * cannot be opened. */
struct inventory *http_thread_inventory(struct daemon_ctx *ctx);

/* Closes connections whose request (headers, body or answer) is past its deadline: the defence
 * against slow clients that libmicrohttpd's inactivity timeout lets through. Call every second. */
void http_reap(struct http *h);

/* The bound port. */
unsigned http_port(struct http *h);

/* Stops accepting and hands back the listening socket (for http_start), then waits for the
 * requests in flight to complete and frees the server. Returns -1 when there is no socket. */
int http_stop(struct http *h, int keep_socket);

/* Starts the publisher thread (its own store connection); it publishes at once, then every
 * second, signing a full CRL when one is due ([ca] crl_full_every). */
int publisher_start(struct daemon_ctx *ctx, struct publisher **out);

/* Runs a publication cycle now and waits for it (thread-safe); resend also sends the newest
 * CRLs to every connected broker again. error gets the failure's detail. */
int publisher_run(struct publisher *p, int resend, struct lifecycle_publication *out, char *error,
                  size_t error_size);

/* Stops after the cycle in progress. NULL-safe. */
void publisher_stop(struct publisher *p);

/* Serves the control socket (ping, publish, sign) on a thread of its own. */
int control_start(struct daemon_ctx *ctx, struct control **out);
void control_stop(struct control *c);

/* The daily tidy (retention.c): a thread that runs retention_run 10 minutes after start, then
 * every 24 hours. retention_run: one tidy now on its own store connection (noted: whether the
 * "switch to incremental vacuum" note was logged already; may be NULL). */
int retention_start(struct daemon_ctx *ctx, struct retention **out);
void retention_stop(struct retention *r);
int retention_run(struct daemon_ctx *ctx, const char *actor, int *noted);
/*
 * Detect -> respond (detect.c, docs/detect.md): a thread with its own store connection that
 * stores the brokers' events (bounded queue, bounded retention), runs the [detect] rules and
 * answers with alert, hold or quarantine. Start after the feed and the publisher; hand
 * detect_sink to feed_set_sink. detect_stop is NULL-safe; stop it before the publisher.
 */
#include <jansson.h>
int detect_start(struct daemon_ctx *ctx, struct detect **out);
void detect_sink(void *ctx, const char *broker, json_t *ev, int64_t dropped);
void detect_stop(struct detect *d);

/* Metrics (thread-safe counters). */
void metrics_detect_event(void);
void metrics_detect_dropped(uint64_t n);
void metrics_detect_alert(const char *rule);
void metrics_enrollment(const char *result, double seconds);
void metrics_request(void);
/* Prometheus text for /metrics into a heap buffer (caller frees). */
char *metrics_render(struct daemon_ctx *ctx, size_t *len);
/* JSON for /readyz (= /healthz) into a heap buffer; *ready 1 when the token and the store are
 * usable (the brokers' feed is reported, never a reason to be unready). */
char *health_render(struct daemon_ctx *ctx, int *ready, size_t *len);

/* Tells systemd the service's state ("READY=1", "RELOADING=1", "STOPPING=1") when mqpkid runs
 * as a Type=notify service ($NOTIFY_SOCKET set); nothing otherwise (notify.c). */
void daemon_notify(const char *state);

#endif
