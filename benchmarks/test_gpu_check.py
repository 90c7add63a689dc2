"""gpu_check.py's CPU-side parts (the CI smoke pass), so that a lent GPU's minutes are not lost to
them: the table renders the committed H200 results, and a failing or late section is recorded,
not raised."""
import json
import time
from pathlib import Path

import gpu_check as GC

RUN3 = Path(__file__).parent / "results" / "gpu_2026-11-28_h200_run3.json"


def test_the_table_renders_a_committed_run():
    rows = json.loads(RUN3.read_text())
    md = GC.table(rows)
    for dtype in ("float32", "bfloat16"):
        for k in (256, 512, 1024, 4096):
            assert f"| {dtype} | {k} | " in md
    assert "| 1e+08 | 0.1984 | 1.1638 | 4032.9 | 0.943 |" in md            # log_zeta at S = 10^8
    assert md.count("- 2D exact (T=2)") == 1 and "### checks and notes" in md


def test_a_section_that_fails_or_is_late_is_recorded(monkeypatch):
    monkeypatch.setattr(GC, "RESULTS", [])

    def boom():
        raise ValueError("bad shape")
    assert GC.section("s1", time.time() + 60)(boom)() is None
    assert GC.section("s2", time.time() - 1)(lambda: 1)() is None
    assert GC.section("s3", time.time() + 60)(lambda: 3)() == 3
    assert GC.RESULTS == [{"section": "s1", "status": "error: ValueError: bad shape"},
                          {"section": "s2", "status": "skipped: out of time"}]
