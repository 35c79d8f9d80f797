/*
 * device/mosq.c: mqpki_device_mosquitto_tls. libmosquitto takes our SSL_CTX as is
 * (MOSQ_OPT_SSL_CTX without its defaults), which also means it applies none of its own checks:
 * peer verification against the provisioned CA and the host name check are set up here.
 */
#include <arpa/inet.h>
#include <string.h>

#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "device_int.h"

/*
 * libmosquitto passes the broker's host name to SSL_set_tlsext_host_name before the handshake;
 * the leaf must name it (DNS name, or IP address for a literal), as mosquitto_tls_set would
 * check.
 */
static int verify_cb(int ok, X509_STORE_CTX *sctx)
{
    SSL *ssl;
    const char *host;
    unsigned char ip[16];
    X509 *leaf;

    if (!ok || X509_STORE_CTX_get_error_depth(sctx) != 0)
        return ok;
    ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    host = ssl != NULL ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
    leaf = X509_STORE_CTX_get_current_cert(sctx);
    if (host == NULL || leaf == NULL) {
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_HOSTNAME_MISMATCH);
        return 0;
    }
    if (inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1)
        ok = X509_check_ip_asc(leaf, host, 0) == 1;
    else
        ok = X509_check_host(leaf, host, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, NULL) == 1;
    if (!ok) {
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_HOSTNAME_MISMATCH);
        dev_log(DEV_LOG_ERROR, "broker certificate does not name %s", host);
    }
    return ok;
}

/* An SSL_CTX for the current identity: TLS 1.2+, our CA only, our chain and key. */
static int ctx_build(struct mqpki_device *dev, SSL_CTX **out)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int rc = MQPKI_DEVICE_OK;

    *out = NULL;
    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1 ||
        X509_STORE_up_ref(dev->trust) != 1) {
        rc = dev_fail(MQPKI_DEVICE_ERR_CRYPTO, "cannot create an SSL_CTX");
        goto out;
    }
    SSL_CTX_set_cert_store(ctx, dev->trust);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
    if (SSL_CTX_use_certificate(ctx, dev->cert) != 1 ||
        SSL_CTX_use_PrivateKey(ctx, dev->key) != 1 || SSL_CTX_check_private_key(ctx) != 1 ||
        (dev->chain != NULL && SSL_CTX_set1_chain(ctx, dev->chain) != 1)) {
        rc = dev_fail(MQPKI_DEVICE_ERR_CRYPTO, "cannot install the identity in the SSL_CTX");
        goto out;
    }
    *out = ctx;
    ctx = NULL;
out:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return rc;
}

MQPKI_DEVICE_EXPORT int mqpki_device_mosquitto_tls(struct mqpki_device *dev, void *mosq)
{
    int rc = MQPKI_DEVICE_OK, mrc;

    dev_clear_error();
    if (dev == NULL || mosq == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "no device handle or mosquitto client");
        goto out;
    }
    if (!dev->enrolled) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOT_ENROLLED, "%s: device not enrolled", dev->dir);
        goto out;
    }
    if (dev->ssl_ctx == NULL) {
        rc = ctx_build(dev, &dev->ssl_ctx);
        if (rc != MQPKI_DEVICE_OK)
            goto out;
    }
    /* libmosquitto takes its own reference on the SSL_CTX. */
    mrc = mosquitto_int_option(mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
    if (mrc == MOSQ_ERR_SUCCESS)
        mrc = mosquitto_void_option(mosq, MOSQ_OPT_SSL_CTX, dev->ssl_ctx);
    if (mrc != MOSQ_ERR_SUCCESS)
        rc = dev_fail(MQPKI_DEVICE_ERR_INTERNAL, "libmosquitto TLS setup: %s",
                      mosquitto_strerror(mrc));
out:
    return rc;
}
