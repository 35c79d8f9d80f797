/*
 * mqpki-fieldbus: the five devices of the energy provider's field message bus (OASIS "MQTT and
 * the NIST Cybersecurity Framework", Appendix A), one role per process, built on the public API
 * of libmqpki-device only.
 *
 *   mqpki-fieldbus ROLE --dir DIR --broker mqtts://HOST:PORT [--run-id N]
 *   ROLE: tablet | meter | dms | capbank | supply
 *
 * Each role connects with mutual TLS (mqpki_device_mosquitto_tls), subscribes to what it must
 * read, and reacts. The roles are named after their asset ids; every device publishes only under
 * its own fleet/ROLE/ subtree and reads other subtrees only where the broker's ACL file grants it.
 *
 *   tablet   SIGUSR1 starts run N (then N+1...): fleet/tablet/setpoint {"run":N,"volts":114}
 *            reads fleet/dms/diagram and displays it
 *   supply   reads fleet/tablet/setpoint and fleet/dms/supply/cmd ({"op":"raise","volts":V});
 *            publishes its output on fleet/supply/voltage
 *   meter    reads fleet/supply/voltage; publishes fleet/meter/voltage with a status
 *            (low / normal / high, ANSI C84.1 range A for 120 V service)
 *   dms      reads fleet/meter/voltage and fleet/capbank/status; low voltage: close the cap bank
 *            (fleet/dms/capbank/cmd); cap bank closed: raise the supply to 120 V
 *            (fleet/dms/supply/cmd); voltage back to normal: a new single-line diagram
 *            (fleet/dms/diagram)
 *   capbank  reads fleet/dms/capbank/cmd; publishes fleet/capbank/status {"state":"closed"}
 *
 * stdout carries one JSON line per event, for the demo driver's timeline:
 *   {"t_ms":EPOCH_MS,"who":ROLE,"event":E,"topic":T,"payload":P}
 * E is "connected" (after the broker acknowledged the subscriptions), "publish", "receive",
 * "display" (tablet), "disconnected", or "refused" (the broker refused the identity, e.g. a
 * revoked certificate). Diagnostics go to stderr.
 *
 * A lost connection is retried with backoff; a refused identity ends the process with status 3:
 * retrying a revoked certificate cannot succeed, the device has to be enrolled again.
 * SIGTERM or SIGINT disconnect cleanly and exit 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <mosquitto.h>
#include <mqpki_device.h>

#define LOW_VOLTS    114 /* the tablet's set-point */
#define RAISED_VOLTS 120 /* what the DMS asks the supply for */
#define RANGE_A_MIN  118 /* below: "low" (service voltage, ANSI C84.1 range A is 114-126) */
#define RANGE_A_MAX  126
#define PAYLOAD_MAX  4096
#define EXIT_REFUSED 3
#define BACKOFF_MIN  200  /* ms */
#define BACKOFF_MAX  5000 /* ms */

enum role { TABLET, METER, DMS, CAPBANK, SUPPLY };

static const char *const role_names[] = {"tablet", "meter", "dms", "capbank", "supply"};

/* What each role reads (granted by the broker's ACL file for the other subtrees). */
static const char *const subs_tablet[] = {"fleet/dms/diagram", NULL};
static const char *const subs_meter[] = {"fleet/supply/voltage", NULL};
static const char *const subs_dms[] = {"fleet/meter/voltage", "fleet/capbank/status", NULL};
static const char *const subs_capbank[] = {"fleet/dms/capbank/cmd", NULL};
static const char *const subs_supply[] = {"fleet/tablet/setpoint", "fleet/dms/supply/cmd", NULL};
static const char *const *const role_subs[] = {subs_tablet, subs_meter, subs_dms, subs_capbank,
                                               subs_supply};

static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t start_runs; /* tablet: SIGUSR1 count not yet served */

struct bus {
    enum role role;
    const char *who;
    struct mosquitto *mosq;
    int connected; /* CONNACK accepted */
    int refused;   /* CONNACK refused: the identity is not accepted */
    long run;      /* tablet: the next run id */
    /* dms: where the current run stands */
    long dms_run;
    int dms_closed, dms_raised, dms_done;
    long supply_volts, meter_volts;
};

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        start_runs++;
    else
        stop_flag = 1;
}

static long long now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* One event line on stdout. payload: a JSON text (kept as JSON when it parses) or NULL. */
static void emit(const struct bus *b, const char *event, const char *topic, const char *payload)
{
    json_t *o, *p = NULL;
    char *line;

    if (payload != NULL) {
        p = json_loads(payload, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
        if (p == NULL)
            p = json_string(payload);
    }
    o = json_pack("{s:I, s:s, s:s, s:s?, s:o?}", "t_ms", (json_int_t)now_ms(), "who", b->who,
                  "event", event, "topic", topic, "payload", p);
    if (o == NULL)
        return;
    line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (line != NULL)
        printf("%s\n", line);
    free(line);
    json_decref(o);
}

/* Publishes a JSON object (stolen) on fleet/WHO/SUFFIX, QoS 1, not retained. */
static void publish(struct bus *b, const char *suffix, json_t *obj)
{
    char topic[128], *text;
    int rc;

    if (obj == NULL)
        return;
    snprintf(topic, sizeof(topic), "fleet/%s/%s", b->who, suffix);
    text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (text == NULL)
        return;
    emit(b, "publish", topic, text);
    rc = mosquitto_publish(b->mosq, NULL, topic, (int)strlen(text), text, 1, false);
    if (rc != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "mqpki-fieldbus %s: publish on %s: %s\n", b->who, topic,
                mosquitto_strerror(rc));
    free(text);
}

static const char *meter_status(long volts)
{
    if (volts < RANGE_A_MIN)
        return "low";
    return volts > RANGE_A_MAX ? "high" : "normal";
}

/* The DMS's view of the feeder, as a small single-line diagram for the operator's tablet. */
static json_t *dms_diagram(const struct bus *b)
{
    char line[256];

    snprintf(line, sizeof(line),
             "substation-7 [supply %ld V] ---- feeder-12 ---- [capbank %s] ---- [meter %ld V %s]",
             b->supply_volts, b->dms_closed ? "closed" : "open", b->meter_volts,
             meter_status(b->meter_volts));
    return json_pack(
        "{s:I, s:s, s:{s:I}, s:{s:s}, s:{s:I, s:s}, s:s}", "run", (json_int_t)b->dms_run, "feeder",
        "feeder-12", "supply", "volts", (json_int_t)b->supply_volts, "capbank", "state",
        b->dms_closed ? "closed" : "open", "meter", "volts", (json_int_t)b->meter_volts, "status",
        meter_status(b->meter_volts), "diagram", line);
}

static void dms_react(struct bus *b, const char *topic, json_int_t run, json_t *msg)
{
    /* A new run id starts the sequence again (after a recovery, for instance). */
    if (run != b->dms_run) {
        b->dms_run = run;
        b->dms_closed = b->dms_raised = b->dms_done = 0;
    }
    if (strcmp(topic, "fleet/meter/voltage") == 0) {
        const char *status = json_string_value(json_object_get(msg, "status"));
        b->meter_volts = (long)json_integer_value(json_object_get(msg, "volts"));
        if (status == NULL)
            return;
        if (strcmp(status, "low") == 0 && !b->dms_closed) {
            publish(b, "capbank/cmd", json_pack("{s:I, s:s}", "run", run, "op", "close"));
        } else if (strcmp(status, "normal") == 0 && b->dms_raised && !b->dms_done) {
            b->supply_volts = b->meter_volts;
            b->dms_done = 1;
            publish(b, "diagram", dms_diagram(b));
        }
    } else if (strcmp(topic, "fleet/capbank/status") == 0) {
        const char *state = json_string_value(json_object_get(msg, "state"));
        if (state != NULL && strcmp(state, "closed") == 0 && !b->dms_raised) {
            b->dms_closed = b->dms_raised = 1;
            publish(b, "supply/cmd",
                    json_pack("{s:I, s:s, s:i}", "run", run, "op", "raise", "volts", RAISED_VOLTS));
        }
    }
}

static void on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *m)
{
    struct bus *b = ud;
    char text[PAYLOAD_MAX];
    json_t *msg;
    json_int_t run;
    size_t n = m->payloadlen > 0 ? (size_t)m->payloadlen : 0;

    if (n >= sizeof(text))
        n = sizeof(text) - 1;
    memcpy(text, m->payload != NULL ? m->payload : "", n);
    text[n] = '\0';
    emit(b, "receive", m->topic, text);
    /* Peers' payloads are untrusted input: anything but a JSON object with a run id is ignored. */
    msg = json_loads(text, 0, NULL);
    if (!json_is_object(msg) || !json_is_integer(json_object_get(msg, "run"))) {
        json_decref(msg);
        return;
    }
    run = json_integer_value(json_object_get(msg, "run"));
    switch (b->role) {
    case SUPPLY: {
        json_t *v = json_object_get(msg, "volts");
        const char *op = json_string_value(json_object_get(msg, "op"));
        int is_cmd = strcmp(m->topic, "fleet/dms/supply/cmd") == 0;
        if (json_is_integer(v) && (!is_cmd || (op != NULL && strcmp(op, "raise") == 0)))
            publish(b, "voltage", json_pack("{s:I, s:O}", "run", run, "volts", v));
        break;
    }
    case METER: {
        json_t *v = json_object_get(msg, "volts");
        if (json_is_integer(v))
            publish(b, "voltage",
                    json_pack("{s:I, s:O, s:s}", "run", run, "volts", v, "status",
                              meter_status((long)json_integer_value(v))));
        break;
    }
    case DMS: dms_react(b, m->topic, run, msg); break;
    case CAPBANK: {
        const char *op = json_string_value(json_object_get(msg, "op"));
        if (op != NULL && strcmp(op, "close") == 0)
            publish(b, "status", json_pack("{s:I, s:s}", "run", run, "state", "closed"));
        break;
    }
    case TABLET: {
        const char *diagram = json_string_value(json_object_get(msg, "diagram"));
        json_t *d = json_pack("{s:I, s:s?}", "run", run, "diagram", diagram);
        char *s = d != NULL && diagram != NULL ? json_dumps(d, JSON_COMPACT) : NULL;
        if (s != NULL)
            emit(b, "display", m->topic, s);
        free(s);
        json_decref(d);
        break;
    }
    }
    json_decref(msg);
}

static void on_connect(struct mosquitto *mosq, void *ud, int rc)
{
    struct bus *b = ud;
    const char *const *subs = role_subs[b->role];
    int n = 0;

    if (rc != 0) {
        /* CONNACK refused: the plugin does this for a revoked or held certificate. */
        b->refused = 1;
        emit(b, "refused", NULL, mosquitto_connack_string(rc));
        return;
    }
    b->connected = 1;
    while (subs[n] != NULL)
        n++;
    rc = mosquitto_subscribe_multiple(mosq, NULL, n, (char *const *)subs, 1, 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        fprintf(stderr, "mqpki-fieldbus %s: subscribe: %s\n", b->who, mosquitto_strerror(rc));
}

/* "connected" is reported once the subscriptions hold, so the driver knows the role listens. */
static void on_subscribe(struct mosquitto *mosq, void *ud, int mid, int qos_count,
                         const int *granted)
{
    struct bus *b = ud;
    json_t *list = json_array();
    char *text;

    for (int i = 0; role_subs[b->role][i] != NULL; i++) {
        /* 0x80: the broker's ACL refused that filter. */
        json_array_append_new(list, json_pack("{s:s, s:b}", "filter", role_subs[b->role][i],
                                              "granted", i < qos_count && granted[i] < 0x80));
    }
    text = json_dumps(list, JSON_COMPACT);
    emit(b, "connected", NULL, text);
    free(text);
    json_decref(list);
}

static void on_disconnect(struct mosquitto *mosq, void *ud, int rc)
{
    struct bus *b = ud;

    if (b->connected)
        emit(b, "disconnected", NULL, rc == 0 ? "stopped" : mosquitto_strerror(rc));
    b->connected = 0;
}

static int parse_url(const char *url, char *host, size_t size, int *port)
{
    const char *hp = url + 8, *colon = strrchr(url, ':');

    if (strncmp(url, "mqtts://", 8) != 0 || colon == NULL || colon < hp ||
        (size_t)(colon - hp) >= size)
        return -1;
    memcpy(host, hp, (size_t)(colon - hp));
    host[colon - hp] = '\0';
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_flag)
        ;
}

static void tablet_start_run(struct bus *b)
{
    publish(b, "setpoint", json_pack("{s:I, s:i}", "run", (json_int_t)b->run, "volts", LOW_VOLTS));
    b->run++;
}

/* Runs until SIGTERM/SIGINT or a refused identity; reconnects after a lost connection. */
static int bus_run(struct bus *b, const char *host, int port)
{
    long backoff = BACKOFF_MIN;
    int rc = mosquitto_connect(b->mosq, host, port, 30);

    while (!stop_flag && !b->refused) {
        if (rc != MOSQ_ERR_SUCCESS) {
            sleep_ms(backoff);
            backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
            if (stop_flag)
                break;
            rc = mosquitto_reconnect(b->mosq);
            continue;
        }
        if (b->connected)
            backoff = BACKOFF_MIN;
        while (b->role == TABLET && start_runs > 0 && b->connected) {
            start_runs--;
            tablet_start_run(b);
        }
        rc = mosquitto_loop(b->mosq, 100, 1);
    }
    if (b->refused)
        return EXIT_REFUSED;
    if (b->connected) {
        mosquitto_disconnect(b->mosq);
        /* Lets the DISCONNECT go out and on_disconnect report it. */
        for (int i = 0; i < 10 && b->connected; i++)
            mosquitto_loop(b->mosq, 50, 1);
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: mqpki-fieldbus tablet|meter|dms|capbank|supply --dir DIR\n"
               "         --broker mqtts://HOST:PORT [--run-id N]\n"
               "tablet: SIGUSR1 starts a run (the first numbered N, default 1)\n");
    if (f == stdout)
        fprintf(f, "\nEXAMPLES\n"
                   "  mqpki-fieldbus meter --dir dev/meter-1 --broker mqtts://localhost:8883\n"
                   "  mqpki-fieldbus tablet --dir dev/tablet --broker mqtts://localhost:8883 "
                   "--run-id 5\n");
}

int main(int argc, char **argv)
{
    struct mqpki_device *dev = NULL;
    struct mqpki_device_info info;
    struct bus b = {.run = 1};
    struct sigaction sa;
    const char *dir = NULL, *url = NULL;
    char host[256];
    int port, rc, i, status = 2;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("mqpki-fieldbus %s\n", MQPKI_VERSION);
        return 0;
    }
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    for (i = 0; i < 5 && strcmp(argv[1], role_names[i]) != 0; i++)
        ;
    if (i == 5) {
        usage(stderr);
        return 1;
    }
    b.role = (enum role)i;
    b.who = role_names[i];
    for (i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--dir") == 0)
            dir = argv[i + 1];
        else if (strcmp(argv[i], "--broker") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--run-id") == 0)
            b.run = atol(argv[i + 1]);
        else
            break;
    }
    if (i != argc || dir == NULL || url == NULL || parse_url(url, host, sizeof(host), &port) ||
        b.run < 1) {
        usage(stderr);
        return 1;
    }

    /* Signals interrupt the loop's poll (no SA_RESTART) so that they are served at once. */
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    rc = mqpki_device_open(dir, &dev);
    if (rc == MQPKI_DEVICE_OK)
        rc = mqpki_device_info(dev, &info);
    if (rc != MQPKI_DEVICE_OK) {
        fprintf(stderr, "mqpki-fieldbus %s: %s\n", b.who, mqpki_device_last_error());
        status = mqpki_device_exit_status(rc);
        goto out;
    }
    if (strcmp(info.asset, b.who) != 0)
        fprintf(stderr,
                "mqpki-fieldbus %s: warning: the identity is asset %s; the broker "
                "allows it fleet/%s/# only\n",
                b.who, info.asset, info.asset);
    mosquitto_lib_init();
    b.mosq = mosquitto_new(info.asset, true, &b);
    if (b.mosq == NULL) {
        fprintf(stderr, "mqpki-fieldbus %s: out of memory\n", b.who);
        goto out;
    }
    mosquitto_connect_callback_set(b.mosq, on_connect);
    mosquitto_subscribe_callback_set(b.mosq, on_subscribe);
    mosquitto_message_callback_set(b.mosq, on_message);
    mosquitto_disconnect_callback_set(b.mosq, on_disconnect);
    /* Each step is one small message: without TCP_NODELAY Nagle's algorithm holds it for the
     * peer's delayed ACK, about 40 ms a hop. */
    mosquitto_int_option(b.mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* One call: TLS 1.2+, the provisioned CA only, the certificate and the key in its store. */
    rc = mqpki_device_mosquitto_tls(dev, b.mosq);
    if (rc != MQPKI_DEVICE_OK) {
        fprintf(stderr, "mqpki-fieldbus %s: %s\n", b.who, mqpki_device_last_error());
        status = mqpki_device_exit_status(rc);
        goto out;
    }
    status = bus_run(&b, host, port);
out:
    mosquitto_destroy(b.mosq);
    mosquitto_lib_cleanup();
    mqpki_device_close(dev);
    return status;
}
