/* cli: bundled broker commands (broker init, broker run) and crl-sync: not built yet. */
#include "cli.h"
#include "common.h"

int cmd_broker_init(struct cli *cli, int argc, char **argv)
{
    return mqpki_fail(MQPKI_ERR_INVALID, "not available yet");
}

int cmd_broker_run(struct cli *cli, int argc, char **argv)
{
    return mqpki_fail(MQPKI_ERR_INVALID, "not available yet");
}

int cmd_crl_sync(struct cli *cli, int argc, char **argv)
{
    return mqpki_fail(MQPKI_ERR_INVALID, "not available yet");
}
