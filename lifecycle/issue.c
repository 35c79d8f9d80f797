/* lifecycle/issue.c: issuance, the one path for the operator CLI, EST and mqpkid itself. */
#include "lifecycle.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/sha.h>
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
                const X509_PUBKEY *spki, const char *key_fp, X509 **out, struct inventory_cert *rec)
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
    opts.spki = spki;
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
 * A superseded certificate renews only when the newest certificate it asked for is still the
 * asset's newest (superseded_by, kept pointing at its latest request by inventory_cert_add),
 * within the grace window, while that newer certificate is unused: the device whose answers
 * were lost retries. Once the newer one renewed, was revoked, or a broker saw it, the old
 * credential is spent: a stolen old certificate and key cannot keep minting new ones.
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
                              const char *key_fp, int64_t grace)
{
    struct inventory_cert c;
    int rc = MQPKI_ERR_AUTH;

    memset(&c, 0, sizeof(c));
    if (inventory_cert_get(inv, serial, 0, &c) != MQPKI_OK) {
        mqpki_fail(rc, "re-enrollment: certificate %s is not in the store", serial);
        goto out;
    }
    if (key_fp != NULL && (strlen(key_fp) != strlen(c.key_fp) ||
                           CRYPTO_memcmp(key_fp, c.key_fp, strlen(key_fp)) != 0)) {
        mqpki_fail(rc,
                   "re-enrollment: certificate %s presented with another key than the one "
                   "certified (a forged certificate?)",
                   serial);
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
        rc =
            inventory_token_consume(inv, rec->asset_id, auth->token, auth->csr_sha256, rec->serial);
        if (rc != MQPKI_OK)
            return rc == MQPKI_ERR_AUTH
                       ? mqpki_fail(rc, "asset %s: enrollment token refused", rec->asset_id)
                       : rc;
    }
    /* A revocation or hold that committed while this request was being signed wins. */
    if (auth->auth_serial != NULL &&
        (rc = lifecycle_check_auth_cert(inv, auth->auth_serial, rec->asset_id, NULL,
                                        auth->reenroll_grace)) != MQPKI_OK)
        return rc;
    return inventory_cert_add(inv, rec, auth->supersede, auth->auth_serial, auth->actor);
}

_Static_assert(sizeof(((struct ca_csr *)0)->sha256) == INV_CSR_HASH_LEN, "one CSR hash");

/* The CSR: parsed with strict limits (ca/), proof of possession and key policy. With a token
 * this runs only after the token was accepted: an unauthenticated client learns nothing from
 * it and gets no parsing work done. */
static int check_request(const struct lifecycle_issue_req *req, struct ca_csr *csr,
                         char key_fp[PROTO_FP_HEX_LEN + 1])
{
    int rc;

    if ((rc = ca_csr_read(req->csr, req->csr_len, csr)) != MQPKI_OK) {
        char detail[400];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        return mqpki_fail(rc, "asset %s: %s", req->asset_id, detail);
    }
    /* The key's DER as it came when it is canonical, else encoded canonically from the key. */
    if (csr->spki != NULL)
        rc = ca_spki_fingerprint(csr->spki, key_fp);
    else
        rc = ca_pubkey_fingerprint(csr->pub, key_fp);
    if (rc != MQPKI_OK)
        ca_csr_clear(csr);
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

/* A token already used, found again by its text: what it enrolled (a lost answer's retry). */
struct retry {
    int found;
    unsigned char csr_sha256[INV_CSR_HASH_LEN];
    char serial[PROTO_SERIAL_HEX_MAX + 1];
};

/*
 * Authenticates an enrollment by its token before anything else of the request is looked at
 * (DESIGN.md 5): an unknown asset, a decommissioned one and a wrong, used, expired or revoked
 * token are one and the same MQPKI_ERR_AUTH from outside; only the detail, for the log and
 * the audit event, says which. A token used for a certificate within LIFECYCLE_RETRY_SECONDS
 * passes with retry->found set.
 */

static int authenticate(struct inventory *inv, const struct lifecycle_issue_req *req,
                        struct retry *retry)
{
    struct inventory_asset asset;
    int rc;

    memset(&asset, 0, sizeof(asset));
    rc = inventory_asset_get(inv, req->asset_id, &asset);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(MQPKI_ERR_AUTH, "asset %s: enrollment token refused (unknown asset)",
                        req->asset_id);
    else if (rc == MQPKI_OK && asset.state == INV_STATE_DECOMMISSIONED)
        rc = mqpki_fail(MQPKI_ERR_AUTH, "asset %s: enrollment token refused (asset decommissioned)",
                        req->asset_id);
    else if (rc == MQPKI_OK &&
             (rc = inventory_token_check(inv, req->asset_id, req->token)) == MQPKI_ERR_AUTH) {
        /* The holder of a token used moments ago may be retrying an answer it never got;
         * whether its CSR is the same is known only once the CSR is parsed. */
        rc = inventory_token_find_used(inv, req->asset_id, req->token,
                                       mqpki_now() - LIFECYCLE_RETRY_SECONDS, retry->csr_sha256,
                                       retry->serial);
        retry->found = rc == MQPKI_OK;
        if (rc == MQPKI_ERR_AUTH)
            rc = mqpki_fail(rc,
                            "asset %s: enrollment token refused (wrong, used, expired or revoked "
                            "token)",
                            req->asset_id);
    }
    inventory_asset_clear(&asset);
    return rc;
}

/*
 * A lost answer's retry, authenticated by a token used within LIFECYCLE_RETRY_SECONDS: the same
 * CSR gets the certificate that token enrolled, as long as it is still valid; nothing is signed
 * or recorded. Any other reuse of the token is a refusal (MQPKI_ERR_AUTH).
 */
static int resend(struct inventory *inv, const struct lifecycle_issue_req *req,
                  const struct retry *retry, const unsigned char csr_sha256[INV_CSR_HASH_LEN],
                  X509 **out)
{
    struct inventory_cert c;
    int rc = MQPKI_ERR_AUTH;

    memset(&c, 0, sizeof(c));
    if (CRYPTO_memcmp(csr_sha256, retry->csr_sha256, INV_CSR_HASH_LEN) != 0) {
        mqpki_fail(rc, "asset %s: enrollment token refused (used for another CSR)", req->asset_id);
        goto out;
    }
    if ((rc = inventory_cert_get(inv, retry->serial, 1, &c)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(MQPKI_ERR_AUTH,
                            "asset %s: enrollment token refused (certificate %s "
                            "not in the store)",
                            req->asset_id, retry->serial);
        goto out;
    }
    if (strcmp(c.asset_id, req->asset_id) != 0 || c.state != INV_CERT_VALID || c.pem == NULL) {
        rc = mqpki_fail(MQPKI_ERR_AUTH,
                        "asset %s: enrollment token refused (its certificate %s is %s)",
                        req->asset_id, retry->serial, inventory_cert_state_name(c.state));
        goto out;
    }
    if ((rc = ca_cert_from_pem(c.pem, strlen(c.pem), out)) != MQPKI_OK)
        goto out;
    mqpki_log(MQPKI_LOG_INFO,
              "asset %s: the same token and CSR again within %d s (an answer lost on the way): "
              "certificate %s sent again, nothing issued",
              req->asset_id, LIFECYCLE_RETRY_SECONDS, retry->serial);
out:
    inventory_cert_clear(&c);
    return rc;
}

/* The refusal's bookkeeping inside the open transaction (see lifecycle_record_refusal). */
static int refusal_write(struct inventory *inv, const char *asset, int token_failure,
                         const char *actor, const char *reason)
{
    json_t *detail = json_pack("{s:s}", "reason", reason != NULL ? reason : "");
    char *text = detail != NULL ? json_dumps(detail, JSON_COMPACT) : NULL;
    int rc = MQPKI_ERR_NOMEM;

    if (text == NULL)
        goto out;
    rc = MQPKI_OK;
    if (token_failure && asset != NULL)
        rc = inventory_token_refused(inv, asset);
    if (rc == MQPKI_OK)
        rc = inventory_audit_append(inv, actor != NULL ? actor : "enrollment", "enroll.refused",
                                    asset != NULL && proto_asset_id_valid(asset) ? asset : "-",
                                    text);
out:
    free(text);
    json_decref(detail);
    return rc;
}

int lifecycle_record_refusal(struct inventory *inv, const char *asset, int token_failure,
                             const char *actor, const char *reason)
{
    int rc;

    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        return rc;
    if ((rc = refusal_write(inv, asset, token_failure, actor, reason)) == MQPKI_OK)
        return inventory_commit(inv);
    inventory_rollback(inv);
    return rc;
}

int lifecycle_issue_batched(struct ca *ca, struct inventory *inv, struct lifecycle_committer *cm,
                            const struct lifecycle_issue_req *req, X509 **out)
{
    struct ca_csr csr;
    struct inventory_cert rec;
    struct lifecycle_auth auth = {req->token,     csr.sha256, req->auth_serial,
                                  req->supersede, req->actor, req->reenroll_grace};
    struct retry retry;
    X509 *cert = NULL;
    char key_fp[PROTO_FP_HEX_LEN + 1], detail[300];
    int rc, profile = -1, in_tx = 0, token_failure = 1;

    *out = NULL;
    memset(&csr, 0, sizeof(csr));
    memset(&rec, 0, sizeof(rec));
    memset(&retry, 0, sizeof(retry));
    if (!proto_asset_id_valid(req->asset_id)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "asset id '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters",
                        req->asset_id != NULL ? req->asset_id : "");
        goto out;
    }
    if (cm == NULL) {
        if ((rc = inventory_begin(inv)) != MQPKI_OK)
            goto out;
        in_tx = 1;
    }
    /* Who asks comes first. Nothing about the asset (kind, profile, state) nor the CSR is
     * looked at for a client without a valid token: refusals before authentication would tell
     * which assets exist, and an attacker who knows an asset id gets no parsing or HSM work. */
    if (req->token != NULL && (rc = authenticate(inv, req, &retry)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_AUTH)
            goto refused;
        goto out;
    }
    if ((rc = check_asset(inv, req, &profile)) != MQPKI_OK)
        goto out;
    if ((rc = check_request(req, &csr, key_fp)) != MQPKI_OK)
        goto out;
    if (retry.found) {
        if ((rc = resend(inv, req, &retry, csr.sha256, &cert)) == MQPKI_ERR_AUTH)
            goto refused;
        if (rc != MQPKI_OK)
            goto out;
        goto done;
    }
    for (int i = 0; i < SERIAL_TRIES; i++) {
        free(rec.pem);
        X509_free(cert);
        cert = NULL;
        if ((rc = sign(ca, req, profile, csr.pub, csr.spki, key_fp, &cert, &rec)) != MQPKI_OK)
            goto out;
        if (cm != NULL)
            rc = lifecycle_committer_record(cm, &rec, &auth);
        else
            rc = lifecycle_record(inv, &rec, &auth);
        if (rc != MQPKI_ERR_EXISTS)
            break;
    }
    if (rc == MQPKI_ERR_AUTH && req->token != NULL) {
        /* The token went between the check and the record (used by a concurrent request,
         * revoked): the consume already counted the failure. */
        token_failure = 0;
        goto refused;
    }
    if (rc != MQPKI_OK)
        goto out;
done:
    if (in_tx) {
        if ((rc = inventory_commit(inv)) != MQPKI_OK)
            goto out;
        in_tx = 0;
    }
    *out = cert;
    cert = NULL;
    goto out;
refused:
    /* Every refusal is counted and audited in one commit, an unknown asset's as a known one's,
     * so that neither the answer nor its timing tells them apart. The failure count must
     * persist even though the request fails (attempt limits). */
    snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(MQPKI_ERR_AUTH));
    if (in_tx) {
        /* Not committed on failure: rolled back at out. */
        if ((rc = refusal_write(inv, req->asset_id, token_failure, req->actor, detail)) ==
            MQPKI_OK) {
            rc = inventory_commit(inv);
            in_tx = 0;
        }
    } else {
        rc = lifecycle_record_refusal(inv, req->asset_id, token_failure, req->actor, detail);
    }
    if (rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_AUTH, "%s", detail);
out:
    if (in_tx)
        inventory_rollback(inv);
    free(rec.pem);
    X509_free(cert);
    ca_csr_clear(&csr);
    return rc;
}

int lifecycle_issue(struct ca *ca, struct inventory *inv, const struct lifecycle_issue_req *req,
                    X509 **out)
{
    unsigned char *der = NULL;
    const unsigned char *p;
    X509 *whole = NULL;
    int rc, n;

    if ((rc = lifecycle_issue_batched(ca, inv, NULL, req, out)) != MQPKI_OK)
        return rc;
    /* A whole certificate for every use (a PKCS#12 checks the key against it): parsed back
     * when it was built with the request's key as fields (lifecycle_issue_batched). */
    if (X509_get0_pubkey(*out) != NULL)
        return MQPKI_OK;
    ERR_clear_error();
    if ((n = i2d_X509(*out, &der)) <= 0 || (p = der, whole = d2i_X509(NULL, &p, n)) == NULL)
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "issued certificate: cannot parse it back");
    OPENSSL_free(der);
    X509_free(*out);
    /* Recorded and committed already: a failure here loses only this copy, not the record. */
    *out = whole;
    return rc;
}
