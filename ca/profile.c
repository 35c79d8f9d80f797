/*
 * ca/profile.c: the certificate profiles of DESIGN.md 4 as one table. A profile is a row, not a
 * branch: issuance reads its key usage, extended key usages, default validity and allowed
 * subjectAltName kinds from here.
 */
#include <string.h>

#include <openssl/obj_mac.h>

#include "ca_int.h"

static const struct ca_profile_info profiles[] = {
    {
        .id = CA_PROFILE_DEVICE,
        .name = "device",
        .key_usage = CA_KU_DIGITAL_SIGNATURE,
        .eku = {NID_client_auth},
        .default_days = 90,
        .san = CA_SAN_URI,
        .requestable = 1,
    },
    {
        .id = CA_PROFILE_BROKER,
        .name = "broker",
        /* TLS 1.2 servers with RSA keys may still be offered RSA key transport. */
        .key_usage = CA_KU_DIGITAL_SIGNATURE | CA_KU_KEY_ENCIPHERMENT_RSA,
        .eku = {NID_server_auth, NID_client_auth},
        .default_days = 90,
        .san = CA_SAN_URI | CA_SAN_DNS | CA_SAN_IP,
        .requestable = 1,
    },
    {
        .id = CA_PROFILE_SERVICE,
        .name = "service",
        .key_usage = CA_KU_DIGITAL_SIGNATURE | CA_KU_KEY_ENCIPHERMENT_RSA,
        .eku = {NID_server_auth, NID_client_auth},
        .default_days = 30,
        .san = CA_SAN_URI | CA_SAN_DNS | CA_SAN_IP,
        .requestable = 0,
    },
    {
        /* A person at the dashboard (mqpki operator add): a TLS client, never a server. */
        .id = CA_PROFILE_OPERATOR,
        .name = "operator",
        .key_usage = CA_KU_DIGITAL_SIGNATURE,
        .eku = {NID_client_auth},
        .default_days = 90,
        .san = CA_SAN_URI,
        .requestable = 0,
    },
};

#define N_PROFILES (sizeof(profiles) / sizeof(profiles[0]))
_Static_assert(N_PROFILES == CA_PROFILE_COUNT_, "one row per enum ca_profile");

const struct ca_profile_info *ca_profile(int profile)
{
    if (profile < 0 || (size_t)profile >= N_PROFILES)
        return NULL;
    return &profiles[profile];
}

int ca_profile_parse(const char *name)
{
    for (size_t i = 0; name != NULL && i < N_PROFILES; i++)
        if (strcmp(name, profiles[i].name) == 0)
            return profiles[i].id;
    return -1;
}

const char *ca_profile_name(enum ca_profile profile)
{
    const struct ca_profile_info *p = ca_profile((int)profile);

    return p != NULL ? p->name : NULL;
}
