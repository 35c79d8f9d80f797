/*
 * device/store_pkcs11.c: the `pkcs11:MODULE` key store. Keys are generated inside the token
 * (non-extractable, CKA_SENSITIVE) and used through an EVP_PKEY whose signatures run in the
 * token. The PKCS#11 work is done by mqpki's p11/ module through its public header only: it is
 * the generic PKCS#11 key bridge the CA uses too, and a second one here would only be a second
 * place for bugs. p11/ logs through the device logger we hand it, never through a global one.
 *
 * When the module is SoftHSM2 (a test vehicle, or a device without a secure element), its token
 * directory (from SOFTHSM2_CONF, else /etc/softhsm/softhsm2.conf) is guarded by p11/'s file-store
 * guard with good copies in DIR/softhsm.good, so that a crash during a login or a key generation
 * cannot leave the token unusable.
 *
 * Token label: MQPKI_DEVICE_TOKEN_LABEL at enrollment (default "device"), then device.json.
 * PIN: MQPKI_DEVICE_PIN, else DIR/pin (0600). Neither is ever logged or put in argv.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "device_int.h"
#include "p11.h"
#include "proto.h"

#define PIN_ENV  "MQPKI_DEVICE_PIN"
#define GOOD_DIR "softhsm.good"

struct p11_store {
    struct p11_token *tok;
    char asset[PROTO_ASSET_ID_MAX + 1];
};

/* p11/'s log lines go to the device logger; its levels are common.h's, which are ours. */
static void store_log(int level, const char *msg, void *ctx)
{
    dev_log(level, "%s", msg);
}

static int label_of(const struct p11_store *ps, const char *name, char *buf, size_t size)
{
    if (mqpki_path(buf, size, "mqpki-%s-%s", ps->asset, name) != MQPKI_OK)
        return dev_fail(MQPKI_DEVICE_ERR_INVALID, "key name too long");
    return MQPKI_DEVICE_OK;
}

static int p11_store_open(const char *dir, const struct dev_store_args *args, void **state)
{
    struct p11_store *ps = calloc(1, sizeof(*ps));
    struct p11_config cfg = {0};
    char pin[P11_PIN_MAX], path[DEV_PATH_MAX], tokendir[DEV_PATH_MAX], good[DEV_PATH_MAX];
    int rc = MQPKI_DEVICE_OK, hrc;

    *state = NULL;
    memset(pin, 0, sizeof(pin));
    if (ps == NULL) {
        rc = dev_fail(MQPKI_DEVICE_ERR_NOMEM, "out of memory");
        goto out;
    }
    if (args->asset == NULL || strlen(args->asset) > PROTO_ASSET_ID_MAX) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "pkcs11 store needs the asset id");
        goto out;
    }
    strcpy(ps->asset, args->asset);
    if (mqpki_path(path, sizeof(path), "%s/pin", dir) != MQPKI_OK ||
        mqpki_path(good, sizeof(good), "%s/%s", dir, GOOD_DIR) != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_INVALID, "%s: path too long", dir);
        goto out;
    }
    rc = dev_secret_read(PIN_ENV, path, pin, sizeof(pin));
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    cfg.module = args->param;
    cfg.token_label = args->token_label;
    cfg.pin = pin;
    cfg.log_fn = store_log;
    if (p11_softhsm_module(args->param)) {
        /* Without a readable configuration SoftHSM itself will say what is wrong. */
        if (p11_softhsm_tokendir(NULL, tokendir, sizeof(tokendir)) == MQPKI_OK) {
            cfg.softhsm_tokendir = tokendir;
            cfg.softhsm_gooddir = good;
        } else {
            dev_log(DEV_LOG_WARN, "SoftHSM token directory unknown, not guarded: %s",
                    mqpki_err_detail(MQPKI_ERR_NOT_FOUND));
        }
    }
    hrc = p11_open(&cfg, &ps->tok);
    if (hrc == MQPKI_ERR_AUTH) {
        rc = dev_fail(MQPKI_DEVICE_ERR_STORE_LOCKED, "token '%s': PIN refused (%s or %s)",
                      args->token_label, PIN_ENV, path);
    } else if (hrc != MQPKI_OK) {
        rc = dev_fail(MQPKI_DEVICE_ERR_HSM, "PKCS#11: %s", mqpki_err_detail(hrc));
    }
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    *state = ps;
    ps = NULL;
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    free(ps);
    return rc;
}

static int p11_store_load(void *state, const char *name, EVP_PKEY **out)
{
    struct p11_store *ps = state;
    char label[128];
    int rc, hrc;

    *out = NULL;
    rc = label_of(ps, name, label, sizeof(label));
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    hrc = p11_key_load(ps->tok, label, out);
    if (hrc == MQPKI_ERR_NOT_FOUND)
        rc = dev_fail(MQPKI_DEVICE_ERR_KEY_MISSING, "token key '%s' missing", label);
    else if (hrc != MQPKI_OK)
        rc = dev_fail(MQPKI_DEVICE_ERR_HSM, "token key '%s': %s", label, mqpki_err_detail(hrc));
out:
    return rc;
}

static int p11_store_generate(void *state, const char *name, EVP_PKEY **out)
{
    struct p11_store *ps = state;
    char label[128];
    int rc, hrc;

    *out = NULL;
    rc = label_of(ps, name, label, sizeof(label));
    if (rc != MQPKI_DEVICE_OK)
        goto out;
    /*
     * Objects left under this name by an interrupted attempt were never certified for a
     * committed identity and never left the token; a crash may also have left only one half of
     * the pair. Destroy them and start afresh.
     */
    hrc = p11_key_destroy(ps->tok, label);
    if (hrc == MQPKI_OK)
        dev_log(DEV_LOG_INFO, "token key '%s': leftover of an unfinished attempt destroyed", label);
    else if (hrc != MQPKI_ERR_NOT_FOUND)
        dev_log(DEV_LOG_WARN, "token key '%s': leftover not destroyed: %s", label,
                mqpki_err_detail(hrc));
    hrc = p11_key_generate(ps->tok, label, P11_KEY_EC_P256);
    if (hrc != MQPKI_OK && hrc != MQPKI_ERR_EXISTS) {
        rc = dev_fail(MQPKI_DEVICE_ERR_HSM, "token key generation '%s': %s", label,
                      mqpki_err_detail(hrc));
        goto out;
    }
    rc = p11_store_load(state, name, out);
out:
    return rc;
}

static void p11_store_remove(void *state, const char *name)
{
    struct p11_store *ps = state;
    char label[128];
    int hrc;

    if (label_of(ps, name, label, sizeof(label)) != MQPKI_DEVICE_OK)
        return;
    hrc = p11_key_destroy(ps->tok, label);
    if (hrc == MQPKI_OK)
        dev_log(DEV_LOG_DEBUG, "superseded token key '%s' destroyed", label);
    else if (hrc != MQPKI_ERR_NOT_FOUND)
        dev_log(DEV_LOG_WARN, "superseded token key '%s' not destroyed: %s", label,
                mqpki_err_detail(hrc));
}

static void p11_store_close(void *state)
{
    struct p11_store *ps = state;

    if (ps == NULL)
        return;
    p11_close(ps->tok);
    free(ps);
}

const struct mqpki_keystore_ops dev_store_pkcs11 = {
    .kind = "pkcs11",
    .open = p11_store_open,
    .generate = p11_store_generate,
    .load = p11_store_load,
    .remove = p11_store_remove,
    .close = p11_store_close,
};
