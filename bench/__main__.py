"""bench/run: the shipper against psql \\copy and the seed's INSERT modes, live tail, idle and backlog.

See BENCHMARKS.md for what each phase measures and how. Results go to OUT/results-<time>.json and a
Markdown report OUT/report-<time>.md (OUT defaults to bench/out/), which is also printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from . import catchup, data, live, procstat, profile, report, shipper_run
from . import server as srv

REPO = Path(__file__).resolve().parent.parent
PHASES = ("catchup", "indexes", "live", "idle", "backlog", "profile")
DEFAULT_PHASES = ("catchup", "indexes", "live", "idle", "backlog")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events in the spool (default 1,000,000)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each method (default 3)")
    p.add_argument("--methods", default="shipper,csv,text,sync,async",
                   help="catch-up methods: shipper, csv and text (psql \\copy), sync and async (the seed)")
    p.add_argument("--shipper-set", action="append", default=[], metavar="KEY=VALUE",
                   help="a shipper setting for the catch-up runs only (experiments; repeatable)")
    p.add_argument("--sync-events", type=int, default=20_000, help="slice for the seed's sync mode")
    p.add_argument("--async-events", type=int, default=200_000, help="slice for the seed's async mode")
    p.add_argument("--live-rates", default="1000,10000", help="writer rates, events/s (comma-separated)")
    p.add_argument("--live-seconds", type=float, default=60.0)
    p.add_argument("--live-tick", type=float, default=0.005, help="seconds between the writer's appends")
    p.add_argument("--idle-files", type=int, default=1000)
    p.add_argument("--idle-seconds", type=float, default=60.0)
    p.add_argument("--idle-settle", type=float, default=15.0, help="seconds after shipping before measuring")
    p.add_argument("--backlog-events", type=int, default=5_000_000)
    p.add_argument("--phases", default=",".join(DEFAULT_PHASES),
                   help=f"comma-separated, from {', '.join(PHASES)} (default: all but profile)")
    p.add_argument("--dsn", default=os.environ.get("BENCH_DSN"),
                   help="use this server (default $BENCH_DSN; else a throwaway one is started)")
    p.add_argument("--fast", action="store_true",
                   help="throwaway server with fsync=off, full_page_writes=off (default: durable)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run wait up to SECONDS for the machine to be idle (shared machines)")
    p.add_argument("--shipper-source", type=Path, metavar="DIR",
                   help="run the shipper from this checkout (e.g. a git worktree of an older commit)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-date", help="UTC day the spool starts (default yesterday)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    if args.shipper_source:
        shipper_run.SOURCE = args.shipper_source.resolve()
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    args.methods = [x.strip() for x in args.methods.split(",") if x.strip()]
    args.shipper_set = dict(item.split("=", 1) for item in args.shipper_set)
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="ascii") as fh:
        mem_kib = int(fh.readline().split()[1])
    return {"nproc": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kib / 2**20, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "load_at_start": procstat.load_average()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"work-{stamp}"
    work.mkdir()
    work.chmod(0o755)  # as root the throwaway server runs as postgres and must reach its directory
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
                               "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"machine: {results['machine']}")
    server = srv.start(work, args.dsn, durable=not args.fast)
    results["server"] = {"storage": server.storage, **server.settings,
                         "throwaway": server.temp is not None, "cpu_visible": server.postmaster is not None}
    log(f"server: {results['server']}")
    out_json = args.out / f"results-{stamp}.json"
    sections: list[str] = []
    try:
        start = data.day_start(args.start_date)
        if {"catchup", "indexes", "profile"} & set(args.phases):
            spool = data.spool(args.out, args.events, args.seed, start, log)
            csv_path, text_path = data.converted(spool, log)
        if "catchup" in args.phases:
            runs = phase_catchup(args, server, spool, csv_path, text_path, work)
            results["catchup"] = [r.as_dict() for r in runs]
            startup = (report.median([catchup.startup(server, work) for _ in range(3)])
                       if "shipper" in args.methods else None)
            results["catchup_startup_s"] = startup
            sections.append(catchup_section(runs, startup))
            _save(out_json, results)
        if "indexes" in args.phases:
            results["indexes"] = phase_indexes(args, server, spool, csv_path)
            sections.append(indexes_section(results["indexes"]))
            _save(out_json, results)
        if "profile" in args.phases:
            log("profiling one catch-up with py-spy ...")
            _, text = profile.record(server, spool, work, args.out)
            sections.append("## Profile of one catch-up (py-spy)\n\n```\n" + text + "```")
        if "live" in args.phases:
            results["live"] = []
            for rate in [float(r) for r in args.live_rates.split(",") if r]:
                quiet(args)
                log(f"live tail at {rate:,.0f} events/s for {args.live_seconds:.0f} s ...")
                res = live.live_tail(server, work, rate, args.live_seconds, args.live_tick)
                log(f"  latency ms {_lat(res.latency_ms)}; shipper CPU "
                    f"{res.shipper_cpu * 100:.1f}% of a core")
                results["live"].append(dataclasses.asdict(res))
                _save(out_json, results)
            sections.append(live_section(results["live"]))
        if "idle" in args.phases:
            quiet(args)
            log(f"idle: {args.idle_files} shipped files, {args.idle_seconds:.0f} s ...")
            res_idle = live.idle(server, work, args.idle_files, args.idle_seconds, args.idle_settle)
            log(f"  CPU {res_idle.cpu * 100:.3f}% of a core, {res_idle.wakeups_per_s:.1f} wake-ups/s")
            results["idle"] = dataclasses.asdict(res_idle)
            sections.append(idle_section(results["idle"]))
            _save(out_json, results)
        if "backlog" in args.phases:
            big = data.spool(args.out, args.backlog_events, args.seed, start, log)
            quiet(args)
            log(f"backlog: catching up {big.count:,} events ({big.nbytes / 1e9:.1f} GB) ...")
            run = catchup.shipper(server, big, work, method="shipper (backlog)", sample_rss=0.5)
            log(f"  {run.rate:,.0f} events/s, peak RSS {run.peak_rss_kib / 1024:.0f} MB")
            results["backlog"] = run.as_dict()
            sections.append(backlog_section(run, results.get("catchup")))
            _save(out_json, results)
    finally:
        server.stop()
    text = render(results, sections)
    out_md = args.out / f"report-{stamp}.md"
    out_md.write_text(text)
    print(text)
    log(f"results: {out_json}\n           report: {out_md}")
    return 0


def quiet(args: argparse.Namespace) -> None:
    if args.wait_quiet > 0:
        busy = procstat.wait_quiet(args.wait_quiet)
        if busy >= 0.3:
            log(f"  the machine is still busy ({busy:.2f} cores): measuring anyway")


def _save(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=1, default=str))


def _lat(lat: dict[str, float]) -> str:
    return ", ".join(f"{k} {lat[k]:.0f}" for k in ("p50", "p99", "max") if k in lat)


def phase_catchup(args: argparse.Namespace, server: srv.Server, spool: data.Spool, csv_path: Path,
                  text_path: Path, work: Path) -> list[report.Run]:
    """Every method once per repeat, interleaved, so drift in the machine's load hits them alike."""
    sync_params = data.insert_params(text_path, args.sync_events if "sync" in args.methods else 0)
    async_params = data.insert_params(text_path, args.async_events if "async" in args.methods else 0)
    shipper_name = "shipper" + "".join(f" ({k}={v})" for k, v in args.shipper_set.items())
    runs: list[report.Run] = []
    checksums: dict[str, int] = {}
    for i in range(args.repeat):
        steps = [
            ("shipper", lambda: catchup.shipper(server, spool, work, method=shipper_name,
                                                settings=args.shipper_set)),
            ("csv", lambda: catchup.copy(server, csv_path, spool.count, "csv")),
            ("text", lambda: catchup.copy(server, text_path, spool.count, "text")),
            ("sync", lambda: catchup.seed_sync(server, sync_params)),
            ("async", lambda: catchup.seed_async(server, async_params)),
        ]
        for name, step in steps:
            if name not in args.methods:
                continue
            quiet(args)
            log(f"run {i + 1}/{args.repeat}: {name} ... (load {procstat.load_average()})")
            run = step()
            runs.append(run)
            log(f"  {run.events:,} events in {run.seconds:.1f} s = {run.rate:,.0f}/s; client CPU "
                f"{run.client_cpu:.1f} s, server CPU {report.fmt(run.server_cpu, '.1f')} s")
            if i == 0 and run.events == spool.count:
                checksums[run.method] = server.checksum()
    if len(set(checksums.values())) > 1:
        raise RuntimeError(f"the methods loaded different rows: {checksums}")
    return runs


def phase_indexes(args: argparse.Namespace, server: srv.Server, spool: data.Spool,
                  csv_path: Path) -> dict[str, Any]:
    """psql \\copy with the four indexes on time ASC (ours) and time DESC (the seed's), interleaved."""
    out: dict[str, Any] = {"asc": {"runs": []}, "desc": {"runs": []}}
    try:
        for i in range(args.repeat):
            for order in ("asc", "desc"):
                server.set_indexes(seed_order=order == "desc")
                quiet(args)
                log(f"indexes {order}, run {i + 1}/{args.repeat}: psql \\copy (csv) ...")
                run = catchup.copy(server, csv_path, spool.count, "csv", method=f"\\copy, time {order}")
                log(f"  {run.rate:,.0f}/s")
                out[order]["runs"].append(run.as_dict())
                out[order]["sizes"] = server.index_sizes()
    finally:
        server.set_indexes(seed_order=False)
    return out


def catchup_section(runs: list[report.Run], startup: float | None) -> str:
    mine = next((m for m in report.by_method(runs) if m.startswith("shipper")), "shipper")
    ratio_rows = [[f"shipper / {name}", f"**{value:.2f}x**"] for name, value in report.ratios(
        runs, mine, [m for m in report.by_method(runs) if m != mine])]
    note = (f"\n\nEach shipper run includes its start-up and exit: {startup:.2f} s with an empty spool "
            "(median of 3)." if startup is not None else "")
    return ("## Catch-up: the same rows, the same table and indexes\n\n" + report.catchup_table(runs)
            + note + "\n\n" + report.table(["ratio (median events/s)", "value"], ratio_rows))


def indexes_section(res: dict[str, Any]) -> str:
    rows = []
    for order in ("asc", "desc"):
        rates = [r["rate"] for r in res[order]["runs"]]
        sizes = res[order]["sizes"]
        rows.append([f"time {order.upper()}" + (" (ours)" if order == "asc" else " (seed)"),
                     f"{report.median(rates):,.0f}", report.spread(rates),
                     f"{sum(sizes.values()) / 2**20:,.0f}"]
                    + [f"{v / 2**20:,.0f}" for v in sizes.values()])
    names = [n.removeprefix("moodle_events_").removesuffix("_idx") for n in res["asc"]["sizes"]]
    asc = report.median([r["rate"] for r in res["asc"]["runs"]])
    desc = report.median([r["rate"] for r in res["desc"]["runs"]])
    size_ratio = sum(res["desc"]["sizes"].values()) / max(1, sum(res["asc"]["sizes"].values()))
    return ("## The four indexes on time ASC vs DESC (psql \\copy, CSV)\n\n"
            + report.table(["indexes", "events/s (median)", "spread", "index MB (4)", *names], rows)
            + f"\n\nASC loads at {asc / desc:.2f}x the speed of DESC; DESC indexes are {size_ratio:.2f}x "
              "the size of ASC.")


def live_section(res: list[dict[str, Any]]) -> str:
    rows = []
    for r in res:
        lat = r["latency_ms"]
        rows.append([f"{r['rate']:,.0f}", f"{r['written']:,}", f"{lat['p50']:,.0f}", f"{lat['p90']:,.0f}",
                     f"{lat['p99']:,.0f}", f"{lat['max']:,.0f}", f"{r['shipper_cpu'] * 100:.1f}%",
                     report.fmt(r["server_cpu"] and r["server_cpu"] * 100, ".1f") + "%",
                     f"{r['writer_cpu'] * 100:.1f}%", f"{r['peak_rss_kib'] / 1024:.0f}",
                     f"{_live_others(r):.2f}"])
    return ("## Live tail (default settings)\n\n"
            + report.table(["events/s", "events", "p50 ms", "p90 ms", "p99 ms", "max ms",
                            "shipper CPU (one core)", "server CPU", "writer CPU", "shipper peak RSS MB",
                            "others' load (cores)"],
                           rows)
            + f"\n\nLatency: {res[0]['method']}.")


def _live_others(r: dict[str, Any]) -> float:
    return max(0.0, r["machine_busy"] - r["shipper_cpu"] - (r["server_cpu"] or 0) - r["writer_cpu"])


def idle_section(r: dict[str, Any]) -> str:
    return ("## Idle\n\n" + report.table(
        ["shipped files", "seconds", "shipper CPU (one core)", "wake-ups/s", "open fds", "RSS MB",
         "others' load (cores)"],
        [[r["files"], f"{r['seconds']:.0f}", f"{r['cpu'] * 100:.3f}%", f"{r['wakeups_per_s']:.1f}",
          r["open_fds"], f"{r['rss_kib'] / 1024:.0f}", f"{r['others']:.2f}"]]))


def backlog_section(run: report.Run, catchups: list[dict[str, Any]] | None) -> str:
    samples = run.extra.get("rss_samples") or []
    points = []
    for fraction in (0.1, 0.25, 0.5, 0.75, 0.95):
        if samples:
            t, kib = samples[min(len(samples) - 1, int(fraction * len(samples)))]
            points.append(f"{t:.0f} s: {kib / 1024:.0f} MB")
    small = [c["peak_rss_kib"] for c in catchups or [] if c["method"] == "shipper"]
    line = (f"\n\nThe 1M-event catch-up peaked at {report.median(small) / 1024:.0f} MB."
            if small else "")
    return ("## Backlog memory\n\n" + report.table(
        ["events", "events/s", "peak RSS MB", "RSS over time"],
        [[f"{run.events:,}", f"{run.rate:,.0f}", f"{run.peak_rss_kib / 1024:.0f}", "; ".join(points)]])
        + line)


def render(results: dict[str, Any], sections: list[str]) -> str:
    m, s = results["machine"], results["server"]
    head = (f"# Benchmark run {results['date']}\n\n"
            f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
            f"Python {m['python']}; load average at start {m['load_at_start']}.\n"
            f"Server: PostgreSQL {s['server_version']} ({s['storage']}), fsync={s['fsync']}, "
            f"synchronous_commit={s['synchronous_commit']}, full_page_writes={s['full_page_writes']}, "
            f"shared_buffers={s['shared_buffers']}, max_wal_size={s['max_wal_size']}.\n"
            f"Command: bench/run {' '.join(sys.argv[1:])}\n")
    return head + "\n" + "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    sys.exit(main())
