/* ca: a signature through the issuing key, checked against the issuing certificate: tells
 * whether the token is reachable and holds the right key (mqpkid's /healthz). */
#include <string.h>

#include <openssl/evp.h>

#include "ca_int.h"
#include "common.h"

int ca_selftest(struct ca *ca)
{
    static const unsigned char msg[] = "mqpki selftest";
    unsigned char sig[1024];
    size_t sig_len = sizeof(sig);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY *pub = X509_get0_pubkey(ca->issuing);
    int rc = MQPKI_ERR_HSM;

    if (md == NULL || pub == NULL)
        goto out;
    if (EVP_DigestSignInit(md, NULL, ca->md, NULL, ca->key) != 1 ||
        EVP_DigestSign(md, sig, &sig_len, msg, sizeof(msg)) != 1) {
        rc = ca_ossl_fail(MQPKI_ERR_HSM, "selftest signature through the token");
        goto out;
    }
    EVP_MD_CTX_reset(md);
    if (EVP_DigestVerifyInit(md, NULL, ca->md, NULL, pub) != 1 ||
        EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg)) != 1) {
        rc = ca_ossl_fail(MQPKI_ERR_HSM, "selftest signature does not verify");
        goto out;
    }
    rc = MQPKI_OK;
out:
    EVP_MD_CTX_free(md);
    return rc;
}
