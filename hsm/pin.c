/*
 * hsm/pin.c: where the user PIN comes from: MQPKI_PIN (MQPKI_ROOT_PIN for the offline root's
 * token), else a PIN file only its owner can read.
 * The PIN is never logged nor put in an error detail, and never left in the environment.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common.h"
#include "hsm_int.h"

/* Room for the longest PIN, its line ending, and a byte to notice a longer line. */
#define PIN_READ_MAX (HSM_PIN_MAX + 2)

extern char **environ;

/*
 * A PIN variable once taken out of the environment: a process opens the token again later (a
 * command after waiting for the token lock, mqpkid after a failure), and by then the variable
 * is gone. Wiped at exit and by hsm_pin_forget. MQPKI_PIN is the CA token's, MQPKI_ROOT_PIN the
 * offline root's (datadir/offline_root.c): one process may open both, one after the other.
 */
enum { PIN_CA, PIN_ROOT, PIN_VARS };
static const char *const env_names[PIN_VARS] = {"MQPKI_PIN", "MQPKI_ROOT_PIN"};
static pthread_mutex_t env_lock = PTHREAD_MUTEX_INITIALIZER;
static char env_pin[PIN_VARS][HSM_PIN_MAX];
static enum { ENV_NONE, ENV_KEPT, ENV_TOO_LONG } env_state[PIN_VARS];
static int env_atexit;

void hsm_pin_forget(void)
{
    pthread_mutex_lock(&env_lock);
    for (int i = 0; i < PIN_VARS; i++) {
        OPENSSL_cleanse(env_pin[i], sizeof(env_pin[i]));
        env_state[i] = ENV_NONE;
    }
    pthread_mutex_unlock(&env_lock);
}

void hsm_root_pin_forget(void)
{
    pthread_mutex_lock(&env_lock);
    OPENSSL_cleanse(env_pin[PIN_ROOT], sizeof(env_pin[PIN_ROOT]));
    env_state[PIN_ROOT] = ENV_NONE;
    pthread_mutex_unlock(&env_lock);
}

static void forget_at_exit(void)
{
    hsm_pin_forget();
}

static void capture(int i)
{
    const char *value, *name = env_names[i];
    size_t n, name_len = strlen(name);

    if ((value = getenv(name)) == NULL)
        return;
    n = strlen(value);
    OPENSSL_cleanse(env_pin[i], sizeof(env_pin[i]));
    /* Set but empty: the PIN file is used, as when unset. */
    env_state[i] = n == 0 ? ENV_NONE : n > HSM_PIN_MAX - 1 ? ENV_TOO_LONG : ENV_KEPT;
    if (env_state[i] == ENV_KEPT)
        memcpy(env_pin[i], value, n + 1);
    /* /proc/PID/environ shows the block the process started with, which unsetenv leaves as it
     * is: the value is wiped where it lies, in every copy, before the entries go. */
    for (char **e = environ; e != NULL && *e != NULL; e++)
        if (strncmp(*e, name, name_len) == 0 && (*e)[name_len] == '=')
            OPENSSL_cleanse(*e + name_len + 1, strlen(*e + name_len + 1));
    /* Children (Mosquitto, crl-sync --exec) inherit environ, never this process's memory. */
    unsetenv(name);
}

void hsm_pin_capture(void)
{
    pthread_mutex_lock(&env_lock);
    for (int i = 0; i < PIN_VARS; i++)
        capture(i);
    if (!env_atexit && atexit(forget_at_exit) == 0)
        env_atexit = 1;
    pthread_mutex_unlock(&env_lock);
}

static int pin_read(int i, const char *pin_file, char out[HSM_PIN_MAX])
{
    int rc = MQPKI_OK, from_env = 0;

    out[0] = '\0';
    hsm_pin_capture();
    pthread_mutex_lock(&env_lock);
    if (env_state[i] == ENV_TOO_LONG)
        rc = mqpki_fail(MQPKI_ERR_INVALID, "%s: longer than %d characters", env_names[i],
                        HSM_PIN_MAX - 1);
    else if (env_state[i] == ENV_KEPT)
        memcpy(out, env_pin[i], strlen(env_pin[i]) + 1);
    from_env = env_state[i] != ENV_NONE;
    pthread_mutex_unlock(&env_lock);
    if (from_env)
        return rc;
    if (pin_file == NULL || pin_file[0] == '\0')
        return mqpki_fail(MQPKI_ERR_NOT_FOUND, "no PIN: %s is not set and no PIN file given",
                          env_names[i]);
    return hsm_pin_read_file(pin_file, out);
}

int hsm_pin_read(const char *pin_file, char out[HSM_PIN_MAX])
{
    return pin_read(PIN_CA, pin_file, out);
}

int hsm_root_pin_read(const char *pin_file, char out[HSM_PIN_MAX])
{
    return pin_read(PIN_ROOT, pin_file, out);
}

int hsm_pin_read_file(const char *pin_file, char out[HSM_PIN_MAX])
{
    char buf[PIN_READ_MAX];
    struct stat st;
    size_t len = 0, n;
    ssize_t got;
    int fd = -1, rc = MQPKI_OK;

    out[0] = '\0';
    /* O_NONBLOCK: a FIFO put in the PIN file's place must not hang the process. */
    fd = open(pin_file, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT)
            rc = mqpki_fail(MQPKI_ERR_NOT_FOUND, "no PIN: %s is missing", pin_file);
        else
            rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
        goto out;
    }
    /* Checked on the open file, so the file read is the file judged. */
    if (fstat(fd, &st) != 0) {
        rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: not a regular file", pin_file);
        goto out;
    }
    if (st.st_mode & 077) {
        rc = mqpki_fail(MQPKI_ERR_POLICY,
                        "PIN file %s: mode %04o lets group or others read it; chmod 600 it",
                        pin_file, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    while (len < sizeof(buf)) {
        got = read(fd, buf + len, sizeof(buf) - len);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            rc = mqpki_fail(MQPKI_ERR_IO, "PIN file %s: %s", pin_file, strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (memchr(buf, '\n', len) != NULL)
            break;
    }
    /* The PIN is the first line, without its line ending. */
    for (n = 0; n < len && buf[n] != '\n'; n++)
        ;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    if (n > HSM_PIN_MAX - 1) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: PIN longer than %d characters", pin_file,
                        HSM_PIN_MAX - 1);
        goto out;
    }
    if (n == 0) {
        rc = mqpki_fail(MQPKI_ERR_INVALID, "PIN file %s: first line is empty", pin_file);
        goto out;
    }
    memcpy(out, buf, n);
    out[n] = '\0';
out:
    if (fd >= 0)
        close(fd);
    OPENSSL_cleanse(buf, sizeof(buf));
    return rc;
}
