"""Train every (data, loss, seed) with the defaults and tabulate them (the README's tables).

2D: modes and HQ; images: the classifier FID, the smallest class share, the class KL.

    python -m owf.experiments.seeds --data ring grid --loss owf wgan wgan-gp --seeds 5 --lanes 2
    python -m owf.experiments.seeds --data fashion-mnist --loss owf wgan-gp --seeds 3 --lanes 2 --out runs/fm

Each run is `python -m owf.train --data D --loss L --seed S --out OUT/D-L-sS --threads T`; runs run
in `--lanes` parallel processes of `--threads` threads each (2 lanes x 1 thread uses 2 cores best
for throughput; a single default run uses both cores for itself, which is what the time budgets
of the README are measured with). A run whose metrics.json says finished is not run again, so an
interrupted table resumes. Writes OUT/table.md and OUT/table.json and prints the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import mean

from ..cli import user_errors_exit


def run_one(data, loss, seed, out: Path, threads: int, extra: list[str]) -> dict:
    run = out / f"{data}-{loss}-s{seed}"
    done = run / "metrics.json"
    if done.exists() and json.loads(done.read_text()).get("finished"):
        return json.loads(done.read_text())
    if (run / "checkpoint.pt").exists():    # interrupted earlier: continue it (its config is kept)
        cmd = [sys.executable, "-m", "owf.train", "--resume", str(run), "--threads", str(threads)]
    else:
        cmd = [sys.executable, "-m", "owf.train", "--data", data, "--loss", loss, "--seed", str(seed),
               "--out", str(run), "--threads", str(threads), "--overwrite", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not done.exists():
        return {"data": data, "loss": loss, "seed": seed, "error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(done.read_text())


def image_table(results) -> str:
    lines = ["| data | loss | runs | classifier FID: mean (max) | per seed | smallest class share: mean (min) | "
             "class KL (nats): mean | seconds per run (mean) |", "|---|---|---|---|---|---|---|---|"]
    for data, loss in sorted({(r["data"], r["loss"]) for r in results}):
        ok = sorted((r for r in results if r["data"] == data and r["loss"] == loss and "error" not in r),
                    key=lambda r: r["seed"])
        failed = sum(1 for r in results if r["data"] == data and r["loss"] == loss) - len(ok)
        if not ok:
            lines.append(f"| {data} | {loss} | {failed} failed | | | | | |")
            continue
        f, c = [r["fid"] for r in ok], [100 * r["min_class_share"] for r in ok]
        lines.append(f"| {data} | {loss} | {len(ok)}{f' ({failed} failed)' if failed else ''} | {mean(f):.1f} ({max(f):.1f}) "
                     f"| {', '.join(f'{v:.1f}' for v in f)} | {mean(c):.1f}% ({min(c):.1f}%) "
                     f"| {mean(r['class_kl'] for r in ok):.3f} | {mean(r['seconds'] for r in ok):.0f} |")
    return "\n".join(lines)


def table(results) -> str:
    if any("fid" in r for r in results):
        return image_table([r for r in results if "fid" in r or "error" in r])
    lines = ["| data | loss | runs | modes: mean (min) | HQ: mean (min) | seconds per run (mean) |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["data"], r["loss"]) for r in results}, key=lambda k: (k[0], ["owf", "wgan", "wgan-gp"].index(k[1])
                                                                          if k[1] in ("owf", "wgan", "wgan-gp") else 9))
    for data, loss in keys:
        rs = [r for r in results if r["data"] == data and r["loss"] == loss]
        ok = [r for r in rs if "error" not in r]
        failed = len(rs) - len(ok)
        if not ok:
            lines.append(f"| {data} | {loss} | {len(rs)} | failed | failed | |")
            continue
        m = [r["modes"] for r in ok]
        hq = [100 * r["hq"] for r in ok]
        note = f" ({failed} failed)" if failed else ""
        lines.append(f"| {data} | {loss} | {len(ok)}{note} | {mean(m):.1f}/{ok[0]['max_modes']} ({min(m)}) | "
                     f"{mean(hq):.1f}% ({min(hq):.1f}%) | {mean(r['seconds'] for r in ok):.0f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.experiments.seeds", description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["ring", "grid"])
    p.add_argument("--loss", nargs="+", default=["owf", "wgan", "wgan-gp"])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--lanes", type=int, default=2, help="runs in parallel")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="runs/table")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: flags passed to every run")
    return p


@user_errors_exit
def main(argv=None):
    a = build_parser().parse_args(argv)
    extra = [x for x in a.extra if x != "--"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(d, l, s) for d in a.data for l in a.loss for s in range(a.seeds)]
    # longest first, so the lanes finish together
    jobs.sort(key=lambda j: (j[0] != "grid", j[1] != "owf"))
    results = []
    with ThreadPoolExecutor(a.lanes) as ex:
        for r in ex.map(lambda j: run_one(*j, out, a.threads, extra), jobs):
            results.append(r)
            status = r.get("error") or (f"classifier FID {r['fid']:.2f}, {r['seconds']:.0f}s" if "fid" in r else
                                        f"modes {r['modes']}/{r['max_modes']}, HQ {100 * r['hq']:.1f}%, {r['seconds']:.0f}s")
            print(f"{r['data']} {r['loss']} seed {r['seed']}: {status}", flush=True)
    md = table(results)
    (out / "table.md").write_text(md + "\n")
    (out / "table.json").write_text(json.dumps(results, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
