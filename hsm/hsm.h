/*
 * hsm: the CA's token. Sets up the embedded SoftHSM2 token of a data directory, reads the PIN,
 * and opens the token (through p11/, the generic PKCS#11 layer: module, login, session pool,
 * keys) to generate key pairs inside it (private key CKA_SENSITIVE, non-extractable) and hand
 * out EVP_PKEYs whose private operations (signing) run inside the token, so that OpenSSL's
 * X509_sign / X509_CRL_sign work unchanged. No private key material ever leaves it. The embedded
 * token is guarded against SoftHSM's in-place rewrites (p11.h, docs/internals/p11.md).
 *
 * The PIN is a secret: it never appears in argv, logs or error details; callers wipe their
 * copies with OPENSSL_cleanse.
 */
#ifndef MQPKI_HSM_H
#define MQPKI_HSM_H

#include <stddef.h>

#include <openssl/evp.h>

/* Debian's SoftHSM2 module, the embedded default. */
#define HSM_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define HSM_PIN_MAX        128

struct hsm;
struct p11_token;

enum hsm_key_type { HSM_KEY_EC_P256, HSM_KEY_EC_P384, HSM_KEY_RSA_3072 };

struct hsm_config {
    const char *module;      /* path of the PKCS#11 module */
    const char *token_label; /* label of the token to use */
    const char *pin;         /* user PIN; hsm_open does not keep the pointer */
    /*
     * The DIR given to hsm_softhsm_prepare when the token is that embedded SoftHSM token: its
     * files (DIR/tokens) are then checked and repaired before use and their last-known-good
     * copies kept in DIR/tokens.good. NULL for any other module.
     */
    const char *softhsm_dir;
};

/*
 * Embedded default: makes DIR/softhsm2.conf (token directory DIR/tokens, 0700) unless it exists,
 * and points SOFTHSM2_CONF at it for this process. Call before hsm_open/hsm_token_init; a new
 * value takes effect only once every handle on the module is closed. hsm_open with
 * softhsm_dir = DIR keeps the guard's good copies in DIR/tokens.good.
 */
int hsm_softhsm_prepare(const char *dir);

/*
 * Checks that DIR (which need not exist yet) can be named in softhsm2.conf: no '#', '=' or line
 * break in it, as given or with the part that exists resolved (links followed).
 * MQPKI_ERR_INVALID naming the path otherwise. hsm_softhsm_prepare checks it first; a caller
 * about to create DIR checks it before creating anything.
 */
int hsm_softhsm_path_check(const char *dir);

/*
 * Initializes a token in the first uninitialized slot of module with label, SO PIN and user
 * PIN. MQPKI_ERR_EXISTS when a token with that label already exists.
 */
int hsm_token_init(const char *module, const char *label, const char *so_pin, const char *user_pin);

/*
 * Loads the module, finds the token by label and logs in as user. Errors: MQPKI_ERR_NOT_FOUND
 * (no such module or token), MQPKI_ERR_AUTH (wrong PIN, never echoed), MQPKI_ERR_HSM. With
 * cfg->softhsm_dir set, damaged token files are restored from their good copies first, and the
 * good copies are refreshed after the login and after every key generation.
 */
int hsm_open(const struct hsm_config *cfg, struct hsm **out);

/* Closes every session and finalizes the module; logs out unless another handle of this process
 * is still logged in to the same token (PKCS#11 login state is per application). NULL-safe.
 * Keys from hsm_key_load must be freed before. */
void hsm_close(struct hsm *hsm);

/*
 * Generates a key pair of the given type in the token under label (CKA_LABEL; a random CKA_ID):
 * private key CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, non-extractable, CKA_SIGN only.
 * MQPKI_ERR_EXISTS when a private key with that label exists.
 */
int hsm_key_generate(struct hsm *hsm, const char *label, enum hsm_key_type type);

/*
 * Returns an EVP_PKEY for the token key under label: public parameters read from the token,
 * private operations (ECDSA, RSA PKCS#1 v1.5 signatures) performed by C_Sign on a pooled
 * session. Safe to use from several threads at once. Valid while hsm is open; the caller frees
 * it with EVP_PKEY_free. MQPKI_ERR_NOT_FOUND when no such key.
 */
int hsm_key_load(struct hsm *hsm, const char *label, EVP_PKEY **out);

/*
 * Reads the user PIN: MQPKI_PIN when it was set (hsm_pin_capture), else the first line of
 * pin_file (which must not be readable by group or others). Returns MQPKI_ERR_NOT_FOUND when
 * neither exists. out gets at most HSM_PIN_MAX-1 characters; wipe it after use.
 */
int hsm_pin_read(const char *pin_file, char out[HSM_PIN_MAX]);

/* The same from pin_file alone, whatever the environment says. */
int hsm_pin_read_file(const char *pin_file, char out[HSM_PIN_MAX]);

/* The offline root token's PIN (datadir/offline_root.c): MQPKI_ROOT_PIN, taken out of the
 * environment with MQPKI_PIN by hsm_pin_capture, else pin_file. */
int hsm_root_pin_read(const char *pin_file, char out[HSM_PIN_MAX]);
/* Wipes the MQPKI_ROOT_PIN copy alone (mqpkid, which never opens the root's token). */
void hsm_root_pin_forget(void);

/*
 * Takes MQPKI_PIN out of the environment: keeps a copy in this process's memory for every later
 * hsm_pin_read (a set but empty MQPKI_PIN forgets it: the PIN file is read), wipes the value
 * in the environment block (so that /proc/PID/environ no longer shows it) and unsets the
 * variable, so that no child inherits it. Call it first thing in main, before any thread or
 * child starts; hsm_pin_read calls it too. The copy is wiped with OPENSSL_cleanse at exit.
 */
void hsm_pin_capture(void);

/* Wipes the copies kept by hsm_pin_capture (MQPKI_PIN's and MQPKI_ROOT_PIN's); later reads
 * use the PIN files. */
void hsm_pin_forget(void);

/* The p11/ handle under hsm (p11.h), for what hsm.h does not offer; owned by hsm. */
struct p11_token *hsm_p11(struct hsm *hsm);

#endif
