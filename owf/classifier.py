"""An offline FID: a small CNN classifier, trained here, whose features stand in for Inception's.

No Inception weights can be downloaded on these machines; its penultimate features replace them.

    python -m owf.classifier --data fashion-mnist          # trains it (a few minutes on CPU), caches it, reports

- "classifier FID": the Fréchet distance between the classifier's features of generated images
  and of the test split, computed by torchmetrics' FrechetInceptionDistance with this network as
  its custom `feature` module (not a hand-written Fréchet distance). Its floor is the FID of
  training images against the test images. It is its own unit: not comparable to Inception FIDs.
- class shares of generated images by the classifier's labels, their smallest share, and
  KL(shares ‖ uniform) in nats.
The trained network is cached in owf.images.cache_dir() as classifier-<data>.pt, with its test
accuracy; training resumes nothing (it is short) and writes atomically.
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import save_atomic
from .cli import user_errors_exit
from .images import IMAGE_DATASETS, cache_dir, load_images, to_unit

FEATURES = 128
CACHE_VERSION = 1                # a cached classifier of another version is trained again


class Classifier(nn.Module):
    """Two conv blocks and a 128-wide feature layer: x [B, C, H, W] in [-1, 1] -> logits [B, classes]."""

    def __init__(self, channels: int, size: int, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, FEATURES), nn.ReLU())
        self.head = nn.Linear(FEATURES, classes)

    def forward(self, x):
        return self.head(self.features(x))


class _Features(nn.Module):
    """The classifier's penultimate layer as torchmetrics' custom FID feature network. It keeps the
    features of its last call (`last`), so that the class counts need only the head."""
    num_features = FEATURES

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier
        self.last = None

    def forward(self, x):
        self.last = self.classifier.features(x)
        return self.last


def classifier_path(data: str):
    return cache_dir() / f"classifier-{data}.pt"


def _cached_state(data: str) -> dict:
    """The cached classifier's state, {} when there is none usable (missing, corrupt, another version)."""
    try:
        state = torch.load(classifier_path(data), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return {}
    return state if isinstance(state, dict) and state.get("version") == CACHE_VERSION else {}


def classifier_cached(data: str) -> bool:
    return bool(_cached_state(data))


@torch.no_grad()
def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(to_unit(images[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / len(images)


def train_classifier(data: str, root: str = "", epochs: int = 3, batch: int = 128, seed: int = 0,
                     progress: bool = True) -> dict:
    """Train on the training split (Adam 1e-3, light random shifts), cache, and return its record."""
    x, y = load_images(data, root, train=True)
    xt, yt = load_images(data, root, train=False)
    if y is None:
        raise ValueError(f"--data {data} has no labels: the classifier FID needs a labelled data set")
    with torch.random.fork_rng():                 # its initialisation leaves the caller's global stream alone
        torch.manual_seed(seed)
        model = Classifier(x.shape[1], x.shape[2], int(y.max()) + 1)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    steps = epochs * math.ceil(len(x) / batch)
    with tqdm(total=steps, disable=not progress, desc=f"classifier ({data})") as bar:
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x), generator=g).split(batch):
                xb = to_unit(x[idx])
                shift = torch.randint(-2, 3, (2,), generator=g).tolist()      # a random translation of up to 2 px
                xb = torch.roll(xb, shifts=shift, dims=(2, 3))
                loss = F.cross_entropy(model(xb), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    model.eval().requires_grad_(False)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:len(xt)]
    record = {"data": data, "test_accuracy": accuracy(model, xt, yt), "train_size": len(x), "epochs": epochs,
              "classes": int(y.max()) + 1,
              # the floor: training images (as many as the test split) against the test split
              "fid_floor": ClassifierFID(model, xt)(to_unit(x[pick]))["fid"]}
    path = classifier_path(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"state": model.state_dict(), "shape": tuple(x.shape[1:]), "version": CACHE_VERSION, **record}, path)
    return record


def load_classifier(data: str, root: str = "", progress: bool = True) -> Classifier:
    """The cached classifier of `data`, trained first when there is none."""
    state = _cached_state(data)
    if not state:
        print(f"no usable cached classifier for {data} ({classifier_path(data)}): training one "
              f"(python -m owf.classifier --data {data})", file=sys.stderr)
        train_classifier(data, root, progress=progress)
        state = _cached_state(data)
    C, H, _ = state["shape"]
    model = Classifier(C, H, state["classes"])
    model.load_state_dict(state["state"])
    model.test_accuracy, model.fid_floor = state["test_accuracy"], state["fid_floor"]
    return model.eval().requires_grad_(False)


class ClassifierFID:
    """The classifier FID of generated images against a fixed reference set (the test split), with
    the class shares of the generated images. The reference features are computed once."""

    def __init__(self, classifier: Classifier, reference: torch.Tensor, batch: int = 500):
        from torchmetrics.image.fid import FrechetInceptionDistance
        self.classifier, self.batch, self.features = classifier, batch, _Features(classifier)
        self.fid = FrechetInceptionDistance(feature=self.features, reset_real_features=False)
        for i in range(0, len(reference), batch):
            self.fid.update(to_unit(reference[i:i + batch]), real=True)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict:
        """images: [N, C, H, W] in [-1, 1] (on any device) -> fid, class_shares, min_class_share, class_kl."""
        self.fid.reset()
        counts = torch.zeros(self.classifier.head.out_features, dtype=torch.float64)
        for i in range(0, len(images), self.batch):
            x = images[i:i + self.batch].detach().float().cpu().clamp(-1, 1)
            self.fid.update(x, real=False)       # runs the features once; the head reads them back
            counts += torch.bincount(self.classifier.head(self.features.last).argmax(1), minlength=len(counts)).double()
        shares = counts / counts.sum()
        kl = float((shares * (shares.clamp_min(1e-12) * len(shares)).log()).sum())
        return {"fid": float(self.fid.compute()), "class_shares": [round(float(s), 4) for s in shares],
                "min_class_share": float(shares.min()), "class_kl": kl}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m owf.classifier", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist", choices=[d for d in IMAGE_DATASETS if d in ("fashion-mnist", "mnist", "cifar10")])
    p.add_argument("--data-root", default="", help="where the data set's files are (fashion-mnist: the Debian package)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p


@user_errors_exit
def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.epochs <= 0:
        raise ValueError(f"--epochs must be positive, got {a.epochs}")
    record = train_classifier(a.data, a.data_root, a.epochs, seed=a.seed)
    print(json.dumps(dict(record, path=str(classifier_path(a.data)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
