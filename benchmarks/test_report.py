"""report.py (the CI smoke pass): the table's ratios and rates from a pytest-benchmark JSON, and
that the committed results still parse."""
import json
from pathlib import Path

import report

RESULTS = Path(__file__).parent / "results"


def bench(group, provider, median_s, **extra):
    return {"group": group, "name": f"test[{provider}]", "params": {"provider": provider},
            "stats": {"median": median_s}, "extra_info": extra}


def test_table_ratios_rates_and_plot(tmp_path):
    g = "linear_jvp fwd M=64 W=16 T=1"
    data = {"machine_info": {"cpu": {"brand_raw": "test cpu", "count": 2}}, "benchmarks": [
        bench(g, "owf", 2e-3, flops=4e6, T=1), bench(g, "plain", 1e-3, flops=4e6, ideal_ratio_to_plain=2, T=1),
        bench(g, "func.jvp", 5e-3, flops=4e6, T=1), bench(g, "gemm", 1.6e-3, flops=4e6),
        bench("log_zeta S=1000", "owf", 1e-3, bytes=8e6), bench("log_zeta S=1000", "logsumexp", 4e-3, bytes=8e6)]}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(data))
    report.main([str(path), "--out", str(tmp_path)])
    md = (tmp_path / "report.md").read_text()
    assert "test cpu, 2 cores" in md
    assert "| func.jvp | 5.000 | 2.50x | 0.8 GFLOP/s | 3.12 |" in md          # 5/2; 4e6 FLOP / 5 ms; 5/1.6
    assert "| owf | 2.000 |  | 2.0 GFLOP/s | 1.25 |" in md
    assert "| plain | 1.000 | 0.50x | 2.0 GFLOP/s | 0.62 |" in md           # one of the 1+T products
    assert "forward+JVP / plain forward: 2.00 (ideal 1+T = 2; target <= 2.6)" in md
    assert "| logsumexp | 4.000 | 4.00x | 2.00 GB/s | |" in md
    # one width, one M, one S: nothing is swept, so no plot
    assert not list(tmp_path.glob("*.png"))


def test_plots_of_each_sweep(tmp_path):
    rows = []
    for M, W in ((64, 16), (64, 32), (256, 16)):      # widths 16, 32 at M = 64; M = 64, 256 at width 16
        g = f"linear_jvp fwd M={M} W={W} T=1"
        rows += [bench(g, "owf", 1e-3, T=1), bench(g, "func.jvp", 2e-3, T=1)]
    for S in (256, 10000):
        rows += [bench(f"log_zeta fwd S={S}", "owf", 1e-3), bench(f"log_zeta fwd S={S}", "torch.logsumexp", 1e-3)]
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    report.main([str(path), "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "speedup_linear_jvp.png", "speedup_linear_jvp_rows.png", "speedup_log_zeta.png"]
    md = (tmp_path / "report.md").read_text()
    assert md.index("log_zeta fwd S=256") < md.index("log_zeta fwd S=10000")     # numbers sort as numbers
    series = report._speedups(report.load(path)[0], r"linear_jvp (fwd) M=(\d+) W=(\d+) T=(\d+)",
                              lambda m: int(m.group(2)), lambda m: int(m.group(3)))
    assert sorted(series[16]["func.jvp"]) == [(64, 2.0), (256, 2.0)]            # over M at width 16


def test_the_committed_cpu_results_still_parse(tmp_path, request):
    # not the file this very run is writing (`pytest benchmarks --benchmark-json=...`): it is empty until the end
    writing = request.config.getoption("benchmark_json")
    writing = Path(writing.name).resolve() if writing else None
    newest = sorted(p for p in RESULTS.glob("cpu_*.json") if p.resolve() != writing)[-1]
    report.main([str(newest), "--out", str(tmp_path)])
    groups, _ = report.load(newest)
    md = (tmp_path / "report.md").read_text()
    assert md.count("#### ") == len(groups) > 10
