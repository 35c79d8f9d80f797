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

int cli_help(const char *text)
{
    fputs(text, stdout);
    return CLI_HELP_SHOWN;
}

int cli_open(struct cli *cli, unsigned what, struct datadir **out)
{
    return datadir_open(cli->home, what, out);
}

int cli_output(const char *path, const void *data, size_t len)
{
    if (path != NULL)
        return mqpki_file_write_atomic(path, data, len, 0644);
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

struct serials {
    char (*v)[PROTO_SERIAL_HEX_MAX + 1];
    size_t n, cap;
};

static int collect_live(const struct inventory_cert *c, void *ctx)
{
    struct serials *s = ctx;

    /* Live: still accepted somewhere (valid, superseded but unexpired, or merely on hold). */
    if (!(c->state == INV_CERT_VALID || c->state == INV_CERT_SUPERSEDED ||
          (c->state == INV_CERT_REVOKED && c->reason == CA_REASON_HOLD)))
        return 0;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 8;
        void *v = realloc(s->v, cap * sizeof(*s->v));
        if (v == NULL)
            return 1;
        s->v = v;
        s->cap = cap;
    }
    snprintf(s->v[s->n++], sizeof(s->v[0]), "%s", c->serial);
    return 0;
}

int cli_revoke_asset(struct datadir *dd, const char *asset_id, int reason, int then_state,
                     const char *actor, int *count)
{
    struct inventory *inv = datadir_inventory(dd);
    struct inventory_asset a;
    struct serials s = {0};
    int rc, in_tx = 0;

    *count = 0;
    memset(&a, 0, sizeof(a));
    if ((rc = inventory_asset_get(inv, asset_id, &a)) != MQPKI_OK) {
        if (rc == MQPKI_ERR_NOT_FOUND)
            rc = mqpki_fail(rc, "unknown asset %s", asset_id);
        goto out;
    }
    if ((rc = inventory_begin(inv)) != MQPKI_OK)
        goto out;
    in_tx = 1;
    if ((rc = inventory_cert_list(inv, asset_id, -1, 0, collect_live, &s)) != MQPKI_OK)
        goto out;
    for (size_t i = 0; i < s.n; i++) {
        rc = inventory_cert_revoke(inv, s.v[i], reason, mqpki_now(), actor);
        if (rc != MQPKI_OK)
            goto out;
    }
    /* In the same transaction: no certificate can be issued between the revocations and the
     * new state (a decommissioned asset must not keep one issued in that gap). */
    if (then_state >= 0 &&
        (rc = inventory_asset_transition(inv, asset_id, then_state, actor,
                                         "decommissioned by operator")) != MQPKI_OK)
        goto out;
    if ((rc = inventory_commit(inv)) != MQPKI_OK)
        goto out;
    in_tx = 0;
    *count = (int)s.n;
out:
    if (in_tx)
        inventory_rollback(inv);
    inventory_asset_clear(&a);
    free(s.v);
    return rc;
}
