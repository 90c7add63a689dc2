# Issue 29, "Also": do the 2D recipes train bitwise as before? Trains the ring and the grid at their
# defaults for 1,500 steps (--until 1500) with the code of commit OLD (default 7e3277f, where the issue
# was filed) and with this checkout, then compares every tensor of the two checkpoints and every metric
# line (timings aside). Run from the repository root:
#     bash docs/results/likelihood/bitwise_2d/bitwise_2d.sh [OLD]      (output: bitwise_2d.txt)
set -e
OLD=${1:-7e3277f}
ROOT=$(pwd)
W=$(mktemp -d)
git worktree add -f "$W/old" "$OLD" -q
mkdir -p "$W/k" && ln -s "$W/old/kernels" "$W/k/owf_kernels"      # the old owf_kernels, ahead of this install's
for data in ring grid; do
  (cd "$W/old" && PYTHONPATH="$W/k" python -m owf.train --data $data --until 1500 --threads 1 --out "$W/old-$data" > "$W/old-$data.log" 2>&1)
  (cd "$ROOT" && python -m owf.train --data $data --until 1500 --threads 1 --out "$W/new-$data" > "$W/new-$data.log" 2>&1)
done
W="$W" python - <<'PY'
import json, os, torch
W = os.environ["W"]
def tensors(d, p=""):
    if isinstance(d, dict):
        return {k: v for key, val in d.items() for k, v in tensors(val, f"{p}/{key}").items()}
    if isinstance(d, (list, tuple)):
        return {k: v for i, val in enumerate(d) for k, v in tensors(val, f"{p}/{i}").items()}
    return {p: d} if torch.is_tensor(d) else {}
for data in ("ring", "grid"):
    a, b = (tensors(torch.load(f"{W}/{s}-{data}/checkpoint.pt", weights_only=False, map_location="cpu")) for s in ("old", "new"))
    differ = [k for k in a.keys() & b.keys() if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    m = [[{k: v for k, v in json.loads(l).items() if "sec" not in k and "time" not in k}
          for l in open(f"{W}/{s}-{data}/metrics.jsonl")] for s in ("old", "new")]
    print(f"{data}: checkpoint tensors old {len(a)}, new {len(b)}, in both {len(a.keys() & b.keys())}, differing {len(differ)} {differ[:5]}; "
          f"metric lines {len(m[0])} / {len(m[1])}, {'identical' if m[0] == m[1] else 'DIFFERENT'}; last: {m[1][-1]}")
PY
git worktree remove --force "$W/old"
