/*
 * posture: what an auditor asks of the fleet, computed from live data (docs/csf.md).
 * posture_check runs the fleet audit checks (`mqpki check`); posture_csf builds the NIST CSF
 * report (`mqpki report csf`, the dashboard's posture page) from the same facts. Both read
 * only: the store (one snapshot per query), the CA certificates, the bundled brokers' configs
 * and the CRLs they keep. Results are JSON (jansson) so that every front end renders the same.
 */
#ifndef MQPKI_POSTURE_H
#define MQPKI_POSTURE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct datadir;
struct inventory;

/* Severities, lowest first. A failing check at POSTURE_HIGH or above makes `mqpki check` exit
 * with POSTURE_EXIT_FAILED. */
enum posture_severity { POSTURE_INFO, POSTURE_LOW, POSTURE_MEDIUM, POSTURE_HIGH, POSTURE_CRITICAL };
const char *posture_severity_name(int severity);
#define POSTURE_EXIT_FAILED 3

/* Thresholds (days); posture_opts_default fills the documented defaults. */
struct posture_opts {
    int64_t now;         /* evaluation time (seconds since the epoch) */
    int expiry_days;     /* device certificates expiring within this many days: 30 */
    int max_age_days;    /* device certificates issued longer ago than this: 365 */
    int ca_expiry_days;  /* CA certificates expiring within this many days: 365 */
    int backup_days;     /* no backup for longer than this: 7 */
    int drill_days;      /* no restore drill for longer than this: 90 */
    int silent_days;     /* active assets not seen for this long count as silent: 7 */
    int revoked_grace;   /* seconds a revoked certificate may still show as seen: 300 */
    size_t affected_max; /* affected objects listed per check (the total is always given) */
    int quick;           /* skip what reads every certificate or audit event (the device key
                            scan, audit verification): the dashboard's pages, which must stay
                            fast on a million assets; those checks say "n/a" and why */
};
void posture_opts_default(struct posture_opts *o);

/*
 * Runs every check. *out: {"time", "checks": [{"id", "title", "severity", "status"
 * ("pass" | "fail" | "n/a"), "summary", "affected": [{"object", "detail"}], "affected_total",
 * "csf": ["PR.AA-01", ...]}], "failed", "worst"} plus "facts" (what the CSF report reads).
 * *failed_high (may be NULL): number of failing checks at high or critical severity. inv: the
 * store handle to use (NULL: the data directory's own; a server thread passes its own).
 * Reads only; the audit verification (not in quick mode) uses the data directory's handle.
 */
int posture_check(struct datadir *dd, struct inventory *inv, const struct posture_opts *o,
                  json_t **out, int *failed_high);

/*
 * The CSF report from a posture_check result: {"framework", "time", "functions": [{"id",
 * "name", "tier", "target_tier", "met", "partial", "not_met", "summary"}], "subcategories":
 * [{"id", "function", "title", "oasis" (the note's CSF 1.x ids), "state" ("met" | "partial" |
 * "not met"), "target", "evidence"}]}.
 */
int posture_csf(const json_t *checks, const struct posture_opts *o, json_t **out);

/* Renderings of a CSF report: plain text, and one self-contained HTML page (inline CSS, no
 * script, every value escaped). Heap text, caller frees. */
char *posture_csf_text(const json_t *report);
char *posture_csf_html(const json_t *report);

/* The report's HTML without the page around it (the dashboard's posture page). */
struct mqpki_buf;
void posture_csf_html_section(struct mqpki_buf *b, const json_t *report);

/* One line per function: "Identify (ID): tier 2 of target 3; 3 met, 1 partial, 0 not met". */
char *posture_csf_summary(const json_t *report);

/* Appends s to b with HTML escaping (& < > " '). */
void posture_buf_html(struct mqpki_buf *b, const char *s);

#endif
