/*
 * p11/module.c: loading PKCS#11 modules, finding tokens by label, logging in, initializing
 * tokens, the thread-safe session pool, and the SoftHSM guard's hooks around them.
 *
 * A module is loaded once per path for the whole process and reference counted: PKCS#11 allows
 * one C_Initialize per process, so two handles (or p11_token_init followed by p11_open) must
 * share it, and the last one out calls C_Finalize so that a later open (perhaps with another
 * SOFTHSM2_CONF) starts afresh.
 *
 * The session pool lives here rather than in hsm/: the daemon signs from its HTTP worker threads
 * and the device library from its EST and MQTT threads, and both need the same pool.
 */
#include <dlfcn.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "common.h"
#include "p11_int.h"

#define LABEL_LEN P11_TOKEN_LABEL_MAX /* CK_TOKEN_INFO.label: blank padded, no NUL */
#define MAX_SLOTS 1024

struct p11_module {
    char *path;
    void *dl;
    CK_FUNCTION_LIST_PTR p11;
    int refs;
    int finalize;            /* we called C_Initialize, so we call C_Finalize */
    struct p11_token *peers; /* open handles on this module */
    struct p11_module *next;
};

/* Guards the module list, every module's refs and its peers list. */
static pthread_mutex_t modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct p11_module *modules;

const char *p11_ckr_name(unsigned long rv)
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

void p11_logf(p11_log_fn fn, void *ctx, int level, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (fn != NULL)
        fn(level, msg, ctx);
    else
        mqpki_log((enum mqpki_log_level)level, "%s", msg);
}

static int guarded(const struct p11_config *cfg)
{
    return cfg->softhsm_tokendir != NULL && cfg->softhsm_gooddir != NULL;
}

static void guard_of(const struct p11_config *cfg, struct p11_softhsm_guard *g)
{
    g->tokendir = cfg->softhsm_tokendir;
    g->gooddir = cfg->softhsm_gooddir;
    g->log_fn = cfg->log_fn;
    g->log_ctx = cfg->log_ctx;
}

static void module_free(struct p11_module *m)
{
    if (m == NULL)
        return;
    if (m->dl != NULL)
        dlclose(m->dl);
    free(m->path);
    free(m);
}

/*
 * Loads (or shares) cfg->module and makes sure it is initialized. The process's first user of a
 * module runs the SoftHSM guard's check first: SoftHSM reads its token files in C_Initialize, and
 * once it has found one damaged it does not look again until it is initialized anew.
 */
static int module_acquire(const struct p11_config *cfg, struct p11_module **out)
{
    const char *path = cfg->module;
    struct p11_softhsm_guard g;
    struct p11_module *m;
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
            p11_logf(cfg->log_fn, cfg->log_ctx, MQPKI_LOG_DEBUG, "dlopen %s: %s", path, dlerror());
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
                            p11_ckr_name(rv));
            goto out;
        }
    }
    if (m->refs == 0) {
        if (guarded(cfg)) {
            /* A failed check is logged; C_Initialize below tells whether the token survived. */
            guard_of(cfg, &g);
            if (p11_softhsm_check(&g, NULL) != MQPKI_OK)
                p11_logf(cfg->log_fn, cfg->log_ctx, MQPKI_LOG_WARN, "SoftHSM guard: %s",
                         mqpki_err_detail(MQPKI_ERR_IO));
        }
        /* The module may be called from many threads; let it use the OS's own locks. */
        memset(&args, 0, sizeof(args));
        args.flags = CKF_OS_LOCKING_OK;
        rv = m->p11->C_Initialize(&args);
        if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
            /* Someone else in this process (another library) owns the module's lifetime. */
            m->finalize = 0;
        } else if (rv != CKR_OK) {
            rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: C_Initialize: %s", path,
                            p11_ckr_name(rv));
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
static void module_release(struct p11_module *m)
{
    struct p11_module **pp;

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

/* 1 when the caller holds the only reference to m (so releasing it finalizes the module). */
static int module_sole(struct p11_module *m)
{
    int sole;

    pthread_mutex_lock(&modules_lock);
    sole = m->refs == 1 && m->finalize;
    pthread_mutex_unlock(&modules_lock);
    return sole;
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
static int token_find(struct p11_module *m, const char *label, CK_SLOT_ID *slot,
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
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetSlotList: %s", p11_ckr_name(rv));
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
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_GetSlotList: %s", p11_ckr_name(rv));
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

/*
 * The guard's fallback, once: the module cannot be initialized (*m NULL) or does not show the
 * token (*m held by us alone). Restores the good copies (of the token labelled label, or of every
 * token) and, when that changed anything, loads the module afresh and looks again. Without a good
 * copy to restore, the original error (rc, its detail) stands.
 */
static int guard_fallback(const struct p11_config *cfg, int rc, struct p11_module **m,
                          CK_SLOT_ID *slot)
{
    struct p11_softhsm_guard g;
    char detail[512];
    unsigned restored = 0;

    if (!guarded(cfg) || (*m != NULL && !module_sole(*m)))
        return rc;
    snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
    guard_of(cfg, &g);
    if (p11_softhsm_restore(&g, *m != NULL ? cfg->token_label : NULL, &restored) != MQPKI_OK ||
        restored == 0) {
        mqpki_err_clear();
        return mqpki_fail(rc, "%s", detail);
    }
    p11_logf(cfg->log_fn, cfg->log_ctx, MQPKI_LOG_WARN,
             "SoftHSM guard: %s; restored %u file(s) from %s and retrying", detail, restored,
             cfg->softhsm_gooddir);
    module_release(*m);
    *m = NULL;
    rc = module_acquire(cfg, m);
    if (rc == MQPKI_OK && slot != NULL)
        rc = token_find(*m, cfg->token_label, slot, NULL);
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
    default: return mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_Login: %s", p11_ckr_name(rv));
    }
}

/*
 * Returns 1 when another open handle of ours on the same token holds the same PIN, 0 when one
 * holds a different PIN, -1 when there is no other handle. Called with modules_lock held.
 */
static int peer_pin_matches(struct p11_token *tok)
{
    size_t n = strlen(tok->pin);

    for (struct p11_token *p = tok->mod->peers; p != NULL; p = p->next_peer) {
        if (p == tok || p->slot != tok->slot || !p->logged_in)
            continue;
        return strlen(p->pin) == n && CRYPTO_memcmp(p->pin, tok->pin, n) == 0;
    }
    return -1;
}

/* The session a handle logs in on and keeps for its lifetime. */
static int open_login_session(struct p11_token *tok)
{
    CK_RV rv = tok->p11->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                       &tok->login_session);

    if (rv != CKR_OK) {
        tok->login_session = CK_INVALID_HANDLE;
        return mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", p11_ckr_name(rv));
    }
    return MQPKI_OK;
}

/* First login of a handle, on its login session. */
static int login_first(struct p11_token *tok)
{
    CK_RV rv;
    int rc = MQPKI_OK, match;

    rv = tok->p11->C_Login(tok->login_session, CKU_USER, (CK_UTF8CHAR_PTR)tok->pin,
                           (CK_ULONG)strlen(tok->pin));
    if (rv == CKR_USER_ALREADY_LOGGED_IN) {
        /*
         * Login state is per application: another handle of ours is already logged in, and the
         * token did not look at this PIN. Check it against the peer's, so that a second open
         * with a wrong PIN is still refused.
         */
        pthread_mutex_lock(&modules_lock);
        match = peer_pin_matches(tok);
        pthread_mutex_unlock(&modules_lock);
        if (match == 1) {
            rv = CKR_OK;
        } else if (match == 0) {
            rv = CKR_PIN_INCORRECT;
        } else {
            /* Logged in by someone we do not know of: log in again to have the PIN checked. */
            (void)tok->p11->C_Logout(tok->login_session);
            rv = tok->p11->C_Login(tok->login_session, CKU_USER, (CK_UTF8CHAR_PTR)tok->pin,
                                   (CK_ULONG)strlen(tok->pin));
        }
    }
    if (rv != CKR_OK) {
        rc = login_error(rv);
        goto out;
    }
    tok->logged_in = 1;
out:
    return rc;
}

int p11_recover(struct p11_token *tok)
{
    CK_SESSION_INFO info;
    CK_RV rv;
    size_t i, kept = 0;
    int rc = MQPKI_OK;

    pthread_mutex_lock(&tok->lock);
    for (i = 0; i < tok->nfree; i++) {
        if (tok->p11->C_GetSessionInfo(tok->free_sessions[i], &info) == CKR_OK)
            tok->free_sessions[kept++] = tok->free_sessions[i];
        else
            (void)tok->p11->C_CloseSession(tok->free_sessions[i]);
    }
    tok->nfree = kept;
    rv = tok->p11->C_GetSessionInfo(tok->login_session, &info);
    if (rv != CKR_OK) {
        if ((rc = open_login_session(tok)) != MQPKI_OK)
            goto out;
        info.state = CKS_RW_PUBLIC_SESSION;
    }
    if (info.state != CKS_RW_USER_FUNCTIONS && info.state != CKS_RO_USER_FUNCTIONS) {
        rv = tok->p11->C_Login(tok->login_session, CKU_USER, (CK_UTF8CHAR_PTR)tok->pin,
                               (CK_ULONG)strlen(tok->pin));
        if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
            rc = login_error(rv);
            goto out;
        }
        P11_LOG(tok, MQPKI_LOG_WARN, "PKCS#11 token '%s': logged in again", tok->label);
    }
out:
    pthread_mutex_unlock(&tok->lock);
    return rc;
}

int p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out)
{
    CK_RV rv;
    int rc = MQPKI_OK;

    pthread_mutex_lock(&tok->lock);
    if (tok->nfree > 0) {
        *out = tok->free_sessions[--tok->nfree];
        pthread_mutex_unlock(&tok->lock);
        goto out;
    }
    pthread_mutex_unlock(&tok->lock);
    /* Opened outside the lock: other threads keep taking idle sessions meanwhile. */
    rv = tok->p11->C_OpenSession(tok->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, out);
    if (rv != CKR_OK)
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", p11_ckr_name(rv));
out:
    return rc;
}

void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s)
{
    CK_SESSION_HANDLE *grown;
    size_t cap;

    pthread_mutex_lock(&tok->lock);
    if (tok->nfree == tok->cap) {
        cap = tok->cap == 0 ? 8 : tok->cap * 2;
        grown = realloc(tok->free_sessions, cap * sizeof(*grown));
        if (grown == NULL) {
            /* Cannot keep it: close it rather than leak it. */
            pthread_mutex_unlock(&tok->lock);
            (void)tok->p11->C_CloseSession(s);
            return;
        }
        tok->free_sessions = grown;
        tok->cap = cap;
    }
    tok->free_sessions[tok->nfree++] = s;
    pthread_mutex_unlock(&tok->lock);
}

void p11_guard_save(struct p11_token *tok, const char *why)
{
    struct p11_softhsm_guard g = {tok->guard_tokendir, tok->guard_gooddir, tok->log_fn,
                                  tok->log_ctx};
    unsigned saved = 0;

    if (tok->guard_tokendir == NULL)
        return;
    /* The token works either way; a good copy that could not be refreshed is worth a warning. */
    if (p11_softhsm_save(&g, &saved) != MQPKI_OK)
        P11_LOG(tok, MQPKI_LOG_WARN, "SoftHSM guard: good copy not refreshed after %s: %s", why,
                mqpki_err_detail(MQPKI_ERR_IO));
    else if (saved > 0)
        P11_LOG(tok, MQPKI_LOG_DEBUG, "SoftHSM guard: %u file(s) saved to %s after %s", saved,
                tok->guard_gooddir, why);
}

/* Checks the strings of cfg; label_needed for p11_open and p11_token_init alike. */
static int config_check(const struct p11_config *cfg, const char *what)
{
    size_t n;

    if (cfg == NULL || cfg->module == NULL || cfg->token_label == NULL || cfg->pin == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: missing module, token label or PIN", what);
    n = strlen(cfg->pin);
    if (n == 0 || n >= P11_PIN_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "HSM PIN: must be 1 to %d characters",
                          P11_PIN_MAX - 1);
    if (strlen(cfg->token_label) > LABEL_LEN)
        return mqpki_fail(MQPKI_ERR_INVALID, "token label '%s': longer than %d bytes",
                          cfg->token_label, LABEL_LEN);
    if ((cfg->softhsm_tokendir == NULL) != (cfg->softhsm_gooddir == NULL))
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: SoftHSM guard needs both directories", what);
    return MQPKI_OK;
}

int p11_open(const struct p11_config *cfg, struct p11_token **out)
{
    struct p11_token *tok = NULL;
    int rc;

    if (out != NULL)
        *out = NULL;
    rc = config_check(cfg, "p11_open");
    if (rc == MQPKI_OK && out == NULL)
        rc = mqpki_fail(MQPKI_ERR_INVALID, "p11_open: no handle to return");
    if (rc != MQPKI_OK)
        goto out;
    tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "p11_open: out of memory");
        goto out;
    }
    pthread_mutex_init(&tok->lock, NULL);
    tok->login_session = CK_INVALID_HANDLE;
    memcpy(tok->pin, cfg->pin, strlen(cfg->pin) + 1);
    strcpy(tok->label, cfg->token_label);
    tok->log_fn = cfg->log_fn;
    tok->log_ctx = cfg->log_ctx;
    if (guarded(cfg) && ((tok->guard_tokendir = strdup(cfg->softhsm_tokendir)) == NULL ||
                         (tok->guard_gooddir = strdup(cfg->softhsm_gooddir)) == NULL)) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "p11_open: out of memory");
        goto out;
    }
    rc = module_acquire(cfg, &tok->mod);
    if (rc == MQPKI_ERR_HSM)
        rc = guard_fallback(cfg, rc, &tok->mod, NULL);
    if (rc != MQPKI_OK)
        goto out;
    tok->p11 = tok->mod->p11;
    rc = token_find(tok->mod, cfg->token_label, &tok->slot, NULL);
    if (rc == MQPKI_ERR_NOT_FOUND) {
        rc = guard_fallback(cfg, rc, &tok->mod, &tok->slot);
        if (tok->mod != NULL)
            tok->p11 = tok->mod->p11;
    }
    if (rc != MQPKI_OK)
        goto out;
    if ((rc = open_login_session(tok)) != MQPKI_OK)
        goto out;
    rc = login_first(tok);
    if (rc != MQPKI_OK)
        goto out;
    pthread_mutex_lock(&modules_lock);
    tok->next_peer = tok->mod->peers;
    tok->mod->peers = tok;
    pthread_mutex_unlock(&modules_lock);
    /* SoftHSM has just rewritten token.object: a good moment to know the token works. */
    p11_guard_save(tok, "login");
    *out = tok;
    tok = NULL;
out:
    p11_close(tok);
    return rc;
}

void p11_close(struct p11_token *tok)
{
    struct p11_token **pp;
    int shared = 0;

    if (tok == NULL)
        return;
    if (tok->mod != NULL) {
        pthread_mutex_lock(&modules_lock);
        for (pp = &tok->mod->peers; *pp != NULL; pp = &(*pp)->next_peer) {
            if (*pp == tok) {
                *pp = tok->next_peer;
                break;
            }
        }
        for (struct p11_token *p = tok->mod->peers; p != NULL; p = p->next_peer)
            if (p->slot == tok->slot && p->logged_in)
                shared = 1;
        pthread_mutex_unlock(&modules_lock);
        for (size_t i = 0; i < tok->nfree; i++)
            (void)tok->p11->C_CloseSession(tok->free_sessions[i]);
        if (tok->login_session != CK_INVALID_HANDLE) {
            /* The login is shared by the application: leave it to a handle still using it. */
            if (tok->logged_in && !shared)
                (void)tok->p11->C_Logout(tok->login_session);
            (void)tok->p11->C_CloseSession(tok->login_session);
        }
        module_release(tok->mod);
    }
    free(tok->free_sessions);
    free(tok->guard_tokendir);
    free(tok->guard_gooddir);
    OPENSSL_cleanse(tok->pin, sizeof(tok->pin));
    pthread_mutex_destroy(&tok->lock);
    free(tok);
}

int p11_token_init(const struct p11_config *cfg, const char *so_pin)
{
    struct p11_module *m = NULL;
    unsigned char padded[LABEL_LEN];
    CK_SLOT_ID slot = 0, free_slot;
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    CK_RV rv;
    int rc, so_logged_in = 0;

    rc = config_check(cfg, "p11_token_init");
    if (rc == MQPKI_OK && (so_pin == NULL || so_pin[0] == '\0' || strlen(so_pin) >= P11_PIN_MAX))
        rc = mqpki_fail(MQPKI_ERR_INVALID, "p11_token_init: missing module, label or PIN");
    if (rc != MQPKI_OK)
        goto out;
    rc = label_pad(cfg->token_label, padded);
    if (rc != MQPKI_OK)
        goto out;
    rc = module_acquire(cfg, &m);
    if (rc != MQPKI_OK)
        goto out;
    rc = token_find(m, cfg->token_label, &slot, &free_slot);
    if (rc == MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "PKCS#11 module %s: a token labelled '%s' exists",
                        cfg->module, cfg->token_label);
        goto out;
    }
    if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    mqpki_err_clear(); /* the expected "not found" is not this call's outcome */
    if (free_slot == (CK_SLOT_ID)ULONG_MAX) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 module %s: no slot with an uninitialized token",
                        cfg->module);
        goto out;
    }
    rv = m->p11->C_InitToken(free_slot, (CK_UTF8CHAR_PTR)so_pin, (CK_ULONG)strlen(so_pin), padded);
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_InitToken: %s", p11_ckr_name(rv));
        goto out;
    }
    /* SoftHSM moves an initialized token to a new slot id: look it up again by label. */
    rc = token_find(m, cfg->token_label, &slot, NULL);
    if (rc != MQPKI_OK)
        goto out;
    rv = m->p11->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s);
    if (rv != CKR_OK) {
        s = CK_INVALID_HANDLE;
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_OpenSession: %s", p11_ckr_name(rv));
        goto out;
    }
    rv = m->p11->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)so_pin, (CK_ULONG)strlen(so_pin));
    if (rv != CKR_OK) {
        rc = login_error(rv);
        goto out;
    }
    so_logged_in = 1;
    rv = m->p11->C_InitPIN(s, (CK_UTF8CHAR_PTR)cfg->pin, (CK_ULONG)strlen(cfg->pin));
    if (rv != CKR_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "PKCS#11 C_InitPIN: %s", p11_ckr_name(rv));
        goto out;
    }
    p11_logf(cfg->log_fn, cfg->log_ctx, MQPKI_LOG_INFO, "PKCS#11 token '%s' initialized",
             cfg->token_label);
out:
    if (so_logged_in)
        (void)m->p11->C_Logout(s);
    if (s != CK_INVALID_HANDLE)
        (void)m->p11->C_CloseSession(s);
    if (rc == MQPKI_OK && guarded(cfg)) {
        struct p11_softhsm_guard g;

        guard_of(cfg, &g);
        if (p11_softhsm_save(&g, NULL) != MQPKI_OK)
            p11_logf(cfg->log_fn, cfg->log_ctx, MQPKI_LOG_WARN, "SoftHSM guard: %s",
                     mqpki_err_detail(MQPKI_ERR_IO));
    }
    module_release(m);
    return rc;
}
