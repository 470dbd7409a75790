"""The backend conformance kit (wal.helper.conformance) on localfs: default segments and tiny ones (constant rolls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wal.registry import get_impls_builder

conformance = pytest.importorskip("wal.helper.conformance")


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="default"),
        pytest.param({"segment_bytes": 4096}, id="tiny-segments"),
        pytest.param({"segment_bytes": 4096, "sync": "never"}, id="tiny-segments-sync-never"),
        pytest.param({"sync": "interval", "sync_interval": 0.005}, id="sync-interval"),
    ],
)
def test_conformance(tmp_path: Path, options: dict[str, object]) -> None:
    # The kit's latest() scanners must stay silent for latest_quiet_seconds (1 s), once a term: a wait, which the
    # default variant keeps; the others are here for rolls and sync modes, which do not change what latest() reads
    # first, and wait 0.3 s (a follower's poll is 50 ms).
    quiet = {} if not options else {"latest_quiet_seconds": 0.3}
    kit = conformance.WALImplsConformance(
        get_impls_builder("localfs"), message_count=300, build_options={"root": str(tmp_path), **options}, **quiet
    )
    kit.run()
