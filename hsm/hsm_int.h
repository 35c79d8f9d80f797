/*
 * hsm internals shared by module.c (module, login, session pool) and key.c (key pairs and the
 * EVP_PKEY bridge). Not for use outside hsm/.
 */
#ifndef MQPKI_HSM_INT_H
#define MQPKI_HSM_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include <p11-kit/pkcs11.h>

#include "hsm.h"

/* One loaded PKCS#11 module, shared process-wide by every handle opened on the same path. */
struct hsm_module;

struct hsm {
    struct hsm_module *mod;
    CK_FUNCTION_LIST_PTR p11; /* the module's function list (mod->p11) */
    CK_SLOT_ID slot;
    char label[33];
    /*
     * Kept so that a sign that finds the token logged out (a module restart, a session closed
     * by the module) can log in again; wiped in hsm_close.
     */
    char pin[HSM_PIN_MAX];
    pthread_mutex_t lock; /* guards everything below */
    /*
     * The session that carries the login: PKCS#11 logs the application out when its last
     * session on the token closes, so this one stays open for the life of the handle.
     */
    CK_SESSION_HANDLE login_session;
    int logged_in;
    CK_SESSION_HANDLE *free_sessions; /* idle pooled sessions */
    size_t nfree, cap;
    struct hsm *next_peer; /* other handles on the same module (see module.c) */
};

/* CKR_ name of a PKCS#11 return value, for error details. */
const char *hsm_ckr_name(CK_RV rv);

/* Takes an idle session from the pool, opening a new one when none is idle. */
int hsm_session_take(struct hsm *hsm, CK_SESSION_HANDLE *out);

/* Returns a session to the pool. */
void hsm_session_give(struct hsm *hsm, CK_SESSION_HANDLE s);

#define HSM_KEY_LABEL_MAX 128
#define HSM_KEY_ID_MAX    64

/*
 * A private key as the bridge knows it. Object handles of private objects do not survive a
 * logout (SoftHSM hands out new ones after the next login), so the label and CKA_ID are kept
 * to find the key again; obj is atomic because signing threads may refresh it concurrently.
 */
struct hsm_key_ref {
    struct hsm *hsm;
    atomic_ulong obj; /* CK_OBJECT_HANDLE */
    char label[HSM_KEY_LABEL_MAX + 1];
    unsigned char id[HSM_KEY_ID_MAX];
    size_t idlen;
};

/*
 * Signs in with key and mechanism mech on a pooled session. A lost session, a lost login or a
 * stale object handle is repaired and the sign retried once. *outlen holds the size of out on
 * entry and the length of the signature on return.
 */
int hsm_sign(struct hsm_key_ref *key, CK_MECHANISM_TYPE mech, const unsigned char *in, size_t inlen,
             unsigned char *out, size_t *outlen);

#ifdef UNIT_TESTING
/*
 * Test-only: reads back CKA_SENSITIVE and CKA_EXTRACTABLE of the private key under label, and
 * whether reading its CKA_VALUE is refused (1) as it must be.
 */
int hsm_test_key_flags(struct hsm *hsm, const char *label, int *sensitive, int *extractable,
                       int *value_refused);
#endif

#endif
