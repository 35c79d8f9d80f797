/*
 * mqpki-device: the device agent, a thin front end over libmqpki-device's public API.
 *
 *   mqpki-device --dir DIR enroll --server URL (--ca FILE | --ca-fingerprint SHA256)
 *                --asset ID (--token-file FILE | --token T | env MQPKI_DEVICE_TOKEN)
 *                [--store file | pkcs11:MODULE] [--force]
 *   mqpki-device --dir DIR renew [--force]
 *   mqpki-device --dir DIR status [--json]
 *   mqpki-device --dir DIR run [--broker mqtts://HOST:PORT]
 *
 * Exit status 0 on success, 1 for a user, input or server-side error (one line on stderr), 2 for
 * an internal failure.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <mosquitto.h>

#include "mqpki_device.h"
#include "proto.h"

#define TOKEN_ENV   "MQPKI_DEVICE_TOKEN"
#define TOKEN_MAX   512
#define CHECK_EVERY 3600 /* run: re-check the schedule at least hourly */

static const char *prog = "mqpki-device";
static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t renew_flag;
static volatile sig_atomic_t retry_flag;

static const char usage_main[] =
    "usage: mqpki-device --dir DIR COMMAND [options]\n"
    "commands:\n"
    "  enroll   first enrollment over EST (key generated in the key store)\n"
    "  renew    renew the certificate now if due (--force: regardless)\n"
    "  status   identity, serial, expiry, renewal due, store, server (--json)\n"
    "  run      keep the identity fresh; obey " PROTO_TOPIC_ASSETS "ID" PROTO_TOPIC_CMD_SUFFIX
    " (--broker)\n"
    "every command takes --help; --version prints the version\n"
    "\n"
    "EXAMPLES\n"
    "  mqpki-device --dir /var/lib/mqpki-device enroll --server https://ca.example:8443 \\\n"
    "      --ca-fingerprint SHA256 --asset sensor-0001 --token-file token.txt\n"
    "  mqpki-device --dir /var/lib/mqpki-device status --json\n"
    "  mqpki-device --dir /var/lib/mqpki-device run --broker mqtts://broker.example:8883\n";
static const char usage_enroll[] =
    "usage: mqpki-device --dir DIR enroll --server https://HOST:PORT\n"
    "         (--ca FILE | --ca-fingerprint SHA256) --asset ID\n"
    "         (--token-file FILE | --token T | env MQPKI_DEVICE_TOKEN)\n"
    "         [--store file | pkcs11:/path/to/module.so] [--force]\n"
    "--token is visible to other users in ps: prefer --token-file or MQPKI_DEVICE_TOKEN.\n"
    "file store secret: MQPKI_DEVICE_SECRET, else DIR/secret (created 0600).\n"
    "pkcs11 store: PIN from MQPKI_DEVICE_PIN or DIR/pin (0600); token label\n"
    "MQPKI_DEVICE_TOKEN_LABEL (default \"device\").\n"
    "\nEXAMPLES\n"
    "  mqpki-device --dir dev enroll --server https://ca.example:8443 --ca chain.pem \\\n"
    "      --asset sensor-0001 --token-file token.txt\n"
    "  MQPKI_DEVICE_PIN=1234 mqpki-device --dir dev enroll ... \\\n"
    "      --store pkcs11:/usr/lib/softhsm/libsofthsm2.so\n";
static const char usage_renew[] =
    "usage: mqpki-device --dir DIR renew [--force]\n"
    "renews when due (two thirds of the lifetime plus jitter), or now with --force\n"
    "\nEXAMPLES\n"
    "  mqpki-device --dir dev renew\n"
    "  mqpki-device --dir dev renew --force\n";
static const char usage_status[] = "usage: mqpki-device --dir DIR status [--json]\n"
                                   "\nEXAMPLES\n"
                                   "  mqpki-device --dir dev status --json\n";
static const char usage_run[] =
    "usage: mqpki-device --dir DIR run [--broker mqtts://HOST:PORT]\n"
    "renews when due (retrying with backoff); with --broker, connects with the identity and\n"
    "renews at once on {\"op\":\"renew\"} on " PROTO_TOPIC_ASSETS "ID" PROTO_TOPIC_CMD_SUFFIX
    ".\nSIGTERM/SIGINT stop it; SIGHUP retries a failed renewal now.\n"
    "\nEXAMPLES\n"
    "  mqpki-device --dir dev run --broker mqtts://broker.example:8883\n"
    "  systemctl enable --now mqpki-device-agent\n";

/* One line on stderr, exit status from the error's kind. */
static int fail(const char *cmd, int rc)
{
    const char *d = mqpki_device_last_error();

    fprintf(stderr, "%s %s: %s\n", prog, cmd, d[0] != '\0' ? d : mqpki_device_strerror(rc));
    return mqpki_device_exit_status(rc);
}

static int usage_error(const char *cmd, const char *msg)
{
    fprintf(stderr, "%s %s: %s (see --help)\n", prog, cmd, msg);
    return 1;
}

static void log_stderr(int level, const char *msg, void *ctx)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};

    fprintf(stderr, "%s: %s: %s\n", prog, names[level >= 0 && level < 4 ? level : 3], msg);
}

static void time_str(int64_t t, char out[32])
{
    time_t tt = (time_t)t;
    struct tm tm;

    if (gmtime_r(&tt, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "%lld", (long long)t);
}

/* The enrollment token: file, else argv, else environment. Never echoed. */
static int token_get(const char *file, const char *arg, char out[TOKEN_MAX])
{
    const char *env = getenv(TOKEN_ENV);
    FILE *f;
    int rc = 0;

    out[0] = '\0';
    if (file != NULL) {
        f = fopen(file, "re");
        if (f == NULL) {
            fprintf(stderr, "%s enroll: token file %s: %s\n", prog, file, strerror(errno));
            rc = 1;
            goto out;
        }
        if (fgets(out, TOKEN_MAX, f) == NULL)
            out[0] = '\0';
        fclose(f);
        out[strcspn(out, "\r\n")] = '\0';
    } else if (arg != NULL) {
        snprintf(out, TOKEN_MAX, "%s", arg);
    } else if (env != NULL) {
        snprintf(out, TOKEN_MAX, "%s", env);
    }
    if (out[0] == '\0') {
        fprintf(stderr, "%s enroll: no enrollment token (--token-file, --token or %s)\n", prog,
                TOKEN_ENV);
        rc = 1;
    }
out:
    return rc;
}

static int cmd_enroll(struct mqpki_device *dev, int argc, char **argv)
{
    static const struct option opts[] = {{"server", required_argument, NULL, 's'},
                                         {"ca", required_argument, NULL, 'c'},
                                         {"ca-fingerprint", required_argument, NULL, 'f'},
                                         {"asset", required_argument, NULL, 'a'},
                                         {"token", required_argument, NULL, 't'},
                                         {"token-file", required_argument, NULL, 'T'},
                                         {"store", required_argument, NULL, 'S'},
                                         {"force", no_argument, NULL, 'F'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct mqpki_device_enroll_opts eo = {0};
    const char *token_arg = NULL, *token_file = NULL;
    char token[TOKEN_MAX];
    int c, rc;

    memset(token, 0, sizeof(token));
    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        switch (c) {
        case 's': eo.server = optarg; break;
        case 'c': eo.ca_file = optarg; break;
        case 'f': eo.ca_fingerprint = optarg; break;
        case 'a': eo.asset = optarg; break;
        case 't': token_arg = optarg; break;
        case 'T': token_file = optarg; break;
        case 'S': eo.store = optarg; break;
        case 'F': eo.force = 1; break;
        case 'h':
            fputs(usage_enroll, stdout);
            rc = 0;
            goto out;
        default: rc = usage_error("enroll", "unknown option"); goto out;
        }
    }
    if (optind != argc || eo.server == NULL || eo.asset == NULL ||
        (eo.ca_file == NULL) == (eo.ca_fingerprint == NULL)) {
        rc = usage_error("enroll", "needs --server, --asset and one of --ca, --ca-fingerprint");
        goto out;
    }
    rc = token_get(token_file, token_arg, token);
    if (rc != 0)
        goto out;
    eo.token = token;
    rc = mqpki_device_enroll(dev, &eo);
    if (rc != MQPKI_DEVICE_OK) {
        rc = fail("enroll", rc);
        goto out;
    }
    printf("enrolled %s\n", eo.asset);
out:
    /* The token is single use, but it is still a secret until the server consumed it. */
    explicit_bzero(token, sizeof(token));
    return rc;
}

static int cmd_renew(struct mqpki_device *dev, int argc, char **argv)
{
    static const struct option opts[] = {
        {"force", no_argument, NULL, 'F'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct mqpki_device_info info;
    int c, force = 0, renewed = 0, rc;

    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'F') {
            force = 1;
        } else if (c == 'h') {
            fputs(usage_renew, stdout);
            return 0;
        } else {
            return usage_error("renew", "unknown option");
        }
    }
    if (optind != argc)
        return usage_error("renew", "unexpected argument");
    rc = mqpki_device_renew(dev, force, &renewed);
    if (rc != MQPKI_DEVICE_OK)
        return fail("renew", rc);
    if (mqpki_device_info(dev, &info) != MQPKI_DEVICE_OK)
        return fail("renew", MQPKI_DEVICE_ERR_INTERNAL);
    if (renewed)
        printf("renewed %s: serial %s\n", info.asset, info.serial);
    else {
        char ra[32];
        time_str(info.renew_at, ra);
        printf("not due: %s renews after %s\n", info.asset, ra);
    }
    return 0;
}

static int cmd_status(struct mqpki_device *dev, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct mqpki_device_info info;
    char nb[32], na[32], ra[32];
    json_t *o;
    char *text;
    int c, json = 0, rc, due;

    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'j') {
            json = 1;
        } else if (c == 'h') {
            fputs(usage_status, stdout);
            return 0;
        } else {
            return usage_error("status", "unknown option");
        }
    }
    if (optind != argc)
        return usage_error("status", "unexpected argument");
    rc = mqpki_device_info(dev, &info);
    if (rc != MQPKI_DEVICE_OK)
        return fail("status", rc);
    due = mqpki_device_renewal_due(dev, (int64_t)time(NULL));
    time_str(info.not_before, nb);
    time_str(info.not_after, na);
    time_str(info.renew_at, ra);
    if (!json) {
        printf("asset       %s\nsubject     %s\nserial      %s\nnot_before  %s\n"
               "not_after   %s\nrenew_at    %s%s\nstore       %s\nserver      %s\n"
               "generation  %u\n",
               info.asset, info.subject, info.serial, nb, na, ra, due ? " (due)" : "", info.store,
               info.server, info.generation);
        return 0;
    }
    o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:s, s:i}", "asset", info.asset,
                  "subject", info.subject, "serial", info.serial, "not_before", nb, "not_after", na,
                  "renew_at", ra, "renewal_due", due, "store", info.store, "server", info.server,
                  "generation", (int)info.generation);
    text = o != NULL ? json_dumps(o, JSON_INDENT(2)) : NULL;
    json_decref(o);
    if (text == NULL)
        return fail("status", MQPKI_DEVICE_ERR_NOMEM);
    puts(text);
    free(text);
    return 0;
}

static void on_signal(int sig)
{
    /* SIGHUP (systemctl reload): check the schedule now, without waiting for a backoff. */
    if (sig == SIGHUP)
        retry_flag = 1;
    else
        stop_flag = 1;
}

struct broker {
    struct mosquitto *mosq;
    char host[256];
    int port;
    char topic[PROTO_TOPIC_MAX];
    int connected_once; /* broker_connect ran before: a reconnect after a renewal */
};

static void on_connect(struct mosquitto *mosq, void *ud, int rc)
{
    struct broker *b = ud;

    if (rc == 0)
        mosquitto_subscribe(mosq, NULL, b->topic, 1);
    else
        fprintf(stderr, "%s: warning: broker refused the connection: %s\n", prog,
                mosquitto_connack_string(rc));
}

static void on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *m)
{
    json_t *o = NULL;
    const char *op = NULL;

    /* Commands are tiny JSON objects; anything else is ignored (and said so). */
    if (m->payloadlen > 0 && m->payloadlen <= 4096)
        o = json_loadb(m->payload, (size_t)m->payloadlen, 0, NULL);
    if (o != NULL && json_unpack(o, "{s:s}", "op", &op) == 0 && strcmp(op, "renew") == 0) {
        fprintf(stderr, "%s: info: renew requested on %s\n", prog, m->topic);
        renew_flag = 1;
    } else {
        fprintf(stderr, "%s: warning: ignored command on %s\n", prog, m->topic);
    }
    json_decref(o);
}

/* (Re)connects with the current identity; called at start and after each renewal. */
static int broker_connect(struct mqpki_device *dev, struct broker *b)
{
    int rc;

    if (b->mosq != NULL) {
        mosquitto_disconnect(b->mosq);
        mosquitto_loop_stop(b->mosq, 0);
    }
    if (b->connected_once) {
        /* libmosquitto 2.0 drops its reference on a replaced SSL_CTX without freeing it: after
         * a renewal start from a fresh client, which releases the old context. */
        struct mqpki_device_info info;
        if (mqpki_device_info(dev, &info) != MQPKI_DEVICE_OK ||
            mosquitto_reinitialise(b->mosq, info.asset, true, b) != MOSQ_ERR_SUCCESS)
            return MQPKI_DEVICE_ERR_INTERNAL;
        mosquitto_connect_callback_set(b->mosq, on_connect);
        mosquitto_message_callback_set(b->mosq, on_message);
    }
    b->connected_once = 1;
    rc = mqpki_device_mosquitto_tls(dev, b->mosq);
    if (rc != MQPKI_DEVICE_OK)
        return rc;
    if (mosquitto_connect_async(b->mosq, b->host, b->port, 60) != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "%s: warning: cannot reach broker %s:%d; retrying\n", prog, b->host,
                b->port);
    mosquitto_reconnect_delay_set(b->mosq, 2, 60, true);
    if (mosquitto_loop_start(b->mosq) != MOSQ_ERR_SUCCESS)
        return MQPKI_DEVICE_ERR_INTERNAL;
    return MQPKI_DEVICE_OK;
}

static int parse_broker(const char *url, struct broker *b)
{
    const char *hp, *colon;
    char *end;
    long port;

    if (strncmp(url, "mqtts://", 8) != 0)
        return -1;
    hp = url + 8;
    colon = strrchr(hp, ':');
    if (colon == NULL || colon == hp || (size_t)(colon - hp) >= sizeof(b->host))
        return -1;
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return -1;
    memcpy(b->host, hp, (size_t)(colon - hp));
    b->host[colon - hp] = '\0';
    b->port = (int)port;
    return 0;
}

static int cmd_run(struct mqpki_device *dev, int argc, char **argv)
{
    static const struct option opts[] = {{"broker", required_argument, NULL, 'b'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct mqpki_device_info info;
    struct broker b = {0};
    const char *broker_url = NULL;
    struct sigaction sa;
    unsigned attempt = 0;
    int64_t next_try = 0;
    int c, rc = 0, renewed;

    while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
        if (c == 'b') {
            broker_url = optarg;
        } else if (c == 'h') {
            fputs(usage_run, stdout);
            return 0;
        } else {
            return usage_error("run", "unknown option");
        }
    }
    if (optind != argc)
        return usage_error("run", "unexpected argument");
    if (broker_url != NULL && parse_broker(broker_url, &b) != 0)
        return usage_error("run", "--broker: expected mqtts://HOST:PORT");
    rc = mqpki_device_info(dev, &info);
    if (rc != MQPKI_DEVICE_OK)
        return fail("run", rc);
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    mqpki_device_set_logger(log_stderr, NULL, 2);
    if (broker_url != NULL) {
        mosquitto_lib_init();
        (void)proto_topic_asset_cmd(info.asset, b.topic);
        b.mosq = mosquitto_new(info.asset, true, &b);
        if (b.mosq == NULL) {
            rc = fail("run", MQPKI_DEVICE_ERR_NOMEM);
            goto out;
        }
        mosquitto_connect_callback_set(b.mosq, on_connect);
        mosquitto_message_callback_set(b.mosq, on_message);
        rc = broker_connect(dev, &b);
        if (rc != MQPKI_DEVICE_OK) {
            rc = fail("run", rc);
            goto out;
        }
    }
    fprintf(stderr, "%s: info: running for %s\n", prog, info.asset);
    /* A one-second tick keeps the loop simple: signals and commands only set flags. */
    while (!stop_flag) {
        int64_t now = (int64_t)time(NULL);
        int want = renew_flag || mqpki_device_renewal_due(dev, now);
        if (retry_flag) {
            retry_flag = 0;
            next_try = 0;
        }
        if (want && now >= next_try) {
            rc = mqpki_device_renew(dev, renew_flag, &renewed);
            if (rc == MQPKI_DEVICE_OK) {
                renew_flag = 0;
                attempt = 0;
                next_try = 0;
                if (mqpki_device_info(dev, &info) == MQPKI_DEVICE_OK)
                    fprintf(stderr, "%s: info: renewed, serial %s\n", prog, info.serial);
                if (b.mosq != NULL && broker_connect(dev, &b) != MQPKI_DEVICE_OK)
                    fprintf(stderr, "%s: warning: reconnect: %s\n", prog,
                            mqpki_device_last_error());
            } else {
                int64_t d = mqpki_device_retry_delay(dev, attempt++);
                /* An internal failure stays retried too: the device must not give up. */
                fprintf(stderr, "%s: warning: renewal failed: %s; retry in %llds\n", prog,
                        mqpki_device_last_error(), (long long)d);
                next_try = now + d;
            }
        }
        sleep(1);
    }
    rc = 0;
    fprintf(stderr, "%s: info: stopping\n", prog);
out:
    if (b.mosq != NULL) {
        mosquitto_disconnect(b.mosq);
        mosquitto_loop_stop(b.mosq, 0);
        mosquitto_destroy(b.mosq);
        mosquitto_lib_cleanup();
    }
    return rc;
}

int main(int argc, char **argv)
{
    struct mqpki_device *dev = NULL;
    const char *dir = NULL, *cmd;
    int rc, i = 1;

    for (; i < argc && argv[i][0] == '-'; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(usage_main, stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0 || strcmp(argv[i], "-V") == 0) {
            printf("mqpki-device %s\n", MQPKI_VERSION);
            return 0;
        } else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else {
            return usage_error("", "unknown option");
        }
    }
    if (i >= argc) {
        fputs(usage_main, stderr);
        return 1;
    }
    cmd = argv[i];
    if (strcmp(cmd, "enroll") != 0 && strcmp(cmd, "renew") != 0 && strcmp(cmd, "status") != 0 &&
        strcmp(cmd, "run") != 0)
        return usage_error(cmd, "unknown command");
    /* --help works without a directory. */
    for (int j = i + 1; j < argc; j++)
        if (strcmp(argv[j], "--help") == 0)
            dir = dir != NULL ? dir : "";
    if (dir == NULL)
        return usage_error(cmd, "needs --dir DIR");
    argc -= i;
    argv += i;
    optind = 1;
    if (dir[0] != '\0') {
        rc = mqpki_device_open(dir, &dev);
        if (rc != MQPKI_DEVICE_OK)
            return fail(cmd, rc);
    }
    if (strcmp(cmd, "enroll") == 0)
        rc = cmd_enroll(dev, argc, argv);
    else if (strcmp(cmd, "renew") == 0)
        rc = cmd_renew(dev, argc, argv);
    else if (strcmp(cmd, "status") == 0)
        rc = cmd_status(dev, argc, argv);
    else
        rc = cmd_run(dev, argc, argv);
    mqpki_device_close(dev);
    return rc;
}
