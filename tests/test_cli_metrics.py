"""wal._metrics (real with prometheus_client, no-op without) and the library's logging hygiene."""

from __future__ import annotations

import subprocess
import sys

import prometheus_client
import pytest
from _cli_util import child_env

from wal._metrics import Metrics


def test_metrics_with_prometheus_client_count_and_observe() -> None:
    reg = prometheus_client.CollectorRegistry()
    m = Metrics(enabled=True, registry=reg)
    assert m.enabled
    m.appends.inc(3)
    m.appends.inc()
    m.append_bytes.inc(400)
    m.fsync_seconds.observe(0.0004)
    m.scanner_lag_seconds.observe(0.02)
    m.segments.set(5)
    m.segments.dec()
    assert reg.get_sample_value("wal_appends_total") == 4
    assert reg.get_sample_value("wal_append_bytes_total") == 400
    assert reg.get_sample_value("wal_fsync_seconds_count") == 1
    assert reg.get_sample_value("wal_fsync_seconds_bucket", {"le": "0.0005"}) == 1
    assert reg.get_sample_value("wal_fsync_seconds_bucket", {"le": "0.0002"}) == 0
    assert reg.get_sample_value("wal_scanner_lag_seconds_sum") == pytest.approx(0.02)
    assert reg.get_sample_value("wal_segments") == 4
    assert b"wal_appends_total 4.0" in prometheus_client.generate_latest(reg)


def test_metrics_disabled_are_noops() -> None:
    m = Metrics(enabled=False)
    assert not m.enabled and m.registry is None
    m.appends.inc(3)
    m.append_bytes.inc(1)
    m.fsync_seconds.observe(1.0)
    m.scanner_lag_seconds.observe(1.0)
    m.segments.set(1)
    m.segments.inc()
    m.segments.dec()
    assert m.appends is m.fsync_seconds  # one shared no-op object: nothing is recorded anywhere


def _run(code: str, **env: str) -> str:
    e = child_env()
    e.update(env)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_without_prometheus_client_the_library_still_works() -> None:
    # prometheus_client made unimportable: the module singleton falls back to no-ops, `import wal` is unaffected.
    out = _run(
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import wal\n"
        "from wal._metrics import metrics, Metrics\n"
        "metrics.appends.inc(2); metrics.fsync_seconds.observe(0.1); metrics.segments.set(3)\n"
        "try:\n"
        "    Metrics(enabled=True)\n"
        "except RuntimeError:\n"
        "    print(metrics.enabled, 'refused')\n"
    )
    assert out == "False refused"


def test_module_singleton_uses_the_default_registry_and_honours_wal_metrics_0() -> None:
    code = (
        "import prometheus_client\n"
        "from wal._metrics import metrics\n"
        "metrics.appends.inc(7)\n"
        "print(metrics.enabled, prometheus_client.REGISTRY.get_sample_value('wal_appends_total'))\n"
    )
    assert _run(code) == "True 7.0"
    assert _run(code, WAL_METRICS="0") == "False None"


def test_import_wal_installs_no_logging_handlers() -> None:
    out = _run(
        "import logging\n"
        "before = list(logging.getLogger().handlers)\n"
        "import wal, wal.adaptor, wal.walimpls.localfs, wal.walimpls.memory, wal._metrics\n"
        "import wal.walimpls.localfs.tools\n"
        "root = logging.getLogger()\n"
        "loggers = [l for n, l in logging.Logger.manager.loggerDict.items()\n"
        "           if n.startswith('wal') and isinstance(l, logging.Logger)]\n"
        "bad = [l.name for l in loggers if l.handlers and not any(isinstance(h, logging.NullHandler)\n"
        "                                                          for h in l.handlers)]\n"
        "print(root.handlers == before, root.level == logging.WARNING, bad)\n"
    )
    assert out == "True True []"


def test_cli_verbose_flag_configures_logging(tmp_path: object) -> None:
    # The command line (not the library) turns logging on: -v shows the localfs recovery log lines.
    code = (
        "import logging, sys\n"
        "from click.testing import CliRunner\n"
        "from wal._cli import cli\n"
        "r = CliRunner().invoke(cli, ['-vv', 'verify', '--root', sys.argv[1]])\n"
        "print(r.exit_code, logging.getLogger().level == logging.DEBUG, len(logging.getLogger().handlers))\n"
    )
    e = child_env()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "True", "1"]


def test_the_library_updates_the_global_metrics() -> None:
    """Appends and scanner lag are counted by the adaptor itself (not only by callers of the metrics API)."""
    from wal import OpenOption, PChannelInfo, ReadOption, registry
    from wal._metrics import metrics
    from wal.message import MessageType, MutableMessage

    assert metrics.enabled
    reg = prometheus_client.REGISTRY

    def val(name: str) -> float:
        return reg.get_sample_value(name) or 0.0

    a0, b0, l0 = val("wal_appends_total"), val("wal_append_bytes_total"), val("wal_scanner_lag_seconds_count")
    op = registry.must_get_builder("memory").build()
    try:
        w = op.open(OpenOption(PChannelInfo("metrics", 1)))
        w.append_messages([MutableMessage(MessageType.INSERT, b"0123456789", vchannel="v") for _ in range(5)])
        with w.read(ReadOption()) as s:
            for _ in range(3):
                s.recv(timeout=5)
    finally:
        op.close()
    assert val("wal_appends_total") - a0 == 5
    assert val("wal_append_bytes_total") - b0 == 50
    assert val("wal_scanner_lag_seconds_count") - l0 >= 1  # sampled: the first delivery, then one in 16


def test_localfs_reports_fsyncs_and_segments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from wal import OpenOption, PChannelInfo, registry
    from wal.message import MessageType, MutableMessage

    reg = prometheus_client.REGISTRY

    def val(name: str) -> float:
        return reg.get_sample_value(name) or 0.0

    f0, s0 = val("wal_fsync_seconds_count"), val("wal_segments")
    op = registry.must_get_builder("localfs").build(root=str(tmp_path), segment_bytes=4096)
    try:
        w = op.open(OpenOption(PChannelInfo("m", 1)))
        for i in range(40):
            w.append(MutableMessage(MessageType.INSERT, b"x" * 200, vchannel="v"))
        assert val("wal_fsync_seconds_count") - f0 >= 40  # sync="always": at least one per acknowledged append
        assert val("wal_segments") - s0 >= 2  # 40 x ~250 B records rolled 4 KiB segments
        w.close()
        assert val("wal_segments") == s0  # a closed writer's segments no longer count
    finally:
        op.close()
