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


def table(groups) -> str:
    lines = []
    for g in sorted(groups):
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


def plots(groups, out: Path):
    """Speedup of owf over each provider against the layer width, one line per provider."""
    series = defaultdict(lambda: defaultdict(list))
    for g, rows in groups.items():
        m = re.match(r"linear_jvp (fwd\+bwd|fwd) M=(\d+) W=(\d+) T=(\d+)", g)
        if not m or "owf" not in rows:
            continue
        kind, M, W, T = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        for prov, r in rows.items():
            if prov not in ("owf", "gemm", "plain"):
                series[(kind, M, T)][prov].append((W, r["median_ms"] / rows["owf"]["median_ms"]))
    if not series:
        return None
    keys = sorted(series)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for prov, pts in sorted(series[key].items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=prov)
        ax.axhline(1, color="k", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width K = N")
        ax.set_ylabel("owf speedup (x)")
        ax.set_title(f"linear_jvp {key[0]}, M={key[1]}, T={key[2]}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = out / "speedup_linear_jvp.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    png = plots(groups, out)
    print(md)
    if png:
        print(f"plot: {png}")


if __name__ == "__main__":
    main()
