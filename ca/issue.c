/*
 * Serial numbers and leaf issuance under the fixed profiles of DESIGN.md section 4. Every field
 * and extension of a leaf is set here from the issuance options; nothing is ever copied from a
 * request. ca_issue_cert() reads struct ca only and keeps no other state, so it is thread-safe.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include "ca_int.h"
#include "common.h"
#include "proto.h"

/* Longest accepted leaf validity: 10 years. */
#define LEAF_DAYS_MAX 3650
/* RFC 5280 4.1.2.2: serials are at most 20 octets. */
#define SERIAL_HEX_DIGITS_MAX 40

int ca_serial_new(char out[PROTO_SERIAL_HEX_MAX + 1])
{
    static const char digits[] = "0123456789ABCDEF";
    unsigned char buf[CA_SERIAL_LEN];
    size_t i;

    out[0] = '\0';
    /*
     * Top bit cleared keeps the INTEGER positive in 16 octets; a non-zero first octet keeps
     * the hex at exactly 32 digits (1 in 128 draws is retried).
     */
    do {
        if (RAND_bytes(buf, sizeof(buf)) != 1)
            return ca_ossl_fail(MQPKI_ERR_CRYPTO, "serial: RAND_bytes");
        buf[0] &= 0x7f;
    } while (buf[0] == 0);
    for (i = 0; i < sizeof(buf); i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 0xf];
    }
    out[2 * sizeof(buf)] = '\0';
    OPENSSL_cleanse(buf, sizeof(buf));
    return MQPKI_OK;
}

static int hex_valid(const char *hex)
{
    size_t i;

    for (i = 0; hex[i] != '\0'; i++) {
        char c = hex[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            return 0;
    }
    return i > 0 && i <= SERIAL_HEX_DIGITS_MAX;
}

int ca_serial_parse_into(const char *hex, BIGNUM *bn, ASN1_INTEGER *out)
{
    /* Checked by hand first: BN_hex2bn() would accept a '-' sign and stop at junk. */
    if (hex == NULL || !hex_valid(hex))
        return mqpki_fail(MQPKI_ERR_INVALID, "serial \"%.48s\" is not 1 to %d hex digits",
                          hex != NULL ? hex : "(null)", SERIAL_HEX_DIGITS_MAX);
    if (!BN_hex2bn(&bn, hex))
        return ca_ossl_fail(MQPKI_ERR_NOMEM, "serial: BN_hex2bn");
    if (BN_is_zero(bn))
        return mqpki_fail(MQPKI_ERR_INVALID, "serial must not be zero (RFC 5280 4.1.2.2)");
    if (BN_to_ASN1_INTEGER(bn, out) == NULL)
        return ca_ossl_fail(MQPKI_ERR_NOMEM, "serial: BN_to_ASN1_INTEGER");
    return MQPKI_OK;
}

int ca_serial_parse(const char *hex, ASN1_INTEGER **out)
{
    BIGNUM *bn = BN_new();
    ASN1_INTEGER *ai = ASN1_INTEGER_new();
    int rc;

    *out = NULL;
    if (bn == NULL || ai == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = ca_serial_parse_into(hex, bn, ai)) != MQPKI_OK)
        goto out;
    *out = ai;
    ai = NULL;
out:
    BN_free(bn);
    ASN1_INTEGER_free(ai);
    return rc;
}

/* A DNS name for a SAN: labels of [A-Za-z0-9-] (1..63, no leading/trailing '-'), <= 253. */
static int dns_valid(const char *name)
{
    size_t i, label = 0, len = strlen(name);

    if (len == 0 || len > 253)
        return 0;
    for (i = 0; i < len; i++) {
        char c = name[i];

        if (c == '.') {
            if (label == 0 || name[i - 1] == '-')
                return 0;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   c == '-') {
            if ((label == 0 && c == '-') || ++label > 63)
                return 0;
        } else {
            return 0;
        }
    }
    return label > 0 && name[len - 1] != '-';
}

/* Appends a GENERAL_NAME of type (GEN_URI, GEN_DNS: IA5 text; GEN_IPADD: raw bytes). */
static int push_name(GENERAL_NAMES *names, int type, const void *data, size_t len)
{
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_STRING *s = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
    int rc = MQPKI_OK;

    if (gn == NULL || s == NULL || !ASN1_STRING_set(s, data, (int)len)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    GENERAL_NAME_set0_value(gn, type, s);
    s = NULL;
    if (!sk_GENERAL_NAME_push(names, gn)) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    gn = NULL;
out:
    ASN1_STRING_free(s);
    GENERAL_NAME_free(gn);
    return rc;
}

/* subjectAltName: the asset URI (PROTO_ASSET_URN + ID), then the DNS and IP entries of opts. */
static int build_san(const struct ca_issue_opts *opts, GENERAL_NAMES **out)
{
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    char uri[sizeof(PROTO_ASSET_URN) + PROTO_ASSET_ID_MAX];
    unsigned char ip[16];
    size_t i;
    int rc = MQPKI_OK;

    *out = NULL;
    if (names == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    snprintf(uri, sizeof(uri), "%s%s", PROTO_ASSET_URN, opts->asset_id);
    if ((rc = push_name(names, GEN_URI, uri, strlen(uri))) != MQPKI_OK)
        goto out;
    for (i = 0; i < opts->n_dns; i++) {
        if (opts->dns[i] == NULL || !dns_valid(opts->dns[i])) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "SAN DNS name \"%.64s\" is not a host name",
                            opts->dns[i] != NULL ? opts->dns[i] : "(null)");
            goto out;
        }
        if ((rc = push_name(names, GEN_DNS, opts->dns[i], strlen(opts->dns[i]))) != MQPKI_OK)
            goto out;
    }
    /* inet_pton() is strict: "1.2.3.4x" or "1.2.3" are refused, not half-parsed. */
    for (i = 0; i < opts->n_ips; i++) {
        const char *t = opts->ips[i];

        if (t != NULL && inet_pton(AF_INET, t, ip) == 1)
            rc = push_name(names, GEN_IPADD, ip, 4);
        else if (t != NULL && inet_pton(AF_INET6, t, ip) == 1)
            rc = push_name(names, GEN_IPADD, ip, 16);
        else
            rc = mqpki_fail(MQPKI_ERR_INVALID, "SAN IP address \"%.64s\" is not IPv4 or IPv6",
                            t != NULL ? t : "(null)");
        if (rc != MQPKI_OK)
            goto out;
    }
    *out = names;
    names = NULL;
out:
    GENERAL_NAMES_free(names);
    return rc;
}

/* The certificate's SubjectPublicKeyInfo copied field by field from a canonical one (the
 * algorithm, its curve, the point): nothing is decoded or encoded. */
static int set_spki(X509 *x, const X509_PUBKEY *spki)
{
    ASN1_OBJECT *alg = NULL, *curve = NULL, *alg_dup = NULL;
    const unsigned char *pk = NULL;
    unsigned char *pk_dup = NULL;
    int pklen = 0, ptype = V_ASN1_UNDEF;
    X509_ALGOR *pa = NULL;
    const void *pval = NULL;

    if (!ca_spki_canonical(spki) || !X509_PUBKEY_get0_param(&alg, &pk, &pklen, &pa, spki))
        return mqpki_fail(MQPKI_ERR_INVALID, "subject key not in canonical form");
    X509_ALGOR_get0(NULL, &ptype, &pval, pa);
    if ((alg_dup = OBJ_dup(alg)) == NULL || (curve = OBJ_dup(pval)) == NULL ||
        (pk_dup = OPENSSL_memdup(pk, (size_t)pklen)) == NULL)
        goto fail;
    /* On success set0 owns the copies; it fails only before taking any. */
    if (!X509_PUBKEY_set0_param(X509_get_X509_PUBKEY(x), alg_dup, V_ASN1_OBJECT, curve, pk_dup,
                                pklen))
        goto fail;
    return MQPKI_OK;
fail:
    ASN1_OBJECT_free(alg_dup);
    ASN1_OBJECT_free(curve);
    OPENSSL_free(pk_dup);
    return MQPKI_ERR_NOMEM;
}

/* The profile's extensions for leaf x (whose public key is already set). */
static int add_leaf_exts(struct ca *ca, X509 *x, EVP_PKEY *pub, const struct ca_profile_info *prof,
                         const struct ca_issue_opts *opts)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
    ASN1_OCTET_STRING *ski = NULL;
    GENERAL_NAMES *san = NULL;
    int rc = MQPKI_OK;

    if (bc == NULL || ku == NULL || eku == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    bc->ca = 0; /* CA:FALSE, whatever the request asked for */
    /* KeyUsage bits (RFC 5280 4.2.1.3): digitalSignature (0), keyEncipherment (2). */
    if ((prof->key_usage & CA_KU_DIGITAL_SIGNATURE) && !ASN1_BIT_STRING_set_bit(ku, 0, 1))
        rc = MQPKI_ERR_NOMEM;
    if (rc == MQPKI_OK && (prof->key_usage & CA_KU_KEY_ENCIPHERMENT_RSA) &&
        EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA && !ASN1_BIT_STRING_set_bit(ku, 2, 1))
        rc = MQPKI_ERR_NOMEM;
    for (int i = 0; rc == MQPKI_OK && i < CA_PROFILE_EKU_MAX && prof->eku[i] != 0; i++)
        if (!sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(prof->eku[i])))
            rc = MQPKI_ERR_NOMEM;
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = ca_key_id(x, &ski)) != MQPKI_OK || (rc = build_san(opts, &san)) != MQPKI_OK)
        goto out;
    if ((rc = ca_add_ext(x, NID_basic_constraints, bc, 1, "basicConstraints")) != MQPKI_OK ||
        (rc = ca_add_ext(x, NID_key_usage, ku, 1, "keyUsage")) != MQPKI_OK ||
        (rc = ca_add_ext(x, NID_ext_key_usage, eku, 0, "extendedKeyUsage")) != MQPKI_OK ||
        (rc = ca_add_ext(x, NID_subject_key_identifier, ski, 0, "subjectKeyIdentifier")) !=
            MQPKI_OK ||
        (rc = ca_add_ext(x, NID_subject_alt_name, san, 0, "subjectAltName")) != MQPKI_OK)
        goto out;
    /* The prebuilt extensions of struct ca are only read (X509_add_ext() copies them). */
    if (!X509_add_ext(x, ca->aki, -1) || (ca->crl_dp != NULL && !X509_add_ext(x, ca->crl_dp, -1))) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "AKI / CRL distribution point");
        goto out;
    }
out:
    BASIC_CONSTRAINTS_free(bc);
    ASN1_BIT_STRING_free(ku);
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    ASN1_OCTET_STRING_free(ski);
    GENERAL_NAMES_free(san);
    return rc;
}

/* Checks opts against the profile and sets *days to the validity (the profile's default for 0). */
static int check_opts(const struct ca_issue_opts *opts, const struct ca_profile_info **prof,
                      int *days)
{
    if ((*prof = ca_profile((int)opts->profile)) == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "unknown certificate profile %d", (int)opts->profile);
    if (opts->asset_id == NULL || !proto_asset_id_valid(opts->asset_id))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "asset id \"%.80s\" must be 1 to 64 of [A-Za-z0-9._-], not starting "
                          "with '.' or '-'",
                          opts->asset_id != NULL ? opts->asset_id : "(null)");
    if ((opts->n_dns > 0 && !((*prof)->san & CA_SAN_DNS)) ||
        (opts->n_ips > 0 && !((*prof)->san & CA_SAN_IP)))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "asset %s: the %s profile carries no DNS or IP names (DESIGN.md 4)",
                          opts->asset_id, (*prof)->name);
    if ((opts->n_dns > 0 && opts->dns == NULL) || (opts->n_ips > 0 && opts->ips == NULL))
        return mqpki_fail(MQPKI_ERR_INVALID, "asset %s: SAN lists missing", opts->asset_id);
    if (opts->days < 0 || opts->days > LEAF_DAYS_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "asset %s: validity must be 1 to %d days",
                          opts->asset_id, LEAF_DAYS_MAX);
    *days = opts->days > 0 ? opts->days : (*prof)->default_days;
    return MQPKI_OK;
}

int ca_issue_cert(struct ca *ca, EVP_PKEY *pub, const struct ca_issue_opts *opts, X509 **out)
{
    const struct ca_profile_info *prof = NULL;
    X509 *x = NULL;
    X509_NAME *subject = NULL;
    ASN1_INTEGER *serial = NULL;
    int64_t not_before;
    int days = 0;
    int rc;

    if (out == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "ca_issue_cert: out is NULL");
    *out = NULL;
    if (ca == NULL || pub == NULL || opts == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "ca_issue_cert: CA, key and options are needed");
        goto out;
    }
    if ((rc = check_opts(opts, &prof, &days)) != MQPKI_OK)
        goto out;
    /* ca_csr_check() applies the full allow-list; this only keeps the profile logic sound and
     * never lets explicit curve parameters into a certificate. */
    if ((rc = ca_key_check_named(pub)) != MQPKI_OK)
        goto out;
    if (ca_md_for_key(pub) == NULL) {
        rc =
            mqpki_fail(MQPKI_ERR_POLICY, "asset %s: subject key must be EC or RSA", opts->asset_id);
        goto out;
    }
    if ((rc = ca_serial_parse(opts->serial_hex, &serial)) != MQPKI_OK ||
        (rc = ca_name_build(opts->asset_id, &subject)) != MQPKI_OK)
        goto out;
    x = X509_new();
    if (x == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if (!X509_set_version(x, X509_VERSION_3) || !X509_set_serialNumber(x, serial) ||
        !X509_set_issuer_name(x, ca->issuer_name) || !X509_set_subject_name(x, subject) ||
        (opts->spki != NULL ? set_spki(x, opts->spki) != MQPKI_OK : !X509_set_pubkey(x, pub))) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "leaf certificate fields");
        goto out;
    }
    not_before = opts->not_before != 0 ? opts->not_before : mqpki_now() - CA_SKEW_SECONDS;
    if ((rc = ca_set_validity(x, not_before, CA_SKEW_SECONDS + (int64_t)days * 86400)) !=
            MQPKI_OK ||
        (rc = add_leaf_exts(ca, x, pub, prof, opts)) != MQPKI_OK)
        goto out;
    if (X509_sign(x, ca->key, ca->md) <= 0) {
        rc = ca_ossl_fail(MQPKI_ERR_CRYPTO, "sign certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(subject);
    ASN1_INTEGER_free(serial);
    return rc;
}
