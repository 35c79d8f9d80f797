/*
 * proto/audit.c: the signed audit checkpoint on the wire (proto.h). The bytes signed are fixed
 * and documented so that anyone holding the audit public key can check a checkpoint with
 * OpenSSL alone, without mqpki.
 */
#include "proto.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

void proto_audit_tbs(int64_t id, int64_t seq, const unsigned char head[PROTO_AUDIT_HASH_LEN],
                     int64_t time, unsigned char out[PROTO_AUDIT_TBS_LEN])
{
    size_t off = sizeof(PROTO_AUDIT_MAGIC);

    /* The magic names what is signed: the audit key's signature can mean nothing else. */
    memcpy(out, PROTO_AUDIT_MAGIC, off);
    put_u64(out + off, (uint64_t)id);
    put_u64(out + off + 8, (uint64_t)seq);
    memcpy(out + off + 16, head, PROTO_AUDIT_HASH_LEN);
    put_u64(out + off + 16 + PROTO_AUDIT_HASH_LEN, (uint64_t)time);
}

int proto_audit_verify(EVP_PKEY *pub, const unsigned char *tbs, size_t tbs_len,
                       const unsigned char *sig, size_t sig_len, char *why, size_t why_len)
{
    EVP_MD_CTX *md = NULL;
    int base, rc = -1;

    if (pub == NULL || tbs == NULL || sig == NULL || sig_len == 0 ||
        sig_len > PROTO_AUDIT_SIG_MAX) {
        snprintf(why, why_len, "no key, or a signature of %zu bytes", sig_len);
        goto out;
    }
    base = EVP_PKEY_get_base_id(pub);
    if (base != EVP_PKEY_EC && base != EVP_PKEY_RSA) {
        snprintf(why, why_len, "the audit key is neither EC nor RSA");
        goto out;
    }
    if ((md = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) != 1) {
        snprintf(why, why_len, "cannot set up the signature check");
        goto out;
    }
    if (EVP_DigestVerify(md, sig, sig_len, tbs, tbs_len) != 1) {
        snprintf(why, why_len, "signature does not verify with the audit key");
        goto out;
    }
    rc = 0;
out:
    ERR_clear_error();
    EVP_MD_CTX_free(md);
    return rc;
}
