/* datadir: opening one data directory and deriving its CRL files. */
#include "datadir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>

#include "ca.h"
#include "common.h"
#include "datadir_int.h"
#include "hsm.h"
#include "inventory.h"
#include "lifecycle.h"

int datadir_resolve_home(const char *arg, char out[PATH_MAX])
{
    const char *home = arg;
    char cwd[PATH_MAX];

    if (home == NULL || home[0] == '\0')
        home = getenv("MQPKI_HOME");
    if (home == NULL || home[0] == '\0')
        home = "mqpki-data";
    if (home[0] == '/')
        return mqpki_path(out, PATH_MAX, "%s", home) == MQPKI_OK
                   ? MQPKI_OK
                   : mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return mqpki_fail(MQPKI_ERR_IO, "cannot read the current directory");
    if (mqpki_path(out, PATH_MAX, "%s/%s", cwd, home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    return MQPKI_OK;
}

int datadir_path(const struct datadir *dd, const char *rel, char out[PATH_MAX])
{
    if (mqpki_path(out, PATH_MAX, "%s/%s", dd->home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dd->home);
    return MQPKI_OK;
}

int datadir_hsm_open(const char *home, const struct datadir_config *cfg, struct hsm **out)
{
    struct hsm_config hc;
    char pin[HSM_PIN_MAX], dir[PATH_MAX];
    int rc;

    *out = NULL;
    memset(&hc, 0, sizeof(hc));
    hc.module = cfg->hsm_module[0] != '\0' ? cfg->hsm_module : HSM_SOFTHSM_MODULE;
    hc.token_label = cfg->hsm_token;
    if (cfg->hsm_module[0] == '\0') {
        if (mqpki_path(dir, sizeof(dir), "%s/hsm", home) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
        if ((rc = hsm_softhsm_prepare(dir)) != MQPKI_OK)
            return rc;
        hc.softhsm_dir = dir; /* guarded: good copies in hsm/tokens.good */
    }
    rc = hsm_pin_read(cfg->pin_file, pin);
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(rc, "no token PIN: set MQPKI_PIN or [hsm] pin_file (%s is missing)",
                        cfg->pin_file);
    if (rc != MQPKI_OK)
        goto out;
    hc.pin = pin;
    /* A token can be briefly unreadable (a module or another tool rewriting its files): retry a
     * few times before calling it a failure; a wrong PIN is final at once (no lockout race). */
    for (int attempt = 0; attempt < HSM_OPEN_TRIES; attempt++) {
        struct timespec pause = {0, (long)(attempt + 1) * 100 * 1000 * 1000};
        if ((rc = hsm_open(&hc, out)) == MQPKI_OK || rc == MQPKI_ERR_AUTH ||
            rc == MQPKI_ERR_INVALID || attempt + 1 == HSM_OPEN_TRIES)
            break;
        mqpki_log(MQPKI_LOG_WARN, "CA token not usable (%s); trying again", mqpki_err_detail(rc));
        nanosleep(&pause, NULL);
    }
    /* The token configured for this CA is missing or unusable: our failure, not the command's
     * input (exit status 2). */
    if (rc == MQPKI_ERR_NOT_FOUND)
        rc = mqpki_fail(MQPKI_ERR_HSM, "%s (check [hsm] module and token in mqpki.conf)",
                        mqpki_err_detail(rc));
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    return rc;
}

/* hsm/softhsm2.conf written for home's current location (hsm_softhsm_prepare). */
static int softhsm_derive(const char *home)
{
    char dir[PATH_MAX];

    if (mqpki_path(dir, sizeof(dir), "%s/hsm", home) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    return hsm_softhsm_prepare(dir);
}

int datadir_load_cert(const char *home, const char *rel, X509 **out)
{
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len;
    int rc;

    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((rc = mqpki_file_read(path, 64 * 1024, &pem, &len)) != MQPKI_OK)
        return rc;
    rc = ca_cert_from_pem((const char *)pem, len, out);
    free(pem);
    return rc;
}

void datadir_lifecycle_config(const struct datadir_config *cfg, struct lifecycle_config *lc)
{
    memset(lc, 0, sizeof(*lc));
    lc->crl_validity = cfg->crl_validity;
    lc->crl_full_every = cfg->crl_full_every;
    lc->crl_full_after = cfg->crl_full_after;
    lc->crl_delta_max = cfg->crl_delta_max;
}

/* 1 when process pid no longer runs: gone, or exited and not reaped yet (a zombie). */
static int pid_gone(long pid)
{
    char path[64], text[256], *paren;
    ssize_t n;
    int fd;

    if (kill((pid_t)pid, 0) != 0)
        return errno == ESRCH;
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return errno == ENOENT;
    n = read(fd, text, sizeof(text) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    /* "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows the last. */
    if ((paren = strrchr(text, ')')) == NULL || paren[1] != ' ')
        return 0;
    return paren[2] == 'Z' || paren[2] == 'X';
}

/*
 * 1 when the mqpkid that last held the daemon lock is gone: the pid it wrote there no longer
 * runs (a pid reused meanwhile reads as alive, the safe side). A mqpkid killed closes its sockets
 * a moment before it is a zombie: it is watched for up to wait_ms. Never takes the lock, so a
 * mqpkid starting at that moment is not turned away.
 */
static int daemon_gone(const char *home, int wait_ms)
{
    char path[PATH_MAX], text[32];
    ssize_t n;
    long pid;
    int fd;

    if (mqpki_path(path, sizeof(path), "%s/%s", home, DATADIR_LOCK_DAEMON) != MQPKI_OK)
        return 0;
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return 0;
    n = pread(fd, text, sizeof(text) - 1, 0);
    close(fd);
    if (n <= 0)
        return 0;
    text[n] = '\0';
    if ((pid = strtol(text, NULL, 10)) <= 0)
        return 0;
    for (int waited = 0;; waited += 20) {
        struct timespec ms20 = {0, 20 * 1000 * 1000};
        if (pid_gone(pid))
            return 1;
        if (waited >= wait_ms)
            return 0;
        nanosleep(&ms20, NULL);
    }
}

/* 1 when a mqpkid answers on this data directory's control socket. */
static int daemon_alive(const char *home)
{
    unsigned char ping = DATADIR_CTL_PING, *reply = NULL;
    size_t len = 0;
    int rc = datadir_control_call(home, &ping, 1, &reply, &len, 5000);

    free(reply);
    mqpki_err_clear();
    return rc == MQPKI_OK;
}

/*
 * The CA key: while mqpkid runs, it alone opens the CA token, and a command signs through it;
 * otherwise the command takes the token lock (waiting for another command, or for a mqpkid that
 * is starting, which it then signs through) and opens the token itself.
 */
static int64_t elapsed_ms(const struct timespec *since)
{
    struct timespec now;

    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

static int open_key(struct datadir *dd, X509 *issuing, int gen, EVP_PKEY **key)
{
    struct timespec start;
    char label[DATADIR_ISSUER_LABEL_MAX];
    pid_t holder = 0;
    int said = 0, rc;

    datadir_issuer_label(gen, label);

    if (dd->daemon_mode)
        goto local;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        if (daemon_alive(dd->home)) {
            dd->remote = 1;
            datadir_audit_open_remote(dd);
            return datadir_remote_key(dd->home, label, X509_get0_pubkey(issuing), key);
        }
        rc = datadir_lock_take(dd->home, DATADIR_LOCK_TOKEN, 100, &dd->token_lock, &holder);
        if (rc == MQPKI_OK)
            break;
        if (rc != MQPKI_ERR_BUSY)
            return rc;
        /* Wall time, not rounds: a ping of a busy mqpkid may take seconds itself. */
        if (elapsed_ms(&start) >= TOKEN_WAIT_MS)
            return mqpki_fail(MQPKI_ERR_BUSY,
                              "the CA token is in use by process %ld (another mqpki command or "
                              "a mqpkid starting) and was not released within %d s",
                              (long)holder, TOKEN_WAIT_MS / 1000);
        if (!said && elapsed_ms(&start) >= 1000) {
            mqpki_log(MQPKI_LOG_INFO, "waiting for process %ld to release the CA token",
                      (long)holder);
            said = 1;
        }
    }
local:
    if (dd->hsm == NULL && (rc = datadir_hsm_open(dd->home, &dd->cfg, &dd->hsm)) != MQPKI_OK)
        return rc;
    if ((rc = hsm_key_load(dd->hsm, label, key)) != MQPKI_OK)
        return rc;
    /* Whoever holds the token signs the audit checkpoints (and makes the key if it is new). */
    datadir_audit_open_local(dd);
    return MQPKI_OK;
}

int datadir_ca_open(struct datadir *dd)
{
    X509 *root = NULL, *issuing = NULL;
    EVP_PKEY *key = NULL;
    struct ca *ca = NULL;
    int rc, gen = 1;

    if (datadir_ca(dd) != NULL)
        return MQPKI_OK;
    if ((rc = datadir_load_cert(dd->home, "ca/root.pem", &root)) != MQPKI_OK)
        goto out;
    /* The key is the one of the certificate read here (its generation), whatever a rollover
     * elsewhere writes meanwhile. */
    if ((rc = datadir_load_cert(dd->home, "ca/issuing.pem", &issuing)) != MQPKI_OK ||
        (rc = datadir_issuer_gen_of(dd->home, issuing, &gen)) != MQPKI_OK)
        goto out;
    if ((rc = open_key(dd, issuing, gen, &key)) != MQPKI_OK)
        goto out;
    if ((rc = ca_open(issuing, key, root, dd->cfg.url, &ca)) != MQPKI_OK)
        goto out;
    rc = datadir_ca_swap(dd, ca, key, gen);
    key = NULL;
out:
    X509_free(root);
    X509_free(issuing);
    EVP_PKEY_free(key);
    return rc;
}

/*
 * Removes what killed processes left of their atomic writes (NAME.tmp.PID of a dead PID) in
 * the directories mqpki writes to; the token directories are p11's own guard's to judge.
 */
static void sweep_tmp(const char *home)
{
    static const char *const dirs[] = {"",     "/secrets", "/ca", "/ca/issuers",
                                       "/tls", "/crl",     "/hsm"};
    char path[PATH_MAX];
    struct dirent *e;
    DIR *d;
    int n, total = 0;

    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        if (mqpki_path(path, sizeof(path), "%s%s", home, dirs[i]) == MQPKI_OK &&
            mqpki_file_sweep_tmp(path, &n) == MQPKI_OK)
            total += n;
    /* Older issuing CA generations' CRL copies (datadir/issuers.c). */
    for (int g = 1; g <= DATADIR_ISSUERS_MAX; g++)
        if (mqpki_path(path, sizeof(path), "%s/crl/generation-%d", home, g) == MQPKI_OK &&
            access(path, F_OK) == 0 && mqpki_file_sweep_tmp(path, &n) == MQPKI_OK)
            total += n;
    /* brokers/NAME/ and the plugin's brokers/NAME/state/. */
    if (mqpki_path(path, sizeof(path), "%s/brokers", home) == MQPKI_OK &&
        (d = opendir(path)) != NULL) {
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            if (mqpki_path(path, sizeof(path), "%s/brokers/%s", home, e->d_name) == MQPKI_OK &&
                mqpki_file_sweep_tmp(path, &n) == MQPKI_OK)
                total += n;
            if (mqpki_path(path, sizeof(path), "%s/brokers/%s/state", home, e->d_name) ==
                    MQPKI_OK &&
                mqpki_file_sweep_tmp(path, &n) == MQPKI_OK)
                total += n;
        }
        closedir(d);
    }
    mqpki_err_clear();
    if (total > 0)
        mqpki_log(MQPKI_LOG_DEBUG, "removed %d temporary file%s left by killed processes", total,
                  total == 1 ? "" : "s");
}

static char store_override[1024];

int datadir_set_store(const char *url)
{
    const char *at, *scheme;

    if (url == NULL) {
        store_override[0] = '\0';
        return MQPKI_OK;
    }
    if (!inventory_target_is_remote(url) || strlen(url) >= sizeof(store_override))
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "--store: a postgresql:// URL is expected (the embedded store is the "
                          "data directory's mqpki.db)");
    scheme = strstr(url, "://") + 3;
    at = strchr(scheme, '@');
    if ((at != NULL && memchr(scheme, ':', (size_t)(at - scheme)) != NULL) ||
        strstr(url, "password=") != NULL)
        return mqpki_fail(MQPKI_ERR_INVALID,
                          "--store: the URL holds a password, which every local user could read "
                          "on the command line; put the URL in mqpki.conf ([store] url, 0600) or "
                          "the password in a libpq password file (~/.pgpass)");
    memcpy(store_override, url, strlen(url) + 1);
    return MQPKI_OK;
}

int datadir_store_target(const struct datadir *dd, char out[PATH_MAX])
{
    const char *url = store_override[0] != '\0' ? store_override : dd->cfg.store_url;

    if (url[0] == '\0')
        return datadir_path(dd, "mqpki.db", out);
    if (strlen(url) >= PATH_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "store URL too long");
    memcpy(out, url, strlen(url) + 1);
    return MQPKI_OK;
}

int datadir_open(const char *home, unsigned what, struct datadir **out)
{
    struct datadir *dd;
    struct lifecycle_config lcfg;
    char path[PATH_MAX];
    int rc;

    *out = NULL;
    if ((dd = calloc(1, sizeof(*dd))) == NULL)
        return MQPKI_ERR_NOMEM;
    snprintf(dd->home, sizeof(dd->home), "%s", home);
    dd->actor = "cli";
    dd->token_lock = dd->daemon_lock = -1;
    if ((rc = datadir_config_load(home, &dd->cfg)) != MQPKI_OK)
        goto out;
    sweep_tmp(home);
    /* Derived files follow the directory's current location from the first opening on (a
     * directory moved, copied or restored, or one written before they were derived). */
    if (dd->cfg.hsm_module[0] == '\0' && (rc = softhsm_derive(home)) != MQPKI_OK)
        goto out;
    if (what & DATADIR_DAEMON) {
        pid_t holder = 0;
        dd->daemon_mode = 1;
        dd->actor = "mqpkid";
        rc = datadir_lock_take(home, DATADIR_LOCK_DAEMON, 0, &dd->daemon_lock, &holder);
        if (rc == MQPKI_ERR_BUSY)
            rc = mqpki_fail(MQPKI_ERR_EXISTS, "mqpkid (pid %ld) already serves %s", (long)holder,
                            home);
        if (rc != MQPKI_OK)
            goto out;
        /* A command that opened the token finishes first; then it is ours until we stop. */
        rc = datadir_lock_take(home, DATADIR_LOCK_TOKEN, TOKEN_WAIT_MS, &dd->token_lock, &holder);
        if (rc == MQPKI_ERR_BUSY)
            rc = mqpki_fail(rc, "the CA token is held by process %ld", (long)holder);
        if (rc != MQPKI_OK)
            goto out;
    }
    if (what & (DATADIR_STORE | DATADIR_CA)) {
        if ((rc = datadir_store_target(dd, path)) != MQPKI_OK)
            goto out;
        if ((rc = inventory_open(path, &dd->inv)) != MQPKI_OK)
            goto out;
        /* Once per store: fingerprints of an older rule brought to the canonical one. */
        if ((rc = lifecycle_keys_canonical(dd->inv, NULL)) != MQPKI_OK)
            goto out;
        datadir_lifecycle_config(&dd->cfg, &lcfg);
        if ((rc = lifecycle_new(dd->inv, &lcfg, &dd->lc)) != MQPKI_OK)
            goto out;
    }
    if ((what & DATADIR_CA) && (rc = datadir_ca_open(dd)) != MQPKI_OK)
        goto out;
    *out = dd;
    dd = NULL;
out:
    datadir_close(dd);
    return rc;
}

static void signer_free(struct datadir_signer *s)
{
    if (s == NULL)
        return;
    ca_free(s->ca);
    EVP_PKEY_free(s->key);
    free(s);
}

void datadir_close(struct datadir *dd)
{
    if (dd == NULL)
        return;
    /* Token keys go before the token session they sign through. */
    signer_free(dd->signer);
    for (size_t i = 0; i < dd->n_old; i++)
        signer_free(dd->old_signers[i]);
    for (size_t i = 0; i <= DATADIR_ISSUERS_MAX; i++)
        ca_free(dd->gen_ca[i]);
    EVP_PKEY_free(dd->audit_key);
    hsm_close(dd->hsm);
    /* After the token is closed: the next holder finds it consistent. */
    datadir_lock_release(dd->token_lock);
    datadir_lock_release(dd->daemon_lock);
    lifecycle_free(dd->lc);
    inventory_close(dd->inv);
    free(dd);
}

const char *datadir_home(const struct datadir *dd)
{
    return dd->home;
}

const struct datadir_config *datadir_config(const struct datadir *dd)
{
    return &dd->cfg;
}

struct inventory *datadir_inventory(struct datadir *dd)
{
    return dd->inv;
}

struct lifecycle *datadir_lifecycle(struct datadir *dd)
{
    return dd->lc;
}

/* dd->signer changes under threads that read it (a rollover in mqpkid): one atomic pointer to
 * a signer never changed once published, and what is replaced stays until datadir_close. */
struct datadir_signer *datadir_signer(struct datadir *dd)
{
    return __atomic_load_n(&dd->signer, __ATOMIC_ACQUIRE);
}

struct ca *datadir_ca(struct datadir *dd)
{
    struct datadir_signer *s = datadir_signer(dd);

    return s != NULL ? s->ca : NULL;
}

EVP_PKEY *datadir_ca_key(struct datadir *dd)
{
    struct datadir_signer *s = datadir_signer(dd);

    return s != NULL ? s->key : NULL;
}

int datadir_ca_swap(struct datadir *dd, struct ca *ca, EVP_PKEY *key, int gen)
{
    static pthread_mutex_t swap_lock = PTHREAD_MUTEX_INITIALIZER;
    struct datadir_signer *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        ca_free(ca);
        EVP_PKEY_free(key);
        return MQPKI_ERR_NOMEM;
    }
    s->ca = ca;
    s->key = key;
    s->gen = gen;
    pthread_mutex_lock(&swap_lock);
    /* A reader may still hold the one replaced: kept (a process sees a handful of rollovers at
     * most; past DATADIR_ISSUERS_MAX of them the oldest is left allocated, never freed). */
    if (dd->signer != NULL && dd->n_old < DATADIR_ISSUERS_MAX)
        dd->old_signers[dd->n_old++] = dd->signer;
    __atomic_store_n(&dd->signer, s, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&swap_lock);
    return MQPKI_OK;
}

int datadir_ca_remote(const struct datadir *dd)
{
    return dd->remote;
}

/* Exporters write one kind's files one at a time, never a lower number after a higher one:
 * the threads of one process (mqpkid's publisher and its full CRL signer, catch-up) through
 * export_lock, processes through an flock on crl/.export-lock, under which crl/exported is read
 * and written. */
static pthread_mutex_t export_lock = PTHREAD_MUTEX_INITIALIZER;

static int crl_export(struct datadir *dd, const struct inventory_crl *c, const unsigned char *der,
                      size_t len)
{
    char path[PATH_MAX], *pem = NULL;
    size_t pem_len = 0;
    int rc;

    if (c->kind == INV_CRL_DELTA) {
        if ((rc = datadir_path(dd, "crl/issuing-delta.crl", path)) != MQPKI_OK)
            return rc;
        return mqpki_file_write_atomic(path, der, len, 0644);
    }
    if ((rc = datadir_path(dd, "crl/issuing.crl", path)) != MQPKI_OK ||
        (rc = mqpki_file_write_atomic(path, der, len, 0644)) != MQPKI_OK)
        return rc;
    /* The same full CRL as PEM, for mqpkid's /crl/issuing.pem and tools that want PEM; after
     * the DER, which is what consumers of the files wait for. Encoded from the signed DER as it
     * is: parsing a million entries back would cost more than signing them. */
    if ((rc = ca_crl_der_pem(der, len, &pem, &pem_len)) == MQPKI_OK &&
        (rc = datadir_path(dd, "crl/issuing.pem", path)) == MQPKI_OK)
        rc = mqpki_file_write_atomic(path, pem, pem_len, 0644);
    free(pem);
    return rc;
}

/* What crl/exported says (export_lock and the flock held); missing or unreadable: not known. */
static void exported_load(struct datadir *dd)
{
    char path[PATH_MAX];
    unsigned char *text = NULL;
    size_t len = 0;
    long long full = -1, delta = -1;

    if (!(datadir_path(dd, "crl/exported", path) == MQPKI_OK &&
          mqpki_file_read(path, 64, &text, &len) == MQPKI_OK &&
          sscanf((const char *)text, "%lld %lld", &full, &delta) == 2 && full >= -1 && delta >= -1))
        full = delta = -1;
    /* Atomic: datadir_crl_exported reads them without the lock while a full CRL is written. */
    __atomic_store_n(&dd->exported[INV_CRL_FULL], (int64_t)full, __ATOMIC_RELAXED);
    __atomic_store_n(&dd->exported[INV_CRL_DELTA], (int64_t)delta, __ATOMIC_RELAXED);
    free(text);
    mqpki_err_clear();
}

/* Takes export_lock and the flock on crl/.export-lock; -1 when the lock file cannot be had. */
static int export_begin(struct datadir *dd)
{
    char path[PATH_MAX];
    int fd = -1;

    pthread_mutex_lock(&export_lock);
    if (datadir_path(dd, "crl/.export-lock", path) == MQPKI_OK &&
        (fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) >= 0) {
        while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
            ;
    }
    exported_load(dd);
    return fd;
}

/* export_begin without waiting: -2 when another thread or process is exporting (a full CRL of
 * tens of MB takes a second); -1 when the lock file cannot be opened. */
static int export_try_begin(struct datadir *dd)
{
    char path[PATH_MAX];
    int fd = -1;

    if (pthread_mutex_trylock(&export_lock) != 0)
        return -2;
    if (datadir_path(dd, "crl/.export-lock", path) == MQPKI_OK &&
        (fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) >= 0) {
        int rc;
        while ((rc = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
            ;
        /* Busy only when someone holds it; a file system without flock goes on as
         * export_begin does. */
        if (rc != 0 && errno == EWOULDBLOCK) {
            close(fd);
            pthread_mutex_unlock(&export_lock);
            return -2;
        }
    }
    exported_load(dd);
    return fd;
}

static void export_end(int fd)
{
    if (fd >= 0)
        close(fd); /* releases the flock */
    pthread_mutex_unlock(&export_lock);
}

int64_t datadir_crl_exported(struct datadir *dd, int kind)
{
    int64_t n;

    if (kind != INV_CRL_FULL && kind != INV_CRL_DELTA)
        return -1;
    /* While a full CRL is being written, what this process saw last (a lower number at worst:
     * the caller's export, which checks again under the lock, finds it current). */
    int fd = export_try_begin(dd);

    if (fd == -2)
        return __atomic_load_n(&dd->exported[kind], __ATOMIC_RELAXED);
    n = dd->exported[kind];
    export_end(fd);
    return n;
}

void datadir_generations_sync(struct datadir *dd)
{
    int fd;

    /* Never rolled over (the usual case, every publication cycle): nothing to take a lock for. */
    if (!datadir_issuers_rolled(dd->home))
        return;
    /* Never behind a full CRL being written (the next cycle catches up): a revocation waiting
     * for this cycle's answer must not wait for tens of MB. */
    fd = export_try_begin(dd);
    if (fd == -2)
        return;
    if (fd >= 0)
        datadir_generations_export(dd);
    export_end(fd);
}

int datadir_crl_export(struct datadir *dd, const struct inventory_crl *c, const unsigned char *der,
                       size_t len)
{
    char path[PATH_MAX], text[64];
    int rc = MQPKI_OK, n, fd;

    if (c->kind != INV_CRL_FULL && c->kind != INV_CRL_DELTA)
        return mqpki_fail(MQPKI_ERR_INVALID, "CRL %lld: no kind to export", (long long)c->number);
    /* A delta never waits for a full CRL being written (a second for tens of MB: the
     * revocation that signed it would wait for its answer): it stays signed, and the writer of
     * the full CRL, or the next publication cycle, exports it. */
    fd = c->kind == INV_CRL_DELTA ? export_try_begin(dd) : export_begin(dd);
    if (fd == -2)
        return mqpki_fail(MQPKI_ERR_BUSY,
                          "delta CRL %lld follows the full CRL being written to crl/",
                          (long long)c->number);
    if (fd < 0) {
        rc = mqpki_fail(errno == ENOSPC ? MQPKI_ERR_NOSPACE : MQPKI_ERR_IO,
                        "%s/crl/.export-lock: %s", dd->home, strerror(errno));
        goto out;
    }
    if (c->number <= dd->exported[c->kind])
        goto out;
    /* Its base is not in crl/ yet (a data directory from before crl/exported: not known). */
    if (c->kind == INV_CRL_DELTA && dd->exported[INV_CRL_FULL] >= 0 &&
        c->base > dd->exported[INV_CRL_FULL]) {
        rc = mqpki_fail(MQPKI_ERR_BUSY, "delta CRL %lld waits for its base, full CRL %lld, in crl/",
                        (long long)c->number, (long long)c->base);
        goto out;
    }
    if ((rc = crl_export(dd, c, der, len)) != MQPKI_OK)
        goto out;
    __atomic_store_n(&dd->exported[c->kind], c->number, __ATOMIC_RELAXED);
    n = snprintf(text, sizeof(text), "%lld %lld\n", (long long)dd->exported[INV_CRL_FULL],
                 (long long)dd->exported[INV_CRL_DELTA]);
    if ((rc = datadir_path(dd, "crl/exported", path)) == MQPKI_OK)
        rc = mqpki_file_write_atomic(path, text, (size_t)n, 0644);
out:
    /* Also when this one was not newer: older generations catch up with what crl/ holds. */
    if (fd >= 0 && (rc == MQPKI_OK || rc == MQPKI_ERR_BUSY)) {
        char detail[400];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        datadir_generations_export(dd);
        if (rc == MQPKI_OK)
            mqpki_err_clear();
        else
            mqpki_fail(rc, "%s", detail);
    }
    export_end(fd);
    return rc;
}

static int export_sink(void *ctx, const struct inventory_crl *c, const unsigned char *der,
                       size_t len)
{
    return datadir_crl_export(ctx, c, der, len);
}

/* Asks the running mqpkid to publish: it signs with the token it holds, feeds its brokers at once
 * and exports. MQPKI_ERR_NOT_FOUND when no mqpkid serves this data directory. */
static int publish_by_daemon(struct datadir *dd, int resend, struct datadir_publication *out)
{
    unsigned char req[2] = {DATADIR_CTL_PUBLISH, (unsigned char)(resend ? 1 : 0)}, *reply = NULL;
    size_t len = 0;
    json_error_t err;
    json_t *v = NULL;
    int rc;

    rc = datadir_control_call(dd->home, req, sizeof(req), &reply, &len, CONTROL_WAIT_MS);
    /* mqpkid died (killed, crashed) while it had the request. A publication can be run again,
     * so a command holding no signer of mqpkid's finishes it: here, or through the mqpkid that
     * starts meanwhile. A mqpkid that is alive but slow is not second-guessed. */
    if (rc == MQPKI_ERR_IO && !dd->remote && daemon_gone(dd->home, DAEMON_EXIT_MS)) {
        char why[200];
        snprintf(why, sizeof(why), "%s", mqpki_err_detail(rc));
        mqpki_log(MQPKI_LOG_WARN,
                  "mqpkid stopped before it answered (%s); this command "
                  "finishes the publication",
                  why);
        return mqpki_fail(MQPKI_ERR_NOT_FOUND, "mqpkid stopped");
    }
    if (rc != MQPKI_OK)
        goto out;
    v = json_loadb((const char *)reply + 1, len - 1, 0, &err);
    if (!json_is_object(v)) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "mqpkid: unreadable publication report");
        goto out;
    }
    out->by_daemon = 1;
    out->signed_count = (int)json_integer_value(json_object_get(v, "signed"));
    out->full_number = json_integer_value(json_object_get(v, "full"));
    out->delta_number = json_integer_value(json_object_get(v, "delta"));
    out->brokers = (int)json_integer_value(json_object_get(v, "brokers"));
    out->brokers_linked = (int)json_integer_value(json_object_get(v, "linked"));
out:
    json_decref(v);
    free(reply);
    return rc;
}

int datadir_publish(struct datadir *dd, unsigned flags, struct datadir_publication *out)
{
    struct datadir_publication mine;
    struct lifecycle_publication pub;
    struct lifecycle_sink sink = {NULL, export_sink, dd};
    int64_t open = 0;
    int rc;

    if (out == NULL)
        out = &mine;
    memset(out, 0, sizeof(*out));
    out->full_number = out->delta_number = -1;
    if (dd->lc == NULL)
        return mqpki_fail(MQPKI_ERR_STATE, "datadir_publish: the store is not open");
    rc = publish_by_daemon(dd, (flags & DATADIR_PUBLISH_RESEND) != 0, out);
    if (rc != MQPKI_ERR_NOT_FOUND)
        return rc;
    mqpki_err_clear();
    /* The CA is needed only for what is pending, not for an export left over. */
    if ((rc = lifecycle_open_count(dd->lc, &open)) != MQPKI_OK)
        return rc;
    if (open > 0 && (rc = datadir_ca_open(dd)) != MQPKI_OK)
        return rc;
    /* mqpkid came up meanwhile: it publishes. Signing through it while holding the publication
     * lock here would have it wait for this command, and this command for it. */
    if (dd->remote) {
        rc = publish_by_daemon(dd, (flags & DATADIR_PUBLISH_RESEND) != 0, out);
        if (rc != MQPKI_ERR_NOT_FOUND)
            return rc;
        return mqpki_fail(MQPKI_ERR_STATE, "mqpkid stopped while this command used it; run the "
                                           "command again");
    }
    rc = lifecycle_publish(dd->lc, datadir_ca(dd), &sink, dd->actor, PUBLISH_LOCK_MS, &pub);
    out->signed_count = pub.signed_count;
    out->full_number = pub.full_number;
    out->delta_number = pub.delta_number;
    /* Every CRL publication is anchored: a checkpoint of the audit chain (crl.sign included).
     * It never fails the publication, which is durable and out already. */
    if (rc == MQPKI_OK && pub.signed_count > 0 && dd->audit_key != NULL) {
        int crc = datadir_audit_checkpoint(dd, NULL, NULL, NULL);
        if (crc != MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN, "audit checkpoint: %s", mqpki_err_detail(crc));
        mqpki_err_clear();
    }
    return rc;
}

static int note_oldest(const struct inventory_crl *c, void *ctx)
{
    int64_t *oldest = ctx;

    if (*oldest == 0 || c->created_at < *oldest)
        *oldest = c->created_at;
    return 0;
}

int datadir_publish_pending(struct datadir *dd)
{
    int64_t open = 0, oldest = 0;
    int rc;

    if (dd->lc == NULL)
        return MQPKI_OK;
    if ((rc = inventory_crl_open(dd->inv, note_oldest, &oldest, &open)) != MQPKI_OK || open == 0)
        return rc;
    /* Another command's publication in flight is routine; one left by a command that died is
     * worth a line (mqpkid would have finished it within a second). */
    mqpki_log(mqpki_now() - oldest >= STALE_PUBLICATION_S ? MQPKI_LOG_INFO : MQPKI_LOG_DEBUG,
              "finishing %lld CRL publication%s left open", (long long)open, open == 1 ? "" : "s");
    return datadir_publish(dd, 0, NULL);
}
