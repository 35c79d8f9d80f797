/* cli: the operator's command line. Each command is one function taking its own argv. */
#ifndef MQPKI_CLI_H
#define MQPKI_CLI_H

#include <limits.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

struct datadir;

struct cli {
    char home[PATH_MAX]; /* resolved data directory */
    const char *cmd;     /* "asset add", for messages */
};

/* A command: returns an mqpki error code (common.h); main turns it into the exit status. */
typedef int (*cli_fn)(struct cli *cli, int argc, char **argv);

int cmd_init(struct cli *cli, int argc, char **argv);
int cmd_ca_export(struct cli *cli, int argc, char **argv);
/* cmd_issuers.c: the issuing CA's generations. */
int cmd_ca_list(struct cli *cli, int argc, char **argv);
int cmd_ca_rollover(struct cli *cli, int argc, char **argv);
int cmd_ca_retire(struct cli *cli, int argc, char **argv);
int cmd_root_init(struct cli *cli, int argc, char **argv);
int cmd_root_sign(struct cli *cli, int argc, char **argv);
int cmd_crl(struct cli *cli, int argc, char **argv);
int cmd_crl_publish(struct cli *cli, int argc, char **argv);
int cmd_audit_verify(struct cli *cli, int argc, char **argv);
int cmd_audit_checkpoint(struct cli *cli, int argc, char **argv);
int cmd_asset_add(struct cli *cli, int argc, char **argv);
int cmd_asset_list(struct cli *cli, int argc, char **argv);
int cmd_asset_show(struct cli *cli, int argc, char **argv);
int cmd_asset_set(struct cli *cli, int argc, char **argv);
int cmd_asset_decommission(struct cli *cli, int argc, char **argv);
int cmd_token_create(struct cli *cli, int argc, char **argv);
int cmd_token_list(struct cli *cli, int argc, char **argv);
int cmd_token_revoke(struct cli *cli, int argc, char **argv);
int cmd_issue(struct cli *cli, int argc, char **argv);
int cmd_cert_list(struct cli *cli, int argc, char **argv);
int cmd_cert_get(struct cli *cli, int argc, char **argv);
int cmd_revoke(struct cli *cli, int argc, char **argv);
int cmd_unhold(struct cli *cli, int argc, char **argv);
/* cmd_day2.c: day-two commands. */
int cmd_cert_show(struct cli *cli, int argc, char **argv);
int cmd_cert_expiring(struct cli *cli, int argc, char **argv);
int cmd_ca_fingerprint(struct cli *cli, int argc, char **argv);
int cmd_asset_import(struct cli *cli, int argc, char **argv);
int cmd_tidy(struct cli *cli, int argc, char **argv);
/* revoke --selector/--tag/--model (opt names which) and unhold --asset. */
int cli_revoke_selector(struct cli *cli, const char *opt, const char *text, int reason, int yes);
int cli_unhold_asset(struct cli *cli, const char *asset);
/* cmd_broker.c: the bundled broker and the feed consumer for other brokers. */
int cmd_broker_init(struct cli *cli, int argc, char **argv);
int cmd_broker_run(struct cli *cli, int argc, char **argv);
int cmd_broker_remove(struct cli *cli, int argc, char **argv);
int cmd_broker_renew(struct cli *cli, int argc, char **argv);
/* cmd_backup.c: backup and restore of a data directory. */
int cmd_backup(struct cli *cli, int argc, char **argv);
int cmd_restore(struct cli *cli, int argc, char **argv);
/* cmd_campaign.c: re-issue campaigns. */
int cmd_campaign_renew(struct cli *cli, int argc, char **argv);
int cmd_campaign_status(struct cli *cli, int argc, char **argv);
int cmd_campaign_finish(struct cli *cli, int argc, char **argv);
int cmd_crl_sync(struct cli *cli, int argc, char **argv);
/* cmd_store.c: the store's back end and replicas (docs/ha.md). */
int cmd_store_migrate(struct cli *cli, int argc, char **argv);
int cmd_replica_init(struct cli *cli, int argc, char **argv);

/* cmd_detect.c: detect -> respond. */
int cmd_events(struct cli *cli, int argc, char **argv);
int cmd_alerts(struct cli *cli, int argc, char **argv);
int cmd_alerts_ack(struct cli *cli, int argc, char **argv);
int cmd_release(struct cli *cli, int argc, char **argv);

/* cmd_posture.c: fleet audit checks and the NIST CSF report. */
int cmd_check(struct cli *cli, int argc, char **argv);
int cmd_report_csf(struct cli *cli, int argc, char **argv);
/* cmd_operator.c: the dashboard's operators. */
int cmd_operator_add(struct cli *cli, int argc, char **argv);
int cmd_operator_token(struct cli *cli, int argc, char **argv);
/* cmd_check's return when a check at high or critical severity failed: exit status 3. */
#define CLI_CHECKS_FAILED (-3)

/* Usage error: records "CMD: message (see 'mqpki CMD --help')" and returns MQPKI_ERR_INVALID. */
int cli_usage_error(struct cli *cli, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An integer option value within [min, max], else a usage error naming opt. */
int cli_parse_int(struct cli *cli, const char *opt, const char *text, long min, long max, int *out);

/*
 * A duration option: a number with its unit (Ns, Nm, Nh, Nd: 90s, 15m, 24h, 30d) within
 * [min, max] seconds, else a usage error naming opt. A bare number is refused: "--ttl 1" read
 * as one second made tokens that expired before anyone could use them.
 */
int cli_parse_duration(struct cli *cli, const char *opt, const char *text, int64_t min, int64_t max,
                       int64_t *out);

/* The EXAMPLES of a command's --help ("asset list"), or NULL (examples.c). */
const char *cli_examples(const char *cmd);

/* Prints usage text for --help and returns -1 so the caller exits 0 (see cli_help_requested). */
int cli_help(const char *text);
#define CLI_HELP_SHOWN (-1)

/* Opens the data directory with the given parts (DATADIR_STORE, DATADIR_CA). With CLI_MUTATES
 * (a command that changes something) it first finishes any CRL publication an interrupted
 * command left open. */
#define CLI_MUTATES 0x100u
int cli_open(struct cli *cli, unsigned what, struct datadir **out);

/*
 * Writes data where an --out FILE says: stdout when path is NULL or "-", else
 * mqpki_file_write_user (0644): a new or regular file (also through a symbolic link) replaced
 * atomically, a device or FIFO written in place, anything else refused.
 */
int cli_output(const char *path, const void *data, size_t len);

/* Checks that cli_output(path, ...) would be allowed, writing nothing (mqpki_file_check_user);
 * commands call it before work they cannot undo. */
int cli_output_check(const char *path);

/* 1 when cli_output(path, ...) writes to standard output (path NULL or "-"). */
int cli_output_stdout(const char *path);

/* Prints a JSON value on stdout, followed by a newline, and releases it. */
int cli_print_json(json_t *v);

/*
 * Stored text (model, location, ...) made safe for a terminal or a file: every control byte
 * (C0, DEL) becomes \xHH and every C1 control (U+0080..U+009F) \u00HH, so that a terminal
 * escape an asset record carries never reaches the screen or a redirected file raw. "-" for an
 * empty text. buf holds CLI_TEXT_MAX bytes: at most 4 bytes per input byte (+ 2 of slack)
 * cover INV_TEXT_MAX (inventory.h) without truncation.
 */
#define CLI_TEXT_MAX (4 * 256 + 3)
const char *cli_text(const char *s, char buf[CLI_TEXT_MAX]);

/* RFC 3339 time, or null/"-" for 0. */
json_t *cli_json_time(long long t);
const char *cli_time(long long t, char buf[32]);

/*
 * After a lifecycle change: publishes it (datadir_publish) and prints one line saying what
 * changed and where the CRL went; for a change made before (nothing changed now), says so and
 * publishes again when no CRL, or some broker's CRL, does not list it yet. verb: "revoked",
 * "put on hold", ...; reason may be NULL.
 */
struct lifecycle_change;
int cli_publish_change(struct datadir *dd, const struct lifecycle_change *ch, const char *verb,
                       const char *reason);

#endif
