/* cli: the EXAMPLES section of every command's --help (main prints it after the usage text),
 * one row per command; a command without a row fails tests/integration/08-install.sh. */
#include <stddef.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *cmd;
    const char *text;
} examples[] = {
    {"init",
     "  mqpki init --ca-name acme --hostname ca.example.com --url https://ca.example.com:8443\n"
     "  MQPKI_HOME=/var/lib/mqpki mqpki init --key ec-p384\n"},
    {"ca export", "  mqpki ca export --out chain.pem\n"},
    {"ca list", "  mqpki ca list\n"
                "  mqpki ca list --json | jq '.[] | select(.state == \"live\")'\n"},
    {"ca rollover", "  mqpki ca rollover\n"
                    "  mqpki ca rollover --csr-out gen2.csr   # the root kept offline\n"
                    "  mqpki ca rollover --days 1825 && mqpki campaign renew --issuer "
                    "ca/issuers/1.pem --rate 20\n"},
    {"ca retire", "  mqpki campaign finish --revoke-old && mqpki ca retire 1\n"},
    {"root init", "  mqpki root init --root-home /media/root-token --ca-name acme\n"
                  "  mqpki --home /srv/mqpki init --root-home /media/root-token --ca-name acme\n"},
    {"root sign",
     "  mqpki ca rollover --csr-out /media/transfer/gen2.csr\n"
     "  mqpki root sign --root-home /media/root-token --csr /media/transfer/gen2.csr \\\n"
     "      --expect-key KEY_SHA256_FROM_ABOVE --out /media/transfer/gen2.pem\n"
     "  mqpki ca rollover --cert /media/transfer/gen2.pem\n"},
    {"asset add",
     "  mqpki asset add sensor-0001 --kind device --model TH-200 --location feeder-12\n"
     "  mqpki asset add b1 --kind broker --tag site=north\n"},
    {"asset list", "  mqpki asset list --state active\n"
                   "  mqpki asset list --kind device --json | jq -r '.[].id'\n"},
    {"asset show", "  mqpki asset show sensor-0001\n"
                   "  mqpki asset show sensor-0001 --json\n"},
    {"asset set", "  mqpki asset set sensor-0001 --firmware 2.4.1 --tag zone=3\n"
                  "  mqpki asset set sensor-0001 --tag zone=\n"},
    {"asset decommission", "  mqpki asset decommission sensor-0001\n"},
    {"token create", "  mqpki token create sensor-0001 --ttl 2h > token.txt\n"},
    {"token list", "  mqpki token list --asset sensor-0001\n"},
    {"token revoke", "  mqpki token revoke 42\n"
                     "  mqpki token revoke --asset sensor-0001\n"},
    {"issue", "  mqpki issue --asset sensor-0001 --csr sensor.csr --out sensor.pem\n"
              "  mqpki issue --asset b1 --csr b1.csr --profile broker --days 365\n"},
    {"cert list", "  mqpki cert list --asset sensor-0001\n"
                  "  mqpki cert list --state revoked --json\n"},
    {"cert get", "  mqpki cert get --serial 1A2B3C --out cert.pem\n"},
    {"revoke", "  mqpki revoke --serial 1A2B3C --reason key-compromise\n"
               "  mqpki revoke --asset sensor-0001 --reason hold\n"
               "  mqpki revoke --selector location=feeder-12 --reason cessation --yes\n"},
    {"unhold", "  mqpki unhold --serial 1A2B3C\n"
               "  mqpki unhold --asset sensor-0001\n"},
    {"crl publish", "  mqpki crl publish\n"},
    {"crl", "  mqpki crl --json\n"
            "  mqpki crl --der --out issuing.crl\n"
            "  mqpki crl --pem --delta\n"},
    {"audit verify", "  mqpki audit verify\n"
                     "  mqpki audit verify --json --checkpoint saved-checkpoint.json\n"},
    {"audit checkpoint", "  mqpki audit checkpoint --json\n"},
    {"broker init", "  mqpki broker init b1 --host broker.example.com --port 8883\n"},
    {"broker run", "  mqpki broker run b1\n"
                   "  systemctl enable --now mqpki-broker@b1\n"},
    {"ca fingerprint", "  mqpki ca fingerprint\n"
                       "  mqpki ca fingerprint --json | jq -r .root\n"},
    {"asset import", "  mqpki asset import fleet.csv\n"
                     "  mqpki asset import fleet.json\n"},
    {"cert show", "  mqpki cert show --serial 1A2B3C\n"
                  "  mqpki cert show --serial 1A2B3C --json\n"},
    {"cert expiring", "  mqpki cert expiring --within 7d\n"
                      "  mqpki cert expiring --within 30d --json | jq -r '.[].asset'\n"},
    {"tidy", "  mqpki tidy --dry-run\n"
             "  mqpki tidy --json\n"},
    {"broker remove", "  mqpki broker remove b1\n"},
    {"store migrate", "  mqpki store migrate --to 'postgresql://db1,db2/mqpki?user=mqpki'\n"
                      "  mqpki audit verify\n"},
    {"replica init", "  mqpki --home /srv/mqpki-b replica init --from /srv/mqpki-a\n"
                     "  mqpkid --home /srv/mqpki-b --listen 0.0.0.0:8444\n"},
    {"events", "  mqpki events --since 15m\n"
               "  mqpki events --asset meter-7 --follow --json\n"},
    {"alerts", "  mqpki alerts --open\n"
               "  mqpki alerts --json | jq '.[] | select(.rule == \"cloned_identity\")'\n"},
    {"alerts ack", "  mqpki alerts ack 12\n"},
    {"release", "  mqpki release --asset meter-7\n"},
    {"broker renew", "  mqpki broker renew b1\n"
                     "  mqpki broker renew b1 --force\n"},
    {"backup", "  mqpki backup --out /srv/backup/mqpki-$(date +%F).tar\n"
               "  mqpki backup --out ca-full.tar --include-secrets\n"},
    {"restore", "  mqpki restore /srv/backup/mqpki-2026-12-01.tar --home /var/lib/mqpki\n"},
    {"campaign renew", "  mqpki campaign renew --all --rate 20\n"
                       "  mqpki campaign renew --tag site=north --silent-after 1h\n"},
    {"campaign status", "  mqpki campaign status\n"
                        "  mqpki campaign status --id 3 --json\n"},
    {"campaign finish", "  mqpki campaign finish --revoke-old\n"},
    {"check",
     "  mqpki check\n"
     "  mqpki check --json --expiry-days 14 | jq '.checks[] | select(.status == \"fail\")'\n"},
    {"report csf", "  mqpki report csf\n"
                   "  mqpki report csf --format html --out csf-report.html\n"},
    {"operator add", "  mqpki operator add alice --out-dir ~/.mqpki\n"},
    {"operator token",
     "  mqpki operator token alice --ttl 1h\n"
     "  mqpki operator token alice --login-url --url https://ca.example.com:8443\n"},
    {"crl-sync",
     "  mqpki crl-sync --broker mqtts://localhost:8883 --out /etc/mosquitto/crl.pem \\\n"
     "      --exec 'systemctl reload mosquitto'\n"},
};

const char *cli_examples(const char *cmd)
{
    size_t i;

    for (i = 0; i < sizeof(examples) / sizeof(examples[0]); i++)
        if (strcmp(examples[i].cmd, cmd) == 0)
            return examples[i].text;
    return NULL;
}
