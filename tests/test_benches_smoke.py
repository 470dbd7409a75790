"""benches/compare.py runs end to end and prints what it promises (structure only: never its numbers)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

COMPARE = Path(__file__).resolve().parent.parent / "benches" / "compare.py"
TARGETS = {"durable_single_append", "pipelined_append", "group_commit", "append_64k", "catchup_scan", "reopen",
           "adaptor_pipelined", "tailing_p99"}


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("wal_benches_compare", COMPARE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_smoke_json_has_every_target_with_a_ratio(compare: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc = compare.main(["--quick", "--smoke", "--json", "--allow-tmpfs", "--dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    errors = {k: v["error"] for k, v in out["measurements"].items() if "error" in v}
    assert errors == {}
    assert rc == 0
    assert set(compare.MEASUREMENTS) == set(out["measurements"])
    judged = {t["name"]: t for t in out["targets"] if t["verdict"] != "INFO"}
    assert set(judged) == TARGETS
    for t in judged.values():
        assert t["verdict"] in ("PASS", "MISS"), t
        assert isinstance(t["value"], float) and t["value"] >= 0, t
        assert t["op"] in (">=", "<=") and t["goal"] > 0
    assert out["meta"]["profile"] == "smoke"
    assert list(tmp_path.iterdir()) == []  # the run cleans up after itself


def test_smoke_text_prints_table_and_verdicts(compare: ModuleType, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc = compare.main(["--quick", "--smoke", "--allow-tmpfs", "--dir", str(tmp_path), "--only", "group_commit"])
    text = capsys.readouterr().out
    assert rc == 0
    lines = text.splitlines()
    assert any(line.startswith("wal_threads32 ") and "rec/s" in line for line in lines)
    assert any(line.startswith("wal_single ") and "rec/s" in line for line in lines)
    verdict = [line for line in lines if line.startswith("group_commit ")]
    assert len(verdict) == 1 and verdict[0].split()[-1] in ("PASS", "MISS")
    assert "sqlite_full" not in text  # --only ran just what the target needs


def test_repeats_gives_each_ratio_target_one_value_per_run(compare: ModuleType, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = compare.main(["--smoke", "--json", "--allow-tmpfs", "--dir", str(tmp_path), "--only", "adaptor_pipelined",
                       "--repeats", "3"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["meta"]["repeats"] == 3
    for name in ("wal_pipelined", "bare_batched"):
        assert len(out["measurements"][name]["runs"]) == 3
    (t,) = [t for t in out["targets"] if t["name"] == "adaptor_pipelined"]
    runs = out["measurements"]
    want = [a / b for a, b in zip(runs["wal_pipelined"]["runs"], runs["bare_batched"]["runs"], strict=True)]
    assert t["runs"] == pytest.approx(want)  # run i of one side against run i of the other
    # the verdict stays the ratio of the two sides' medians
    assert t["value"] == pytest.approx(runs["wal_pipelined"]["rate"] / runs["bare_batched"]["rate"])


def test_repeats_below_one_is_refused(compare: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        compare.main(["--smoke", "--repeats", "0"])
    assert e.value.code == 2
    assert "--repeats" in capsys.readouterr().err


def test_unknown_only_name_is_refused(compare: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        compare.main(["--smoke", "--only", "no_such_bench"])
    assert e.value.code == 2
    assert "no_such_bench" in capsys.readouterr().err


def test_tmpfs_is_refused(compare: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = sys.modules["_bench_env"]
    monkeypatch.setattr(env, "filesystem_of", lambda path: ("/fake", "tmpfs"))
    with pytest.raises(SystemExit) as e:
        compare.main(["--smoke", "--dir", str(tmp_path)])
    assert "tmpfs" in str(e.value.code)
