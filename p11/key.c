/*
 * p11/key.c: key pairs generated inside the token, loaded as EVP_PKEYs whose signatures are
 * C_Sign calls on a pooled session (through the signer bridge of bridge.c, the one bridge there
 * is), and destroyed.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "common.h"
#include "p11_int.h"

#define KEY_ID_LEN  16
#define ATTR_MAX    4096 /* largest public attribute we read (an RSA-8192 modulus is 1 KiB) */
#define DESTROY_MAX 16   /* objects destroyed under one label in one call */

static int session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_USER_NOT_LOGGED_IN;
}

static int handle_stale(CK_RV rv)
{
    return rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

/* Finds key's private object again on session s (after a re-login) and records its handle. */
static int key_refind(struct p11_key_ref *key, CK_SESSION_HANDLE s)
{
    struct p11_token *tok = key->tok;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, key->label, (CK_ULONG)strlen(key->label)},
        {CKA_ID, key->id, (CK_ULONG)key->idlen},
    };
    CK_OBJECT_HANDLE obj;
    CK_ULONG n = 0;
    CK_RV rv;
    int rc = MQPKI_OK;

    rv = tok->p11->C_FindObjectsInit(s, t, key->idlen > 0 ? 3 : 2);
    if (rv == CKR_OK) {
        rv = tok->p11->C_FindObjects(s, &obj, 1, &n);
        (void)tok->p11->C_FindObjectsFinal(s);
    }
    if (rv != CKR_OK)
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjects: %s", p11_ckr_name(rv));
    else if (n == 0)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "HSM key '%s': gone from the token", key->label);
    else
        atomic_store(&key->obj, (unsigned long)obj);
    return rc;
}

int p11_sign(struct p11_key_ref *key, CK_MECHANISM_TYPE mech, const unsigned char *in, size_t inlen,
             unsigned char *out, size_t *outlen)
{
    struct p11_token *tok = key->tok;
    CK_MECHANISM m = {mech, NULL, 0};
    CK_SESSION_HANDLE s;
    CK_ULONG len;
    CK_RV rv = CKR_OK;
    int rc = MQPKI_OK, refind = 0;

    for (int attempt = 0; attempt < 2; attempt++) {
        rc = p11_session_take(tok, &s);
        if (rc != MQPKI_OK)
            goto out;
        if (refind) {
            rc = key_refind(key, s);
            if (rc != MQPKI_OK) {
                p11_session_give(tok, s);
                goto out;
            }
        }
        len = (CK_ULONG)*outlen;
        rv = tok->p11->C_SignInit(s, &m, (CK_OBJECT_HANDLE)atomic_load(&key->obj));
        if (rv == CKR_OK)
            rv = tok->p11->C_Sign(s, (CK_BYTE_PTR)in, (CK_ULONG)inlen, out, &len);
        if (rv == CKR_OK) {
            p11_session_give(tok, s);
            *outlen = (size_t)len;
            goto out;
        }
        /*
         * Never pool a session after a failure: an operation might still be active on it.
         * Closing it also drops a session the token has already forgotten.
         */
        (void)tok->p11->C_CloseSession(s);
        if (attempt > 0 || !(session_lost(rv) || handle_stale(rv)))
            break;
        P11_LOG(tok, MQPKI_LOG_WARN, "HSM key '%s': C_Sign: %s; retrying", key->label,
                p11_ckr_name(rv));
        if (session_lost(rv)) {
            rc = p11_recover(tok);
            if (rc != MQPKI_OK)
                goto out;
        }
        /* After a logout the token may have renumbered its private objects. */
        refind = 1;
    }
    rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_Sign: %s", p11_ckr_name(rv));
out:
    return rc;
}

/* The signer of a token key: C_Sign through the pool; failures go to the handle's logger. */
static int token_sign(void *ctx, unsigned long mech, const unsigned char *in, size_t inlen,
                      unsigned char *out, size_t *outlen)
{
    struct p11_key_ref *ref = ctx;
    int rc = p11_sign(ref, (CK_MECHANISM_TYPE)mech, in, inlen, out, outlen);

    if (rc != MQPKI_OK)
        P11_LOG(ref->tok, MQPKI_LOG_ERROR, "HSM key '%s': signature in the token failed: %s",
                ref->label, mqpki_err_detail(rc));
    return rc;
}

static void token_release(void *ctx)
{
    free(ctx);
}

static const struct p11_signer_ops token_signer = {token_sign, token_release};

/* Finds the first object of class cls labelled label (and with CKA_ID id when given). */
static int find_object(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                       const char *label, const unsigned char *id, size_t idlen,
                       CK_OBJECT_HANDLE *out)
{
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_ID, (void *)id, (CK_ULONG)idlen},
    };
    CK_ULONG n = 0;
    CK_RV rv;
    int rc = MQPKI_OK;

    rv = tok->p11->C_FindObjectsInit(s, t, id != NULL ? 3 : 2);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjectsInit: %s", p11_ckr_name(rv));
        goto out;
    }
    rv = tok->p11->C_FindObjects(s, out, 1, &n);
    (void)tok->p11->C_FindObjectsFinal(s);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjects: %s", p11_ckr_name(rv));
        goto out;
    }
    if (n == 0)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "HSM key '%s': no %s key with that label", label,
                        cls == CKO_PRIVATE_KEY ? "private" : "public");
out:
    return rc;
}

/* Reads a variable-length attribute into a heap buffer of at most ATTR_MAX bytes. */
static int attr_get(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE obj,
                    CK_ATTRIBUTE_TYPE type, const char *name, unsigned char **out, size_t *outlen)
{
    CK_ATTRIBUTE a = {type, NULL, 0};
    CK_RV rv;
    int rc = MQPKI_OK;

    *out = NULL;
    rv = tok->p11->C_GetAttributeValue(s, obj, &a, 1);
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
        rv = tok->p11->C_GetAttributeValue(s, obj, &a, 1);
    }
    if (rv != CKR_OK) {
        rc =
            mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetAttributeValue %s: %s", name, p11_ckr_name(rv));
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

/* A plain public EVP_PKEY from OSSL_PARAMs (EC or RSA). */
static EVP_PKEY *pkey_from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;

    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

/* The public half of an EC key pair: a named curve (CKA_EC_PARAMS) and its point. */
static int public_ec(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                     const char *label, EVP_PKEY **out)
{
    unsigned char *params = NULL, *point = NULL;
    size_t params_len = 0, point_len = 0, raw_len;
    const unsigned char *p, *raw;
    ASN1_OBJECT *oid = NULL;
    ASN1_OCTET_STRING *os = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    const char *curve;
    int rc;

    rc = attr_get(tok, s, pub, CKA_EC_PARAMS, "CKA_EC_PARAMS", &params, &params_len);
    if (rc == MQPKI_OK)
        rc = attr_get(tok, s, pub, CKA_EC_POINT, "CKA_EC_POINT", &point, &point_len);
    if (rc != MQPKI_OK)
        goto out;
    rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': unusable EC public key", label);
    /* CKA_EC_PARAMS is the DER of the curve's OID; explicit curve parameters are not offered. */
    p = params;
    oid = d2i_ASN1_OBJECT(NULL, &p, (long)params_len);
    if (oid == NULL || (curve = OBJ_nid2sn(OBJ_obj2nid(oid))) == NULL)
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
    bld = OSSL_PARAM_BLD_new();
    if (bld == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, curve, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, raw, raw_len))
        goto out;
    *out = pkey_from_params("EC", bld);
    if (*out != NULL)
        rc = MQPKI_OK;
out:
    OSSL_PARAM_BLD_free(bld);
    ASN1_OCTET_STRING_free(os);
    ASN1_OBJECT_free(oid);
    free(params);
    free(point);
    return rc;
}

/* The public half of an RSA key pair: modulus and public exponent. */
static int public_rsa(struct p11_token *tok, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                      const char *label, EVP_PKEY **out)
{
    unsigned char *mod = NULL, *exp = NULL;
    size_t mod_len = 0, exp_len = 0;
    BIGNUM *n = NULL, *e = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    int rc;

    rc = attr_get(tok, s, pub, CKA_MODULUS, "CKA_MODULUS", &mod, &mod_len);
    if (rc == MQPKI_OK)
        rc = attr_get(tok, s, pub, CKA_PUBLIC_EXPONENT, "CKA_PUBLIC_EXPONENT", &exp, &exp_len);
    if (rc != MQPKI_OK)
        goto out;
    rc = mqpki_fail(MQPKI_ERR_CRYPTO, "HSM key '%s': unusable RSA public key", label);
    n = BN_bin2bn(mod, (int)mod_len, NULL);
    e = BN_bin2bn(exp, (int)exp_len, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto out;
    *out = pkey_from_params("RSA", bld);
    if (*out != NULL)
        rc = MQPKI_OK;
out:
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    free(mod);
    free(exp);
    return rc;
}

int p11_key_load(struct p11_token *tok, const char *label, EVP_PKEY **out)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_OBJECT_HANDLE priv, pub_obj;
    CK_KEY_TYPE type = 0;
    unsigned char id[P11_KEY_ID_MAX];
    CK_ATTRIBUTE a[] = {
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_ID, id, sizeof(id)},
    };
    struct p11_key_ref *ref = NULL;
    EVP_PKEY *pub = NULL;
    size_t idlen;
    CK_RV rv;
    int rc;

    if (out != NULL)
        *out = NULL;
    if (tok == NULL || label == NULL || label[0] == '\0' || out == NULL ||
        strlen(label) > P11_KEY_LABEL_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "p11_key_load: missing handle or label");
        goto out;
    }
    rc = p11_session_take(tok, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(tok, s, CKO_PRIVATE_KEY, label, NULL, 0, &priv);
    if (rc != MQPKI_OK)
        goto out;
    rv = tok->p11->C_GetAttributeValue(s, priv, a, 2);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetAttributeValue CKA_KEY_TYPE: %s",
                        p11_ckr_name(rv));
        goto out;
    }
    idlen = (size_t)a[1].ulValueLen;
    /* The public half is the one with the same label and CKA_ID as the private key. */
    rc = find_object(tok, s, CKO_PUBLIC_KEY, label, id, idlen, &pub_obj);
    if (rc != MQPKI_OK)
        goto out;
    if (type == CKK_EC)
        rc = public_ec(tok, s, pub_obj, label, &pub);
    else if (type == CKK_RSA)
        rc = public_rsa(tok, s, pub_obj, label, &pub);
    else
        rc = mqpki_fail(MQPKI_ERR_HSM, "HSM key '%s': key type 0x%lx not supported", label,
                        (unsigned long)type);
    if (rc != MQPKI_OK)
        goto out;
    ref = calloc(1, sizeof(*ref));
    if (ref == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "HSM key '%s': out of memory", label);
        goto out;
    }
    ref->tok = tok;
    atomic_init(&ref->obj, (unsigned long)priv);
    strcpy(ref->label, label);
    memcpy(ref->id, id, idlen);
    ref->idlen = idlen;
    rc = p11_pkey_from_signer(pub, &token_signer, ref, out);
    if (rc == MQPKI_OK)
        ref = NULL; /* owned by the key now */
out:
    free(ref);
    EVP_PKEY_free(pub);
    if (s != CK_INVALID_HANDLE)
        p11_session_give(tok, s);
    return rc;
}

/* Destroys every object labelled label (of class *cls when given) on session s; *total counts
 * them. */
static int destroy_labelled(struct p11_token *tok, CK_SESSION_HANDLE s, const char *label,
                            const CK_OBJECT_CLASS *cls, unsigned long *total)
{
    CK_ATTRIBUTE t[] = {
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_CLASS, (void *)cls, sizeof(*cls)},
    };
    CK_OBJECT_HANDLE objs[DESTROY_MAX];
    CK_ULONG n = 0, i;
    CK_RV rv;
    int rc = MQPKI_OK;

    /* Collected first, destroyed after: a search must not see the objects it destroys go. */
    do {
        rv = tok->p11->C_FindObjectsInit(s, t, cls != NULL ? 2 : 1);
        if (rv == CKR_OK) {
            rv = tok->p11->C_FindObjects(s, objs, DESTROY_MAX, &n);
            (void)tok->p11->C_FindObjectsFinal(s);
        }
        if (rv != CKR_OK)
            return mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjects: %s", p11_ckr_name(rv));
        for (i = 0; i < n && rc == MQPKI_OK; i++) {
            rv = tok->p11->C_DestroyObject(s, objs[i]);
            if (rv == CKR_OK)
                (*total)++;
            else
                rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_DestroyObject '%s': %s", label,
                                p11_ckr_name(rv));
        }
    } while (rc == MQPKI_OK && n == DESTROY_MAX);
    return rc;
}

int p11_key_generate(struct p11_token *tok, const char *label, enum p11_key_type type)
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

    if (tok == NULL || label == NULL || label[0] == '\0' || strlen(label) > P11_KEY_LABEL_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "HSM key label: must be 1 to %d bytes",
                        P11_KEY_LABEL_MAX);
        goto out;
    }
    label_len = (CK_ULONG)strlen(label);
    switch (type) {
    case P11_KEY_EC_P256: nid = NID_X9_62_prime256v1; break;
    case P11_KEY_EC_P384: nid = NID_secp384r1; break;
    case P11_KEY_RSA_3072: nid = NID_undef; break;
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
    rc = p11_session_take(tok, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(tok, s, CKO_PRIVATE_KEY, label, NULL, 0, &existing);
    if (rc == MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "HSM key '%s': a private key with that label exists",
                        label);
        goto out;
    }
    if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    mqpki_err_clear(); /* the expected "not found" is not this call's outcome */
    /* A public half without its private key is what a generation killed between the two
     * objects leaves (SoftHSM writes one file each): of no use, and in the way of a clean
     * pair under this label. */
    {
        CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY;
        unsigned long orphans = 0;

        if ((rc = destroy_labelled(tok, s, label, &pub_class, &orphans)) != MQPKI_OK)
            goto out;
        if (orphans > 0)
            P11_LOG(tok, MQPKI_LOG_WARN,
                    "HSM key '%s': %lu public key(s) without a private key removed (left by an "
                    "interrupted generation)",
                    label, orphans);
    }
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
        rv = tok->p11->C_GenerateKeyPair(s, &mech, pub_t, npub, priv_t,
                                         sizeof(priv_t) / sizeof(priv_t[0]), &pub, &priv);
    }
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GenerateKeyPair '%s': %s", label,
                        p11_ckr_name(rv));
        goto out;
    }
    P11_LOG(tok, MQPKI_LOG_INFO, "HSM key '%s' generated in token '%s'", label, tok->label);
    /* A key that exists only in a file SoftHSM never fsyncs is one crash away from lost. */
    p11_guard_save(tok, "key generation");
out:
    if (s != CK_INVALID_HANDLE)
        p11_session_give(tok, s);
    free(params);
    return rc;
}

int p11_key_destroy(struct p11_token *tok, const char *label)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    unsigned long total = 0;
    int rc;

    if (tok == NULL || label == NULL || label[0] == '\0' || strlen(label) > P11_KEY_LABEL_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "HSM key label: must be 1 to %d bytes",
                        P11_KEY_LABEL_MAX);
        goto out;
    }
    rc = p11_session_take(tok, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = destroy_labelled(tok, s, label, NULL, &total);
    if (total == 0 && rc == MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "HSM key '%s': no object with that label", label);
    if (total > 0) {
        P11_LOG(tok, MQPKI_LOG_INFO, "HSM key '%s': %lu object(s) destroyed in token '%s'", label,
                total, tok->label);
        p11_guard_save(tok, "key destruction");
    }
out:
    if (s != CK_INVALID_HANDLE)
        p11_session_give(tok, s);
    return rc;
}

#ifdef UNIT_TESTING
int p11_test_key_flags(struct p11_token *tok, const char *label, int *sensitive, int *extractable,
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

    rc = p11_session_take(tok, &s);
    if (rc != MQPKI_OK)
        goto out;
    rc = find_object(tok, s, CKO_PRIVATE_KEY, label, NULL, 0, &priv);
    if (rc != MQPKI_OK)
        goto out;
    rv = tok->p11->C_GetAttributeValue(s, priv, a, 3);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "C_GetAttributeValue: %s", p11_ckr_name(rv));
        goto out;
    }
    *sensitive = sens == CK_TRUE;
    *extractable = extr == CK_TRUE;
    if (type == CKK_RSA)
        v.type = CKA_PRIVATE_EXPONENT;
    rv = tok->p11->C_GetAttributeValue(s, priv, &v, 1);
    *value_refused = rv == CKR_ATTRIBUTE_SENSITIVE;
    OPENSSL_cleanse(value, sizeof(value));
out:
    if (s != CK_INVALID_HANDLE)
        p11_session_give(tok, s);
    return rc;
}
#endif
