/*
 * hsm/key.c: key pairs generated inside the token, and the EVP_PKEY bridge whose private
 * operations are C_Sign calls on a pooled session.
 *
 * The bridge is a legacy EC_KEY / RSA with a custom EC_KEY_METHOD / RSA_METHOD. OpenSSL 3.0
 * treats such keys as "foreign" and keeps them on the legacy code path, so X509_sign,
 * X509_REQ_sign, X509_CRL_sign and EVP_DigestSign work unchanged.
 */

/*
 * EC_KEY_METHOD, RSA_METHOD and their accessors are deprecated in OpenSSL 3.0, but 3.0 has no
 * non-deprecated way to plug a token key into those APIs short of writing a whole provider.
 * The deprecation is accepted knowingly for this file only.
 */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common.h"
#include "hsm_int.h"

#define KEY_ID_LEN 16
#define ATTR_MAX   4096 /* largest public attribute we read (an RSA-8192 modulus is 1 KiB) */
#define SIG_MAX    1024 /* RSA-8192 signature; ECDSA P-521 raw r||s is 132 bytes */

static pthread_once_t methods_once = PTHREAD_ONCE_INIT;
static int methods_ok;
static int ec_idx = -1, rsa_idx = -1;
/* Process-lifetime: keys may outlive any handle's bookkeeping, and these are a few bytes. */
static EC_KEY_METHOD *ec_meth;
static RSA_METHOD *rsa_meth;

static void ref_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    free(ptr);
}

/* EC_KEY_dup / RSA copies share ex_data pointers unless duplicated: give the copy its own. */
static int ref_dup(CRYPTO_EX_DATA *to, const CRYPTO_EX_DATA *from, void **from_d, int idx,
                   long argl, void *argp)
{
    struct hsm_key_ref *copy, *orig = *from_d;

    if (orig == NULL)
        return 1;
    copy = malloc(sizeof(*copy));
    if (copy == NULL)
        return 0;
    copy->hsm = orig->hsm;
    atomic_init(&copy->obj, atomic_load(&orig->obj));
    memcpy(copy->label, orig->label, sizeof(copy->label));
    memcpy(copy->id, orig->id, sizeof(copy->id));
    copy->idlen = orig->idlen;
    *from_d = copy;
    return 1;
}

static ECDSA_SIG *ec_sign_sig(const unsigned char *dgst, int dlen, const BIGNUM *kinv,
                              const BIGNUM *rp, EC_KEY *ec)
{
    struct hsm_key_ref *ref = EC_KEY_get_ex_data(ec, ec_idx);
    unsigned char raw[SIG_MAX];
    size_t rawlen = sizeof(raw), half;
    ECDSA_SIG *sig = NULL;
    BIGNUM *r = NULL, *s = NULL;

    if (ref == NULL || dlen <= 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_PASSED_INVALID_ARGUMENT);
        goto out;
    }
    if (hsm_sign(ref, CKM_ECDSA, dgst, (size_t)dlen, raw, &rawlen) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "ECDSA sign in token: %s", mqpki_err_detail(MQPKI_ERR_HSM));
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    /* CKM_ECDSA returns r||s, each as long as the group order. */
    if (rawlen == 0 || rawlen % 2 != 0) {
        ERR_raise(ERR_LIB_EC, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    half = rawlen / 2;
    r = BN_bin2bn(raw, (int)half, NULL);
    s = BN_bin2bn(raw + half, (int)half, NULL);
    sig = ECDSA_SIG_new();
    if (r == NULL || s == NULL || sig == NULL || !ECDSA_SIG_set0(sig, r, s)) {
        ECDSA_SIG_free(sig);
        sig = NULL;
        BN_free(r);
        BN_free(s);
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
    struct hsm_key_ref *ref = RSA_get_ex_data(rsa, rsa_idx);
    size_t outlen = (size_t)RSA_size(rsa);
    int ret = -1;

    /*
     * RSA_sign hands us the DigestInfo to be PKCS#1 v1.5 padded, which is CKM_RSA_PKCS. Other
     * paddings (PSS arrives here unpadded) are not offered by this bridge.
     */
    if (padding != RSA_PKCS1_PADDING) {
        mqpki_log(MQPKI_LOG_ERROR, "RSA sign in token: padding %d not supported", padding);
        ERR_raise(ERR_LIB_RSA, RSA_R_UNKNOWN_PADDING_TYPE);
        goto out;
    }
    if (ref == NULL || flen <= 0) {
        ERR_raise(ERR_LIB_RSA, ERR_R_PASSED_INVALID_ARGUMENT);
        goto out;
    }
    if (hsm_sign(ref, CKM_RSA_PKCS, from, (size_t)flen, to, &outlen) != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "RSA sign in token: %s", mqpki_err_detail(MQPKI_ERR_HSM));
        ERR_raise(ERR_LIB_RSA, ERR_R_INTERNAL_ERROR);
        goto out;
    }
    ret = (int)outlen;
out:
    return ret;
}

/* The token keys are CKA_DECRYPT false: refuse instead of asking the token. */
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

    ec_idx = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_EC_KEY, 0, NULL, NULL, ref_dup, ref_free);
    rsa_idx = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_RSA, 0, NULL, NULL, ref_dup, ref_free);
    ec_meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    rsa_meth = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    if (ec_idx < 0 || rsa_idx < 0 || ec_meth == NULL || rsa_meth == NULL)
        return;
    /* Keep OpenSSL's sign_setup; verification stays OpenSSL's too (public key only). */
    EC_KEY_METHOD_get_sign(ec_meth, &sign, &sign_setup, &sign_sig);
    EC_KEY_METHOD_set_sign(ec_meth, ec_sign, sign_setup, ec_sign_sig);
    if (!RSA_meth_set1_name(rsa_meth, "mqpki PKCS#11 bridge") ||
        !RSA_meth_set_priv_enc(rsa_meth, rsa_priv_enc) ||
        !RSA_meth_set_priv_dec(rsa_meth, rsa_priv_dec))
        return;
    methods_ok = 1;
}

/* Finds the first object of class cls labelled label (and with CKA_ID id when given). */
static int find_object(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls, const char *label,
                       const unsigned char *id, size_t idlen, CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_ID, (void *)id, (CK_ULONG)idlen},
    };
    CK_ULONG n = 0;
    CK_RV rv;
    int rc = MQPKI_OK;

    rv = hsm->p11->C_FindObjectsInit(s, t, id != NULL ? 3 : 2);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjectsInit: %s", hsm_ckr_name(rv));
        goto out;
    }
    rv = hsm->p11->C_FindObjects(s, out, 1, &n);
    (void)hsm->p11->C_FindObjectsFinal(s);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjects: %s", hsm_ckr_name(rv));
        goto out;
    }
    if (n == 0)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "HSM key '%s': no %s key with that label", label,
                        cls == CKO_PRIVATE_KEY ? "private" : "public");
out:
    return rc;
}

/* Reads a variable-length attribute into a heap buffer of at most ATTR_MAX bytes. */
static int attr_get(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                    CK_ATTRIBUTE_TYPE type, const char *name, unsigned char **out, size_t *outlen)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv;
    int rc = MQPKI_OK;

    *out = NULL;
    rv = hsm->p11->C_GetAttributeValue(s, obj, &a, 1);
    if (rv == CKR_OK && (a.ulValueLen == 0 || a.ulValueLen == CK_UNAVAILABLE_INFORMATION ||
                         a.ulValueLen > ATTR_MAX)) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 %s: unusable length", name);
        goto out;
    }
    if (rv == CKR_OK) {
        a.pValue = *out = malloc(a.ulValueLen);
        if (*out == NULL) {
            rc = mqpki_fail(MQPKI_ERR_NOMEM, "PKCS#11 %s: out of memory", name);
            goto out;
        }
        rv = hsm->p11->C_GetAttributeValue(s, obj, &a, 1);
    }
    if (rv != CKR_OK) {
        rc =
            mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetAttributeValue %s: %s", name, hsm_ckr_name(rv));
        goto out;
    }
    *outlen = (size_t)a.ulValueLen;
out:
    if (rc != MQPKI_OK) {
        free(*out);
        *out = NULL;
    }
    return rc;
}

/* What a bridged key needs to sign: owned by the EC_KEY / RSA through ex_data. */
static struct hsm_key_ref *ref_new(struct hsm *hsm, CK_OBJECT_HANDLE obj, const char *label,
                                   const unsigned char *id, size_t idlen)
{
    struct hsm_key_ref *ref = calloc(1, sizeof(*ref));

    if (ref != NULL) {
        ref->hsm = hsm;
        atomic_init(&ref->obj, (unsigned long)obj);
        strcpy(ref->label, label);
        memcpy(ref->id, id, idlen);
        ref->idlen = idlen;
    }
    return ref;
}

static int build_ec(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                    CK_OBJECT_HANDLE pub, const char *label, const unsigned char *id, size_t idlen,
                    EVP_PKEY **out)
{
    unsigned char *params = NULL, *point = NULL;
    size_t params_len = 0, point_len = 0;
    const unsigned char *p, *raw;
    size_t raw_len;
    ASN1_OCTET_STRING *os = NULL;
    EC_GROUP *group = NULL;
    EC_POINT *pt = NULL;
    EC_KEY *ec = NULL;
    EVP_PKEY *pkey = NULL;
    struct hsm_key_ref *ref = NULL;
    int rc;

    rc = attr_get(hsm, s, pub, CKA_EC_PARAMS, "CKA_EC_PARAMS", &params, &params_len);
    if (rc == MQPKI_OK)
        rc = attr_get(hsm, s, pub, CKA_EC_POINT, "CKA_EC_POINT", &point, &point_len);
    if (rc != MQPKI_OK)
        goto out;
    rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': unusable EC public key", label);
    p = params;
    group = d2i_ECPKParameters(NULL, &p, (long)params_len);
    if (group == NULL)
        goto out;
    /* CKA_EC_POINT is a DER OCTET STRING around the point; some modules give it bare. */
    p = point;
    os = d2i_ASN1_OCTET_STRING(NULL, &p, (long)point_len);
    if (os != NULL && p == point + point_len) {
        raw = ASN1_STRING_get0_data(os);
        raw_len = (size_t)ASN1_STRING_length(os);
    } else {
        raw = point;
        raw_len = point_len;
    }
    pt = EC_POINT_new(group);
    if (pt == NULL || !EC_POINT_oct2point(group, pt, raw, raw_len, NULL))
        goto out;
    /* The method goes in before EVP_PKEY_assign, which is where OpenSSL marks it foreign. */
    ec = EC_KEY_new();
    if (ec == NULL || !EC_KEY_set_method(ec, ec_meth) || !EC_KEY_set_group(ec, group) ||
        !EC_KEY_set_public_key(ec, pt))
        goto out;
    ref = ref_new(hsm, priv, label, id, idlen);
    if (ref == NULL || !EC_KEY_set_ex_data(ec, ec_idx, ref))
        goto out;
    ref = NULL; /* owned by ec now */
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_EC_KEY(pkey, ec))
        goto out;
    ec = NULL;
    *out = pkey;
    pkey = NULL;
    rc = MQPKI_OK;
out:
    free(ref);
    EVP_PKEY_free(pkey);
    EC_KEY_free(ec);
    EC_POINT_free(pt);
    EC_GROUP_free(group);
    ASN1_OCTET_STRING_free(os);
    free(params);
    free(point);
    return rc;
}

static int build_rsa(struct hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                     CK_OBJECT_HANDLE pub, const char *label, const unsigned char *id, size_t idlen,
                     EVP_PKEY **out)
{
    unsigned char *mod = NULL, *exp = NULL;
    size_t mod_len = 0, exp_len = 0;
    BIGNUM *n = NULL, *e = NULL;
    RSA *rsa = NULL;
    EVP_PKEY *pkey = NULL;
    struct hsm_key_ref *ref = NULL;
    int rc;

    rc = attr_get(hsm, s, pub, CKA_MODULUS, "CKA_MODULUS", &mod, &mod_len);
    if (rc == MQPKI_OK)
        rc = attr_get(hsm, s, pub, CKA_PUBLIC_EXPONENT, "CKA_PUBLIC_EXPONENT", &exp, &exp_len);
    if (rc != MQPKI_OK)
        goto out;
    rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': unusable RSA public key", label);
    n = BN_bin2bn(mod, (int)mod_len, NULL);
    e = BN_bin2bn(exp, (int)exp_len, NULL);
    rsa = RSA_new();
    if (n == NULL || e == NULL || rsa == NULL || !RSA_set_method(rsa, rsa_meth) ||
        !RSA_set0_key(rsa, n, e, NULL))
        goto out;
    n = e = NULL; /* owned by rsa now */
    ref = ref_new(hsm, priv, label, id, idlen);
    if (ref == NULL || !RSA_set_ex_data(rsa, rsa_idx, ref))
        goto out;
    ref = NULL;
    pkey = EVP_PKEY_new();
    if (pkey == NULL || !EVP_PKEY_assign_RSA(pkey, rsa))
        goto out;
    rsa = NULL;
    *out = pkey;
    pkey = NULL;
    rc = MQPKI_OK;
out:
    free(ref);
    EVP_PKEY_free(pkey);
    RSA_free(rsa);
    BN_free(n);
    BN_free(e);
    free(mod);
    free(exp);
    return rc;
}

int hsm_key_load(struct hsm *hsm, const char *label, EVP_PKEY **out)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE priv, pub;
    CK_KEY_TYPE type = 0;
    unsigned char id[HSM_KEY_ID_MAX];
    CK_ATTRIBUTE a[] = {
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_ID, id, sizeof(id)},
    };
    CK_RV rv;
    int rc;

    if (out != NULL)
        *out = NULL;
    if (hsm == NULL || label == NULL || label[0] == '\0' || out == NULL ||
        strlen(label) > HSM_KEY_LABEL_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "hsm_key_load: missing handle or label");
        goto out;
    }
    pthread_once(&methods_once, methods_init);
    if (!methods_ok) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key bridge: cannot set up OpenSSL methods");
        goto out;
    }
    rc = hsm_session_take(hsm, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(hsm, s, CKO_PRIVATE_KEY, label, NULL, 0, &priv);
    if (rc != MQPKI_OK)
        goto out;
    rv = hsm->p11->C_GetAttributeValue(s, priv, a, 2);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetAttributeValue CKA_KEY_TYPE: %s",
                        hsm_ckr_name(rv));
        goto out;
    }
    /* The public half is the one with the same label and CKA_ID as the private key. */
    rc = find_object(hsm, s, CKO_PUBLIC_KEY, label, id, (size_t)a[1].ulValueLen, &pub);
    if (rc != MQPKI_OK)
        goto out;
    if (type == CKK_EC)
        rc = build_ec(hsm, s, priv, pub, label, id, (size_t)a[1].ulValueLen, out);
    else if (type == CKK_RSA)
        rc = build_rsa(hsm, s, priv, pub, label, id, (size_t)a[1].ulValueLen, out);
    else
        rc = mqpki_fail(MQPKI_ERR_HSM, "HSM key '%s': key type 0x%lx not supported", label,
                        (unsigned long)type);
out:
    if (s != CK_INVALID_HANDLE)
        hsm_session_give(hsm, s);
    return rc;
}

int hsm_key_generate(struct hsm *hsm, const char *label, enum hsm_key_type type)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE existing, pub, priv;
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG bits = 3072;
    CK_BYTE exponent[] = {0x01, 0x00, 0x01};
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    unsigned char id[KEY_ID_LEN], *params = NULL, *p;
    int params_len = 0, nid, rc;
    CK_ULONG label_len;
    CK_RV rv;

    if (hsm == NULL || label == NULL || label[0] == '\0' || strlen(label) > HSM_KEY_LABEL_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "HSM key label: must be 1 to %d bytes",
                        HSM_KEY_LABEL_MAX);
        goto out;
    }
    label_len = (CK_ULONG)strlen(label);
    switch (type) {
    case HSM_KEY_EC_P256: nid = NID_X9_62_prime256v1; break;
    case HSM_KEY_EC_P384: nid = NID_secp384r1; break;
    case HSM_KEY_RSA_3072: nid = NID_undef; break;
    default:
        rc = mqpki_fail(MQPKI_ERR_INVALID, "HSM key '%s': unknown key type %d", label, (int)type);
        goto out;
    }
    if (nid != NID_undef) {
        /* CKA_EC_PARAMS is the DER of the named curve's OID. */
        params_len = i2d_ASN1_OBJECT(OBJ_nid2obj(nid), NULL);
        if (params_len <= 0 || (params = p = malloc((size_t)params_len)) == NULL ||
            i2d_ASN1_OBJECT(OBJ_nid2obj(nid), &p) != params_len) {
            rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': cannot encode curve", label);
            goto out;
        }
    } else {
        mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    }
    if (RAND_bytes(id, sizeof(id)) != 1) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': no random bytes for CKA_ID", label);
        goto out;
    }
    rc = hsm_session_take(hsm, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(hsm, s, CKO_PRIVATE_KEY, label, NULL, 0, &existing);
    if (rc == MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "HSM key '%s': a private key with that label exists",
                        label);
        goto out;
    }
    if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    rc = MQPKI_OK;
    mqpki_err_clear(); /* the expected "not found" is not this call's outcome */
    {
        /* The last entry of each template is the type-specific one, set below. */
        CK_ATTRIBUTE pub_t[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},
            {CKA_PRIVATE, &no, sizeof(no)},
            {CKA_VERIFY, &yes, sizeof(yes)},
            {CKA_ENCRYPT, &no, sizeof(no)},
            {CKA_LABEL, (void *)label, label_len},
            {CKA_ID, id, sizeof(id)},
            {CKA_EC_PARAMS, params, (CK_ULONG)params_len},
            {CKA_PUBLIC_EXPONENT, exponent, sizeof(exponent)},
        };
        CK_ATTRIBUTE priv_t[] = {
            {CKA_TOKEN, &yes, sizeof(yes)},        {CKA_PRIVATE, &yes, sizeof(yes)},
            {CKA_SENSITIVE, &yes, sizeof(yes)},    {CKA_EXTRACTABLE, &no, sizeof(no)},
            {CKA_SIGN, &yes, sizeof(yes)},         {CKA_DECRYPT, &no, sizeof(no)},
            {CKA_LABEL, (void *)label, label_len}, {CKA_ID, id, sizeof(id)},
        };
        CK_ULONG npub = sizeof(pub_t) / sizeof(pub_t[0]);

        if (nid == NID_undef) {
            /* RSA: CKA_MODULUS_BITS in place of CKA_EC_PARAMS, and the exponent. */
            pub_t[6].type = CKA_MODULUS_BITS;
            pub_t[6].pValue = &bits;
            pub_t[6].ulValueLen = sizeof(bits);
        } else {
            npub--; /* no exponent for EC */
        }
        rv = hsm->p11->C_GenerateKeyPair(s, &mech, pub_t, npub, priv_t,
                                         sizeof(priv_t) / sizeof(priv_t[0]), &pub, &priv);
    }
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GenerateKeyPair '%s': %s", label,
                        hsm_ckr_name(rv));
        goto out;
    }
    mqpki_log(MQPKI_LOG_INFO, "HSM key '%s' generated in token '%s'", label, hsm->label);
out:
    if (s != CK_INVALID_HANDLE)
        hsm_session_give(hsm, s);
    free(params);
    return rc;
}

#ifdef UNIT_TESTING
int hsm_test_key_flags(struct hsm *hsm, const char *label, int *sensitive, int *extractable,
                       int *value_refused)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE priv;
    CK_BBOOL sens = CK_FALSE, extr = CK_TRUE;
    CK_KEY_TYPE type = 0;
    CK_ATTRIBUTE a[] = {
        {CKA_SENSITIVE, &sens, sizeof(sens)},
        {CKA_EXTRACTABLE, &extr, sizeof(extr)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
    };
    unsigned char value[1024];
    CK_ATTRIBUTE v = {CKA_VALUE, value, sizeof(value)};
    CK_RV rv;
    int rc;

    rc = hsm_session_take(hsm, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(hsm, s, CKO_PRIVATE_KEY, label, NULL, 0, &priv);
    if (rc != MQPKI_OK)
        goto out;
    rv = hsm->p11->C_GetAttributeValue(s, priv, a, 3);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "C_GetAttributeValue: %s", hsm_ckr_name(rv));
        goto out;
    }
    *sensitive = sens == CK_TRUE;
    *extractable = extr == CK_TRUE;
    if (type == CKK_RSA)
        v.type = CKA_PRIVATE_EXPONENT;
    rv = hsm->p11->C_GetAttributeValue(s, priv, &v, 1);
    *value_refused = rv == CKR_ATTRIBUTE_SENSITIVE;
    OPENSSL_cleanse(value, sizeof(value));
out:
    if (s != CK_INVALID_HANDLE)
        hsm_session_give(hsm, s);
    return rc;
}
#endif
