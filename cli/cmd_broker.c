/*
 * cli: the bundled broker (broker init, broker remove, broker run, broker renew; DESIGN.md 3
 * and 6, docs/broker.md). crl-sync, the feed consumer for other brokers, is cmd_crlsync.c.
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
