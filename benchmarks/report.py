"""Turn pytest-benchmark JSON into a markdown table and PNG plots.

    python -m pytest benchmarks --benchmark-enable --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/report.py benchmarks/results/cpu.json [--out benchmarks/results]

Per group (one op at one size): each provider's median time, its speed relative to owf, and what
the roofline needs: GFLOP/s for GEMM-bound ops (from extra_info["flops"]), GB/s for log_zeta
(extra_info["bytes"]), the ratio of time to the GEMMs alone, and for linear_jvp forwards the
ratio of forward+JVP time to a plain forward next to its ideal (1+T).
"""
from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(path):
    data = json.loads(Path(path).read_text())
    groups = defaultdict(dict)
    machine = data.get("machine_info", {})
    for b in data["benchmarks"]:
        prov = b["params"].get("provider", b["name"])
        groups[b["group"]][prov] = {"median_ms": b["stats"]["median"] * 1e3, **b.get("extra_info", {})}
    return groups, machine


def group_key(g: str):
    """Sort groups by name with their numbers as numbers: S=256 before S=10000."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", g)]


def table(groups) -> str:
    lines = []
    for g in sorted(groups, key=group_key):
        rows = groups[g]
        owf = rows.get("owf", {}).get("median_ms")
        gemm = rows.get("gemm", {}).get("median_ms")
        plain = rows.get("plain", {}).get("median_ms")
        lines += [f"#### {g}", "", "| provider | median ms | owf speedup over it | rate | / GEMMs alone |",
                  "|---|---|---|---|---|"]
        for prov, r in sorted(rows.items(), key=lambda kv: kv[1]["median_ms"]):
            ms = r["median_ms"]
            # a plain forward does one of the 1+T products the others do
            flops = r.get("flops", 0) / (r.get("ideal_ratio_to_plain", 1) if prov == "plain" else 1)
            rate = (f"{flops / ms / 1e6:.1f} GFLOP/s" if "flops" in r else
                    f"{r['bytes'] / ms / 1e6:.2f} GB/s" if "bytes" in r else "")
            speed = f"{ms / owf:.2f}x" if owf and prov != "owf" else ""
            lines.append(f"| {prov} | {ms:.3f} | {speed} | {rate} | {ms / gemm:.2f} |" if gemm else
                         f"| {prov} | {ms:.3f} | {speed} | {rate} | |")
        if owf and plain and "T" in rows.get("owf", {}) and "fwd" in g and "fwd+bwd" not in g:
            T = rows["owf"]["T"]
            lines.append(f"\nforward+JVP / plain forward: {owf / plain:.2f} (ideal 1+T = {1 + T}; "
                         f"target <= {1.3 * (1 + T):.1f})")
        lines.append("")
    return "\n".join(lines)


def _speedups(groups, pattern, x_of, key_of, skip=("owf", "gemm", "plain")):
    """{panel key: {provider: [(x, owf speedup over provider)]}} over the groups matching pattern."""
    series = defaultdict(lambda: defaultdict(list))
    for g, rows in groups.items():
        m = re.fullmatch(pattern, g)
        if not m or "owf" not in rows:
            continue
        for prov, r in rows.items():
            if prov not in skip:
                series[key_of(m)][prov].append((x_of(m), r["median_ms"] / rows["owf"]["median_ms"]))
    return series


def _figure(panels, path: Path, xlabel: str, title):
    """One panel per key: owf's speedup over each provider against size (log x), 1 = parity."""
    keys = sorted(panels)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for prov, pts in sorted(panels[key].items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("owf speedup (x)")
        ax.set_title(title(key), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(groups, out: Path) -> list:
    """PNG plots of owf's speedup over every other provider against size:
    speedup_linear_jvp.png (against the width, one panel per forward / forward+backward, M, T),
    speedup_linear_jvp_rows.png (against M, at each width and T swept over M) and
    speedup_log_zeta.png (against S). A plot is written when at least two sizes were measured."""
    lj = r"linear_jvp (fwd\+bwd|fwd) M=(\d+) W=(\d+) T=(\d+)"
    by_width = _speedups(groups, lj, lambda m: int(m.group(3)), lambda m: (m.group(1), int(m.group(2)), int(m.group(4))))
    by_rows = _speedups(groups, lj, lambda m: int(m.group(2)), lambda m: (m.group(1), int(m.group(3)), int(m.group(4))))
    by_s = _speedups(groups, r"log_zeta (fwd\+bwd|fwd) S=(\d+)", lambda m: int(m.group(2)), lambda m: m.group(1))
    written = []
    for panels, name, xlabel, title in (
            (by_width, "speedup_linear_jvp.png", "width K = N", lambda k: f"linear_jvp {k[0]}, M={k[1]}, T={k[2]}"),
            (by_rows, "speedup_linear_jvp_rows.png", "rows M", lambda k: f"linear_jvp {k[0]}, K=N={k[1]}, T={k[2]}"),
            (by_s, "speedup_log_zeta.png", "samples S", lambda k: f"log_zeta {k}")):
        # panels with one size are points, not a sweep: leave them out
        panels = {k: v for k, v in panels.items() if len({x for pts in v.values() for x, _ in pts}) > 1}
        if panels:
            written.append(_figure(panels, out / name, xlabel, title))
    return written


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("json", help="pytest-benchmark JSON (--benchmark-json)")
    p.add_argument("--out", default=None, help="folder for report.md and the plots (default: beside the JSON)")
    a = p.parse_args(argv)
    groups, machine = load(a.json)
    out = Path(a.out or Path(a.json).parent)
    out.mkdir(parents=True, exist_ok=True)
    head = f"CPU: {machine.get('cpu', {}).get('brand_raw', '?')}, {machine.get('cpu', {}).get('count', '?')} cores"
    md = f"# Benchmarks ({Path(a.json).name})\n\n{head}\n\n" + table(groups)
    (out / "report.md").write_text(md)
    pngs = plots(groups, out)
    print(md)
    for png in pngs:
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
