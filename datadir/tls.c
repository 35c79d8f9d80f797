/* datadir: mqpkid's own TLS identity in tls/: issued at init, renewed before expiry. A software
 * key: the only PEM private key of the data directory, a leaf that can be revoked like any. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "common.h"
#include "datadir_int.h"
#include "lifecycle.h"
#include "inventory.h"
#include "proto.h"

/*
 * Install order, so that a crash at any point leaves a matching key and certificate:
 *   1. tls/mqpkid.key.next, then tls/mqpkid.pem.next (each written atomically);
 *   2. rename key.next -> mqpkid.key, then pem.next -> mqpkid.pem.
 * pem.next present means both .next files are complete: finish step 2 (roll forward). Only
 * key.next present means step 1 was cut short: drop it (the old pair is intact).
 */
static int install_recover_pair(struct datadir *dd, const char *key_rel, const char *pem_rel)
{
    char key_next[PATH_MAX], pem_next[PATH_MAX], key[PATH_MAX], pem[PATH_MAX], rel[PATH_MAX];
    struct stat st;

    if (datadir_path(dd, key_rel, key) != MQPKI_OK || datadir_path(dd, pem_rel, pem) != MQPKI_OK ||
        mqpki_path(rel, sizeof(rel), "%s.next", key_rel) != MQPKI_OK ||
        datadir_path(dd, rel, key_next) != MQPKI_OK ||
        mqpki_path(rel, sizeof(rel), "%s.next", pem_rel) != MQPKI_OK ||
        datadir_path(dd, rel, pem_next) != MQPKI_OK)
        return MQPKI_ERR_INVALID;
    if (stat(pem_next, &st) == 0) {
        if (stat(key_next, &st) == 0 && rename(key_next, key) != 0)
            return mqpki_fail(MQPKI_ERR_IO, "%s: %s", key, strerror(errno));
        if (rename(pem_next, pem) != 0)
            return mqpki_fail(MQPKI_ERR_IO, "%s: %s", pem, strerror(errno));
        return MQPKI_OK;
    }
    if (stat(key_next, &st) == 0)
        (void)unlink(key_next);
    return MQPKI_OK;
}

/* Where a renewable identity lives and what it is. */
struct pair {
    const char *asset;
    int profile;
    const char *actor;
    const char *key_rel, *pem_rel; /* under the data directory */
};

static int issue_pair(struct datadir *dd, const struct datadir_names *names, int supersede,
                      const struct pair *pr);

int datadir_tls_issue(struct datadir *dd, const struct datadir_names *names, int supersede)
{
    struct pair pr = {DATADIR_SERVICE_ASSET, CA_PROFILE_SERVICE, supersede ? "mqpkid" : "init",
                      "tls/mqpkid.key", "tls/mqpkid.pem"};

    return issue_pair(dd, names, supersede, &pr);
}

static int issue_pair(struct datadir *dd, const struct datadir_names *names, int supersede,
                      const struct pair *pr)
{
    const char *dns[DATADIR_NAMES_MAX], *ips[DATADIR_NAMES_MAX];
    struct lifecycle_issue_req req;
    EVP_PKEY *key = NULL;
    X509_REQ *csr = NULL;
    X509 *cert = NULL;
    unsigned char *der = NULL;
    BIO *bio = NULL;
    char *key_pem = NULL, *cert_pem = NULL, *chain_pem = NULL, *both = NULL, path[PATH_MAX];
    char rel[PATH_MAX];
    size_t cert_len = 0, chain_len = 0;
    long key_len = 0;
    int der_len, rc;

    for (size_t i = 0; i < names->n_dns; i++)
        dns[i] = names->dns[i];
    for (size_t i = 0; i < names->n_ips; i++)
        ips[i] = names->ips[i];
    if ((key = EVP_EC_gen("P-256")) == NULL || (csr = X509_REQ_new()) == NULL ||
        X509_REQ_set_pubkey(csr, key) != 1 || X509_REQ_sign(csr, key, EVP_sha256()) <= 0 ||
        (der_len = i2d_X509_REQ(csr, &der)) <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "%s: cannot make a TLS key and request", pr->asset);
        goto out;
    }
    memset(&req, 0, sizeof(req));
    req.asset_id = pr->asset;
    req.csr = der;
    req.csr_len = (size_t)der_len;
    req.profile = pr->profile;
    if (pr->profile == CA_PROFILE_BROKER)
        datadir_profile_days(&dd->cfg, req.profile_days);
    req.supersede = supersede;
    req.actor = pr->actor;
    req.dns = dns;
    req.n_dns = names->n_dns;
    req.ips = ips;
    req.n_ips = names->n_ips;
    if ((rc = lifecycle_issue(datadir_ca(dd), dd->inv, &req, &cert)) != MQPKI_OK)
        goto out;
    if ((bio = BIO_new(BIO_s_mem())) == NULL ||
        PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        (key_len = BIO_get_mem_data(bio, &key_pem)) <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "%s: cannot encode the TLS key", pr->asset);
        goto out;
    }
    if ((rc = ca_cert_pem(cert, &cert_pem, &cert_len)) != MQPKI_OK ||
        (rc = ca_cert_pem(ca_issuing_cert(datadir_ca(dd)), &chain_pem, &chain_len)) != MQPKI_OK)
        goto out;
    if ((both = malloc(cert_len + chain_len)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    memcpy(both, cert_pem, cert_len);
    memcpy(both + cert_len, chain_pem, chain_len);
    if (mqpki_path(rel, sizeof(rel), "%s.next", pr->key_rel) != MQPKI_OK ||
        (rc = datadir_path(dd, rel, path)) != MQPKI_OK ||
        (rc = mqpki_file_write_atomic(path, key_pem, (size_t)key_len, 0600)) != MQPKI_OK ||
        mqpki_path(rel, sizeof(rel), "%s.next", pr->pem_rel) != MQPKI_OK ||
        (rc = datadir_path(dd, rel, path)) != MQPKI_OK ||
        (rc = mqpki_file_write_atomic(path, both, cert_len + chain_len, 0644)) != MQPKI_OK) {
        rc = rc != MQPKI_OK ? rc : mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", pr->key_rel);
        goto out;
    }
    rc = install_recover_pair(dd, pr->key_rel, pr->pem_rel);
out:
    if (bio != NULL) {
        if (key_pem != NULL && key_len > 0)
            OPENSSL_cleanse(key_pem, (size_t)key_len);
        BIO_free(bio);
    }
    free(both);
    free(cert_pem);
    free(chain_pem);
    OPENSSL_free(der);
    X509_free(cert);
    X509_REQ_free(csr);
    EVP_PKEY_free(key);
    return rc;
}

/* The DNS and IP names of the current certificate, to renew it for the same names. */
static int current_names(X509 *cert, struct datadir_names *n)
{
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);

    memset(n, 0, sizeof(*n));
    for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_DNS && n->n_dns < DATADIR_NAMES_MAX &&
            ASN1_STRING_length(g->d.dNSName) < (int)sizeof(n->dns[0])) {
            snprintf(n->dns[n->n_dns++], sizeof(n->dns[0]), "%.*s",
                     ASN1_STRING_length(g->d.dNSName),
                     (const char *)ASN1_STRING_get0_data(g->d.dNSName));
        } else if (g->type == GEN_IPADD && n->n_ips < DATADIR_NAMES_MAX) {
            int len = ASN1_STRING_length(g->d.iPAddress);
            const unsigned char *ip = ASN1_STRING_get0_data(g->d.iPAddress);
            if ((len == 4 && inet_ntop(AF_INET, ip, n->ips[n->n_ips], sizeof(n->ips[0]))) ||
                (len == 16 && inet_ntop(AF_INET6, ip, n->ips[n->n_ips], sizeof(n->ips[0]))))
                n->n_ips++;
        }
    }
    GENERAL_NAMES_free(gens);
    return MQPKI_OK;
}

static int renew_pair(struct datadir *dd, int force, int *renewed, const struct pair *pr)
{
    struct datadir_names names;
    char path[PATH_MAX];
    unsigned char *pem = NULL;
    size_t len;
    X509 *cert = NULL;
    int64_t nb, na;
    int rc;

    *renewed = 0;
    if ((rc = install_recover_pair(dd, pr->key_rel, pr->pem_rel)) != MQPKI_OK)
        return rc;
    if ((rc = datadir_path(dd, pr->pem_rel, path)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, 256 * 1024, &pem, &len)) != MQPKI_OK)
        goto out;
    {
        /* The leaf comes first; the issuing CA follows it in the same file. */
        BIO *bio = BIO_new_mem_buf(pem, (int)len);
        cert = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
    }
    if (cert == NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: no certificate", path);
        goto out;
    }
    if (proto_asn1_time(X509_get0_notBefore(cert), &nb) != 0 ||
        proto_asn1_time(X509_get0_notAfter(cert), &na) != 0) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: unreadable validity", path);
        goto out;
    }
    /* Due two thirds into its lifetime, or at once when an older issuing CA generation issued
     * it (after `mqpki ca rollover`, so that the old one can be retired). */
    if (!force && mqpki_now() < nb + (na - nb) * 2 / 3 &&
        X509_check_issued(ca_issuing_cert(datadir_ca(dd)), cert) == X509_V_OK)
        goto out;
    if ((rc = current_names(cert, &names)) != MQPKI_OK ||
        (rc = issue_pair(dd, &names, 1, pr)) != MQPKI_OK)
        goto out;
    *renewed = 1;
out:
    free(pem);
    X509_free(cert);
    return rc;
}

int datadir_tls_renew(struct datadir *dd, int force, int *renewed)
{
    struct pair pr = {DATADIR_SERVICE_ASSET, CA_PROFILE_SERVICE, "mqpkid", "tls/mqpkid.key",
                      "tls/mqpkid.pem"};

    return renew_pair(dd, force, renewed, &pr);
}

/* The pid `mqpki broker run NAME` noted (run/broker-NAME.pid), when that process is still the
 * broker's Mosquitto: named mosquitto and running in brokers/NAME/. 0 otherwise. */
static pid_t broker_pid(struct datadir *dd, const char *name)
{
    char rel[PATH_MAX], path[PATH_MAX], dir[PATH_MAX], want[PATH_MAX], cwd[PATH_MAX], comm[32];
    unsigned char *text = NULL;
    size_t len = 0;
    long pid = 0;
    ssize_t n;
    FILE *f;

    if (mqpki_path(rel, sizeof(rel), "run/broker-%s.pid", name) != MQPKI_OK ||
        datadir_path(dd, rel, path) != MQPKI_OK ||
        mqpki_file_read(path, 32, &text, &len) != MQPKI_OK || len == 0) {
        mqpki_err_clear();
        goto out;
    }
    text[len - 1] = text[len - 1] == '\n' ? '\0' : text[len - 1];
    pid = strtol((char *)text, NULL, 10);
    if (pid <= 1 || mqpki_path(rel, sizeof(rel), "brokers/%s", name) != MQPKI_OK ||
        datadir_path(dd, rel, dir) != MQPKI_OK || realpath(dir, want) == NULL)
        goto none;
    snprintf(path, sizeof(path), "/proc/%ld/cwd", pid);
    if ((n = readlink(path, cwd, sizeof(cwd) - 1)) <= 0)
        goto none;
    cwd[n] = '\0';
    snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
    if (strcmp(cwd, want) != 0 || (f = fopen(path, "r")) == NULL)
        goto none;
    if (fgets(comm, sizeof(comm), f) == NULL)
        comm[0] = '\0';
    fclose(f);
    if (strcmp(comm, "mosquitto\n") == 0)
        goto out;
none:
    pid = 0;
out:
    free(text);
    return (pid_t)pid;
}

int datadir_broker_renew(struct datadir *dd, const char *name, int force, int *renewed,
                         pid_t *reloaded)
{
    char key_rel[PATH_MAX], pem_rel[PATH_MAX];
    struct pair pr;
    pid_t pid;
    int rc;

    *renewed = 0;
    *reloaded = 0;
    if (!proto_asset_id_valid(name))
        return mqpki_fail(MQPKI_ERR_INVALID, "broker name '%.80s' is not valid", name);
    if (mqpki_path(key_rel, sizeof(key_rel), "brokers/%s/broker.key", name) != MQPKI_OK ||
        mqpki_path(pem_rel, sizeof(pem_rel), "brokers/%s/broker.pem", name) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "broker name too long");
    pr.asset = name;
    pr.profile = CA_PROFILE_BROKER;
    pr.actor = dd->actor;
    pr.key_rel = key_rel;
    pr.pem_rel = pem_rel;
    if ((rc = renew_pair(dd, force, renewed, &pr)) != MQPKI_OK || !*renewed)
        return rc;
    /* Mosquitto reads its certificate and key again on SIGHUP, for new connections; the
     * clients connected stay connected. */
    if ((pid = broker_pid(dd, name)) > 0 && kill(pid, SIGHUP) == 0)
        *reloaded = pid;
    return MQPKI_OK;
}

int datadir_brokers_renew(struct datadir *dd)
{
    char dir[PATH_MAX];
    struct dirent **list = NULL;
    int n, renewed, count = 0;
    pid_t reloaded;

    if (datadir_path(dd, "brokers", dir) != MQPKI_OK ||
        (n = scandir(dir, &list, NULL, alphasort)) < 0)
        return 0;
    for (int i = 0; i < n; i++) {
        if (list[i]->d_name[0] != '.' && proto_asset_id_valid(list[i]->d_name)) {
            if (datadir_broker_renew(dd, list[i]->d_name, 0, &renewed, &reloaded) != MQPKI_OK)
                mqpki_log(MQPKI_LOG_ERROR, "broker %s: certificate renewal failed: %s",
                          list[i]->d_name, mqpki_err_detail(MQPKI_ERR_IO));
            else if (renewed) {
                count++;
                mqpki_log(MQPKI_LOG_INFO, "broker %s: certificate renewed with its names%s",
                          list[i]->d_name, reloaded ? "; Mosquitto reloaded it (SIGHUP)" : "");
            }
        }
        free(list[i]);
    }
    free(list);
    return count;
}
