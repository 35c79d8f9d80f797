/* cli: the store and its replicas (docs/ha.md): store migrate, replica init. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "common.h"
#include "datadir.h"

static void copy_progress(void *ctx, const char *table, int64_t rows)
{
    (void)ctx;
    fprintf(stderr, "store migrate: %s: %lld rows\n", table, (long long)rows);
}

int cmd_store_migrate(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"to", required_argument, NULL, 't'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *to = NULL;
    int c, rc, already = 0;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': to = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki store migrate --to postgresql://HOST/DB\n\n"
                "Copies the data directory's embedded store (mqpki.db) into an empty\n"
                "PostgreSQL database, row for row in one transaction (the audit chain and its\n"
                "checkpoints verify on the copy), checks every table's row count, and then\n"
                "sets [store] url in mqpki.conf: every command and mqpkid use the server from\n"
                "then on. mqpki.db stays as it was. Stop mqpkid first. Safe to rerun when it\n"
                "was interrupted: a database already holding exactly this store's rows is\n"
                "taken as copied; one holding anything else is refused. The URL may not hold a\n"
                "password (the command line is visible to every local user): use a libpq\n"
                "password file (~/.pgpass) or PGPASSWORD, or add the password to [store] url\n"
                "in mqpki.conf afterwards.\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (to == NULL)
        return cli_usage_error(cli, "--to URL is required");
    /* The same rule as --store: no password on a command line. */
    if ((rc = datadir_set_store(to)) != MQPKI_OK)
        return rc;
    datadir_set_store(NULL);
    if ((rc = datadir_store_migrate(cli->home, to, isatty(STDERR_FILENO) ? copy_progress : NULL,
                                    NULL, &already)) != MQPKI_OK)
        return rc;
    printf("store migrated: %s%s now uses the PostgreSQL store ([store] url in mqpki.conf); "
           "mqpki.db is left as it was\n",
           already ? "the server already held this store's copy (an earlier run stopped before "
                     "changing mqpki.conf); "
                   : "",
           cli->home);
    return MQPKI_OK;
}

static void step(const char *what)
{
    fprintf(stderr, "replica init: %s\n", what);
}

int cmd_replica_init(struct cli *cli, int argc, char **argv)
{
    static const struct option opts[] = {{"from", required_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    char from[PATH_MAX];
    const char *from_arg = NULL;
    int c, rc;

    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'f': from_arg = optarg; break;
        case 'h':
            return cli_help(
                "usage: mqpki --home NEW replica init --from HOME\n\n"
                "Prepares the new data directory NEW (missing or empty) for a second mqpkid\n"
                "serving the CA of HOME from the same PostgreSQL store: it copies mqpki.conf\n"
                "(so the store URL), the CA certificates, the PIN, mqpkid's TLS identity, the\n"
                "published CRLs and the broker registrations, and shares the CA token: the\n"
                "embedded SoftHSM token by a symbolic link NEW/hsm -> HOME/hsm (replicas on\n"
                "one host), a network HSM through [hsm] module. HOME must already use\n"
                "PostgreSQL (mqpki store migrate). Start the replica with\n"
                "`mqpkid --home NEW --listen ADDR:PORT` (docs/ha.md).\n");
        default: return cli_usage_error(cli, "unknown option");
        }
    }
    if (optind != argc)
        return cli_usage_error(cli, "unexpected argument '%s'", argv[optind]);
    if (from_arg == NULL)
        return cli_usage_error(cli, "--from HOME is required");
    if ((rc = datadir_resolve_home(from_arg, from)) != MQPKI_OK)
        return rc;
    if (strcmp(from, cli->home) == 0)
        return cli_usage_error(cli, "--from names the replica's own directory (use --home NEW)");
    if ((rc = datadir_replica_init(from, cli->home, isatty(STDERR_FILENO) ? step : NULL)) !=
        MQPKI_OK)
        return rc;
    printf("replica ready in %s (store and CA of %s)\n", cli->home, from);
    return MQPKI_OK;
}
