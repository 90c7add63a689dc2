"""Fig. 6: the classifier FID over training, several runs on one plot (owf against WGAN-GP, say).

    python -m owf.experiments.fid_curve runs/fashion-mnist-owf-s0 runs/fashion-mnist-wgan-gp-s0 [--out FILE.png]

Reads each run's metrics.jsonl (its `fid` lines) and config.json (the loss and seed for the
legend); writes FILE.png (default: fid_curve.png in the first run's folder) and prints the last
FID of each run.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..cli import user_errors_exit  # noqa: E402


def fid_rows(run: Path) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{run}: no metrics.jsonl (train it with python -m owf.train --out {run})")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pts = [(r["step"], r["fid"]) for r in rows if "fid" in r]
    if not pts:
        raise ValueError(f"{path} has no classifier FID lines (an image run with --fid-every > 0 has them)")
    return pts


def label(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    return f"{cfg.get('loss', run.name)} seed {cfg.get('seed', '?')}" if cfg else run.name


def fid_curve(runs, out) -> dict:
    curves = {str(r): fid_rows(Path(r)) for r in runs}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for run, pts in curves.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label(Path(run)))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("classifier FID")
    ax.set_title("classifier FID over training (owf.classifier features; lower is better)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return {run: pts[-1] for run, pts in curves.items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.experiments.fid_curve", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run folders written by python -m owf.train on image data")
    p.add_argument("--out", default=None, help="the PNG (default: fid_curve.png in the first run's folder)")
    return p


@user_errors_exit
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    out = Path(a.out) if a.out else Path(a.runs[0]) / "fid_curve.png"
    for run, (step, fid) in fid_curve(a.runs, out).items():
        print(f"{run}: FID {fid:.2f} at step {step}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
