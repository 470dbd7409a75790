"""``demo``: the main job on localfs, end to end, with its guarantees checked.

A writer process appends at a steady rate (``sync="always"``: each ack means on disk); a follower process tails
the channel through a read-only WAL; the writer runs a transaction; the writer is SIGKILLed mid-stream and a new
writer recovers the channel with a higher term and appends more. Then the demo checks: every acknowledged message
reads back with its payload, the follower got each one once and in order (the transaction as one TXN message),
time ticks only grew, the old term is fenced, and ``verify`` finds the files clean.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click

from .. import registry
from .._types import OpenOption, PChannelInfo
from ..errors import FencedError
from ..walimpls.localfs import tools as fstools
from ._common import EXIT_CODES_HELP, EXIT_FAILURE, channel_name, format_table, percentile
from ._demo_proc import parse_payload

__all__ = ["demo"]

CHANNEL = "demo"
MARKER = ".wal-demo"  # only a directory carrying it (or an empty one) is ever wiped


class _Child:
    """A child process whose stdout lines are collected by a thread, each with its arrival time."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "wal._cli._demo_proc", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.times: list[float] = []  # time.monotonic() at which each line arrived
        self._cond = threading.Condition()
        self._eof = False
        self._err: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._err_thread = threading.Thread(target=self._pump_err, daemon=True)
        self._err_thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.times.append(time.monotonic())
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.append(self.proc.stderr.read())

    def stderr_tail(self) -> str:
        return b"".join(self._err).decode(errors="replace")[-2000:]

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str | None:
        """The first line (from the start) that matches, waiting up to ``timeout`` s; None on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if pred(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    return None
                self._cond.wait(left)

    def finish(self, timeout: float) -> None:
        """Wait for the process and its output to end (kill it past ``timeout``)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with self._cond:
            self._cond.wait_for(lambda: self._eof, timeout=5)
        self._err_thread.join(5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@dataclass
class _Run:
    acks: dict[int, int] = field(default_factory=dict)  # message id -> seq (acknowledged appends)
    ack_latency_us: list[float] = field(default_factory=list)
    ack_terms: dict[int, int] = field(default_factory=dict)  # message id -> term of the writer that acked it
    txn_commit_id: int | None = None
    txn_body_ids: list[int] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    unacked_kept: int = 0  # appends in flight at the kill (never acked) that recovery kept anyway

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((name, ok, detail))
        return ok


def _collect_acks(run: _Run, child: _Child, term: int) -> tuple[int, float]:
    """Record the writer's acks; returns their number and the seconds from the first to the last."""
    n = 0
    first = last = 0.0
    for line, t in zip(child.lines, child.times, strict=True):
        parts = line.split()
        if parts and parts[0] == "ack" and len(parts) == 4:
            mid = int(parts[1])
            run.acks[mid] = int(parts[2])
            run.ack_terms[mid] = term
            run.ack_latency_us.append(float(parts[3]))
            first = first or t
            last = t
            n += 1
        elif parts and parts[0] == "txn" and len(parts) == 4:
            run.txn_commit_id = int(parts[1])
            run.txn_body_ids = [int(x) for x in parts[3].split(",")]
    return n, last - first


def _prepare_root(root: str) -> None:
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise click.UsageError(f"--root {root} exists and is not a directory")
        if os.listdir(root) and not os.path.exists(os.path.join(root, MARKER)):
            raise click.UsageError(
                f"--root {root} is not empty and was not made by `wal demo` (no {MARKER} file); refusing to wipe it"
            )
        shutil.rmtree(root)
    os.makedirs(root, mode=0o700)
    with open(os.path.join(root, MARKER), "w") as f:
        f.write("made by `wal demo`; wiped by the next run\n")


@click.command(epilog=EXIT_CODES_HELP + " The demo exits 1 when any check fails.",
               short_help="Writer, follower, txn, SIGKILL, recovery: checked end to end.")
@click.option("--root", type=click.Path(file_okay=False), default="./wal-demo", show_default=True,
              help="directory for the demo's WAL; wiped at start (only if empty or made by an earlier demo).")
@click.option("--seconds", type=click.FloatRange(min=0.5, max=20), default=4.0, show_default=True,
              help="how long the first writer runs before it is killed.")
@click.option("--rate", type=click.FloatRange(min=10, max=5000), default=250.0, show_default=True,
              help="appends per second of each writer.")
@click.option("--channel", default=CHANNEL, show_default=True, metavar="NAME", callback=channel_name,
              help="the channel the demo writes.")
def demo(root: str, seconds: float, rate: float, channel: str) -> None:
    """Run the main job on localfs and check its guarantees (finishes in well under 30 s).

    \b
    1. a writer process appends at a steady rate, each append durable (sync="always") before it is acked;
    2. a follower process tails the channel through a read-only WAL;
    3. the writer runs a transaction (begin_txn, 3 appends, commit): the follower sees one TXN message;
    4. the writer is killed with SIGKILL mid-stream;
    5. a new writer reopens the channel with a higher term (recovery) and appends more;
    6. checks: every acknowledged message reads back intact, the follower got each once and in order,
       time ticks only grew, the old term is fenced, `wal verify` is clean; then a summary table.
    """
    t_start = time.monotonic()
    root = os.path.abspath(root)
    _prepare_root(root)
    run = _Run()

    def say(what: str) -> None:
        click.echo(f"[{time.monotonic() - t_start:5.1f}s] {what}")

    say(f"WAL root {root}, channel {channel!r}, backend localfs (sync=always)")
    txn_at = max(1, int(rate * seconds / 3))
    w1 = _Child(["writer", root, channel, "1", str(rate), "0", "0", str(txn_at)])
    follower: _Child | None = None
    w2: _Child | None = None
    try:
        ready = w1.wait_for(lambda ln: ln.startswith("ready"), 15)
        if ready is None:
            raise _abort(f"writer did not start:\n{w1.stderr_tail()}")
        say(f"writer 1 (pid {w1.proc.pid}) opened the channel with term 1 in {ready.split()[1]} ms")
        follower = _Child(["follower", root, channel])
        if follower.wait_for(lambda ln: ln == "ready", 15) is None:
            raise _abort(f"follower did not start:\n{follower.stderr_tail()}")
        say(f"follower (pid {follower.proc.pid}) tails it read-only")
        w1_started = time.monotonic()
        txn_line = w1.wait_for(lambda ln: ln.startswith("txn "), seconds + 10)
        if txn_line is not None:
            say(f"writer 1 committed a transaction of 3 messages (commit id {txn_line.split()[1]})")
        time.sleep(max(0.0, seconds - (time.monotonic() - w1_started)))
        w1.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        w1.finish(10)
        n1, w1_secs = _collect_acks(run, w1, 1)
        say(f"SIGKILL writer 1 after {n1} acknowledged appends ({n1 / max(w1_secs, 1e-3):.0f}/s)")

        n2_target = max(10, int(rate * 0.8))
        w2 = _Child(["writer", root, channel, "2", str(rate), "1000000", str(n2_target), "-1"])
        ready2 = w2.wait_for(lambda ln: ln.startswith("ready"), 15)
        recovered_at = time.monotonic()
        if ready2 is None:
            raise _abort(f"writer 2 could not reopen the channel:\n{w2.stderr_tail()}")
        open_ms = float(ready2.split()[1])
        say(f"writer 2 (pid {w2.proc.pid}) recovered the channel with term 2: open took {open_ms:.0f} ms "
            f"({(recovered_at - killed_at) * 1000:.0f} ms from the kill, process start included)")
        w2.finish(30)
        for line in w2.stderr_tail().splitlines():  # what recovery logged (a torn tail cut, an index rebuilt)
            if line.startswith("log "):
                say(f"writer 2 {line}")
        n2, _ = _collect_acks(run, w2, 2)
        run.check("writer 2 appended and closed cleanly", w2.proc.returncode == 0 and n2 == n2_target,
                  f"{n2}/{n2_target} acks, exit {w2.proc.returncode}")
        say(f"writer 2 appended {n2} more and closed")

        _check_fenced(run, root, channel)
        last_id = max(run.acks) if run.acks else 0
        got_last = follower.wait_for(lambda ln: ln.startswith("msg ") and int(ln.split()[1]) >= last_id, 10)
        follower.proc.send_signal(signal.SIGTERM)
        follower.finish(10)
        run.check("follower caught up with the last acknowledged message", got_last is not None, f"id {last_id}")
        say(f"follower stopped after {sum(1 for ln in follower.lines if ln.startswith(('msg', 'txn')))} messages")

        _check_read_back(run, root, channel)
        _check_follower(run, follower.lines)
        t_verify = time.monotonic()
        problems = fstools.verify(root, channel)
        verify_ms = (time.monotonic() - t_verify) * 1000
        run.check("verify finds the files clean", not problems, "; ".join(map(str, problems[:3])))
        say(f"verify: {'clean' if not problems else f'{len(problems)} problem(s)'} ({verify_ms:.0f} ms)")
        total = time.monotonic() - t_start
        _print_summary(run, follower.lines, n1, w1_secs, n2, open_ms, (recovered_at - killed_at) * 1000,
                       not problems, total)
    finally:
        for c in (w1, follower, w2):
            if c is not None:
                c.kill()
    failed = [c for c in run.checks if not c[1]]
    if failed:
        click.echo(f"\nFAILED: {len(failed)} check(s) did not pass", err=True)
        raise click.exceptions.Exit(EXIT_FAILURE)
    cmd = _wal_command()
    click.echo(f"\nall {len(run.checks)} checks passed in {time.monotonic() - t_start:.1f} s; the files are in {root} "
               f"(try: {cmd} info --root {root}; {cmd} dump --root {root} --channel {channel} --limit 20)")


def _wal_command() -> str:
    """How to run this same ``wal`` from where the user is: ``make demo`` runs it from a venv not on PATH."""
    on_path = shutil.which("wal")
    here = os.path.join(os.path.dirname(sys.executable), "wal")
    if on_path is not None and os.path.realpath(on_path) == os.path.realpath(here):
        return "wal"
    rel = os.path.relpath(sys.executable)
    return f"{sys.executable if rel.startswith('..') else rel} -m wal"


def _abort(message: str) -> click.exceptions.Exit:
    click.echo(f"error: {message}", err=True)
    return click.exceptions.Exit(EXIT_FAILURE)


def _check_fenced(run: _Run, root: str, channel: str) -> None:
    name = "a writer with the old term 1 is fenced"
    with registry.must_get_builder("localfs").build(root=root) as opener:
        try:
            opener.open(OpenOption(channel=PChannelInfo(name=channel, term=1)))
        except FencedError:
            run.check(name, True)
            return
    run.check(name, False, "term 1 could still open the channel")


def _check_read_back(run: _Run, root: str, channel: str) -> None:
    """Every acked append is in the log with its own payload (raw records, transaction parts included)."""
    stored: dict[int, int] = {}
    ids: list[int] = []
    for m in fstools.iter_messages(root, channel):
        mid = int(m.message_id.marshal())
        ids.append(mid)
        p = parse_payload(m.payload)
        if p is not None:
            stored[mid] = p[0]
    acked_seqs = set(run.acks.values())
    run.unacked_kept = sum(1 for seq in stored.values() if seq >= 0 and seq not in acked_seqs)
    lost = [i for i in run.acks if i not in stored]
    wrong = [i for i, seq in run.acks.items() if i in stored and stored[i] != seq]
    run.check("no acknowledged message lost (read back by ID, payload compared)", not lost and not wrong,
              f"{len(run.acks)} acked; lost {lost[:5]}, wrong payload {wrong[:5]}")
    txn_ok = run.txn_commit_id is not None and all(i in stored for i in run.txn_body_ids)
    run.check("the transaction's records are stored", txn_ok, f"commit {run.txn_commit_id}, body {run.txn_body_ids}")
    run.check("message IDs are dense and increasing", ids == list(range(ids[0], ids[0] + len(ids))) if ids else False)


def _check_follower(run: _Run, lines: list[str]) -> None:
    seen_ids: list[int] = []
    ticks: list[int] = []
    txns: list[list[str]] = []
    seqs: dict[int, int] = {}
    for line in lines:
        parts = line.split()
        if not parts or parts[0] not in ("msg", "txn"):
            continue
        seen_ids.append(int(parts[1]))
        if parts[0] == "msg":
            ticks.append(int(parts[3]))
            if parts[5] != "-":
                seqs[int(parts[1])] = int(parts[5])
        else:
            ticks.append(int(parts[2]))
            txns.append(parts)
    missing = [i for i in run.acks if seqs.get(i) != run.acks[i]]
    run.check("the follower got every acknowledged message", not missing, f"missing {missing[:5]}")
    run.check("the follower got each message once, in ID order",
              all(a < b for a, b in itertools.pairwise(seen_ids)))
    run.check("time ticks only grew (across the crash and the new term)",
              all(a < b for a, b in itertools.pairwise(ticks)))
    body_leaked = [i for i in run.txn_body_ids if i in seqs]
    ok = (len(txns) == 1 and int(txns[0][1]) == run.txn_commit_id and txns[0][3] == "3" and not body_leaked)
    run.check("the transaction arrived once, as one TXN message of 3", ok,
              f"{len(txns)} TXN message(s); body delivered alone: {body_leaked}")


def _ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def _print_summary(run: _Run, follower_lines: list[str], n1: int, w1_secs: float, n2: int, open_ms: float,
                   recovery_ms: float, verify_ok: bool, total: float) -> None:
    lat = sorted(run.ack_latency_us)
    lags = sorted(float(p[6]) for ln in follower_lines
                  if (p := ln.split()) and p[0] == "msg" and len(p) == 7 and p[6] != "-")
    followed = sum(1 for ln in follower_lines if ln.startswith(("msg ", "txn ")))
    rows = [
        ("writer 1 (term 1)", f"{n1} acked appends in {w1_secs:.1f} s ({n1 / max(w1_secs, 1e-3):.0f}/s), then SIGKILL"),
        ("writer 2 (term 2)", f"{n2} acked appends after recovery"),
        ("transaction", f"3 appends + commit (id {run.txn_commit_id}), delivered as 1 TXN message"),
        ("append latency (durable)", f"p50 {_ms(percentile(lat, 0.5))}, p99 {_ms(percentile(lat, 0.99))}"),
        ("follower (other process)", f"{followed} messages"),
        ("follower lag (append -> delivered)",
         f"p50 {_ms(percentile(lags, 0.5))}, p99 {_ms(percentile(lags, 0.99))}" if lags else "-"),
        ("recovery (reopen after SIGKILL)", f"{open_ms:.0f} ms open, {recovery_ms:.0f} ms kill -> ready"),
        ("acknowledged messages lost",
         ("0" if all(ok for n, ok, _ in run.checks if "lost" in n) else "SOME")
         + f" ({run.unacked_kept} append(s) in flight at the kill, not yet acknowledged, survived too)"),
        ("verify", "clean" if verify_ok else "PROBLEMS"),
        ("total time", f"{total:.1f} s"),
    ]
    click.echo()
    click.echo(format_table(("summary", ""), rows))
    click.echo()
    results = [(name, "PASS" if ok else "FAIL", "" if ok else detail) for name, ok, detail in run.checks]
    click.echo(format_table(("check", "result", "detail"), results))

