"""How often SliceChains.jump is accepted on a trained run's D and final chains, at each number of levels.

    python docs/results/likelihood/slice_jumps/jump_acceptance.py RUN LEVELS REPS [THREADS]

LEVELS: comma-separated (e.g. 400,1600). For each, the run's final slice chains (its checkpoint's task state;
chains drawn from p_0 if the run's chains are MALA's) try REPS tempered transitions, five slice steps between
them; each prints the accepted count, the seconds, the moves (component from, to) and the chains' counts per
component. D is held as trained.
"""
import sys
import time

import torch

import owf
from owf.checkpoint import load_checkpoint
from owf.negatives import SliceChains

torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
run, levels, reps = sys.argv[1], [int(a) for a in sys.argv[2].split(",")], int(sys.argv[3])
m = owf.load(run)
D, w = m.D.eval(), m.w
state = load_checkpoint(run + "/checkpoint.pt")["task"]["chains"]
for L in levels:
    ch = SliceChains(len(state["z"]), (1, 28, 28), D.base_density(), seed=1)
    if state.get("kernel") == "slice":
        ch.load_state_dict(state)
    print("start counts", torch.bincount(ch.k, minlength=10).tolist(), flush=True)
    for _ in range(reps):
        t, k0 = time.time(), ch.k.clone()
        acc = ch.jump(D, w, L)
        print(f"levels {L}: accepted {int(acc.sum())}/{len(acc)} in {time.time() - t:.1f}s; evals/transition "
              f"{ch.evaluations / max(ch.transitions, 1):.2f}; moves {[(int(a), int(b)) for a, b in zip(k0[acc], ch.k[acc])]}; "
              f"counts {torch.bincount(ch.k, minlength=10).tolist()}", flush=True)
        for _ in range(5):
            ch.step(D, w)
