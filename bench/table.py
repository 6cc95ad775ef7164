#!/usr/bin/env python3
"""Prints the results table (markdown) from the RESULT lines of bench/run.sh."""
import sys


def parse(path):
    rows = []
    for line in open(path):
        if not line.startswith("RESULT "):
            continue
        kv = dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)
        rows.append(kv)
    return rows


def main():
    rows = parse(sys.argv[1])
    out = ["| figure | measured | ratio / target |", "| --- | --- | --- |"]
    for r in rows:
        b = r.get("bench")
        if b == "converge":
            out.append(f"| cold convergence V={r['V']} E={r['E']} B={r['B']} ({r['routes']} routes, "
                       f"{r['elements']} map elements), median of {r['reps']} | daemon {r['daemon_s']} s, "
                       f"ip -batch + nft -f {r['iproute_s']} s, raw netlink {r['raw_s']} s | "
                       f"daemon/raw **{r['daemon_over_raw']}** (target ≤ 1.5), ip-batch/raw {r['iproute_over_raw']} |")
        elif b == "incremental":
            what = {"source": "source delivers a changed EndpointSlice → daemon → last ack",
                    "cached": "reconciler alone, model change + changed VIP → last ack",
                    "cached-compare": "reconciler alone, every service compared (before the changed-VIP hint)",
                    "full-observe": "reconciler, full re-observation per pass (before)"}.get(r['mode'], r['mode'])
            objs = f", {r['objects_per_change']} objects" if 'objects_per_change' in r else ""
            out.append(f"| one endpoint change at V={r['V']}: {what} ({r['changes']} changes) | "
                       f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (max {r['max_ms']}) | "
                       f"{r['rtnl_msgs_per_change']} rtnetlink + {r['nft_msgs_per_change']} nfnetlink msgs"
                       f"{objs} per change (target p99 < 10 ms) |")
        elif b == "restart":
            out.append(f"| restart (fresh reconciler) at V={r['V']}, median of {r['reps']} | "
                       f"reconciled in {r['reconciled_s']} s (observation {r['observe_s']} s) | "
                       f"changes {r['changes']}, ip monitor events {r['ip_monitor_events']}, "
                       f"nft monitor events {r['nft_monitor_events']} (target 0) |")
        elif b == "daemon":
            out.append(f"| daemon binary, V={r['V']}, {r['endpoints']} endpoints: `run --once` cold | "
                       f"{r['cold_s']} s wall, {r['cold_cpu_s']} s CPU, max RSS {r['cold_maxrss_mib']} MiB | target < 150 MiB |")
            out.append(f"| daemon binary: `run --once` restart on programmed state | "
                       f"{r['restart_s']} s wall, {r['restart_cpu_s']} s CPU, max RSS {r['restart_maxrss_mib']} MiB | "
                       f"ip monitor {r['restart_ip_events']}, nft monitor {r['restart_nft_events']} events (target 0) |")
            out.append(f"| daemon binary steady state (manifest source) | RSS {r['steady_rss_mib']} MiB "
                       f"(HWM {r['steady_hwm_mib']}), CPU {r['steady_cpu_s']} s in total | one endpoint edit → "
                       f"kernel (file rename → pass logged): p50 {r['change_wall_p50_ms']} ms, p99 {r['change_wall_p99_ms']} ms wall; "
                       f"daemon pass p50 {r['change_pass_p50_ms']} ms |")
        elif b == "dataplane":
            out.append(f"| small UDP packets/s client→router→pod, B={r['B']}, median of {r['reps']} | "
                       f"plain {r['udp_pps_plain']}, hand-made tunnel {r['udp_pps_hand']}, daemon {r['udp_pps_daemon']} | "
                       f"daemon/hand **{r['daemon_over_hand_pps']}** (median of paired runs {r.get('paired_daemon_over_hand_pps', '-')}; target ≥ 0.95), daemon/plain {r['daemon_over_plain_pps']}, "
                       f"hand/plain {r['hand_over_plain_pps']} |")
            out.append(f"| TCP throughput, one connection (MSS clamped in the pod; hand-made without clamp "
                       f"{r.get('tcp_gbps_hand_unclamped', '-')}) | plain {r['tcp_gbps_plain']}, hand {r['tcp_gbps_hand']}, "
                       f"daemon {r['tcp_gbps_daemon']} Gbit/s | daemon/hand **{r['daemon_over_hand_tcp']}** (paired {r.get('paired_daemon_over_hand_tcp', '-')}), "
                       f"daemon/plain {r['daemon_over_plain_tcp']} |")
        elif b == "dataplane-variant":
            what = {"bpf": "daemon --datapath bpf (tc-BPF classifier, collect-md redirect)",
                    "ref-md": "tc-BPF reference: tunnel key + redirect to the collect-md device",
                    "ref-hdr": "tc-BPF reference: headers built + bpf_redirect_neigh",
                    "ref-hdr-decap": "tc-BPF reference: headers built, tc decap in the pod",
                    "hand-decap": "hand-made tunnel, tc decap in the pod",
                    "bpf-decap": "daemon --datapath bpf, reference tc decap in the pod"}.get(r['variant'], r['variant'])
            target = " (target ≥ 0.8)" if r['variant'] == "bpf" else ""
            out.append(f"| small UDP packets/s, {what}, median of {r['reps']} | {r['udp_pps']} "
                       f"({r['udp_pps_range']}) | /plain **{r['over_plain_pps']}** (paired "
                       f"{r['paired_over_plain_pps']}, {r['paired_over_plain_pps_range']}){target}, "
                       f"/daemon {r['over_daemon_pps']} (paired {r['paired_over_daemon_pps']}, "
                       f"{r['paired_over_daemon_pps_range']}) |")
            if 'tcp_gbps' in r:
                out.append(f"| TCP one connection, {what} | {r['tcp_gbps']} Gbit/s ({r['tcp_gbps_range']}) | "
                           f"/plain {r['over_plain_tcp']} (paired {r['paired_over_plain_tcp']}), "
                           f"/daemon {r['over_daemon_tcp']} (paired {r['paired_over_daemon_tcp']}) |")
        elif b == "metrics":
            out.append(f"| /metrics scrape at V={r['V']} × E={r['E']} (fake counter snapshot; "
                       f"{r['series']} series, {r['bytes']} bytes), {r['reps']} scrapes | "
                       f"p50 {r['render_ms_p50']} ms (max {r['render_ms_max']}): snapshot → families "
                       f"{r['families_ms_p50']} ms, text {r['serialize_ms_p50']} ms | read at scrape "
                       f"time only: no cost per packet |")
    hashing = [r for r in rows if r.get("bench") == "hashing"]
    if hashing:
        out.append("")
        out.append("| hashing: algo | n | B | max/min share | moved on remove (ideal 1/n) | moved on add (ideal 1/(n+1)) |")
        out.append("| --- | --- | --- | --- | --- | --- |")
        for r in hashing:
            out.append(f"| {r['algo']} | {r['n']} | {r['B']} | {r['max_share']}/{r['min_share']} = {r['max_over_min']} | "
                       f"{r['moved_remove']} ({r['ideal_remove']}, ×{r['remove_over_ideal']}) | "
                       f"{r['moved_add']} ({r['ideal_add']}, ×{r['add_over_ideal']}) |")
    loads = [r.get("load") for r in rows if r.get("load")]
    if loads:
        out.append("")
        out.append(f"1-minute load average during the run: {', '.join(loads)} (2 cores).")
    print("\n".join(out))


if __name__ == "__main__":
    main()
