/* proto/wire.c: asset ids, the certificate-to-asset rule, topics, serial and time helpers. */
#include "proto.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/x509v3.h>

_Static_assert(PROTO_SERIAL_HEX_MAX == 2 * 20, "RFC 5280 4.1.2.2: serials of at most 20 octets");

int proto_asset_id_valid(const char *id)
{
    size_t n;

    if (id == NULL)
        return 0;
    n = strnlen(id, PROTO_ASSET_ID_MAX + 1);
    if (n == 0 || n > PROTO_ASSET_ID_MAX || id[0] == '.' || id[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int proto_cert_asset_id(X509 *cert, char out[PROTO_ASSET_ID_MAX + 1])
{
    static const char prefix[] = PROTO_ASSET_URN;
    const size_t plen = sizeof(prefix) - 1;
    GENERAL_NAMES *names = NULL;
    char id[PROTO_ASSET_ID_MAX + 1];
    int found = 0, conflict = 0;

    out[0] = '\0';
    if (cert == NULL)
        return 0;
    names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        const unsigned char *uri;
        size_t len;

        if (gn->type != GEN_URI)
            continue;
        uri = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        /* An embedded NUL would let "urn:mqpki:asset:a\0b" read as asset a to C code. */
        if (len <= plen || len - plen > PROTO_ASSET_ID_MAX || memcmp(uri, prefix, plen) != 0 ||
            memchr(uri, '\0', len) != NULL)
            continue;
        memcpy(id, uri + plen, len - plen);
        id[len - plen] = '\0';
        if (!proto_asset_id_valid(id))
            continue;
        if (found && strcmp(id, out) != 0)
            conflict = 1;
        memcpy(out, id, strlen(id) + 1);
        found = 1;
    }
    GENERAL_NAMES_free(names);
    if (!found || conflict) {
        out[0] = '\0';
        return 0;
    }
    return 1;
}

int proto_topic_is_control(const char *topic)
{
    size_t n = sizeof(PROTO_TOPIC_ROOT) - 1;

    /* "mqpki/v1/..." or "mqpki/v1" itself, the root without its trailing '/'. */
    return topic != NULL &&
           (strncmp(topic, PROTO_TOPIC_ROOT, n) == 0 ||
            (strncmp(topic, PROTO_TOPIC_ROOT, n - 1) == 0 && topic[n - 1] == '\0'));
}

int proto_topic_events(const char *broker, char out[PROTO_TOPIC_MAX])
{
    if (!proto_asset_id_valid(broker))
        return -1;
    snprintf(out, PROTO_TOPIC_MAX, "%s%s", PROTO_TOPIC_EVENTS, broker);
    return 0;
}

int proto_topic_asset_cmd(const char *asset, char out[PROTO_TOPIC_MAX])
{
    if (!proto_asset_id_valid(asset))
        return -1;
    snprintf(out, PROTO_TOPIC_MAX, "%s%s%s", PROTO_TOPIC_ASSETS, asset, PROTO_TOPIC_CMD_SUFFIX);
    return 0;
}

int proto_topic_crl_generation(int gen, int delta, char out[PROTO_TOPIC_MAX])
{
    if (gen < 1 || gen > 999)
        return -1;
    snprintf(out, PROTO_TOPIC_MAX, "%s%d/%s", PROTO_TOPIC_CRL_GENERATION, gen,
             delta ? "delta" : "full");
    return 0;
}

int proto_topic_crl_generation_parse(const char *topic, int *gen, int *delta)
{
    const char *p;
    char *end;
    long g;

    if (strncmp(topic, PROTO_TOPIC_CRL_GENERATION, sizeof(PROTO_TOPIC_CRL_GENERATION) - 1) != 0)
        return -1;
    p = topic + sizeof(PROTO_TOPIC_CRL_GENERATION) - 1;
    if (*p < '1' || *p > '9')
        return -1;
    g = strtol(p, &end, 10);
    if (g < 1 || g > 999 || *end != '/')
        return -1;
    if (strcmp(end + 1, "full") == 0)
        *delta = 0;
    else if (strcmp(end + 1, "delta") == 0)
        *delta = 1;
    else
        return -1;
    *gen = (int)g;
    return 0;
}

int proto_asn1_time(const ASN1_TIME *t, int64_t *out)
{
    struct tm tm;

    *out = 0;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return -1;
    *out = (int64_t)timegm(&tm);
    return 0;
}

int proto_serial_hex(const ASN1_INTEGER *serial, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    BIGNUM *bn = NULL;
    char *hex = NULL;
    int rc = -1;

    out[0] = '\0';
    if (serial == NULL || (bn = ASN1_INTEGER_to_BN(serial, NULL)) == NULL || BN_is_negative(bn))
        goto out;
    /* BN_bn2hex writes upper case, whole octets ("0A"), and "0" for zero. */
    if ((hex = BN_bn2hex(bn)) == NULL || strlen(hex) > PROTO_SERIAL_HEX_MAX)
        goto out;
    memcpy(out, hex, strlen(hex) + 1);
    rc = 0;
out:
    OPENSSL_free(hex);
    BN_free(bn);
    return rc;
}

int proto_serial_norm(const char *in, char out[PROTO_SERIAL_HEX_MAX + 1])
{
    size_t n = 0;

    out[0] = '\0';
    if (in == NULL)
        return -1;
    if (in[0] == '0' && (in[1] == 'x' || in[1] == 'X'))
        in += 2;
    for (; *in != '\0'; in++) {
        if (*in == ':')
            continue;
        if (!isxdigit((unsigned char)*in) || n == PROTO_SERIAL_HEX_MAX) {
            out[0] = '\0';
            return -1;
        }
        out[n++] = (char)toupper((unsigned char)*in);
    }
    out[n] = '\0';
    return n > 0 ? 0 : -1;
}

const char *proto_reason_name(int code)
{
    static const char *const names[] = {
        [0] = "unspecified",   [1] = "key-compromise",
        [2] = "ca-compromise", [3] = "affiliation-changed",
        [4] = "superseded",    [5] = "cessation",
        [6] = "hold",          [8] = "remove-from-crl",
    };

    if (code < 0 || (size_t)code >= sizeof(names) / sizeof(names[0]))
        return NULL;
    return names[code];
}
