/* fuzz_csr: a CSR as EST or `mqpki issue` receives it (DER, PEM or base64), through the parser
 * and the key policy (ca_csr_parse + ca_csr_check), as lifecycle_issue runs them. */
#include <stddef.h>
#include <stdint.h>

#include <openssl/x509.h>

#include "ca.h"
#include "common.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    X509_REQ *req = NULL;
    char fp[PROTO_FP_HEX_LEN + 1];

    fuzz_quiet();
    if (ca_csr_parse(data, size, &req) == MQPKI_OK) {
        EVP_PKEY *pub = X509_REQ_get0_pubkey(req);
        if (ca_csr_check(req) == MQPKI_OK && pub != NULL)
            (void)ca_pubkey_fingerprint(pub, fp);
    } else if (req != NULL) {
        __builtin_trap(); /* a failed parse must leave *out NULL */
    }
    X509_REQ_free(req);
    mqpki_err_clear();
    return 0;
}
