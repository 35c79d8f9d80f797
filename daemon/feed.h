/*
 * feed: mqpkid's CRL publisher (DESIGN.md 6). Connects to every registered bundled broker with
 * mqpkid's own service identity (tls/mqpkid.pem + tls/mqpkid.key, mTLS, libmosquitto), publishes
 * the CRL files of the data directory retained with QoS 1 (crl/issuing.crl on mqpki/v1/crl/full,
 * crl/issuing-delta.crl on mqpki/v1/crl/delta) whenever they change (inotify on crl/), and
 * consumes the brokers' security events (mqpki/v1/events/+) into the inventory.
 */
#ifndef MQPKI_FEED_H
#define MQPKI_FEED_H

struct feed;

/* Starts the feed for the data directory home: its own thread(s), its own store connection.
 * Brokers that are down are retried with backoff; a broker coming back gets the current CRLs. */
int feed_start(const char *home, struct feed **out);

/* 1 when every registered broker is connected (or none is registered), else 0. */
int feed_healthy(struct feed *f);

/* Publishes the current CRL files at once (also done by itself on every change). */
int feed_publish_now(struct feed *f);

/* Stops, disconnecting cleanly. NULL-safe. */
void feed_stop(struct feed *f);

#endif
