/* datadir: mqpki.conf, an INI file parsed by inih; every key is documented in
 * docs/configuration.md. Unknown sections or keys are errors: a typo must not silently fall back
 * to a default in a CA's configuration. */
#include "datadir.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "common.h"
#include "datadir_int.h"
#include "hsm.h"

#define CONF_MAX (64 * 1024)

struct parse_ctx {
    const char *home;
    struct datadir_config *cfg;
    char error[256];
};

static int set_text(char *dst, size_t size, const char *value)
{
    if (strlen(value) >= size)
        return 0;
    memcpy(dst, value, strlen(value) + 1);
    return 1;
}

static int set_int(int *dst, const char *value, long min, long max)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < min || v > max)
        return 0;
    *dst = (int)v;
    return 1;
}

static int set_int64(int64_t *dst, const char *value, long long min, long long max)
{
    char *end = NULL;
    long long v;

    errno = 0;
    v = strtoll(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || v < min || v > max)
        return 0;
    *dst = (int64_t)v;
    return 1;
}

static int set_duration(int64_t *dst, const char *value)
{
    int64_t v = mqpki_duration_parse(value);

    if (v <= 0)
        return 0;
    *dst = v;
    return 1;
}

static const char *const detector_names[DETECT_COUNT_] = {
    "auth_failures", "topic_scan", "cloned_identity", "flapping", "silent", "revoked_connected",
};
static const char *const response_names[] = {"off", "alert", "hold", "quarantine"};

const char *datadir_detector_name(int rule)
{
    return rule >= 0 && rule < DETECT_COUNT_ ? detector_names[rule] : NULL;
}

const char *datadir_response_name(int response)
{
    return response >= 0 && response <= DETECT_QUARANTINE ? response_names[response] : NULL;
}

/* [detect] RULE_threshold, RULE_window, RULE_response. -1 when name is none of these. */
static int detect_key(struct datadir_config *c, const char *name, const char *value)
{
    for (int i = 0; i < DETECT_COUNT_; i++) {
        struct datadir_detect_rule *r = &c->detect[i];
        size_t n = strlen(detector_names[i]);
        const char *k = name + n;
        if (strncmp(name, detector_names[i], n) != 0 || k[0] != '_')
            continue;
        if (strcmp(k, "_threshold") == 0)
            return set_int(&r->threshold, value, 1, 1000000);
        if (strcmp(k, "_window") == 0)
            return set_duration(&r->window, value) && r->window <= 30 * 86400;
        if (strcmp(k, "_response") == 0) {
            for (int j = 0; j <= DETECT_QUARANTINE; j++) {
                if (strcmp(value, response_names[j]) == 0) {
                    r->response = j;
                    return 1;
                }
            }
            return 0;
        }
    }
    return -1;
}

static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    struct parse_ctx *p = user;
    struct datadir_config *c = p->cfg;
    int ok;

#define KEY(s, n) (strcmp(section, s) == 0 && strcmp(name, n) == 0)
    if (KEY("ca", "name"))
        ok = set_text(c->ca_name, sizeof(c->ca_name), value) && value[0] != '\0';
    else if (KEY("ca", "key"))
        ok = set_text(c->key_type, sizeof(c->key_type), value) &&
             (strcmp(value, "ec-p256") == 0 || strcmp(value, "ec-p384") == 0 ||
              strcmp(value, "rsa-3072") == 0);
    else if (KEY("ca", "url"))
        ok = set_text(c->url, sizeof(c->url), value) &&
             (strncmp(value, "https://", 8) == 0 || strncmp(value, "http://", 7) == 0);
    else if (KEY("ca", "crl_validity"))
        ok = set_duration(&c->crl_validity, value);
    else if (KEY("ca", "crl_full_every"))
        ok = set_duration(&c->crl_full_every, value);
    else if (KEY("ca", "crl_full_after")) {
        /* 0 is allowed here: no full CRL follows deltas before crl_full_every. */
        int64_t v = mqpki_duration_parse(value);
        ok = v >= 0;
        if (ok)
            c->crl_full_after = v;
    } else if (KEY("ca", "crl_delta_max"))
        ok = set_int64(&c->crl_delta_max, value, 1, 100000000);
    else if (KEY("ca", "device_days"))
        ok = set_int(&c->device_days, value, 1, 3650);
    else if (KEY("ca", "broker_days"))
        ok = set_int(&c->broker_days, value, 1, 3650);
    else if (KEY("hsm", "module"))
        ok = set_text(c->hsm_module, sizeof(c->hsm_module), value);
    else if (KEY("hsm", "token"))
        ok = set_text(c->hsm_token, sizeof(c->hsm_token), value) && value[0] != '\0';
    else if (KEY("hsm", "pin_file")) {
        if (value[0] == '/')
            ok = set_text(c->pin_file, sizeof(c->pin_file), value);
        else
            ok = mqpki_path(c->pin_file, sizeof(c->pin_file), "%s/%s", p->home, value) == MQPKI_OK;
    } else if (KEY("daemon", "listen"))
        ok = set_text(c->listen, sizeof(c->listen), value) && strchr(value, ':') != NULL;
    else if (KEY("enrollment", "reenroll_grace")) {
        /* 0 is allowed: only the newest certificate ever renews. */
        int64_t v = mqpki_duration_parse(value);
        ok = v >= 0 && v <= 30 * 86400;
        if (ok)
            c->reenroll_grace = v;
    } else if (KEY("enrollment", "token_ttl"))
        ok = set_duration(&c->token_ttl, value) && c->token_ttl <= 30 * 86400;
    else if (KEY("enrollment", "auth_failures"))
        ok = set_int(&c->auth_failures, value, 1, 1000);
    else if (KEY("enrollment", "auth_window"))
        ok = set_duration(&c->auth_window, value) && c->auth_window <= 86400;
    else if (KEY("enrollment", "rate")) {
        int rate = 0;
        ok = set_int(&rate, value, 0, 1000000);
        c->rate_per_address = rate;
    } else if (KEY("enrollment", "burst"))
        ok = set_int(&c->rate_burst, value, 1, 1000000);
    else if (KEY("retention", "expired_cert_days"))
        ok = set_int(&c->expired_cert_days, value, 1, 36500);
    else if (KEY("retention", "token_days"))
        ok = set_int(&c->token_days, value, 1, 3650);
    else if (KEY("feed", "crl_inline_max"))
        ok = set_int64(&c->feed_inline_max, value, 0, PROTO_CRL_MAX_DER);
    else if (KEY("feed", "crl_url"))
        ok = set_text(c->feed_crl_url, sizeof(c->feed_crl_url), value) &&
             (value[0] == '\0' || proto_crl_url_ok(value));
    else if (KEY("http", "crl_listen"))
        ok = set_text(c->crl_listen, sizeof(c->crl_listen), value) &&
             (value[0] == '\0' || strchr(value, ':') != NULL);
    else if (KEY("log", "format"))
        ok = (strcmp(value, "text") == 0 || strcmp(value, "json") == 0) &&
             set_text(c->log_format, sizeof(c->log_format), value);
    else if (KEY("log", "level"))
        ok = (strcmp(value, "error") == 0 || strcmp(value, "warn") == 0 ||
              strcmp(value, "info") == 0 || strcmp(value, "debug") == 0) &&
             set_text(c->log_level, sizeof(c->log_level), value);
    else if (KEY("audit", "checkpoint_every"))
        ok = set_duration(&c->audit_every, value) && c->audit_every <= 86400;
    else if (KEY("audit", "key_fingerprint")) {
        /* SHA-256 of the audit key's SubjectPublicKeyInfo, as `audit verify` shows it. */
        ok = value[0] == '\0' || (strlen(value) == PROTO_FP_HEX_LEN &&
                                  strspn(value, "0123456789abcdefABCDEF") == PROTO_FP_HEX_LEN);
        for (size_t i = 0; ok && value[i] != '\0'; i++)
            c->audit_key_fp[i] = (char)tolower((unsigned char)value[i]);
        c->audit_key_fp[ok ? strlen(value) : 0] = '\0';
    } else if (KEY("store", "url")) {
        /* Empty: the embedded SQLite file mqpki.db. Else a PostgreSQL URL (docs/ha.md). */
        ok = set_text(c->store_url, sizeof(c->store_url), value) &&
             (value[0] == '\0' || inventory_target_is_remote(value));
    } else if (KEY("detect", "events_max_rows"))
        ok = set_int64(&c->events_max_rows, value, 100, 100000000);
    else if (KEY("detect", "events_max_age"))
        ok = set_duration(&c->events_max_age, value) && c->events_max_age <= 366 * 86400;
    else if (KEY("detect", "hook"))
        ok = set_text(c->detect_hook, sizeof(c->detect_hook), value) &&
             (value[0] == '\0' || value[0] == '/');
    else if (strcmp(section, "detect") == 0 && (ok = detect_key(c, name, value)) >= 0) {
        /* one of the rules' keys */
    } else {
        snprintf(p->error, sizeof(p->error), "unknown key [%.40s] %.60s", section, name);
        return 0;
    }
#undef KEY
    if (!ok) {
        snprintf(p->error, sizeof(p->error), "[%.40s] %.60s: invalid value", section, name);
        return 0;
    }
    return 1;
}

void datadir_profile_days(const struct datadir_config *cfg, int days[CA_PROFILE_COUNT_])
{
    memset(days, 0, sizeof(int) * CA_PROFILE_COUNT_);
    days[CA_PROFILE_DEVICE] = cfg->device_days;
    days[CA_PROFILE_BROKER] = cfg->broker_days;
}

void datadir_config_defaults(const char *home, struct datadir_config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->ca_name, sizeof(c->ca_name), "mqpki");
    snprintf(c->key_type, sizeof(c->key_type), "ec-p256");
    snprintf(c->url, sizeof(c->url), "https://localhost:8443");
    c->crl_validity = 24 * 3600;
    c->crl_full_every = 6 * 3600;
    c->crl_full_after = 60;
    c->crl_delta_max = 10000;
    c->feed_inline_max = 1024 * 1024;
    c->device_days = 90;
    c->broker_days = 90;
    snprintf(c->hsm_token, sizeof(c->hsm_token), "mqpki");
    if (mqpki_path(c->pin_file, sizeof(c->pin_file), "%s/secrets/pin", home) != MQPKI_OK)
        c->pin_file[0] = '\0';
    snprintf(c->listen, sizeof(c->listen), "127.0.0.1:8443");
    c->token_ttl = 24 * 3600;
    c->reenroll_grace = 24 * 3600;
    c->auth_failures = 5;
    c->auth_window = 60;
    c->rate_per_address = 200;
    c->rate_burst = 400;
    c->audit_every = 600;
    c->expired_cert_days = 90;
    c->token_days = 30;
    snprintf(c->log_format, sizeof(c->log_format), "text");
    snprintf(c->log_level, sizeof(c->log_level), "info");
    c->events_max_rows = 100000;
    c->events_max_age = 7 * 86400;
    /* Defaults on (docs/detect.md): threshold, window, response. */
    c->detect[DETECT_AUTH_FAILURES] = (struct datadir_detect_rule){5, 60, DETECT_ALERT};
    c->detect[DETECT_TOPIC_SCAN] = (struct datadir_detect_rule){10, 60, DETECT_QUARANTINE};
    c->detect[DETECT_CLONED_IDENTITY] = (struct datadir_detect_rule){3, 60, DETECT_HOLD};
    c->detect[DETECT_FLAPPING] = (struct datadir_detect_rule){10, 300, DETECT_ALERT};
    c->detect[DETECT_SILENT] = (struct datadir_detect_rule){3, 86400, DETECT_ALERT};
    c->detect[DETECT_REVOKED_CONNECTED] = (struct datadir_detect_rule){1, 30, DETECT_ALERT};
}

int datadir_config_load(const char *home, struct datadir_config *cfg)
{
    struct parse_ctx p;
    char path[PATH_MAX];
    unsigned char *text = NULL;
    size_t len;
    int rc, line;

    datadir_config_defaults(home, cfg);
    memset(&p, 0, sizeof(p));
    p.home = home;
    p.cfg = cfg;
    if (mqpki_path(path, sizeof(path), "%s/mqpki.conf", home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    rc = mqpki_file_read(path, CONF_MAX, &text, &len);
    if (rc == MQPKI_ERR_NOT_FOUND)
        return mqpki_fail(rc, "%s: no CA here (run 'mqpki init' first)", home);
    if (rc != MQPKI_OK)
        return rc;
    if (memchr(text, '\0', len) != NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: NUL byte in configuration", path);
        goto out;
    }
    line = ini_parse_string((const char *)text, on_entry, &p);
    if (line != 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s:%d: %s", path, line,
                        p.error[0] ? p.error : "syntax error");
        goto out;
    }
out:
    free(text);
    return rc;
}

int datadir_broker_conf_read(const char *path, char host[DATADIR_BROKER_HOST_MAX], int *port)
{
    unsigned char *text = NULL;
    size_t len = 0;
    char *line, *save = NULL;
    int rc;

    *port = 8883;
    snprintf(host, DATADIR_BROKER_HOST_MAX, "127.0.0.1");
    if ((rc = mqpki_file_read(path, 16 * 1024, &text, &len)) != MQPKI_OK)
        return rc;
    for (line = strtok_r((char *)text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        char key[16], value[DATADIR_BROKER_HOST_MAX];
        _Static_assert(DATADIR_BROKER_HOST_MAX == 256, "the sscanf width below");
        if (sscanf(line, " %15[a-z] = %255s", key, value) != 2)
            continue;
        if (strcmp(key, "host") == 0)
            snprintf(host, DATADIR_BROKER_HOST_MAX, "%s", value);
        else if (strcmp(key, "port") == 0)
            *port = atoi(value);
    }
    free(text);
    if (*port < 1 || *port > 65535)
        return mqpki_fail(MQPKI_ERR_PARSE, "%s: port out of range", path);
    return MQPKI_OK;
}
