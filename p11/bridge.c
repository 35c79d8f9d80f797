/*
 * p11/bridge.c: the signer bridge. An EVP_PKEY is built around a legacy EC_KEY / RSA with a
 * custom EC_KEY_METHOD / RSA_METHOD whose private operation calls a signer (the token's C_Sign,
 * or any callback: a CA key that signs over a socket, a software key in tests). OpenSSL 3.0
 * treats such keys as "foreign" and keeps them on its legacy code path, so X509_sign,
 * X509_REQ_sign, X509_CRL_sign, EVP_DigestSign and TLS handshakes work unchanged.
 *
 * The signer is held by a reference-counted holder in the key's ex_data: EC_KEY_dup and
 * EVP_PKEY_dup copy ex_data through the dup callback, which takes a reference, and each copy's
 * free drops one; the last one calls release. Verification never reaches the bridge: the
 * public half is an ordinary OpenSSL key.
 */

/*
 * EC_KEY_METHOD, RSA_METHOD and their accessors are deprecated in OpenSSL 3.0, but 3.0 has no
 * non-deprecated way to plug an external signer into those APIs short of writing a whole
 * provider. The deprecation is accepted knowingly for this file only.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common.h"
#include "p11_int.h"

#define SIG_MAX 1024 /* RSA-8192 signature; ECDSA P-521 raw r||s is 132 bytes */

struct signer {
    atomic_uint refs;
    struct p11_signer_ops ops;
    void *ctx;
};

static pthread_once_t methods_once = PTHREAD_ONCE_INIT;
static int methods_ok;
static int ec_idx = -1, rsa_idx = -1;
/* Process-lifetime: keys may outlive any handle, and these are a few bytes. */
static EC_KEY_METHOD *ec_meth;
static RSA_METHOD *rsa_meth;

static void signer_put(struct signer *s)
{
    if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    if (s->ops.release != NULL)
        s->ops.release(s->ctx);
    free(s);
}

/* ex_data free: called for every EC_KEY / RSA freed, ours or not (ptr NULL then). */
static void signer_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    signer_put(ptr);
}

/* ex_data dup (EC_KEY_dup, EVP_PKEY_dup): the copy shares the signer; *from_d stays as is. */
static int signer_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                      long argl, void *argp)
{
    struct signer *s = *from_d;

    if (s != NULL)
        atomic_fetch_add(&s->refs, 1);
    return 1;
}

static int signer_call(struct signer *s, unsigned long mech, const unsigned char *in, size_t inlen,
                       unsigned char *out, size_t *outlen)
{
    return s->ops.sign(s->ctx, mech, in, inlen, out, outlen);
}

static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv,
                              const BIGNUM *rp, EC_KEY *ec)
{
    struct signer *s = EC_KEY_get_ex_data(ec, ec_idx);
    unsigned char raw[SIG_MAX];
    size_t rawlen = sizeof(raw), half;
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *sv = NULL;

    if (s == NULL || dlen <= 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
        goto out;
    }
    if (signer_call(s, P11_MECH_ECDSA, dgst, (size_t)dlen, raw, &rawlen) != MQPKI_OK) {
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    /* CKM_ECDSA returns r||s, each as long as the group order. */
    if (rawlen == 0 || rawlen > sizeof(raw) || rawlen % 2 != 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    half = rawlen / 2;
    r = BN_bin2bn(raw, (int)half, NULL);
    sv = BN_bin2bn(raw + half, (int)half, NULL);
    sig = ECDSA_SIG_new();
    if (r == NULL || sv == NULL || sig == NULL || !ECDSA_SIG_set0(sig, r, sv)) {
        ECDSA_SIG_free(sig);
        sig = NULL;
        BN_free(r);
        BN_free(sv);
        goto out;
    }
out:
    return sig;
}

static int ec_sign(int type, const unsigned char *dgst, int dlen, unsigned char *out,
                   unsigned int *outlen, const BIGNUM *kinv, const BIGNUM *r, EC_KEY *ec)
{
    ECDSA_SIG *sig = ec_sign_sig(dgst, dlen, kinv, r, ec);
    unsigned char *p = out;
    int n, ok = 0;

    *outlen = 0;
    if (sig == NULL)
        goto out;
    /* out has ECDSA_size() bytes, the DER size of the largest signature for this group. */
    n = i2d_ECDSA_SIG(sig, &p);
    if (n <= 0)
        goto out;
    *outlen = (unsigned int)n;
    ok = 1;
out:
    ECDSA_SIG_free(sig);
    return ok;
}

static int rsa_priv_enc(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
                        int padding)
{
    struct signer *s = RSA_get_ex_data(rsa, rsa_idx);
    size_t outlen = (size_t)RSA_size(rsa);
    int ret = -1;

    /*
     * RSA_sign hands us the DigestInfo to be PKCS#1 v1.5 padded, which is CKM_RSA_PKCS. Other
     * paddings (PSS arrives here unpadded) are not offered by this bridge.
     */
    if (padding != RSA_PKCS1_PADDING) {
        ERR_raise(ERR_LIB_RSA, RSA_R_UNKNOWN_PADDING_TYPE);
        goto out;
    }
    if (s == NULL || flen <= 0) {
        ERR_raise(ERR_LIB_RSA, ERR_R_PASSED_INVALID_ARGUMENT);
        goto out;
    }
    if (signer_call(s, P11_MECH_RSA_PKCS, from, (size_t)flen, to, &outlen) != MQPKI_OK ||
        outlen != (size_t)RSA_size(rsa)) {
        ERR_raise(ERR_LIB_RSA, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    ret = (int)outlen;
out:
    return ret;
}

/* Signing keys only: decryption is refused instead of being passed to the signer. */
static int rsa_priv_dec(int flen, const unsigned char *from, unsigned char *to, RSA *rsa,
                        int padding)
{
    ERR_raise(ERR_LIB_RSA, ERR_R_OPERATION_FAIL);
    return -1;
}

static void methods_init(void)
{
    int (*sign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *,
                const BIGNUM *, EC_KEY *) = NULL;
    int (*sign_setup)(EC_KEY *, BN_CTX *, BIGNUM **, BIGNUM **) = NULL;
    ECDSA_SIG *(*sign_sig)(const unsigned char *, int, const BIGNUM *, const BIGNUM *, EC_KEY *) =
        NULL;

    ec_idx =
        CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_EC_KEY, 0, NULL, NULL, signer_dup, signer_free);
    rsa_idx = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_RSA, 0, NULL, NULL, signer_dup, signer_free);
    ec_meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    rsa_meth = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    if (ec_idx < 0 || rsa_idx < 0 || ec_meth == NULL || rsa_meth == NULL)
        return;
    /* Keep OpenSSL's sign_setup; verification stays OpenSSL's too (public key only). */
    EC_KEY_METHOD_get_sign(ec_meth, &sign, &sign_setup, &sign_sig);
    EC_KEY_METHOD_set_sign(ec_meth, ec_sign, sign_setup, ec_sign_sig);
    if (!RSA_meth_set1_name(rsa_meth, "mqpki signer bridge") ||
        !RSA_meth_set_priv_enc(rsa_meth, rsa_priv_enc) ||
        !RSA_meth_set_priv_dec(rsa_meth, rsa_priv_dec))
        return;
    methods_ok = 1;
}

/* EC: a legacy EC_KEY copy of pub's public key, with the bridge's method and s in its ex_data. */
static EVP_PKEY *bridge_ec(const unsigned char *der, long len, struct signer *s)
{
    const unsigned char *p = der;
    EC_KEY *ec = d2i_EC_PUBKEY(NULL, &p, len);
    EVP_PKEY *pkey = NULL;
    int attached = 0;

    /* The method goes in before EVP_PKEY_assign, which is where OpenSSL marks the key foreign. */
    if (ec == NULL || EC_KEY_get0_group(ec) == NULL ||
        EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) == NID_undef ||
        !EC_KEY_set_method(ec, ec_meth) || !EC_KEY_set_ex_data(ec, ec_idx, s))
        goto out;
    attached = 1;
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_EC_KEY(pkey, ec)) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
        goto out;
    }
    ec = NULL;
out:
    /* On failure s is not the key's: detach it so that freeing ec does not release it. */
    if (ec != NULL && attached)
        EC_KEY_set_ex_data(ec, ec_idx, NULL);
    EC_KEY_free(ec);
    return pkey;
}

static EVP_PKEY *bridge_rsa(const unsigned char *der, long len, struct signer *s)
{
    const unsigned char *p = der;
    RSA *rsa = d2i_RSA_PUBKEY(NULL, &p, len);
    EVP_PKEY *pkey = NULL;
    int attached = 0;

    if (rsa == NULL || !RSA_set_method(rsa, rsa_meth) || !RSA_set_ex_data(rsa, rsa_idx, s))
        goto out;
    attached = 1;
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_RSA(pkey, rsa)) {
        EVP_PKEY_free(pkey);
        pkey = NULL;
        goto out;
    }
    rsa = NULL;
out:
    if (rsa != NULL && attached)
        RSA_set_ex_data(rsa, rsa_idx, NULL);
    RSA_free(rsa);
    return pkey;
}

int p11_pkey_from_signer(EVP_PKEY *pub, const struct p11_signer_ops *ops, void *ctx, EVP_PKEY **out)
{
    struct signer *s = NULL;
    unsigned char *der = NULL;
    int len, base, rc = MQPKI_OK;

    if (out != NULL)
        *out = NULL;
    if (pub == NULL || ops == NULL || ops->sign == NULL || out == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "signer bridge: missing key, signer or output");
        goto out;
    }
    base = EVP_PKEY_get_base_id(pub);
    if (base != EVP_PKEY_EC && base != EVP_PKEY_RSA) {
        rc =
            mqpki_fail(MQPKI_ERR_INVALID, "signer bridge: key type %d is neither EC nor RSA", base);
        goto out;
    }
    pthread_once(&methods_once, methods_init);
    if (!methods_ok) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "signer bridge: cannot set up OpenSSL methods");
        goto out;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "signer bridge: out of memory");
        goto out;
    }
    atomic_init(&s->refs, 1);
    s->ops = *ops;
    s->ctx = ctx;
    /* The public half goes through its DER form: any provider's key in, a legacy copy out. */
    len = i2d_PUBKEY(pub, &der);
    if (len <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "signer bridge: cannot encode the public key");
        goto out;
    }
    *out = base == EVP_PKEY_EC ? bridge_ec(der, len, s) : bridge_rsa(der, len, s);
    if (*out == NULL) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "signer bridge: unusable %s public key%s",
                        base == EVP_PKEY_EC ? "EC" : "RSA",
                        base == EVP_PKEY_EC ? " (named curves only)" : "");
        goto out;
    }
    s = NULL; /* the key's now */
out:
    free(s); /* never the caller's ctx: release is for keys that were handed out */
    OPENSSL_free(der);
    return rc;
}
