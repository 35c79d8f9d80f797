/* Unit tests for common/: error table, details, files, durations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
/* Under UNIT_TESTING cmocka swaps malloc/free for its own; buffers cross into module code. */
#undef malloc
#undef calloc
#undef realloc
#undef free

#include "common.h"

static void test_errors(void **state)
{
    (void)state;
    assert_string_equal(mqpki_strerror(MQPKI_OK), "success");
    assert_string_equal(mqpki_strerror(9999), "unknown error");
    assert_int_equal(mqpki_err_exit_status(MQPKI_OK), 0);
    assert_int_equal(mqpki_err_exit_status(MQPKI_ERR_POLICY), 1);
    assert_int_equal(mqpki_err_exit_status(MQPKI_ERR_HSM), 2);
    mqpki_err_clear();
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_IO), "I/O error");
    assert_int_equal(mqpki_fail(MQPKI_ERR_POLICY, "asset %s: no", "dev1"), MQPKI_ERR_POLICY);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_POLICY), "asset dev1: no");
    mqpki_fail(MQPKI_ERR_INVALID, "id '%s'", "a\033[2Jb\n");
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_INVALID), "id 'a?[2Jb?'");
    mqpki_err_clear();
}

static void test_durations(void **state)
{
    (void)state;
    assert_int_equal(mqpki_duration_parse("90"), 90);
    assert_int_equal(mqpki_duration_parse("90s"), 90);
    assert_int_equal(mqpki_duration_parse("15m"), 900);
    assert_int_equal(mqpki_duration_parse("24h"), 86400);
    assert_int_equal(mqpki_duration_parse("7d"), 604800);
    assert_int_equal(mqpki_duration_parse("7x"), -1);
    assert_int_equal(mqpki_duration_parse("h"), -1);
    assert_int_equal(mqpki_duration_parse("-5s"), -1);
    assert_int_equal(mqpki_duration_parse("5hh"), -1);
    assert_int_equal(mqpki_duration_parse("99999999999999999999d"), -1);
    assert_int_equal(mqpki_duration_parse(NULL), -1);
}

static void test_files(void **state)
{
    char dir[] = "/tmp/mqpki-test-common.XXXXXX", path[256], sub[256];
    unsigned char *buf = NULL;
    size_t len = 0;
    struct stat st;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/secret", dir);
    assert_int_equal(mqpki_file_write_atomic(path, "abc", 3, 0600), MQPKI_OK);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(mqpki_file_read(path, 10, &buf, &len), MQPKI_OK);
    assert_int_equal(len, 3);
    assert_memory_equal(buf, "abc", 4); /* NUL-terminated */
    free(buf);
    /* Replacing keeps either content; the mode follows the new write. */
    assert_int_equal(mqpki_file_write_atomic(path, "defg", 4, 0644), MQPKI_OK);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0644);
    assert_int_equal(mqpki_file_read(path, 3, &buf, &len), MQPKI_ERR_TOO_LARGE);
    assert_null(buf);
    snprintf(sub, sizeof(sub), "%s/missing", dir);
    assert_int_equal(mqpki_file_read(sub, 10, &buf, &len), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(mqpki_file_read(dir, 10, &buf, &len), MQPKI_ERR_INVALID);
    snprintf(sub, sizeof(sub), "%s/a/b/c", dir);
    assert_int_equal(mqpki_mkdir_p(sub, 0700), MQPKI_OK);
    assert_int_equal(stat(sub, &st), 0);
    assert_true(S_ISDIR(st.st_mode));
    assert_int_equal(mqpki_mkdir_p(sub, 0700), MQPKI_OK);
    unlink(path);
    rmdir(sub);
    snprintf(sub, sizeof(sub), "%s/a/b", dir);
    rmdir(sub);
    snprintf(sub, sizeof(sub), "%s/a", dir);
    rmdir(sub);
    rmdir(dir);
}

/* Inputs that are not regular files are refused at once: a FIFO without a writer would make a
 * plain open() wait for ever. alarm() turns a hang into a failure. */
static void test_read_not_regular(void **state)
{
    char dir[] = "/tmp/mqpki-test-read.XXXXXX", fifo[256];
    unsigned char *buf = NULL;
    size_t len = 0;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    alarm(10);
    assert_int_equal(mqpki_file_read(fifo, 100, &buf, &len), MQPKI_ERR_INVALID);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_INVALID), "a FIFO"));
    assert_int_equal(mqpki_file_read("/dev/zero", 100, &buf, &len), MQPKI_ERR_INVALID);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_INVALID), "a character device"));
    alarm(0);
    assert_null(buf);
    unlink(fifo);
    rmdir(dir);
}

static void read_back(const char *path, const char *want)
{
    unsigned char *buf = NULL;
    size_t len = 0;

    assert_int_equal(mqpki_file_read(path, 100, &buf, &len), MQPKI_OK);
    assert_string_equal((char *)buf, want);
    free(buf);
}

static void test_write_user(void **state)
{
    char dir[] = "/tmp/mqpki-test-out.XXXXXX", file[256], link[256], dangling[256], fifo[256];
    char missing[256], got[16];
    struct stat st, before;
    int rfd;

    (void)state;
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof(file), "%s/file.pem", dir);
    snprintf(link, sizeof(link), "%s/link.pem", dir);
    snprintf(dangling, sizeof(dangling), "%s/dangling.pem", dir);
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    snprintf(missing, sizeof(missing), "%s/missing/x.pem", dir);

    /* A new path, then a regular file: replaced atomically (a new inode), mode as asked. */
    assert_int_equal(mqpki_file_check_user(file), MQPKI_OK);
    assert_int_equal(mqpki_file_write_user(file, "one", 3, 0644), MQPKI_OK);
    assert_int_equal(lstat(file, &before), 0);
    assert_int_equal(before.st_mode & 0777, 0644);
    assert_int_equal(mqpki_file_write_user(file, "two", 3, 0644), MQPKI_OK);
    assert_int_equal(lstat(file, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_true(st.st_ino != before.st_ino);
    read_back(file, "two");

    /* A link to a regular file: the link stays, its target gets the content. */
    assert_int_equal(symlink("file.pem", link), 0);
    assert_int_equal(mqpki_file_check_user(link), MQPKI_OK);
    assert_int_equal(mqpki_file_write_user(link, "three", 5, 0644), MQPKI_OK);
    assert_int_equal(lstat(link, &st), 0);
    assert_true(S_ISLNK(st.st_mode));
    read_back(file, "three");

    /* A link to nothing, a directory, a missing directory: refused, nothing created. */
    assert_int_equal(symlink("nowhere.pem", dangling), 0);
    assert_int_equal(mqpki_file_write_user(dangling, "x", 1, 0644), MQPKI_ERR_INVALID);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_INVALID), "does not exist"));
    assert_int_equal(mqpki_file_check_user(dangling), MQPKI_ERR_INVALID);
    assert_int_equal(mqpki_file_write_user(dir, "x", 1, 0644), MQPKI_ERR_INVALID);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_INVALID), "a directory"));
    assert_int_equal(mqpki_file_check_user(missing), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(mqpki_file_write_user(missing, "x", 1, 0644), MQPKI_ERR_NOT_FOUND);
    assert_int_equal(mqpki_file_write_user("", "x", 1, 0644), MQPKI_ERR_INVALID);

    /* A character device is written, never replaced. */
    assert_int_equal(mqpki_file_check_user("/dev/null"), MQPKI_OK);
    assert_int_equal(mqpki_file_write_user("/dev/null", "x", 1, 0644), MQPKI_OK);
    assert_int_equal(lstat("/dev/null", &st), 0);
    assert_true(S_ISCHR(st.st_mode));

    /* A FIFO with a reader: written in place, still a FIFO. */
    assert_int_equal(mkfifo(fifo, 0600), 0);
    assert_true((rfd = open(fifo, O_RDONLY | O_NONBLOCK)) >= 0);
    alarm(10);
    assert_int_equal(mqpki_file_write_user(fifo, "four", 4, 0644), MQPKI_OK);
    alarm(0);
    memset(got, 0, sizeof(got));
    assert_int_equal(read(rfd, got, sizeof(got) - 1), 4);
    assert_string_equal(got, "four");
    close(rfd);
    assert_int_equal(lstat(fifo, &st), 0);
    assert_true(S_ISFIFO(st.st_mode));

    unlink(fifo);
    unlink(dangling);
    unlink(link);
    unlink(file);
    assert_int_equal(rmdir(dir), 0); /* nothing else was left behind */
}

static void test_sweep_tmp(void **state)
{
    char mine[64];
    /* A dead pid (above any pid_max), this process's, and names that are not NAME.tmp.PID. */
    const char *const names[] = {"crl.der.tmp.999999999", mine, "b.tmp.12x", "c.tmp.", "d.tmp.0"};
    char dir[] = "/tmp/mqpki-test-sweep.XXXXXX", path[256], sub[256];
    struct stat st;
    int removed = -1;

    (void)state;
    snprintf(mine, sizeof(mine), "a.pem.tmp.%ld", (long)getpid());
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        assert_int_equal(mqpki_file_write_atomic(path, "x", 1, 0600), MQPKI_OK);
    }
    /* Not a regular file: left alone even with a dead pid. */
    snprintf(sub, sizeof(sub), "%s/e.tmp.999999998", dir);
    assert_int_equal(mkdir(sub, 0700), 0);

    assert_int_equal(mqpki_file_sweep_tmp(dir, &removed), MQPKI_OK);
    assert_int_equal(removed, 1); /* only the one of a process that is gone */
    snprintf(path, sizeof(path), "%s/crl.der.tmp.999999999", dir);
    assert_int_not_equal(stat(path, &st), 0);
    snprintf(path, sizeof(path), "%s/a.pem.tmp.%ld", dir, (long)getpid());
    assert_int_equal(stat(path, &st), 0); /* this process is alive */
    assert_int_equal(stat(sub, &st), 0);
    snprintf(path, sizeof(path), "%s/missing", dir);
    assert_int_equal(mqpki_file_sweep_tmp(path, &removed), MQPKI_OK);
    assert_int_equal(removed, 0);

    rmdir(sub);
    for (size_t i = 1; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    assert_int_equal(rmdir(dir), 0);
}

/* An atomic write removes its own name's leftovers of killed writers, and nothing else. */
static void test_write_sweeps_own_tmp(void **state)
{
    const char *const pre[] = {"x.pem.tmp.", "y.pem.tmp.", "xx.pem.tmp.", "x.pem.tmp.1.tmp."};
    char dir[] = "/tmp/mqpki-test-own.XXXXXX", path[512], stale[5][64];
    struct stat st;
    pid_t dead = fork();
    int fd;

    (void)state;
    /* A PID that ran and is gone (a date-like number above any PID is never ours). */
    if (dead == 0)
        _exit(0);
    assert_true(dead > 0);
    assert_int_equal(waitpid(dead, NULL, 0), dead);
    for (size_t i = 0; i < sizeof(pre) / sizeof(pre[0]); i++)
        snprintf(stale[i], sizeof(stale[i]), "%s%ld", pre[i], (long)dead);
    snprintf(stale[4], sizeof(stale[4]), "x.pem.tmp.999999999");
    assert_non_null(mkdtemp(dir));
    for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, stale[i]);
        assert_true((fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600)) >= 0);
        close(fd);
    }
    snprintf(path, sizeof(path), "%s/x.pem", dir);
    assert_int_equal(mqpki_file_write_atomic(path, "x", 1, 0600), MQPKI_OK);
    for (size_t i = 0; i < sizeof(stale) / sizeof(stale[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, stale[i]);
        assert_int_equal(stat(path, &st) == 0, i != 0); /* only x.pem's own is gone */
        unlink(path);
    }
    snprintf(path, sizeof(path), "%s/x.pem", dir);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(rmdir(dir), 0);
}

static void test_fail_errno(void **state)
{
    char dir[64];

    (void)state;
    assert_int_equal(mqpki_fail_errno(ENOSPC, "/srv/ca/crl/issuing.crl"), MQPKI_ERR_NOSPACE);
    assert_string_equal(mqpki_err_detail(MQPKI_ERR_NOSPACE),
                        "/srv/ca/crl/issuing.crl: disk full: no space left on the device holding "
                        "/srv/ca/crl");
    assert_int_equal(mqpki_fail_errno(EDQUOT, "/srv/x"), MQPKI_ERR_NOSPACE);
    assert_non_null(strstr(mqpki_err_detail(MQPKI_ERR_NOSPACE), "quota"));
    assert_int_equal(mqpki_fail_errno(EIO, "/srv/x"), MQPKI_ERR_IO);
    assert_int_equal(mqpki_path_dir("/a/b/c", dir, sizeof(dir)), MQPKI_OK);
    assert_string_equal(dir, "/a/b");
    assert_int_equal(mqpki_path_dir("/a/b/", dir, sizeof(dir)), MQPKI_OK);
    assert_string_equal(dir, "/a");
    assert_int_equal(mqpki_path_dir("/a", dir, sizeof(dir)), MQPKI_OK);
    assert_string_equal(dir, "/");
    assert_int_equal(mqpki_path_dir("name", dir, sizeof(dir)), MQPKI_OK);
    assert_string_equal(dir, ".");
    assert_int_equal(mqpki_path_dir("a//b", dir, sizeof(dir)), MQPKI_OK);
    assert_string_equal(dir, "a");
    mqpki_err_clear();
}

static void test_format(void **state)
{
    char buf[8], hex[9], t[32];
    const unsigned char raw[4] = {0x00, 0xab, 0x10, 0xff};

    (void)state;
    assert_int_equal(mqpki_path(buf, sizeof(buf), "%s", "1234567"), MQPKI_OK);
    assert_int_equal(mqpki_path(buf, sizeof(buf), "%s", "12345678"), MQPKI_ERR_TOO_LARGE);
    mqpki_hex(raw, sizeof(raw), hex);
    assert_string_equal(hex, "00ab10ff");
    mqpki_time_str(0, t);
    assert_string_equal(t, "1970-01-01T00:00:00Z");
}

/* The growing buffer: bytes and a NUL after them, growth past its first size, a sticky oom. */
static void test_buf(void **state)
{
    struct mqpki_buf b = {0};
    char big[1000];

    (void)state;
    mqpki_buf_put(&b, NULL, 0); /* an empty part, as a CRL without entries gives */
    assert_int_equal(b.len, 0);
    assert_non_null(b.p);
    assert_string_equal((char *)b.p, "");
    mqpki_buf_str(&b, "a<b");
    mqpki_buf_put(&b, "\0x", 2);
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.p, "a<b\0x", 6);
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    b.len = 0;
    mqpki_buf_printf(&b, "%d:%s;", 42, big);
    assert_int_equal(b.len, 3 + sizeof(big) - 1 + 1);
    assert_true(b.cap > b.len);
    assert_int_equal(b.p[b.len], '\0');
    assert_memory_equal(b.p, "42:zz", 5);
    assert_int_equal(b.p[b.len - 1], ';');
    assert_int_equal(mqpki_buf_reserve(&b, SIZE_MAX - 8), 0);
    assert_true(b.oom);
    mqpki_buf_str(&b, "more");
    mqpki_buf_printf(&b, "%s", "more");
    assert_int_equal(b.len, 3 + sizeof(big) - 1 + 1);
    free(b.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_durations),
        cmocka_unit_test(test_files),      cmocka_unit_test(test_read_not_regular),
        cmocka_unit_test(test_write_user), cmocka_unit_test(test_sweep_tmp),
        cmocka_unit_test(test_fail_errno), cmocka_unit_test(test_format),
        cmocka_unit_test(test_buf),        cmocka_unit_test(test_write_sweeps_own_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
