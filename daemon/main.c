/* mqpkid: the enrollment daemon (DESIGN.md 5, 6). Foreground, logs to stderr. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ca.h"
#include "common.h"
#include "daemon.h"
#include "datadir.h"
#include "enrollment.h"
#include "feed.h"
#include "hsm.h"
#include "inventory.h"
#include "lifecycle.h"

/* Workers mostly wait for the group commit's fsync; enough of them keep a batch full. */
#define DEFAULT_THREADS 32

/* --log-format json, [log] format = json: one JSON object a line, every line timestamped. */
static void log_json(enum mqpki_log_level level, const char *msg, void *ctx)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char ts[32], clean[1024];
    json_t *v;
    char *line;
    size_t i;

    (void)ctx;
    mqpki_time_str(mqpki_now(), ts);
    v = json_pack("{s:s, s:s, s:s}", "time", ts, "level", names[level], "msg", msg);
    if (v == NULL) {
        /* Not UTF-8 (hostile input quoted in a detail): bytes past ASCII become '?'. */
        for (i = 0; msg[i] != '\0' && i < sizeof(clean) - 1; i++)
            clean[i] = (unsigned char)msg[i] < 0x80 ? msg[i] : '?';
        clean[i] = '\0';
        v = json_pack("{s:s, s:s, s:s}", "time", ts, "level", names[level], "msg", clean);
    }
    line = v != NULL ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    if (line != NULL)
        fprintf(stderr, "%s\n", line);
    free(line);
    json_decref(v);
}

static int log_level_parse(const char *name)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};

    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mqpkid [--home DIR] [--store URL] [--listen ADDR:PORT] [--threads N]\n"
            "              [--verbose] [--log-format text|json]\n\n"
            "The enrollment daemon: EST (RFC 7030) over HTTPS, CRLs over HTTP and the CRL\n"
            "feed to the registered brokers. Runs in the foreground and logs to stderr.\n"
            "  --home DIR        data directory (else $MQPKI_HOME, else ./mqpki-data)\n"
            "  --store URL       a PostgreSQL store shared with other replicas (else [store]\n"
            "                    url, else the data directory's mqpki.db; docs/ha.md)\n"
            "  --listen A:P      address and port ([daemon] listen; port 0 picks one)\n"
            "  --threads N       HTTPS worker threads (default %d)\n"
            "  --verbose         debug logging (else [log] level, default info)\n"
            "  --log-format F    text (default) or json: one object a line with time, level\n"
            "                    and msg (else [log] format)\n"
            "  --version         print the version and exit\n\n"
            "Signals: SIGTERM/SIGINT stop after the requests in flight; SIGHUP re-reads\n"
            "mqpki.conf and tls/ without dropping the listening socket.\n\n"
            "EXAMPLES\n"
            "  mqpkid --home /var/lib/mqpki\n"
            "  mqpkid --listen 0.0.0.0:8443 --verbose\n"
            "  systemctl reload mqpkid\n",
            DEFAULT_THREADS);
}

static void est_config_from(const struct datadir_config *c, struct est_config *e)
{
    memset(e, 0, sizeof(*e));
    datadir_profile_days(c, e->profile_days);
    e->reenroll_grace = c->reenroll_grace;
    e->failures_per_window = c->auth_failures;
    e->window_seconds = (int)c->auth_window;
    e->requests_per_second = c->rate_per_address;
    e->burst = c->rate_burst;
}

/* Renews mqpkid's own TLS certificate once two thirds of its lifetime have passed. */
static int tls_tick(struct datadir *dd)
{
    int renewed = 0, rc;

    if ((rc = datadir_tls_renew(dd, 0, &renewed)) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "TLS certificate renewal failed: %s", mqpki_err_detail(rc));
        return 0;
    }
    if (renewed)
        mqpki_log(MQPKI_LOG_INFO, "TLS certificate renewed (tls/mqpkid.pem)");
    /* The bundled brokers' certificates too: each broker reloads its own (SIGHUP). */
    (void)datadir_brokers_renew(dd);
    return renewed;
}

int daemon_est_new(struct daemon_ctx *ctx, struct est_config *ec, struct est **out)
{
    struct datadir_issuers is;
    X509 *also[EST_ALSO_TRUSTED_MAX];
    size_t n = 0;
    int rc;

    if ((rc = datadir_issuers_read(datadir_home(ctx->dd), &is)) != MQPKI_OK)
        return rc;
    for (size_t i = 0; i < is.n; i++)
        if (!is.v[i].current && !is.v[i].retired && n < EST_ALSO_TRUSTED_MAX)
            also[n++] = is.v[i].cert;
    ec->also_trusted = also;
    ec->n_also_trusted = n;
    rc = est_new(datadir_ca(ctx->dd), ctx->committer, ec, out);
    ec->also_trusted = NULL;
    ec->n_also_trusted = 0;
    datadir_issuers_clear(&is);
    return rc;
}

/* Quiesces the server, swaps configuration and certificates, and starts again on the same
 * socket: connections wait in the backlog meanwhile instead of being refused. */
static int restart(struct daemon_ctx *ctx, struct http **h, const char *listen, unsigned threads)
{
    struct datadir_config cfg;
    struct est_config ec;
    struct est *est = NULL;
    int fd, rc;

    if ((rc = datadir_config_load(datadir_home(ctx->dd), &cfg)) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "reload refused, keeping the running configuration: %s",
                  mqpki_err_detail(rc));
        return rc;
    }
    est_config_from(&cfg, &ec);
    if ((rc = daemon_est_new(ctx, &ec, &est)) != MQPKI_OK)
        return rc;
    fd = http_stop(*h, 1);
    *h = NULL;
    est_free(ctx->est);
    ctx->est = est;
    if ((rc = http_start(ctx, listen, fd, threads, h)) != MQPKI_OK)
        return rc;
    mqpki_log(MQPKI_LOG_INFO, "reloaded configuration and TLS certificate");
    return MQPKI_OK;
}

/*
 * Where brokers fetch a full CRL the feed announces by a notice: [feed] crl_url, else [ca] url
 * when it is http:// (mqpkid's [http] crl_listen), else https:// with [ca] url's host (a name
 * in mqpkid's certificate) and the port this mqpkid listens on.
 */
static void feed_crl_base(const struct datadir_config *cfg, int listen_fd,
                          char out[PROTO_URL_MAX + 1])
{
    struct sockaddr_storage sa;
    socklen_t sl = sizeof(sa);
    const char *host = cfg->url + 8;
    size_t host_len;
    unsigned port = 0;

    out[0] = '\0';
    if (cfg->feed_crl_url[0] != '\0') {
        snprintf(out, PROTO_URL_MAX + 1, "%s", cfg->feed_crl_url);
    } else if (strncmp(cfg->url, "http://", 7) == 0) {
        snprintf(out, PROTO_URL_MAX + 1, "%s", cfg->url);
    } else if (strncmp(cfg->url, "https://", 8) == 0 &&
               getsockname(listen_fd, (struct sockaddr *)&sa, &sl) == 0) {
        port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                              : ((struct sockaddr_in *)&sa)->sin_port);
        host_len = host[0] == '[' && strchr(host, ']') != NULL
                       ? (size_t)(strchr(host, ']') - host) + 1
                       : strcspn(host, ":/");
        snprintf(out, PROTO_URL_MAX + 1, "https://%.*s:%u", (int)host_len, host, port);
    }
    /* No trailing slash: paths are appended. */
    if (out[0] != '\0' && out[strlen(out) - 1] == '/')
        out[strlen(out) - 1] = '\0';
    if (!proto_crl_url_ok(out))
        out[0] = '\0';
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"home", required_argument, NULL, 'H'},
        {"store", required_argument, NULL, 'S'},
        {"listen", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},
        {"log-format", required_argument, NULL, 'F'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct daemon_ctx ctx;
    struct est_config ec;
    struct http *h = NULL;
    const char *home_arg = NULL, *listen_arg = NULL;
    char home[4096], listen[160], base[PROTO_URL_MAX + 1];
    unsigned threads = DEFAULT_THREADS;
    sigset_t sigs;
    time_t last_tls_check = 0;
    struct crl_http *crl_http = NULL;
    const char *log_format = NULL;
    int c, rc, sig, listen_fd = -1, crl_fd = -1, verbose = 0;

    /* Out of the environment before any thread starts (unsetenv is not thread-safe) and out of
     * /proc/PID/environ for mqpkid's whole life; the copy kept serves later token opens. */
    hsm_pin_capture();
    /* The offline root's PIN is never mqpkid's to use: not kept either. */
    hsm_root_pin_forget();
    memset(&ctx, 0, sizeof(ctx));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': home_arg = optarg; break;
        case 'S':
            if (datadir_set_store(optarg) != MQPKI_OK) {
                fprintf(stderr, "mqpkid: %s\n", mqpki_err_detail(MQPKI_ERR_INVALID));
                return 1;
            }
            break;
        case 'l': listen_arg = optarg; break;
        case 't':
            threads = (unsigned)strtoul(optarg, NULL, 10);
            if (threads < 1 || threads > 256) {
                fprintf(stderr, "mqpkid: --threads: expected 1 to 256\n");
                return 1;
            }
            break;
        case 'v':
            verbose = 1;
            mqpki_log_set_level(MQPKI_LOG_DEBUG);
            break;
        case 'F':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "text") != 0) {
                fprintf(stderr, "mqpkid: --log-format: expected text or json\n");
                return 1;
            }
            log_format = optarg;
            if (strcmp(optarg, "json") == 0)
                mqpki_log_set_handler(log_json, NULL);
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("mqpkid %s\n", MQPKI_VERSION); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "mqpkid: unexpected argument '%s' (see mqpkid --help)\n", argv[optind]);
        return 1;
    }
    umask(077);
    /* Signals are taken synchronously by the main thread; workers never see them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if ((rc = datadir_resolve_home(home_arg, home)) != MQPKI_OK ||
        (rc = datadir_open(home, DATADIR_CA | DATADIR_DAEMON, &ctx.dd)) != MQPKI_OK)
        goto out;
    /* The command line wins over [log] in mqpki.conf. */
    if (!verbose)
        mqpki_log_set_level(log_level_parse(datadir_config(ctx.dd)->log_level));
    if (log_format == NULL && strcmp(datadir_config(ctx.dd)->log_format, "json") == 0)
        mqpki_log_set_handler(log_json, NULL);
    if ((rc = datadir_store_target(ctx.dd, ctx.db_path)) != MQPKI_OK)
        goto out;
    snprintf(listen, sizeof(listen), "%s",
             listen_arg != NULL ? listen_arg : datadir_config(ctx.dd)->listen);
    est_config_from(datadir_config(ctx.dd), &ec);
    if ((rc = lifecycle_committer_start(ctx.db_path, &ctx.committer)) != MQPKI_OK ||
        (rc = daemon_est_new(&ctx, &ec, &ctx.est)) != MQPKI_OK)
        goto out;
    /* Listening comes first: an mqpkid that cannot serve never links to a broker (its feed's
     * session would throw the live daemon's off). */
    if ((rc = http_bind(listen, &listen_fd)) != MQPKI_OK)
        goto out;
    if (datadir_config(ctx.dd)->crl_listen[0] != '\0' &&
        (rc = http_bind(datadir_config(ctx.dd)->crl_listen, &crl_fd)) != MQPKI_OK)
        goto out;
    (void)tls_tick(ctx.dd);
    last_tls_check = time(NULL);
    feed_crl_base(datadir_config(ctx.dd), listen_fd, base);
    if (datadir_config(ctx.dd)->feed_inline_max > 0) {
        if (base[0] == '\0')
            mqpki_log(MQPKI_LOG_WARN, "feed: no URL brokers could fetch large CRLs from ([feed] "
                                      "crl_url, [ca] url): every CRL goes whole");
        else if (strstr(base, "://localhost") != NULL || strstr(base, "://127.") != NULL ||
                 strstr(base, "://[::1]") != NULL)
            mqpki_log(MQPKI_LOG_INFO,
                      "feed: brokers fetch large CRLs from %s, on this host only "
                      "(brokers elsewhere: [feed] crl_url)",
                      base);
        else
            mqpki_log(MQPKI_LOG_INFO, "feed: brokers fetch large CRLs from %s", base);
    }
    if ((rc = feed_start(home, ctx.db_path, base, (size_t)datadir_config(ctx.dd)->feed_inline_max,
                         &ctx.feed)) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "CRL feed: %s", mqpki_err_detail(rc));
        goto out;
    }
    /* Publishes what a crashed process left open before serving anyone. */
    if ((rc = publisher_start(&ctx, &ctx.publisher)) != MQPKI_OK ||
        (rc = control_start(&ctx, &ctx.control)) != MQPKI_OK ||
        (rc = retention_start(&ctx, &ctx.retention)) != MQPKI_OK ||
        (rc = detect_start(&ctx, &ctx.detect)) != MQPKI_OK)
        goto out;
    feed_set_sink(ctx.feed, detect_sink, ctx.detect);
    rc = http_start(&ctx, listen, listen_fd, threads, &h);
    listen_fd = -1; /* MHD owns it now, or closed it */
    if (rc != MQPKI_OK)
        goto out;
    if (crl_fd >= 0) {
        rc = http_crl_start(&ctx, crl_fd, &crl_http);
        crl_fd = -1;
        if (rc != MQPKI_OK)
            goto out;
    }
    mqpki_log(MQPKI_LOG_INFO, "listening on https://%.*s:%u (data directory %s)",
              (int)(strrchr(listen, ':') - listen), listen, http_port(h), home);
    daemon_notify("READY=1");

    for (;;) {
        struct timespec tick = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT) {
            mqpki_log(MQPKI_LOG_INFO, "%s: finishing requests in flight, then stopping",
                      sig == SIGTERM ? "SIGTERM" : "SIGINT");
            daemon_notify("STOPPING=1");
            break;
        }
        if (sig == SIGHUP) {
            daemon_notify("RELOADING=1");
            feed_rescan(ctx.feed);
            /* The issuing CA of ca/issuing.pem (a replica's ca/ updated after a rollover made
             * elsewhere), and what a rollover made due: certificates of an older generation. */
            if ((rc = datadir_ca_reload(ctx.dd)) != MQPKI_OK)
                mqpki_log(MQPKI_LOG_ERROR, "issuing CA not reloaded: %s", mqpki_err_detail(rc));
            if ((rc = feed_offer_issuers(ctx.feed)) != MQPKI_OK)
                mqpki_log(MQPKI_LOG_ERROR, "feed: the issuing CAs not sent: %s",
                          mqpki_err_detail(rc));
            (void)tls_tick(ctx.dd);
            if (restart(&ctx, &h, listen, threads) != MQPKI_OK && h == NULL) {
                rc = MQPKI_ERR_IO;
                goto out;
            }
            __atomic_add_fetch(&ctx.reloads, 1, __ATOMIC_RELEASE);
            daemon_notify("READY=1");
            continue;
        }
        http_reap(h);
        if (time(NULL) - last_tls_check >= 3600) {
            last_tls_check = time(NULL);
            if (tls_tick(ctx.dd) && restart(&ctx, &h, listen, threads) != MQPKI_OK && h == NULL) {
                rc = MQPKI_ERR_IO;
                goto out;
            }
        }
    }
    rc = MQPKI_OK;
out:
    if (rc != MQPKI_OK)
        mqpki_log(MQPKI_LOG_ERROR, "%s", mqpki_err_detail(rc));
    (void)http_stop(h, 0);
    http_crl_stop(crl_http);
    if (listen_fd >= 0)
        close(listen_fd);
    if (crl_fd >= 0)
        close(crl_fd);
    retention_stop(ctx.retention);
    control_stop(ctx.control);
    feed_set_sink(ctx.feed, NULL, NULL);
    detect_stop(ctx.detect);
    publisher_stop(ctx.publisher);
    feed_stop(ctx.feed);
    est_free(ctx.est);
    lifecycle_committer_stop(ctx.committer);
    datadir_close(ctx.dd);
    if (rc == MQPKI_OK)
        mqpki_log(MQPKI_LOG_INFO, "stopped");
    return mqpki_err_exit_status(rc);
}
