/* datadir internals shared by its files. */
#ifndef MQPKI_DATADIR_INT_H
#define MQPKI_DATADIR_INT_H

#include "datadir.h"
#include "hsm.h"
#include "proto.h"

/* Labels of the CA keys in the token. */
#define DATADIR_ROOT_KEY    "mqpki-root"
#define DATADIR_ISSUING_KEY "mqpki-issuing"
/* The key that signs audit checkpoints, its certificate (by the root) and the checkpoint's
 * copy beside the CRLs (docs/security.md, "Audit"). */
#define DATADIR_AUDIT_KEY    "mqpki-audit"
#define DATADIR_AUDIT_CERT   "ca/audit.pem"
#define DATADIR_AUDIT_EXPORT "crl/audit-checkpoint.json"
/* How long the audit key's certificate is valid; checkpoints verify after it expired too. */
#define AUDIT_CERT_DAYS (20 * 365)
/* How long a publisher waits for another one to finish (a million-entry CRL takes seconds). */
#define PUBLISH_LOCK_MS 60000
/* How long a command that lost mqpkid mid-request watches it finish exiting (datadir.c). */
#define DAEMON_EXIT_MS 2000
/* How long a command waits for the CA token or the daemon's answer. */
#define TOKEN_WAIT_MS 30000
/* Attempts to open the CA token before a failure is final (100, 200, ... ms apart). */
#define HSM_OPEN_TRIES 3
/* An open CRL publication older than this was left by a command that died. */
#define STALE_PUBLICATION_S 5
#define CONTROL_WAIT_MS     120000

/* run/: the control socket and the locks of processes using this data directory. */
#define CONTROL_DIR       "run"
#define CONTROL_SOCKET    "run/mqpkid.sock"
#define CONTROL_FRAME_MAX (64 * 1024)

/* The asset id of mqpkid's own TLS and feed identity. */
#define DATADIR_SERVICE_ASSET PROTO_SERVICE_ID

/* The issuing CA in use: its CA, its key as opened here (token or remote, for
 * datadir_key_sign) and its generation. Never changed once published: a rollover publishes a
 * new one (datadir_ca_swap), so that a reader sees the three of one generation. */
struct datadir_signer {
    struct ca *ca;
    EVP_PKEY *key;
    int gen;
};

struct datadir {
    char home[PATH_MAX];
    struct datadir_config cfg;
    struct hsm *hsm;
    struct inventory *inv;
    struct lifecycle *lc;
    struct datadir_signer *signer; /* atomic loads and stores (datadir_ca, datadir_ca_swap) */
    EVP_PKEY *audit_key; /* the audit key (token or remote) when there is one, else NULL */
    int remote;          /* 1 when the CA key signs through a running mqpkid */
    const char *actor;   /* who publishes, for the audit log ("cli", "init") */
    int token_lock;      /* DATADIR_LOCK_TOKEN while this process has the token open, else -1 */
    int daemon_lock;     /* DATADIR_LOCK_DAEMON held by mqpkid (DATADIR_DAEMON), else -1 */
    int daemon_mode;     /* opened by mqpkid: the CA key is this process's own */
    int64_t exported[2]; /* what crl/ holds (crl/exported, read under the export lock) */
    /* What a rollover replaced: threads may still sign with them; freed at close. */
    struct datadir_signer *old_signers[DATADIR_ISSUERS_MAX];
    size_t n_old;
    /* Older live generations' CAs, by generation, opened for their CRLs (export lock held). */
    struct ca *gen_ca[DATADIR_ISSUERS_MAX + 1];
};

/*
 * Under the export lock, after crl/ got a CRL: each older live issuing CA generation G whose
 * key this process holds gets the CRLs crl/ holds signed again by its own key
 * (ca_crl_resign) in crl/generation-G/ (issuing.crl, issuing.pem, issuing-delta.crl and
 * exported, as in crl/). Failures are logged: the current key's CRLs cover every generation.
 */
void datadir_generations_export(struct datadir *dd);

/* The token label of issuing CA generation gen (datadir/issuers.c). */
#define DATADIR_ISSUER_LABEL_MAX 64
int datadir_issuer_label(int gen, char out[DATADIR_ISSUER_LABEL_MAX]);
/* The generation whose certificate cert is (ca/issuers/, or 1 before any rollover);
 * MQPKI_ERR_STATE when it is none of them (ca/ changed meanwhile). */
int datadir_issuer_gen_of(const char *home, X509 *cert, int *gen);
/* Makes ca (with its key, may be NULL, and generation gen) the one datadir_ca() gives from now
 * on; what it replaces stays valid until datadir_close, for threads still signing with it.
 * Takes both, also on failure (MQPKI_ERR_NOMEM: they are freed). */
int datadir_ca_swap(struct datadir *dd, struct ca *ca, EVP_PKEY *key, int gen);
/* The signer in use (atomic load), NULL before the CA is opened. */
struct datadir_signer *datadir_signer(struct datadir *dd);

/* Replaces home/rel atomically (mqpki_file_write_atomic) with mode. */
int datadir_write_file(const char *home, const char *rel, const void *data, size_t len,
                       unsigned mode);

/* A random secret as 32 hex digits (128 bits): token PINs. */
int datadir_random_secret(char out[33]);
/* "ec-p256", "ec-p384", "rsa-3072" -> hsm_key_type; MQPKI_ERR_INVALID naming it otherwise. */
int datadir_key_type(const char *name, enum hsm_key_type *out);

/* Loads the PEM certificate home/rel. */
int datadir_load_cert(const char *home, const char *rel, X509 **out);

/* Logs in to the configured token (embedded SoftHSM prepared when no module is set). */
int datadir_hsm_open(const char *home, const struct datadir_config *cfg, struct hsm **out);

/* Fills cfg with the defaults for home (what an empty mqpki.conf means). */
void datadir_config_defaults(const char *home, struct datadir_config *cfg);

/* Names for a service certificate's SAN. */
#define DATADIR_NAMES_MAX 34
struct datadir_names {
    char dns[DATADIR_NAMES_MAX][256];
    char ips[DATADIR_NAMES_MAX][64];
    size_t n_dns, n_ips;
};

/* An EVP_PKEY with pub's public key whose signatures are made by home's running mqpkid with its
 * CA key `label` (DATADIR_CTL_SIGN). */
int datadir_remote_key(const char *home, const char *label, EVP_PKEY *pub, EVP_PKEY **out);

/*
 * The audit key for a process that holds the token (dd->hsm open): loads it, generating it in
 * the token when neither it nor ca/audit.pem exists yet (a data directory from before audit
 * checkpoints), writes ca/audit.pem (certified by the root) when missing, and signs a first
 * checkpoint when the store holds none. Sets dd->audit_key. Problems are logged: the CA works
 * without checkpoints, and `audit verify` says what is wrong.
 */
void datadir_audit_open_local(struct datadir *dd);

/* The audit key of the running mqpkid, signing through its control socket (no key: NULL). */
void datadir_audit_open_remote(struct datadir *dd);

/* Loads ca/audit.pem (MQPKI_ERR_NOT_FOUND when missing). */
int datadir_audit_cert(const char *home, X509 **out);

/* Issues mqpkid's TLS identity for names (a fresh software EC P-256 key) and installs it in tls/
 * crash-safely; supersede marks the previous certificate superseded. */
int datadir_tls_issue(struct datadir *dd, const struct datadir_names *names, int supersede);

#endif
