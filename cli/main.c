/* mqpki: the operator's command line (DESIGN.md 3). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/x509.h>

#include "cli.h"
#include "common.h"
#include "datadir.h"
#include "hsm.h"

struct command {
    const char *group; /* NULL for a top-level command */
    const char *name;
    cli_fn fn;
    const char *summary;
};

static const struct command commands[] = {
    {NULL, "init", cmd_init, "create a CA: token, keys, store, daemon identity"},
    {"ca", "export", cmd_ca_export, "print the issuing + root CA chain (PEM)"},
    {"ca", "fingerprint", cmd_ca_fingerprint, "SHA-256 fingerprints of the CA certificates"},
    {"ca", "list", cmd_ca_list, "the issuing CA's key generations"},
    {"ca", "rollover", cmd_ca_rollover, "a new issuing CA key under the same root and name"},
    {"ca", "retire", cmd_ca_retire, "stop trusting an old issuing CA generation"},
    {"root", "init", cmd_root_init, "a root CA kept offline, in a token of its own"},
    {"root", "sign", cmd_root_sign, "certify a new issuing CA generation with that root"},
    {"asset", "add", cmd_asset_add, "register an asset (device, broker, service)"},
    {"asset", "list", cmd_asset_list, "list assets, by state or kind"},
    {"asset", "show", cmd_asset_show, "one asset with its certificates and history"},
    {"asset", "set", cmd_asset_set, "update firmware, location or tags"},
    {"asset", "decommission", cmd_asset_decommission, "revoke and retire an asset"},
    {"asset", "import", cmd_asset_import, "register assets in bulk from CSV or JSON"},
    {"token", "create", cmd_token_create, "one-time enrollment token, printed once"},
    {"token", "list", cmd_token_list, "enrollment tokens and their states"},
    {"token", "revoke", cmd_token_revoke, "revoke a token, or all of an asset's unused ones"},
    {NULL, "issue", cmd_issue, "issue a certificate from a CSR"},
    {"cert", "list", cmd_cert_list, "list certificates"},
    {"cert", "get", cmd_cert_get, "print a recorded certificate (PEM)"},
    {"cert", "show", cmd_cert_show, "one certificate's record"},
    {"cert", "expiring", cmd_cert_expiring, "valid certificates expiring within a window"},
    {NULL, "revoke", cmd_revoke, "revoke a certificate or all of an asset's"},
    {NULL, "unhold", cmd_unhold, "lift a hold (certificateHold)"},
    /* Before the top-level "crl": a group entry matches only with its second word. */
    {"crl", "publish", cmd_crl_publish, "sign and publish a new full CRL now"},
    {NULL, "crl", cmd_crl, "show the CRLs and what each broker holds (signs nothing)"},
    {NULL, "tidy", cmd_tidy, "remove long-expired certificates and dead tokens"},
    {"audit", "verify", cmd_audit_verify, "check the audit log's chain and signed checkpoints"},
    {"audit", "checkpoint", cmd_audit_checkpoint, "sign a checkpoint of the audit log now"},
    {NULL, "backup", cmd_backup, "write a consistent backup archive (online)"},
    {NULL, "restore", cmd_restore, "restore a backup into a new directory and check it"},
    {"campaign", "renew", cmd_campaign_renew, "ask devices to renew now (through mqpkid)"},
    {"campaign", "status", cmd_campaign_status, "where each asset of a campaign stands"},
    {"campaign", "finish", cmd_campaign_finish, "close a campaign, revoke what it replaced"},
    {"broker", "init", cmd_broker_init, "register a bundled broker and write its config"},
    {"broker", "run", cmd_broker_run, "run a bundled broker (Mosquitto + plugin)"},
    {"broker", "remove", cmd_broker_remove, "retire a bundled broker; mqpkid stops its link"},
    {"broker", "renew", cmd_broker_renew, "renew a bundled broker's certificate, same names"},
    {NULL, "crl-sync", cmd_crl_sync, "follow the CRL feed for another broker"},
    {"store", "migrate", cmd_store_migrate, "copy the embedded store into PostgreSQL"},
    {"replica", "init", cmd_replica_init, "prepare a second mqpkid on the same PostgreSQL store"},
    {NULL, "events", cmd_events, "the brokers' security events"},
    /* Before the top-level "alerts": a group entry matches only with its second word. */
    {"alerts", "ack", cmd_alerts_ack, "acknowledge an alert"},
    {NULL, "alerts", cmd_alerts, "the detectors' alerts and their responses"},
    {NULL, "release", cmd_release, "lift a detector's hold or quarantine after review"},
    {NULL, "check", cmd_check, "fleet audit checks (exit 3 when one at high severity fails)"},
    {"report", "csf", cmd_report_csf, "NIST CSF posture report (text, json, html)"},
    {"operator", "add", cmd_operator_add, "register a dashboard operator, issue its certificate"},
    {"operator", "token", cmd_operator_token, "bearer token or one-time login link (dashboard)"},
};
#define N_COMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: mqpki [--home DIR] [--store URL] COMMAND [ARGS] (each command takes "
               "--help)\n"
               "       mqpki GROUP --help | --help | --version\n\n"
               "The data directory is --home, else $MQPKI_HOME, else ./mqpki-data.\n"
               "The store is --store (a postgresql:// URL without a password), else mqpki.conf's\n"
               "[store] url, else the data directory's mqpki.db.\n\n"
               "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char name[64];
        snprintf(name, sizeof(name), "%s%s%s", commands[i].group ? commands[i].group : "",
                 commands[i].group ? " " : "", commands[i].name);
        fprintf(f, "  %-20s %s\n", name, commands[i].summary);
    }
    fprintf(f, "\nexit status: 0 success, 1 user or input error, 2 internal failure, 3 'check'\n"
               "found a failing check at high or critical severity\n"
               "\nEXAMPLES\n"
               "  mqpki init --ca-name acme\n"
               "  mqpki asset --help\n"
               "  mqpki --home /var/lib/mqpki asset list --state active\n");
}

/* 1 when name is a group (asset, token, ...) and no top-level command of that name. */
static int is_group(const char *name)
{
    int group = 0;

    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (commands[i].group == NULL && strcmp(commands[i].name, name) == 0)
            return 0;
        if (commands[i].group != NULL && strcmp(commands[i].group, name) == 0)
            group = 1;
    }
    return group;
}

/* `mqpki GROUP --help`: the group's commands. */
static void group_usage(FILE *f, const char *group)
{
    const char *ex = NULL;

    fprintf(f, "usage: mqpki %s COMMAND [ARGS] (each command takes --help)\n\ncommands:\n", group);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char name[64];
        if (commands[i].group == NULL || strcmp(commands[i].group, group) != 0)
            continue;
        snprintf(name, sizeof(name), "%s %s", group, commands[i].name);
        fprintf(f, "  %-20s %s\n", name, commands[i].summary);
        if (ex == NULL)
            ex = cli_examples(name);
    }
    if (ex != NULL)
        fprintf(f, "\nEXAMPLES\n%s", ex);
}

static int help_word(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0 || strcmp(arg, "help") == 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"home", required_argument, NULL, 'H'},
        {"store", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct cli cli;
    const char *home = NULL;
    const struct command *cmd = NULL;
    char cmdname[64];
    int c, rc, first, shift;

    /* Before anything can start a child (broker run's Mosquitto, crl-sync --exec): the PIN
     * stays in this process's memory only. */
    hsm_pin_capture();
    memset(&cli, 0, sizeof(cli));
    /* Whatever mqpki creates is private unless a file is explicitly made public (CRLs, certs). */
    umask(077);
    /* '+': stop at the command name; the command parses the rest. */
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': home = optarg; break;
        case 'S':
            if (datadir_set_store(optarg) != MQPKI_OK) {
                fprintf(stderr, "mqpki: %s\n", mqpki_err_detail(MQPKI_ERR_INVALID));
                return 1;
            }
            break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("mqpki %s\n", MQPKI_VERSION); return 0;
        default: usage(stderr); return 1;
        }
    }
    if (optind >= argc) {
        usage(stderr);
        return 1;
    }
    first = optind;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const struct command *k = &commands[i];
        if (k->group == NULL && strcmp(argv[first], k->name) == 0) {
            cmd = k;
            shift = 1;
            break;
        }
        if (k->group != NULL && strcmp(argv[first], k->group) == 0 && first + 1 < argc &&
            strcmp(argv[first + 1], k->name) == 0) {
            cmd = k;
            shift = 2;
            break;
        }
    }
    if (cmd == NULL && is_group(argv[first])) {
        if (first + 1 < argc && help_word(argv[first + 1])) {
            group_usage(stdout, argv[first]);
            return 0;
        }
        if (first + 1 >= argc || argv[first + 1][0] == '-') {
            group_usage(stderr, argv[first]);
            return 1;
        }
    }
    if (cmd == NULL) {
        fprintf(stderr, "mqpki: unknown command '%s%s%s' (see 'mqpki --help')\n", argv[first],
                first + 1 < argc && argv[first + 1][0] != '-' ? " " : "",
                first + 1 < argc && argv[first + 1][0] != '-' ? argv[first + 1] : "");
        return 1;
    }
    snprintf(cmdname, sizeof(cmdname), "%s%s%s", cmd->group ? cmd->group : "",
             cmd->group ? " " : "", cmd->name);
    cli.cmd = cmdname;
    if ((rc = datadir_resolve_home(home, cli.home)) != MQPKI_OK) {
        fprintf(stderr, "mqpki: %s\n", mqpki_err_detail(rc));
        return mqpki_err_exit_status(rc);
    }
    /* The command sees argv[0] = its name, then its own arguments. */
    optind = 0;
    rc = cmd->fn(&cli, argc - first - shift + 1, argv + first + shift - 1);
    if (rc == CLI_HELP_SHOWN) {
        const char *ex = cli_examples(cmdname);
        if (ex != NULL)
            printf("\nEXAMPLES\n%s", ex);
        return 0;
    }
    if (rc == CLI_CHECKS_FAILED)
        return 3;
    if (rc != MQPKI_OK) {
        fprintf(stderr, "mqpki %s: %s\n", cmdname, mqpki_err_detail(rc));
        return mqpki_err_exit_status(rc);
    }
    return 0;
}
