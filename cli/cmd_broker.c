/*
 * cli: the bundled broker (broker init, broker remove, broker run) and crl-sync, the CRL feed
 * consumer for other brokers (DESIGN.md 3 and 6, docs/broker.md).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "lifecycle.h"
#include "inventory.h"
#include "proto.h"

#define PLUGIN_NAME "mqpki_mosquitto.so"
#define CHAIN_MAX   (256 * 1024)

/* ---- broker init ---------------------------------------------------------------------- */

#ifndef MQPKI_PLUGIN_RELDIR
#define MQPKI_PLUGIN_RELDIR "lib/mqpki"
#endif

/*
 * The plugin that belongs to this binary, found from where it runs (/proc/self/exe), so that a
 * moved install or a build tree each find their own: PREFIX/bin/mqpki looks in
 * PREFIX/MQPKI_PLUGIN_RELDIR/ (installed: /usr/lib/x86_64-linux-gnu/mqpki/), then in
 * PREFIX/lib/ (the build tree: build/bin/mqpki, build/lib/).
 */
static int plugin_path(char out[PATH_MAX])
{
    static const char *const dirs[] = {MQPKI_PLUGIN_RELDIR, "lib"};
    char exe[PATH_MAX], *slash;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    struct stat st;
    size_t i;
    int rc = MQPKI_OK;

    if (n <= 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot find the mqpki binary (/proc/self/exe)");
        goto out;
    }
    exe[n] = '\0';
    if ((slash = strrchr(exe, '/')) != NULL)
        *slash = '\0';
    if ((slash = strrchr(exe, '/')) != NULL)
        *slash = '\0';
    for (i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (mqpki_path(out, PATH_MAX, "%s/%s/%s", exe, dirs[i], PLUGIN_NAME) != MQPKI_OK) {
            rc = mqpki_fail(MQPKI_ERR_INVALID, "plugin path too long");
            goto out;
        }
        if (stat(out, &st) == 0)
            goto out;
    }
    rc = mqpki_fail(MQPKI_ERR_NOT_FOUND,
                    "the broker plugin %s is missing from %s/%s/ and %s/lib/ (build it, or "
                    "install the mqpki-broker-plugin package)",
                    PLUGIN_NAME, exe, MQPKI_PLUGIN_RELDIR, exe);
out:
    return rc;
}

static int is_ip(const char *h)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

static int valid_host(const char *h)
{
    size_t n = strlen(h);
    return n > 0 && n <= 253 &&
           strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") == n &&
           h[0] != '-';
}

/* Asset NAME of kind broker: registered now unless it exists (then it must be a broker). */
static int ensure_broker_asset(struct inventory *inv, const char *name)
{
    struct inventory_asset a;
    int rc;

    memset(&a, 0, sizeof(a));
    rc = inventory_asset_get(inv, name, &a);
    if (rc == MQPKI_OK && a.kind != INV_KIND_BROKER)
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s exists and is a %s, not a broker", name,
                        inventory_kind_name(a.kind));
    inventory_asset_clear(&a);
    if (rc != MQPKI_ERR_NOT_FOUND)
        goto out;
    mqpki_err_clear();
    memset(&a, 0, sizeof(a));
    snprintf(a.id, sizeof(a.id), "%s", name);
    a.kind = INV_KIND_BROKER;
    snprintf(a.model, sizeof(a.model), "mosquitto (bundled)");
    rc = inventory_asset_add(inv, &a, "cli");
out:
    return rc;
}

/* A software EC P-256 key and a certificate of the broker profile for it. */
static int issue_broker_cert(struct datadir *dd, const char *name, const char *host,
                             EVP_PKEY **key_out, X509 **cert_out)
{
    const char *dns[3], *ips[3];
    size_t n_dns = 0, n_ips = 0;
    struct lifecycle_issue_req req;
    X509_REQ *csr = NULL;
    unsigned char *der = NULL;
    EVP_PKEY *key = NULL;
    char hostname[256];
    int der_len, rc;

    *key_out = NULL;
    *cert_out = NULL;
    dns[n_dns++] = "localhost";
    ips[n_ips++] = "127.0.0.1";
    ips[n_ips++] = "::1";
    /* A wildcard listen address names no host; the machine's name is the best guess then. */
    if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) {
        if (gethostname(hostname, sizeof(hostname)) == 0 && hostname[0] != '\0' &&
            strcmp(hostname, "localhost") != 0 && valid_host(hostname))
            dns[n_dns++] = hostname;
    } else if (is_ip(host)) {
        if (strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0)
            ips[n_ips++] = host;
    } else if (strcmp(host, "localhost") != 0) {
        dns[n_dns++] = host;
    }
    if ((key = EVP_EC_gen("P-256")) == NULL || (csr = X509_REQ_new()) == NULL ||
        X509_REQ_set_pubkey(csr, key) != 1 || X509_REQ_sign(csr, key, EVP_sha256()) <= 0 ||
        (der_len = i2d_X509_REQ(csr, &der)) <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot make the broker's key and request");
        goto out;
    }
    memset(&req, 0, sizeof(req));
    req.asset_id = name;
    req.csr = der;
    req.csr_len = (size_t)der_len;
    req.profile = CA_PROFILE_BROKER;
    datadir_profile_days(datadir_config(dd), req.profile_days);
    req.actor = "cli";
    req.dns = dns;
    req.n_dns = n_dns;
    req.ips = ips;
    req.n_ips = n_ips;
    if ((rc = lifecycle_issue(datadir_ca(dd), datadir_inventory(dd), &req, cert_out)))
        goto out;
    *key_out = key;
    key = NULL;
out:
    OPENSSL_free(der);
    X509_REQ_free(csr);
    EVP_PKEY_free(key);
    return rc;
}

static int write_key(const char *path, EVP_PKEY *key)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL;
    long len = 0;
    int rc;

    if (bio == NULL || PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL) != 1 ||
        (len = BIO_get_mem_data(bio, &pem)) <= 0) {
        rc = mqpki_fail(MQPKI_ERR_CRYPTO, "cannot encode the broker's key");
        goto out;
    }
    rc = mqpki_file_write_atomic(path, pem, (size_t)len, 0600);
out:
    /* The buffer held a private key. */
    if (pem != NULL && len > 0)
        OPENSSL_cleanse(pem, (size_t)len);
    BIO_free(bio);
    return rc;
}

static int write_cert_chain(const char *path, X509 *leaf, X509 *issuing)
{
    char *a = NULL, *b = NULL, *all = NULL;
    size_t la = 0, lb = 0;
    int rc;

    if ((rc = ca_cert_pem(leaf, &a, &la)) != MQPKI_OK ||
        (rc = ca_cert_pem(issuing, &b, &lb)) != MQPKI_OK)
        goto out;
    if ((all = malloc(la + lb)) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    memcpy(all, a, la);
    memcpy(all + la, b, lb);
    rc = mqpki_file_write_atomic(path, all, la + lb, 0644);
out:
    free(a);
    free(b);
    free(all);
    return rc;
}

static int write_text(const char *dir, const char *name, const char *text, unsigned mode)
{
    char path[PATH_MAX];

    if (mqpki_path(path, sizeof(path), "%s/%s", dir, name) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dir);
    return mqpki_file_write_atomic(path, text, strlen(text), mode);
}

/*
 * brokers/NAME/mosquitto.conf, derived from broker.conf (host, port) and the plugin's current
 * location. Its paths are relative to brokers/NAME/, where `broker run` starts Mosquitto, so
 * that the data directory stays relocatable: nothing in it names where it lives.
 */
static int write_mosquitto_conf(const char *dir, const char *name, const char *host, int port,
                                const char *plugin)
{
    struct passwd *pw = getpwuid(geteuid());
    char acl[PATH_MAX];
    struct stat st;
    char *text = NULL;
    int n, rc;

    if (pw == NULL || pw->pw_name == NULL) {
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot find the current user's name");
        goto out;
    }
    /* Paths may not hold spaces: Mosquitto's config reader would split them. */
    if (strpbrk(plugin, " \t\n") != NULL) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: Mosquitto cannot read paths with spaces", plugin);
        goto out;
    }
    if (mqpki_path(acl, sizeof(acl), "%s/acl.conf", dir) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dir);
        goto out;
    }
    n = asprintf(&text,
                 "# Bundled broker %s, written by 'mqpki broker init %s' (docs/broker.md).\n"
                 "# 'mqpki broker run' keeps edits and only updates the plugin line. Paths are\n"
                 "# relative to this directory, where Mosquitto runs.\n"
                 "per_listener_settings false\n"
                 "# Run as the owner of the data directory: the key below is 0600.\n"
                 "user %s\n"
                 "log_dest stderr\n"
                 "log_type error\n"
                 "log_type warning\n"
                 "log_type notice\n"
                 "log_type information\n"
                 "log_timestamp_format %%Y-%%m-%%dT%%H:%%M:%%S\n"
                 "persistence true\n"
                 "persistence_location data/\n"
                 "allow_anonymous false\n"
                 "\n"
                 "# The plugin authenticates by certificate, enforces the CRL feed and the ACL.\n"
                 "plugin %s\n"
                 "plugin_opt_ca_file ca.pem\n"
                 "plugin_opt_state_dir state\n"
                 "plugin_opt_service_id %s\n"
                 "plugin_opt_broker_name %s\n"
                 "plugin_opt_fail_closed false\n"
                 "%splugin_opt_acl_file acl.conf\n"
                 "\n"
                 "listener %d %s\n"
                 "cafile ca.pem\n"
                 "certfile broker.pem\n"
                 "keyfile broker.key\n"
                 "require_certificate true\n"
                 "# Off, so that the plugin's BASIC_AUTH runs and names the client (DESIGN.md 6).\n"
                 "use_identity_as_username false\n"
                 "tls_version tlsv1.2\n"
                 "# Without it each TLS handshake waits on Nagle's algorithm (~48 ms).\n"
                 "set_tcp_nodelay true\n",
                 name, name, pw->pw_name, plugin, PROTO_SERVICE_ID, name,
                 stat(acl, &st) == 0 ? "" : "#", port, host);
    if (n < 0) {
        text = NULL;
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    rc = write_text(dir, "mosquitto.conf", text, 0600);
out:
    free(text);
    return rc;
}

static int wildcard(const char *h)
{
    return strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0;
}

/* Refuses host:port when another registered broker listens there (the same address, or either
 * one the wildcard): two brokers on one port meant one of them never ran, and the feed's links
 * to "both" went to the same broker. */
static int listener_free(const char *home, const char *name, const char *host, int port)
{
    char dir[PATH_MAX], path[PATH_MAX], other[DATADIR_BROKER_HOST_MAX];
    struct dirent *de;
    DIR *d;
    int other_port, rc = MQPKI_OK;

    if (mqpki_path(dir, sizeof(dir), "%s/brokers", home) != MQPKI_OK || (d = opendir(dir)) == NULL)
        return MQPKI_OK;
    while (rc == MQPKI_OK && (de = readdir(d)) != NULL) {
        if (!proto_asset_id_valid(de->d_name) || strcmp(de->d_name, name) == 0 ||
            mqpki_path(path, sizeof(path), "%s/%s/broker.conf", dir, de->d_name) != MQPKI_OK ||
            datadir_broker_conf_read(path, other, &other_port) != MQPKI_OK) {
            mqpki_err_clear();
            continue;
        }
        if (other_port == port &&
            (strcasecmp(other, host) == 0 || wildcard(other) || wildcard(host)))
            rc = mqpki_fail(MQPKI_ERR_EXISTS,
                            "%s:%d is already the listener of broker %s (brokers/%s/broker.conf); "
                            "choose another --port",
                            host, port, de->d_name, de->d_name);
    }
    closedir(d);
    return rc;
}

/* brokers/NAME/broker.conf (what broker init wrote), with a host Mosquitto can listen on. */
static int read_broker_conf(const char *dir, char host[DATADIR_BROKER_HOST_MAX], int *port)
{
    char path[PATH_MAX];
    int rc;

    if (mqpki_path(path, sizeof(path), "%s/broker.conf", dir) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", dir);
    if ((rc = datadir_broker_conf_read(path, host, port)) == MQPKI_OK && !valid_host(host))
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: host '%.80s' is not valid", path, host);
    return rc;
}

int cmd_broker_init(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct datadir *dd = NULL;
    const char *name, *host = "127.0.0.1";
    char plugin[PATH_MAX], dir[PATH_MAX], path[PATH_MAX], conf[512];
    unsigned char *chain = NULL;
    size_t chain_len = 0;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    struct stat st;
    int c, rc = MQPKI_OK, port = 8883;

    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': host = optarg; break;
        case 'p': rc = cli_parse_int(cli, "--port", optarg, 1, 65535, &port); break;
        case 'h':
            return cli_help(
                "usage: mqpki broker init NAME [--host H] [--port P]\n\n"
                "Registers the bundled broker NAME (an asset of kind broker), issues its TLS\n"
                "certificate (names localhost, 127.0.0.1, ::1 and H) and writes brokers/NAME/:\n"
                "broker.key, broker.pem, ca.pem, broker.conf and mosquitto.conf (one TLS\n"
                "listener on H:P, default 127.0.0.1:8883, client certificates required, the\n"
                "mqpki plugin). mqpkid then feeds it the CRLs; run it with 'mqpki broker run'.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind + 1 != argc) {
        rc = cli_usage_error(cli, "expected one broker NAME");
        goto out;
    }
    name = argv[optind];
    if (!proto_asset_id_valid(name)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID,
                        "broker name '%.80s': only A-Z a-z 0-9 . _ - allowed, 1 to 64 characters",
                        name);
        goto out;
    }
    if (!valid_host(host)) {
        rc = cli_usage_error(cli, "--host '%.80s': not a host name or address", host);
        goto out;
    }
    if ((rc = plugin_path(plugin)) != MQPKI_OK)
        goto out;
    if (mqpki_path(dir, sizeof(dir), "%s/brokers/%s", cli->home, name) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
        goto out;
    }
    /* Room for the file names below, so that none of them can be cut short. */
    if (strlen(dir) + 32 >= sizeof(dir)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
        goto out;
    }
    if (stat(dir, &st) == 0) {
        rc = mqpki_fail(MQPKI_ERR_EXISTS, "broker %s already exists (%s)", name, dir);
        goto out;
    }
    if ((rc = listener_free(cli->home, name, host, port)) != MQPKI_OK)
        goto out;
    if ((rc = cli_open(cli, DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_path(dd, "ca/chain.pem", path)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, CHAIN_MAX, &chain, &chain_len)) != MQPKI_OK)
        goto out;
    if ((rc = ensure_broker_asset(datadir_inventory(dd), name)) != MQPKI_OK)
        goto out;
    if ((rc = issue_broker_cert(dd, name, host, &key, &cert)) != MQPKI_OK)
        goto out;
    if ((rc = mqpki_mkdir_p(dir, 0700)) != MQPKI_OK)
        goto out;
    (void)mqpki_path(path, sizeof(path), "%s/data", dir);
    if ((rc = mqpki_mkdir_p(path, 0700)) != MQPKI_OK)
        goto out;
    (void)mqpki_path(path, sizeof(path), "%s/state", dir);
    if ((rc = mqpki_mkdir_p(path, 0700)) != MQPKI_OK)
        goto out;
    (void)mqpki_path(path, sizeof(path), "%s/broker.key", dir);
    if ((rc = write_key(path, key)) != MQPKI_OK)
        goto out;
    (void)mqpki_path(path, sizeof(path), "%s/broker.pem", dir);
    if ((rc = write_cert_chain(path, cert, ca_issuing_cert(datadir_ca(dd)))) != MQPKI_OK)
        goto out;
    (void)mqpki_path(path, sizeof(path), "%s/ca.pem", dir);
    if ((rc = mqpki_file_write_atomic(path, chain, chain_len, 0644)) != MQPKI_OK)
        goto out;
    snprintf(conf, sizeof(conf),
             "# Bundled broker %s: where mqpkid's CRL feed finds it (docs/broker.md).\n"
             "host = %s\nport = %d\n",
             name, host, port);
    if ((rc = write_text(dir, "broker.conf", conf, 0644)) != MQPKI_OK)
        goto out;
    if ((rc = write_mosquitto_conf(dir, name, host, port, plugin)) != MQPKI_OK)
        goto out;
    printf("broker %s: certificate issued; configuration in %s/mosquitto.conf "
           "(listener %s:%d)\n",
           name, dir, host, port);
out:
    free(chain);
    EVP_PKEY_free(key);
    X509_free(cert);
    datadir_close(dd);
    return rc;
}

/* ---- broker remove -------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int cmd_broker_remove(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct lifecycle_change ch;
    struct inventory_asset a;
    struct datadir *dd = NULL;
    char dir[PATH_MAX], gone[PATH_MAX];
    const unsigned char req = DATADIR_CTL_RESCAN;
    unsigned char *reply = NULL;
    size_t reply_len = 0;
    const char *name;
    struct stat st;
    int c, rc, have_dir;

    memset(&a, 0, sizeof(a));
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help(
                "usage: mqpki broker remove NAME\n\n"
                "Retires the bundled broker NAME: decommissions its asset (its certificate is\n"
                "revoked, reason cessationOfOperation, and the delta CRL published), deletes\n"
                "brokers/NAME/ and tells a running mqpkid to stop its feed link at once (no\n"
                "restart). Stop the broker's own Mosquitto process yourself.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one broker NAME");
    name = argv[optind];
    if (!proto_asset_id_valid(name))
        return cli_usage_error(cli, "broker name '%.80s' is not valid", name);
    if (mqpki_path(dir, sizeof(dir), "%s/brokers/%s", cli->home, name) != MQPKI_OK ||
        mqpki_path(gone, sizeof(gone), "%s/brokers/.%s.removed", cli->home, name) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    have_dir = stat(dir, &st) == 0;
    if ((rc = cli_open(cli, DATADIR_STORE | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    rc = inventory_asset_get(datadir_inventory(dd), name, &a);
    if (!have_dir && (rc == MQPKI_ERR_NOT_FOUND ||
                      (rc == MQPKI_OK && a.state == INV_STATE_DECOMMISSIONED))) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no broker %s%s", name,
                        rc == MQPKI_OK ? " (removed before)" : "");
        goto out;
    }
    if (rc == MQPKI_OK && a.kind != INV_KIND_BROKER) {
        rc = mqpki_fail(MQPKI_ERR_STATE, "asset %s is a %s, not a broker", name,
                        inventory_kind_name(a.kind));
        goto out;
    }
    /* Decommissioned first: from here on mqpkid's feed stops the link even if the files stay
     * (a crash before the deletion below), and the broker's certificate is on the CRL. */
    if (rc == MQPKI_OK) {
        if ((rc = lifecycle_decommission(datadir_lifecycle(dd), name, "cli", &ch)) != MQPKI_OK)
            goto out;
        if (ch.changed > 0 || ch.already > 0)
            rc = cli_publish_change(dd, &ch, "revoked", ca_reason_name(CA_REASON_CESSATION));
        else
            printf("broker %s decommissioned\n", name);
        if (rc != MQPKI_OK)
            goto out;
    }
    mqpki_err_clear();
    rc = MQPKI_OK;
    /* Renamed out of the registry in one step, then deleted (a crash leaves a dot directory
     * that nothing reads and the next removal of the same name clears). */
    (void)nftw(gone, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (have_dir && rename(dir, gone) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot remove %s: %s", dir, strerror(errno));
        goto out;
    }
    if (have_dir && nftw(gone, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        mqpki_log(MQPKI_LOG_WARN, "%s: not all removed: %s", gone, strerror(errno));
    rc = datadir_control_call(cli->home, &req, 1, &reply, &reply_len, 5000);
    if (rc == MQPKI_OK)
        printf("broker %s removed; mqpkid stopped its feed link\n", name);
    else if (rc == MQPKI_ERR_NOT_FOUND)
        printf("broker %s removed (mqpkid is not running)\n", name);
    else
        printf("broker %s removed; mqpkid not told (%s): it stops the link within a second\n",
               name, mqpki_err_detail(rc));
    mqpki_err_clear();
    rc = MQPKI_OK;
out:
    free(reply);
    inventory_asset_clear(&a);
    datadir_close(dd);
    return rc;
}

/* ---- broker run ----------------------------------------------------------------------- */

#define MOSQ_CONF_MAX (64 * 1024)

/*
 * The `plugin` line of mosquitto.conf names the plugin of the mqpki that runs the broker now:
 * a broker made with one mqpki (the build tree) and run by another (an installed package, a
 * moved prefix) loads the plugin that belongs to the running one. Other lines stay as they
 * are; without a plugin found here the file is left alone and Mosquitto says what is missing.
 */
static int plugin_follow(const char *conf)
{
    unsigned char *text = NULL;
    char plugin[PATH_MAX], *line, *end, *out = NULL;
    struct stat st;
    size_t len = 0, n;
    int rc;

    /* Only the regular file broker init wrote is rewritten, never what a link leads to. */
    if (lstat(conf, &st) != 0 || !S_ISREG(st.st_mode) || plugin_path(plugin) != MQPKI_OK ||
        strpbrk(plugin, " \t\n") != NULL) {
        mqpki_err_clear();
        return MQPKI_OK;
    }
    if ((rc = mqpki_file_read(conf, MOSQ_CONF_MAX, &text, &len)) != MQPKI_OK)
        goto out;
    for (line = (char *)text; line != NULL && *line != '\0'; line = end ? end + 1 : NULL) {
        end = strchr(line, '\n');
        n = end ? (size_t)(end - line) : strlen(line);
        if (n < 7 || strncmp(line, "plugin ", 7) != 0)
            continue;
        if (n - 7 == strlen(plugin) && memcmp(line + 7, plugin, n - 7) == 0)
            goto out; /* already this one */
        if (asprintf(&out, "%.*splugin %s%s", (int)(line - (char *)text), (char *)text, plugin,
                     end ? end : "") < 0) {
            out = NULL;
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        if ((rc = mqpki_file_write_atomic(conf, out, strlen(out), 0600)) == MQPKI_OK)
            mqpki_log(MQPKI_LOG_INFO, "%s: plugin %s", conf, plugin);
        goto out;
    }
out:
    free(out);
    free(text);
    return rc;
}

int cmd_broker_run(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    char conf[PATH_MAX], dir[PATH_MAX], plugin[PATH_MAX], mosq[PATH_MAX];
    char host[DATADIR_BROKER_HOST_MAX];
    struct stat st;
    int c, rc = MQPKI_OK, port;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            return cli_help("usage: mqpki broker run NAME\n\n"
                            "Runs Mosquitto in the foreground in brokers/NAME/ with its\n"
                            "mosquitto.conf (written by 'mqpki broker init', or now from\n"
                            "broker.conf when missing); logs go to stderr. Its 'plugin' line is\n"
                            "first set to the plugin installed with this mqpki; other lines, and\n"
                            "your edits, stay as they are.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one broker NAME");
    if (!proto_asset_id_valid(argv[optind]))
        return cli_usage_error(cli, "broker name '%.80s' is not valid", argv[optind]);
    if (mqpki_path(dir, sizeof(dir), "%s/brokers/%s", cli->home, argv[optind]) != MQPKI_OK ||
        mqpki_path(conf, sizeof(conf), "%s/broker.conf", dir) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    if (stat(conf, &st) != 0)
        return mqpki_fail(MQPKI_ERR_NOT_FOUND, "no broker %s (run 'mqpki broker init %s')",
                          argv[optind], argv[optind]);
    /* Mosquitto runs in the broker's directory, which the file's relative paths name, so a
     * moved or restored data directory works as it is; the plugin is the running mqpki's. */
    if (mqpki_path(mosq, sizeof(mosq), "%s/mosquitto.conf", dir) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "data directory path too long");
    if (lstat(mosq, &st) != 0) {
        if ((rc = read_broker_conf(dir, host, &port)) != MQPKI_OK ||
            (rc = plugin_path(plugin)) != MQPKI_OK ||
            (rc = write_mosquitto_conf(dir, argv[optind], host, port, plugin)) != MQPKI_OK)
            return rc;
    } else if ((rc = plugin_follow(mosq)) != MQPKI_OK) {
        return rc;
    }
    /* exec keeps the pid: `broker renew` and mqpkid signal this Mosquitto to reload. */
    {
        char pidfile[PATH_MAX], text[32];
        int n = snprintf(text, sizeof(text), "%ld\n", (long)getpid());
        if (mqpki_path(pidfile, sizeof(pidfile), "%s/run/broker-%s.pid", cli->home, argv[optind]) !=
                MQPKI_OK ||
            (rc = mqpki_file_write_atomic(pidfile, text, (size_t)n, 0600)) != MQPKI_OK)
            return rc != MQPKI_OK ? rc : mqpki_fail(MQPKI_ERR_INVALID, "path too long");
    }
    if (chdir(dir) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
    snprintf(conf, sizeof(conf), "mosquitto.conf");
    fflush(NULL);
    execlp("mosquitto", "mosquitto", "-c", conf, (char *)NULL);
    execl("/usr/sbin/mosquitto", "mosquitto", "-c", conf, (char *)NULL);
    rc = mqpki_fail(MQPKI_ERR_NOT_FOUND,
                    "cannot run mosquitto (%s); install the mosquitto "
                    "package",
                    strerror(errno));
    return rc;
}

/* ---- broker renew --------------------------------------------------------------------- */

int cmd_broker_renew(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"force", no_argument, NULL, 'f'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    struct datadir *dd = NULL;
    int c, rc = MQPKI_OK, force = 0, renewed = 0;
    pid_t reloaded = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': force = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki broker renew NAME [--force]\n\n"
                "Renews the bundled broker's certificate with a fresh key and the same\n"
                "DNS and IP names once two thirds of its lifetime have passed (mqpkid\n"
                "does it on its own, hourly), or now with --force, and has the running\n"
                "broker reload it (SIGHUP): connected clients stay connected.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one broker NAME");
    if (!proto_asset_id_valid(argv[optind]))
        return cli_usage_error(cli, "broker name '%.80s' is not valid", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_CA | CLI_MUTATES, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_broker_renew(dd, argv[optind], force, &renewed, &reloaded)) != MQPKI_OK)
        goto out;
    if (!renewed)
        printf("broker %s: certificate not due for renewal\n", argv[optind]);
    else if (reloaded)
        printf("broker %s: certificate renewed; Mosquitto (pid %ld) reloaded it\n", argv[optind],
               (long)reloaded);
    else
        printf("broker %s: certificate renewed; the broker is not running (it loads it at "
               "start)\n",
               argv[optind]);
out:
    datadir_close(dd);
    return rc;
}

/* ---- crl-sync ------------------------------------------------------------------------- */

/* The CRLs held: [0] the current key's (PROTO_TOPIC_CRL_FULL, _DELTA), [G] older issuing CA
 * generation G's copies of them (PROTO_TOPIC_CRL_GENERATION), each written to --out (full) or
 * --delta-out (delta) together, so that a broker checking each certificate against a CRL of its
 * own issuing key finds one for every generation. */
#define SYNC_GENS 64
struct sync {
    STACK_OF(X509) * cas;   /* CRL signers: --ca's issuing CAs, then PROTO_TOPIC_CA_ISSUERS' */
    STACK_OF(X509) * roots; /* --ca's roots: what certifies a new issuing CA */
    const char *out, *delta_out, *exec;
    int64_t held[SYNC_GENS + 1][2];
    char *pem[SYNC_GENS + 1][2];
    int once, done, connected, failed;
};

static volatile sig_atomic_t sync_stop;

static void on_signal(int sig)
{
    sync_stop = 1;
}

static void run_exec(const char *cmd)
{
    pid_t pid;
    int status = 0;

    fflush(NULL);
    if ((pid = fork()) < 0) {
        fprintf(stderr, "crl-sync: cannot run --exec: %s\n", strerror(errno));
        return;
    }
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        printf("  --exec done\n");
    else
        printf("  --exec failed (status %d)\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    fflush(stdout);
}

/* A CRL as PEM (most brokers' crlfile wants PEM), heap. */
static char *crl_pem(X509_CRL *crl)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *data = NULL, *pem = NULL;
    long len;

    if (bio != NULL && PEM_write_bio_X509_CRL(bio, crl) == 1 &&
        (len = BIO_get_mem_data(bio, &data)) > 0 && (pem = malloc((size_t)len + 1)) != NULL) {
        memcpy(pem, data, (size_t)len);
        pem[len] = '\0';
    }
    BIO_free(bio);
    return pem;
}

/* Writes the held CRLs of one kind, the current key's first, to the user's path: a regular
 * file atomically, a FIFO or device in place (mqpki_file_write_user). */
static int write_held(struct sync *s, int delta)
{
    const char *path = delta ? s->delta_out : s->out;
    size_t len = 0, n;
    char *all = NULL, *grown;
    int rc;

    for (int g = 0; g <= SYNC_GENS; g++) {
        if (s->pem[g][delta] == NULL)
            continue;
        n = strlen(s->pem[g][delta]);
        if ((grown = realloc(all, len + n + 1)) == NULL) {
            free(all);
            return mqpki_fail(MQPKI_ERR_NOMEM, "out of memory");
        }
        all = grown;
        memcpy(all + len, s->pem[g][delta], n);
        len += n;
    }
    if (all == NULL)
        return MQPKI_OK;
    rc = mqpki_file_write_user(path, all, len, 0644);
    free(all);
    return rc;
}

/* A CRL from topic gen (0: the current key's), kind delta: verified, then held and written. */
static void sync_crl(struct sync *s, const unsigned char *der, size_t len, int delta, int gen)
{
    struct proto_crl_info info;
    X509_CRL *crl = NULL;
    char why[256], *pem = NULL;
    enum proto_crl_order order;
    int rc;

    if (gen > 0 && len == 0) {
        /* A retired generation's CRLs, cleared from the broker: no longer written. */
        if (s->pem[gen][delta] != NULL) {
            free(s->pem[gen][delta]);
            s->pem[gen][delta] = NULL;
            s->held[gen][delta] = -1;
            if (write_held(s, delta) != MQPKI_OK)
                s->failed = 1;
            printf("generation %d's %s CRL dropped: that issuing CA is retired\n", gen,
                   delta ? "delta" : "full");
        }
        goto out;
    }
    if (proto_crl_parse(der, len, &crl, why, sizeof(why)) != 0 ||
        proto_crl_verify(crl, s->cas, &info, why, sizeof(why)) != 0)
        goto refused;
    if ((info.base >= 0) != delta) {
        snprintf(why, sizeof(why), "a %s CRL on the %s topic", delta ? "full" : "delta",
                 delta ? "delta" : "full");
        goto refused;
    }
    order = proto_crl_order(&info, s->held[gen][0], s->held[gen][1], why, sizeof(why));
    if (order == PROTO_CRL_REFUSE)
        goto refused;
    if ((pem = crl_pem(crl)) == NULL) {
        printf("CRL %lld not written: cannot encode it\n", (long long)info.number);
        s->failed = 1;
        goto out;
    }
    /* The same as held (a restart): kept for the next write, not written again. */
    if (order == PROTO_CRL_SAME) {
        if (s->pem[gen][delta] == NULL) {
            s->pem[gen][delta] = pem;
            pem = NULL;
        }
        if (!delta && gen == 0)
            s->done = 1;
        goto out;
    }
    free(s->pem[gen][delta]);
    s->pem[gen][delta] = pem;
    pem = NULL;
    if ((rc = write_held(s, delta)) != MQPKI_OK) {
        printf("CRL %lld not written: %s\n", (long long)info.number, mqpki_err_detail(rc));
        s->failed = 1;
        goto out;
    }
    s->held[gen][delta] = info.number;
    if (gen == 0)
        printf("%s CRL %lld (%zu entries) verified and written to %s\n", delta ? "delta" : "full",
               (long long)info.number, info.n_entries, delta ? s->delta_out : s->out);
    else
        printf("%s CRL %lld signed by issuing CA generation %d verified and written to %s\n",
               delta ? "delta" : "full", (long long)info.number, gen,
               delta ? s->delta_out : s->out);
    fflush(stdout);
    if (s->exec != NULL)
        run_exec(s->exec);
    if (!delta && gen == 0)
        s->done = 1;
    goto out;
refused:
    printf("%s ignored: %s\n", delta ? "delta CRL" : "CRL", why);
    fflush(stdout);
out:
    free(pem);
    X509_CRL_free(crl);
}

/* A new issuing CA list: the CRL signers from now on, each certified by a root of --ca. */
static void sync_issuers(struct sync *s, const void *pem, size_t len)
{
    STACK_OF(X509) *cas = NULL;
    char why[256];

    if (proto_issuers_verify(pem, len, s->roots, &cas, why, sizeof(why)) != 0) {
        printf("issuing CA list ignored: %s\n", why);
        fflush(stdout);
        return;
    }
    sk_X509_pop_free(s->cas, X509_free);
    s->cas = cas;
    printf("trusting %d issuing CA key%s for CRLs\n", sk_X509_num(cas),
           sk_X509_num(cas) == 1 ? "" : "s");
    /* A retired generation's CRLs leave the files (also when the feed's clearing of its topics
     * went by while this was not connected). */
    for (int g = 1; g <= SYNC_GENS; g++) {
        for (int k = 0; k < 2; k++) {
            BIO *bio;
            X509_CRL *crl;
            EVP_PKEY *key;
            int keep;
            if (s->pem[g][k] == NULL ||
                (bio = BIO_new_mem_buf(s->pem[g][k], (int)strlen(s->pem[g][k]))) == NULL)
                continue;
            crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
            keep = crl != NULL && proto_crl_issuer_key(crl, s->cas, &key, NULL, 0) == 0;
            X509_CRL_free(crl);
            BIO_free(bio);
            if (keep)
                continue;
            free(s->pem[g][k]);
            s->pem[g][k] = NULL;
            s->held[g][k] = -1;
            printf("generation %d's %s CRL dropped: that issuing CA is not trusted any more\n", g,
                   k ? "delta" : "full");
            if (write_held(s, k) != MQPKI_OK)
                s->failed = 1;
        }
    }
    fflush(stdout);
}

static void on_sync_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    struct sync *s = ud;
    int gen, delta;

    if (strcmp(msg->topic, PROTO_TOPIC_CA_ISSUERS) == 0)
        sync_issuers(s, msg->payload, (size_t)msg->payloadlen);
    else if (strcmp(msg->topic, PROTO_TOPIC_CRL_FULL) == 0)
        sync_crl(s, msg->payload, (size_t)msg->payloadlen, 0, 0);
    else if (strcmp(msg->topic, PROTO_TOPIC_CRL_DELTA) == 0 && s->delta_out != NULL)
        sync_crl(s, msg->payload, (size_t)msg->payloadlen, 1, 0);
    else if (proto_topic_crl_generation_parse(msg->topic, &gen, &delta) == 0 && gen <= SYNC_GENS &&
             (!delta || s->delta_out != NULL))
        sync_crl(s, msg->payload, (size_t)msg->payloadlen, delta, gen);
}

static void on_sync_connect(struct mosquitto *m, void *ud, int rc)
{
    struct sync *s = ud;

    if (rc != 0) {
        printf("broker refused the connection: %s\n", mosquitto_connack_string(rc));
        fflush(stdout);
        return;
    }
    s->connected = 1;
    /* The issuing CAs first: a CRL of a new generation verifies once they are known. */
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CA_ISSUERS, 1);
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_FULL, 1);
    mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_GENERATION "+/full", 1);
    if (s->delta_out != NULL) {
        mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_DELTA, 1);
        mosquitto_subscribe(m, NULL, PROTO_TOPIC_CRL_GENERATION "+/delta", 1);
    }
}

/* mqtts://HOST[:PORT] or mqtts://[V6]:PORT into host and port. */
static int parse_broker_url(struct cli *cli, const char *url, char *host, size_t size, int *port)
{
    const char *p, *colon, *end;
    size_t n;
    int rc = MQPKI_OK;

    *port = 8883;
    if (strncmp(url, "mqtts://", 8) != 0) {
        rc = cli_usage_error(cli, "--broker '%.80s': expected mqtts://HOST:PORT", url);
        goto out;
    }
    p = url + 8;
    if (*p == '[') {
        end = strchr(p, ']');
        if (end == NULL) {
            rc = cli_usage_error(cli, "--broker: unterminated [address]");
            goto out;
        }
        n = (size_t)(end - p - 1);
        p++;
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strrchr(p, ':');
        n = colon != NULL ? (size_t)(colon - p) : strlen(p);
    }
    if (n == 0 || n >= size) {
        rc = cli_usage_error(cli, "--broker '%.80s': missing or overlong host", url);
        goto out;
    }
    memcpy(host, p, n);
    host[n] = '\0';
    if (colon != NULL)
        rc = cli_parse_int(cli, "--broker port", colon + 1, 1, 65535, port);
out:
    return rc;
}

/* The held CRL number of an existing --out file (PEM or DER) that verifies; -1 otherwise. */
static int64_t held_number(struct sync *s, const char *path)
{
    unsigned char *buf = NULL;
    size_t len = 0;
    X509_CRL *crl = NULL;
    struct proto_crl_info info;
    int64_t n = -1;
    BIO *bio = NULL;

    if (mqpki_file_read(path, PROTO_CRL_MAX_DER, &buf, &len) != MQPKI_OK)
        goto out;
    if ((bio = BIO_new_mem_buf(buf, (int)len)) == NULL)
        goto out;
    crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL);
    if (crl == NULL && proto_crl_parse(buf, len, &crl, NULL, 0) != 0)
        goto out;
    if (proto_crl_verify(crl, s->cas, &info, NULL, 0) == 0)
        n = info.number;
out:
    mqpki_err_clear();
    BIO_free(bio);
    X509_CRL_free(crl);
    free(buf);
    return n;
}

static int default_file(struct cli *cli, const char *rel, char out[PATH_MAX])
{
    struct stat st;

    return mqpki_path(out, PATH_MAX, "%s/%s", cli->home, rel) == MQPKI_OK && stat(out, &st) == 0;
}

int cmd_crl_sync(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"broker", required_argument, NULL, 'b'},
        {"out", required_argument, NULL, 'o'},
        {"delta-out", required_argument, NULL, 'd'},
        {"exec", required_argument, NULL, 'e'},
        {"cert", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},
        {"ca", required_argument, NULL, 'a'},
        {"client-id", required_argument, NULL, 'i'},
        {"once", no_argument, NULL, '1'},
        {"timeout", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct sync s;
    struct mosquitto *m = NULL;
    struct sigaction sa;
    const char *url = NULL, *cert = NULL, *key = NULL, *ca = NULL, *client_id = NULL;
    char host[256], dcert[PATH_MAX], dkey[PATH_MAX], dca[PATH_MAX], why[256], idbuf[64];
    int64_t timeout = 0, started;
    int c, rc = MQPKI_OK, port, delay = 1, lib = 0;

    memset(&s, 0, sizeof(s));
    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': url = optarg; break;
        case 'o': s.out = optarg; break;
        case 'd': s.delta_out = optarg; break;
        case 'e': s.exec = optarg; break;
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'a': ca = optarg; break;
        case 'i': client_id = optarg; break;
        case '1': s.once = 1; break;
        case 't':
            if ((timeout = mqpki_duration_parse(optarg)) <= 0)
                rc = cli_usage_error(cli, "--timeout '%.20s': expected e.g. 30s", optarg);
            break;
        case 'h':
            return cli_help(
                "usage: mqpki crl-sync --broker mqtts://HOST:PORT --out FILE [--exec CMD]\n"
                "                      [--delta-out FILE] [--cert FILE --key FILE] [--ca FILE]\n"
                "                      [--client-id ID] [--once [--timeout 30s]]\n\n"
                "Follows the CRL feed (" PROTO_TOPIC_CRL_FULL
                ") of a bundled broker for another broker:\n"
                "each CRL is verified against the issuing CA (--ca), refused when older than the\n"
                "one held, written to FILE as PEM (a regular file, also behind a link, is\n"
                "replaced atomically; a FIFO or device is written in place; '-' is refused:\n"
                "progress goes to stdout), then CMD runs (/bin/sh -c), e.g. a\n"
                "reload. Connects with --cert/--key (default: the data directory's tls/mqpkid.*;\n"
                "--ca defaults to ca/chain.pem). Runs until SIGINT/SIGTERM; --once stops after\n"
                "the first good CRL (exit 1 if none arrives within --timeout).\n"
                "After `mqpki ca rollover`, the issuing CAs come from the feed (each certified\n"
                "by a root in --ca) and FILE holds the current key's CRL followed by each older\n"
                "generation's copy signed by its own key, so that a broker checking every\n"
                "certificate against a CRL of its own issuing key finds one.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind != argc) {
        rc = cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (url == NULL || s.out == NULL) {
        rc = cli_usage_error(cli, "--broker and --out are required");
        goto out;
    }
    /* stdout carries the progress lines; a CRL among them would serve no broker. */
    if (strcmp(s.out, "-") == 0 || (s.delta_out != NULL && strcmp(s.delta_out, "-") == 0)) {
        rc = cli_usage_error(cli, "--out and --delta-out need a file: stdout carries progress");
        goto out;
    }
    if ((rc = mqpki_file_check_user(s.out)) != MQPKI_OK ||
        (s.delta_out != NULL && (rc = mqpki_file_check_user(s.delta_out)) != MQPKI_OK))
        goto out;
    if ((rc = parse_broker_url(cli, url, host, sizeof(host), &port)) != MQPKI_OK)
        goto out;
    if (cert == NULL && default_file(cli, "tls/mqpkid.pem", dcert))
        cert = dcert;
    if (key == NULL && default_file(cli, "tls/mqpkid.key", dkey))
        key = dkey;
    if (ca == NULL && default_file(cli, "ca/chain.pem", dca))
        ca = dca;
    if (cert == NULL || key == NULL || ca == NULL) {
        rc = cli_usage_error(cli, "--cert, --key and --ca are required outside a data directory");
        goto out;
    }
    if (proto_crl_load_cas(ca, &s.cas, why, sizeof(why)) != 0 ||
        proto_ca_roots_load(ca, &s.roots, why, sizeof(why)) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "--ca: %s", why);
        goto out;
    }
    for (int g = 0; g <= SYNC_GENS; g++)
        s.held[g][0] = s.held[g][1] = -1;
    s.held[0][0] = held_number(&s, s.out);
    if (s.delta_out != NULL)
        s.held[0][1] = held_number(&s, s.delta_out);
    if (timeout == 0)
        timeout = s.once ? 30 : 0;
    if (client_id == NULL) {
        snprintf(idbuf, sizeof(idbuf), "mqpki-crl-sync-%ld", (long)getpid());
        client_id = idbuf;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    mosquitto_lib_init();
    lib = 1;
    if ((m = mosquitto_new(client_id, true, &s)) == NULL) {
        rc = mqpki_fail(MQPKI_ERR_NOMEM, "cannot create the MQTT client");
        goto out;
    }
    if (mosquitto_tls_set(m, ca, NULL, cert, key, NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_tls_opts_set(m, 1, "tlsv1.2", NULL) != MOSQ_ERR_SUCCESS) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "cannot use --cert %s / --key %s / --ca %s", cert, key,
                        ca);
        goto out;
    }
    mosquitto_connect_callback_set(m, on_sync_connect);
    mosquitto_message_callback_set(m, on_sync_message);
    if (s.held[0][0] >= 0)
        printf("following %s (holding CRL %lld in %s)\n", url, (long long)s.held[0][0], s.out);
    else
        printf("following %s (no CRL held yet)\n", url);
    fflush(stdout);
    started = mqpki_now();
    rc = mosquitto_connect(m, host, port, 60);
    while (!sync_stop && !(s.once && s.done) && !s.failed) {
        if (timeout > 0 && mqpki_now() - started >= timeout)
            break;
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_loop(m, 200, 1);
        if (rc != MOSQ_ERR_SUCCESS && !sync_stop) {
            /* Back off up to a minute: a broker restart must not turn into a tight loop. */
            if (s.connected || delay == 1)
                printf("broker %s:%d unreachable (%s); retrying\n", host, port,
                       rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
            fflush(stdout);
            s.connected = 0;
            sleep((unsigned)delay);
            delay = delay < 60 ? delay * 2 : 60;
            rc = mosquitto_reconnect(m);
        } else if (s.connected) {
            delay = 1;
        }
    }
    rc = MQPKI_OK;
    if (s.failed)
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot write %s", s.out);
    else if (s.once && !s.done)
        rc = mqpki_fail(MQPKI_ERR_STATE, "no valid CRL from %s within %llds", url,
                        (long long)timeout);
    mosquitto_disconnect(m);
out:
    mosquitto_destroy(m);
    if (lib)
        mosquitto_lib_cleanup();
    sk_X509_pop_free(s.cas, X509_free);
    sk_X509_pop_free(s.roots, X509_free);
    for (int g = 0; g <= SYNC_GENS; g++) {
        free(s.pem[g][0]);
        free(s.pem[g][1]);
    }
    return rc;
}
