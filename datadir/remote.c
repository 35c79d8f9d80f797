/*
 * datadir/remote.c: signing with the CA key that a running mqpkid holds. The daemon side
 * (datadir_key_sign) performs one PKCS#11-style C_Sign with the key it opened; the command side
 * (remote_key) wraps the issuing CA's public key in an EVP_PKEY whose private operation is that
 * request over the control socket, so ca/ signs through it unchanged.
 */
#include "datadir.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "common.h"
#include "datadir_int.h"
#include "p11.h"

/* raw r||s of len bytes from a DER ECDSA-Sig-Value. */
static int ecdsa_raw(const unsigned char *der, size_t der_len, size_t half, unsigned char *out,
                     size_t *out_len)
{
    const unsigned char *p = der;
    ECDSA_SIG *sig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
    const BIGNUM *r, *s;
    int rc = MQPKI_ERR_CRYPTO;

    if (sig == NULL || *out_len < 2 * half)
        goto out;
    ECDSA_SIG_get0(sig, &r, &s);
    if (BN_bn2binpad(r, out, (int)half) < 0 || BN_bn2binpad(s, out + half, (int)half) < 0)
        goto out;
    *out_len = 2 * half;
    rc = MQPKI_OK;
out:
    ECDSA_SIG_free(sig);
    return rc;
}

int datadir_key_sign(struct datadir *dd, const char *label, unsigned long mech,
                     const unsigned char *in, size_t in_len, unsigned char *out, size_t *out_len)
{
    struct datadir_signer *signer = datadir_signer(dd);
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *key = NULL;
    unsigned char der[DATADIR_SIGN_OUT_MAX];
    char current[DATADIR_ISSUER_LABEL_MAX];
    size_t der_len = sizeof(der);
    int rc = MQPKI_ERR_CRYPTO, is_ec;

    /* Only the issuing CA key and the audit key are ever served here (the root key signs in
     * mqpkid only inside a rollover, never for a request), each for its own mechanism. The
     * issuing key of the current generation only, read with its generation in one load:
     * an older one signs nothing for a command after a rollover (a command that read
     * ca/issuing.pem before it fails and can be run again). */
    if (signer != NULL) {
        datadir_issuer_label(signer->gen, current);
        if (strcmp(label, current) == 0)
            key = signer->key;
    }
    if (strcmp(label, DATADIR_AUDIT_KEY) == 0)
        key = dd->audit_key;
    if (key == NULL)
        return mqpki_fail(MQPKI_ERR_NOT_FOUND, "no key '%.64s' here", label);
    is_ec = EVP_PKEY_get_base_id(key) == EVP_PKEY_EC;
    if ((is_ec && mech != P11_MECH_ECDSA) || (!is_ec && mech != P11_MECH_RSA_PKCS) || in_len == 0 ||
        in_len > DATADIR_SIGN_IN_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "sign request: mechanism 0x%lx or input of %zu "
                          "bytes refused",
                          mech, in_len);
    if ((ctx = EVP_PKEY_CTX_new(key, NULL)) == NULL || EVP_PKEY_sign_init(ctx) <= 0 ||
        (!is_ec && EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_PADDING) <= 0))
        goto out;
    if (is_ec) {
        /* The input is the digest; the token gives r||s, each as long as the group order. */
        size_t half = (size_t)(EVP_PKEY_get_bits(key) + 7) / 8;
        if (EVP_PKEY_sign(ctx, der, &der_len, in, in_len) <= 0)
            goto out;
        rc = ecdsa_raw(der, der_len, half, out, out_len);
    } else if (EVP_PKEY_sign(ctx, out, out_len, in, in_len) > 0) {
        /* CKM_RSA_PKCS: the DigestInfo is padded and signed as is. */
        rc = MQPKI_OK;
    }
out:
    if (rc != MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_HSM, "key '%s': signature failed", label);
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

/* The command side of a remote signature. */
struct remote {
    char home[PATH_MAX];
    char label[DATADIR_SIGN_LABEL_MAX + 1];
};

static int remote_sign(void *ctx, unsigned long mech, const unsigned char *in, size_t in_len,
                       unsigned char *out, size_t *out_len)
{
    struct remote *r = ctx;
    unsigned char req[2 + DATADIR_SIGN_LABEL_MAX + 4 + DATADIR_SIGN_IN_MAX], *reply = NULL;
    size_t n = strlen(r->label), len = 0, reply_len = 0;
    int rc;

    if (in_len > DATADIR_SIGN_IN_MAX || n > DATADIR_SIGN_LABEL_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "remote sign: input of %zu bytes", in_len);
    req[len++] = DATADIR_CTL_SIGN;
    req[len++] = (unsigned char)n;
    memcpy(req + len, r->label, n);
    len += n;
    req[len++] = (unsigned char)(mech >> 24);
    req[len++] = (unsigned char)(mech >> 16);
    req[len++] = (unsigned char)(mech >> 8);
    req[len++] = (unsigned char)mech;
    memcpy(req + len, in, in_len);
    len += in_len;
    if ((rc = datadir_control_call(r->home, req, len, &reply, &reply_len, CONTROL_WAIT_MS)) !=
        MQPKI_OK)
        goto out;
    if (reply_len - 1 > *out_len) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "remote sign: signature of %zu bytes", reply_len - 1);
        goto out;
    }
    memcpy(out, reply + 1, reply_len - 1);
    *out_len = reply_len - 1;
out:
    free(reply);
    return rc;
}

static void remote_release(void *ctx)
{
    free(ctx);
}

static const struct p11_signer_ops remote_ops = {remote_sign, remote_release};

int datadir_remote_key(const char *home, const char *label, EVP_PKEY *pub, EVP_PKEY **out)
{
    struct remote *r;
    int rc;

    *out = NULL;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return MQPKI_ERR_NOMEM;
    snprintf(r->home, sizeof(r->home), "%s", home);
    snprintf(r->label, sizeof(r->label), "%s", label);
    /* On success the key owns r and releases it with its last copy. */
    if ((rc = p11_pkey_from_signer(pub, &remote_ops, r, out)) != MQPKI_OK)
        free(r);
    return rc;
}
