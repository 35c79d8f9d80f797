/*
 * datadir/audit.c: the audit key and its checkpoints in a data directory (datadir.h,
 * docs/security.md "Audit").
 *
 * The audit key lives in the CA's token beside the CA keys (label DATADIR_AUDIT_KEY), generated
 * there and never extractable; ca/audit.pem is its certificate, signed by the root, so that
 * whoever can write the data directory but cannot use the root key cannot put another key in
 * its place. A checkpoint is signed by whichever process holds the token: mqpkid, or a command
 * when mqpkid is not running; a command with mqpkid running signs through the control socket
 * (datadir_remote_key, DATADIR_CTL_SIGN), as it does with the issuing key.
 *
 * A checkpoint, step by step, and what a kill at each step leaves:
 *   1. one store transaction (inventory_audit_checkpoint): head read, chain since the previous
 *      checkpoint checked, signature, row inserted. Killed before the commit: nothing; the
 *      signature was never stored or shown. After the commit the checkpoint is the truth.
 *   2. export: the store's newest checkpoint to crl/audit-checkpoint.json, atomically, under
 *      the publication lock. Killed before the rename: the file holds the checkpoint before
 *      (or none), which verifies as an older copy; the next checkpoint, or mqpkid's next start,
 *      exports the newest. A temporary file may be left; it is never read.
 *   3. mqpkid only: the feed publishes the newest checkpoint retained on
 *      PROTO_TOPIC_AUDIT_CHECKPOINT; a broker that (re)connects gets it from the store, and the
 *      publisher offers every newer one it finds in the store within a second, so one signed
 *      by a command reaches the brokers too.
 * Steps 2 and 3 are exports: nothing reads them back except `audit verify`, which checks that
 * the store still holds, unchanged, what they hold.
 */
#include "datadir.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "ca.h"
#include "common.h"
#include "datadir_int.h"
#include "hsm.h"
#include "inventory.h"

/* The publication lock is shared with CRL exports; a checkpoint export never waits long for
 * a large CRL: the next export writes the newest checkpoint anyway. */
#define AUDIT_EXPORT_LOCK_MS 5000

int datadir_audit_cert(const char *home, X509 **out)
{
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len = 0;
    int rc;

    *out = NULL;
    if (mqpki_path(path, sizeof(path), "%s/%s", home, DATADIR_AUDIT_CERT) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((rc = mqpki_file_read(path, 64 * 1024, &pem, &len)) != MQPKI_OK)
        return rc;
    rc = ca_cert_from_pem((const char *)pem, len, out);
    free(pem);
    if (rc != MQPKI_OK)
        rc = mqpki_fail(MQPKI_ERR_TAMPERED, "%s: not a certificate", path);
    return rc;
}

/* Certifies key with the root CA and writes ca/audit.pem. */
static int write_audit_cert(struct datadir *dd, EVP_PKEY *key)
{
    char path[PATH_MAX], name[160], *pem = NULL;
    unsigned char *root_pem = NULL;
    EVP_PKEY *root_key = NULL;
    X509 *root = NULL, *cert = NULL;
    size_t len = 0;
    int rc;

    if ((rc = datadir_path(dd, "ca/root.pem", path)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, 64 * 1024, &root_pem, &len)) != MQPKI_OK ||
        (rc = ca_cert_from_pem((const char *)root_pem, len, &root)) != MQPKI_OK)
        goto out;
    if ((rc = hsm_key_load(dd->hsm, DATADIR_ROOT_KEY, &root_key)) != MQPKI_OK)
        goto out;
    snprintf(name, sizeof(name), "%s Audit Key", dd->cfg.ca_name);
    if ((rc = ca_audit_cert_create(root, root_key, key, name, AUDIT_CERT_DAYS, &cert)) !=
            MQPKI_OK ||
        (rc = ca_cert_pem(cert, &pem, &len)) != MQPKI_OK ||
        (rc = datadir_path(dd, DATADIR_AUDIT_CERT, path)) != MQPKI_OK)
        goto out;
    rc = mqpki_file_write_atomic(path, pem, len, 0644);
out:
    free(pem);
    free(root_pem);
    X509_free(cert);
    X509_free(root);
    EVP_PKEY_free(root_key);
    return rc;
}

/* The audit key is of the CA's key type: a token that holds the CA keys can make it. */
static enum hsm_key_type key_type_of(const char *name)
{
    if (strcmp(name, "ec-p384") == 0)
        return HSM_KEY_EC_P384;
    if (strcmp(name, "rsa-3072") == 0)
        return HSM_KEY_RSA_3072;
    return HSM_KEY_EC_P256;
}

void datadir_audit_open_local(struct datadir *dd)
{
    struct inventory_audit_checkpoint cp;
    char fp[PROTO_FP_HEX_LEN + 1];
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    int rc, have_cert;

    if (dd->audit_key != NULL || dd->hsm == NULL)
        return;
    rc = datadir_audit_cert(dd->home, &cert);
    have_cert = rc == MQPKI_OK;
    if (rc != MQPKI_OK && rc != MQPKI_ERR_NOT_FOUND) {
        mqpki_log(MQPKI_LOG_ERROR, "audit: %s; no checkpoint is signed", mqpki_err_detail(rc));
        goto out;
    }
    rc = hsm_key_load(dd->hsm, DATADIR_AUDIT_KEY, &key);
    if (rc == MQPKI_ERR_NOT_FOUND && have_cert) {
        /* Another key would leave every checkpoint signed so far unverifiable. */
        mqpki_log(MQPKI_LOG_ERROR,
                  "audit: the token has no key '%s' but %s exists; not generating another "
                  "one, no checkpoint is signed (restore the token, docs/security.md)",
                  DATADIR_AUDIT_KEY, DATADIR_AUDIT_CERT);
        goto out;
    }
    if (rc == MQPKI_ERR_NOT_FOUND) {
        /* A data directory from before audit checkpoints: the key comes with this open. */
        if ((rc = hsm_key_generate(dd->hsm, DATADIR_AUDIT_KEY, key_type_of(dd->cfg.key_type))) !=
                MQPKI_OK ||
            (rc = hsm_key_load(dd->hsm, DATADIR_AUDIT_KEY, &key)) != MQPKI_OK) {
            mqpki_log(MQPKI_LOG_ERROR, "audit: cannot generate the audit key: %s",
                      mqpki_err_detail(rc));
            goto out;
        }
        mqpki_log(MQPKI_LOG_WARN,
                  "audit: generated the audit key '%s' in the token (this data directory "
                  "predates signed audit checkpoints)",
                  DATADIR_AUDIT_KEY);
    } else if (rc != MQPKI_OK) {
        mqpki_log(MQPKI_LOG_ERROR, "audit: cannot load the audit key: %s", mqpki_err_detail(rc));
        goto out;
    }
    if (!have_cert) {
        /* Killed between the key and this file: the next open finds the key and writes it. */
        if ((rc = write_audit_cert(dd, key)) != MQPKI_OK) {
            mqpki_log(MQPKI_LOG_ERROR, "audit: cannot write %s: %s", DATADIR_AUDIT_CERT,
                      mqpki_err_detail(rc));
            goto out;
        }
        X509_free(cert);
        cert = NULL;
        if (datadir_audit_cert(dd->home, &cert) == MQPKI_OK &&
            ca_pubkey_fingerprint(X509_get0_pubkey(cert), fp) == MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN,
                      "audit: wrote %s (the audit key, certified by the root CA); pin it in "
                      "mqpki.conf: [audit] key_fingerprint = %s",
                      DATADIR_AUDIT_CERT, fp);
    } else if (EVP_PKEY_eq(X509_get0_pubkey(cert), key) != 1) {
        ERR_clear_error();
        mqpki_log(MQPKI_LOG_ERROR,
                  "audit: %s does not hold the token's audit key; no checkpoint is signed "
                  "until that is resolved (docs/security.md)",
                  DATADIR_AUDIT_CERT);
        goto out;
    }
    dd->audit_key = key;
    key = NULL;
    /* With an audit key, a store without checkpoints means they were deleted: make the first
     * one now, so that this is never the case by accident for long. */
    if (dd->inv != NULL) {
        rc = inventory_audit_checkpoint_latest(dd->inv, &cp);
        if (rc == MQPKI_ERR_NOT_FOUND &&
            (rc = datadir_audit_checkpoint(dd, NULL, NULL, NULL)) != MQPKI_OK)
            mqpki_log(MQPKI_LOG_WARN, "audit: first checkpoint: %s", mqpki_err_detail(rc));
    }
out:
    /* Whatever went wrong is logged: the caller's own work goes on without checkpoints. */
    mqpki_err_clear();
    EVP_PKEY_free(key);
    X509_free(cert);
}

void datadir_audit_open_remote(struct datadir *dd)
{
    X509 *cert = NULL;
    int rc;

    if (dd->audit_key != NULL)
        return;
    rc = datadir_audit_cert(dd->home, &cert);
    if (rc == MQPKI_OK)
        rc =
            datadir_remote_key(dd->home, DATADIR_AUDIT_KEY, X509_get0_pubkey(cert), &dd->audit_key);
    if (rc != MQPKI_OK && rc != MQPKI_ERR_NOT_FOUND)
        mqpki_log(MQPKI_LOG_WARN, "audit: %s", mqpki_err_detail(rc));
    mqpki_err_clear();
    X509_free(cert);
}

/* inventory_audit_sign_fn over an EVP_PKEY: a token key, or mqpkid's through the socket. */
static int sign_with(void *ctx, const unsigned char *tbs, size_t tbs_len, unsigned char *sig,
                     size_t *sig_len)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int rc = MQPKI_OK;

    /* SHA-256 whatever the key: what proto_audit_verify and `openssl dgst -sha256` check. */
    if (md == NULL || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, ctx) != 1 ||
        EVP_DigestSign(md, sig, sig_len, tbs, tbs_len) != 1) {
        ERR_clear_error();
        rc = mqpki_fail(MQPKI_ERR_HSM, "audit key '%s': signature failed", DATADIR_AUDIT_KEY);
    }
    EVP_MD_CTX_free(md);
    return rc;
}

int datadir_audit_checkpoint(struct datadir *dd, struct inventory *inv,
                             struct inventory_audit_checkpoint *out, int *made)
{
    struct inventory_audit_checkpoint cp;
    int rc, m = 0;

    if (made != NULL)
        *made = 0;
    if (inv == NULL)
        inv = dd->inv;
    if (inv == NULL)
        return mqpki_fail(MQPKI_ERR_STATE, "audit checkpoint: the store is not open");
    if (dd->audit_key == NULL)
        return mqpki_fail(MQPKI_ERR_STATE,
                          "no audit key is open: %s or the token's key '%s' is missing (see "
                          "mqpkid's log)",
                          DATADIR_AUDIT_CERT, DATADIR_AUDIT_KEY);
    rc = inventory_audit_checkpoint(inv, DATADIR_AUDIT_KEY, sign_with, dd->audit_key, &cp, &m);
    if (rc != MQPKI_OK)
        return rc;
    /* Debug: a command's stderr stays for what the operator must read; mqpkid logs it. */
    if (m)
        mqpki_log(MQPKI_LOG_DEBUG, "audit: checkpoint %lld signed (event %lld)", (long long)cp.id,
                  (long long)cp.seq);
    if (out != NULL)
        *out = cp;
    if (made != NULL)
        *made = m;
    /* Committed: the file is an export of the store, healed by the next one. */
    if ((rc = datadir_audit_export(dd, inv)) != MQPKI_OK) {
        char detail[300];
        snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
        rc = mqpki_fail(rc,
                        "checkpoint %lld is signed and kept in the store, but %s was not "
                        "written: %s",
                        (long long)cp.id, DATADIR_AUDIT_EXPORT, detail);
    }
    return rc;
}

int datadir_audit_json(struct datadir *dd, const struct inventory_audit_checkpoint *cp, char **json,
                       size_t *len)
{
    char head[2 * PROTO_AUDIT_HASH_LEN + 1], when[32], fp[PROTO_FP_HEX_LEN + 1] = "";
    unsigned char b64[4 * ((PROTO_AUDIT_SIG_MAX + 2) / 3) + 1];
    X509 *cert = NULL;
    json_t *v = NULL;
    int rc = MQPKI_OK;

    *json = NULL;
    *len = 0;
    /* The fingerprint names the key for a reader; the signature is what proves anything. */
    if (datadir_audit_cert(dd->home, &cert) == MQPKI_OK)
        (void)ca_pubkey_fingerprint(X509_get0_pubkey(cert), fp);
    mqpki_err_clear();
    mqpki_hex(cp->head, PROTO_AUDIT_HASH_LEN, head);
    mqpki_time_str(cp->time, when);
    EVP_EncodeBlock(b64, cp->signature, (int)cp->sig_len);
    v = json_pack("{s:s, s:i, s:I, s:I, s:s, s:I, s:s, s:s, s:s, s:s, s:s}", "type",
                  "mqpki-audit-checkpoint", "version", 1, "id", (json_int_t)cp->id, "seq",
                  (json_int_t)cp->seq, "head", head, "time", (json_int_t)cp->time, "time_utc", when,
                  "key", cp->key_label, "key_fingerprint", fp, "alg", "sha256", "signature",
                  (const char *)b64);
    if (v == NULL || (*json = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    *len = strlen(*json);
out:
    json_decref(v);
    X509_free(cert);
    return rc;
}

/* Exactly 2 * len hex digits into out; 1 on success. */
static int unhex(const char *hex, unsigned char *out, size_t len)
{
    size_t got = 0;

    return hex != NULL && strlen(hex) == 2 * len &&
           OPENSSL_hexstr2buf_ex(out, len, &got, hex, '\0') == 1 && got == len;
}

int datadir_audit_parse(const unsigned char *text, size_t len,
                        struct inventory_audit_checkpoint *out)
{
    static const char *const known[] = {
        "type", "version",         "id",  "seq",      "head", "time", "time_utc",
        "key",  "key_fingerprint", "alg", "signature"};
    unsigned char raw[4 * ((PROTO_AUDIT_SIG_MAX + 2) / 3) + 3];
    const char *type, *head, *key, *alg, *sig;
    json_t *v = NULL, *id, *seq, *time;
    json_error_t jerr;
    const char *name;
    json_t *value;
    size_t sig_b64;
    int n, rc = MQPKI_OK;

    memset(out, 0, sizeof(*out));
    if (len == 0 || len > PROTO_AUDIT_JSON_MAX) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "audit checkpoint of %zu bytes", len);
        goto out;
    }
    v = json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(v)) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "audit checkpoint: not a JSON object");
        goto out;
    }
    json_object_foreach(v, name, value)
    {
        size_t i = 0;
        while (i < sizeof(known) / sizeof(known[0]) && strcmp(name, known[i]) != 0)
            i++;
        if (i == sizeof(known) / sizeof(known[0])) {
            rc = mqpki_fail(MQPKI_ERR_PARSE, "audit checkpoint: unknown field");
            goto out;
        }
    }
    type = json_string_value(json_object_get(v, "type"));
    id = json_object_get(v, "id");
    seq = json_object_get(v, "seq");
    time = json_object_get(v, "time");
    head = json_string_value(json_object_get(v, "head"));
    key = json_string_value(json_object_get(v, "key"));
    alg = json_string_value(json_object_get(v, "alg"));
    sig = json_string_value(json_object_get(v, "signature"));
    if (type == NULL || strcmp(type, "mqpki-audit-checkpoint") != 0 ||
        json_integer_value(json_object_get(v, "version")) != 1 || !json_is_integer(id) ||
        !json_is_integer(seq) || !json_is_integer(time) || json_integer_value(id) < 1 ||
        json_integer_value(seq) < 1 || !unhex(head, out->head, PROTO_AUDIT_HASH_LEN) ||
        key == NULL || strlen(key) >= sizeof(out->key_label) || alg == NULL ||
        strcmp(alg, "sha256") != 0 || sig == NULL || (sig_b64 = strlen(sig)) == 0 ||
        sig_b64 % 4 != 0 || sig_b64 >= sizeof(raw)) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "audit checkpoint: missing or malformed fields");
        goto out;
    }
    n = EVP_DecodeBlock(raw, (const unsigned char *)sig, (int)sig_b64);
    /* EVP_DecodeBlock counts the padding's zero bytes: take them off again. */
    if (n > 0 && sig[sig_b64 - 1] == '=')
        n -= sig[sig_b64 - 2] == '=' ? 2 : 1;
    if (n <= 0 || (size_t)n > PROTO_AUDIT_SIG_MAX) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "audit checkpoint: malformed signature");
        goto out;
    }
    out->id = json_integer_value(id);
    out->seq = json_integer_value(seq);
    out->time = json_integer_value(time);
    snprintf(out->key_label, sizeof(out->key_label), "%s", key);
    memcpy(out->signature, raw, (size_t)n);
    out->sig_len = (size_t)n;
out:
    json_decref(v);
    return rc;
}

int datadir_audit_export(struct datadir *dd, struct inventory *inv)
{
    struct inventory_audit_checkpoint cp;
    char path[PATH_MAX], *json = NULL;
    size_t len = 0;
    int rc, locked = 0;

    if (inv == NULL)
        inv = dd->inv;
    /* One writer at a time, each writing the store's newest: the file never goes back. */
    if ((rc = inventory_publish_lock(inv, AUDIT_EXPORT_LOCK_MS)) != MQPKI_OK)
        goto out;
    locked = 1;
    if ((rc = inventory_audit_checkpoint_latest(inv, &cp)) != MQPKI_OK ||
        (rc = datadir_audit_json(dd, &cp, &json, &len)) != MQPKI_OK ||
        (rc = datadir_path(dd, DATADIR_AUDIT_EXPORT, path)) != MQPKI_OK)
        goto out;
    rc = mqpki_file_write_atomic(path, json, len, 0644);
out:
    if (locked)
        inventory_publish_unlock(inv);
    free(json);
    return rc;
}

/* Reads one copy kept outside the store. own: our export (damage there is tampering: it is
 * only ever replaced whole). */
static int read_copy(const char *path, int own, struct inventory_audit_checkpoint *out)
{
    unsigned char *text = NULL;
    size_t len = 0;
    int rc;

    rc = mqpki_file_read(path, PROTO_AUDIT_JSON_MAX, &text, &len);
    if (rc == MQPKI_OK && (rc = datadir_audit_parse(text, len, out)) != MQPKI_OK)
        rc = mqpki_fail(own ? MQPKI_ERR_TAMPERED : rc, "%s: %s", path,
                        mqpki_err_detail(MQPKI_ERR_PARSE));
    free(text);
    return rc;
}

/* The audit public key: ca/audit.pem, signed by the root, pinned by mqpki.conf when it says. */
static int audit_pubkey(struct datadir *dd, X509 **cert, struct datadir_audit_report *rep)
{
    unsigned char *pem = NULL;
    char path[PATH_MAX];
    X509 *root = NULL;
    size_t len = 0;
    int rc;

    rc = datadir_audit_cert(dd->home, cert);
    if (rc == MQPKI_ERR_NOT_FOUND) {
        mqpki_err_clear();
        if (dd->cfg.audit_key_fp[0] != '\0')
            return mqpki_fail(MQPKI_ERR_TAMPERED,
                              "%s is missing, but mqpki.conf pins an audit key ([audit] "
                              "key_fingerprint)",
                              DATADIR_AUDIT_CERT);
        return MQPKI_OK;
    }
    if (rc != MQPKI_OK)
        return rc;
    rep->have_key = 1;
    if ((rc = ca_pubkey_fingerprint(X509_get0_pubkey(*cert), rep->key_fp)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_path(dd, "ca/root.pem", path)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, 64 * 1024, &pem, &len)) != MQPKI_OK ||
        (rc = ca_cert_from_pem((const char *)pem, len, &root)) != MQPKI_OK)
        goto out;
    /* Another key in ca/audit.pem would need the root key to certify it. */
    if (X509_verify(*cert, X509_get0_pubkey(root)) != 1) {
        ERR_clear_error();
        rc = mqpki_fail(MQPKI_ERR_TAMPERED, "%s is not signed by the root CA (ca/root.pem)",
                        DATADIR_AUDIT_CERT);
        goto out;
    }
    if (dd->cfg.audit_key_fp[0] != '\0' && strcmp(dd->cfg.audit_key_fp, rep->key_fp) != 0)
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "%s holds the audit key %s, but mqpki.conf pins %s ([audit] "
                        "key_fingerprint)",
                        DATADIR_AUDIT_CERT, rep->key_fp, dd->cfg.audit_key_fp);
out:
    free(pem);
    X509_free(root);
    return rc;
}

int datadir_audit_verify(struct datadir *dd, const char *const *files, size_t n_files,
                         struct datadir_audit_report *out)
{
    struct inventory_audit_checkpoint copies[DATADIR_AUDIT_COPIES_MAX];
    const char *sources[DATADIR_AUDIT_COPIES_MAX];
    struct datadir_audit_report mine;
    char own[PATH_MAX];
    X509 *cert = NULL;
    struct stat st;
    size_t n = 0;
    int rc;

    if (out == NULL)
        out = &mine;
    memset(out, 0, sizeof(*out));
    if (dd->inv == NULL)
        return mqpki_fail(MQPKI_ERR_STATE, "audit verify: the store is not open");
    if (n_files + 1 > DATADIR_AUDIT_COPIES_MAX)
        return mqpki_fail(MQPKI_ERR_INVALID, "at most %d checkpoint files",
                          DATADIR_AUDIT_COPIES_MAX - 1);
    if ((rc = audit_pubkey(dd, &cert, out)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_path(dd, DATADIR_AUDIT_EXPORT, own)) != MQPKI_OK)
        goto out;
    /* Our own export first, when there is one; a missing file is no evidence either way. */
    if (lstat(own, &st) == 0) {
        snprintf(out->copies[n].source, sizeof(out->copies[n].source), "%s", DATADIR_AUDIT_EXPORT);
        if ((rc = read_copy(own, 1, &copies[n])) != MQPKI_OK)
            goto out;
        n++;
    }
    for (size_t i = 0; i < n_files; i++, n++) {
        snprintf(out->copies[n].source, sizeof(out->copies[n].source), "%s", files[i]);
        if ((rc = read_copy(files[i], 0, &copies[n])) != MQPKI_OK)
            goto out;
    }
    for (size_t i = 0; i < n; i++) {
        sources[i] = out->copies[i].source;
        out->copies[i].id = copies[i].id;
    }
    out->n_copies = n;
    rc = inventory_audit_verify_signed(dd->inv, cert != NULL ? X509_get0_pubkey(cert) : NULL,
                                       copies, sources, n, &out->store);
    if (rc == MQPKI_OK && out->have_key && out->store.checkpoints == 0)
        rc = mqpki_fail(MQPKI_ERR_TAMPERED,
                        "audit log: the store holds no signed checkpoint although the audit "
                        "key exists (%s): checkpoints were deleted (mqpki signs one as soon as "
                        "the key exists; `mqpki audit checkpoint` signs one now)",
                        DATADIR_AUDIT_CERT);
out:
    X509_free(cert);
    return rc;
}
