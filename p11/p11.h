/*
 * p11: generic PKCS#11 token access and the EVP_PKEY signer bridge, shared by the CA's hsm/ and by
 * libmqpki-device. Loads a module (reference counted per path), finds a token by label, logs in
 * once, keeps a thread-safe pool of sessions, generates, loads and destroys key pairs inside the
 * token, and hands out EVP_PKEYs whose private operations run elsewhere: in the token (C_Sign on
 * a pooled session) or in any signer the caller supplies (p11_pkey_from_signer).
 *
 * It also guards SoftHSM2's file object store, which rewrites its token file in place and can be
 * left empty by a crash: last-known-good copies are kept and restored (docs/internals/p11.md).
 *
 * Every handle logs through its own logger (struct p11_config); nothing here installs or replaces
 * common's process-wide logger. Errors are enum mqpki_err codes with a one-line detail
 * (mqpki_err_detail). PINs never appear in logs or details; callers wipe their copies.
 */
#ifndef MQPKI_P11_H
#define MQPKI_P11_H

#include <stddef.h>

#include <openssl/evp.h>

#define P11_PIN_MAX         128 /* PIN buffer size, terminating NUL included */
#define P11_TOKEN_LABEL_MAX 32  /* CK_TOKEN_INFO.label is 32 bytes */
#define P11_KEY_LABEL_MAX   128 /* our limit on CKA_LABEL of key objects */

/* The signing mechanisms of the signer bridge, with PKCS#11's values (CKM_ECDSA, CKM_RSA_PKCS). */
#define P11_MECH_ECDSA    0x1041UL
#define P11_MECH_RSA_PKCS 0x0001UL

/* Base name of SoftHSM2's module, whose file object store the guard below knows. */
#define P11_SOFTHSM_MODULE_NAME "libsofthsm2.so"

/*
 * A log sink: level is an enum mqpki_log_level value (0 error, 1 warn, 2 info, 3 debug); msg is
 * one line without a newline, valid during the call only. Called from any thread.
 */
typedef void (*p11_log_fn)(int level, const char *msg, void *ctx);

/* One token, logged in: module, slot, login and session pool. Opaque. */
struct p11_token;

enum p11_key_type { P11_KEY_EC_P256, P11_KEY_EC_P384, P11_KEY_RSA_3072 };

struct p11_config {
    const char *module;      /* path of the PKCS#11 module */
    const char *token_label; /* label of the token */
    const char *pin;         /* user PIN; not kept by reference */
    /* Where the handle's log lines go; NULL: common's mqpki_log. */
    p11_log_fn log_fn;
    void *log_ctx;
    /*
     * SoftHSM2 file-store guard, both or neither: the module's token directory
     * (directories.tokendir) and a directory for last-known-good copies. When set, the token
     * files are checked and repaired before the module is initialized, saved after a successful
     * login and after key generation or destruction, and restored once if the module or the
     * token cannot be found although a good copy exists. NULL: no guard.
     */
    const char *softhsm_tokendir;
    const char *softhsm_gooddir;
};

/*
 * Loads cfg->module (shared with other handles on the same path), finds the token labelled
 * cfg->token_label and logs in as user. Errors: MQPKI_ERR_INVALID (missing or overlong
 * argument), MQPKI_ERR_NOT_FOUND (no such module or token), MQPKI_ERR_AUTH (wrong or locked PIN,
 * never echoed), MQPKI_ERR_HSM. On success *out is a handle the caller closes with p11_close;
 * on failure *out is NULL. The strings of cfg are copied.
 */
int p11_open(const struct p11_config *cfg, struct p11_token **out);

/*
 * Closes every session and drops the module reference (the last one finalizes and unloads it);
 * logs out unless another handle of this process is logged in to the same token (PKCS#11 login
 * state is per application). Keys from p11_key_load must be freed before. NULL-safe.
 */
void p11_close(struct p11_token *tok);

/*
 * Initializes the first uninitialized token of cfg->module (C_InitToken) with label
 * cfg->token_label and SO PIN so_pin, then sets the user PIN cfg->pin (C_InitPIN). Uses cfg's
 * logger and guard. MQPKI_ERR_EXISTS when a token with that label exists; MQPKI_ERR_HSM when no
 * slot holds an uninitialized token.
 */
int p11_token_init(const struct p11_config *cfg, const char *so_pin);

/*
 * Generates a key pair in the token under label (CKA_LABEL; a random CKA_ID): private key
 * CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, non-extractable, CKA_SIGN only; public key CKA_VERIFY
 * only. MQPKI_ERR_EXISTS when a private key with that label exists. On a guarded handle the
 * new object files are saved as good copies before this returns.
 */
int p11_key_generate(struct p11_token *tok, const char *label, enum p11_key_type type);

/*
 * An EVP_PKEY for the token key pair under label: the public half read from the token, the
 * private operations (ECDSA; RSA PKCS#1 v1.5 signatures) done by C_Sign on a pooled session,
 * through the signer bridge below. A lost session, a lost login or a stale object handle is
 * repaired and the signature retried once. Usable from several threads at once; valid while tok
 * is open; the caller frees it with EVP_PKEY_free. MQPKI_ERR_NOT_FOUND when there is no such key.
 */
int p11_key_load(struct p11_token *tok, const char *label, EVP_PKEY **out);

/*
 * Destroys every token object labelled label (both halves of a key pair, and leftovers of an
 * interrupted generation). EVP_PKEYs loaded from them must be freed before. MQPKI_ERR_NOT_FOUND
 * when there is none. On a guarded handle the good copies follow.
 */
int p11_key_destroy(struct p11_token *tok, const char *label);

/*
 * The signer bridge. sign has C_Sign's semantics:
 *   mech P11_MECH_ECDSA:    in is the message digest; out receives the raw signature r||s, each
 *                           half as long as the group order (PKCS#11 CKM_ECDSA);
 *   mech P11_MECH_RSA_PKCS: in is the DER DigestInfo; out receives the PKCS#1 v1.5 signature,
 *                           exactly RSA_size bytes (PKCS#11 CKM_RSA_PKCS).
 * On entry *outlen is the size of out (at least 1024 bytes), on success the signature length.
 * It returns MQPKI_OK or an mqpki_err code (OpenSSL then sees a failed signature), may be called
 * from several threads at once, and does its own logging. release (may be NULL) is called once,
 * when the last EVP_PKEY, EC_KEY or RSA holding ctx is freed.
 */
struct p11_signer_ops {
    int (*sign)(void *ctx, unsigned long mech, const unsigned char *in, size_t inlen,
                unsigned char *out, size_t *outlen);
    void (*release)(void *ctx);
};

/*
 * Makes an EVP_PKEY with the public key of pub (EC on a named curve, or RSA; pub is only read)
 * whose private operations call ops->sign(ctx, ...). X509_sign, X509_REQ_sign, X509_CRL_sign,
 * EVP_DigestSign and TLS handshakes use it unchanged (a legacy EC_KEY/RSA with a custom method,
 * which OpenSSL 3.0 keeps on its legacy path). Copies (EVP_PKEY_dup, EC_KEY_dup) share ctx
 * through a thread-safe reference count; ops is copied. On success the key owns ctx; on failure
 * (MQPKI_ERR_INVALID for another key type, MQPKI_ERR_CRYPTO, MQPKI_ERR_NOMEM) ctx stays the
 * caller's, release is not called and *out is NULL. RSA signatures use PKCS#1 v1.5 padding only.
 */
int p11_pkey_from_signer(EVP_PKEY *pub, const struct p11_signer_ops *ops, void *ctx,
                         EVP_PKEY **out);

/* PKCS#11 name of a CK_RV ("CKR_PIN_INCORRECT"), for details; never NULL. */
const char *p11_ckr_name(unsigned long rv);

/* The SoftHSM2 file-store guard (p11/softhsm.c; contract in docs/internals/p11.md). */
struct p11_softhsm_guard {
    const char *tokendir; /* SoftHSM's directories.tokendir: one sub-directory per token */
    const char *gooddir;  /* last-known-good copies: GOODDIR/TOKEN/FILE; GOODDIR/quarantine */
    p11_log_fn log_fn;    /* NULL: common's mqpki_log */
    void *log_ctx;
};

/*
 * Before the module is initialized: reads every token file (token.object, UUID.object,
 * generation) of every token in g->tokendir and checks its structure completely. A damaged file
 * (seen twice, 50 ms apart, so that a live writer in another process is not mistaken for a
 * crash) with a valid good copy is restored atomically from it; a damaged object file without
 * one (a half-created object) is moved to GOODDIR/quarantine/TOKEN/, unless it is younger than
 * 10 s or its lock file is held (it may be being created right now). Leftover temporary files of
 * our own atomic writes are removed. Every repair is logged (warn). *repaired (may be NULL) gets
 * the number of files restored or quarantined. Returns MQPKI_OK unless the directories cannot be
 * read or a repair failed (MQPKI_ERR_IO).
 */
int p11_softhsm_check(const struct p11_softhsm_guard *g, unsigned *repaired);

/*
 * After a successful login or a key generation: refreshes g->gooddir (0700, files 0600, each
 * written atomically) from every valid live token file that is new or whose content differs from
 * its good copy, ignoring the 8-byte generation counter that SoftHSM bumps on every rewrite (so a
 * routine login rewrites nothing); removes the good copies of objects that no longer exist.
 * Damaged live files are never saved. *saved (may be NULL) gets the number of files written.
 */
int p11_softhsm_save(const struct p11_softhsm_guard *g, unsigned *saved);

/*
 * The fallback: copies every valid good file over its live counterpart when that is missing or
 * differs (ignoring the generation counter), for the tokens of g->gooddir whose good token.object
 * carries token label label (blank-padded PKCS#11 label), or for every token present in both
 * directories when label is NULL. *restored (may be NULL) gets the number of files written.
 * MQPKI_ERR_NOT_FOUND when no good copy matches.
 */
int p11_softhsm_restore(const struct p11_softhsm_guard *g, const char *label, unsigned *restored);

/*
 * The token directory of SoftHSM configuration file conf (its "directories.tokendir" line);
 * conf NULL means SOFTHSM2_CONF, else /etc/softhsm/softhsm2.conf. MQPKI_ERR_NOT_FOUND when the
 * file or the line is missing, MQPKI_ERR_TOO_LARGE when out (size bytes) is too small.
 */
int p11_softhsm_tokendir(const char *conf, char *out, size_t size);

/* 1 when module's base name is SoftHSM2's (P11_SOFTHSM_MODULE_NAME), else 0. */
int p11_softhsm_module(const char *module);

#endif
