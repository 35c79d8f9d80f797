/* mqpki check, mqpki report csf: the fleet's posture (docs/csf.md, posture/). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "posture.h"

/* Threshold options shared by both commands; returns 1 when opt was one of them. */
static int threshold(struct cli *cli, int c, struct posture_opts *o, int *rc)
{
    int *target = NULL;
    const char *name = NULL;

    switch (c) {
    case 'e':
        target = &o->expiry_days;
        name = "--expiry-days";
        break;
    case 'a':
        target = &o->max_age_days;
        name = "--max-age-days";
        break;
    case 'c':
        target = &o->ca_expiry_days;
        name = "--ca-expiry-days";
        break;
    case 'b':
        target = &o->backup_days;
        name = "--backup-days";
        break;
    case 'd':
        target = &o->drill_days;
        name = "--drill-days";
        break;
    case 's':
        target = &o->silent_days;
        name = "--silent-days";
        break;
    default: return 0;
    }
    *rc = cli_parse_int(cli, name, optarg, 0, 36500, target);
    return 1;
}

#define THRESHOLD_OPTIONS                                                                          \
    {"expiry-days", required_argument, NULL, 'e'}, {"max-age-days", required_argument, NULL, 'a'}, \
        {"ca-expiry-days", required_argument, NULL, 'c'},                                          \
        {"backup-days", required_argument, NULL, 'b'},                                             \
        {"drill-days", required_argument, NULL, 'd'},                                              \
    {                                                                                              \
        "silent-days", required_argument, NULL, 's'                                                \
    }

#define THRESHOLD_HELP                                                                             \
    "  --expiry-days N     device certificates expiring within N days (30)\n"                      \
    "  --max-age-days N    device certificates issued more than N days ago (365)\n"                \
    "  --ca-expiry-days N  CA certificates expiring within N days (365)\n"                         \
    "  --backup-days N     no backup for more than N days (7)\n"                                   \
    "  --drill-days N      no restore drill for more than N days (90)\n"                           \
    "  --silent-days N     active assets not seen for N days are silent (7)\n"

static void print_checks(const json_t *res)
{
    const json_t *c, *a;
    size_t i, j;

    json_array_foreach(json_object_get(res, "checks"), i, c)
    {
        const char *st = json_string_value(json_object_get(c, "status"));
        json_int_t total = json_integer_value(json_object_get(c, "affected_total"));
        printf("%-4s %-8s %-20s %s\n",
               strcmp(st, "pass") == 0   ? "ok"
               : strcmp(st, "fail") == 0 ? "FAIL"
                                         : "n/a",
               json_string_value(json_object_get(c, "severity")),
               json_string_value(json_object_get(c, "id")),
               json_string_value(json_object_get(c, "summary")));
        json_array_foreach(json_object_get(c, "affected"), j, a)
        {
            printf("       - %s: %s\n", json_string_value(json_object_get(a, "object")),
                   json_string_value(json_object_get(a, "detail")));
        }
        if (total > (json_int_t)json_array_size(json_object_get(c, "affected")))
            printf("       ... %lld in all\n", (long long)total);
    }
    printf("\n%lld check(s) failed, %lld at high or critical severity\n",
           (long long)json_integer_value(json_object_get(res, "failed")),
           (long long)json_integer_value(json_object_get(res, "failed_high")));
}

int cmd_check(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        THRESHOLD_OPTIONS,
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct posture_opts o;
    struct datadir *dd = NULL;
    json_t *res = NULL;
    int c, rc = MQPKI_OK, json = 0, high = 0;

    posture_opts_default(&o);
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (threshold(cli, c, &o, &rc)) {
            if (rc != MQPKI_OK)
                return rc;
            continue;
        }
        switch (c) {
        case 'j': json = 1; break;
        case 'h':
            return cli_help(
                "usage: mqpki check [--json] [thresholds]\n\n"
                "Runs the fleet audit checks on live data (store, CA certificates, bundled\n"
                "brokers' configs and CRLs). Each check passes, fails or does not apply, with a\n"
                "severity (info, low, medium, high, critical) and the affected "
                "objects.\n\n" THRESHOLD_HELP
                "\nexit status: 0 when no check at high or critical severity fails, 3 when one\n"
                "does, 1 or 2 on a usage or internal error.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK ||
        (rc = posture_check(dd, NULL, &o, &res, &high)) != MQPKI_OK)
        goto out;
    if (json) {
        rc = cli_print_json(res);
        res = NULL;
    } else {
        print_checks(res);
    }
    if (rc == MQPKI_OK && high > 0)
        rc = CLI_CHECKS_FAILED;
out:
    json_decref(res);
    datadir_close(dd);
    return rc;
}

int cmd_report_csf(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        THRESHOLD_OPTIONS,
        {"format", required_argument, NULL, 'f'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct posture_opts o;
    struct datadir *dd = NULL;
    json_t *res = NULL, *report = NULL;
    const char *format = "text", *out = NULL;
    char *text = NULL;
    int c, rc = MQPKI_OK;

    posture_opts_default(&o);
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (threshold(cli, c, &o, &rc)) {
            if (rc != MQPKI_OK)
                return rc;
            continue;
        }
        switch (c) {
        case 'f': format = optarg; break;
        case 'o': out = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki report csf [--format text|json|html] [--out FILE] [thresholds]\n\n"
                "The NIST Cybersecurity Framework report: per subcategory that mqpki can\n"
                "evidence (CSF 2.0 ids, with the OASIS note's CSF 1.x ids), its state (met,\n"
                "partial, not met) against the target profile and the live evidence behind it,\n"
                "and a tier per function. html is one self-contained page (no script, no\n"
                "external resource). With --out FILE, prints one line per "
                "function.\n\n" THRESHOLD_HELP);
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (strcmp(format, "text") != 0 && strcmp(format, "json") != 0 && strcmp(format, "html") != 0)
        return cli_usage_error(cli, "--format '%.20s': use text, json or html", format);
    if (out != NULL && (rc = cli_output_check(out)) != MQPKI_OK)
        return rc;
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK ||
        (rc = posture_check(dd, NULL, &o, &res, NULL)) != MQPKI_OK ||
        (rc = posture_csf(res, &o, &report)) != MQPKI_OK)
        goto out;
    if (strcmp(format, "json") == 0) {
        text = json_dumps(report, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text != NULL) {
            size_t l = strlen(text);
            char *t = realloc(text, l + 2);
            if (t != NULL) {
                text = t;
                memcpy(text + l, "\n", 2);
            }
        }
    } else if (strcmp(format, "html") == 0) {
        text = posture_csf_html(report);
    } else {
        text = posture_csf_text(report);
    }
    if (text == NULL) {
        rc = MQPKI_ERR_NOMEM;
        goto out;
    }
    if ((rc = cli_output(out, text, strlen(text))) != MQPKI_OK)
        goto out;
    if (!cli_output_stdout(out)) {
        char *summary = posture_csf_summary(report);
        printf("wrote %s\n%s", out, summary != NULL ? summary : "");
        free(summary);
    }
out:
    free(text);
    json_decref(report);
    json_decref(res);
    datadir_close(dd);
    return rc;
}
