/*
 * datadir: one CA's data directory (DESIGN.md 2), as the CLI and the daemon open it:
 * configuration (mqpki.conf), the PIN, the token, the store and the CA, and the files derived
 * from them (CA certificates, CRLs). `datadir_init` creates it; nothing here writes outside it.
 */
#ifndef MQPKI_DATADIR_H
#define MQPKI_DATADIR_H

#include <limits.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/x509.h>

#include "ca.h"
#include "inventory.h"

struct ca;
struct hsm;
struct inventory;
struct inventory_crl;
struct lifecycle;
struct lifecycle_config;
struct datadir;

/* Everything mqpki.conf can set (docs/configuration.md), with defaults filled in. */
/* Detect -> respond (docs/detect.md): the built-in detectors and what each answers with. */
enum datadir_detector {
    DETECT_AUTH_FAILURES,     /* refused connections per asset and per address */
    DETECT_TOPIC_SCAN,        /* ACL denials over distinct topics, wildcard outside the subtree */
    DETECT_CLONED_IDENTITY,   /* one certificate from two addresses, takeovers in a loop */
    DETECT_FLAPPING,          /* connects in a window */
    DETECT_SILENT,            /* an active asset not seen for a window */
    DETECT_REVOKED_CONNECTED, /* a revoked certificate connected after its CRL */
    DETECT_COUNT_
};
enum datadir_response { DETECT_OFF, DETECT_ALERT, DETECT_HOLD, DETECT_QUARANTINE };
struct datadir_detect_rule {
    int threshold;  /* [detect] RULE_threshold: events (distinct topics, ...) that fire it */
    int64_t window; /* [detect] RULE_window: seconds */
    int response;   /* [detect] RULE_response: enum datadir_response */
};
/* "auth_failures", ... and "off", "alert", "hold", "quarantine"; NULL when out of range. */
const char *datadir_detector_name(int rule);
const char *datadir_response_name(int response);

struct datadir_config {
    char ca_name[128];         /* [ca] name */
    char key_type[16];         /* [ca] key: ec-p256 | ec-p384 | rsa-3072 */
    char url[256];             /* [ca] url: base of the CRL distribution point and EST */
    int64_t crl_validity;      /* [ca] crl_validity: nextUpdate - thisUpdate, seconds */
    int64_t crl_full_every;    /* [ca] crl_full_every: re-sign the full CRL this often */
    int64_t crl_full_after;    /* [ca] crl_full_after: a full CRL follows a delta this soon */
    int64_t crl_delta_max;     /* [ca] crl_delta_max: a larger delta becomes a full CRL */
    int device_days;           /* [ca] device_days */
    int broker_days;           /* [ca] broker_days */
    char hsm_module[PATH_MAX]; /* [hsm] module: "" for the embedded SoftHSM */
    char hsm_token[64];        /* [hsm] token: token label */
    char pin_file[PATH_MAX];   /* [hsm] pin_file: absolute after loading */
    char listen[128];          /* [daemon] listen: ADDR:PORT */
    int64_t token_ttl;         /* [enrollment] token_ttl: default TTL of enrollment tokens */
    int64_t reenroll_grace;    /* [enrollment] reenroll_grace: a superseded certificate renews */
    int auth_failures;         /* [enrollment] auth_failures: per address/asset per window */
    int64_t auth_window;       /* [enrollment] auth_window: seconds of the failure window */
    double rate_per_address;   /* [enrollment] rate: EST requests per second per address; 0 off */
    int rate_burst;            /* [enrollment] burst */
    int64_t audit_every;       /* [audit] checkpoint_every: mqpkid checkpoints this often */
    char audit_key_fp[PROTO_FP_HEX_LEN + 1]; /* [audit] key_fingerprint: "" when not pinned */
    int expired_cert_days;                   /* [retention] expired_cert_days */
    int token_days;                          /* [retention] token_days */
    char crl_listen[128];                    /* [http] crl_listen: ADDR:PORT, "" off */
    int64_t feed_inline_max; /* [feed] crl_inline_max: a full CRL this large or larger goes to
                                the brokers as a notice they fetch (bytes; 0: never) */
    char feed_crl_url[PROTO_URL_MAX + 1]; /* [feed] crl_url: where brokers fetch it, "" derived */
    char log_format[8];                      /* [log] format: text | json */
    char log_level[8];                       /* [log] level: error | warn | info | debug */
    char store_url[1024];                    /* [store] url: postgresql:// URL, "" embedded */
    int64_t events_max_rows;                 /* [detect] events_max_rows: broker events kept */
    int64_t events_max_age;     /* [detect] events_max_age: seconds broker events are kept */
    char detect_hook[PATH_MAX]; /* [detect] hook: command run with each alert on stdin, or "" */
    struct datadir_detect_rule detect[DETECT_COUNT_];
};

struct datadir_init_opts {
    const char *ca_name;          /* NULL: "mqpki" */
    const char *key_type;         /* NULL: "ec-p256" */
    const char *url;              /* NULL: https://localhost:8443 */
    const char *const *hostnames; /* extra names for mqpkid's TLS certificate */
    size_t n_hostnames;
    const char *root_home; /* NULL: the root key is made in the CA's token; else the root of
                              that root home (datadir_root_init) certifies the CA's keys and
                              the CA's token never holds it */
};

/* What datadir_open opens besides the configuration: the store (and the lifecycle use cases
 * on it), the CA (token login, or signing through a running mqpkid). DATADIR_DAEMON is mqpkid's:
 * one per data directory (MQPKI_ERR_EXISTS naming the running one otherwise), and the CA token
 * is its alone for as long as it runs. */
enum { DATADIR_STORE = 1, DATADIR_CA = 2, DATADIR_DAEMON = 4 };

/* A bundled broker's brokers/NAME/broker.conf ("host = H", "port = P"; defaults 127.0.0.1 and
 * 8883), as `broker init` writes it and mqpkid's feed reads it. */
#define DATADIR_BROKER_HOST_MAX 256
int datadir_broker_conf_read(const char *path, char host[DATADIR_BROKER_HOST_MAX], int *port);

/* The data directory: arg when given, else $MQPKI_HOME, else ./mqpki-data; made absolute. */
int datadir_resolve_home(const char *arg, char out[PATH_MAX]);

/*
 * Creates the data directory: layout, embedded SoftHSM token with a random PIN in secrets/pin
 * (0600), root and issuing CA keys generated in the token, CA certificates in ca/, the store,
 * mqpkid's TLS identity in tls/, a first CRL in crl/ and, last, mqpki.conf. MQPKI_ERR_EXISTS if
 * home already holds a CA. progress (may be NULL) is called with one line per step.
 */
int datadir_init(const char *home, const struct datadir_init_opts *opts,
                 void (*progress)(const char *step));

/* Opens home with the parts in `what` (DATADIR_STORE, DATADIR_CA: token login + CA). */
int datadir_open(const char *home, unsigned what, struct datadir **out);
void datadir_close(struct datadir *dd);

const char *datadir_home(const struct datadir *dd);
const struct datadir_config *datadir_config(const struct datadir *dd);
struct inventory *datadir_inventory(struct datadir *dd);
/* The lifecycle use cases over the store (DATADIR_STORE). */
struct lifecycle *datadir_lifecycle(struct datadir *dd);

/* The lifecycle's settings ([ca] crl_*) from a data directory's configuration. */
void datadir_lifecycle_config(const struct datadir_config *cfg, struct lifecycle_config *out);
/* The CA when opened (DATADIR_CA or datadir_ca_open), else NULL. */
struct ca *datadir_ca(struct datadir *dd);

/* Opens the CA of an already opened data directory when it is not open yet. */
/* The opened CA's issuing key (borrowed), and 1 when it signs through the running mqpkid. */
EVP_PKEY *datadir_ca_key(struct datadir *dd);
int datadir_ca_remote(const struct datadir *dd);
int datadir_ca_open(struct datadir *dd);

/*
 * The store this process uses instead of the data directory's own (`--store URL`), set before
 * datadir_open; NULL clears it. MQPKI_ERR_INVALID unless url is a postgresql:// URL without a
 * password (a password on a command line is visible to every local user: put it in mqpki.conf,
 * which is 0600, or in a libpq password file).
 */
int datadir_set_store(const char *url);

/*
 * Copies home's embedded store (mqpki.db) into the empty PostgreSQL store at url
 * (inventory_copy) and then sets [store] url in mqpki.conf (replaced atomically); mqpki.db stays
 * as it was. A rerun after a run killed between the copy's commit and the mqpki.conf change
 * finds the copy in place and only finishes the switch: *already (may be NULL) is then 1.
 * Refused while mqpkid runs on home (it would keep writing to the old store), and when the
 * destination holds anything but this store's rows.
 */
int datadir_store_migrate(const char *home, const char *url, inventory_copy_cb progress, void *ctx,
                          int *already);

/*
 * Prepares the empty or missing directory to as a replica of the data directory from, whose
 * store must be PostgreSQL: its configuration (and so the store), the CA certificates, the PIN,
 * mqpkid's TLS identity, the published CRLs and the broker registrations are copied; the
 * embedded SoftHSM token is shared (to/hsm is a symbolic link to from/hsm: replicas on one
 * host), a network HSM ([hsm] module) is reached by the copied configuration. progress may be
 * NULL.
 */
int datadir_replica_init(const char *from, const char *to, void (*progress)(const char *step));

/* The store's target: --store, else [store] url, else HOME/mqpki.db. */
int datadir_store_target(const struct datadir *dd, char out[PATH_MAX]);

/* home/rel into out. */
int datadir_path(const struct datadir *dd, const char *rel, char out[PATH_MAX]);

/*
 * Renews mqpkid's TLS certificate (tls/mqpkid.pem, tls/mqpkid.key) with a fresh key and the same
 * names once two thirds of its lifetime have passed, or at once with force. Also completes a
 * renewal that a crash interrupted. *renewed says whether new files were installed.
 */
int datadir_tls_renew(struct datadir *dd, int force, int *renewed);

/*
 * Renews bundled broker NAME's certificate (brokers/NAME/broker.pem, broker.key) with a fresh
 * key and the same DNS and IP names once two thirds of its lifetime have passed, or at once
 * with force, installed in the same crash-safe order as mqpkid's own; then sends SIGHUP to the
 * broker's Mosquitto when `mqpki broker run` noted it in run/broker-NAME.pid and it still runs
 * there (*reloaded: its pid, else 0): Mosquitto loads the new certificate for new connections
 * and keeps the connected clients. Needs the CA (DATADIR_CA).
 */
int datadir_broker_renew(struct datadir *dd, const char *name, int force, int *renewed,
                         pid_t *reloaded);

/* datadir_broker_renew for every bundled broker when due, logging each; returns how many. */
int datadir_brokers_renew(struct datadir *dd);

/* The configured default validity of each certificate profile (0: the profile's own). */
void datadir_profile_days(const struct datadir_config *cfg, int days[CA_PROFILE_COUNT_]);

/* Loads a configuration file (defaults for missing keys; unknown keys are errors). */
int datadir_config_load(const char *home, struct datadir_config *cfg);

/*
 * The CRL export: writes a signed CRL where readers look, atomically: a full CRL to
 * crl/issuing.crl (DER) and crl/issuing.pem, a delta CRL to crl/issuing-delta.crl. The store
 * holds the truth (lifecycle/); these files serve HTTP, crl-sync and people.
 */
int datadir_crl_export(struct datadir *dd, const struct inventory_crl *c, const unsigned char *der,
                       size_t len);
/*
 * Which numbers crl/ holds: crl/exported ("FULL DELTA", -1 for none or not known), read and
 * written after each export under the export lock (an flock on crl/.export-lock, which every
 * exporting thread and process takes). datadir_crl_export skips a CRL not newer than the one
 * held, and holds back a delta based on a full CRL newer than the one held (MQPKI_ERR_BUSY,
 * nothing written): beside an older full CRL it would replace the delta that extends that one,
 * and a reader would take neither. Whoever exports the base exports the delta next
 * (lifecycle/publish.c). A delta never waits for the lock: while another thread or process
 * holds it (a full CRL of tens of MB being written) it is MQPKI_ERR_BUSY too, and exported by
 * that writer or the next publication. datadir_crl_exported then answers what this process
 * read last (never more than crl/ holds).
 */
int64_t datadir_crl_exported(struct datadir *dd, int kind);

/* Each export also writes the older live issuing CA generations' copies of what crl/ holds
 * (crl/generation-G/, the same CRLs signed by generation G's key; datadir/issuers.c) where
 * the keys are; this brings them up to crl/ alone (a process killed between the two). */
void datadir_generations_sync(struct datadir *dd);

/*
 * The issuing CA's key generations (datadir/issuers.c, docs/operations.md "CA rollover"):
 * generation 1 is the issuing CA `mqpki init` made; each `mqpki ca rollover` adds one with a new
 * key in the token, the same name and the same root, and makes it current: it signs every new
 * certificate and every CRL (which covers the certificates of all generations: one name). An
 * older generation stays trusted until `mqpki ca retire`.
 */
#define DATADIR_ISSUERS_MAX 16
struct datadir_issuer {
    int gen;
    int current; /* ca/issuing.pem */
    int retired; /* ca/issuers/N.retired */
    int unfiled; /* generation 1 before the first rollover: no ca/issuers/1.pem yet */
    X509 *cert;
};
struct datadir_issuers {
    struct datadir_issuer v[DATADIR_ISSUERS_MAX]; /* by generation, oldest first */
    size_t n;
    size_t current; /* index in v */
};
int datadir_issuers_read(const char *home, struct datadir_issuers *out);
/* 1 once a rollover filed generations in ca/issuers/ (older generations may be live). */
int datadir_issuers_rolled(const char *home);
void datadir_issuers_clear(struct datadir_issuers *is);
/* PEM of generation current_gen, then every other live (not retired) one, newest first, then
 * root when not NULL: ca/chain.pem's content, /cacerts' and the brokers' trust. Heap. */
int datadir_issuers_pem(const struct datadir_issuers *is, int current_gen, X509 *root, char **out,
                        size_t *len);

/*
 * Rolls the issuing CA over to a new generation (crash-safe; a rerun finishes one cut short):
 * a key generated in the token, certified by the root for days, the same subject (or, with
 * signed_cert not NULL, that certificate for the key datadir_ca_rollover_request made); written to
 * ca/issuers/N.pem, ca/chain.pem and ca/issuing.pem; ready (may be NULL) is called then, before
 * this process's CA becomes the new one (datadir_ca): mqpkid sends the brokers the new chain
 * there, before any CRL the new key signs. Needs the token open here (the CLI with no mqpkid, or
 * mqpkid itself, which does it for `mqpki ca rollover` through DATADIR_CTL_ROLLOVER).
 */
struct datadir_rollover {
    int gen;      /* the new current generation */
    int previous; /* the one it replaced */
    int resumed;  /* an interrupted rollover was finished */
    int already;  /* signed_cert is the current generation's already: nothing was done */
};
int datadir_ca_rollover(struct datadir *dd, int days, X509 *signed_cert, void (*ready)(void *ctx),
                        void *ctx, struct datadir_rollover *out);

/* The root kept offline (docs/operations.md, "Key ceremony"): makes the next generation's key
 * in the token (once: a second call is for the same key) and returns a PKCS#10 request for it
 * under the issuing CA's name (PEM, heap) for the root to sign. The certificate then goes to
 * datadir_ca_rollover as signed_cert, which checks it (that key, that name, signed by
 * ca/root.pem, a CA) instead of certifying the key with a root key in the token. */
int datadir_ca_rollover_request(struct datadir *dd, char **pem, size_t *len, int *gen);

/* Where the token is open here (mqpkid): when ca/issuing.pem is another generation than the
 * CA in use (a replica's ca/ brought up to date by hand), opens that one and uses it from now
 * on. mqpkid calls it on SIGHUP. */
int datadir_ca_reload(struct datadir *dd);

/* Valid (not revoked, not expired) certificates in the store issued by issuer (its key
 * identifier); a scan of every valid certificate. */
int datadir_ca_issued_live(struct datadir *dd, X509 *issuer, int64_t *live);

/*
 * The root kept offline, in a token of its own (datadir/offline_root.c, docs/operations.md,
 * "Key ceremony"). A root home DIR holds that token (hsm/), its PIN (secrets/pin, 0600),
 * root.pem and ceremony.log (a JSON line per signature of the root key).
 */
#define DATADIR_ROOT_TOKEN "mqpki-root"
#define DATADIR_ROOT_DAYS  (20 * 365)
struct datadir_root_opts {
    const char *ca_name;  /* NULL: "mqpki"; the root is "NAME Root CA" */
    const char *key_type; /* NULL: "ec-p256" */
    int days;             /* 0: DATADIR_ROOT_DAYS */
};
/* Creates the root home DIR: token, PIN, root key in the token, self-signed root.pem (last).
 * MQPKI_ERR_EXISTS when DIR holds one (or a set-up cut short). *root gets the certificate. */
int datadir_root_init(const char *dir, const struct datadir_root_opts *opts,
                      void (*progress)(const char *step), X509 **root);
/* Certifies the public key pub under CN=cn for days with DIR's root key: an issuing CA
 * (pathlen 0) or the audit key's certificate. Refused past the root's own end. Logged in
 * ceremony.log before it is returned; days are cut to the root's own end. *root (may be NULL)
 * gets root.pem. The caller has no other token open (SoftHSM reads its configuration once per
 * initialisation). */
enum datadir_root_kind { DATADIR_ROOT_ISSUING, DATADIR_ROOT_AUDIT };
/* An issuing CA is certified only under a name this root certified before (ceremony.log),
 * unless flags has DATADIR_ROOT_NEW_NAME (init --root-home: a new CA). */
#define DATADIR_ROOT_NEW_NAME 1u
int datadir_root_certify(const char *dir, EVP_PKEY *pub, const char *cn,
                         enum datadir_root_kind kind, int days, unsigned flags, X509 **cert,
                         X509 **root);
/* Opens DIR's root token and checks its key against root.pem; closes it again. */
int datadir_root_check(const char *dir);
/* A plain public-key copy of key (a token key's public half, usable after the token closed). */
int datadir_public_copy(EVP_PKEY *key, EVP_PKEY **out);

/* Marks generation gen retired (ca/issuers/N.retired) and rewrites ca/chain.pem without it.
 * Refused for the current generation (MQPKI_ERR_STATE), and while certificates of it are still
 * valid (MQPKI_ERR_STATE, *live says how many). One retired already (a run cut short): the
 * chain is written again, *already 1. Serialised with rollovers (ca/.issuers-lock). Needs the
 * store. */
int datadir_ca_retire(struct datadir *dd, int gen, int64_t *live, int *already);

/*
 * The control socket between mqpki and a running mqpkid (run/mqpkid.sock): a request is one
 * frame whose first byte is the operation; the reply's first byte is 0 or an mqpki error code
 * (then the detail). Only peers of mqpkid's own user (or root) are answered.
 */
enum datadir_control_op {
    DATADIR_CTL_PING = 'p',     /* is mqpkid serving this data directory? reply: its pid */
    DATADIR_CTL_PUBLISH = 'P',  /* + flags byte (1: send the CRLs to the brokers again); reply:
                                   JSON {"signed", "full", "delta", "brokers", "linked"} */
    DATADIR_CTL_SIGN = 'S',     /* + key label length byte, label, 4-byte mechanism, input: a
                                   C_Sign with the issuing CA key or the audit key (PKCS#11
                                   semantics); reply: signature */
    DATADIR_CTL_RESCAN = 'R',   /* re-read brokers/: link new brokers, stop the links of removed
                                   or decommissioned ones at once; reply: empty */
    DATADIR_CTL_COMMAND = 'C',  /* + asset id, NUL, a device command's JSON ({"op":"renew"}):
                                   published on the asset's command topic; reply: the number
                                   of brokers it went to, as text */
    DATADIR_CTL_ROLLOVER = 'O', /* + 4-byte validity in days [+ the new generation's
                                   certificate, DER, when the root is offline]:
                                   datadir_ca_rollover in mqpkid, which then serves the new CA
                                   (EST, CRLs) and sends the brokers the issuers; reply: JSON
                                   {"gen", "previous", "resumed", "already"} */
    DATADIR_CTL_ROLLOVER_REQUEST = 'Q', /* datadir_ca_rollover_request in mqpkid; reply:
                                           4-byte generation, the request's PEM */
    DATADIR_CTL_ISSUERS = 'I',          /* ca/chain.pem changed (a generation retired): sent to the
                                           brokers again and trusted by EST; reply: empty */
};

/* Sends a request to home's mqpkid and returns its reply body (status byte first, heap).
 * MQPKI_ERR_NOT_FOUND when no mqpkid serves home; the daemon's error (with its detail) when it
 * answers with one. */
int datadir_control_call(const char *home, const void *req, size_t req_len, unsigned char **reply,
                         size_t *reply_len, int timeout_ms);

/* Daemon side: binds home's control socket (replacing a stale one; the caller holds the daemon
 * lock), the peer check, and one frame in each direction. */
int datadir_control_listen(const char *home, int *fd);
int datadir_control_peer_ok(int fd);
int datadir_control_recv(int fd, unsigned char **body, size_t *len, int timeout_ms);
int datadir_control_send(int fd, const void *body, size_t len, int timeout_ms);

/*
 * Daemon side of DATADIR_CTL_SIGN: one C_Sign-style signature (mech PKCS#11 CKM_ECDSA: in is a
 * digest, out raw r||s; CKM_RSA_PKCS: in is a DigestInfo) with the key `label` this process
 * holds. Only the issuing CA key and the audit key, each only with its own mechanism.
 * *out_len: size of out, then length.
 */
#define DATADIR_SIGN_LABEL_MAX 128  /* a key label in a sign request */
#define DATADIR_SIGN_IN_MAX    512  /* its input: a digest or an RSA DigestInfo */
#define DATADIR_SIGN_OUT_MAX   1024 /* the signature: RSA-8192 at most */
int datadir_key_sign(struct datadir *dd, const char *label, unsigned long mech,
                     const unsigned char *in, size_t in_len, unsigned char *out, size_t *out_len);

/* The locks in run/: DATADIR_LOCK_DAEMON (one mqpkid per data directory, held for its life)
 * and DATADIR_LOCK_TOKEN (one process at a time opens the CA token). Waits up to wait_ms;
 * MQPKI_ERR_BUSY with *holder (the pid noted in the lock file, 0 unknown) when still held. */
#define DATADIR_LOCK_DAEMON "run/mqpkid.lock"
#define DATADIR_LOCK_TOKEN  "run/token.lock"
int datadir_lock_take(const char *home, const char *rel, int wait_ms, int *fd, pid_t *holder);
void datadir_lock_release(int fd);

/*
 * Audit checkpoints (docs/security.md, "Audit"): the audit key, generated in the CA's token
 * like the CA keys and certified by the root in ca/audit.pem, signs the head of the audit
 * chain. Only the process that holds the token signs: mqpkid while it runs (a command signs
 * through its control socket), else the command itself.
 */

/*
 * Signs a checkpoint of the audit chain's current head with the audit key and exports the
 * newest checkpoint to crl/audit-checkpoint.json. inv: the store handle to use (NULL: the data
 * directory's own; mqpkid's publisher passes its own). When the newest checkpoint already
 * certifies the head nothing is signed (*made 0) and the export is still refreshed.
 * MQPKI_ERR_STATE when no audit key is open (datadir_ca_open opens it); MQPKI_ERR_TAMPERED
 * when the chain does not extend the previous checkpoint. out and made may be NULL.
 */
int datadir_audit_checkpoint(struct datadir *dd, struct inventory *inv,
                             struct inventory_audit_checkpoint *out, int *made);

/* Writes the store's newest checkpoint to crl/audit-checkpoint.json (0644, atomically) under
 * the publication lock, so that the file never goes back to an older one. */
int datadir_audit_export(struct datadir *dd, struct inventory *inv);

/* A checkpoint as JSON (what crl/audit-checkpoint.json and PROTO_TOPIC_AUDIT_CHECKPOINT carry):
 * heap text (caller frees) of at most PROTO_AUDIT_JSON_MAX bytes. */
int datadir_audit_json(struct datadir *dd, const struct inventory_audit_checkpoint *cp, char **json,
                       size_t *len);

/* Parses such JSON strictly (size, types, no duplicate or unknown fields). It proves nothing
 * before its signature is checked. */
int datadir_audit_parse(const unsigned char *text, size_t len,
                        struct inventory_audit_checkpoint *out);

/* What datadir_audit_verify checked. */
#define DATADIR_AUDIT_COPIES_MAX 8
struct datadir_audit_report {
    struct inventory_audit_report store; /* the chain and the checkpoints in the store */
    int have_key;                        /* 1 when ca/audit.pem exists */
    char key_fp[PROTO_FP_HEX_LEN + 1];   /* its key's SHA-256 fingerprint */
    size_t n_copies;                     /* copies checked: crl/audit-checkpoint.json, files */
    struct {
        char source[PATH_MAX];
        int64_t id;
    } copies[DATADIR_AUDIT_COPIES_MAX];
};

/*
 * `mqpki audit verify`: the audit key's certificate (signed by ca/root.pem; its key the one
 * [audit] key_fingerprint pins, when set), every event and every checkpoint of the store
 * (inventory_audit_verify_signed), and the copies kept outside it: crl/audit-checkpoint.json
 * when present, plus files[0..n_files) (copies taken from a broker's retained message, or
 * kept elsewhere). With an audit key, a store without any checkpoint is tampering (mqpki makes
 * one as soon as the key exists). MQPKI_ERR_TAMPERED with a detail naming the event, the
 * checkpoint or the file. out is filled in either case.
 */
int datadir_audit_verify(struct datadir *dd, const char *const *files, size_t n_files,
                         struct datadir_audit_report *out);

/* What a publication did (datadir_publish). */
struct datadir_publication {
    int by_daemon;        /* 1 when the running mqpkid published (and fed its brokers) */
    int signed_count;     /* CRLs signed */
    int64_t full_number;  /* newest full CRL afterwards, -1 when none */
    int64_t delta_number; /* newest delta CRL afterwards, -1 when none */
    int brokers;          /* brokers registered with mqpkid's feed (by_daemon only) */
    int brokers_linked;   /* of which connected */
};

/*
 * Finishes every open CRL publication (lifecycle_publish): through the running mqpkid when
 * there is one (it signs, exports and feeds its brokers at once; with DATADIR_PUBLISH_RESEND
 * it also sends its newest CRLs to every broker again), else here, opening the CA when
 * something must be signed. out may be NULL.
 */
#define DATADIR_PUBLISH_RESEND 1u
int datadir_publish(struct datadir *dd, unsigned flags, struct datadir_publication *out);

/*
 * `mqpki backup`: one tar archive at out (0600, written to a temporary name, fsynced, renamed)
 * holding the store (SQLite's backup API: consistent while mqpkid runs), the token's
 * last-known-good object files, mqpki.conf, ca/, crl/, tls/, the bundled brokers' files and,
 * with DATADIR_BACKUP_SECRETS, secrets/pin and secrets/so-pin; a MANIFEST of SHA-256 sums is
 * its last entry. Records meta backup.last_at (RFC 3339, UTC). Needs DATADIR_STORE only.
 */
#define DATADIR_BACKUP_SECRETS 1u
struct datadir_backup_report {
    size_t files;
    uint64_t bytes;
    int with_secrets;
};
int datadir_backup(struct datadir *dd, const char *out, unsigned flags,
                   struct datadir_backup_report *rep);

/*
 * `mqpki restore`: unpacks file into a staging directory beside home, checks every file against
 * the manifest (only regular files with plain relative names, size caps), rebuilds the token
 * from its good copies (the PIN from the archive, else MQPKI_PIN, written to secrets/pin when
 * the configuration keeps it there), runs the token self-test (sign and verify with the
 * issuing key) and audit verify, raises the CRL number above the highest one the backup knows
 * of (store, crl/, brokers' kept CRLs) by a margin, records meta drill.last_at and renames the
 * result to home. home must not exist or be empty (MQPKI_ERR_EXISTS): a live directory is
 * never overwritten. Nothing is left at home on failure.
 */
struct datadir_restore_report {
    size_t files;
    int64_t crl_high;     /* the highest CRL number the backup knows of */
    int64_t crl_next;     /* the restored CA's next CRL number; 0: a PostgreSQL store, untouched */
    int64_t audit_events; /* audit events verified */
};
int datadir_restore(const char *file, const char *home, struct datadir_restore_report *rep);

/* datadir_publish only when a publication is open (a crash left one, or another process is
 * about to finish it): every mutating command calls this before its own work. */
int datadir_publish_pending(struct datadir *dd);

#endif
