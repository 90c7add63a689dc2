"""gpu_check.py's CPU-side parts (the CI smoke pass), so that a lent GPU's minutes are not lost to
them: the table renders the committed H200 results, and a failing or late section is recorded,
not raised."""
import json
import sys
import time
from pathlib import Path

import pytest

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


def test_the_dcgan_section_runs_its_providers_and_renders(monkeypatch):
    """time_dcgan at smoke sizes on the CPU (cuda calls stubbed): every provider's three timings and
    their peak-memory cells reach the table."""
    import providers as P
    import torch
    monkeypatch.setattr(GC, "RESULTS", [])
    monkeypatch.setattr(P, "DCGAN_CASES", {"tiny": P.DCGAN_SMOKE["28x28x1"]})
    real = P.dcgan
    monkeypatch.setattr(P, "dcgan", lambda *a, device="cpu", **k: real(*a, device="cpu", **k))
    monkeypatch.setattr(GC, "bench", lambda fn: (fn(), 1.25)[1])
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 2 ** 21)
    import importlib
    J = importlib.import_module("owf_kernels.jvp_runner")
    dispatch = J._epilogue
    GC.time_dcgan(lambda: False)                      # no compile: it is the slow part
    assert J._epilogue is dispatch                    # the torch-epilogue row's patch is undone
    (fp32, bf16) = GC.RESULTS
    assert fp32["dtype"] == "float32" and float(fp32["tangent_rel_err_vs_forward_ad_fp32"]) < 1e-5
    assert bf16["dtype"] == "bfloat16" and float(bf16["tangent_rel_err_vs_forward_ad_fp32"]) < 5e-2
    assert all(fp32[f"{p}_{w}_ms"] == 1.25 for p in ("owf", "owf-torch-epilogue", "func.jvp", "forward_ad")
               for w in ("fwd", "step", "train"))
    assert fp32["plain_train_ms"] == 1.25                # the floor: a training step whose tangent costs nothing
    md = GC.table(GC.RESULTS)
    assert "| tiny | float32 | owf | 1.250 (2.0) | 1.250 (2.0) | 1.250 (2.0) | 1.00x |" in md


def test_the_jvp_epilogue_check_runs(monkeypatch):
    """check_jvp_epilogue on the CPU, with the Triton epilogue in the interpreter (one activation):
    the section a lent GPU runs first works, and its oracle agrees."""
    import torch.nn as nn
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    assert GC.check_jvp_epilogue("cpu", [nn.ELU()]) < 1e-5


def test_the_jvp_chain_check_runs(monkeypatch):
    """check_jvp_chain on the CPU, the chains' kernels in the interpreter: they run (the smoke DiT's
    adaLN and the SongUNet's skips) and agree with the float64 torch backend."""
    import owf_kernels.jvp_chain_triton as C
    monkeypatch.setenv("OWF_KERNELS_BACKEND", "triton")
    launch = C._launch
    err, launches = GC.check_jvp_chain("cpu")
    assert err < 1e-5 and launches >= 40 and C._launch is launch
    # a kernel that fails is an error here, not the torch path's fallback compared with itself
    import owf_kernels
    owf_kernels.clear_cache()
    monkeypatch.setattr(C, "_launch", lambda *a: (_ for _ in ()).throw(RuntimeError("no kernel image")))
    with pytest.raises(RuntimeWarning, match="no kernel image"):
        GC.check_jvp_chain("cpu")


def test_the_networks_section_runs_its_providers_and_renders(monkeypatch):
    """time_networks at smoke sizes on the CPU (cuda calls stubbed, compile left out): every
    provider's step and the ideal reach the table, and owf's tangents agree with forward_ad's."""
    import jvp_networks as J
    import torch
    monkeypatch.setattr(GC, "RESULTS", [])
    monkeypatch.setattr(GC, "bench", lambda fn: (fn(), 2.5)[1])
    for name in ("synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 2 ** 21)
    import owf_kernels.jvp_chain as CH
    dispatch = CH._triton_applies
    GC.time_networks(lambda: False, J.SMOKE, "cpu")
    assert CH._triton_applies is dispatch            # "owf-torch-chains" put the chains' dispatch back
    rows = GC.RESULTS
    assert [r["case"] for r in rows] == list(J.SMOKE)
    for r in rows:
        assert float(r["tangent_rel_err_vs_forward_ad"]) < 1e-5
        assert all(r[f"{p}_ms"] == 2.5 for p in J.PROVIDERS + ["owf-torch-chains", "ideal"])
    md = GC.table(rows)
    assert "| meanflow DiT 32x32x1 | owf | 2.500 (2.0) | 1.00x | 1.00 |" in md


def test_the_dry_run_names_the_new_cases(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run"])
    GC.main()
    out = json.loads(capsys.readouterr().out)
    assert "networks" in out["sections"] and "meanflow DiT 32x32x1" in out["network_cases"]
    assert {"user", "ais", "check_sdpa_jvp", "time_sdpa_jvp"} <= set(out["sections"])


def test_a_child_section_past_its_cap_is_killed_and_keeps_its_records(monkeypatch):
    """in_child: the records a section made before its cap are kept, and the kill is recorded."""
    monkeypatch.setattr(GC, "RESULTS", [])
    t = time.time()
    GC.in_child("sleepy", "GC.record(section='sleepy', done=1)\ntime.sleep(600)", 45)
    assert time.time() - t < 90
    assert GC.RESULTS[0] == {"section": "sleepy", "done": 1}
    assert GC.RESULTS[1]["section"] == "sleepy" and GC.RESULTS[1]["status"] == "killed after 45 s"
    assert GC.RESULTS[1]["records_kept"] == 1 and len(GC.RESULTS) == 2


def test_records_are_saved_as_made(tmp_path, monkeypatch):
    """A run killed by its cap keeps every record made so far (the 2026-12-04 run lost its JSON)."""
    monkeypatch.setattr(GC, "RESULTS", [])
    monkeypatch.setattr(GC, "SAVE", tmp_path / "gpu_results.json")
    GC.record(section="a", x=1)
    GC.record(section="b", x=2.5)
    assert json.loads((tmp_path / "gpu_results.json").read_text()) == [dict(section="a", x=1), dict(section="b", x=2.5)]


def test_table_from_a_killed_calls_log(tmp_path):
    """--table reads the records a log printed (a call killed by its cap wrote no JSON), not its other lines."""
    rows = [dict(section="jvp networks", case="c", owf_ms=2.0, owf_peak_MiB=1.0, ideal_ms=1.0),
            dict(section="ceilings", copy_GBps=4250.9)]
    log = tmp_path / "log.txt"
    log.write_text("[   0.2s] == networks\nTraceback (most recent call last):\n  {\"section\": \"not a record\"}\n"
                   + "".join(f"[ {i:5.1f}s] {json.dumps(r)}\n" for i, r in enumerate(rows)))
    assert GC.saved_records(str(log)) == rows
    md = GC.table(GC.saved_records(str(log)))
    assert "| c | owf | 2.000 (1.0) | 1.00x | 2.00 |" in md and '"copy_GBps": 4250.9' in md


def test_pytest_runs_file_by_file_and_keeps_each_output(monkeypatch, tmp_path):
    """One pytest process per file: a failing file's record names its failed test and its whole
    output (the traceback) is kept beside gpu_results.json; a file past the time is recorded skipped."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_good.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    (tests / "test_bad.py").write_text("def test_off():\n    assert 0.3 == 0.30000001192092896, 'fp32 slope'\n")
    monkeypatch.setattr(GC, "HERE", tmp_path / "benchmarks")          # pytest runs in HERE.parent
    monkeypatch.setattr(GC, "RESULTS", [])
    monkeypatch.setattr(GC, "SAVE", tmp_path / "gpu_results.json")
    GC.pytest_on_gpu(60, files=("tests/test_good.py", "tests/test_bad.py"))
    good, bad = GC.RESULTS
    assert good["rc"] == 0 and "1 passed" in good["result"] and good["failed"] == []
    assert bad["rc"] == 1 and bad["failed"] == ["tests/test_bad.py::test_off"]
    assert "fp32 slope" in (tmp_path / "pytest_test_bad.txt").read_text()
    GC.pytest_on_gpu(5, files=("tests/test_good.py",))
    assert GC.RESULTS[-1]["rc"] == "skipped"


def test_sections_run_in_the_order_given_but_ceilings_first_and_pytest_last():
    assert GC.section_order("dcgan,pytest,ais,ceilings,user") == ["ceilings", "dcgan", "ais", "user", "pytest"]
    assert GC.section_order("ais") == ["ais"]
