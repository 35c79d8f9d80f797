/*
 * cli: backup and restore of a data directory (docs/operations.md, "Backup and restore").
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "common.h"
#include "datadir.h"

int cmd_backup(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"out", required_argument, NULL, 'o'},
        {"include-secrets", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct datadir_backup_report rep;
    struct datadir *dd = NULL;
    const char *out = NULL;
    unsigned flags = 0;
    int c, rc = MQPKI_OK;

    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 's': flags |= DATADIR_BACKUP_SECRETS; break;
        case 'h':
            return cli_help(
                "usage: mqpki backup --out FILE [--include-secrets]\n\n"
                "Writes one tar archive (0600) of the data directory, consistent while mqpkid\n"
                "runs: the store (SQLite's online backup), the token's object files (encrypted\n"
                "under the PIN), mqpki.conf, ca/, crl/, tls/ and the bundled brokers' files,\n"
                "with a MANIFEST of SHA-256 sums. The token PIN and SO PIN (secrets/) are left\n"
                "out unless --include-secrets: keep them apart from the archive.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        goto out;
    if (optind != argc || out == NULL || strcmp(out, "-") == 0) {
        rc = cli_usage_error(cli, "expected --out FILE");
        goto out;
    }
    if ((rc = cli_open(cli, DATADIR_STORE, &dd)) != MQPKI_OK)
        goto out;
    if ((rc = datadir_backup(dd, out, flags, &rep)) != MQPKI_OK)
        goto out;
    printf("backup written to %s: %zu files, %llu bytes%s\n", out, rep.files,
           (unsigned long long)rep.bytes,
           rep.with_secrets ? ", with the token PIN (keep it like the CA keys)"
                            : "; the token PIN is not in it");
out:
    datadir_close(dd);
    return rc;
}

int cmd_restore(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {
        {"home", required_argument, NULL, 'H'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct datadir_restore_report rep;
    char home[PATH_MAX];
    const char *target = NULL;
    int c, rc = MQPKI_OK;

    while (rc == MQPKI_OK && (c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'H': target = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki restore FILE --home DIR\n\n"
                "Restores a backup made by 'mqpki backup' into DIR, which must not exist or be\n"
                "empty: checks every file against the manifest, rebuilds the token, runs a token\n"
                "self-test (sign and verify with the issuing CA key) and 'audit verify', and\n"
                "raises the CRL number above every CRL the backup knows of (plus a margin for\n"
                "those published after it). Without the PIN in the backup, set MQPKI_PIN.\n");
        default: rc = cli_usage_error(cli, "unknown option"); break;
        }
    }
    if (rc != MQPKI_OK)
        return rc;
    if (optind + 1 != argc)
        return cli_usage_error(cli, "expected one backup FILE");
    if (target == NULL)
        snprintf(home, sizeof(home), "%s", cli->home);
    else if ((rc = datadir_resolve_home(target, home)) != MQPKI_OK)
        return rc;
    if ((rc = datadir_restore(argv[optind], home, &rep)) != MQPKI_OK)
        return rc;
    printf("restored %zu files into %s\n"
           "token self-test: issuing CA key signs and verifies\n"
           "audit log intact: %lld events\n",
           rep.files, home, (long long)rep.audit_events);
    if (rep.crl_next > 0)
        printf("CRL numbers: highest known %lld, next %lld\n", (long long)rep.crl_high,
               (long long)rep.crl_next);
    else
        printf("store: the PostgreSQL server named in mqpki.conf (its own restore governs its "
               "data and CRL numbers)\n");
    return MQPKI_OK;
}
