/*
 * feed: mqpkid's CRL feed (DESIGN.md 6). Connects to every registered bundled broker with
 * mqpkid's own service identity (tls/mqpkid.pem + tls/mqpkid.key, mTLS, libmosquitto),
 * publishes CRLs retained with QoS 1 on PROTO_TOPIC_CRL_FULL and PROTO_TOPIC_CRL_DELTA as the
 * publisher offers them from the store's outbox (and the newest ones to a broker that
 * connects), the newest signed audit checkpoint on PROTO_TOPIC_AUDIT_CHECKPOINT, and consumes
 * the brokers' security events (PROTO_TOPIC_EVENTS_ALL) into the inventory.
 */
#ifndef MQPKI_FEED_H
#define MQPKI_FEED_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct feed;

/* Starts the feed for the data directory home: a thread per broker, its own connection to the
 * store at store (inventory_open's target). Brokers that are down are retried with backoff; a
 * broker coming back gets the newest CRLs. A full CRL of inline_max bytes or more (0: none)
 * goes as a notice (proto_crl_notice_make) naming crl_base "/crl/issuing.crl" (an older
 * generation's: crl_base "/crl/generation/N/issuing.crl"), which the brokers fetch; crl_base
 * NULL or "" sends every CRL whole. */
int feed_start(const char *home, const char *store, const char *crl_base, size_t inline_max,
               struct feed **out);

/* 1 when a full CRL of len bytes goes to the brokers as a notice: offer it once crl/ serves
 * it (the notice's URL), not before. */
int feed_full_by_notice(const struct feed *f, size_t len);

/* Links brokers registered meanwhile (`mqpki broker init`) and stops those removed (feed_rescan).
 * Call about every second. */
void feed_tick(struct feed *f);

/* Links brokers registered since, and stops at once the links of brokers removed (no
 * brokers/NAME/broker.conf) or decommissioned; thread-safe (the control socket's "rescan"). */
void feed_rescan(struct feed *f);

/* One linked broker's state, for /metrics. */
struct feed_broker {
    char name[65];
    int connected;
};
/* Fills out with up to max linked brokers; returns how many. */
size_t feed_brokers(struct feed *f, struct feed_broker *out, size_t max);

/* 1 when every registered broker is connected (or none is registered), else 0. */
int feed_healthy(struct feed *f);

/* Brokers registered with the feed and how many of them are connected now. */
void feed_links(struct feed *f, int *total, int *connected);

/* Publishes a signed CRL (kind: INV_CRL_FULL or INV_CRL_DELTA) to every connected broker that
 * has not been sent this number or a higher one. der is copied by libmosquitto. */
void feed_offer(struct feed *f, int kind, int64_t number, const unsigned char *der, size_t len);

/* Publishes the newest signed audit checkpoint (its JSON, datadir_audit_json) retained with
 * QoS 1 on PROTO_TOPIC_AUDIT_CHECKPOINT to every connected broker not sent it or a newer one,
 * and to every broker that connects later: a copy of the anchor outside the store. An older
 * id than the one held is ignored. json is copied. */
void feed_offer_checkpoint(struct feed *f, int64_t id, const char *json, size_t len);

/* Publishes a device command (JSON) with QoS 1, not retained, on asset's command topic
 * (PROTO_TOPIC_ASSETS ID PROTO_TOPIC_CMD_SUFFIX) to every connected broker; returns to how
 * many brokers it went (0: none connected). */
int feed_command(struct feed *f, const char *asset, const char *json, size_t len);

/* Sends the newest CRLs from the store (and the newest checkpoint) to every connected broker
 * again. */
void feed_resend(struct feed *f);

/*
 * Where the brokers' security events go (detect.c): fn is called on a link's thread with the
 * broker's name and one event (a JSON object, borrowed for the call), or with ev NULL and
 * dropped > 0 when the broker reports events its ring dropped. NULL fn: events are only logged.
 */
typedef void (*feed_event_fn)(void *ctx, const char *broker, json_t *ev, int64_t dropped);
void feed_set_sink(struct feed *f, feed_event_fn fn, void *ctx);

/* Publishes the quarantine list ({"assets":[...]}) retained with QoS 1 on
 * PROTO_TOPIC_QUARANTINE to every connected broker, and to every broker that connects later.
 * json is copied. */
void feed_offer_quarantine(struct feed *f, const char *json, size_t len);

/* Reads ca/chain.pem (the issuing CA generations to trust, then the root) and, when it
 * changed, publishes it retained with QoS 1 on PROTO_TOPIC_CA_ISSUERS to every connected broker,
 * and to every broker that connects later before any CRL: a broker verifies the CRLs of a new
 * issuing CA generation with it and refuses certificates of a retired one. */
int feed_offer_issuers(struct feed *f);

/* Publishes what crl/generation-G/ holds of each older live issuing CA generation G retained
 * with QoS 1 on PROTO_TOPIC_CRL_GENERATION G /full and /delta to every connected broker not
 * sent it yet (and to every broker that connects later), and clears a retired one's. */
void feed_offer_generations(struct feed *f);

/* Publishes an alert (JSON, QoS 1, not retained) on PROTO_TOPIC_ALERTS to every connected
 * broker. */
void feed_publish_alert(struct feed *f, const char *json, size_t len);

/* Stops, disconnecting cleanly. NULL-safe. */
void feed_stop(struct feed *f);

#endif
