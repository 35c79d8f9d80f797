/*
 * p11/softhsm.c: the SoftHSM2 file-store guard (contract and crash windows in
 * docs/internals/p11.md).
 *
 * SoftHSM 2.6 keeps a token in TOKENDIR/UUID/: token.object (label, serial, flags, PIN blobs),
 * one UUID.object per object, an 8-byte "generation" counter and empty *.lock files. It rewrites
 * token.object in place on every C_Login (open O_RDWR, ftruncate to 0, write, no fsync), and it
 * releases its fcntl lock before the buffered write reaches the file. A crash (or a power loss)
 * in between leaves an empty or short file, and SoftHSM then no longer shows the token. Here we
 * check every token file's structure before the module is initialized, keep last-known-good
 * copies (written atomically and fsynced) after every successful login or key change, and put
 * a damaged file back from its good copy.
 *
 * File format (SoftHSM's ObjectFile.cpp and File.cpp; checked with xxd on Debian's 2.6.1): an
 * 8-byte big-endian generation counter, then attributes until end of file, each a u64 BE
 * PKCS#11 attribute type, a u64 BE value kind and the value: 1 boolean (1 byte, 0x00 or 0xFF),
 * 2 integer (u64 BE), 3 byte string (u64 BE length, bytes), 4 attribute map (u64 BE length of
 * the entries, then type, kind and value entries of kinds 1, 2, 3, 5), 5 mechanism set (u64 BE
 * count, count u64 BE values). SoftHSM writes a std::map, so types come in ascending order.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "p11_int.h"

#define FILE_MAX          (16 * 1024 * 1024) /* far above any token file; larger is left alone */
#define GEN_LEN           8                  /* the generation counter heading every file */
#define RECHECK_NS        50000000L          /* a damaged file is read again after 50 ms */
#define YOUNG_SECONDS     10 /* a damaged object younger than this may be in the making */
#define QUARANTINE        "quarantine"
#define CONF_MAX          (64 * 1024)
#define DEFAULT_CONF      "/etc/softhsm/softhsm2.conf"
#define CKA_OS_TOKENLABEL 0x80005349UL /* CKA_VENDOR_DEFINED + 0x5348 ('SH') + 1 */

enum { KIND_BOOL = 1, KIND_ULONG = 2, KIND_BYTES = 3, KIND_MAP = 4, KIND_MECHS = 5 };

/* What a name in a token directory is. */
enum file_role { ROLE_OTHER, ROLE_TOKEN, ROLE_OBJECT, ROLE_GENERATION, ROLE_TMP };

/* One guard operation at a time in this process: they share temporary file names (PID based). */
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;

#define GLOG(g, level, ...) p11_logf((g)->log_fn, (g)->log_ctx, (level), __VA_ARGS__)

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);

    return n > m && strcmp(s + n - m, suffix) == 0;
}

static enum file_role role_of(const char *name)
{
    const char *tmp;

    if (strcmp(name, "token.object") == 0)
        return ROLE_TOKEN;
    if (strcmp(name, "generation") == 0)
        return ROLE_GENERATION;
    /* Our own atomic writes use NAME.tmp.PID (common.c); SoftHSM never makes such names. */
    tmp = strstr(name, ".tmp.");
    if (tmp != NULL && tmp[5] != '\0' && strspn(tmp + 5, "0123456789") == strlen(tmp + 5) &&
        (strncmp(name, "generation.", 11) == 0 || strstr(name, ".object.tmp.") == tmp - 7))
        return ROLE_TMP;
    if (ends_with(name, ".object"))
        return ROLE_OBJECT;
    return ROLE_OTHER;
}

/* A token directory name: SoftHSM names them by UUID; never ours ('.', the quarantine). */
static int token_name(const char *name)
{
    return name[0] != '.' && strcmp(name, QUARANTINE) != 0;
}

struct reader {
    const unsigned char *p;
    size_t len, off;
};

static int rd_u64(struct reader *r, uint64_t *v)
{
    if (r->len - r->off < 8)
        return 0;
    *v = 0;
    for (int i = 0; i < 8; i++)
        *v = (*v << 8) | r->p[r->off + (size_t)i];
    r->off += 8;
    return 1;
}

/*
 * Checks one value of kind kind at r and skips it (NULL), else says why in why; in_map: inside
 * an attribute map, which holds no maps.
 */
static const char *value_check(struct reader *r, uint64_t kind, int in_map, char *why, size_t size)
{
    uint64_t n, prev = 0, type, sub = 0;
    struct reader map;

    switch (kind) {
    case KIND_BOOL:
        if (r->len - r->off < 1)
            goto truncated;
        /* SoftHSM writes 0xFF or 0x00 (File::writeBool); anything else is not its file. */
        if (r->p[r->off] != 0x00 && r->p[r->off] != 0xFF) {
            snprintf(why, size, "boolean byte 0x%02x at offset %zu", r->p[r->off], r->off);
            return why;
        }
        r->off++;
        return NULL;
    case KIND_ULONG:
        if (!rd_u64(r, &n))
            goto truncated;
        return NULL;
    case KIND_BYTES:
        if (!rd_u64(r, &n) || n > r->len - r->off)
            goto truncated;
        r->off += (size_t)n;
        return NULL;
    case KIND_MECHS:
        if (!rd_u64(r, &n) || n > (r->len - r->off) / 8)
            goto truncated;
        for (uint64_t i = 0; i < n; i++) {
            (void)rd_u64(r, &sub);
            if (i > 0 && sub <= prev) {
                snprintf(why, size, "mechanism set out of order at offset %zu", r->off - 8);
                return why;
            }
            prev = sub;
        }
        return NULL;
    case KIND_MAP:
        if (in_map)
            break;
        if (!rd_u64(r, &n) || n > r->len - r->off)
            goto truncated;
        /* The entries must fill exactly the announced length. */
        map.p = r->p + r->off;
        map.len = (size_t)n;
        map.off = 0;
        while (map.off < map.len) {
            const char *bad;

            if (!rd_u64(&map, &type) || !rd_u64(&map, &sub))
                goto truncated;
            if (map.off > 16 && type <= prev) {
                snprintf(why, size, "attribute map out of order at offset %zu",
                         r->off + map.off - 16);
                return why;
            }
            prev = type;
            bad = value_check(&map, sub, 1, why, size);
            if (bad != NULL)
                return bad;
        }
        r->off += (size_t)n;
        return NULL;
    default: break;
    }
    snprintf(why, size, "unknown value kind %llu at offset %zu", (unsigned long long)kind, r->off);
    return why;
truncated:
    snprintf(why, size, "truncated at offset %zu of %zu bytes", r->off, r->len);
    return why;
}

/*
 * NULL when buf (len bytes) is a structurally complete file of role role, else a short reason
 * in why. For token.object, *label (when not NULL) gets its 32-byte token label.
 */
static const char *file_check(enum file_role role, const unsigned char *buf, size_t len,
                              unsigned char label[P11_TOKEN_LABEL_MAX], char *why, size_t size)
{
    struct reader r = {buf, len, GEN_LEN};
    uint64_t type, kind, prev = 0;
    size_t count = 0, value_at;
    int has_label = 0;
    const char *bad;

    if (role == ROLE_GENERATION) {
        if (len == GEN_LEN)
            return NULL;
        snprintf(why, size, "%zu bytes where the counter takes %d", len, GEN_LEN);
        return why;
    }
    if (len == 0) {
        snprintf(why, size, "empty");
        return why;
    }
    if (len < GEN_LEN) {
        snprintf(why, size, "%zu bytes, shorter than its generation counter", len);
        return why;
    }
    while (r.off < r.len) {
        if (!rd_u64(&r, &type) || !rd_u64(&r, &kind)) {
            snprintf(why, size, "truncated in an attribute header at offset %zu of %zu", r.off,
                     r.len);
            return why;
        }
        if (count > 0 && type <= prev) {
            snprintf(why, size, "attribute 0x%llx out of order at offset %zu",
                     (unsigned long long)type, r.off - 16);
            return why;
        }
        if (count == 0 && role == ROLE_OBJECT && type != 0) {
            /* Every PKCS#11 object has CKA_CLASS (0), which sorts first. */
            snprintf(why, size, "no CKA_CLASS");
            return why;
        }
        value_at = r.off;
        bad = value_check(&r, kind, 0, why, size);
        if (bad != NULL)
            return bad;
        if (type == CKA_OS_TOKENLABEL && kind == KIND_BYTES &&
            r.off - value_at == 8 + P11_TOKEN_LABEL_MAX) {
            has_label = 1;
            if (label != NULL)
                memcpy(label, buf + value_at + 8, P11_TOKEN_LABEL_MAX);
        }
        prev = type;
        count++;
    }
    if (count == 0) {
        snprintf(why, size, "no attributes (a half-created object)");
        return why;
    }
    if (role == ROLE_TOKEN && !has_label) {
        snprintf(why, size, "no token label");
        return why;
    }
    return NULL;
}

#ifdef UNIT_TESTING
const char *p11_softhsm_damage(const char *name, const unsigned char *buf, size_t len, char *why,
                               size_t size)
{
    return file_check(role_of(name), buf, len, NULL, why, size);
}
#endif

/* Equal content: the whole file for generation, all but the counter for the others. */
static int same_content(enum file_role role, const unsigned char *a, size_t alen,
                        const unsigned char *b, size_t blen)
{
    size_t skip = role == ROLE_GENERATION ? 0 : GEN_LEN;

    return alen == blen && alen >= skip && memcmp(a + skip, b + skip, alen - skip) == 0;
}

/*
 * Reads a regular file (never through a symlink) of at most FILE_MAX bytes. 1 read, 0 missing,
 * -1 not a regular file or unreadable (left alone, detail recorded).
 */
static int file_load(const char *path, unsigned char **buf, size_t *len, struct stat *st)
{
    struct stat sb;
    int rc;

    *buf = NULL;
    *len = 0;
    if (st == NULL)
        st = &sb;
    if (lstat(path, st) != 0) {
        if (errno == ENOENT)
            return 0;
        mqpki_fail(MQPKI_ERR_IO, "%s: %s", path, strerror(errno));
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        mqpki_fail(MQPKI_ERR_IO, "%s: not a regular file; left alone", path);
        return -1;
    }
    rc = mqpki_file_read(path, FILE_MAX, buf, len);
    if (rc == MQPKI_ERR_NOT_FOUND)
        return 0;
    return rc == MQPKI_OK ? 1 : -1;
}

/* 1 when another process holds a lock on path (SoftHSM's UUID.lock during a transaction). */
static int lock_held(const char *path)
{
    struct flock fl;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW), held = 0;

    if (fd < 0)
        return 0;
    memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
        held = 1;
    close(fd);
    return held;
}

static int path_join(char *out, const char *a, const char *b, const char *c)
{
    int rc = c != NULL ? mqpki_path(out, PATH_MAX, "%s/%s/%s", a, b, c)
                       : mqpki_path(out, PATH_MAX, "%s/%s", a, b);

    return rc == MQPKI_OK ? MQPKI_OK : mqpki_fail(MQPKI_ERR_INVALID, "%s/%s: path too long", a, b);
}

/* Creates dir (and its parents) 0700 and makes sure it is 0700 even if it existed. */
static int private_dir(const char *dir)
{
    int rc = mqpki_mkdir_p(dir, 0700);

    if (rc == MQPKI_OK && chmod(dir, 0700) != 0)
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
    return rc;
}

/* The entries of dir (scandir); 0 and no list when it does not exist. */
static int dir_list(const char *dir, struct dirent ***list, int *n)
{
    *list = NULL;
    *n = scandir(dir, list, NULL, alphasort);
    if (*n >= 0)
        return MQPKI_OK;
    *n = 0;
    *list = NULL;
    if (errno == ENOENT)
        return MQPKI_OK;
    return mqpki_fail(MQPKI_ERR_IO, "%s: %s", dir, strerror(errno));
}

static void dir_list_free(struct dirent **list, int n)
{
    for (int i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

static int is_dir(const char *path)
{
    struct stat st;

    return lstat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Moves a damaged file into GOODDIR/quarantine/TOKEN/NAME.TIME; never deletes it. */
static int quarantine(const struct p11_softhsm_guard *g, const char *token, const char *name,
                      const char *path, char *dest)
{
    char dir[PATH_MAX], base[NAME_MAX + 32];
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc;

    if ((rc = path_join(dir, g->gooddir, QUARANTINE, token)) != MQPKI_OK ||
        (rc = private_dir(dir)) != MQPKI_OK)
        goto out;
    snprintf(base, sizeof(base), "%s.%lld", name, (long long)time(NULL));
    if ((rc = path_join(dest, dir, base, NULL)) != MQPKI_OK)
        goto out;
    if (rename(path, dest) != 0) {
        if (errno != EXDEV) {
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: cannot move to %s: %s", path, dest, strerror(errno));
            goto out;
        }
        /* Another file system: copy (durably), then remove the original. */
        if (file_load(path, &buf, &len, NULL) != 1 ||
            (rc = mqpki_file_write_atomic(dest, buf, len, 0600)) != MQPKI_OK || unlink(path) != 0) {
            rc = mqpki_fail(MQPKI_ERR_IO, "%s: cannot move to %s", path, dest);
            goto out;
        }
    }
    /* It may hold key material: as private as the good copies. */
    (void)chmod(dest, 0600);
    (void)mqpki_dir_sync(dir);
    rc = path_join(dir, g->tokendir, token, NULL);
    if (rc == MQPKI_OK)
        (void)mqpki_dir_sync(dir);
out:
    free(buf);
    return rc;
}

/* One token directory of the check. */
static int check_token(const struct p11_softhsm_guard *g, const char *token, unsigned *repaired)
{
    char dir[PATH_MAX], path[PATH_MAX], good[PATH_MAX], lock[PATH_MAX], dest[PATH_MAX], why[160],
        why_good[160];
    struct dirent **list = NULL;
    unsigned char *buf = NULL, *gbuf = NULL;
    size_t len, glen;
    struct stat st;
    enum file_role role;
    int n = 0, rc, got, fail = MQPKI_OK;

    if ((rc = path_join(dir, g->tokendir, token, NULL)) != MQPKI_OK ||
        (rc = dir_list(dir, &list, &n)) != MQPKI_OK)
        goto out;
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        struct timespec pause = {0, RECHECK_NS};

        free(buf);
        free(gbuf);
        buf = gbuf = NULL;
        role = role_of(name);
        if (role == ROLE_OTHER || path_join(path, dir, name, NULL) != MQPKI_OK)
            continue;
        if (role == ROLE_TMP) {
            /* A temporary file of a write that crashed before its rename (not one under way). */
            if (lstat(path, &st) == 0 && time(NULL) - st.st_mtime >= YOUNG_SECONDS &&
                unlink(path) == 0)
                GLOG(g, MQPKI_LOG_DEBUG, "SoftHSM guard: removed leftover %s", path);
            continue;
        }
        got = file_load(path, &buf, &len, &st);
        if (got <= 0) {
            if (got < 0)
                GLOG(g, MQPKI_LOG_WARN, "SoftHSM guard: %s", mqpki_err_detail(MQPKI_ERR_IO));
            continue;
        }
        if (file_check(role, buf, len, NULL, why, sizeof(why)) == NULL)
            continue;
        /*
         * SoftHSM truncates and then writes without holding its lock in between: a live process
         * may be rewriting this file right now. Only a file still damaged a moment later is ours
         * to repair.
         */
        nanosleep(&pause, NULL);
        free(buf);
        buf = NULL;
        got = file_load(path, &buf, &len, &st);
        if (got <= 0 || file_check(role, buf, len, NULL, why, sizeof(why)) == NULL)
            continue;
        if (path_join(good, g->gooddir, token, name) != MQPKI_OK)
            continue;
        if (file_load(good, &gbuf, &glen, NULL) == 1 &&
            file_check(role, gbuf, glen, NULL, why_good, sizeof(why_good)) == NULL) {
            rc = mqpki_file_write_atomic(path, gbuf, glen, 0600);
            if (rc != MQPKI_OK) {
                fail = rc;
                GLOG(g, MQPKI_LOG_ERROR, "SoftHSM guard: %s is damaged (%s), restore failed: %s",
                     path, why, mqpki_err_detail(rc));
                continue;
            }
            GLOG(g, MQPKI_LOG_WARN, "SoftHSM guard: %s was damaged (%s); restored from %s", path,
                 why, good);
            (*repaired)++;
            continue;
        }
        if (role == ROLE_TOKEN) {
            /* Moving it would not bring the token back; leave it for the operator. */
            GLOG(g, MQPKI_LOG_ERROR, "SoftHSM guard: %s is damaged (%s) and %s holds no good copy",
                 path, why, g->gooddir);
            continue;
        }
        if (role == ROLE_OBJECT) {
            snprintf(lock, sizeof(lock), "%.*s.lock", (int)(strlen(path) - 7), path);
            if (time(NULL) - st.st_mtime < YOUNG_SECONDS || lock_held(lock)) {
                GLOG(g, MQPKI_LOG_WARN,
                     "SoftHSM guard: %s is incomplete (%s) but recent or locked: left in place "
                     "(another process may be creating it)",
                     path, why);
                continue;
            }
        }
        rc = quarantine(g, token, name, path, dest);
        if (rc != MQPKI_OK) {
            fail = rc;
            GLOG(g, MQPKI_LOG_ERROR, "SoftHSM guard: %s is damaged (%s): %s", path, why,
                 mqpki_err_detail(rc));
            continue;
        }
        GLOG(g, MQPKI_LOG_WARN, "SoftHSM guard: %s was damaged (%s) with no good copy; moved to %s",
             path, why, dest);
        (*repaired)++;
    }
    rc = fail;
out:
    free(buf);
    free(gbuf);
    dir_list_free(list, n);
    return rc;
}

int p11_softhsm_check(const struct p11_softhsm_guard *g, unsigned *repaired)
{
    struct dirent **list = NULL;
    char path[PATH_MAX];
    unsigned count = 0;
    int n = 0, rc, trc;

    if (repaired != NULL)
        *repaired = 0;
    if (g == NULL || g->tokendir == NULL || g->gooddir == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "SoftHSM guard: missing directories");
    pthread_mutex_lock(&guard_lock);
    rc = dir_list(g->tokendir, &list, &n);
    for (int i = 0; rc == MQPKI_OK && i < n; i++) {
        if (!token_name(list[i]->d_name) ||
            path_join(path, g->tokendir, list[i]->d_name, NULL) != MQPKI_OK || !is_dir(path))
            continue;
        trc = check_token(g, list[i]->d_name, &count);
        if (trc != MQPKI_OK)
            rc = trc;
    }
    pthread_mutex_unlock(&guard_lock);
    dir_list_free(list, n);
    if (repaired != NULL)
        *repaired = count;
    return rc;
}

/*
 * Copies every valid file of token from one side to the other where the other side lacks it,
 * holds a damaged copy, or holds other content (ignoring the generation prefix): live -> good
 * for a save, good -> live for a restore. A damaged source is never copied: a good copy keeps
 * what worked last. *copied counts the files written.
 */
static int copy_valid(const struct p11_softhsm_guard *g, const char *token, int restoring,
                      unsigned *copied)
{
    char live_dir[PATH_MAX], good_dir[PATH_MAX], live[PATH_MAX], good[PATH_MAX], why[160];
    struct dirent **list = NULL;
    unsigned char *src = NULL, *dst = NULL;
    size_t src_len, dst_len;
    enum file_role role;
    int n = 0, rc;

    if ((rc = path_join(live_dir, g->tokendir, token, NULL)) != MQPKI_OK ||
        (rc = path_join(good_dir, g->gooddir, token, NULL)) != MQPKI_OK ||
        (rc = private_dir(restoring ? live_dir : good_dir)) != MQPKI_OK ||
        (rc = dir_list(restoring ? good_dir : live_dir, &list, &n)) != MQPKI_OK)
        goto out;
    for (int i = 0; rc == MQPKI_OK && i < n; i++) {
        const char *name = list[i]->d_name;
        const char *from, *to;

        free(src);
        free(dst);
        src = dst = NULL;
        role = role_of(name);
        if (role == ROLE_OTHER || role == ROLE_TMP ||
            path_join(live, live_dir, name, NULL) != MQPKI_OK ||
            path_join(good, good_dir, name, NULL) != MQPKI_OK)
            continue;
        from = restoring ? good : live;
        to = restoring ? live : good;
        if (file_load(from, &src, &src_len, NULL) != 1 ||
            file_check(role, src, src_len, NULL, why, sizeof(why)) != NULL)
            continue;
        if (file_load(to, &dst, &dst_len, NULL) == 1 &&
            file_check(role, dst, dst_len, NULL, why, sizeof(why)) == NULL &&
            same_content(role, src, src_len, dst, dst_len))
            continue;
        if ((rc = mqpki_file_write_atomic(to, src, src_len, 0600)) != MQPKI_OK)
            break;
        if (restoring)
            GLOG(g, MQPKI_LOG_WARN, "SoftHSM guard: %s restored from %s", live, good);
        (*copied)++;
    }
out:
    free(src);
    free(dst);
    dir_list_free(list, n);
    return rc;
}

/* One token directory of the save. */
static int save_token(const struct p11_softhsm_guard *g, const char *token, unsigned *saved)
{
    char live_dir[PATH_MAX], good_dir[PATH_MAX], path[PATH_MAX], good[PATH_MAX];
    struct dirent **list = NULL;
    int n = 0, rc, removed = 0;

    if ((rc = copy_valid(g, token, 0, saved)) != MQPKI_OK ||
        (rc = path_join(live_dir, g->tokendir, token, NULL)) != MQPKI_OK ||
        (rc = path_join(good_dir, g->gooddir, token, NULL)) != MQPKI_OK ||
        (rc = dir_list(good_dir, &list, &n)) != MQPKI_OK)
        goto out;
    /* Good copies of destroyed objects go too, or a restore would bring them back. */
    for (int i = 0; i < n; i++) {
        const char *name = list[i]->d_name;
        struct stat st;

        if (role_of(name) != ROLE_OBJECT || path_join(path, live_dir, name, NULL) != MQPKI_OK ||
            lstat(path, &st) == 0 || errno != ENOENT ||
            path_join(good, good_dir, name, NULL) != MQPKI_OK)
            continue;
        if (unlink(good) == 0)
            removed++;
    }
    if (removed > 0 && mqpki_dir_sync(good_dir) != 0)
        rc = mqpki_fail(MQPKI_ERR_IO, "%s: fsync: %s", good_dir, strerror(errno));
out:
    dir_list_free(list, n);
    return rc;
}

int p11_softhsm_save(const struct p11_softhsm_guard *g, unsigned *saved)
{
    struct dirent **list = NULL;
    char path[PATH_MAX];
    unsigned count = 0;
    int n = 0, rc;

    if (saved != NULL)
        *saved = 0;
    if (g == NULL || g->tokendir == NULL || g->gooddir == NULL)
        return mqpki_fail(MQPKI_ERR_INVALID, "SoftHSM guard: missing directories");
    pthread_mutex_lock(&guard_lock);
    rc = private_dir(g->gooddir);
    if (rc == MQPKI_OK)
        rc = dir_list(g->tokendir, &list, &n);
    for (int i = 0; rc == MQPKI_OK && i < n; i++) {
        if (token_name(list[i]->d_name) &&
            path_join(path, g->tokendir, list[i]->d_name, NULL) == MQPKI_OK && is_dir(path))
            rc = save_token(g, list[i]->d_name, &count);
    }
    pthread_mutex_unlock(&guard_lock);
    dir_list_free(list, n);
    if (saved != NULL)
        *saved = count;
    return rc;
}

/* One token directory of the fallback: every valid good file over a missing or different one. */
static int restore_token(const struct p11_softhsm_guard *g, const char *token, unsigned *restored)
{
    return copy_valid(g, token, 1, restored);
}

/* 1 when good token.object of token carries label (blank padded to 32 bytes). */
static int good_has_label(const struct p11_softhsm_guard *g, const char *token,
                          const unsigned char want[P11_TOKEN_LABEL_MAX])
{
    unsigned char have[P11_TOKEN_LABEL_MAX], *buf = NULL;
    char path[PATH_MAX], why[160];
    size_t len;
    int match = 0;

    if (path_join(path, g->gooddir, token, "token.object") == MQPKI_OK &&
        file_load(path, &buf, &len, NULL) == 1 &&
        file_check(ROLE_TOKEN, buf, len, have, why, sizeof(why)) == NULL)
        match = memcmp(have, want, sizeof(have)) == 0;
    free(buf);
    return match;
}

int p11_softhsm_restore(const struct p11_softhsm_guard *g, const char *label, unsigned *restored)
{
    unsigned char want[P11_TOKEN_LABEL_MAX];
    struct dirent **list = NULL;
    char path[PATH_MAX];
    unsigned count = 0;
    int n = 0, rc, matched = 0;

    if (restored != NULL)
        *restored = 0;
    if (g == NULL || g->tokendir == NULL || g->gooddir == NULL ||
        (label != NULL && (label[0] == '\0' || strlen(label) > P11_TOKEN_LABEL_MAX)))
        return mqpki_fail(MQPKI_ERR_INVALID, "SoftHSM guard: missing directories or bad label");
    if (label != NULL) {
        memset(want, ' ', sizeof(want));
        memcpy(want, label, strlen(label));
    }
    pthread_mutex_lock(&guard_lock);
    rc = dir_list(g->gooddir, &list, &n);
    for (int i = 0; rc == MQPKI_OK && i < n; i++) {
        const char *token = list[i]->d_name;

        if (!token_name(token) || path_join(path, g->gooddir, token, NULL) != MQPKI_OK ||
            !is_dir(path))
            continue;
        /* Without a label only tokens SoftHSM still has are touched: none is resurrected. */
        if (label != NULL
                ? !good_has_label(g, token, want)
                : (path_join(path, g->tokendir, token, NULL) != MQPKI_OK || !is_dir(path)))
            continue;
        matched++;
        rc = restore_token(g, token, &count);
    }
    pthread_mutex_unlock(&guard_lock);
    dir_list_free(list, n);
    if (restored != NULL)
        *restored = count;
    if (rc == MQPKI_OK && matched == 0)
        rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "SoftHSM guard: no good copy in %s%s%s", g->gooddir,
                        label != NULL ? " for token " : "", label != NULL ? label : "");
    return rc;
}

int p11_softhsm_tokendir(const char *conf, char *out, size_t size)
{
    unsigned char *text = NULL;
    char *line, *save = NULL, *value, *end;
    size_t len;
    int rc;

    if (out == NULL || size == 0)
        return mqpki_fail(MQPKI_ERR_INVALID, "p11_softhsm_tokendir: no output buffer");
    out[0] = '\0';
    if (conf == NULL)
        conf = getenv("SOFTHSM2_CONF");
    if (conf == NULL || conf[0] == '\0')
        conf = DEFAULT_CONF;
    rc = mqpki_file_read(conf, CONF_MAX, &text, &len);
    if (rc != MQPKI_OK)
        goto out;
    rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "%s: no directories.tokendir", conf);
    for (line = strtok_r((char *)text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t");
        if (strncmp(line, "directories.tokendir", 20) != 0)
            continue;
        value = line + 20;
        value += strspn(value, " \t");
        if (*value != '=')
            continue;
        value++;
        value += strspn(value, " \t");
        end = value + strlen(value);
        while (end > value && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
            *--end = '\0';
        if (*value == '\0')
            continue;
        if (strlen(value) >= size) {
            rc = mqpki_fail(MQPKI_ERR_TOO_LARGE, "%s: directories.tokendir too long", conf);
            goto out;
        }
        strcpy(out, value);
        mqpki_err_clear();
        rc = MQPKI_OK;
    }
out:
    free(text);
    return rc;
}

int p11_softhsm_module(const char *module)
{
    const char *base;

    if (module == NULL)
        return 0;
    base = strrchr(module, '/');
    base = base != NULL ? base + 1 : module;
    return strcmp(base, P11_SOFTHSM_MODULE_NAME) == 0;
}
