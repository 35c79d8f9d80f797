/*
 * p11 internals shared by module.c (module, login, session pool), key.c (token key pairs and
 * their signer), bridge.c (the EVP_PKEY signer bridge) and softhsm.c (the file-store guard).
 * Not for use outside p11/ (tests excepted).
 */
#ifndef MQPKI_P11_INT_H
#define MQPKI_P11_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include <p11-kit/pkcs11.h>

#include "p11.h"

_Static_assert(P11_MECH_ECDSA == CKM_ECDSA, "P11_MECH_ECDSA must be CKM_ECDSA");
_Static_assert(P11_MECH_RSA_PKCS == CKM_RSA_PKCS, "P11_MECH_RSA_PKCS must be CKM_RSA_PKCS");

/* One loaded PKCS#11 module, shared process-wide by every handle opened on the same path. */
struct p11_module;

struct p11_token {
    struct p11_module *mod;
    CK_FUNCTION_LIST_PTR p11; /* the module's function list */
    CK_SLOT_ID slot;
    char label[P11_TOKEN_LABEL_MAX + 1];
    /*
     * Kept so that a sign that finds the token logged out (a module restart, a session closed
     * by the module) can log in again; wiped in p11_close.
     */
    char pin[P11_PIN_MAX];
    p11_log_fn log_fn;
    void *log_ctx;
    char *guard_tokendir, *guard_gooddir; /* both NULL when unguarded */
    pthread_mutex_t lock;                 /* guards everything below */
    /*
     * The session that carries the login: PKCS#11 logs the application out when its last
     * session on the token closes, so this one stays open for the life of the handle.
     */
    CK_SESSION_HANDLE login_session;
    int logged_in;
    CK_SESSION_HANDLE *free_sessions; /* idle pooled sessions */
    size_t nfree, cap;
    struct p11_token *next_peer; /* other handles on the same module (see module.c) */
};

/* Formats one log line and hands it to fn (NULL: mqpki_log). */
void p11_logf(p11_log_fn fn, void *ctx, int level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define P11_LOG(tok, level, ...) p11_logf((tok)->log_fn, (tok)->log_ctx, (level), __VA_ARGS__)

/* Takes an idle session from the pool, opening a new one when none is idle. */
int p11_session_take(struct p11_token *tok, CK_SESSION_HANDLE *out);

/* Returns a session to the pool. */
void p11_session_give(struct p11_token *tok, CK_SESSION_HANDLE s);

/*
 * After a call found its session or the login gone: drops pooled sessions the token no longer
 * knows, and logs in again on a fresh login session if the application was logged out.
 */
int p11_recover(struct p11_token *tok);

/* Saves the guarded token's files as good copies (no-op when unguarded); failures are logged. */
void p11_guard_save(struct p11_token *tok, const char *why);

#define P11_KEY_ID_MAX 64

/*
 * A token private key as its signer knows it. Object handles of private objects do not survive
 * a logout (SoftHSM hands out new ones after the next login), so the label and CKA_ID are kept to
 * find the key again; obj is atomic because signing threads may refresh it concurrently.
 */
struct p11_key_ref {
    struct p11_token *tok;
    atomic_ulong obj; /* CK_OBJECT_HANDLE */
    char label[P11_KEY_LABEL_MAX + 1];
    unsigned char id[P11_KEY_ID_MAX];
    size_t idlen;
};

/*
 * Signs in with key and mechanism mech on a pooled session. A lost session, a lost login or a
 * stale object handle is repaired and the sign retried once. *outlen holds the size of out on
 * entry and the length of the signature on return.
 */
int p11_sign(struct p11_key_ref *key, CK_MECHANISM_TYPE mech, const unsigned char *in, size_t inlen,
             unsigned char *out, size_t *outlen);

#ifdef UNIT_TESTING
/*
 * Test-only: reads back CKA_SENSITIVE and CKA_EXTRACTABLE of the private key under label, and
 * whether reading its CKA_VALUE is refused (1) as it must be.
 */
int p11_test_key_flags(struct p11_token *tok, const char *label, int *sensitive, int *extractable,
                       int *value_refused);

/* Test-only: NULL when buf is a structurally valid SoftHSM file named name, else why not. */
const char *p11_softhsm_damage(const char *name, const unsigned char *buf, size_t len, char *why,
                               size_t size);
#endif

#endif
