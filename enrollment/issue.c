/* enrollment: the one issuance path, shared by the operator CLI and EST. */
#include "enrollment.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "inventory.h"

/* Serial collisions are astronomically rare with 127 random bits; retry a few times anyway. */
#define SERIAL_TRIES 3

static int profile_for_kind(int kind)
{
    switch (kind) {
    case INV_KIND_DEVICE: return CA_PROFILE_DEVICE;
    case INV_KIND_BROKER: return CA_PROFILE_BROKER;
    case INV_KIND_SERVICE: return CA_PROFILE_SERVICE;
    default: return -1;
    }
}

/* Signs and records one certificate inside an open transaction. */
static int sign_and_record(struct ca *ca, struct inventory *inv,
                           const struct enrollment_issue_req *req, int profile, EVP_PKEY *pub,
                           const char *key_fp, X509 **out)
{
    struct ca_issue_opts opts;
    struct inventory_cert rec;
    char serial[CA_SERIAL_HEX_MAX];
    X509 *cert = NULL;
    size_t pem_len = 0;
    int rc;

    memset(&opts, 0, sizeof(opts));
    memset(&rec, 0, sizeof(rec));
    if ((rc = ca_serial_new(serial)) != MQPKI_OK)
        goto out;
    opts.profile = (enum ca_profile)profile;
    opts.asset_id = req->asset_id;
    opts.dns = req->dns;
    opts.n_dns = req->n_dns;
    opts.ips = req->ips;
    opts.n_ips = req->n_ips;
    opts.days = req->days;
    if (opts.days == 0 && profile == CA_PROFILE_DEVICE)
        opts.days = req->device_days;
    else if (opts.days == 0 && profile == CA_PROFILE_BROKER)
        opts.days = req->broker_days;
    opts.serial_hex = serial;
    if ((rc = ca_issue_cert(ca, pub, &opts, &cert)) != MQPKI_OK)
        goto out;

    snprintf(rec.serial, sizeof(rec.serial), "%s", serial);
    snprintf(rec.asset_id, sizeof(rec.asset_id), "%s", req->asset_id);
    snprintf(rec.profile, sizeof(rec.profile), "%s", ca_profile_name(opts.profile));
    snprintf(rec.key_fp, sizeof(rec.key_fp), "%s", key_fp);
    rec.not_before = (int64_t)0;
    {
        const ASN1_TIME *nb = X509_get0_notBefore(cert), *na = X509_get0_notAfter(cert);
        struct tm tm;
        if (ASN1_TIME_to_tm(nb, &tm) == 1)
            rec.not_before = (int64_t)timegm(&tm);
        if (ASN1_TIME_to_tm(na, &tm) == 1)
            rec.not_after = (int64_t)timegm(&tm);
    }
    rec.state = INV_CERT_VALID;
    rec.reason = -1;
    if ((rc = ca_cert_pem(cert, &rec.pem, &pem_len)) != MQPKI_OK)
        goto out;
    if ((rc = inventory_cert_add(inv, &rec, req->supersede, req->actor)) != MQPKI_OK)
        goto out;
    *out = cert;
    cert = NULL;
out:
    free(rec.pem);
    X509_free(cert);
    return rc;
}

int enrollment_issue(struct ca *ca, struct inventory *inv, const struct enrollment_issue_req *req,
                     X509 **out)
{
    struct inventory_asset asset;
    X509_REQ *csr = NULL;
    EVP_PKEY *pub = NULL;
    X509 *cert = NULL;
    char key_fp[65];
    int rc, profile, in_tx = 0;

    *out = NULL;
    memset(&asset, 0, sizeof(asset));
    if (!mqpki_asset_id_valid(req->asset_id)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters",
                        req->asset_id != NULL ? req->asset_id : "");
        goto out;
    }
    /* Untrusted bytes are parsed and checked before the token or the store is touched. */
    if ((rc = ca_csr_parse(req->csr, req->csr_len, &csr)) != MQPKI_OK)
        goto out;
    if ((rc = ca_csr_check(csr)) != MQPKI_OK) {
        char detail[400];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        rc = mqpki_fail(rc, "asset %s: %s", req->asset_id, detail);
        goto out;
    }
    if ((pub = X509_REQ_get_pubkey(csr)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "asset %s: CSR has no usable public key", req->asset_id);
        goto out;
    }
    if ((rc = ca_pubkey_fingerprint(pub, key_fp)) != MQPKI_OK)
        goto out;

    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    /* The token is checked first: an unauthenticated caller learns nothing about the asset. */
    if (req->token != NULL) {
        rc = inventory_token_consume(inv, req->asset_id, req->token);
        if (rc == MQPKI_ERR_AUTH) {
            /* The failure count written by the consume call must persist (attempt limits). */
            (void)inventory_commit(inv);
            in_tx = 0;
            rc = mqpki_fail(MQPKI_ERR_AUTH, "asset %s: enrollment token refused", req->asset_id);
            goto out;
        }
        if (rc != MQPKI_OK)
            goto out;
    }
    if ((rc = inventory_asset_get(inv, req->asset_id, &asset)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "unknown asset %s", req->asset_id);
        goto out;
    }
    if (asset.state == INV_STATE_DECOMMISSIONED) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s is decommissioned", req->asset_id);
        goto out;
    }
    profile = profile_for_kind(asset.kind);
    if (req->profile >= 0 && req->profile != profile) {
        rc = mqpki_fail(MQPKI_ERR_POLICY, "asset %s is a %s; profile %s is not allowed for it",
                        req->asset_id, inventory_kind_name(asset.kind),
                        ca_profile_name((enum ca_profile)req->profile));
        goto out;
    }
    for (int i = 0; i < SERIAL_TRIES; i++) {
        rc = sign_and_record(ca, inv, req, profile, pub, key_fp, &cert);
        if (rc != MQPKI_ERR_EXISTS)
            break;
    }
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = inventory_commit(inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
    *out = cert;
    cert = NULL;
out:
    if (in_tx)
        inventory_rollback(inv);
    inventory_asset_clear(&asset);
    X509_free(cert);
    EVP_PKEY_free(pub);
    X509_REQ_free(csr);
    return rc;
}
