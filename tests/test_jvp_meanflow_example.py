"""examples/meanflow.py end to end at a toy size: two steps with each engine on toy Fashion-MNIST
files, the same losses to float32 rounding (the example's claim), samples and the comparison plot."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import meanflow  # noqa: E402


def test_the_two_engines_train_alike(fashion_root, tmp_path):
    small = ["--steps", "3", "--batch", "4", "--width", "16", "--depth", "1", "--heads", "2", "--patch", "8",
             "--data-root", str(fashion_root), "--log-every", "1"]
    for engine in ("owf", "torch"):
        meanflow.main(small + ["--jvp", engine, "--out", str(tmp_path / engine)])
        assert (tmp_path / engine / "samples.png").exists()
    result = meanflow.compare(tmp_path / "owf", tmp_path / "torch")
    assert result["steps"] == 3 and result["max_rel_diff"] < 1e-5
    assert (tmp_path / "owf" / "loss_curves.png").exists()
    losses = [json.loads(line)["mse"] for line in (tmp_path / "owf" / "losses.jsonl").read_text().splitlines()]
    assert all(0 < v < 1e4 for v in losses)


def test_compiled_owf_trains_as_eager_owf(fashion_root, tmp_path):
    """--compile: the step under torch.compile, owf's program compiled by Inductor inside its graph
    break: the same losses as the eager run to float32 rounding."""
    import owf_kernels.jvp_trace as JT
    small = ["--steps", "3", "--batch", "4", "--width", "16", "--depth", "1", "--heads", "2", "--patch", "8",
             "--data-root", str(fashion_root), "--log-every", "1", "--jvp", "owf"]
    JT.clear_cache()
    meanflow.main(small + ["--out", str(tmp_path / "eager")])
    meanflow.main(small + ["--compile", "--out", str(tmp_path / "compiled")])
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True
    assert any(callable(f) for e in JT._CACHE.values() for f in e[1].compiled.values())
    result = meanflow.compare(tmp_path / "eager", tmp_path / "compiled")
    assert result["steps"] == 3 and result["max_rel_diff"] < 1e-5
