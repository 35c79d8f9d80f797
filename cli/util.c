/* cli: helpers shared by the commands. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ca.h"
#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "inventory.h"
#include "lifecycle.h"

int cli_usage_error(struct cli *cli, const char *fmt, ...)
{
    char msg[300];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return mqpki_fail(MQPKI_ERR_INVALID, "%s (see 'mqpki %s --help')", msg, cli->cmd);
}

int cli_parse_int(struct cli *cli, const char *opt, const char *text, long min, long max, int *out)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);

    if (end == text || *end != '\0' || v < min || v > max)
        return cli_usage_error(cli, "%s '%.40s': expected %ld to %ld", opt, text, min, max);
    *out = (int)v;
    return MQPKI_OK;
}

int cli_parse_duration(struct cli *cli, const char *opt, const char *text, int64_t min, int64_t max,
                       int64_t *out)
{
    size_t n = strlen(text);
    int64_t v;

    /* mqpki_duration_parse also takes bare seconds (configuration files rely on it); an operator
     * typing a number on the command line rarely means seconds. */
    if (n > 0 && text[n - 1] >= '0' && text[n - 1] <= '9')
        return cli_usage_error(
            cli,
            "%s '%.40s': a bare number is refused, give a unit: %.40ss, %.40sm, %.40sh or %.40sd",
            opt, text, text, text, text, text);
    v = mqpki_duration_parse(text);
    if (v < min || v > max)
        return cli_usage_error(cli,
                               "%s '%.40s': expected %llds to %lldd with a unit: 90s, 15m, "
                               "24h, 30d",
                               opt, text, (long long)min, (long long)(max / 86400));
    *out = v;
    return MQPKI_OK;
}

int cli_help(const char *text)
{
    fputs(text, stdout);
    return CLI_HELP_SHOWN;
}

int cli_open(struct cli *cli, unsigned what, struct datadir **out)
{
    int rc = datadir_open(cli->home, what & ~(unsigned)CLI_MUTATES, out), prc;

    /* Before its own change, a command finishes what an interrupted one left open. When that
     * fails (no PIN, a full disk), the command still goes on: a revocation must never wait for
     * the publication of another. mqpkid and later commands retry. */
    if (rc == MQPKI_OK && (what & CLI_MUTATES) &&
        (prc = datadir_publish_pending(*out)) != MQPKI_OK)
        mqpki_log(MQPKI_LOG_WARN, "a CRL publication left open could not be finished yet: %s",
                  mqpki_err_detail(prc));
    return rc;
}

int cli_output_stdout(const char *path)
{
    return path == NULL || strcmp(path, "-") == 0;
}

int cli_output_check(const char *path)
{
    if (cli_output_stdout(path))
        return MQPKI_OK;
    return mqpki_file_check_user(path);
}

int cli_output(const char *path, const void *data, size_t len)
{
    /* Never the atomic rename alone: the user's path may name a device, a FIFO or a link,
     * which must be written, not replaced (docs/cli.md, "Output files"). */
    if (!cli_output_stdout(path))
        return mqpki_file_write_user(path, data, len, 0644);
    if (fwrite(data, 1, len, stdout) != len || fflush(stdout) != 0)
        return mqpki_fail(MQPKI_ERR_IO, "cannot write to standard output");
    return MQPKI_OK;
}

int cli_print_json(json_t *v)
{
    int rc = MQPKI_OK;

    if (v == NULL)
        return MQPKI_ERR_NOMEM;
    if (json_dumpf(v, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
        rc = mqpki_fail(MQPKI_ERR_IO, "cannot write to standard output");
    fputc('\n', stdout);
    json_decref(v);
    return rc;
}

_Static_assert(CLI_TEXT_MAX >= 4 * INV_TEXT_MAX + 3, "cli_text must never truncate stored text");

const char *cli_text(const char *s, char buf[CLI_TEXT_MAX])
{
    size_t o = 0;

    if (s == NULL || *s == '\0')
        return "-";
    for (; *s != '\0' && o + 7 <= CLI_TEXT_MAX; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(buf + o, CLI_TEXT_MAX - o, "\\x%02x", c);
        } else if (c == 0xc2 && (unsigned char)s[1] >= 0x80 && (unsigned char)s[1] <= 0x9f) {
            /* A C1 control in UTF-8 (U+0080..U+009F: U+009B is CSI to some terminals). */
            o += (size_t)snprintf(buf + o, CLI_TEXT_MAX - o, "\\u%04x", (unsigned char)s[1]);
            s++;
        } else {
            buf[o++] = (char)c;
        }
    }
    buf[o] = '\0';
    return buf;
}

json_t *cli_json_time(long long t)
{
    char buf[32];

    if (t == 0)
        return json_null();
    mqpki_time_str(t, buf);
    return json_string(buf);
}

const char *cli_time(long long t, char buf[32])
{
    if (t == 0)
        return "-";
    mqpki_time_str(t, buf);
    return buf;
}

/* A broker whose CRL predates a revocation (from what its plugin reported to mqpkid). */
struct lag {
    struct inventory *inv;
    int64_t rev_seq;
    char names[256];
    int n;
};

static int note_lag(const char *broker, int64_t full, int64_t delta, int64_t when, void *ctx)
{
    struct lag *l = ctx;
    struct inventory_crl c;
    int64_t held = delta > full ? delta : full;

    if (inventory_crl_get(l->inv, held, &c) == MQPKI_OK && c.cutoff >= l->rev_seq)
        return 0;
    mqpki_err_clear();
    if (l->n++ < 4)
        snprintf(l->names + strlen(l->names), sizeof(l->names) - strlen(l->names),
                 "%s%s (CRL %lld)", l->n > 1 ? ", " : "", broker, (long long)held);
    return 0;
}

/* Where the newest CRL went, for the one line a command prints. */
static void say_published(const struct datadir_publication *pub, int64_t reserved)
{
    int full = pub->full_number >= pub->delta_number;
    int64_t n = full ? pub->full_number : pub->delta_number;

    printf("%s CRL %lld published", full ? "full" : "delta", (long long)n);
    if (n < reserved)
        printf(" (CRL %lld still open)", (long long)reserved);
    if (pub->by_daemon && pub->brokers == 0)
        printf("; mqpkid has no broker registered\n");
    else if (pub->by_daemon)
        printf("; mqpkid fed %d of %d broker%s\n", pub->brokers_linked, pub->brokers,
               pub->brokers == 1 ? "" : "s");
    else
        printf(" to crl/; mqpkid is not running: brokers get it when it starts\n");
}

int cli_publish_change(struct datadir *dd, const struct lifecycle_change *ch, const char *verb,
                       const char *reason)
{
    struct datadir_publication pub;
    struct lag lag = {0};
    char what[160], why[64] = "";
    int64_t number = 0;
    int rc = MQPKI_OK, covered = 1;

    if (reason != NULL)
        snprintf(why, sizeof(why), " (%s)", reason);
    if (ch->assets > 0)
        snprintf(what, sizeof(what), "%d certificate%s of %d asset%s", ch->changed,
                 ch->changed == 1 ? "" : "s", ch->assets, ch->assets == 1 ? "" : "s");
    else if (ch->serial[0] != '\0')
        snprintf(what, sizeof(what), "certificate %s of asset %s", ch->serial, ch->asset);
    else
        snprintf(what, sizeof(what), "%d certificate%s of asset %s",
                 ch->changed > 0 ? ch->changed : ch->already,
                 (ch->changed > 0 ? ch->changed : ch->already) == 1 ? "" : "s", ch->asset);
    if (ch->changed + ch->key_mates > 0) {
        rc = datadir_publish(dd, 0, &pub);
        if (rc != MQPKI_OK) {
            char detail[300];
            snprintf(detail, sizeof(detail), "%s", mqpki_err_detail(rc));
            return mqpki_fail(rc,
                              "%s %s%s and recorded, but publishing CRL %lld failed: %s; mqpkid "
                              "finishes it within a second once this is fixed, and so does "
                              "every mqpki command",
                              what, verb, why, (long long)ch->crl_number, detail);
        }
        if (ch->changed > 0)
            printf("%s %s%s; ", what, verb, why);
        else
            printf("%s was already revoked; ", what);
        if (ch->key_mates > 0)
            printf("%d more with the same key revoked (key-compromise): %s%s; ", ch->key_mates,
                   ch->mates, ch->key_mates > 3 ? ", ..." : "");
        say_published(&pub, ch->crl_number);
        return MQPKI_OK;
    }
    /* Nothing changed: the command ran before. Make sure what it did reached everyone. */
    if (ch->already == 0)
        return MQPKI_OK;
    if ((rc = lifecycle_crl_covers(datadir_lifecycle(dd), ch->rev_seq, &covered)) != MQPKI_OK)
        return rc;
    lag.inv = datadir_inventory(dd);
    lag.rev_seq = ch->rev_seq;
    if ((rc = inventory_broker_crl_list(lag.inv, note_lag, &lag)) != MQPKI_OK)
        return rc;
    printf("%s already %s", what, verb);
    if (covered && lag.n == 0) {
        printf("; the published CRLs list %s\n", ch->already == 1 ? "it" : "them");
        return MQPKI_OK;
    }
    if (!covered)
        printf("; no published CRL lists %s yet", ch->already == 1 ? "it" : "them");
    else
        printf("; broker%s %s hold%s an older CRL", lag.n == 1 ? "" : "s", lag.names,
               lag.n == 1 ? "s" : "");
    printf(": publishing again\n");
    /* A CRL that lists it when none does; the newest CRLs sent again to lagging brokers. */
    if (!covered && (rc = lifecycle_crl_request(datadir_lifecycle(dd), INV_CRL_DELTA, "republish",
                                                "cli", &number)) != MQPKI_OK)
        return rc;
    if ((rc = datadir_publish(dd, DATADIR_PUBLISH_RESEND, &pub)) != MQPKI_OK)
        return rc;
    say_published(&pub, number);
    return MQPKI_OK;
}
