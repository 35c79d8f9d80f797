/* fuzz_rollover: the inputs of an issuing CA rollover. First byte even: a payload on
 * mqpki/v1/ca/issuers, through what the broker plugin and crl-sync do with it
 * (proto_issuers_verify against a root held: whatever it keeps was issued by that root). First byte
 * odd: a CRL signed again by an older generation's key (ca_crl_resign: its DER walk and key
 * identifier rewrite), whose output, when there is one, must parse and verify under that
 * generation. The root and both generations are made at start with software keys; the seeds are in
 * corpus/rollover/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "fuzz.h"
#include "proto.h"

static STACK_OF(X509) * roots;
static struct ca *gen1;
static X509 *gen1_cert;

static void setup(void)
{
    EVP_PKEY *root_key = EVP_EC_gen("P-256"), *k1 = EVP_EC_gen("P-256");
    X509 *root = NULL;

    fuzz_quiet();
    if (root_key == NULL || k1 == NULL ||
        ca_root_create(root_key, "fuzz root", 3650, &root) != MQPKI_OK ||
        ca_issuing_create(root, root_key, k1, "fuzz issuing", 1825, &gen1_cert) != MQPKI_OK ||
        ca_open(gen1_cert, k1, root, NULL, &gen1) != MQPKI_OK ||
        (roots = sk_X509_new_null()) == NULL || !sk_X509_push(roots, root))
        __builtin_trap();
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(k1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    char why[256];

    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    if ((data[0] & 1) == 0) {
        STACK_OF(X509) *cas = NULL;
        if (proto_issuers_verify(data + 1, size - 1, roots, &cas, why, sizeof(why)) == 0) {
            if (cas == NULL || sk_X509_num(cas) < 1)
                __builtin_trap();
            for (int i = 0; i < sk_X509_num(cas); i++)
                if (X509_check_issued(sk_X509_value(roots, 0), sk_X509_value(cas, i)) != X509_V_OK)
                    __builtin_trap();
            sk_X509_pop_free(cas, X509_free);
        } else if (cas != NULL) {
            __builtin_trap();
        }
    } else {
        unsigned char *out = NULL;
        size_t out_len = 0;
        if (ca_crl_resign(gen1, data + 1, size - 1, &out, &out_len) == MQPKI_OK) {
            const unsigned char *p = out;
            X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)out_len);
            /* What it signed is a CRL of generation 1 (when OpenSSL takes the input at all). */
            if (crl != NULL && X509_CRL_verify(crl, X509_get0_pubkey(gen1_cert)) != 1)
                __builtin_trap();
            X509_CRL_free(crl);
            free(out);
        } else if (out != NULL) {
            __builtin_trap();
        }
        mqpki_err_clear();
    }
    return 0;
}
