/*
 * mqpki-sensor: the smallest device built on libmqpki-device. It opens an enrolled device
 * directory, lets the library set up mutual TLS for libmosquitto, publishes one reading on
 * fleet/ASSET/telemetry and exits.
 *
 *   mqpki-device --dir /var/lib/sensor enroll ...     (once)
 *   mqpki-sensor /var/lib/sensor mqtts://broker.example:8883
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mqpki_device.h>

static int published, refused;

static void on_publish(struct mosquitto *mosq, void *ud, int mid)
{
    published = 1;
    mosquitto_disconnect(mosq);
}

/* A refused identity (revoked, unknown) will not be accepted on retry: stop instead. */
static void on_connect(struct mosquitto *mosq, void *ud, int rc)
{
    if (rc != 0) {
        refused = rc;
        mosquitto_disconnect(mosq);
    }
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

#define SENSOR_USAGE "usage: mqpki-sensor DEVICE_DIR mqtts://HOST:PORT | --help | --version"

int main(int argc, char **argv)
{
    struct mqpki_device *dev = NULL;
    struct mqpki_device_info info;
    struct mosquitto *mosq = NULL;
    char host[256], topic[128], payload[128];
    int port, rc, status = 1;

    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("%s\n"
               "Publishes one reading with the device's mqpki identity (an example of\n"
               "libmqpki-device's API).\n\n"
               "EXAMPLES\n"
               "  mqpki-sensor /var/lib/mqpki-device mqtts://broker.example:8883\n",
               SENSOR_USAGE);
        return 0;
    }
    if (argc == 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("mqpki-sensor %s\n", MQPKI_VERSION);
        return 0;
    }
    if (argc != 3 || parse_url(argv[2], host, sizeof(host), &port) != 0) {
        fprintf(stderr, "%s\n", SENSOR_USAGE);
        return 1;
    }
    /* The identity: certificate, chain and a key that stays in its store. */
    rc = mqpki_device_open(argv[1], &dev);
    if (rc == MQPKI_DEVICE_OK)
        rc = mqpki_device_info(dev, &info);
    if (rc != MQPKI_DEVICE_OK) {
        fprintf(stderr, "mqpki-sensor: %s\n", mqpki_device_last_error());
        goto out;
    }
    mosquitto_lib_init();
    mosq = mosquitto_new(info.asset, true, NULL);
    if (mosq == NULL)
        goto out;
    mosquitto_publish_callback_set(mosq, on_publish);
    mosquitto_connect_callback_set(mosq, on_connect);
    /* One call: TLS 1.2+, the provisioned CA only, our certificate and key. */
    rc = mqpki_device_mosquitto_tls(dev, mosq);
    if (rc != MQPKI_DEVICE_OK) {
        fprintf(stderr, "mqpki-sensor: %s\n", mqpki_device_last_error());
        goto out;
    }
    rc = mosquitto_connect(mosq, host, port, 30);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqpki-sensor: connect %s:%d: %s\n", host, port, mosquitto_strerror(rc));
        goto out;
    }
    snprintf(topic, sizeof(topic), "fleet/%s/telemetry", info.asset);
    snprintf(payload, sizeof(payload), "{\"temperature_c\":21.5,\"serial\":\"%s\"}", info.serial);
    rc = mosquitto_publish(mosq, NULL, topic, (int)strlen(payload), payload, 1, false);
    /* Runs until the broker acknowledged the QoS 1 message and we disconnected. */
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_loop_forever(mosq, 10000, 1);
    if (refused) {
        fprintf(stderr, "mqpki-sensor: broker refused the connection: %s\n",
                mosquitto_connack_string(refused));
        goto out;
    }
    if (!published) {
        fprintf(stderr, "mqpki-sensor: publish on %s failed: %s\n", topic, mosquitto_strerror(rc));
        goto out;
    }
    printf("published on %s\n", topic);
    status = 0;
out:
    mosquitto_destroy(mosq);
    mosquitto_lib_cleanup();
    mqpki_device_close(dev);
    return status;
}
