/*
 * datadir/replica.c: outgrowing one machine (docs/ha.md). `mqpki store migrate` moves a data
 * directory's embedded store into PostgreSQL; `mqpki replica init` prepares a second data
 * directory whose mqpkid serves the same CA from the same store.
 */
#include "datadir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common.h"
#include "datadir_int.h"
#include "inventory.h"

#define CONF_MAX (64 * 1024)

/*
 * mqpki.conf with [store] url = url: the key replaced where the [store] section has it, added
 * under its header where it has none, or the section appended. Other lines stay as they are.
 */
static int conf_set_store(const char *home, const char *url)
{
    char path[PATH_MAX], *out = NULL;
    unsigned char *text = NULL;
    size_t len = 0, o = 0, cap;
    int rc, in_store = 0, done = 0;

    if ((rc = mqpki_path(path, sizeof(path), "%s/mqpki.conf", home)) != MQPKI_OK ||
        (rc = mqpki_file_read(path, CONF_MAX, &text, &len)) != MQPKI_OK)
        return rc;
    cap = len + strlen(url) + 64;
    if ((out = malloc(cap)) == NULL) {
        free(text);
        return MQPKI_ERR_NOMEM;
    }
    for (size_t i = 0; i < len;) {
        const char *line = (const char *)text + i, *nl = memchr(line, '\n', len - i);
        size_t n = nl != NULL ? (size_t)(nl - line) + 1 : len - i, k = 0;
        i += n;
        while (k < n && (line[k] == ' ' || line[k] == '\t'))
            k++;
        if (line[k] == '[') {
            if (in_store && !done) {
                o += (size_t)snprintf(out + o, cap - o, "url = %s\n", url);
                done = 1;
            }
            in_store = strncmp(line + k, "[store]", 7) == 0;
        } else if (in_store && !done && strncmp(line + k, "url", 3) == 0 &&
                   strchr(" \t=", line[k + 3]) != NULL) {
            o += (size_t)snprintf(out + o, cap - o, "url = %s\n", url);
            done = 1;
            continue;
        }
        memcpy(out + o, line, n);
        o += n;
        if (nl == NULL)
            out[o++] = '\n';
    }
    /* The [store] section last in the file gets the key at its end; no section, a new one. */
    if (!done && in_store)
        o += (size_t)snprintf(out + o, cap - o, "url = %s\n", url);
    else if (!done)
        o += (size_t)snprintf(out + o, cap - o, "\n[store]\nurl = %s\n", url);
    rc = mqpki_file_write_atomic(path, out, o, 0600);
    free(out);
    free(text);
    return rc;
}

/*
 * Crash windows: the copy is one transaction in the server; mqpki.conf changes after its commit,
 * by write, fsync, rename, fsync of the directory. Killed before the commit: nothing was copied
 * and the data directory still uses mqpki.db; a rerun copies. Killed after the commit and before
 * the rename: the server holds the copy, mqpki.conf still names no store; a rerun finds exactly
 * this store's rows there (inventory_copy) and only rewrites mqpki.conf. Killed after the
 * rename: migrated; a rerun says the store is already on PostgreSQL. Whatever changes mqpki.db
 * in between makes the copy stale, and a rerun refuses it (drop the database and rerun).
 */
int datadir_store_migrate(const char *home, const char *url, inventory_copy_cb progress, void *ctx,
                          int *already)
{
    struct datadir_config cfg;
    struct inventory *from = NULL, *to = NULL;
    char path[PATH_MAX];
    pid_t holder = 0;
    int lock = -1, rc;

    if (!inventory_target_is_remote(url))
        return mqpki_fail(MQPKI_ERR_INVALID, "store migrate: --to needs a postgresql:// URL");
    if ((rc = datadir_config_load(home, &cfg)) != MQPKI_OK)
        return rc;
    if (cfg.store_url[0] != '\0')
        return mqpki_fail(MQPKI_ERR_STATE, "%s: the store is already %s ([store] url)", home,
                          "on PostgreSQL");
    /* mqpkid keeps writing while it runs: what it wrote after the copy would stay behind. */
    rc = datadir_lock_take(home, DATADIR_LOCK_DAEMON, 0, &lock, &holder);
    if (rc == MQPKI_ERR_BUSY)
        rc = mqpki_fail(MQPKI_ERR_STATE, "mqpkid (pid %ld) is running on %s: stop it first",
                        (long)holder, home);
    if (rc != MQPKI_OK)
        return rc;
    if ((rc = mqpki_path(path, sizeof(path), "%s/mqpki.db", home)) != MQPKI_OK ||
        (rc = inventory_open(path, &from)) != MQPKI_OK ||
        (rc = inventory_open(url, &to)) != MQPKI_OK ||
        (rc = inventory_copy(from, to, progress, ctx, already)) != MQPKI_OK)
        goto out;
    /* The switch: from here every command and mqpkid use the server. mqpki.db stays as it
     * was (a fallback until the operator removes it). */
    rc = conf_set_store(home, url);
out:
    inventory_close(from);
    inventory_close(to);
    datadir_lock_release(lock);
    return rc;
}

/* Copies the regular files and directories under from/rel into to/rel (modes kept, files
 * written atomically). */
static int copy_tree(const char *from, const char *to, const char *rel)
{
    char src[PATH_MAX], dst[PATH_MAX], sub[PATH_MAX];
    struct dirent *e;
    struct stat st;
    DIR *d;
    int rc = MQPKI_OK;

    if ((rc = mqpki_path(src, sizeof(src), "%s/%s", from, rel)) != MQPKI_OK ||
        (rc = mqpki_path(dst, sizeof(dst), "%s/%s", to, rel)) != MQPKI_OK)
        return rc;
    if (lstat(src, &st) != 0)
        return errno == ENOENT ? MQPKI_OK : mqpki_fail_errno(errno, src);
    if (S_ISREG(st.st_mode)) {
        unsigned char *data = NULL;
        size_t len = 0;
        if ((rc = mqpki_file_read(src, 64u << 20, &data, &len)) == MQPKI_OK)
            rc = mqpki_file_write_atomic(dst, data, len, st.st_mode & 07777);
        if (data != NULL)
            OPENSSL_cleanse(data, len);
        free(data);
        return rc;
    }
    if (!S_ISDIR(st.st_mode))
        return MQPKI_OK; /* sockets, locks' FIFOs: nothing a replica inherits */
    if ((rc = mqpki_mkdir_p(dst, st.st_mode & 07777)) != MQPKI_OK)
        return rc;
    if ((d = opendir(src)) == NULL)
        return mqpki_fail_errno(errno, src);
    while (rc == MQPKI_OK && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 ||
            strstr(e->d_name, ".tmp.") != NULL)
            continue;
        if ((rc = mqpki_path(sub, sizeof(sub), "%s/%s", rel, e->d_name)) == MQPKI_OK)
            rc = copy_tree(from, to, sub);
    }
    closedir(d);
    return rc;
}

int datadir_replica_init(const char *from, const char *to, void (*progress)(const char *step))
{
    struct datadir_config cfg;
    char hsm[PATH_MAX], link[PATH_MAX], path[PATH_MAX];
    static const char *const parts[] = {"secrets", "ca", "tls", "crl", "brokers"};
    struct stat st;
    int rc;

    if ((rc = datadir_config_load(from, &cfg)) != MQPKI_OK)
        return rc;
    if (cfg.store_url[0] == '\0')
        return mqpki_fail(MQPKI_ERR_STATE,
                          "%s: replicas share a PostgreSQL store, and this one uses the embedded "
                          "mqpki.db; move it first with `mqpki --home %s store migrate --to URL`",
                          from, from);
    if (stat(to, &st) == 0) {
        DIR *d = opendir(to);
        struct dirent *e;
        int empty = 1;
        while (d != NULL && (e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                empty = 0;
        if (d != NULL)
            closedir(d);
        if (!empty)
            return mqpki_fail(MQPKI_ERR_EXISTS, "%s is not empty: a replica gets a new directory",
                              to);
    }
    if ((rc = mqpki_mkdir_p(to, 0700)) != MQPKI_OK)
        return rc;
    /* The CA token: the embedded SoftHSM token is shared, not copied (a copy would be a second
     * token whose login state and guard copies drift from the first): the replica's hsm/ is
     * the first directory's. A network HSM ([hsm] module) is reached by the configuration. */
    if (cfg.hsm_module[0] == '\0') {
        if (progress != NULL)
            progress("sharing the embedded SoftHSM token (hsm/ -> the first data directory's)");
        if ((rc = mqpki_path(hsm, sizeof(hsm), "%s/hsm", from)) != MQPKI_OK ||
            (rc = mqpki_path(link, sizeof(link), "%s/hsm", to)) != MQPKI_OK)
            return rc;
        if (realpath(hsm, path) == NULL)
            return mqpki_fail_errno(errno, hsm);
        if (symlink(path, link) != 0)
            return mqpki_fail_errno(errno, link);
    }
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        if (progress != NULL) {
            char step[64];
            snprintf(step, sizeof(step), "copying %s/", parts[i]);
            progress(step);
        }
        if ((rc = copy_tree(from, to, parts[i])) != MQPKI_OK)
            return rc;
    }
    if ((rc = mqpki_path(path, sizeof(path), "%s/run", to)) != MQPKI_OK ||
        (rc = mqpki_mkdir_p(path, 0700)) != MQPKI_OK)
        return rc;
    if (progress != NULL)
        progress("copying mqpki.conf (written last: its presence means a complete replica)");
    return copy_tree(from, to, "mqpki.conf");
}
