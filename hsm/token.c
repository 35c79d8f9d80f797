/*
 * hsm/token.c: the CA's token on top of p11/: the embedded SoftHSM2 set-up of a data directory
 * and its guard, token initialization, open/close, and the CA's key types. The generic PKCS#11
 * work (module, login, session pool, keys, the EVP_PKEY bridge) is p11/'s.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "hsm_int.h"

/* Below hsm_softhsm_prepare's DIR: the token directory and the guard's good copies. */
#define SOFTHSM_TOKENS "tokens"
#define SOFTHSM_GOOD   "tokens.good"

int hsm_open(const struct hsm_config *cfg, struct hsm **out)
{
    struct p11_config pc;
    struct hsm *hsm = NULL;
    char tokens[PATH_MAX], good[PATH_MAX];
    int rc;

    if (out != NULL)
        *out = NULL;
    if (cfg == NULL || out == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "hsm_open: missing module, token label or PIN");
        goto out;
    }
    memset(&pc, 0, sizeof(pc));
    pc.module = cfg->module;
    pc.token_label = cfg->token_label;
    pc.pin = cfg->pin;
    if (cfg->softhsm_dir != NULL) {
        if (mqpki_path(tokens, sizeof(tokens), "%s/%s", cfg->softhsm_dir, SOFTHSM_TOKENS) !=
                MQPKI_OK ||
            mqpki_path(good, sizeof(good), "%s/%s", cfg->softhsm_dir, SOFTHSM_GOOD) != MQPKI_OK) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", cfg->softhsm_dir);
            goto out;
        }
        pc.softhsm_tokendir = tokens;
        pc.softhsm_gooddir = good;
    }
    hsm = calloc(1, sizeof(*hsm));
    if (hsm == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "hsm_open: out of memory");
        goto out;
    }
    rc = p11_open(&pc, &hsm->tok);
    if (rc != MQPKI_OK)
        goto out;
    *out = hsm;
    hsm = NULL;
out:
    hsm_close(hsm);
    return rc;
}

void hsm_close(struct hsm *hsm)
{
    if (hsm == NULL)
        return;
    p11_close(hsm->tok);
    free(hsm);
}

struct p11_token *hsm_p11(struct hsm *hsm)
{
    return hsm != NULL ? hsm->tok : NULL;
}

int hsm_token_init(const char *module, const char *label, const char *so_pin, const char *user_pin)
{
    struct p11_config pc;

    memset(&pc, 0, sizeof(pc));
    pc.module = module;
    pc.token_label = label;
    pc.pin = user_pin;
    return p11_token_init(&pc, so_pin);
}

int hsm_key_generate(struct hsm *hsm, const char *label, enum hsm_key_type type)
{
    static const enum p11_key_type types[] = {
        [HSM_KEY_EC_P256] = P11_KEY_EC_P256,
        [HSM_KEY_EC_P384] = P11_KEY_EC_P384,
        [HSM_KEY_RSA_3072] = P11_KEY_RSA_3072,
    };

    if ((unsigned)type >= sizeof(types) / sizeof(types[0]))
        return mqpki_fail(MQPKI_ERR_INVALID, "HSM key '%s': unknown key type %d",
                          label != NULL ? label : "?", (int)type);
    return p11_key_generate(hsm != NULL ? hsm->tok : NULL, label, types[type]);
}

int hsm_key_load(struct hsm *hsm, const char *label, EVP_PKEY **out)
{
    return p11_key_load(hsm != NULL ? hsm->tok : NULL, label, out);
}

/* What softhsm2.conf cannot hold in a value: '#' starts a comment, '=' splits key and value,
 * a line break ends the entry. */
#define SOFTHSM_CONF_BAD "#=\n\r"

int hsm_softhsm_path_check(const char *dir)
{
    char part[PATH_MAX], abs[PATH_MAX], *slash;
    int rc = MQPKI_OK;

    if (dir == NULL || dir[0] == '\0') {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "SoftHSM directory: empty path");
        goto out;
    }
    if (strpbrk(dir, SOFTHSM_CONF_BAD) != NULL)
        goto bad;
    /* The file names the resolved path: a link on the way may lead to such a name. The part of
     * dir that exists already is resolved; the rest is as checked above. */
    if (mqpki_path(part, sizeof(part), "%s", dir) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", dir);
        goto out;
    }
    while (realpath(part, abs) == NULL) {
        if ((slash = strrchr(part, '/')) == NULL)
            goto out;
        if (slash == part) {
            slash[1] = '\0';
            if (realpath(part, abs) == NULL)
                goto out;
            break;
        }
        *slash = '\0';
    }
    if (strpbrk(abs, SOFTHSM_CONF_BAD) != NULL) {
        dir = abs;
        goto bad;
    }
    goto out;
bad:
    rc = mqpki_fail(MQPKI_ERR_INVALID,
                    "%s: SoftHSM's configuration file cannot name a path with '#', '=' or a line "
                    "break in it (its comment and key = value syntax)",
                    dir);
out:
    return rc;
}

/* 1 when path (resolved, links followed) is dir itself or lies below it; dir is resolved. */
static int resolves_inside(const char *path, const char *dir)
{
    char abs[PATH_MAX];
    size_t n = strlen(dir);

    if (realpath(path, abs) == NULL)
        return 0;
    return strncmp(abs, dir, n) == 0 && (abs[n] == '\0' || abs[n] == '/');
}

/*
 * A copy of a data directory must never reach its original's token: the token directory, its
 * good copies and every token in them must resolve inside DIR. A link that leads elsewhere (a
 * copy made with links, or planted) is refused rather than followed.
 */
static int tokens_confined(const char *abs, const char *sub)
{
    char path[PATH_MAX], entry[PATH_MAX];
    struct dirent *de;
    struct stat st;
    DIR *d = NULL;
    int rc = MQPKI_OK;

    if (mqpki_path(path, sizeof(path), "%s/%s", abs, sub) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", abs);
        goto out;
    }
    if (lstat(path, &st) != 0) {
        if (errno != ENOENT)
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISDIR(st.st_mode) || !resolves_inside(path, abs))
        goto bad;
    if ((d = opendir(path)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
        goto out;
    }
    while ((de = readdir(d)) != NULL) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        if (mqpki_path(entry, sizeof(entry), "%s/%s", path, de->d_name) != MQPKI_OK) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", path);
            goto out;
        }
        if (lstat(entry, &st) != 0 || S_ISLNK(st.st_mode)) {
            snprintf(path, sizeof(path), "%s", entry);
            goto bad;
        }
    }
    goto out;
bad:
    rc = mqpki_fail(MQPKI_ERR_STATE,
                    "%s leads outside the data directory %s (a link?): refused, so that a copy "
                    "never uses another directory's token",
                    path, abs);
out:
    if (d != NULL)
        closedir(d);
    return rc;
}

int hsm_softhsm_prepare(const char *dir)
{
    char abs[PATH_MAX], tokens[PATH_MAX], conf[PATH_MAX], text[2 * PATH_MAX];
    char held[PATH_MAX];
    unsigned char *old = NULL;
    size_t old_len = 0;
    int rc, n;

    if ((rc = hsm_softhsm_path_check(dir)) != MQPKI_OK)
        goto out;
    rc = mqpki_mkdir_p(dir, 0700);
    if (rc != MQPKI_OK)
        goto out;
    /* SoftHSM resolves a relative tokendir against its own working directory: pin it down. */
    if (realpath(dir, abs) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
        goto out;
    }
    if (mqpki_path(tokens, sizeof(tokens), "%s/" SOFTHSM_TOKENS, abs) != MQPKI_OK ||
        mqpki_path(conf, sizeof(conf), "%s/softhsm2.conf", abs) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", abs);
        goto out;
    }
    if ((rc = tokens_confined(abs, SOFTHSM_TOKENS)) != MQPKI_OK ||
        (rc = tokens_confined(abs, SOFTHSM_GOOD)) != MQPKI_OK)
        goto out;
    rc = mqpki_mkdir_p(tokens, 0700);
    if (rc != MQPKI_OK)
        goto out;
    /*
     * The file is derived, never trusted: it is written from the directory's current location
     * at every opening, so that a data directory moved or copied (cp -a, mv, a restored backup)
     * names its own token and never the one of the path it was created at. Rewritten only when
     * it differs, atomically, so that a concurrent reader sees the old or the new text.
     */
    n = snprintf(text, sizeof(text),
                 "# SoftHSM2 configuration written by mqpki for the embedded token; derived\n"
                 "# from the data directory's location at each start (do not edit)\n"
                 "directories.tokendir = %s\n"
                 "objectstore.backend = file\n"
                 "log.level = ERROR\n"
                 "slots.removable = false\n",
                 tokens);
    if (n < 0 || (size_t)n >= sizeof(text)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", conf);
        goto out;
    }
    if (mqpki_file_read(conf, sizeof(text), &old, &old_len) != MQPKI_OK || old_len != (size_t)n ||
        memcmp(old, text, old_len) != 0) {
        mqpki_err_clear();
        rc = mqpki_file_write_atomic(conf, text, (size_t)n, 0600);
        if (rc != MQPKI_OK)
            goto out;
    }
    /* What SoftHSM will read, read back: its token directory is ours. */
    if ((rc = p11_softhsm_tokendir(conf, held, sizeof(held))) != MQPKI_OK)
        goto out;
    if (!resolves_inside(held, abs)) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "%s: token directory %s is outside %s: refused", conf,
                        held, abs);
        goto out;
    }
    if (setenv("SOFTHSM2_CONF", conf, 1) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "setenv SOFTHSM2_CONF: %s", strerror(errno));
        goto out;
    }
out:
    free(old);
    return rc;
}
