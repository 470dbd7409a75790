#!/usr/bin/env python3
"""Our localfs WAL against sqlite3, lmdb and raw ``pwrite``+``fdatasync``, in one run, with the targets of
issues 3 and 4 judged as ratios measured side by side (so a busy machine slows both sides of a ratio alike).

    .venv/bin/python benches/compare.py                 # full run: 3 interleaved runs of each, median (~2 min)
    .venv/bin/python benches/compare.py --quick         # one run of each, smaller counts (< 60 s)
    .venv/bin/python benches/compare.py --only catchup_scan --json
    .venv/bin/python benches/compare.py --dir /var/tmp  # where the files go (must not be tmpfs)
    .venv/bin/python benches/compare.py --only adaptor_pipelined --repeats 7   # more runs, a steadier median

``--only`` takes target names (the measurements they need run too) or measurement names; it may be repeated or
comma-separated. Method and results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [p for p in (_HERE, os.path.dirname(_HERE)) if p not in sys.path]  # benches/ helpers, this checkout

import _bench_peers as peers  # noqa: E402
import _bench_scan_floor as scan_floor  # noqa: E402
import _bench_wal as walb  # noqa: E402
from _bench_env import BIG_RECORD_BYTES, Rate, bench_dir, filesystem_of, median_rate  # noqa: E402


@dataclass(frozen=True)
class Profile:
    name: str
    repeats: int  # interleaved runs of each measurement; the median is reported
    seconds: float  # cap on one rate measurement
    max_ops: int  # cap on operations of one rate measurement
    big_max_ops: int  # cap on 64 KiB appends (each needs 64 KiB of preallocated file on the raw side)
    scan_rows: int
    reopen_bytes: int
    tail_rate: float
    tail_seconds: float


FULL = Profile("full", 3, 2.0, 2_000_000, 20_000, 100_000, 1 << 30, 1000.0, 10.0)
QUICK = Profile("quick", 1, 0.7, 1_000_000, 5_000, 50_000, 1 << 30, 1000.0, 2.0)
SMOKE = Profile("smoke", 1, 0.05, 64, 16, 300, 2 << 20, 1000.0, 0.1)
THREADS = 32


class Ctx:
    """One run's directory and the logs that several measurements share (written once, on first use)."""

    def __init__(self, root: str, profile: Profile) -> None:
        self.root = root  # the current run's scratch directory (see in_run_dir)
        self.shared = root  # logs written once and read by several runs
        self.profile = profile
        self._term = 1
        self._scan_log: str | None = None
        self._big_log: str | None = None
        self._sqlite_log: str | None = None
        self.notes: dict[str, float] = {}

    def in_run_dir(self, name: str, fn: Callable[[Ctx], Rate]) -> Rate:
        """Run ``fn`` with ``root`` pointing at a new directory, deleted afterwards (shared logs stay in place)."""
        self.root = tempfile.mkdtemp(prefix=f"{name}-", dir=self.shared)
        try:
            return fn(self)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = self.shared

    def next_term(self) -> int:
        self._term += 1
        return self._term

    def scan_log(self) -> str:
        if self._scan_log is None:
            path = os.path.join(self.shared, "scan-log")
            t0 = time.perf_counter()
            walb.write_log(path, self.profile.scan_rows)
            self.notes["scan_log_write_s"] = time.perf_counter() - t0
            self._scan_log = path
        return self._scan_log

    def sqlite_log(self) -> str:
        if self._sqlite_log is None:
            self._sqlite_log = peers.sqlite_write_rows(self.shared, self.profile.scan_rows)
        return self._sqlite_log

    def big_log(self) -> str:
        if self._big_log is None:
            path = os.path.join(self.shared, "big-log")
            t0 = time.perf_counter()
            walb.write_big_log(path, self.profile.reopen_bytes)
            self.notes["big_log_write_s"] = time.perf_counter() - t0
            self.notes["big_log_disk_bytes"] = float(walb.du(path))
            self._big_log = path
        return self._big_log


@dataclass(frozen=True)
class Measurement:
    name: str
    label: str
    run: Callable[[Ctx], Rate]  # reads ctx.root: a fresh directory per run
    kind: str = "rate"  # "rate" (records/s, higher is better), "seconds", "latency"
    repeatable: bool = True


def _m(name: str, label: str, run: Callable[[Ctx], Rate], kind: str = "rate", repeatable: bool = True) -> Measurement:
    return Measurement(name, label, run, kind, repeatable)


def _mib(n: int) -> str:
    return f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):g} MiB"


MEASUREMENTS: dict[str, Measurement] = {m.name: m for m in [
    _m("sqlite_full", "sqlite3 WAL mode, synchronous=FULL, one-row txns",
       lambda c: peers.sqlite_one_row_txns(c.root, "FULL", c.profile.max_ops, c.profile.seconds)),
    _m("sqlite_normal", "sqlite3 WAL mode, synchronous=NORMAL, one-row txns (not durable)",
       lambda c: peers.sqlite_one_row_txns(c.root, "NORMAL", c.profile.max_ops, c.profile.seconds)),
    _m("lmdb_batch1000", "lmdb, one synced commit per 1,000 puts",
       lambda c: peers.lmdb_puts(c.root, 1000, c.profile.max_ops, c.profile.seconds)),
    _m("lmdb_put", "lmdb, one synced commit per put",
       lambda c: peers.lmdb_puts(c.root, 1, c.profile.max_ops, c.profile.seconds)),
    _m("raw_100", "os.pwrite+os.fdatasync 100 B, preallocated file",
       lambda c: peers.raw_pwrite_fdatasync(c.root, 100, c.profile.max_ops, c.profile.seconds)),
    _m("raw_64k", "os.pwrite+os.fdatasync 64 KiB, preallocated file",
       lambda c: peers.raw_pwrite_fdatasync(c.root, BIG_RECORD_BYTES, c.profile.big_max_ops, c.profile.seconds)),
    _m("sqlite_select", "sqlite3 SELECT id, payload ORDER BY id (catch-up)",
       lambda c: peers.sqlite_select_scan(c.sqlite_log(), c.profile.scan_rows)),
    _m("wal_single", "wal append, 1 thread, sync=always",
       lambda c: walb.single_append(c.root, c.profile.max_ops, c.profile.seconds)),
    _m("wal_threads32", f"wal append, {THREADS} threads, sync=always (group commit)",
       lambda c: walb.threaded_append(c.root, THREADS, c.profile.max_ops, c.profile.seconds)),
    _m("bare_single", "bare backend append, 1 thread, sync=always",
       lambda c: walb.bare_single_append(c.root, c.profile.max_ops, c.profile.seconds)),
    _m("bare_threads32", f"bare backend append, {THREADS} threads, sync=always",
       lambda c: walb.threaded_append(c.root, THREADS, c.profile.max_ops, c.profile.seconds, bare=True)),
    _m("wal_pipelined", "wal append_async pipelined, sync=always",
       lambda c: walb.pipelined_append(c.root, c.profile.max_ops, c.profile.seconds)),
    _m("pipe_floor", "pure-Python floor: MutableMessage + Future per record, nothing written",
       lambda c: walb.pipeline_floor(c.profile.max_ops, c.profile.seconds)),
    _m("wal_batched", "wal append_messages x1000, sync=always",
       lambda c: walb.batched_append_full(c.root, c.profile.max_ops, c.profile.seconds)),
    _m("bare_batched", "bare backend append_batch x1000, sync=always",
       lambda c: walb.batched_append_bare(c.root, c.profile.max_ops, c.profile.seconds)),
    _m("wal_64k", "wal append 64 KiB, 1 thread, sync=always",
       lambda c: walb.big_append(c.root, c.profile.big_max_ops, c.profile.seconds)),
    _m("wal_64k_reused", "wal append 64 KiB, one payload object reused (as raw_64k)",
       lambda c: walb.big_append_reused(c.root, c.profile.big_max_ops, c.profile.seconds)),
    _m("wal_scan", "wal catch-up scan (reopened, scanner recv)",
       lambda c: walb.catchup_scan_full(c.scan_log(), c.profile.scan_rows, c.next_term())),
    _m("bare_scan", "bare backend catch-up scan (recv_batch)",
       lambda c: walb.catchup_scan_bare(c.scan_log(), c.profile.scan_rows, c.next_term())),
    _m("scan_floor", "pure-Python floor: walk the log's map, crc32c per record, no objects",
       lambda c: scan_floor.crc_walk(c.scan_log(), c.profile.scan_rows)),
    _m("wal_reopen", "wal reopen of a {big} log (build + open)",
       lambda c: walb.reopen(c.big_log(), c.next_term()), kind="seconds"),
    _m("wal_tail", "wal append -> tailing scanner latency at {rate:,.0f}/s",
       lambda c: walb.tailing_latency(c.root, c.profile.tail_rate, c.profile.tail_seconds),
       kind="latency", repeatable=False),
]}


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    needs: tuple[str, ...]
    value: Callable[[dict[str, Rate]], float]
    goal: float
    higher_is_better: bool = True
    unit: str = "x"
    issue: int = 3


def _ratio(a: str, b: str) -> Callable[[dict[str, Rate]], float]:
    return lambda r: r[a].value / r[b].value


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("durable_single_append", "durable single append / sqlite FULL one-row txns",
           ("sqlite_full", "wal_single"), _ratio("wal_single", "sqlite_full"), 1.3),
    Target("pipelined_append", "pipelined durable appends / lmdb 1 sync per 1,000 puts",
           ("lmdb_batch1000", "wal_pipelined"), _ratio("wal_pipelined", "lmdb_batch1000"), 1.0),
    Target("group_commit", f"{THREADS}-thread group commit / 1 thread",
           ("wal_single", "wal_threads32"), _ratio("wal_threads32", "wal_single"), 5.0),
    Target("append_64k", "64 KiB durable append / raw pwrite+fdatasync",
           ("raw_64k", "wal_64k"), _ratio("wal_64k", "raw_64k"), 0.8),
    Target("catchup_scan", "catch-up scan / sqlite SELECT, same rows",
           ("sqlite_select", "wal_scan"), _ratio("wal_scan", "sqlite_select"), 1.0),
    Target("reopen", "reopen of a {big} log, seconds",
           ("wal_reopen",), lambda r: r["wal_reopen"].seconds, 0.5, higher_is_better=False, unit="s"),
    Target("adaptor_pipelined", "adaptor append_async / bare append_batch x1000",
           ("bare_batched", "wal_pipelined"), _ratio("wal_pipelined", "bare_batched"), 0.7, issue=4),
    Target("tailing_p99", "tailing latency p99 at {rate:,.0f} appends/s, ms",
           ("wal_tail",), lambda r: r["wal_tail"].extra["p99_ms"], 1.0, higher_is_better=False, unit="ms",
           issue=4),
]}

# Measurements shown for context only (no target of their own), and where they run.
INFO_AFTER = {
    "durable_single_append": ("sqlite_normal", "lmdb_put", "raw_100", "bare_single"),
    "pipelined_append": ("pipe_floor",),
    "group_commit": ("bare_threads32",),
    "adaptor_pipelined": ("wal_batched",),
    "catchup_scan": ("bare_scan", "scan_floor"),
    "append_64k": ("wal_64k_reused",),
}
INFO_RATIOS = (
    ("adaptor_scan", "adaptor catch-up scan / bare recv_batch (no target)", "wal_scan", "bare_scan"),
    ("floor_vs_sqlite", "pure-Python CRC walk / sqlite SELECT (no target; bounds catchup_scan)",
     "scan_floor", "sqlite_select"),
    ("adaptor_batched", "adaptor append_messages x1000 / bare append_batch x1000 (no target)",
     "wal_batched", "bare_batched"),
    ("single_vs_raw", "durable single append / raw 100 B pwrite+fdatasync (no target)", "wal_single", "raw_100"),
    ("reused_64k_vs_raw", "64 KiB append, payload reused / raw (no target; without cache churn)", "wal_64k_reused",
     "raw_64k"),
    ("raw_vs_sqlite", "raw pwrite+fdatasync / sqlite FULL (no target; bounds single)",
     "raw_100", "sqlite_full"),
    ("floor_vs_lmdb", "MutableMessage+Future floor / lmdb x1000 (no target; bounds pipelined)", "pipe_floor",
     "lmdb_batch1000"),
    ("adaptor_single", "adaptor durable single append / bare append (no target)", "wal_single", "bare_single"),
    ("bare_group_commit", f"bare backend {THREADS}-thread / bare 1 thread (no target)", "bare_threads32",
     "bare_single"),
)


@dataclass
class Outcome:
    rate: Rate | None = None
    error: str | None = None
    runs: list[Rate] = field(default_factory=list)


def _fmt_label(text: str, p: Profile) -> str:
    return text.format(big=_mib(p.reopen_bytes), rate=p.tail_rate)


def plan(only: Sequence[str]) -> list[str]:
    """Measurement names to run, grouped by target so each ratio's two sides are measured close in time."""
    order: list[str] = []
    wanted_targets = [t for t in TARGETS if not only or t in only]
    for t in wanted_targets:
        for m in TARGETS[t].needs + INFO_AFTER.get(t, ()):
            if m not in order:
                order.append(m)
    for m in only:
        if m in MEASUREMENTS and m not in order:
            order.append(m)
    return order


def run(ctx: Ctx, names: list[str], verbose: bool, log: Callable[[str], None]) -> dict[str, Outcome]:
    """Runs each target's measurements interleaved (A B A B A B) and keeps the median run of each."""
    out: dict[str, Outcome] = {}
    groups: list[list[str]] = []
    for t in TARGETS.values():
        g = [m for m in t.needs + INFO_AFTER.get(t.name, ()) if m in names and all(m not in x for x in groups)]
        if g:
            groups.append(g)
    groups.extend([m] for m in names if all(m not in x for x in groups))
    for g in groups:
        for rep in range(ctx.profile.repeats):
            for name in g:
                m = MEASUREMENTS[name]
                o = out.setdefault(name, Outcome())
                if o.error is not None or (rep > 0 and not m.repeatable):
                    continue
                t0 = time.perf_counter()
                try:
                    o.runs.append(ctx.in_run_dir(name, m.run))
                except Exception as e:
                    o.error = f"{type(e).__name__}: {e}"
                    if verbose:
                        traceback.print_exc()
                took = time.perf_counter() - t0
                log(f"  {name} run {rep + 1}: {took:.1f} s" + (f" ERROR {o.error}" if o.error else ""))
    for o in out.values():
        if o.error is None and o.runs:
            o.rate = median_rate(o.runs)
    return out


def judge(results: dict[str, Outcome], only: Sequence[str], p: Profile) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = []
    rates = {k: o.rate for k, o in results.items() if o.rate is not None}
    for t in TARGETS.values():
        if only and t.name not in only and not all(n in only for n in t.needs):
            continue
        row: dict[str, Any] = {"name": t.name, "label": _fmt_label(t.label, p), "issue": t.issue, "unit": t.unit,
                               "goal": t.goal, "op": ">=" if t.higher_is_better else "<="}
        missing = [n for n in t.needs if n not in rates]
        if missing:
            errs = [f"{n}: {results[n].error}" for n in missing if n in results and results[n].error]
            row.update(value=None, verdict="ERROR", error="; ".join(errs) or f"not measured: {', '.join(missing)}")
        else:
            v = t.value(rates)
            ok = v >= t.goal if t.higher_is_better else v <= t.goal
            row.update(value=v, verdict="PASS" if ok else "MISS", runs=_per_run(t, results))
        verdicts.append(row)
    for name, label, a, b in INFO_RATIOS:
        if a in rates and b in rates:
            verdicts.append({"name": name, "label": label, "issue": None, "unit": "x", "goal": None, "op": None,
                             "value": rates[a].value / rates[b].value, "verdict": "INFO"})
    return verdicts


def _per_run(t: Target, results: dict[str, Outcome]) -> list[float]:
    """The target's value in each repeat, its measurements paired by run (run i of each side ran next to the
    other's run i): how far one run's verdict can be trusted. Empty when the sides do not have as many runs."""
    runs = [results[n].runs for n in t.needs]
    if len({len(r) for r in runs}) != 1 or len(runs[0]) < 2:
        return []
    return [t.value({n: r[i] for n, r in zip(t.needs, runs, strict=True)}) for i in range(len(runs[0]))]


def _num(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _show_value(m: Measurement, r: Rate) -> str:
    if m.kind == "seconds":
        return f"{r.seconds:.3f} s (bare backend {r.extra['bare_s']:.3f} s)"
    if m.kind == "latency":
        return (f"p50 {r.extra['p50_ms']:.3f} ms  p99 {r.extra['p99_ms']:.3f} ms  max {r.extra['max_ms']:.2f} ms"
                f"  (after ack: p50 {r.extra['ack_p50_ms']:.3f} p99 {r.extra['ack_p99_ms']:.3f} ms;"
                f" {r.ops} msgs, {r.extra['achieved_rate']:,.0f}/s sent)")
    s = f"{r.value:>12,.0f} rec/s"
    if "MB_per_s" in r.extra:
        s += f"  {r.extra['MB_per_s']:,.0f} MB/s"
    return s


def render_text(ctx: Ctx, results: dict[str, Outcome], verdicts: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"wal benchmark comparison  {meta['utc']}  profile={meta['profile']} "
        f"({meta['repeats']} interleaved run(s) each, median shown)",
        f"dir {meta['dir']} on {meta['filesystem']}  python {meta['python']}  sqlite {meta['sqlite']}  "
        f"lmdb {meta['lmdb']}  cpus {meta['cpus']}  load {meta['loadavg']}",
        "",
        f"{'measurement':<15} {'what':<66} {'result':<30} spread",
    ]
    for name, o in results.items():
        m = MEASUREMENTS[name]
        label = _fmt_label(m.label, ctx.profile)
        if o.rate is None:
            lines.append(f"{name:<15} {label:<66} ERROR {o.error}")
            continue
        spread = o.rate.extra.get("spread_pct")
        sp = f"{spread:.0f}%" if spread is not None else "-"
        lines.append(f"{name:<15} {label:<66} {_show_value(m, o.rate):<30} {sp}")
    lines += ["", f"{'target':<22} {'issue':<5} {'what':<70} {'measured':>10} {'goal':>9}  verdict"]
    for v in verdicts:
        val = "-" if v["value"] is None else f"{v['value']:.3g}{v['unit']}"
        goal = "" if v["goal"] is None else f"{v['op']} {v['goal']:g}{v['unit']}"
        issue = "" if v["issue"] is None else f"#{v['issue']}"
        line = f"{v['name']:<22} {issue:<5} {v['label']:<70} {val:>10} {goal:>9}  {v['verdict']}"
        if v.get("runs"):
            line += "  (runs: " + ", ".join(f"{x:.3g}" for x in v["runs"]) + ")"
        if v.get("error"):
            line += f"  ({v['error']})"
        lines.append(line)
    passed = sum(v["verdict"] == "PASS" for v in verdicts)
    judged = sum(v["verdict"] in ("PASS", "MISS", "ERROR") for v in verdicts)
    lines += ["", f"{passed}/{judged} targets pass; total {meta['total_s']:.1f} s"]
    if ctx.notes:
        lines.append("notes: " + ", ".join(f"{k}={v:,.2f}" for k, v in ctx.notes.items()))
    return "\n".join(lines)


def render_json(results: dict[str, Outcome], verdicts: list[dict[str, Any]], meta: dict[str, Any],
                notes: dict[str, float]) -> str:
    ms: dict[str, Any] = {}
    for name, o in results.items():
        if o.rate is None:
            ms[name] = {"error": o.error}
            continue
        ms[name] = {"kind": MEASUREMENTS[name].kind, "rate": _num(o.rate.value), "ops": o.rate.ops,
                    "seconds": o.rate.seconds, "extra": {k: _num(v) for k, v in o.rate.extra.items()},
                    "runs": [_num(r.value) for r in o.runs]}
    targets = [{k: (_num(v) if isinstance(v, float) else v) for k, v in t.items()} for t in verdicts]
    return json.dumps({"meta": meta, "measurements": ms, "targets": targets, "notes": notes}, indent=2)


def _version(mod: str) -> str:
    try:
        if mod == "lmdb":
            import lmdb

            return ".".join(map(str, lmdb.version()))
    except Exception:
        pass
    return "?"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="one run each, smaller counts (< 60 s)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts: checks the script runs (numbers meaningless)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="a target or measurement name (repeatable, or comma-separated)")
    ap.add_argument("--repeats", type=int, default=None, metavar="N",
                    help="interleaved runs of each measurement (default: the profile's, 3 in the full one)")
    ap.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    ap.add_argument("--dir", default=None, help="parent directory for the files (default: the system temp dir)")
    ap.add_argument("--allow-tmpfs", action="store_true", help="measure even on tmpfs (durable rates become fiction)")
    ap.add_argument("--verbose", "-v", action="store_true", help="progress and tracebacks on stderr")
    args = ap.parse_args(argv)
    args.only = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    unknown = [n for n in args.only if n not in TARGETS and n not in MEASUREMENTS]
    if args.repeats is not None and args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if unknown:
        ap.error(f"unknown name(s) {', '.join(unknown)}; targets: {', '.join(TARGETS)}; "
                 f"measurements: {', '.join(MEASUREMENTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.repeats is not None:
        profile = dataclasses.replace(profile, repeats=args.repeats)
    names = plan(args.only)

    def log(msg: str) -> None:
        if args.verbose:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    with bench_dir(args.dir, args.allow_tmpfs) as root:
        mnt, fs = filesystem_of(root)
        if fs in ("tmpfs", "ramfs"):
            print(f"WARNING: {root} is on {fs}: fsync is free there, durable rates are meaningless", file=sys.stderr)
        ctx = Ctx(root, profile)
        results = run(ctx, names, args.verbose, log)
        meta = {
            "utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "profile": profile.name, "repeats": profile.repeats, "dir": root, "filesystem": f"{fs} ({mnt})",
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "lmdb": _version("lmdb"),
            "cpus": os.cpu_count(), "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "record_bytes": 100, "scan_rows": profile.scan_rows, "reopen_bytes": profile.reopen_bytes,
            "total_s": time.perf_counter() - t0, "argv": list(argv) if argv is not None else sys.argv[1:],
        }
        verdicts = judge(results, args.only, profile)
        if args.json:
            print(render_json(results, verdicts, meta, ctx.notes))
        else:
            print(render_text(ctx, results, verdicts, meta))
    return 1 if any(o.error for o in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
