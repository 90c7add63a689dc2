"""The fine-tunes' trajectories (finetune_entropy.py's OUT.jsonl files): the probe's exact log q and the
2,000-sample classifier FID against the fine-tune's step, one line per file.

    python docs/results/likelihood/finetune_plot.py OUT.png LABEL=FILE.jsonl[+FILE2.jsonl] ...

FILE2 continues FILE (a second call from FILE's RUN_OUT): its steps are shifted by FILE's last."""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOG_Q_CAP = 784 * math.log(128)      # n log 128: no density of dequantised images exceeds it


def rows(spec):
    out, offset = [], 0
    for path in spec.split("+"):
        part = [json.loads(line) for line in open(path)]
        out += [dict(r, step=r["step"] + offset) for r in part if not (out and r["step"] == 0)]
        offset = out[-1]["step"]
    return out


def main(png, *specs):
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for spec in specs:
        label, files = spec.split("=", 1)
        r = rows(files)
        line, = a.plot([x["step"] for x in r], [x["probe_log_q"] for x in r], label=label)
        f = [x for x in r if "fid" in x]
        b.plot([x["step"] for x in f], [x["fid"] for x in f], "o-", color=line.get_color(), label=label)
    a.axhline(LOG_Q_CAP, ls="--", c="gray", lw=1, label="n log 128")
    a.set(xlabel="fine-tune step", ylabel="probe's exact log q (nats)")
    b.set(xlabel="fine-tune step", ylabel="classifier FID (2,000 samples)")
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
