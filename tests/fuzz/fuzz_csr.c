/* fuzz_csr: a CSR as EST or `mqpki issue` receives it (DER, PEM or base64), through the parser
 * and the key policy (ca_csr_parse + ca_csr_check), and through ca_csr_read, issuance's way in,
 * which must reach the same verdict, the same request hash and the same key fingerprint. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <openssl/sha.h>
#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    X509_REQ *req = NULL;
    struct ca_csr csr;
    char fp[PROTO_FP_HEX_LEN + 1] = "", fp2[PROTO_FP_HEX_LEN + 1] = "";
    unsigned char *der = NULL, md[SHA256_DIGEST_LENGTH];
    int ok = 0, ok2, n;

    fuzz_quiet();
    if (ca_csr_parse(data, size, &req) == MQPKI_OK) {
        EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
        if (ca_csr_check(req) == MQPKI_OK && pub != NULL) {
            ok = ca_pubkey_fingerprint(pub, fp) == MQPKI_OK;
            if ((n = i2d_X509_REQ(req, &der)) <= 0 || SHA256(der, (size_t)n, md) == NULL)
                ok = 0;
        }
    } else if (req != NULL) {
        __builtin_trap(); /* a failed parse must leave *out NULL */
    }
    ok2 = ca_csr_read(data, size, &csr) == MQPKI_OK;
    if (ok2 && csr.spki != NULL)
        ok2 = ca_spki_fingerprint(csr.spki, fp2) == MQPKI_OK;
    else if (ok2)
        ok2 = ca_pubkey_fingerprint(csr.pub, fp2) == MQPKI_OK;
    /* One verdict either way; for an accepted request, one identity and one key. */
    if (ok != ok2 || (ok && (strcmp(fp, fp2) != 0 || memcmp(md, csr.sha256, sizeof(md)) != 0)))
        __builtin_trap();
    ca_csr_clear(&csr);
    OPENSSL_free(der);
    X509_REQ_free(req);
    mqpki_err_clear();
    return 0;
}
