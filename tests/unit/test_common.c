/* Unit tests for common/: error table, details, files, durations. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_files),
        cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
