/*
 * hsm/module.c: loading PKCS#11 modules, finding tokens by label, logging in, initializing
 * tokens, the thread-safe session pool, and the embedded SoftHSM2 setup.
 *
 * A module is loaded once per path for the whole process and reference counted: PKCS#11 allows
 * one C_Initialize per process, so two handles (or hsm_token_init followed by hsm_open) must
 * share it, and the last one out calls C_Finalize so that a later open (perhaps with another
 * SOFTHSM2_CONF) starts afresh.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "common.h"
#include "hsm_int.h"

#define LABEL_LEN 32 /* CK_TOKEN_INFO.label: blank padded, not NUL terminated */
#define MAX_SLOTS 1024

struct hsm_module {
    char *path;
    void *dl;
    CK_FUNCTION_LIST_PTR p11;
    int refs;
    int finalize;      /* we called C_Initialize, so we call C_Finalize */
    struct hsm *peers; /* open handles on this module */
    struct hsm_module *next;
};

/* Guards the module list, every module's refs and its peers list. */
static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hsm_module *modules;

const char *hsm_ckr_name(CK_RV rv)
{
    static _Thread_local char buf[32];

    /* clang-format off */
    switch (rv) {
#define N(x) case x: return #x;
        N(CKR_OK)
        N(CKR_HOST_MEMORY)
        N(CKR_SLOT_ID_INVALID)
        N(CKR_GENERAL_ERROR)
        N(CKR_FUNCTION_FAILED)
        N(CKR_ARGUMENTS_BAD)
        N(CKR_ATTRIBUTE_SENSITIVE)
        N(CKR_ATTRIBUTE_TYPE_INVALID)
        N(CKR_ATTRIBUTE_VALUE_INVALID)
        N(CKR_DATA_INVALID)
        N(CKR_DATA_LEN_RANGE)
        N(CKR_DEVICE_ERROR)
        N(CKR_DEVICE_MEMORY)
        N(CKR_DEVICE_REMOVED)
        N(CKR_FUNCTION_NOT_SUPPORTED)
        N(CKR_KEY_HANDLE_INVALID)
        N(CKR_KEY_TYPE_INCONSISTENT)
        N(CKR_KEY_FUNCTION_NOT_PERMITTED)
        N(CKR_MECHANISM_INVALID)
        N(CKR_MECHANISM_PARAM_INVALID)
        N(CKR_OBJECT_HANDLE_INVALID)
        N(CKR_OPERATION_ACTIVE)
        N(CKR_OPERATION_NOT_INITIALIZED)
        N(CKR_PIN_INCORRECT)
        N(CKR_PIN_INVALID)
        N(CKR_PIN_LEN_RANGE)
        N(CKR_PIN_EXPIRED)
        N(CKR_PIN_LOCKED)
        N(CKR_SESSION_CLOSED)
        N(CKR_SESSION_COUNT)
        N(CKR_SESSION_HANDLE_INVALID)
        N(CKR_SESSION_READ_ONLY)
        N(CKR_SESSION_EXISTS)
        N(CKR_SESSION_READ_WRITE_SO_EXISTS)
        N(CKR_TEMPLATE_INCOMPLETE)
        N(CKR_TEMPLATE_INCONSISTENT)
        N(CKR_TOKEN_NOT_PRESENT)
        N(CKR_TOKEN_NOT_RECOGNIZED)
        N(CKR_TOKEN_WRITE_PROTECTED)
        N(CKR_USER_ALREADY_LOGGED_IN)
        N(CKR_USER_NOT_LOGGED_IN)
        N(CKR_USER_PIN_NOT_INITIALIZED)
        N(CKR_USER_TYPE_INVALID)
        N(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
        N(CKR_BUFFER_TOO_SMALL)
        N(CKR_CRYPTOKI_NOT_INITIALIZED)
        N(CKR_CRYPTOKI_ALREADY_INITIALIZED)
#undef N
    default:
        snprintf(buf, sizeof(buf), "CKR_0x%lx", (unsigned long)rv);
        return buf;
    }
    /* clang-format on */
}

static void module_free(struct hsm_module *m)
{
    if (m == NULL)
        return;
    if (m->dl != NULL)
        dlclose(m->dl);
    free(m->path);
    free(m);
}

/* Loads (or shares) the module at path and makes sure it is initialized. */
static int module_acquire(const char *path, struct hsm_module **out)
{
    struct hsm_module *m;
    CK_C_GetFunctionList get_list;
    CK_C_INITIALIZE_ARGS args;
    CK_RV rv;
    int rc = MQPKI_OK, created = 0;

    *out = NULL;
    pthread_mutex_lock(&modules_lock);
    for (m = modules; m != NULL; m = m->next)
        if (strcmp(m->path, path) == 0)
            break;
    if (m == NULL) {
        created = 1;
        m = calloc(1, sizeof(*m));
        if (m == NULL || (m->path = strdup(path)) == NULL) {
            rc = mqpki_fail(MQPKI_ERR_NOMEM, "PKCS#11 module %s: out of memory", path);
            goto out;
        }
        m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (m->dl == NULL) {
            /* dlerror() may be long and say more than a user needs; it goes to the log. */
            mqpki_log(MQPKI_LOG_DEBUG, "dlopen %s: %s", path, dlerror());
            rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "PKCS#11 module %s: cannot load", path);
            goto out;
        }
        *(void **)&get_list = dlsym(m->dl, "C_GetFunctionList");
        if (get_list == NULL) {
            rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: no C_GetFunctionList", path);
            goto out;
        }
        rv = get_list(&m->p11);
        if (rv != CKR_OK || m->p11 == NULL) {
            rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: C_GetFunctionList: %s", path,
                            hsm_ckr_name(rv));
            goto out;
        }
    }
    if (m->refs == 0) {
        /* The module may be called from many threads; let it use the OS's own locks. */
        memset(&args, 0, sizeof(args));
        args.flags = CKF_OS_LOCKING_OK;
        rv = m->p11->C_Initialize(&args);
        if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
            /* Someone else in this process (another library) owns the module's lifetime. */
            m->finalize = 0;
        } else if (rv != CKR_OK) {
            rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: C_Initialize: %s", path,
                            hsm_ckr_name(rv));
            goto out;
        } else {
            m->finalize = 1;
        }
    }
    m->refs++;
    if (created) {
        m->next = modules;
        modules = m;
    }
    *out = m;
out:
    if (rc != MQPKI_OK && created)
        module_free(m);
    pthread_mutex_unlock(&modules_lock);
    return rc;
}

/* Drops one reference; the last one finalizes and unloads the module. */
static void module_release(struct hsm_module *m)
{
    struct hsm_module **pp;

    if (m == NULL)
        return;
    pthread_mutex_lock(&modules_lock);
    if (--m->refs == 0) {
        if (m->finalize)
            m->p11->C_Finalize(NULL);
        for (pp = &modules; *pp != NULL; pp = &(*pp)->next) {
            if (*pp == m) {
                *pp = m->next;
                break;
            }
        }
        module_free(m);
    }
    pthread_mutex_unlock(&modules_lock);
}

/* Blank-pads label into the 32-byte form PKCS#11 uses for token labels. */
static int label_pad(const char *label, unsigned char out[LABEL_LEN])
{
    size_t n = strlen(label);

    if (n == 0 || n > LABEL_LEN)
        return mqpki_fail(MQPKI_ERR_INVALID, "token label '%s': must be 1 to %d bytes", label,
                          LABEL_LEN);
    memset(out, ' ', LABEL_LEN);
    memcpy(out, label, n);
    return MQPKI_OK;
}

/*
 * Finds the slot holding the initialized token labelled label. With free_slot set, also returns
 * the first slot with an uninitialized token in it (ULONG_MAX when there is none).
 */
static int token_find(struct hsm_module *m, const char *label, CK_SLOT_ID *slot,
                      CK_SLOT_ID *free_slot)
{
    unsigned char want[LABEL_LEN];
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0, i;
    CK_TOKEN_INFO info;
    CK_RV rv;
    int rc, found = 0;

    if (free_slot != NULL)
        *free_slot = (CK_SLOT_ID)ULONG_MAX;
    rc = label_pad(label, want);
    if (rc != MQPKI_OK)
        goto out;
    rv = m->p11->C_GetSlotList(CK_TRUE, NULL, &n);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetSlotList: %s", hsm_ckr_name(rv));
        goto out;
    }
    if (n > MAX_SLOTS)
        n = MAX_SLOTS;
    slots = calloc(n + 1, sizeof(*slots));
    if (slots == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "PKCS#11 slot list: out of memory");
        goto out;
    }
    rv = m->p11->C_GetSlotList(CK_TRUE, slots, &n);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetSlotList: %s", hsm_ckr_name(rv));
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (m->p11->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        if (!(info.flags & CKF_TOKEN_INITIALIZED)) {
            if (free_slot != NULL && *free_slot == (CK_SLOT_ID)ULONG_MAX)
                *free_slot = slots[i];
            continue;
        }
        if (!found && memcmp(info.label, want, LABEL_LEN) == 0) {
            *slot = slots[i];
            found = 1;
        }
    }
    if (!found)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "PKCS#11 module %s: no token labelled '%s'", m->path,
                        label);
out:
    free(slots);
    return rc;
}

/* Maps a C_Login refusal to our error, never naming the PIN. */
static int login_error(CK_RV rv)
{
    switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_INVALID:
    case CKR_PIN_LEN_RANGE: return mqpki_fail(MQPKI_ERR_AUTH, "HSM login refused: wrong PIN");
    case CKR_PIN_LOCKED: return mqpki_fail(MQPKI_ERR_AUTH, "HSM login refused: PIN locked");
    case CKR_PIN_EXPIRED: return mqpki_fail(MQPKI_ERR_AUTH, "HSM login refused: PIN expired");
    default: return mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_Login: %s", hsm_ckr_name(rv));
    }
}

/*
 * Returns 1 when another open handle of ours on the same token holds the same PIN, 0 when one
 * holds a different PIN, -1 when there is no other handle. Called with modules_lock held.
 */
static int peer_pin_matches(struct hsm *hsm)
{
    size_t n = strlen(hsm->pin);

    for (struct hsm *p = hsm->mod->peers; p != NULL; p = p->next_peer) {
        if (p == hsm || p->slot != hsm->slot || !p->logged_in)
            continue;
        return strlen(p->pin) == n && CRYPTO_memcmp(p->pin, hsm->pin, n) == 0;
    }
    return -1;
}

/* First login of a handle, on its login session. */
static int login_first(struct hsm *hsm)
{
    CK_RV rv;
    int rc = MQPKI_OK, match;

    rv = hsm->p11->C_Login(hsm->login_session, CKU_USER, (CK_UTF8CHAR_PTR)hsm->pin,
                           (CK_ULONG)strlen(hsm->pin));
    if (rv == CKR_USER_ALREADY_LOGGED_IN) {
        /*
         * Login state is per application: another handle of ours is already logged in, and the
         * token did not look at this PIN. Check it against the peer's, so that a second open
         * with a wrong PIN is still refused.
         */
        pthread_mutex_lock(&modules_lock);
        match = peer_pin_matches(hsm);
        pthread_mutex_unlock(&modules_lock);
        if (match == 1) {
            rv = CKR_OK;
        } else if (match == 0) {
            rv = CKR_PIN_INCORRECT;
        } else {
            /* Logged in by someone we do not know of: log in again to have the PIN checked. */
            (void)hsm->p11->C_Logout(hsm->login_session);
            rv = hsm->p11->C_Login(hsm->login_session, CKU_USER, (CK_UTF8CHAR_PTR)hsm->pin,
                                   (CK_ULONG)strlen(hsm->pin));
        }
    }
    if (rv != CKR_OK) {
        rc = login_error(rv);
        goto out;
    }
    hsm->logged_in = 1;
out:
    return rc;
}

/*
 * After a sign found its session or the login gone (the module closed sessions, a token was
 * reset): drops the pooled sessions the token no longer knows, and logs in again on a fresh
 * login session if the application was logged out, so that the one retry can succeed.
 */
static int recover(struct hsm *hsm)
{
    CK_SESSION_INFO info;
    CK_RV rv;
    size_t i, kept = 0;
    int rc = MQPKI_OK;

    pthread_mutex_lock(&hsm->lock);
    for (i = 0; i < hsm->nfree; i++) {
        if (hsm->p11->C_GetSessionInfo(hsm->free_sessions[i], &info) == CKR_OK)
            hsm->free_sessions[kept++] = hsm->free_sessions[i];
        else
            (void)hsm->p11->C_CloseSession(hsm->free_sessions[i]);
    }
    hsm->nfree = kept;
    rv = hsm->p11->C_GetSessionInfo(hsm->login_session, &info);
    if (rv != CKR_OK) {
        rv = hsm->p11->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                     &hsm->login_session);
        if (rv != CKR_OK) {
            hsm->login_session = CK_INVALID_HANDLE;
            rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", hsm_ckr_name(rv));
            goto out;
        }
        info.state = CKS_RW_PUBLIC_SESSION;
    }
    if (info.state != CKS_RW_USER_FUNCTIONS && info.state != CKS_RO_USER_FUNCTIONS) {
        rv = hsm->p11->C_Login(hsm->login_session, CKU_USER, (CK_UTF8CHAR_PTR)hsm->pin,
                               (CK_ULONG)strlen(hsm->pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
            rc = login_error(rv);
            goto out;
        }
        mqpki_log(MQPKI_LOG_WARN, "HSM token '%s': logged in again", hsm->label);
    }
out:
    pthread_mutex_unlock(&hsm->lock);
    return rc;
}

int hsm_session_take(struct hsm *hsm, CK_SESSION_HANDLE *out)
{
    CK_RV rv;
    int rc = MQPKI_OK;

    pthread_mutex_lock(&hsm->lock);
    if (hsm->nfree > 0) {
        *out = hsm->free_sessions[--hsm->nfree];
        pthread_mutex_unlock(&hsm->lock);
        goto out;
    }
    pthread_mutex_unlock(&hsm->lock);
    /* Opened outside the lock: other threads keep taking idle sessions meanwhile. */
    rv = hsm->p11->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, out);
    if (rv != CKR_OK)
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", hsm_ckr_name(rv));
out:
    return rc;
}

void hsm_session_give(struct hsm *hsm, CK_SESSION_HANDLE s)
{
    CK_SESSION_HANDLE *grown;
    size_t cap;

    pthread_mutex_lock(&hsm->lock);
    if (hsm->nfree == hsm->cap) {
        cap = hsm->cap == 0 ? 8 : hsm->cap * 2;
        grown = realloc(hsm->free_sessions, cap * sizeof(*grown));
        if (grown == NULL) {
            /* Cannot keep it: close it rather than leak it. */
            pthread_mutex_unlock(&hsm->lock);
            (void)hsm->p11->C_CloseSession(s);
            return;
        }
        hsm->free_sessions = grown;
        hsm->cap = cap;
    }
    hsm->free_sessions[hsm->nfree++] = s;
    pthread_mutex_unlock(&hsm->lock);
}

static int session_lost(CK_RV rv)
{
    return rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED ||
           rv == CKR_USER_NOT_LOGGED_IN;
}

static int handle_stale(CK_RV rv)
{
    return rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID;
}

/* Finds key's private object again on session s (after a re-login) and records its handle. */
static int key_refind(struct hsm_key_ref *key, CK_SESSION_HANDLE s)
{
    struct hsm *hsm = key->hsm;
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE t[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_LABEL, key->label, (CK_ULONG)strlen(key->label)},
        {CKA_ID, key->id, (CK_ULONG)key->idlen},
    };
    CK_OBJECT_HANDLE obj;
    CK_ULONG n = 0;
    CK_RV rv;
    int rc = MQPKI_OK;

    rv = hsm->p11->C_FindObjectsInit(s, t, key->idlen > 0 ? 3 : 2);
    if (rv == CKR_OK) {
        rv = hsm->p11->C_FindObjects(s, &obj, 1, &n);
        (void)hsm->p11->C_FindObjectsFinal(s);
    }
    if (rv != CKR_OK)
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_FindObjects: %s", hsm_ckr_name(rv));
    else if (n == 0)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "HSM key '%s': gone from the token", key->label);
    else
        atomic_store(&key->obj, (unsigned long)obj);
    return rc;
}

int hsm_sign(struct hsm_key_ref *key, CK_MECHANISM_TYPE mech, const unsigned char *in, size_t inlen,
             unsigned char *out, size_t *outlen)
{
    struct hsm *hsm = key->hsm;
    CK_MECHANISM m = {mech, NULL, 0};
    CK_SESSION_HANDLE s;
    CK_ULONG len;
    CK_RV rv = CKR_OK;
    int rc = MQPKI_OK, refind = 0;

    for (int attempt = 0; attempt < 2; attempt++) {
        rc = hsm_session_take(hsm, &s);
        if (rc != MQPKI_OK)
            goto out;
        if (refind) {
            rc = key_refind(key, s);
            if (rc != MQPKI_OK) {
                hsm_session_give(hsm, s);
                goto out;
            }
        }
        len = (CK_ULONG)*outlen;
        rv = hsm->p11->C_SignInit(s, &m, (CK_OBJECT_HANDLE)atomic_load(&key->obj));
        if (rv == CKR_OK)
            rv = hsm->p11->C_Sign(s, (CK_BYTE_PTR)in, (CK_ULONG)inlen, out, &len);
        if (rv == CKR_OK) {
            hsm_session_give(hsm, s);
            *outlen = (size_t)len;
            goto out;
        }
        /*
         * Never pool a session after a failure: an operation might still be active on it.
         * Closing it also drops a session the token has already forgotten.
         */
        (void)hsm->p11->C_CloseSession(s);
        if (attempt > 0 || !(session_lost(rv) || handle_stale(rv)))
            break;
        mqpki_log(MQPKI_LOG_WARN, "HSM key '%s': C_Sign: %s; retrying", key->label,
                  hsm_ckr_name(rv));
        if (session_lost(rv)) {
            rc = recover(hsm);
            if (rc != MQPKI_OK)
                goto out;
        }
        /* After a logout the token may have renumbered its private objects. */
        refind = 1;
    }
    rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_Sign: %s", hsm_ckr_name(rv));
out:
    return rc;
}

int hsm_open(const struct hsm_config *cfg, struct hsm **out)
{
    struct hsm *hsm = NULL;
    CK_RV rv;
    int rc = MQPKI_OK;
    size_t n;

    if (out != NULL)
        *out = NULL;
    if (cfg == NULL || cfg->module == NULL || cfg->token_label == NULL || cfg->pin == NULL ||
        out == NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "hsm_open: missing module, token label or PIN");
        goto out;
    }
    n = strlen(cfg->pin);
    if (n == 0 || n >= HSM_PIN_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "HSM PIN: must be 1 to %d characters", HSM_PIN_MAX - 1);
        goto out;
    }
    if (strlen(cfg->token_label) > LABEL_LEN) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "token label '%s': longer than %d bytes",
                        cfg->token_label, LABEL_LEN);
        goto out;
    }
    hsm = calloc(1, sizeof(*hsm));
    if (hsm == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "hsm_open: out of memory");
        goto out;
    }
    pthread_mutex_init(&hsm->lock, NULL);
    hsm->login_session = CK_INVALID_HANDLE;
    memcpy(hsm->pin, cfg->pin, n + 1);
    strcpy(hsm->label, cfg->token_label);
    rc = module_acquire(cfg->module, &hsm->mod);
    if (rc != MQPKI_OK)
        goto out;
    hsm->p11 = hsm->mod->p11;
    rc = token_find(hsm->mod, cfg->token_label, &hsm->slot, NULL);
    if (rc != MQPKI_OK)
        goto out;
    rv = hsm->p11->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                 &hsm->login_session);
    if (rv != CKR_OK) {
        hsm->login_session = CK_INVALID_HANDLE;
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", hsm_ckr_name(rv));
        goto out;
    }
    rc = login_first(hsm);
    if (rc != MQPKI_OK)
        goto out;
    pthread_mutex_lock(&modules_lock);
    hsm->next_peer = hsm->mod->peers;
    hsm->mod->peers = hsm;
    pthread_mutex_unlock(&modules_lock);
    *out = hsm;
    hsm = NULL;
out:
    hsm_close(hsm);
    return rc;
}

void hsm_close(struct hsm *hsm)
{
    struct hsm **pp;
    int shared = 0;

    if (hsm == NULL)
        return;
    if (hsm->mod != NULL) {
        pthread_mutex_lock(&modules_lock);
        for (pp = &hsm->mod->peers; *pp != NULL; pp = &(*pp)->next_peer) {
            if (*pp == hsm) {
                *pp = hsm->next_peer;
                break;
            }
        }
        for (struct hsm *p = hsm->mod->peers; p != NULL; p = p->next_peer)
            if (p->slot == hsm->slot && p->logged_in)
                shared = 1;
        pthread_mutex_unlock(&modules_lock);
        for (size_t i = 0; i < hsm->nfree; i++)
            (void)hsm->p11->C_CloseSession(hsm->free_sessions[i]);
        if (hsm->login_session != CK_INVALID_HANDLE) {
            /* The login is shared by the application: leave it to a handle still using it. */
            if (hsm->logged_in && !shared)
                (void)hsm->p11->C_Logout(hsm->login_session);
            (void)hsm->p11->C_CloseSession(hsm->login_session);
        }
        module_release(hsm->mod);
    }
    free(hsm->free_sessions);
    OPENSSL_cleanse(hsm->pin, sizeof(hsm->pin));
    pthread_mutex_destroy(&hsm->lock);
    free(hsm);
}

int hsm_token_init(const char *module, const char *label, const char *so_pin, const char *user_pin)
{
    struct hsm_module *m = NULL;
    unsigned char padded[LABEL_LEN];
    CK_SLOT_ID slot = 0, free_slot;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv;
    int rc, so_logged_in = 0;

    if (module == NULL || label == NULL || so_pin == NULL || user_pin == NULL ||
        so_pin[0] == '\0' || user_pin[0] == '\0' || strlen(so_pin) >= HSM_PIN_MAX ||
        strlen(user_pin) >= HSM_PIN_MAX) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "hsm_token_init: missing module, label or PIN");
        goto out;
    }
    rc = label_pad(label, padded);
    if (rc != MQPKI_OK)
        goto out;
    rc = module_acquire(module, &m);
    if (rc != MQPKI_OK)
        goto out;
    rc = token_find(m, label, &slot, &free_slot);
    if (rc == MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "PKCS#11 module %s: a token labelled '%s' exists", module,
                        label);
        goto out;
    }
    if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    if (free_slot == (CK_SLOT_ID)ULONG_MAX) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: no slot with an uninitialized token",
                        module);
        goto out;
    }
    rv = m->p11->C_InitToken(free_slot, (CK_UTF8CHAR_PTR)so_pin, (CK_ULONG)strlen(so_pin), padded);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_InitToken: %s", hsm_ckr_name(rv));
        goto out;
    }
    /* SoftHSM moves an initialized token to a new slot id: look it up again by label. */
    rc = token_find(m, label, &slot, NULL);
    if (rc != MQPKI_OK)
        goto out;
    rv = m->p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        s = CK_INVALID_HANDLE;
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", hsm_ckr_name(rv));
        goto out;
    }
    rv = m->p11->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)so_pin, (CK_ULONG)strlen(so_pin));
    if (rv != CKR_OK) {
        rc = login_error(rv);
        goto out;
    }
    so_logged_in = 1;
    rv = m->p11->C_InitPIN(s, (CK_UTF8CHAR_PTR)user_pin, (CK_ULONG)strlen(user_pin));
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_InitPIN: %s", hsm_ckr_name(rv));
        goto out;
    }
    mqpki_log(MQPKI_LOG_INFO, "HSM token '%s' initialized", label);
out:
    if (so_logged_in)
        (void)m->p11->C_Logout(s);
    if (s != CK_INVALID_HANDLE)
        (void)m->p11->C_CloseSession(s);
    module_release(m);
    return rc;
}

int hsm_softhsm_prepare(const char *dir)
{
    char abs[PATH_MAX], tokens[PATH_MAX], conf[PATH_MAX], text[2 * PATH_MAX];
    struct stat st;
    int rc, n;

    if (dir == NULL || dir[0] == '\0') {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "SoftHSM directory: empty path");
        goto out;
    }
    rc = mqpki_mkdir_p(dir, 0700);
    if (rc != MQPKI_OK)
        goto out;
    /* SoftHSM resolves a relative tokendir against its own working directory: pin it down. */
    if (realpath(dir, abs) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
        goto out;
    }
    if (mqpki_path(tokens, sizeof(tokens), "%s/tokens", abs) != MQPKI_OK ||
        mqpki_path(conf, sizeof(conf), "%s/softhsm2.conf", abs) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", abs);
        goto out;
    }
    rc = mqpki_mkdir_p(tokens, 0700);
    if (rc != MQPKI_OK)
        goto out;
    if (stat(conf, &st) != 0) {
        if (errno != ENOENT) {
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", conf, strerror(errno));
            goto out;
        }
        n = snprintf(text, sizeof(text),
                     "# SoftHSM2 configuration written by mqpki for the embedded token\n"
                     "directories.tokendir = %s\n"
                     "objectstore.backend = file\n"
                     "log.level = ERROR\n"
                     "slots.removable = false\n",
                     tokens);
        if (n < 0 || (size_t)n >= sizeof(text)) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", conf);
            goto out;
        }
        rc = mqpki_file_write_atomic(conf, text, (size_t)n, 0600);
        if (rc != MQPKI_OK)
            goto out;
    }
    if (setenv("SOFTHSM2_CONF", conf, 1) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "setenv SOFTHSM2_CONF: %s", strerror(errno));
        goto out;
    }
out:
    return rc;
}
