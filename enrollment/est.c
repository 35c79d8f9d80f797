/* enrollment: EST (RFC 7030) request handling, independent of sockets. */
#include "enrollment.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/conf.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "common.h"
#include "enrollment_int.h"
#include "inventory.h"
#include "lifecycle.h"
#include "proto.h"

#define EST_PREFIX "/.well-known/est/"
#define AUTH_MAX   512

static const char *const CT_PKCS7 = "application/pkcs7-mime; smime-type=certs-only";
static const char *const CT_CSRATTRS = "application/csrattrs";
static const char *const CT_TEXT = "text/plain; charset=utf-8";

struct est {
    struct ca *ca;
    struct lifecycle_committer *cm;
    struct est_config cfg;
    struct ratelimit *limits;
    X509_STORE *trust; /* root + issuing, to verify re-enrollment client certificates */
    char *cacerts;     /* precomputed base64 PKCS#7 of issuing + root */
    size_t cacerts_len;
    char *csrattrs; /* precomputed base64 CsrAttrs */
    size_t csrattrs_len;
};

/* Base64 with 64-character lines, as RFC 7030 bodies are (Content-Transfer-Encoding). */
static int base64_encode(const unsigned char *in, size_t len, char **out, size_t *out_len)
{
    BIO *b64 = BIO_new(BIO_f_base64()), *mem = BIO_new(BIO_s_mem());
    char *data = NULL;
    long n;
    int rc = MQPKI_ERR_CRYPTO;

    *out = NULL;
    if (b64 == NULL || mem == NULL)
        goto out;
    b64 = BIO_push(b64, mem);
    mem = NULL;
    if (BIO_write(b64, in, (int)len) != (int)len || BIO_flush(b64) != 1)
        goto out;
    n = BIO_get_mem_data(b64, &data);
    if (n <= 0 || (*out = malloc((size_t)n + 1)) == NULL)
        goto out;
    memcpy(*out, data, (size_t)n);
    (*out)[n] = '\0';
    *out_len = (size_t)n;
    rc = MQPKI_OK;
out:
    BIO_free_all(b64);
    BIO_free(mem);
    return rc;
}

/* A degenerate signedData "certs-only" PKCS#7 (RFC 7030 4.1.3, 4.2.3), base64. */
static int certs_only(X509 *const *certs, size_t n, char **out, size_t *out_len)
{
    PKCS7 *p7 = PKCS7_new();
    unsigned char *der = NULL;
    int der_len, rc = MQPKI_ERR_CRYPTO;

    if (p7 == NULL || PKCS7_set_type(p7, NID_pkcs7_signed) != 1 ||
        PKCS7_content_new(p7, NID_pkcs7_data) != 1)
        goto out;
    for (size_t i = 0; i < n; i++)
        if (PKCS7_add_certificate(p7, certs[i]) != 1)
            goto out;
    if ((der_len = i2d_PKCS7(p7, &der)) <= 0)
        goto out;
    rc = base64_encode(der, (size_t)der_len, out, out_len);
out:
    OPENSSL_free(der);
    PKCS7_free(p7);
    return rc;
}

/*
 * CsrAttrs (RFC 7030 4.5.2): sign with ECDSA-SHA256 and use an EC P-256 key. Encoded by
 * OpenSSL's ASN.1 generator from a description rather than by hand.
 */
static int make_csrattrs(char **out, size_t *out_len)
{
    static const char desc[] = "[attrs]\n"
                               "sig = OID:ecdsa-with-SHA256\n"
                               "pk = SEQUENCE:pkattr\n"
                               "[pkattr]\n"
                               "type = OID:id-ecPublicKey\n"
                               "values = SET:curves\n"
                               "[curves]\n"
                               "curve = OID:prime256v1\n";
    CONF *conf = NCONF_new(NULL);
    BIO *bio = BIO_new_mem_buf(desc, -1);
    ASN1_TYPE *t = NULL;
    unsigned char *der = NULL;
    long line = 0;
    int der_len, rc = MQPKI_ERR_CRYPTO;

    if (conf == NULL || bio == NULL || NCONF_load_bio(conf, bio, &line) <= 0)
        goto out;
    if ((t = ASN1_generate_nconf("SEQUENCE:attrs", conf)) == NULL)
        goto out;
    if ((der_len = i2d_ASN1_TYPE(t, &der)) <= 0)
        goto out;
    rc = base64_encode(der, (size_t)der_len, out, out_len);
out:
    OPENSSL_free(der);
    ASN1_TYPE_free(t);
    BIO_free(bio);
    NCONF_free(conf);
    return rc;
}

int est_new(struct ca *ca, struct lifecycle_committer *cm, const struct est_config *cfg,
            struct est **out)
{
    struct est *est;
    X509 *chain[2 + EST_ALSO_TRUSTED_MAX];
    size_t n = 0;
    int rc;

    *out = NULL;
    if (cfg->n_also_trusted > EST_ALSO_TRUSTED_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "%zu older issuing CAs: at most %d",
                          cfg->n_also_trusted, EST_ALSO_TRUSTED_MAX);
    if ((est = calloc(1, sizeof(*est))) == NULL)
        return MQPKI_ERR_NOMEM;
    est->ca = ca;
    est->cm = cm;
    est->cfg = *cfg;
    est->cfg.also_trusted = NULL;
    est->cfg.n_also_trusted = 0;
    /* The current issuing CA first, the older generations still trusted, the root last. */
    chain[n++] = ca_issuing_cert(ca);
    for (size_t i = 0; i < cfg->n_also_trusted; i++)
        chain[n++] = cfg->also_trusted[i];
    chain[n++] = ca_root_cert(ca);
    if ((rc = certs_only(chain, n, &est->cacerts, &est->cacerts_len)) != MQPKI_OK ||
        (rc = make_csrattrs(&est->csrattrs, &est->csrattrs_len)) != MQPKI_OK) {
        rc = mqpki_fail(rc, "cannot encode the EST /cacerts or /csrattrs response");
        goto out;
    }
    if ((est->trust = X509_STORE_new()) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "cannot build the client certificate trust store");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (X509_STORE_add_cert(est->trust, chain[i]) != 1) {
            rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot build the client certificate trust store");
            goto out;
        }
    if ((rc = ratelimit_new(cfg, &est->limits)) != MQPKI_OK)
        goto out;
    *out = est;
    est = NULL;
out:
    est_free(est);
    return rc;
}

int est_client_cert_verify(struct est *est, X509 *cert)
{
    X509_STORE_CTX *vc = X509_STORE_CTX_new();
    int rc = MQPKI_ERR_AUTH;

    if (est != NULL && vc != NULL && X509_STORE_CTX_init(vc, est->trust, cert, NULL) == 1 &&
        X509_STORE_CTX_set_purpose(vc, X509_PURPOSE_SSL_CLIENT) == 1 && X509_verify_cert(vc) == 1)
        rc = MQPKI_OK;
    X509_STORE_CTX_free(vc);
    return rc;
}

void est_free(struct est *est)
{
    if (est == NULL)
        return;
    ratelimit_free(est->limits);
    X509_STORE_free(est->trust);
    free(est->cacerts);
    free(est->csrattrs);
    free(est);
}

int est_handles(const char *path)
{
    return path != NULL && strncmp(path, EST_PREFIX, strlen(EST_PREFIX)) == 0;
}

void est_response_clear(struct est_response *resp)
{
    if (resp == NULL)
        return;
    free(resp->body);
    memset(resp, 0, sizeof(*resp));
}

/* A short fixed reason for the client; the details went to the log. */
static void reply_text(struct est_response *resp, int status, const char *result, const char *text)
{
    size_t n = strlen(text);

    free(resp->body);
    resp->status = status;
    resp->result = result;
    resp->content_type = CT_TEXT;
    resp->body_len = 0;
    resp->base64 = 0;
    if ((resp->body = malloc(n + 2)) != NULL) {
        memcpy(resp->body, text, n);
        resp->body[n] = '\n';
        resp->body[n + 1] = '\0';
        resp->body_len = n + 1;
    }
}

static void reply_copy(struct est_response *resp, const char *ct, const char *data, size_t len)
{
    resp->status = 200;
    resp->result = "ok";
    resp->content_type = ct;
    resp->base64 = 1;
    if ((resp->body = malloc(len + 1)) == NULL) {
        reply_text(resp, 500, "error", "out of memory");
        return;
    }
    memcpy(resp->body, data, len + 1);
    resp->body_len = len;
}

/* Maps an issuance error to RFC 7030 status codes (DESIGN.md 5). */
static void reply_error(struct est_response *resp, int rc)
{
    switch (rc) {
    case MQPKI_ERR_PARSE:
    case MQPKI_ERR_INVALID: reply_text(resp, 400, "bad_request", "bad request: invalid CSR"); break;
    case MQPKI_ERR_TOO_LARGE: reply_text(resp, 413, "too_large", "request body too large"); break;
    case MQPKI_ERR_AUTH:
    case MQPKI_ERR_NOT_FOUND:
        /* Unknown asset and wrong token look the same from outside. */
        reply_text(resp, 401, "unauthorized", "authentication failed");
        resp->www_authenticate = 1;
        break;
    case MQPKI_ERR_POLICY:
    case MQPKI_ERR_STATE: reply_text(resp, 403, "forbidden", "refused by policy"); break;
    case MQPKI_ERR_BUSY:
    case MQPKI_ERR_STORE:
    case MQPKI_ERR_HSM:
        reply_text(resp, 503, "unavailable", "service unavailable, retry later");
        resp->retry_after = 5;
        break;
    default: reply_text(resp, 500, "error", "internal error"); break;
    }
}

/*
 * Splits "Basic base64(ASSET:TOKEN)" (RFC 7617). The decoded form must be printable ASCII, with
 * the first ':' separating asset and token. Returns 0 when malformed.
 */
MQPKI_STATIC int parse_basic_auth(const char *header, char asset[PROTO_ASSET_ID_MAX + 1],
                                  char token[AUTH_MAX])
{
    unsigned char decoded[AUTH_MAX];
    const char *b64;
    char *colon;
    size_t len;
    int n, ok = 0;

    if (header == NULL || strncasecmp(header, "Basic ", 6) != 0)
        return 0;
    for (b64 = header + 6; *b64 == ' '; b64++)
        ;
    len = strlen(b64);
    if (len == 0 || len % 4 != 0 || len / 4 * 3 >= sizeof(decoded))
        return 0;
    n = EVP_DecodeBlock(decoded, (const unsigned char *)b64, (int)len);
    if (n < 0)
        goto out;
    /* EVP_DecodeBlock counts padding as zero bytes; drop them. */
    if (len >= 1 && b64[len - 1] == '=')
        n--;
    if (len >= 2 && b64[len - 2] == '=')
        n--;
    decoded[n] = '\0';
    for (int i = 0; i < n; i++)
        if (decoded[i] < 0x21 || decoded[i] > 0x7e)
            goto out;
    if ((colon = strchr((char *)decoded, ':')) == NULL)
        goto out;
    *colon = '\0';
    if (!proto_asset_id_valid((char *)decoded) || strlen(colon + 1) == 0 ||
        strlen(colon + 1) >= AUTH_MAX)
        goto out;
    /* Both lengths were checked above. */
    memcpy(asset, decoded, strlen((char *)decoded) + 1);
    memcpy(token, colon + 1, strlen(colon + 1) + 1);
    ok = 1;
out:
    OPENSSL_cleanse(decoded, sizeof(decoded));
    return ok;
}

/* A certificate time, or fallback when unreadable. */
static int64_t asn1_to_time(const ASN1_TIME *t, int64_t fallback)
{
    int64_t v;

    return proto_asn1_time(t, &v) == 0 ? v : fallback;
}

/* Remembers a verified chain for the rest of the connection (struct est_peer). */
static void peer_remember(struct est_peer *peer, const unsigned char hash[32], X509_STORE_CTX *ctx,
                          const char *serial, const char *asset)
{
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
    int64_t from = INT64_MIN, until = INT64_MAX;

    peer->verified = 0;
    if (chain == NULL || sk_X509_num(chain) < 1)
        return;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        int64_t nb = asn1_to_time(X509_get0_notBefore(c), INT64_MAX);
        int64_t na = asn1_to_time(X509_get0_notAfter(c), INT64_MIN);
        if (nb > from)
            from = nb;
        if (na < until)
            until = na;
    }
    if (from > until)
        return;
    memcpy(peer->cert_sha256, hash, sizeof(peer->cert_sha256));
    peer->valid_from = from;
    peer->valid_until = until;
    snprintf(peer->serial, sizeof(peer->serial), "%s", serial);
    snprintf(peer->asset, sizeof(peer->asset), "%s", asset);
    peer->verified = 1;
}

/*
 * Authenticates a re-enrollment by its TLS client certificate (the TLS handshake proved
 * possession of its key): it chains to our CA, is one of ours in the store, and is neither
 * revoked, on hold nor expired. Fills the asset id.
 */
static int check_client_cert(struct est *est, struct inventory *inv, const struct est_request *req,
                             char asset[PROTO_ASSET_ID_MAX + 1],
                             char serial_out[PROTO_SERIAL_HEX_MAX + 1])
{
    const unsigned char *p = req->client_cert;
    X509 *cert = NULL;
    X509_STORE_CTX *ctx = NULL;
    struct est_peer *peer = req->peer;
    unsigned char hash[32];
    char serial[PROTO_SERIAL_HEX_MAX + 1], key_fp[PROTO_FP_HEX_LEN + 1];
    int64_t now = mqpki_now();
    int rc = MQPKI_ERR_AUTH;

    if (p == NULL || req->client_cert_len == 0 || req->client_cert_len > 64 * 1024) {
        mqpki_fail(rc, "re-enrollment without a TLS client certificate");
        goto out;
    }
    /* Same bytes as a chain this connection already verified, still within its validity:
     * parsing and verifying again would give the same answer. */
    if (SHA256(p, req->client_cert_len, hash) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot hash the client certificate");
        goto out;
    }
    if (peer != NULL && peer->verified &&
        CRYPTO_memcmp(hash, peer->cert_sha256, sizeof(hash)) == 0 && now >= peer->valid_from &&
        now <= peer->valid_until) {
        snprintf(serial, sizeof(serial), "%s", peer->serial);
        snprintf(asset, PROTO_ASSET_ID_MAX + 1, "%s", peer->asset);
        snprintf(key_fp, sizeof(key_fp), "%s", peer->key_fp);
        goto lookup;
    }
    if (peer != NULL)
        peer->verified = 0;
    cert = d2i_X509(NULL, &p, (long)req->client_cert_len);
    if (cert == NULL || p != req->client_cert + req->client_cert_len) {
        mqpki_fail(rc, "re-enrollment: unparsable client certificate");
        goto out;
    }
    if ((ctx = X509_STORE_CTX_new()) == NULL ||
        X509_STORE_CTX_init(ctx, est->trust, cert, NULL) != 1) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot set up certificate verification");
        goto out;
    }
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(ctx) != 1) {
        mqpki_fail(rc, "re-enrollment: client certificate does not verify: %s",
                   X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        goto out;
    }
    if (ca_cert_serial_hex(cert, serial) != MQPKI_OK || !proto_cert_asset_id(cert, asset)) {
        mqpki_fail(rc, "re-enrollment: client certificate names no mqpki asset");
        goto out;
    }
    /* The key it was issued for: one forged under a serial of ours carries another. */
    if ((rc = ca_pubkey_fingerprint(X509_get0_pubkey(cert), key_fp)) != MQPKI_OK) {
        rc =
            mqpki_fail(MQPKI_ERR_AUTH, "re-enrollment: the client certificate's key is unreadable");
        goto out;
    }
    if (peer != NULL) {
        peer_remember(peer, hash, ctx, serial, asset);
        snprintf(peer->key_fp, sizeof(peer->key_fp), "%s", key_fp);
    }
    rc = MQPKI_ERR_AUTH;
lookup:
    /* Checked again inside the transaction that records the new certificate. */
    if ((rc = lifecycle_check_auth_cert(inv, serial, asset, key_fp, est->cfg.reenroll_grace)) !=
        MQPKI_OK)
        goto out;
    snprintf(serial_out, PROTO_SERIAL_HEX_MAX + 1, "%s", serial);
out:
    X509_STORE_CTX_free(ctx);
    X509_free(cert);
    return rc;
}

/* Splits /.well-known/est/[LABEL/]OP; the label picks a profile. 0 when unknown (404). */
MQPKI_STATIC int parse_est_path(const char *path, int *profile, const char **op)
{
    const char *rest = path + strlen(EST_PREFIX), *slash = strchr(rest, '/');
    char label[16];

    *profile = -1;
    if (slash == NULL) {
        *op = rest;
    } else {
        size_t n = (size_t)(slash - rest);
        if (n == 0 || n >= sizeof(label) || strchr(slash + 1, '/') != NULL)
            return 0;
        memcpy(label, rest, n);
        label[n] = '\0';
        *profile = ca_profile_parse(label);
        if (ca_profile(*profile) == NULL || !ca_profile(*profile)->requestable)
            return 0;
        *op = slash + 1;
    }
    return strcmp(*op, "cacerts") == 0 || strcmp(*op, "simpleenroll") == 0 ||
           strcmp(*op, "simplereenroll") == 0 || strcmp(*op, "csrattrs") == 0;
}

static int content_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);

    return ct != NULL && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';');
}

static void enroll(struct est *est, struct inventory *inv, const struct est_request *req,
                   int profile, int re, struct est_response *resp)
{
    struct lifecycle_issue_req ir;
    char asset[PROTO_ASSET_ID_MAX + 1] = "", token[AUTH_MAX] = "", actor[96];
    char auth_serial[PROTO_SERIAL_HEX_MAX + 1] = "";
    X509 *cert = NULL;
    int rc, wait;

    memset(&ir, 0, sizeof(ir));
    if ((wait = ratelimit_check(est->limits, req->client_addr, NULL)) > 0) {
        reply_text(resp, 429, "rate_limited", "too many requests");
        resp->retry_after = wait;
        goto out;
    }
    if (strcmp(req->method, "POST") != 0) {
        reply_text(resp, 405, "bad_method", "method not allowed");
        goto out;
    }
    if (req->body_len > EST_BODY_MAX) {
        reply_text(resp, 413, "too_large", "request body too large");
        goto out;
    }
    if (!content_type_is(req->content_type, "application/pkcs10")) {
        reply_text(resp, 415, "bad_request", "content type must be application/pkcs10");
        goto out;
    }
    /* No credentials at all is not a wrong guess: common EST clients (and curl --anyauth) send
     * the first request without them and answer the challenge (RFC 7235 2.1). Counting it as
     * a failure locked out a NAT address after a few good enrollments. */
    if (re ? req->client_cert == NULL || req->client_cert_len == 0
           : req->authorization == NULL || req->authorization[0] == '\0') {
        reply_error(resp, MQPKI_ERR_AUTH);
        resp->result = "challenge";
        resp->www_authenticate = !re; /* a certificate is not asked for in HTTP */
        goto out;
    }
    if (re) {
        rc = check_client_cert(est, inv, req, asset, auth_serial);
    } else if (!parse_basic_auth(req->authorization, asset, token)) {
        rc = mqpki_fail(MQPKI_ERR_AUTH, "enrollment without valid HTTP Basic ASSET:TOKEN");
    } else if ((wait = ratelimit_check(est->limits, NULL, asset)) > 0) {
        reply_text(resp, 429, "rate_limited", "too many failed attempts for this asset");
        resp->retry_after = wait;
        goto out;
    } else {
        rc = MQPKI_OK;
    }
    if (rc == MQPKI_OK) {
        snprintf(actor, sizeof(actor), "est:%.64s", req->client_addr ? req->client_addr : "?");
        ir.asset_id = asset;
        ir.csr = req->body;
        ir.csr_len = req->body_len;
        ir.profile = profile;
        memcpy(ir.profile_days, est->cfg.profile_days, sizeof(ir.profile_days));
        ir.token = re ? NULL : token;
        ir.auth_serial = re ? auth_serial : NULL;
        ir.supersede = re;
        ir.reenroll_grace = est->cfg.reenroll_grace;
        ir.actor = actor;
        rc = lifecycle_issue_batched(est->ca, inv, est->cm, &ir, &cert);
    }
    if (rc != MQPKI_OK) {
        char detail[300];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        mqpki_log(MQPKI_LOG_WARN, "%s %s from %s refused: %s", req->method, req->path,
                  req->client_addr ? req->client_addr : "?", detail);
        if (rc == MQPKI_ERR_AUTH || rc == MQPKI_ERR_NOT_FOUND) {
            /* Every refused authentication counts against the address and the asset, and is
             * audited: lifecycle_issue did it for a token it was given, the rest is ours. */
            ratelimit_failure(est->limits, req->client_addr, asset[0] ? asset : NULL);
            if (ir.token == NULL) {
                snprintf(actor, sizeof(actor), "est:%.64s",
                         req->client_addr ? req->client_addr : "?");
                int arc = lifecycle_record_refusal(inv, asset[0] ? asset : NULL, 0, actor, detail);
                if (arc != MQPKI_OK)
                    mqpki_log(MQPKI_LOG_WARN, "refusal not audited: %s", mqpki_err_detail(arc));
            }
        }
        reply_error(resp, rc);
        if (rc == MQPKI_ERR_AUTH && re)
            resp->www_authenticate = 0; /* Basic would not help: a certificate is needed */
        goto out;
    }
    {
        char *b64 = NULL, serial[PROTO_SERIAL_HEX_MAX + 1] = "";
        size_t len = 0;
        if (certs_only(&cert, 1, &b64, &len) != MQPKI_OK) {
            reply_text(resp, 500, "error", "internal error");
            goto out;
        }
        (void)ca_cert_serial_hex(cert, serial);
        mqpki_log(MQPKI_LOG_INFO, "%s: asset %s from %s: certificate %s issued",
                  re ? "simplereenroll" : "simpleenroll", asset,
                  req->client_addr ? req->client_addr : "?", serial);
        resp->status = 200;
        resp->result = "ok";
        resp->content_type = CT_PKCS7;
        resp->base64 = 1;
        resp->body = b64;
        resp->body_len = len;
    }
out:
    OPENSSL_cleanse(token, sizeof(token));
    X509_free(cert);
}

void est_handle(struct est *est, struct inventory *inv, const struct est_request *req,
                struct est_response *resp)
{
    const char *op = NULL;
    int profile;

    memset(resp, 0, sizeof(*resp));
    mqpki_err_clear();
    if (!est_handles(req->path) || !parse_est_path(req->path, &profile, &op)) {
        reply_text(resp, 404, "not_found", "not found");
        return;
    }
    if (strcmp(op, "cacerts") == 0 || strcmp(op, "csrattrs") == 0) {
        if (strcmp(req->method, "GET") != 0) {
            reply_text(resp, 405, "bad_method", "method not allowed");
            return;
        }
        if (op[1] == 'a')
            reply_copy(resp, CT_PKCS7, est->cacerts, est->cacerts_len);
        else
            reply_copy(resp, CT_CSRATTRS, est->csrattrs, est->csrattrs_len);
        return;
    }
    enroll(est, inv, req, profile, strcmp(op, "simplereenroll") == 0, resp);
}
