#!/usr/bin/env python3
"""bench/report.py RAW.jsonl LATEST.json PERFORMANCE.md TEMPLATE: summarizes a `make bench` run.

latest.json holds nested objects (issuance -> mqpki -> c16 -> per_s); each figure is the median
over the repeated runs, with min and max beside it where there were several runs. The table is
also printed. PERFORMANCE.md is TEMPLATE with @MACHINE@, @TABLE@ and @name.dotted.key@ filled in.
"""
import json
import re
import statistics
import sys

raw, out_json, out_md, template = sys.argv[1:5]
rows = [json.loads(l) for l in open(raw) if l.strip()]


def runs(group, key=None):
    return [r["data"] for r in rows if r["group"] == group and (key is None or r["key"] == key)
            and not r["data"].get("failed")]


def agg(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


res = {"format": "nested objects; each figure is the median of n runs, spread in *_spread",
       "machine": (runs("meta", "machine") or [{}])[0]}


def put(path, a, scale=1.0, nd=1):
    """Stores the median at path and [min, max, n] at path + '_spread'."""
    if a is None:
        return
    node = res
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = round(a["median"] * scale, nd)
    if a["n"] > 1:
        node[parts[-1] + "_spread"] = [round(a["min"] * scale, nd), round(a["max"] * scale, nd),
                                       a["n"]]


for who in ("mqpki", "cfssl"):
    for c in ("c1", "c4", "c16"):
        rr = runs("issuance_" + who, c)
        for f in ("per_s", "p50_ms", "p99_ms"):
            put(f"issuance.{who}.{c}.{f}", agg([r[f] for r in rr]), nd=2 if "ms" in f else 1)
        if rr:
            res["issuance"][who][c]["errors"] = sum(r["errors"] for r in rr)
for k in ("c16_1r", "c16_2r"):
    rr = runs("issuance_pg", k)
    for f in ("per_s", "p50_ms", "p99_ms"):
        put(f"issuance.pg.{k}.{f}", agg([r[f] for r in rr]), nd=2 if "ms" in f else 1)
    if rr:
        res["issuance"]["pg"][k]["errors"] = sum(r["errors"] for r in rr)
oc = runs("issuance_openssl_cli")
if oc:
    res.setdefault("issuance", {})["openssl_cli"] = {
        "per_s": round(1 / oc[0]["median" if "median" in oc[0] else "mean"], 1),
        "ms_per_cert": round(oc[0].get("median", oc[0]["mean"]) * 1000, 2),
        "ms_per_cert_spread": [round(oc[0].get("min", 0) * 1000, 2),
                               round(oc[0].get("max", 0) * 1000, 2)]}
lim = runs("limit")
for f, k in (("softhsm_sign_per_s", "softhsm_sign_per_s"),
             ("softhsm_sign_2t_per_s", "softhsm_sign_2threads_per_s"),
             ("openssl_sign_per_s", "openssl_sign_per_s"),
             ("openssl_verify_per_s", "openssl_verify_per_s"),
             ("openssl_verify_2t_per_s", "openssl_verify_2threads_per_s")):
    put("limit." + k, agg([r[f] for r in lim]), nd=0)
rv = runs("revocation")
if rv:
    r = rv[0]
    res["revocation"] = {k: r[k] for k in r}
rb = [r for r in runs("revocation_big") if not r.get("failed")]
if rb:
    r = rb[0]
    res["revocation_big"] = {
        "entries": r.get("entries"), "revocations": r.get("revocations"),
        "cmd_ms": r.get("revoke_cmd_mean_ms"), "kick_p50_ms": r.get("from_start_p50_ms"),
        "kick_p99_ms": r.get("from_start_p99_ms"), "worst_rtt_ms": r.get("worst_rtt_ms"),
        "full_crls_loaded": r.get("full_crls_loaded"), "load_after": r.get("load_after"),
        "plugin_thread_ms_max": r.get("plugin_thread_ms_max"),
        "plugin_swap_ms_max": r.get("plugin_swap_ms_max"),
        "probe_sent": r.get("probe_sent"), "probe_received": r.get("probe_received")}
for r in rows:
    if r["group"] == "crl_build" and r["key"] not in res.get("crl", {}):
        n = r["key"]
        b, l = runs("crl_build", n), runs("crl_load", n)
        put(f"crl.{n}.build_s", agg([x["build_s"] for x in b]), nd=3)
        put(f"crl.{n}.der_mb", agg([x["der_bytes"] / 1048576 for x in b]), nd=1)
        put(f"crl.{n}.plugin_load_s", agg([x["load_s"] for x in l]), nd=3)
        put(f"crl.{n}.plugin_parse_verify_s", agg([x["parse_verify_s"] for x in l]), nd=3)
        put(f"crl.{n}.plugin_index_s", agg([x["index_s"] for x in l]), nd=3)
        put(f"crl.{n}.plugin_rss_mb", agg([x["rss_after_mb"] for x in l]), nd=1)
        put(f"crl.{n}.plugin_rss_added_mb", agg([x["rss_added_mb"] for x in l]), nd=1)
        put(f"crl.{n}.plugin_peak_rss_mb", agg([x.get("peak_rss_mb", 0) for x in l]), nd=1)
        put(f"crl.{n}.plugin_rss_untrimmed_mb", agg([x.get("rss_untrimmed_mb", 0) for x in l]),
            nd=1)
        put(f"crl.{n}.lookup_ns", agg([x["lookup_ns"] for x in l]), nd=0)
bp, bq = runs("broker_plugin"), runs("broker_plain")
put("broker.plugin_connects_per_s", agg([r["per_s"] for r in bp]))
put("broker.plain_connects_per_s", agg([r["per_s"] for r in bq]))
if bp and bq:
    ratios = [a["per_s"] / b["per_s"] for a, b in zip(bp, bq) if b["per_s"] > 0]
    put("broker.connects_ratio_plugin_vs_plain", agg(ratios), nd=3)
# Detect -> respond (bench/detect.sh): events on vs off in alternated pairs, the clone rule.
for sfx in ("", "_mqpkid"):
    for what in ("connects", "messages"):
        on, off = runs("detect_" + what, "on" + sfx), runs("detect_" + what, "off" + sfx)
        where = "plugin" if sfx == "" else "with_mqpkid"
        put(f"detect.{where}.{what}_on_per_s", agg([r["per_s"] for r in on]))
        put(f"detect.{where}.{what}_off_per_s", agg([r["per_s"] for r in off]))
        if on and off:
            put(f"detect.{where}.{what}_ratio_on_vs_off",
                agg([a["per_s"] / b["per_s"] for a, b in zip(on, off) if b["per_s"] > 0]), nd=3)
        # The broker's CPU per operation: microseconds per connect or per message received.
        count = "connects" if what == "connects" else "received"
        per = {}
        for side, rr in (("on", on), ("off", off)):
            vals = [r["broker_cpu_s"] * 1e6 / r[count] for r in rr
                    if r.get("broker_cpu_s") is not None and r[count] > 0]
            per[side] = agg(vals)
            put(f"detect.{where}.{what}_broker_cpu_us_{side}", per[side])
        if per["on"] and per["off"] and per["on"]["median"] > 0:
            res["detect"][where][f"{what}_cpu_ratio_off_vs_on"] = round(
                per["off"]["median"] / per["on"]["median"], 3)
put("detect.messages_during_flood_per_s",
    agg([r["per_s"] for r in runs("detect_messages", "during_flood")]))
dc = runs("detect_clone")
if dc:
    res.setdefault("detect", {})["clone"] = dc[0]
dm = runs("detect_memory")
if dm:
    res.setdefault("detect", {})["flood"] = dm[0]
inv = {r["key"]: r["data"] for r in rows if r["group"] == "inventory"}
if inv:
    n = str(inv.get("store", {}).get("assets", 0))
    node = res.setdefault("inventory", {}).setdefault(n, {})
    if "store" in inv:
        node["store_mb"] = round(inv["store"]["store_bytes"] / 1048576, 1)
    for k, name in (("list", "list_s"), ("sweep", "expiry_sweep_s"),
                    ("cert_list_expired", "cert_list_expired_s")):
        if k in inv:
            node[name] = round(inv[k]["median"], 3)
            node[name + "_spread"] = [round(inv[k]["min"], 3), round(inv[k]["max"], 3)]
    if "sweep" in inv:
        node["expiry_sweep_rows"] = inv["sweep"].get("rows")


def get(path):
    node = res
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return node


def ratio(a, b):
    a, b = get(a), get(b)
    return round(a / b, 2) if a and b else None


res["ratios"] = {
    "mqpki_vs_cfssl_c16": ratio("issuance.mqpki.c16.per_s", "issuance.cfssl.c16.per_s"),
    "mqpki_vs_cfssl_c1": ratio("issuance.mqpki.c1.per_s", "issuance.cfssl.c1.per_s"),
    "mqpki_vs_openssl_cli": ratio("issuance.mqpki.c16.per_s", "issuance.openssl_cli.per_s"),
    "mqpki_c16_vs_softhsm_sign": ratio("issuance.mqpki.c16.per_s", "limit.softhsm_sign_per_s"),
    "mqpki_c16_vs_openssl_verify": ratio("issuance.mqpki.c16.per_s",
                                         "limit.openssl_verify_per_s"),
}
# The issuance target's CPU budget: at 1.1 x cfssl's c16 rate, the machine's cores give mqpkid
# and the load generator together this much CPU per certificate; the CSR check and the token
# signature alone (the limits above) take crypto_ms of it.
cf, sg, vf = (get("issuance.cfssl.c16.per_s"), get("limit.softhsm_sign_per_s"),
              get("limit.openssl_verify_per_s"))
cores = (res.get("machine") or {}).get("cores")
res["budget"] = {
    "target_per_s": round(1.1 * cf) if cf else None,
    "cpu_ms_per_cert": round(1000.0 * cores / (1.1 * cf), 3) if cf and cores else None,
    "crypto_ms_per_cert": round(1000.0 / sg + 1000.0 / vf, 3) if sg and vf else None,
}
json.dump(res, open(out_json, "w"), indent=2, sort_keys=True)


def fmt(path, unit=""):
    v, s = get(path), get(path + "_spread")
    if v is None:
        return "n/a"
    t = f"{v:g}{unit}"
    if s:
        t += f" ({s[0]:g}-{s[1]:g})"
    return t


n_inv = next(iter(res.get("inventory", {"?": 0})), "?")
table = [
    ("what", "measured: median (min-max)", "target"),
    ("EST issuance c1, certs/s", fmt("issuance.mqpki.c1.per_s"), ""),
    ("EST issuance c1, p50 / p99 ms",
     fmt("issuance.mqpki.c1.p50_ms") + " / " + fmt("issuance.mqpki.c1.p99_ms"), ""),
    ("EST issuance c4, certs/s", fmt("issuance.mqpki.c4.per_s"), ""),
    ("EST issuance c16, certs/s", fmt("issuance.mqpki.c16.per_s"), ">= 6,000"),
    ("EST issuance c16, p50 / p99 ms",
     fmt("issuance.mqpki.c16.p50_ms") + " / " + fmt("issuance.mqpki.c16.p99_ms"), "p99 < 20"),
    ("EST issuance c16 on PostgreSQL, 1 / 2 replicas, certs/s",
     fmt("issuance.pg.c16_1r.per_s") + " / " + fmt("issuance.pg.c16_2r.per_s"),
     "beside SQLite c16"),
    ("EST issuance c16 on PostgreSQL, 1 / 2 replicas, p99 ms",
     fmt("issuance.pg.c16_1r.p99_ms") + " / " + fmt("issuance.pg.c16_2r.p99_ms"), ""),
    ("cfssl serve c1 / c4 / c16, certs/s", " / ".join(fmt(f"issuance.cfssl.{c}.per_s")
                                                      for c in ("c1", "c4", "c16")), ""),
    ("cfssl c16 p50 / p99 ms",
     fmt("issuance.cfssl.c16.p50_ms") + " / " + fmt("issuance.cfssl.c16.p99_ms"), ""),
    ("openssl x509 -req per process, certs/s", fmt("issuance.openssl_cli.per_s"), ""),
    ("mqpki c16 / cfssl c16", str(res["ratios"]["mqpki_vs_cfssl_c16"]), ">= 1.1"),
    ("SoftHSM ECDSA P-256 C_Sign/s, 1 / 2 threads",
     fmt("limit.softhsm_sign_per_s") + " / " + fmt("limit.softhsm_sign_2threads_per_s"), ""),
    ("OpenSSL P-256 sign/s; verify/s 1 / 2 threads",
     fmt("limit.openssl_sign_per_s") + "; " + fmt("limit.openssl_verify_per_s") + " / "
     + fmt("limit.openssl_verify_2threads_per_s"), ""),
    ("revoke -> disconnect p50 / p99 ms (n=%s)" % (get("revocation.disconnected") or 0),
     fmt("revocation.p50_ms") + " / " + fmt("revocation.p99_ms"), "< 50 / < 150"),
    ("with a %s-entry CRL held (n=%s): revoke cmd mean ms / kick p50 / p99 ms from start / "
     "worst probe RTT ms" % (f"{get('revocation_big.entries') or 0:,}",
                             get("revocation_big.revocations") or 0),
     " / ".join(fmt("revocation_big." + k) for k in ("cmd_ms", "kick_p50_ms", "kick_p99_ms",
                                                    "worst_rtt_ms")),
     "< 500 / - / < 150 / < 50"),
]
for n in res.get("crl", {}):
    table += [
        (f"CRL {int(n):,} entries: build+sign s / DER MB",
         fmt(f"crl.{n}.build_s") + " / " + fmt(f"crl.{n}.der_mb"),
         "< 3 s" if n == "1000000" else ""),
        (f"CRL {int(n):,}: plugin load+verify s / RSS MB (peak) / lookup ns",
         fmt(f"crl.{n}.plugin_load_s") + " / " + fmt(f"crl.{n}.plugin_rss_mb") + " ("
         + fmt(f"crl.{n}.plugin_peak_rss_mb") + ") / " + fmt(f"crl.{n}.lookup_ns"),
         "< 2 s / < 100 MB" if n == "1000000" else ""),
    ]
table += [
    ("cloned identity -> disconnect p50 / p99 ms (n=%s)" % (get("detect.clone.disconnected") or 0),
     fmt("detect.clone.p50_ms") + " / " + fmt("detect.clone.p99_ms"), "p99 < 250"),
    ("plugin alone, events on / off: connects/s ratio; messages/s ratio",
     fmt("detect.plugin.connects_ratio_on_vs_off") + "; "
     + fmt("detect.plugin.messages_ratio_on_vs_off"), ">= 0.95"),
    ("with mqpkid on the host, events on / off: connects/s ratio; messages/s ratio",
     fmt("detect.with_mqpkid.connects_ratio_on_vs_off") + "; "
     + fmt("detect.with_mqpkid.messages_ratio_on_vs_off"), ""),
    ("broker CPU per connect, events on / off, us (plugin alone)",
     fmt("detect.plugin.connects_broker_cpu_us_on") + " / "
     + fmt("detect.plugin.connects_broker_cpu_us_off"), ""),
    ("broker CPU per message, events on / off, us (plugin alone)",
     fmt("detect.plugin.messages_broker_cpu_us_on") + " / "
     + fmt("detect.plugin.messages_broker_cpu_us_off"), ""),
    ("events off / on, broker CPU per op: connects; messages",
     str(get("detect.plugin.connects_cpu_ratio_off_vs_on")) + "; "
     + str(get("detect.plugin.messages_cpu_ratio_off_vs_on")), ">= 0.95"),
]
table += [
    ("broker TLS connects/s plugin / plain",
     fmt("broker.plugin_connects_per_s") + " / " + fmt("broker.plain_connects_per_s"), ""),
    ("broker connects ratio plugin / plain", fmt("broker.connects_ratio_plugin_vs_plain"),
     ">= 0.95"),
    (f"inventory {n_inv} assets: asset list --state active --json, s",
     fmt(f"inventory.{n_inv}.list_s"), "< 2"),
    (f"inventory {n_inv}: expiry sweep (30 days), s",
     fmt(f"inventory.{n_inv}.expiry_sweep_s") + f" ({get(f'inventory.{n_inv}.expiry_sweep_rows')}"
     " rows)", "< 1"),
    (f"inventory {n_inv}: store size MB", fmt(f"inventory.{n_inv}.store_mb"), ""),
]
md = ["| " + " | ".join(table[0]) + " |", "| --- | --- | --- |"]
md += ["| " + " | ".join(r) + " |" for r in table[1:]]
width = max(len(r[0]) for r in table)
for r in table:
    print(f"{r[0]:<{width}}  {r[1]:<40}  {r[2]}")
m = res["machine"]
machine = (f"{m.get('cores')} cores ({m.get('cpu')}), {m.get('mem_gb')} GB RAM, "
           f"{m.get('os')}, kernel {m.get('kernel')}; load average at start "
           f"{m.get('load_at_start')}. {m.get('openssl')}; SQLite {m.get('sqlite')}; "
           f"SoftHSM {m.get('softhsm')}; Mosquitto {m.get('mosquitto')}; libmicrohttpd "
           f"{m.get('libmicrohttpd')}; libcurl {m.get('curl')}; cfssl {m.get('cfssl')}; "
           f"mqpki {m.get('git')}.")
text = open(template).read().replace("@MACHINE@", machine).replace("@TABLE@", "\n".join(md))
text = re.sub(r"@([a-z0-9_.]+)@", lambda mo: str(get(mo.group(1))), text)
open(out_md, "w").write(text)
