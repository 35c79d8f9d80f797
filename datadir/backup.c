/*
 * datadir/backup.c: `mqpki backup` and `mqpki restore` (docs/operations.md). One tar archive
 * (libarchive, POSIX pax) holding the store (SQLite's backup API: one snapshot while mqpkid
 * runs), the token's last-known-good object files, mqpki.conf, the CA certificates, the CRL
 * export, mqpkid's TLS identity and the bundled brokers' files; a MANIFEST of SHA-256 sums ends
 * it. A restore checks everything against the manifest in a staging directory beside the
 * target, opens it there (token self-test, audit verify, CRL number floor) and only then renames
 * it into place: a failed restore leaves nothing half-made at the target.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common.h"
#include "datadir.h"
#include "datadir_int.h"
#include "hsm.h"
#include "inventory.h"
#include "proto.h"

#define MANIFEST_NAME  "MANIFEST"
#define MANIFEST_MAGIC "mqpki-backup 1\n"
/* The header line of a directory that kept no PIN file (its PIN only in MQPKI_PIN). */
#define MANIFEST_PIN_ENV "# token PIN: MQPKI_PIN only, no file"
#define MANIFEST_MAX   (4u * 1024 * 1024)
#define ENTRIES_MAX    100000
#define ENTRY_MAX      ((int64_t)16 * 1024 * 1024)        /* any file but the store */
#define STORE_MAX      ((int64_t)64 * 1024 * 1024 * 1024) /* the store */
#define NAME_MAX_LEN   200
#define CHUNK          (64 * 1024)
#define SHA256_HEX     (2 * 32)
/* The restored CA's next CRL number lies this far above the highest one the backup knows of:
 * room for every CRL the lost CA may have published after the backup was taken (one per
 * revocation at most), so that no broker holding a newer one refuses the restored CA's. */
#define CRL_NUMBER_MARGIN 1000000

/* ---- names ----------------------------------------------------------------------------- */

/* A path inside the data directory as the archive may name it: relative, components of
 * [A-Za-z0-9._-] not starting with '.', at most 4 deep. */
static int name_ok(const char *name)
{
    size_t n = strlen(name), depth = 0;
    const char *p = name;

    if (n == 0 || n > NAME_MAX_LEN ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOP"
                     "QRSTUVWXYZ0123456789._-/") != n)
        return 0;
    while (*p != '\0') {
        const char *slash = strchr(p, '/');
        size_t len = slash != NULL ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || p[0] == '.' || ++depth > 4)
            return 0;
        if (slash == NULL)
            break;
        p = slash + 1;
        if (*p == '\0')
            return 0;
    }
    return 1;
}

static int is_tmp(const char *name)
{
    return strstr(name, ".tmp.") != NULL || name[0] == '.';
}

/* ---- writing ---------------------------------------------------------------------------- */

struct writer {
    struct archive *a;
    char *manifest; /* "HEX  NAME\n" lines */
    size_t manifest_len, files;
    uint64_t bytes;
};

static int manifest_add(char **m, size_t *len, const unsigned char md[32], const char *name)
{
    char line[SHA256_HEX + 2 + NAME_MAX_LEN + 2];
    char *grown;
    int n = 0;

    for (int i = 0; i < 32; i++)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%02x", md[i]);
    n += snprintf(line + n, sizeof(line) - (size_t)n, "  %s\n", name);
    if (*len + (size_t)n > MANIFEST_MAX)
        return mqpki_fail(MQPKI_ERR_TOO_LARGE, "backup manifest: too many files");
    if ((grown = realloc(*m, *len + (size_t)n + 1)) == NULL)
        return MQPKI_ERR_NOMEM;
    memcpy(grown + *len, line, (size_t)n + 1);
    *m = grown;
    *len += (size_t)n;
    return MQPKI_OK;
}

static int arc_fail(struct archive *a, const char *what)
{
    return mqpki_fail(MQPKI_ERR_IO, "%s: %s", what,
                      archive_error_string(a) ? archive_error_string(a) : "archive error");
}

/* Adds the regular file path as name; its SHA-256 goes into the manifest. */
static int add_file(struct writer *w, const char *path, const char *name)
{
    struct archive_entry *e = NULL;
    unsigned char buf[CHUNK], md[32];
    EVP_MD_CTX *ctx = NULL;
    struct stat st;
    int fd = -1, rc = MQPKI_OK;
    int64_t left;
    ssize_t got;

    if (!name_ok(name)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "backup: unexpected file name %s", name);
        goto out;
    }
    if ((fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0 || fstat(fd, &st) != 0) {
        rc = mqpki_fail_errno(errno, path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: not a regular file", path);
        goto out;
    }
    if ((e = archive_entry_new()) == NULL || (ctx = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    archive_entry_set_pathname(e, name);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, st.st_mode & 0644);
    archive_entry_set_size(e, st.st_size);
    archive_entry_set_mtime(e, st.st_mtime, 0);
    if (archive_write_header(w->a, e) != ARCHIVE_OK) {
        rc = arc_fail(w->a, name);
        goto out;
    }
    /* Exactly the size announced: a file that grows meanwhile is cut, one that shrinks fails. */
    for (left = st.st_size; left > 0; left -= got) {
        got = read(fd, buf, left < (int64_t)sizeof(buf) ? (size_t)left : sizeof(buf));
        if (got <= 0) {
            rc = got < 0 ? mqpki_fail_errno(errno, path)
                         : mqpki_fail(MQPKI_ERR_IO, "%s: changed while read", path);
            goto out;
        }
        if (archive_write_data(w->a, buf, (size_t)got) != got) {
            rc = arc_fail(w->a, name);
            goto out;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)got);
    }
    EVP_DigestFinal_ex(ctx, md, NULL);
    if ((rc = manifest_add(&w->manifest, &w->manifest_len, md, name)) != MQPKI_OK)
        goto out;
    w->files++;
    w->bytes += (uint64_t)st.st_size;
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    EVP_MD_CTX_free(ctx);
    archive_entry_free(e);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Adds home/rel when it exists (a regular file). */
static int add_optional(struct writer *w, const char *home, const char *rel)
{
    char path[PATH_MAX];
    struct stat st;

    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return MQPKI_OK;
    return add_file(w, path, rel);
}

/* Calls fn for each regular file (dirs 0) or each sub-directory (dirs 1) of home/rel, by name
 * under home; temporary files and the guard's quarantine left out. Links are not followed. */
static int for_each_entry(struct writer *w, const char *home, const char *rel, int dirs,
                          int (*fn)(struct writer *, const char *, const char *))
{
    char path[PATH_MAX], sub[PATH_MAX], name[PATH_MAX];
    struct dirent **list = NULL;
    struct stat st;
    int n, rc = MQPKI_OK;

    if (mqpki_path(path, sizeof(path), "%s/%s", home, rel) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", home);
    if ((n = scandir(path, &list, NULL, alphasort)) < 0)
        return errno == ENOENT ? MQPKI_OK : mqpki_fail_errno(errno, path);
    for (int i = 0; i < n; i++) {
        const char *d = list[i]->d_name;
        if (rc == MQPKI_OK && !is_tmp(d) && strcmp(d, "quarantine") != 0) {
            if (mqpki_path(sub, sizeof(sub), "%s/%s", path, d) != MQPKI_OK ||
                mqpki_path(name, sizeof(name), "%s/%s", rel, d) != MQPKI_OK)
                rc = mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", path);
            else if (lstat(sub, &st) == 0 && (dirs ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode)))
                rc = fn(w, home, name);
        }
        free(list[i]);
    }
    free(list);
    return rc;
}

/* Adds the regular files of home/rel (not recursive). */
static int add_dir(struct writer *w, const char *home, const char *rel)
{
    return for_each_entry(w, home, rel, 0, add_optional);
}

static int add_broker(struct writer *w, const char *home, const char *rel)
{
    static const char *const files[] = {"broker.conf", "broker.pem",     "broker.key",     "ca.pem",
                                        "acl.conf",    "state/full.der", "state/delta.der"};
    char name[PATH_MAX];
    int rc = MQPKI_OK;

    for (size_t i = 0; rc == MQPKI_OK && i < sizeof(files) / sizeof(files[0]); i++) {
        if (mqpki_path(name, sizeof(name), "%s/%s", rel, files[i]) != MQPKI_OK)
            return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", rel);
        rc = add_optional(w, home, name);
    }
    return rc;
}

static void rfc3339_now(char out[32])
{
    time_t now = time(NULL);
    struct tm tm;

    gmtime_r(&now, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int datadir_backup(struct datadir *dd, const char *out_path, unsigned flags,
                   struct datadir_backup_report *rep)
{
    struct writer w = {0};
    struct archive_entry *e = NULL;
    char tmp[PATH_MAX], db[PATH_MAX], dir[PATH_MAX], pin_path[PATH_MAX], stamp[32], *head = NULL;
    const char *home = dd->home;
    int fd = -1, rc = MQPKI_OK, made_tmp = 0;

    if (rep != NULL)
        memset(rep, 0, sizeof(*rep));
    if (dd->inv == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "datadir_backup: the store is not open");
    if (mqpki_path(tmp, sizeof(tmp), "%s.tmp.%ld", out_path, (long)getpid()) != MQPKI_OK ||
        mqpki_path(db, sizeof(db), "%s.db.tmp.%ld", out_path, (long)getpid()) != MQPKI_OK ||
        mqpki_path(dir, sizeof(dir), "%s", out_path) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", out_path);
    /* Replaced by rename: only a regular file of ours may be there (a link, a device or a FIFO
     * is refused, never renamed over). */
    {
        struct stat st;
        if (lstat(out_path, &st) == 0 && !S_ISREG(st.st_mode))
            return mqpki_fail(MQPKI_ERR_INVALID,
                              "%s exists and is not a regular file: name a new file", out_path);
    }
    /* 0600 from the first byte: the archive holds the token objects and private keys. */
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        rc = mqpki_fail_errno(errno, tmp);
        goto out;
    }
    made_tmp = 1;
    if ((w.a = archive_write_new()) == NULL ||
        archive_write_set_format_pax_restricted(w.a) != ARCHIVE_OK ||
        archive_write_open_fd(w.a, fd) != ARCHIVE_OK) {
        rc = w.a != NULL ? arc_fail(w.a, out_path) : MQPKI_ERR_NOMEM;
        goto out;
    }
    rfc3339_now(stamp);
    /* The PIN file mqpki.conf names is the default one and is not there: the directory runs on
     * MQPKI_PIN alone (it has no other way to its PIN), and its restore writes no PIN file. */
    {
        struct stat pst;
        if (mqpki_path(pin_path, sizeof(pin_path), "%s/secrets/pin", home) != MQPKI_OK ||
            strcmp(dd->cfg.pin_file, pin_path) != 0 || stat(pin_path, &pst) == 0 || errno != ENOENT)
            pin_path[0] = '\0';
    }
    if (asprintf(&head, MANIFEST_MAGIC "# created %s from %s\n%s%s", stamp, home,
                 inventory_is_remote(dd->inv)
                     ? "# store: PostgreSQL, not in this archive (the server's own backup)\n"
                     : "",
                 pin_path[0] != '\0' ? MANIFEST_PIN_ENV "\n" : "") < 0) {
        head = NULL;
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    /*
     * Files first, the store last: the store then holds every CRL and audit checkpoint that the
     * exported files name (audit verify compares crl/audit-checkpoint.json with the store). The
     * token comes from the guard's last-known-good copies: each file there is whole (written
     * atomically), never SoftHSM's live file in the middle of an in-place rewrite.
     */
    if ((rc = add_optional(&w, home, "mqpki.conf")) != MQPKI_OK ||
        (rc = add_dir(&w, home, "ca")) != MQPKI_OK || (rc = add_dir(&w, home, "crl")) != MQPKI_OK ||
        (rc = add_dir(&w, home, "tls")) != MQPKI_OK ||
        (rc = for_each_entry(&w, home, "hsm/tokens.good", 1, add_dir)) != MQPKI_OK ||
        (rc = for_each_entry(&w, home, "brokers", 1, add_broker)) != MQPKI_OK)
        goto out;
    if ((flags & DATADIR_BACKUP_SECRETS) &&
        ((rc = add_optional(&w, home, "secrets/pin")) != MQPKI_OK ||
         (rc = add_optional(&w, home, "secrets/so-pin")) != MQPKI_OK))
        goto out;
    /* A PostgreSQL store has the server's own backups (docs/ha.md); the archive holds the
     * rest, and its manifest says so. */
    if (!inventory_is_remote(dd->inv)) {
        if ((rc = inventory_backup(dd->inv, db)) != MQPKI_OK)
            goto out;
        rc = add_file(&w, db, "mqpki.db");
        unlink(db);
        if (rc != MQPKI_OK)
            goto out;
    }
    /* The manifest, last: the header line, then one SHA-256 per file. */
    {
        size_t hl = strlen(head), total = hl + w.manifest_len;
        char *text = malloc(total + 1);
        if (text == NULL) {
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        memcpy(text, head, hl);
        if (w.manifest_len > 0)
            memcpy(text + hl, w.manifest, w.manifest_len);
        if ((e = archive_entry_new()) == NULL) {
            free(text);
            rc = MQPKI_ERR_NOMEM;
            goto out;
        }
        archive_entry_set_pathname(e, MANIFEST_NAME);
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0600);
        archive_entry_set_size(e, (la_int64_t)total);
        archive_entry_set_mtime(e, time(NULL), 0);
        if (archive_write_header(w.a, e) != ARCHIVE_OK ||
            archive_write_data(w.a, text, total) != (la_ssize_t)total)
            rc = arc_fail(w.a, out_path);
        free(text);
        if (rc != MQPKI_OK)
            goto out;
    }
    if (archive_write_close(w.a) != ARCHIVE_OK) {
        rc = arc_fail(w.a, out_path);
        goto out;
    }
    /* Durable, then in place: a crash leaves the old FILE or the new one, never a part. */
    if (fsync(fd) != 0) {
        rc = mqpki_fail_errno(errno, tmp);
        goto out;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, out_path) != 0) {
        rc = mqpki_fail_errno(errno, out_path);
        goto out;
    }
    made_tmp = 0;
    (void)mqpki_dir_sync(dirname(dir));
    if (rep != NULL) {
        rep->files = w.files;
        rep->bytes = w.bytes;
        rep->with_secrets = (flags & DATADIR_BACKUP_SECRETS) != 0;
    }
    /* For the dashboard: when the newest backup was taken (RFC 3339, UTC). */
    if ((rc = inventory_meta_set(dd->inv, "backup.last_at", stamp)) != MQPKI_OK)
        goto out;
out:
    if (w.a != NULL)
        archive_write_free(w.a);
    archive_entry_free(e);
    if (fd >= 0)
        close(fd);
    if (made_tmp)
        unlink(tmp);
    free(w.manifest);
    free(head);
    return rc;
}

/* ---- restoring -------------------------------------------------------------------------- */

struct got {
    char name[NAME_MAX_LEN + 1];
    unsigned char md[32];
    int listed;
};

static int mkdirs_for(const char *root, const char *name)
{
    char path[PATH_MAX], *slash;

    if (mqpki_path(path, sizeof(path), "%s/%s", root, name) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", root);
    if ((slash = strrchr(path, '/')) == NULL)
        return MQPKI_OK;
    *slash = '\0';
    return mqpki_mkdir_p(path, 0700);
}

/* Extracts the current entry's data into root/name (new file), hashing it. */
static int extract(struct archive *a, const char *root, const char *name, int64_t size,
                   unsigned mode, unsigned char md[32])
{
    unsigned char buf[CHUNK];
    char path[PATH_MAX];
    EVP_MD_CTX *ctx = NULL;
    int64_t total = 0;
    la_ssize_t got;
    int fd = -1, rc;

    if ((rc = mkdirs_for(root, name)) != MQPKI_OK)
        goto out;
    if (mqpki_path(path, sizeof(path), "%s/%s", root, name) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", root);
        goto out;
    }
    /* O_EXCL: a name twice in the archive is refused, never overwritten. */
    if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)) < 0) {
        rc = errno == EEXIST ? mqpki_fail(MQPKI_ERR_PARSE, "backup: %s appears twice", name)
                             : mqpki_fail_errno(errno, path);
        goto out;
    }
    if ((ctx = EVP_MD_CTX_new()) == NULL || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    while ((got = archive_read_data(a, buf, sizeof(buf))) > 0) {
        total += got;
        if (total > size) {
            rc = mqpki_fail(MQPKI_ERR_PARSE, "backup: %s longer than its header says", name);
            goto out;
        }
        EVP_DigestUpdate(ctx, buf, (size_t)got);
        for (la_ssize_t off = 0; off < got;) {
            ssize_t w = write(fd, buf + off, (size_t)(got - off));
            if (w < 0) {
                rc = mqpki_fail_errno(errno, path);
                goto out;
            }
            off += w;
        }
    }
    if (got < 0 || total != size) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "backup: %s truncated (%s)", name,
                        got < 0 && archive_error_string(a) ? archive_error_string(a) : "short");
        goto out;
    }
    if (fsync(fd) != 0) {
        rc = mqpki_fail_errno(errno, path);
        goto out;
    }
    EVP_DigestFinal_ex(ctx, md, NULL);
out:
    OPENSSL_cleanse(buf, sizeof(buf));
    EVP_MD_CTX_free(ctx);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Checks the manifest text against what was extracted: every file listed once, with its sum. */
static int manifest_check(const char *text, size_t len, struct got *got, size_t n_got, int *pin_env)
{
    const char *p = text, *end = text + len;
    size_t listed = 0;

    if (len < strlen(MANIFEST_MAGIC) || memcmp(text, MANIFEST_MAGIC, strlen(MANIFEST_MAGIC)) != 0)
        return mqpki_fail(MQPKI_ERR_PARSE, "backup: not an mqpki backup (manifest header)");
    if (memchr(text, '\0', len) != NULL)
        return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest holds a NUL byte");
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        char line[SHA256_HEX + 2 + NAME_MAX_LEN + 2], hex[SHA256_HEX + 1], name[NAME_MAX_LEN + 1];
        unsigned char md[32];
        size_t ll, i;

        if (nl == NULL)
            return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest's last line unterminated");
        ll = (size_t)(nl - p);
        if (ll >= sizeof(line))
            return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest line too long");
        memcpy(line, p, ll);
        line[ll] = '\0';
        p = nl + 1;
        if (strcmp(line, MANIFEST_PIN_ENV) == 0)
            *pin_env = 1;
        if (line[0] == '#' || strncmp(line, "mqpki-backup ", 13) == 0)
            continue;
        if (ll < SHA256_HEX + 3 || line[SHA256_HEX] != ' ' || line[SHA256_HEX + 1] != ' ')
            return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest line malformed");
        memcpy(hex, line, SHA256_HEX);
        hex[SHA256_HEX] = '\0';
        if (strlen(line + SHA256_HEX + 2) >= sizeof(name))
            return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest name too long");
        memcpy(name, line + SHA256_HEX + 2, strlen(line + SHA256_HEX + 2) + 1);
        for (i = 0; i < 32; i++) {
            unsigned v;
            if (sscanf(hex + 2 * i, "%2x", &v) != 1 || strspn(hex + 2 * i, "0123456789abcdef") < 2)
                return mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest sum malformed (%s)", name);
            md[i] = (unsigned char)v;
        }
        for (i = 0; i < n_got; i++)
            if (strcmp(got[i].name, name) == 0)
                break;
        if (i == n_got)
            return mqpki_fail(MQPKI_ERR_TAMPERED,
                              "backup: %s is in the manifest, not in the archive", name);
        if (got[i].listed++)
            return mqpki_fail(MQPKI_ERR_PARSE, "backup: %s listed twice in the manifest", name);
        if (CRYPTO_memcmp(got[i].md, md, 32) != 0)
            return mqpki_fail(MQPKI_ERR_TAMPERED, "backup: %s does not match its SHA-256 sum",
                              name);
        listed++;
    }
    if (listed != n_got)
        for (size_t i = 0; i < n_got; i++)
            if (!got[i].listed)
                return mqpki_fail(MQPKI_ERR_TAMPERED, "backup: %s is not in the manifest",
                                  got[i].name);
    if (listed == 0)
        return mqpki_fail(MQPKI_ERR_PARSE, "backup: empty manifest");
    return MQPKI_OK;
}

/* Reads the archive into root (a new, empty directory), checking names, kinds, sizes and the
 * manifest. *n: files extracted. */
static int unpack(const char *file, const char *root, size_t *n, int *pin_env)
{
    struct archive *a = NULL;
    struct archive_entry *e;
    struct got *got = NULL;
    char *manifest = NULL;
    size_t n_got = 0, cap = 0, manifest_len = 0;
    int rc = MQPKI_OK, r;

    *n = 0;
    if ((a = archive_read_new()) == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    /* Plain tar only: no compression filter, no other format to parse. */
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, file, CHUNK) != ARCHIVE_OK) {
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: %s", file, archive_error_string(a));
        goto out;
    }
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        int64_t size = archive_entry_size(e);

        if (manifest != NULL) {
            rc = mqpki_fail(MQPKI_ERR_PARSE, "backup: entries after the manifest");
            goto out;
        }
        if (name == NULL || archive_entry_filetype(e) != AE_IFREG || !name_ok(name) || size < 0) {
            rc = mqpki_fail(MQPKI_ERR_PARSE,
                            "backup: entry '%.80s' refused (only regular files "
                            "with plain relative names)",
                            name != NULL ? name : "?");
            goto out;
        }
        if (strcmp(name, MANIFEST_NAME) == 0) {
            la_ssize_t got_len;
            if (size > MANIFEST_MAX) {
                rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "backup: manifest too large");
                goto out;
            }
            if ((manifest = malloc((size_t)size + 1)) == NULL) {
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
            got_len = archive_read_data(a, manifest, (size_t)size);
            if (got_len != (la_ssize_t)size) {
                rc = mqpki_fail(MQPKI_ERR_PARSE, "backup: manifest truncated");
                goto out;
            }
            manifest[size] = '\0';
            manifest_len = (size_t)size;
            continue;
        }
        if (size > (strcmp(name, "mqpki.db") == 0 ? STORE_MAX : ENTRY_MAX)) {
            rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "backup: %s too large", name);
            goto out;
        }
        if (n_got == ENTRIES_MAX) {
            rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "backup: more than %d files", ENTRIES_MAX);
            goto out;
        }
        if (n_got == cap) {
            struct got *grown;
            cap = cap ? 2 * cap : 64;
            if ((grown = realloc(got, cap * sizeof(*got))) == NULL) {
                rc = MQPKI_ERR_NOMEM;
                goto out;
            }
            got = grown;
        }
        memset(&got[n_got], 0, sizeof(got[n_got]));
        snprintf(got[n_got].name, sizeof(got[n_got].name), "%s", name);
        rc = extract(a, root, name, size, (archive_entry_perm(e) & 0644) | 0600, got[n_got].md);
        if (rc != MQPKI_OK)
            goto out;
        n_got++;
    }
    if (r != ARCHIVE_EOF) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "%s: %s", file, archive_error_string(a));
        goto out;
    }
    if (manifest == NULL) {
        rc = mqpki_fail(MQPKI_ERR_PARSE, "backup: no manifest (truncated archive?)");
        goto out;
    }
    if ((rc = manifest_check(manifest, manifest_len, got, n_got, pin_env)) != MQPKI_OK)
        goto out;
    *n = n_got;
out:
    if (a != NULL)
        archive_read_free(a);
    free(got);
    free(manifest);
    return rc;
}

/* Copies every file of root/from/TOKEN/ to root/to/TOKEN/ (0600): the live token made from
 * its last-known-good copies. */
static int tokens_from_good(const char *root)
{
    char good[PATH_MAX], sub[PATH_MAX], src[PATH_MAX], dst[PATH_MAX];
    struct dirent **toks = NULL, **files = NULL;
    int nt, nf, rc = MQPKI_OK;

    if (mqpki_path(good, sizeof(good), "%s/hsm/tokens.good", root) != MQPKI_OK)
        return mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", root);
    if (mqpki_path(dst, sizeof(dst), "%s/hsm/tokens", root) != MQPKI_OK ||
        (rc = mqpki_mkdir_p(dst, 0700)) != MQPKI_OK)
        return rc != MQPKI_OK ? rc : mqpki_fail(MQPKI_ERR_INVALID, "path too long");
    if ((nt = scandir(good, &toks, NULL, alphasort)) < 0)
        return errno == ENOENT ? MQPKI_OK : mqpki_fail_errno(errno, good);
    for (int i = 0; i < nt; i++) {
        if (rc == MQPKI_OK && toks[i]->d_name[0] != '.' &&
            mqpki_path(sub, sizeof(sub), "%s/%s", good, toks[i]->d_name) == MQPKI_OK &&
            (nf = scandir(sub, &files, NULL, alphasort)) >= 0) {
            for (int j = 0; j < nf; j++) {
                unsigned char *data = NULL;
                size_t len = 0;
                if (rc == MQPKI_OK && files[j]->d_name[0] != '.') {
                    if (mqpki_path(src, sizeof(src), "%s/%s", sub, files[j]->d_name) != MQPKI_OK ||
                        mqpki_path(dst, sizeof(dst), "%s/hsm/tokens/%s", root, toks[i]->d_name) !=
                            MQPKI_OK)
                        rc = mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", root);
                    else if ((rc = mqpki_mkdir_p(dst, 0700)) == MQPKI_OK &&
                             (rc = mqpki_file_read(src, ENTRY_MAX, &data, &len)) == MQPKI_OK &&
                             mqpki_path(dst, sizeof(dst), "%s/hsm/tokens/%s/%s", root,
                                        toks[i]->d_name, files[j]->d_name) == MQPKI_OK)
                        rc = mqpki_file_write_atomic(dst, data, len, 0600);
                    if (data != NULL)
                        OPENSSL_cleanse(data, len);
                    free(data);
                }
                free(files[j]);
            }
            free(files);
            files = NULL;
        }
        free(toks[i]);
    }
    free(toks);
    return rc;
}

/* The highest CRL number in a DER CRL file (0 when absent or unreadable). */
static int64_t crl_file_number(const char *path)
{
    unsigned char *der = NULL;
    struct proto_crl_info info;
    X509_CRL *crl = NULL;
    char why[128];
    size_t len = 0;
    int64_t n = 0;

    if (mqpki_file_read(path, PROTO_CRL_MAX_DER, &der, &len) == MQPKI_OK &&
        proto_crl_parse(der, len, &crl, why, sizeof(why)) == 0 &&
        proto_crl_describe(crl, &info, why, sizeof(why)) == 0)
        n = info.number;
    mqpki_err_clear();
    X509_CRL_free(crl);
    free(der);
    return n;
}

/* The highest CRL number in the restored files: crl/ and every broker's kept CRLs. */
static int64_t crl_files_high(const char *root)
{
    static const char *const crls[] = {"crl/issuing.crl", "crl/issuing-delta.crl"};
    char path[PATH_MAX], brokers[PATH_MAX];
    struct dirent **list = NULL;
    int64_t high = 0, v;
    int n;

    for (size_t i = 0; i < sizeof(crls) / sizeof(crls[0]); i++)
        if (mqpki_path(path, sizeof(path), "%s/%s", root, crls[i]) == MQPKI_OK &&
            (v = crl_file_number(path)) > high)
            high = v;
    if (mqpki_path(brokers, sizeof(brokers), "%s/brokers", root) != MQPKI_OK ||
        (n = scandir(brokers, &list, NULL, alphasort)) < 0)
        return high;
    for (int i = 0; i < n; i++) {
        if (list[i]->d_name[0] != '.') {
            if (mqpki_path(path, sizeof(path), "%s/%s/state/full.der", brokers, list[i]->d_name) ==
                    MQPKI_OK &&
                (v = crl_file_number(path)) > high)
                high = v;
            if (mqpki_path(path, sizeof(path), "%s/%s/state/delta.der", brokers, list[i]->d_name) ==
                    MQPKI_OK &&
                (v = crl_file_number(path)) > high)
                high = v;
        }
        free(list[i]);
    }
    free(list);
    return high;
}

/* Empty directories the data directory needs that hold no file of the backup. */
static int make_dirs(const char *root)
{
    static const char *const dirs[] = {"secrets", "hsm", "ca", "tls", "crl", "brokers", "run"};
    char path[PATH_MAX], sub[PATH_MAX];
    struct dirent **list = NULL;
    int n, rc = MQPKI_OK;

    for (size_t i = 0; rc == MQPKI_OK && i < sizeof(dirs) / sizeof(dirs[0]); i++)
        rc = mqpki_path(path, sizeof(path), "%s/%s", root, dirs[i]) == MQPKI_OK
                 ? mqpki_mkdir_p(path, 0700)
                 : mqpki_fail(MQPKI_ERR_INVALID, "path too long under %s", root);
    if (rc != MQPKI_OK || mqpki_path(path, sizeof(path), "%s/brokers", root) != MQPKI_OK ||
        (n = scandir(path, &list, NULL, alphasort)) < 0)
        return rc;
    for (int i = 0; i < n; i++) {
        if (rc == MQPKI_OK && list[i]->d_name[0] != '.') {
            if (mqpki_path(sub, sizeof(sub), "%s/%s/data", path, list[i]->d_name) == MQPKI_OK)
                rc = mqpki_mkdir_p(sub, 0700);
            if (rc == MQPKI_OK &&
                mqpki_path(sub, sizeof(sub), "%s/%s/state", path, list[i]->d_name) == MQPKI_OK)
                rc = mqpki_mkdir_p(sub, 0700);
        }
        free(list[i]);
    }
    free(list);
    return rc;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    if (flag == FTW_DP)
        return rmdir(path) != 0;
    return unlink(path) != 0;
}

/* Removes the staging directory of a failed restore (ours alone: made with mkdir above). */
static void rm_tree(const char *dir)
{
    if (nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        mqpki_log(MQPKI_LOG_WARN, "%s: could not remove the staging directory", dir);
}

/* 0 when dir does not exist or is an empty directory; MQPKI_ERR_EXISTS otherwise. */
static int target_free(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int rc = MQPKI_OK;

    if (d == NULL) {
        if (errno == ENOENT)
            return MQPKI_OK;
        return errno == ENOTDIR
                   ? mqpki_fail(MQPKI_ERR_EXISTS, "%s exists and is not a directory", dir)
                   : mqpki_fail_errno(errno, dir);
    }
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0) {
            rc = mqpki_fail(MQPKI_ERR_EXISTS,
                            "%s is not empty: restore only into a new or empty directory "
                            "(a live data directory is never overwritten)",
                            dir);
            break;
        }
    closedir(d);
    return rc;
}

int datadir_restore(const char *file, const char *home, struct datadir_restore_report *rep)
{
    char stage[PATH_MAX], parent[PATH_MAX], base[PATH_MAX], path[PATH_MAX], stamp[32];
    char pin[HSM_PIN_MAX];
    struct datadir *dd = NULL;
    struct datadir_audit_report audit;
    struct stat st;
    int64_t high = 0, files_high;
    size_t n = 0;
    int rc, staged = 0, pin_env = 0;

    memset(pin, 0, sizeof(pin));
    if (rep != NULL)
        memset(rep, 0, sizeof(*rep));
    if ((rc = target_free(home)) != MQPKI_OK)
        goto out;
    snprintf(parent, sizeof(parent), "%s", home);
    snprintf(base, sizeof(base), "%s", home);
    /* The staging directory sits beside the target (same file system: one rename). */
    if (mqpki_path(stage, sizeof(stage), "%s/.%s.restore.%ld", dirname(parent), basename(base),
                   (long)getpid()) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", home);
        goto out;
    }
    if (mkdir(stage, 0700) != 0) {
        rc = mqpki_fail_errno(errno, stage);
        goto out;
    }
    staged = 1;
    if ((rc = unpack(file, stage, &n, &pin_env)) != MQPKI_OK)
        goto out;
    if ((rc = make_dirs(stage)) != MQPKI_OK || (rc = tokens_from_good(stage)) != MQPKI_OK)
        goto out;
    /* Without its PIN (left out unless --include-secrets) the token needs MQPKI_PIN: it
     * becomes secrets/pin when mqpki.conf keeps the PIN there and the backed-up directory had
     * that file (a directory run on MQPKI_PIN alone is restored as one). */
    if (mqpki_path(path, sizeof(path), "%s/secrets/pin", stage) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: path too long", stage);
        goto out;
    }
    if (stat(path, &st) != 0) {
        struct datadir_config cfg;
        char want[PATH_MAX];
        int kept_here;
        if ((rc = datadir_config_load(stage, &cfg)) != MQPKI_OK)
            goto out;
        kept_here = mqpki_path(want, sizeof(want), "%s/secrets/pin", stage) == MQPKI_OK &&
                    strcmp(cfg.pin_file, want) == 0;
        if (kept_here && pin_env) {
            /* The self-test below needs the PIN: MQPKI_PIN's, written nowhere. */
            if ((rc = hsm_pin_read(path, pin)) != MQPKI_OK) {
                rc = mqpki_fail(MQPKI_ERR_INVALID, "the backed-up directory kept its token PIN "
                                                   "only in MQPKI_PIN: set it for the restore");
                goto out;
            }
        } else if (kept_here) {
            if ((rc = hsm_pin_read(path, pin)) != MQPKI_OK) {
                rc = mqpki_fail(MQPKI_ERR_INVALID,
                                "the backup holds no token PIN: set MQPKI_PIN for the restore");
                goto out;
            }
            {
                size_t pl = strlen(pin);
                pin[pl] = '\n';
                rc = mqpki_file_write_atomic(path, pin, pl + 1, 0600);
            }
            if (rc != MQPKI_OK)
                goto out;
        }
    }
    /* Opened where it was unpacked: the token self-test and the audit check run on exactly
     * what will be renamed into place. */
    if ((rc = datadir_open(stage, DATADIR_STORE | DATADIR_CA, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = ca_selftest(datadir_ca(dd))) != MQPKI_OK) {
        rc = mqpki_fail(MQPKI_ERR_HSM, "restored token: self-test (sign and verify with the "
                                       "issuing CA key) failed");
        goto out;
    }
    if ((rc = datadir_audit_verify(dd, NULL, 0, &audit)) != MQPKI_OK)
        goto out;
    /* A PostgreSQL store is not in the archive: the restored directory names the live server,
     * whose own restore governs its data; nothing is written to it here. */
    if (!inventory_is_remote(dd->inv)) {
        /* CRL numbering continues above anything the backup knows of, with a margin for what
         * the lost CA published after it (docs/operations.md). */
        if ((rc = inventory_crl_number_high(dd->inv, &high)) != MQPKI_OK)
            goto out;
        if ((files_high = crl_files_high(stage)) > high)
            high = files_high;
        if ((rc = inventory_crl_number_raise(dd->inv, high + CRL_NUMBER_MARGIN)) != MQPKI_OK)
            goto out;
        rfc3339_now(stamp);
        if ((rc = inventory_meta_set(dd->inv, "drill.last_at", stamp)) != MQPKI_OK)
            goto out;
    }
    if (rep != NULL) {
        rep->files = n;
        rep->crl_high = high;
        rep->crl_next = inventory_is_remote(dd->inv) ? 0 : high + CRL_NUMBER_MARGIN + 1;
        rep->audit_events = audit.store.events;
    }
    datadir_close(dd);
    dd = NULL;
    /* Into place: the target must still be free (an empty directory is replaced). */
    if ((rc = target_free(home)) != MQPKI_OK)
        goto out;
    if (rmdir(home) != 0 && errno != ENOENT) {
        rc = mqpki_fail_errno(errno, home);
        goto out;
    }
    if (rename(stage, home) != 0) {
        rc = mqpki_fail_errno(errno, home);
        goto out;
    }
    staged = 0;
    snprintf(parent, sizeof(parent), "%s", home);
    (void)mqpki_dir_sync(dirname(parent));
out:
    OPENSSL_cleanse(pin, sizeof(pin));
    datadir_close(dd);
    if (staged)
        rm_tree(stage);
    return rc;
}
