"""The fine-tunes' trajectories (finetune_entropy.py's OUT.jsonl files): the probe's exact log q and the
2,000-sample classifier FID against the fine-tune's step, one line per file; where a file has them, also
importance sampling from G with its exact log q: the log-weights' mean and their sd (ESS ≈ S e^(-sd²) were they
normal; they are not: an sd of 17 nats came with an ESS of 11 of 1,000).

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
    runs = [(spec.split("=", 1)[0], rows(spec.split("=", 1)[1])) for spec in specs]
    with_is = any("is_g_lw_sd" in x for _, r in runs for x in r)
    fig, axes = plt.subplots(2 if with_is else 1, 2, figsize=(10, 7.2 if with_is else 3.8), squeeze=False)
    (a, b), (c, d) = axes if with_is else (axes[0], (None, None))
    for label, r in runs:
        line, = a.plot([x["step"] for x in r], [x["probe_log_q"] for x in r], label=label)
        f = [x for x in r if "fid" in x]
        b.plot([x["step"] for x in f], [x["fid"] for x in f], "o-", color=line.get_color(), label=label)
        g = [x for x in r if "is_g_lw_sd" in x]
        if with_is and g:
            c.plot([x["step"] for x in g], [-x["is_g_lw_mean"] for x in g], "o-", color=line.get_color(), label=label)
            d.plot([x["step"] for x in g], [x["is_g_lw_sd"] for x in g], "o-", color=line.get_color(), label=label)
    a.axhline(LOG_Q_CAP, ls="--", c="gray", lw=1, label="n log 128")
    a.set(xlabel="fine-tune step", ylabel="probe's exact log q (nats)")
    b.set(xlabel="fine-tune step", ylabel="classifier FID (2,000 samples)")
    a.legend(fontsize=8)
    if with_is:
        c.set(xlabel="fine-tune step", ylabel="−mean log-weight, IS from G (nats)", yscale="log")
        d.set(xlabel="fine-tune step", ylabel="sd of the log-weights (nats)",
              title="dashed: the sd ESS ≥ 10 of 1,000 needs\nwere the log-weights normal (they are not)", yscale="log")
        d.axhline(2.0, ls="--", c="gray", lw=1)
        c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:])
