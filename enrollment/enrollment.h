/*
 * enrollment: turns a request (operator CLI, EST simpleenroll/simplereenroll) into checked
 * issuance options, has the CA sign, and records the certificate durably before anyone sees
 * it. Authorization decides here; ca/ only signs. No sockets.
 */
#ifndef MQPKI_ENROLLMENT_H
#define MQPKI_ENROLLMENT_H

#include <stddef.h>

#include <openssl/x509.h>

struct ca;
struct inventory;

struct enrollment_issue_req {
    const char *asset_id;
    const unsigned char *csr; /* DER, PEM or base64 DER; at most CA_CSR_MAX bytes */
    size_t csr_len;
    int profile;              /* enum ca_profile, or -1 for the one matching the asset's kind */
    int days;                 /* validity; 0 for the configured default of the profile: */
    int device_days;          /*   device profile ([ca] device_days; 0: CA default) */
    int broker_days;          /*   broker profile ([ca] broker_days; 0: CA default) */
    const char *token;        /* one-time token consumed with the record, or NULL (operator) */
    int supersede;            /* re-enrollment: the asset's other valid certificates superseded */
    const char *actor;        /* for the audit log: "cli", "est:ADDR", ... */
    const char *const *dns;   /* SAN DNS names (broker, service profiles) */
    size_t n_dns;
    const char *const *ips;   /* SAN IP addresses (broker, service profiles) */
    size_t n_ips;
};

/*
 * Parses and checks the CSR (proof of possession, key policy), checks the asset (exists, not
 * decommissioned, profile matching its kind), consumes the token if given, signs and records
 * the certificate with its audit event in one transaction. *out is set only after the commit:
 * a certificate the store does not know never leaves. Errors as in common.h with a one-line
 * detail (MQPKI_ERR_PARSE bad CSR, MQPKI_ERR_POLICY refused, MQPKI_ERR_AUTH bad token,
 * MQPKI_ERR_NOT_FOUND unknown asset, MQPKI_ERR_STATE decommissioned asset).
 */
int enrollment_issue(struct ca *ca, struct inventory *inv, const struct enrollment_issue_req *req,
                     X509 **out);

#endif
