/* lifecycle/issue.c: issuance, the one path for the operator CLI, EST and mqpkid itself. */
#include "lifecycle.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "inventory.h"
#include "lifecycle_int.h"
#include "proto.h"

/* Serial collisions are astronomically rare with 127 random bits; retry a few times anyway. */
#define SERIAL_TRIES 3

/* An asset of kind K gets the profile named K (ca/profile.c). */
static int profile_for_kind(int kind)
{
    return ca_profile_parse(inventory_kind_name(kind));
}

/* Signs a certificate for pub and fills its store record (rec->pem is heap, caller frees). */
static int sign(struct ca *ca, const struct lifecycle_issue_req *req, int profile, EVP_PKEY *pub,
                const char *key_fp, X509 **out, struct inventory_cert *rec)
{
    struct ca_issue_opts opts;
    char serial[PROTO_SERIAL_HEX_MAX + 1];
    size_t pem_len = 0;
    int rc;

    memset(&opts, 0, sizeof(opts));
    memset(rec, 0, sizeof(*rec));
    if ((rc = ca_serial_new(serial)) != MQPKI_OK)
        return rc;
    opts.profile = (enum ca_profile)profile;
    opts.asset_id = req->asset_id;
    opts.dns = req->dns;
    opts.n_dns = req->n_dns;
    opts.ips = req->ips;
    opts.n_ips = req->n_ips;
    opts.days = req->days != 0 ? req->days : req->profile_days[profile];
    opts.serial_hex = serial;
    if ((rc = ca_issue_cert(ca, pub, &opts, out)) != MQPKI_OK)
        return rc;
    snprintf(rec->serial, sizeof(rec->serial), "%s", serial);
    snprintf(rec->asset_id, sizeof(rec->asset_id), "%s", req->asset_id);
    snprintf(rec->profile, sizeof(rec->profile), "%s", ca_profile_name(opts.profile));
    snprintf(rec->key_fp, sizeof(rec->key_fp), "%s", key_fp);
    (void)proto_asn1_time(X509_get0_notBefore(*out), &rec->not_before);
    (void)proto_asn1_time(X509_get0_notAfter(*out), &rec->not_after);
    rec->state = INV_CERT_VALID;
    rec->reason = -1;
    if ((rc = ca_cert_pem(*out, &rec->pem, &pem_len)) != MQPKI_OK) {
        X509_free(*out);
        *out = NULL;
    }
    return rc;
}

/*
 * A superseded certificate renews only as the immediate predecessor of the asset's newest one,
 * within the grace window, while that newer certificate is unused: the device whose answer was
 * lost retries. Once the newer one renewed, was revoked, or a broker saw it, the old credential
 * is spent: a stolen old certificate and key cannot keep minting new ones.
 */
static int check_grace(struct inventory *inv, const struct inventory_cert *c, int64_t grace)
{
    struct inventory_cert newer;
    int rc = MQPKI_ERR_AUTH;

    memset(&newer, 0, sizeof(newer));
    if (c->superseded_at == 0 || c->superseded_by[0] == '\0') {
        mqpki_fail(rc,
                   "re-enrollment: certificate %s was superseded; only the asset's newest "
                   "certificate renews",
                   c->serial);
        goto out;
    }
    if (mqpki_now() - c->superseded_at > grace) {
        mqpki_fail(rc,
                   "re-enrollment: certificate %s was superseded %lld s ago, beyond the grace "
                   "window of %lld s ([enrollment] reenroll_grace)",
                   c->serial, (long long)(mqpki_now() - c->superseded_at), (long long)grace);
        goto out;
    }
    if (inventory_cert_get(inv, c->superseded_by, 0, &newer) != MQPKI_OK ||
        newer.state != INV_CERT_VALID) {
        mqpki_fail(rc, "re-enrollment: certificate %s was superseded by %s, which is %s", c->serial,
                   c->superseded_by,
                   newer.serial[0] ? inventory_cert_state_name(newer.state) : "unknown");
        goto out;
    }
    if (newer.seen_at != 0) {
        mqpki_fail(rc,
                   "re-enrollment: certificate %s was superseded by %s, which has connected to "
                   "a broker",
                   c->serial, newer.serial);
        goto out;
    }
    rc = MQPKI_OK;
out:
    inventory_cert_clear(&newer);
    return rc;
}

int lifecycle_check_auth_cert(struct inventory *inv, const char *serial, const char *asset,
                              int64_t grace)
{
    struct inventory_cert c;
    int rc = MQPKI_ERR_AUTH;

    memset(&c, 0, sizeof(c));
    if (inventory_cert_get(inv, serial, 0, &c) != MQPKI_OK) {
        mqpki_fail(rc, "re-enrollment: certificate %s is not in the store", serial);
        goto out;
    }
    if (strcmp(c.asset_id, asset) != 0 ||
        (c.state != INV_CERT_VALID && c.state != INV_CERT_SUPERSEDED)) {
        mqpki_fail(rc, "re-enrollment: certificate %s of asset %s is %s", serial, c.asset_id,
                   inventory_cert_state_name(c.state));
        goto out;
    }
    rc = c.state == INV_CERT_VALID ? MQPKI_OK : check_grace(inv, &c, grace);
out:
    inventory_cert_clear(&c);
    return rc;
}

int lifecycle_record(struct inventory *inv, const struct inventory_cert *rec,
                     const struct lifecycle_auth *auth)
{
    int rc;

    if (auth->token != NULL) {
        rc = inventory_token_consume(inv, rec->asset_id, auth->token);
        if (rc != MQPKI_OK)
            return rc == MQPKI_ERR_AUTH
                       ? mqpki_fail(rc, "asset %s: enrollment token refused", rec->asset_id)
                       : rc;
    }
    /* A revocation or hold that committed while this request was being signed wins. */
    if (auth->auth_serial != NULL &&
        (rc = lifecycle_check_auth_cert(inv, auth->auth_serial, rec->asset_id,
                                        auth->reenroll_grace)) != MQPKI_OK)
        return rc;
    return inventory_cert_add(inv, rec, auth->supersede, auth->actor);
}

/* Untrusted bytes are parsed and checked before the token or the store is touched. */
static int check_request(const struct lifecycle_issue_req *req, EVP_PKEY **pub,
                         char key_fp[PROTO_FP_HEX_LEN + 1])
{
    X509_REQ *csr = NULL;
    int rc;

    *pub = NULL;
    if (!proto_asset_id_valid(req->asset_id)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters",
                        req->asset_id != NULL ? req->asset_id : "");
        goto out;
    }
    if ((rc = ca_csr_parse(req->csr, req->csr_len, &csr)) != MQPKI_OK)
        goto out;
    if ((rc = ca_csr_check(csr)) != MQPKI_OK) {
        char detail[400];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        rc = mqpki_fail(rc, "asset %s: %s", req->asset_id, detail);
        goto out;
    }
    if ((*pub = X509_REQ_get_pubkey(csr)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "asset %s: CSR has no usable public key", req->asset_id);
        goto out;
    }
    if ((rc = ca_pubkey_fingerprint(*pub, key_fp)) != MQPKI_OK) {
        EVP_PKEY_free(*pub);
        *pub = NULL;
    }
out:
    X509_REQ_free(csr);
    return rc;
}

/* The asset may receive a certificate under the requested profile; gives the profile. */
static int check_asset(struct inventory *inv, const struct lifecycle_issue_req *req, int *profile)
{
    struct inventory_asset asset;
    int rc;

    memset(&asset, 0, sizeof(asset));
    if ((rc = inventory_asset_get(inv, req->asset_id, &asset)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "unknown asset %s", req->asset_id);
        goto out;
    }
    if (asset.state == INV_STATE_DECOMMISSIONED) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s is decommissioned", req->asset_id);
        goto out;
    }
    *profile = profile_for_kind(asset.kind);
    if (req->profile >= 0 && req->profile != *profile)
        rc = mqpki_fail(MQPKI_ERR_POLICY, "asset %s is a %s; profile %s is not allowed for it",
                        req->asset_id, inventory_kind_name(asset.kind),
                        ca_profile_name((enum ca_profile)req->profile));
out:
    inventory_asset_clear(&asset);
    return rc;
}

int lifecycle_issue_batched(struct ca *ca, struct inventory *inv, struct lifecycle_committer *cm,
                            const struct lifecycle_issue_req *req, X509 **out)
{
    struct inventory_cert rec;
    struct lifecycle_auth auth = {req->token, req->auth_serial, req->supersede, req->actor,
                                  req->reenroll_grace};
    EVP_PKEY *pub = NULL;
    X509 *cert = NULL;
    char key_fp[PROTO_FP_HEX_LEN + 1];
    int rc, profile = -1, in_tx = 0;

    *out = NULL;
    memset(&rec, 0, sizeof(rec));
    if ((rc = check_request(req, &pub, key_fp)) != MQPKI_OK)
        goto out;
    if (cm == NULL) {
        if ((rc = inventory_begin(inv)) != MQPKI_OK)
            goto out;
        in_tx = 1;
    }
    /* With a token, an unknown asset must look like a wrong token from outside. */
    rc = check_asset(inv, req, &profile);
    if (rc == MQPKI_ERR_NOT_FOUND && req->token != NULL)
        rc = mqpki_fail(MQPKI_ERR_AUTH, "asset %s: enrollment token refused (unknown asset)",
                        req->asset_id);
    if (rc != MQPKI_OK)
        goto out;
    /* No signature for a wrong token: the token is tested before the CA signs (an attacker who
     * knows an asset id gets no free HSM work, nor a timing that tells the asset exists). The
     * refusal is counted like the consume's (attempt limits). */
    if (req->token != NULL &&
        (rc = inventory_token_check(inv, req->asset_id, req->token)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_AUTH && (rc = inventory_token_refused(inv, req->asset_id)) == MQPKI_OK)
            rc = mqpki_fail(MQPKI_ERR_AUTH, "asset %s: enrollment token refused", req->asset_id);
        goto auth_failed;
    }
    for (int i = 0; i < SERIAL_TRIES; i++) {
        free(rec.pem);
        X509_free(cert);
        cert = NULL;
        if ((rc = sign(ca, req, profile, pub, key_fp, &cert, &rec)) != MQPKI_OK)
            goto out;
        if (cm != NULL)
            rc = lifecycle_committer_record(cm, &rec, &auth);
        else
            rc = lifecycle_record(inv, &rec, &auth);
        if (rc != MQPKI_ERR_EXISTS)
            break;
    }
auth_failed:
    if (rc == MQPKI_ERR_AUTH && in_tx) {
        /* The failure count written by the token check must persist (attempt limits). */
        char detail[300];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        (void)inventory_commit(inv);
        in_tx = 0;
        rc = mqpki_fail(rc, "%s", detail);
    }
    if (rc != MQPKI_OK)
        goto out;
    if (in_tx) {
        if ((rc = inventory_commit(inv)) != MQPKI_OK)
            goto out;
        in_tx = 0;
    }
    *out = cert;
    cert = NULL;
out:
    if (in_tx)
        inventory_rollback(inv);
    free(rec.pem);
    X509_free(cert);
    EVP_PKEY_free(pub);
    return rc;
}

int lifecycle_issue(struct ca *ca, struct inventory *inv, const struct lifecycle_issue_req *req,
                    X509 **out)
{
    return lifecycle_issue_batched(ca, inv, NULL, req, out);
}
