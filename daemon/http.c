/* daemon: the HTTPS server (libmicrohttpd over GnuTLS) in front of the EST handlers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "enrollment.h"
#include "inventory.h"
#include "ui.h"

/* Limits against slow or oversized clients (slowloris, header floods). */
#define CONNECTION_TIMEOUT      10 /* seconds of inactivity */
#define CONNECTION_LIMIT        1024
#define PER_IP_CONNECTION_LIMIT 128
#define CONNECTION_MEMORY       (32 * 1024) /* request line + headers per connection */
#define CRL_FILE_MAX            (256 * 1024 * 1024)
#define TLS_PRIORITIES          "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"
#define HEADER_DEADLINE         10 /* seconds for a whole request line and headers */
#define BODY_DEADLINE           30 /* seconds for a body, and for sending a response */
#define CRL_DEADLINE            300 /* seconds for sending a CRL: 40 MB to a broker far away */
#define LINGER_SECONDS          3  /* an early refusal's socket drains the unread body this long */
#define DRAIN_MAX               64 /* lingering sockets at once; beyond, a refused one closes */
#define DRAIN_READS             4  /* reads of 16 KiB per lingering socket and reap (1 s) */
#define REFUSAL_LOGS            10 /* framing refusals logged per second; the rest counted */

/*
 * One per TCP connection (MHD's socket context): the client certificate verified on it, and the
 * deadline of what the connection is doing. libmicrohttpd 0.9.75's timeout counts only silence,
 * so a client dripping one header byte every few seconds would hold a connection for ever
 * (slowloris); http_reap closes connections past their deadline.
 */
struct conn {
    struct est_peer peer;
    int fd;
    int64_t deadline; /* 0: none (the handler is working on a request) */
    int linger;       /* refused before its body was read: drain it after the close */
    struct conn *prev, *next;
};

/*
 * A socket kept open (a dup of MHD's) after an early refusal. libmicrohttpd stops reading a
 * body it was told to refuse and closes the socket after the answer; closing with unread bytes
 * makes the kernel send a reset, which a client still sending its body (curl, a 400 KB POST)
 * sees instead of our 413. Draining the rest for a few seconds lets it read the answer first
 * (a lingering close, as HTTP servers do).
 */
struct drain {
    int fd;
    int64_t until;
    struct drain *next;
};

struct http {
    struct MHD_Daemon *mhd;
    struct daemon_ctx *ctx;
    char *cert_pem, *key_pem, *trust_pem;
    size_t key_len;
    unsigned port;
    pthread_mutex_t conns_lock;
    struct conn *conns;
    struct drain *draining; /* under conns_lock, and n_draining with it */
    int n_draining;
    int64_t log_second; /* refusal log lines: this second's count, and those left out */
    int log_count;
    long log_dropped;
};

/* Per-request state across the access handler's calls. */
struct request {
    unsigned char *body;
    size_t len;
    int too_large;
    struct timespec start;
};

/* One store connection per server thread (SQLite handles are not shared across threads). */
static pthread_key_t inv_key;
static pthread_once_t inv_once = PTHREAD_ONCE_INIT;

static void inv_destroy(void *p)
{
    inventory_close(p);
}

static void inv_key_make(void)
{
    pthread_key_create(&inv_key, inv_destroy);
}

struct inventory *http_thread_inventory(struct daemon_ctx *ctx)
{
    struct inventory *inv;

    pthread_once(&inv_once, inv_key_make);
    inv = pthread_getspecific(inv_key);
    if (inv == NULL) {
        if (inventory_open(ctx->db_path, &inv) != MQPKI_OK) {
            mqpki_log(MQPKI_LOG_ERROR, "store: %s", mqpki_err_detail(MQPKI_ERR_STORE));
            return NULL;
        }
        pthread_setspecific(inv_key, inv);
    }
    return inv;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    size_t n;

    vsnprintf(msg, sizeof(msg), fmt, ap);
    n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    mqpki_log(MQPKI_LOG_DEBUG, "http: %s", msg);
}

static enum MHD_Result send_buffer(struct MHD_Connection *c, int status, const char *ct, char *body,
                                   size_t len, const struct est_response *er)
{
    struct MHD_Response *r;
    enum MHD_Result ret;
    char num[16];

    /* MHD takes the buffer and frees it with free(). */
    r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ct);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    if (er != NULL && er->base64)
        MHD_add_response_header(r, "Content-Transfer-Encoding", "base64");
    if (er != NULL && er->retry_after > 0) {
        snprintf(num, sizeof(num), "%d", er->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, num);
    }
    if (er != NULL && er->www_authenticate)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"mqpki\"");
    ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_text(struct MHD_Connection *c, int status, const char *text)
{
    char *body = strdup(text);

    if (body == NULL)
        return MHD_NO;
    return send_buffer(c, status, "text/plain; charset=utf-8", body, strlen(body), NULL);
}

static void client_address(struct MHD_Connection *c, char out[INET6_ADDRSTRLEN])
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    snprintf(out, INET6_ADDRSTRLEN, "?");
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, INET6_ADDRSTRLEN);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, INET6_ADDRSTRLEN);
}

/* The TLS client's leaf certificate (DER) as GnuTLS received it; the handshake proved that the
 * client holds its key. The chain is verified by the EST handler against our CA. */
static const gnutls_datum_t *client_certificate(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_GNUTLS_SESSION);
    const gnutls_datum_t *peers;
    unsigned int n = 0;

    if (ci == NULL || ci->tls_session == NULL)
        return NULL;
    peers = gnutls_certificate_get_peers((gnutls_session_t)ci->tls_session, &n);
    return n > 0 ? peers : NULL;
}

/* A CRL file as it is on disk: streamed from the open file (which a concurrent atomic
 * replacement does not change), never read whole or parsed per request. */
static enum MHD_Result serve_crl(struct daemon_ctx *ctx, struct MHD_Connection *c,
                                 const char *which, const char *content_type)
{
    struct MHD_Response *r;
    enum MHD_Result ret;
    char path[4096];
    struct stat st;
    int fd;

    if (datadir_path(ctx->dd, which, path) != MQPKI_OK)
        return send_text(c, 500, "internal error\n");
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return send_text(c, errno == ENOENT ? 404 : 503,
                         errno == ENOENT ? "no such CRL yet\n" : "CRL unavailable\n");
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > CRL_FILE_MAX) {
        close(fd);
        return send_text(c, 503, "CRL unavailable\n");
    }
    /* MHD closes fd with the response. */
    if ((r = MHD_create_response_from_fd((uint64_t)st.st_size, fd)) == NULL) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void conn_deadline(struct http *h, struct MHD_Connection *c, int seconds);

/* The CRL files served, over HTTPS and on the optional plain-HTTP listener. */
static const struct {
    const char *url, *file, *type;
} crl_files[] = {
    {"/crl/issuing.crl", "crl/issuing.crl", "application/pkix-crl"},
    {"/crl/issuing.pem", "crl/issuing.pem", "application/x-pem-file"},
    {"/crl/issuing-delta.crl", "crl/issuing-delta.crl", "application/pkix-crl"},
};
#define N_CRL_FILES (sizeof(crl_files) / sizeof(crl_files[0]))

/* The CRL file url names, or NULL: one of crl_files, or an older issuing CA generation's copy
 * /crl/generation/N/issuing.crl (N 1..DATADIR_ISSUERS_MAX, digits only), as its notice names
 * it (crl/generation-N/issuing.crl). file holds 64 bytes. */
static const char *crl_file_of(const char *url, char file[64], const char **type)
{
    int gen = 0, n = 0;

    for (size_t i = 0; i < N_CRL_FILES; i++)
        if (strcmp(url, crl_files[i].url) == 0) {
            *type = crl_files[i].type;
            return crl_files[i].file;
        }
    if (strncmp(url, "/crl/generation/", 16) == 0 && url[16] >= '1' && url[16] <= '9' &&
        sscanf(url + 16, "%3d/issuing.crl%n", &gen, &n) == 1 && n > 0 && url[16 + n] == '\0' &&
        gen >= 1 && gen <= DATADIR_ISSUERS_MAX && strspn(url + 16, "0123456789") < 4) {
        snprintf(file, 64, "crl/generation-%d/issuing.crl", gen);
        *type = "application/pkix-crl";
        return file;
    }
    return NULL;
}

/* The dashboard (ui.c): read-only pages, credentials checked there. */
static enum MHD_Result serve_ui(struct http *h, struct MHD_Connection *c, const char *url)
{
    const gnutls_datum_t *cert = client_certificate(c);
    struct ui_request rq;
    struct ui_response out;
    struct MHD_Response *r;
    enum MHD_Result ret;

    memset(&rq, 0, sizeof(rq));
    rq.url = url;
    rq.authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    rq.session_cookie = MHD_lookup_connection_value(c, MHD_COOKIE_KIND, "mqpki_session");
    if (cert != NULL) {
        rq.client_cert = cert->data;
        rq.client_cert_len = cert->size;
    }
    rq.arg_q = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "q");
    rq.arg_state = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "state");
    rq.arg_after = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "after");
    rq.arg_id = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "id");
    rq.arg_t = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "t");
    rq.arg_next = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "next");
    ui_handle(h->ctx, http_thread_inventory(h->ctx), &rq, &out);
    if (out.body == NULL) {
        free(out.set_cookie);
        return send_text(c, 500, "internal error\n");
    }
    r = MHD_create_response_from_buffer(out.len, out.body, MHD_RESPMEM_MUST_FREE);
    if (r == NULL) {
        free(out.body);
        free(out.set_cookie);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, out.content_type);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    /* No script, nothing from elsewhere, never framed; the login link's token never leaks
     * through a Referer. */
    MHD_add_response_header(r, "Content-Security-Policy",
                            "default-src 'none'; style-src 'self'; img-src 'self'; "
                            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    if (out.set_cookie != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_SET_COOKIE, out.set_cookie);
    if (out.location[0] != '\0')
        MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, out.location);
    if (out.www_authenticate)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"mqpki\"");
    if (out.set_cookie != NULL)
        OPENSSL_cleanse(out.set_cookie, strlen(out.set_cookie));
    free(out.set_cookie);
    ret = MHD_queue_response(c, (unsigned)out.status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result dispatch(struct http *h, struct MHD_Connection *c, const char *url,
                                const char *method, struct request *rq)
{
    struct daemon_ctx *ctx = h->ctx;
    char addr[INET6_ADDRSTRLEN];

    metrics_request();
    if (est_handles(url)) {
        struct est_request er;
        struct est_response resp;
        const gnutls_datum_t *cert = client_certificate(c);
        struct inventory *inv = http_thread_inventory(ctx);
        struct timespec end;
        enum MHD_Result ret;

        if (inv == NULL) {
            metrics_enrollment("unavailable", 0);
            return send_text(c, 503, "service unavailable, retry later\n");
        }
        client_address(c, addr);
        memset(&er, 0, sizeof(er));
        er.method = method;
        er.path = url;
        er.content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        er.authorization = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
        er.client_addr = addr;
        er.body = rq->body;
        er.body_len = rq->too_large ? EST_BODY_MAX + 1 : rq->len;
        if (cert != NULL) {
            const union MHD_ConnectionInfo *ci =
                MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
            er.client_cert = cert->data;
            er.client_cert_len = cert->size;
            struct conn *cn = ci != NULL ? ci->socket_context : NULL;
            er.peer = cn != NULL ? &cn->peer : NULL;
        }
        est_handle(ctx->est, inv, &er, &resp);
        if (strstr(url, "enroll") != NULL) {
            clock_gettime(CLOCK_MONOTONIC, &end);
            metrics_enrollment(resp.result ? resp.result : "error",
                               (double)(end.tv_sec - rq->start.tv_sec) +
                                   (double)(end.tv_nsec - rq->start.tv_nsec) / 1e9);
        }
        ret = send_buffer(c, resp.status, resp.content_type, resp.body, resp.body_len, &resp);
        resp.body = NULL; /* now MHD's */
        est_response_clear(&resp);
        return ret;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_text(c, 405, "method not allowed\n");
    if (ui_handles(url))
        return serve_ui(h, c, url);
    {
        char buf[64];
        const char *type = NULL, *file = crl_file_of(url, buf, &type);
        if (file != NULL) {
            conn_deadline(h, c, CRL_DEADLINE);
            return serve_crl(ctx, c, file, type);
        }
    }
    /* Liveness: the process answers. A supervisor restarts on this one only. */
    if (strcmp(url, "/livez") == 0)
        return send_text(c, 200, "ok\n");
    /* Readiness (store and token usable); /healthz is its older name. */
    if (strcmp(url, "/readyz") == 0 || strcmp(url, "/healthz") == 0) {
        int ready = 0;
        size_t len = 0;
        char *body = health_render(ctx, &ready, &len);
        if (body == NULL)
            return send_text(c, 500, "internal error\n");
        return send_buffer(c, ready ? 200 : 503, "application/json", body, len, NULL);
    }
    if (strcmp(url, "/metrics") == 0) {
        size_t len = 0;
        char *body = metrics_render(ctx, &len);
        if (body == NULL)
            return send_text(c, 500, "internal error\n");
        return send_buffer(c, 200, "text/plain; version=0.0.4", body, len, NULL);
    }
    return send_text(c, 404, "not found\n");
}

/* What the request's Content-Length and Transfer-Encoding headers say about its body. */
struct framing {
    int lengths;     /* Content-Length headers seen */
    int conflict;    /* two of them differ, or one is not a plain decimal number */
    int chunked;     /* a Transfer-Encoding header is present */
    uint64_t length; /* the first Content-Length's value */
};

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    struct framing *f = cls;
    uint64_t v = 0;
    const char *p = value;

    (void)kind;
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0) {
        f->chunked = 1;
        return MHD_YES;
    }
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0)
        return MHD_YES;
    /* 1*DIGIT (RFC 7230 3.3.2); saturating, so a huge value stays huge. */
    if (p == NULL || *p == '\0')
        f->conflict = 1;
    for (; p != NULL && *p != '\0'; p++) {
        if (*p < '0' || *p > '9') {
            f->conflict = 1;
            break;
        }
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*p - '0');
    }
    if (f->lengths++ == 0)
        f->length = v;
    else if (v != f->length)
        f->conflict = 1;
    return MHD_YES;
}

/*
 * Checks the request's framing once its headers are in, before any body is read: 0 to go on,
 * else the status of the refusal to send now. libmicrohttpd 0.9.75 frames the body by one of
 * several conflicting Content-Length headers (a request smuggling vector when a proxy picks
 * another, RFC 7230 3.3.3 says 400), and waits for a declared body of any size before anyone
 * can refuse it: a client announcing 1 GB and sending nothing was cut off silently by the
 * inactivity timeout.
 */
static int framing_refusal(struct MHD_Connection *c, const char **why)
{
    struct framing f;

    memset(&f, 0, sizeof(f));
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, &f);
    if (f.conflict) {
        *why = "conflicting or malformed Content-Length headers (RFC 7230 3.3.3)";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.lengths > 0 && f.chunked) {
        *why = "both Content-Length and Transfer-Encoding (RFC 7230 3.3.3)";
        return MHD_HTTP_BAD_REQUEST;
    }
    if (f.lengths > 0 && f.length > EST_BODY_MAX) {
        *why = "declared body larger than the limit";
        return MHD_HTTP_CONTENT_TOO_LARGE;
    }
    return 0;
}

/* A flood of malformed requests must not flood the log: REFUSAL_LOGS a second, then a count of
 * those left out. 1 when this one is to be logged. */
static int refusal_log_ok(struct http *h)
{
    int64_t now = mqpki_now();
    long dropped = 0;
    int ok;

    pthread_mutex_lock(&h->conns_lock);
    if (now != h->log_second) {
        dropped = h->log_dropped;
        h->log_second = now;
        h->log_count = 0;
        h->log_dropped = 0;
    }
    ok = h->log_count++ < REFUSAL_LOGS;
    if (!ok)
        h->log_dropped++;
    pthread_mutex_unlock(&h->conns_lock);
    if (dropped > 0)
        mqpki_log(MQPKI_LOG_INFO, "http: %ld more refusals in the last second not logged", dropped);
    return ok;
}

/* A refusal sent before the body is read: the connection closes after it, since the unread
 * body would otherwise be taken for the next request, and lingers (struct drain). */
static enum MHD_Result send_refusal(struct http *h, struct MHD_Connection *c, int status,
                                    const char *text)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn *cn = ci != NULL ? ci->socket_context : NULL;
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (cn != NULL) {
        pthread_mutex_lock(&h->conns_lock);
        cn->linger = 1;
        pthread_mutex_unlock(&h->conns_lock);
    }

    r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    ret = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct http *h = cls;
    struct request *rq = *con_cls;

    if (rq == NULL) {
        const char *why = NULL;
        int status;

        if ((rq = calloc(1, sizeof(*rq))) == NULL)
            return MHD_NO;
        clock_gettime(CLOCK_MONOTONIC, &rq->start);
        *con_cls = rq;
        /* Headers are in: the body, if any, gets its own deadline. */
        conn_deadline(h, c, BODY_DEADLINE);
        if ((status = framing_refusal(c, &why)) != 0) {
            char addr[INET6_ADDRSTRLEN];
            client_address(c, addr);
            if (refusal_log_ok(h))
                mqpki_log(MQPKI_LOG_INFO, "http: %s %s from %s refused (%d): %s", method, url, addr,
                          status, why);
            metrics_request();
            if (est_handles(url) && strstr(url, "enroll") != NULL)
                metrics_enrollment(status == MHD_HTTP_BAD_REQUEST ? "bad_request" : "too_large", 0);
            return send_refusal(h, c, status,
                                status == MHD_HTTP_BAD_REQUEST ? "bad request: message framing\n"
                                                               : "request body too large\n");
        }
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        /* Bodies are capped: past the limit the rest is read and dropped, then 413. */
        if (!rq->too_large && rq->len + *upload_data_size <= EST_BODY_MAX) {
            unsigned char *b = realloc(rq->body, rq->len + *upload_data_size + 1);
            if (b == NULL)
                return MHD_NO;
            rq->body = b;
            memcpy(rq->body + rq->len, upload_data, *upload_data_size);
            rq->len += *upload_data_size;
            rq->body[rq->len] = '\0';
        } else {
            rq->too_large = 1;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    /* Sending the answer must not take for ever either (a client that reads slowly). */
    conn_deadline(h, c, BODY_DEADLINE);
    return dispatch(h, c, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct request *rq = *con_cls;

    /* Keep-alive: the next request's headers are due within HEADER_DEADLINE. */
    conn_deadline(cls, c, HEADER_DEADLINE);

    if (rq == NULL)
        return;
    free(rq->body);
    free(rq);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http *h = cls;
    struct conn *cn = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if ((cn = calloc(1, sizeof(*cn))) == NULL)
            return;
        cn->fd = ci != NULL ? ci->connect_fd : -1;
        /* The TLS handshake and the first request's headers. */
        cn->deadline = mqpki_now() + HEADER_DEADLINE;
        pthread_mutex_lock(&h->conns_lock);
        cn->next = h->conns;
        if (h->conns != NULL)
            h->conns->prev = cn;
        h->conns = cn;
        pthread_mutex_unlock(&h->conns_lock);
        *socket_context = cn;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && cn != NULL) {
        struct drain *l = NULL;
        int fd;

        /* MHD removes its socket from epoll and closes it after this call; our dup keeps the
         * connection open until http_reap has drained it. */
        if (cn->linger && cn->fd >= 0 && (l = calloc(1, sizeof(*l))) != NULL) {
            if ((fd = fcntl(cn->fd, F_DUPFD_CLOEXEC, 0)) < 0 ||
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
                if (fd >= 0)
                    close(fd);
                free(l);
                l = NULL;
            } else {
                l->fd = fd;
                l->until = mqpki_now() + LINGER_SECONDS;
            }
        }
        pthread_mutex_lock(&h->conns_lock);
        /* Bounded: a flood of refused requests costs at most DRAIN_MAX descriptors; past
         * that the socket closes at once (the client may see a reset instead of the answer). */
        if (l != NULL && h->n_draining >= DRAIN_MAX) {
            close(l->fd);
            free(l);
            l = NULL;
        }
        if (l != NULL) {
            l->next = h->draining;
            h->draining = l;
            h->n_draining++;
        }
        if (cn->prev != NULL)
            cn->prev->next = cn->next;
        else
            h->conns = cn->next;
        if (cn->next != NULL)
            cn->next->prev = cn->prev;
        pthread_mutex_unlock(&h->conns_lock);
        free(cn);
        *socket_context = NULL;
    }
}

static void conn_deadline(struct http *h, struct MHD_Connection *c, int seconds)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn *cn = ci != NULL ? ci->socket_context : NULL;

    if (cn == NULL)
        return;
    pthread_mutex_lock(&h->conns_lock);
    cn->deadline = mqpki_now() + seconds;
    pthread_mutex_unlock(&h->conns_lock);
}

/* Reads and drops what a lingering socket holds; closes it at EOF, on an error or when its time
 * is up. Returns 1 when closed. */
static int drain_step(struct drain *l, int64_t now)
{
    char buf[16384];
    ssize_t n = -1;

    /* A few reads a tick: a client sending without pause cannot keep the main loop here. */
    errno = EAGAIN;
    for (int i = 0; i < DRAIN_READS && (n = read(l->fd, buf, sizeof(buf))) > 0; i++)
        ;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) ||
        now > l->until) {
        close(l->fd);
        return 1;
    }
    return 0;
}

void http_reap(struct http *h)
{
    int64_t now = mqpki_now();

    struct drain *list, *keep = NULL;
    int closed = 0;

    if (h == NULL)
        return;
    /* The reads happen outside the lock, which MHD's threads take for every connection:
     * only this thread takes lingering sockets off the list. */
    pthread_mutex_lock(&h->conns_lock);
    list = h->draining;
    h->draining = NULL;
    pthread_mutex_unlock(&h->conns_lock);
    while (list != NULL) {
        struct drain *l = list;
        list = l->next;
        if (drain_step(l, now)) {
            free(l);
            closed++;
        } else {
            l->next = keep;
            keep = l;
        }
    }
    pthread_mutex_lock(&h->conns_lock);
    while (keep != NULL) {
        struct drain *l = keep;
        keep = l->next;
        l->next = h->draining;
        h->draining = l;
    }
    h->n_draining -= closed;
    for (struct conn *cn = h->conns; cn != NULL; cn = cn->next) {
        if (cn->deadline == 0 || now <= cn->deadline || cn->fd < 0)
            continue;
        /* MHD's thread sees the socket fail and closes the connection itself. */
        (void)shutdown(cn->fd, SHUT_RDWR);
        cn->deadline = 0;
        mqpki_log(MQPKI_LOG_INFO, "http: connection closed: request not complete within its "
                                  "deadline (slow client)");
    }
    pthread_mutex_unlock(&h->conns_lock);
}

/* "127.0.0.1:8443", "[::1]:8443", "0.0.0.0:0" into a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon, *h = listen;
    size_t hl;
    char *end = NULL;
    long port;

    memset(ss, 0, sizeof(*ss));
    colon = strrchr(listen, ':');
    if (colon == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "listen '%.80s': expected ADDR:PORT", listen);
    port = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port < 0 || port > 65535)
        return mqpki_fail(MQPKI_ERR_INVALID, "listen '%.80s': bad port", listen);
    hl = (size_t)(colon - listen);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(host))
        return mqpki_fail(MQPKI_ERR_INVALID, "listen '%.80s': bad address", listen);
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
        *len = sizeof(struct sockaddr_in6);
    } else {
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "listen '%.80s': address must be numeric IPv4 or "
                          "IPv6",
                          listen);
    }
    return MQPKI_OK;
}

int http_bind(const char *listen_addr, int *out)
{
    struct sockaddr_storage ss;
    socklen_t ss_len = 0;
    int fd = -1, one = 1, rc;

    *out = -1;
    if ((rc = parse_listen(listen_addr, &ss, &ss_len)) != MQPKI_OK)
        return rc;
    if ((fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "listen %s: socket: %s", listen_addr, strerror(errno));
        goto out;
    }
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, ss_len) != 0 || listen(fd, 511) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot listen on %s: %s", listen_addr, strerror(errno));
        goto out;
    }
    *out = fd;
    fd = -1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

static int read_text(struct daemon_ctx *ctx, const char *rel, char **out, size_t *len)
{
    char path[4096];
    int rc;

    if ((rc = datadir_path(ctx->dd, rel, path)) != MQPKI_OK)
        return rc;
    return mqpki_file_read(path, 256 * 1024, (unsigned char **)out, len);
}

int http_start(struct daemon_ctx *ctx, const char *listen, int listen_fd, unsigned threads,
               struct http **out)
{
    struct http *h;
    struct sockaddr_storage ss;
    socklen_t ss_len = 0;
    const union MHD_DaemonInfo *info;
    size_t len;
    int rc;

    *out = NULL;
    memset(&ss, 0, sizeof(ss));
    if ((h = calloc(1, sizeof(*h))) == NULL)
        return MQPKI_ERR_NOMEM;
    h->ctx = ctx;
    pthread_mutex_init(&h->conns_lock, NULL);
    if ((rc = read_text(ctx, "tls/mqpkid.pem", &h->cert_pem, &len)) != MQPKI_OK ||
        (rc = read_text(ctx, "tls/mqpkid.key", &h->key_pem, &h->key_len)) != MQPKI_OK ||
        (rc = read_text(ctx, "ca/chain.pem", &h->trust_pem, &len)) != MQPKI_OK)
        goto out;
    if (listen_fd < 0 && (rc = parse_listen(listen, &ss, &ss_len)) != MQPKI_OK)
        goto out;
    /* MHD_USE_ITC lets MHD_quiesce_daemon hand the socket over for a restart. */
    h->mhd = MHD_start_daemon(
        MHD_USE_TLS | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC |
            MHD_USE_ERROR_LOG | (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, on_request, h, MHD_OPTION_HTTPS_MEM_CERT, h->cert_pem,
        MHD_OPTION_HTTPS_MEM_KEY, h->key_pem, MHD_OPTION_HTTPS_MEM_TRUST, h->trust_pem,
        MHD_OPTION_HTTPS_PRIORITIES, TLS_PRIORITIES, MHD_OPTION_THREAD_POOL_SIZE, threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONNECTION_TIMEOUT, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)CONNECTION_LIMIT, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)PER_IP_CONNECTION_LIMIT, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)CONNECTION_MEMORY, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        listen_fd >= 0 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR,
        listen_fd >= 0 ? (void *)(intptr_t)listen_fd : (void *)&ss, MHD_OPTION_END);
    if (h->mhd == NULL) {
        rc = mqpki_fail(MQPKI_ERR_IO,
                        "cannot listen on %s (address in use, or a bad TLS "
                        "certificate in tls/)",
                        listen);
        goto out;
    }
    info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info != NULL ? info->port : 0;
    *out = h;
    h = NULL;
out:
    if (h != NULL)
        http_stop(h, 0);
    return rc;
}

unsigned http_port(struct http *h)
{
    return h->port;
}

int http_stop(struct http *h, int keep_socket)
{
    int fd = -1;

    if (h == NULL)
        return -1;
    if (h->mhd != NULL) {
        if (keep_socket)
            fd = (int)MHD_quiesce_daemon(h->mhd);
        MHD_stop_daemon(h->mhd);
    }
    while (h->draining != NULL) {
        struct drain *l = h->draining;
        h->draining = l->next;
        close(l->fd);
        free(l);
    }
    if (h->key_pem != NULL)
        OPENSSL_cleanse(h->key_pem, h->key_len);
    free(h->cert_pem);
    free(h->key_pem);
    free(h->trust_pem);
    pthread_mutex_destroy(&h->conns_lock);
    free(h);
    return fd;
}

/* ---- CRLs over plain HTTP ([http] crl_listen) ------------------------------------------ */

#define CRL_HTTP_THREADS    2
#define CRL_HTTP_CONNS      256
#define CRL_HTTP_CONNS_IP   32

struct crl_http {
    struct daemon_ctx *ctx;
    struct MHD_Daemon *mhd;
};

/* GET or HEAD of a CRL file, nothing else: read-only, no body ever read. */
static enum MHD_Result on_crl_request(void *cls, struct MHD_Connection *c, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_data_size,
                                      void **con_cls)
{
    struct crl_http *ch = cls;

    (void)version;
    (void)upload_data;
    (void)con_cls;
    *upload_data_size = 0;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return send_text(c, 405, "method not allowed\n");
    {
        char buf[64];
        const char *type = NULL, *file = crl_file_of(url, buf, &type);
        if (file != NULL)
            return serve_crl(ch->ctx, c, file, type);
    }
    return send_text(c, 404, "not found\n");
}

int http_crl_start(struct daemon_ctx *ctx, int listen_fd, struct crl_http **out)
{
    struct crl_http *ch;
    const union MHD_DaemonInfo *info;
    int rc = MQPKI_OK;

    *out = NULL;
    if ((ch = calloc(1, sizeof(*ch))) == NULL) {
        close(listen_fd);
        return MQPKI_ERR_NOMEM;
    }
    ch->ctx = ctx;
    ch->mhd = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        on_crl_request, ch, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)listen_fd,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)CRL_HTTP_THREADS, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)CONNECTION_TIMEOUT, MHD_OPTION_CONNECTION_LIMIT, (unsigned)CRL_HTTP_CONNS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)CRL_HTTP_CONNS_IP,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (ch->mhd == NULL) {
        close(listen_fd);
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot serve CRLs over plain HTTP");
        free(ch);
        return rc;
    }
    info = MHD_get_daemon_info(ch->mhd, MHD_DAEMON_INFO_BIND_PORT);
    mqpki_log(MQPKI_LOG_INFO, "CRLs over plain HTTP on port %u (/crl/issuing.crl, "
                              "/crl/issuing.pem, /crl/issuing-delta.crl)",
              info != NULL ? info->port : 0);
    *out = ch;
    return rc;
}

void http_crl_stop(struct crl_http *ch)
{
    if (ch == NULL)
        return;
    if (ch->mhd != NULL)
        MHD_stop_daemon(ch->mhd);
    free(ch);
}
