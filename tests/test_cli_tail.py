"""`wal tail`: follows a channel that another process appends to, until Ctrl-C (exit 0)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from _cli_util import PY, child_env, fill, start_writer, stop_writer, writer_append, writer_txn


def _sigint_default() -> None:
    """In the child before exec: Ctrl-C as at a terminal. A runner started in the background (``cmd &`` in a
    script) ignores SIGINT, the child inherits that, and ``wal tail`` then never saw the test's SIGINT (a
    flakiness review ran the suite that way: 2 tests failed)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _Tail:
    def __init__(self, root: Path, *args: str) -> None:
        # faulthandler: a tail that does not exit is sent SIGABRT, which dumps every thread's stack (see interrupt)
        env = {**child_env(), "PYTHONFAULTHANDLER": "1"}
        self.p = subprocess.Popen([PY, "-m", "wal", "tail", "--root", str(root), "--channel", "p1", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                  preexec_fn=_sigint_default)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        assert self.p.stderr is not None
        line = self.p.stderr.readline()  # "following channel ..." once the scanner is open
        assert line.startswith("following channel 'p1'"), line + self.p.stderr.read()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.out.put(line.rstrip("\n"))

    def lines(self, n: int, timeout: float = 15.0) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            got.append(self.out.get(timeout=max(0.01, deadline - time.monotonic())))
        return got

    def interrupt(self) -> int:
        self.p.send_signal(signal.SIGINT)
        try:
            _out, err = self.p.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            # Still running 15 s after Ctrl-C: fail with where each of its threads is (faulthandler's dump).
            self.p.send_signal(signal.SIGABRT)
            try:
                _out, err = self.p.communicate(timeout=15)
            finally:
                if self.p.poll() is None:
                    self.p.kill()
                    self.p.communicate()
            raise AssertionError(f"wal tail did not exit 15 s after SIGINT; its threads:\n{err[-8000:]}") from None
        assert "Traceback" not in err, err
        return self.p.returncode


def test_tail_prints_what_another_process_appends_and_exits_0_on_ctrl_c(tmp_path: Path) -> None:
    fill(tmp_path, n=5)  # history that --from latest must not show
    w = start_writer(tmp_path, term=2)
    try:
        t = _Tail(tmp_path, "--json", "--payload", "text")
        ids = writer_append(w, 3, "first")
        got = [json.loads(x) for x in t.lines(3)]
        assert [x["id"] for x in got] == ids
        assert [x["payload"] for x in got] == [f"first-{i}" for i in range(3)]
        assert all(x["type"] == "INSERT" and x["properties"] == {"tag": "first"} and x["term"] == 2 for x in got)
        ids2 = writer_append(w, 2, "second")
        assert [json.loads(x)["id"] for x in t.lines(2)] == ids2
        commit = writer_txn(w, 3, "tx")  # a committed transaction arrives as one TXN message with its body
        txn = json.loads(t.lines(1)[0])
        assert txn["type"] == "TXN" and txn["id"] == commit and txn["txn_id"] is not None
        assert [m["payload"] for m in txn["messages"]] == ["tx-0", "tx-1", "tx-2"]
        assert t.interrupt() == 0
    finally:
        stop_writer(w)


def test_tail_from_all_and_from_id_text(tmp_path: Path) -> None:
    ids = fill(tmp_path, n=6)
    t = _Tail(tmp_path, "--from", "all")
    lines = t.lines(7)  # header + 6 messages (time ticks hidden)
    assert lines[0].split()[:1] == ["ID"]
    assert [ln.split()[0] for ln in lines[1:]] == ids
    assert t.interrupt() == 0
    t = _Tail(tmp_path, "--from", ids[4], "--limit", "2", "--json")
    assert t.p.wait(timeout=15) == 0  # --limit ends it
    assert [json.loads(x)["id"] for x in t.lines(2)] == ids[4:]
    t.p.communicate()


def test_tail_bad_from_is_a_usage_error(tmp_path: Path) -> None:
    fill(tmp_path, n=1)
    r = subprocess.run([PY, "-m", "wal", "tail", "--root", str(tmp_path), "--channel", "p1", "--from", "x"],
                       capture_output=True, text=True, env=child_env(), timeout=30)
    assert r.returncode == 2 and "--from" in r.stderr
    r = subprocess.run([PY, "-m", "wal", "tail", "--root", str(tmp_path), "--channel", "typo"],
                       capture_output=True, text=True, env=child_env(), timeout=30)
    assert r.returncode == 2 and "no channel 'typo'" in r.stderr
    assert not (tmp_path / "typo").exists()
