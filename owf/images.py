"""Image data sets, read from local files (nothing downloads unless asked), and the training stream.

- fashion-mnist: the IDX files of the Debian package `dataset-fashion-mnist`
  (/usr/share/datasets/fashion-mnist, found through `dpkg -L`), or of --data-root; unpacked once
  into the cache folder, then read by torchvision's FashionMNIST.
- mnist, cifar10, celeba: torchvision's data sets under --data-root (--download fetches them).
  CelebA is centre-cropped to 178 x 178 and resized to 64 x 64, as DCGAN did.
- folder: every image file under --data-root (any layout), all of one size; a seeded 10% is the
  test split.

Every set becomes uint8 tensors [N, C, H, W] (train and test splits, with labels where it has
classes); pixels go to [-1, 1] as x = u / 127.5 - 1 when a batch is drawn.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path

import torch

IMAGE_DATASETS = ("fashion-mnist", "mnist", "cifar10", "celeba", "folder")
SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32), "celeba": (3, 64, 64)}
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")
DOWNLOAD_TIMEOUT = 30.0          # seconds per network operation of a --download: no network is an error, not a hang
TEST_FRACTION = 0.1              # folder: the held-out share


def cache_dir() -> Path:
    """$OWF_CACHE, else $XDG_CACHE_HOME/owf, else ~/.cache/owf: unpacked data and trained classifiers."""
    if os.environ.get("OWF_CACHE"):
        return Path(os.environ["OWF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owf"


def to_unit(u8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [..] -> float in [-1, 1]."""
    return u8.float().div_(127.5).sub_(1.0)


def dequantise_unit(u8: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 pixels -> x = (u8 + U)/128 - 1, U ~ U[0, 1) per pixel from `generator` (float32, on u8's
    device): uniform noise within each pixel's bin of width 2/256, the evaluation's dequantisation
    (owf.image_eval.dequantise), so that P_D is trained on the density the test NLL measures."""
    U = torch.rand(u8.shape, generator=generator, device=generator.device).to(u8.device)
    return (u8.float() + U) / 128.0 - 1.0


def saturated_share(u8: torch.Tensor, seed: int = 0) -> float:
    """The share of pixels of images u8, dequantised (dequantise_unit, one draw from `seed`), whose
    atanh exceeds 3 in magnitude: what the training probe calls saturated in a generator's tanh
    pre-activation. A bin at 0 or 255 is 2/256 wide and 1 - tanh(3) = 0.00495 of it lies past
    ±tanh(3), so 63% of those pixels count."""
    x = dequantise_unit(u8, torch.Generator().manual_seed(seed)).double()
    return float((x.abs() > math.tanh(3.0)).double().mean())


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 pixels (rounded, clamped)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)


def fashion_mnist_dir(root: str = "") -> Path:
    """The folder holding Fashion-MNIST's four IDX files (.gz or not): --data-root, else the Debian package's."""
    if root:
        d = Path(root)
        if not d.is_dir():
            raise FileNotFoundError(f"--data-root {d} does not exist")
    else:
        try:
            listed = subprocess.run(["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True,
                                    timeout=30).stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired):
            listed = []
        found = [Path(p).parent for p in listed if p.endswith("train-images-idx3-ubyte.gz")]
        if not found:
            raise FileNotFoundError(f"Fashion-MNIST not found: install it with `apt-get install {FASHION_MNIST_PACKAGE}`, "
                                    "or pass --data-root DIR with its IDX files (train-images-idx3-ubyte.gz, ...)")
        d = found[0]
    missing = [f for f in FASHION_MNIST_FILES if not (d / f).exists() and not (d / (f + ".gz")).exists()]
    if missing:
        raise FileNotFoundError(f"{d} lacks the Fashion-MNIST files {missing} (.gz or not): "
                                f"install {FASHION_MNIST_PACKAGE} or point --data-root at them")
    return d


def _fashion_mnist(root: str, train: bool):
    """torchvision's FashionMNIST on the IDX files, unpacked once into cache_dir()/FashionMNIST/raw."""
    import torchvision
    src = fashion_mnist_dir(root)
    raw = cache_dir() / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in FASHION_MNIST_FILES:
        if not (raw / f).exists():
            tmp = raw / f"{f}.{os.getpid()}.tmp"         # per process: ranks unpacking at once do not collide
            if (src / f).exists():
                shutil.copyfile(src / f, tmp)
            else:
                with gzip.open(src / (f + ".gz"), "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
            os.replace(tmp, raw / f)
    ds = torchvision.datasets.FashionMNIST(str(cache_dir()), train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def _need_root(name: str, root: str) -> Path:
    if not root:
        raise ValueError(f"--data {name} reads from --data-root DIR (add --download to fetch it there)")
    return Path(root)


def _torchvision(name: str, root: str, download: bool, train: bool):
    import torchvision
    d = _need_root(name, root)
    if not download and not d.is_dir():
        raise FileNotFoundError(f"--data-root {d} does not exist (add --download to fetch {name} there)")
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}.get(name)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        if name == "celeba":
            return _celeba(d, download, train)
        ds = cls(str(d), train=train, download=download)
    except RuntimeError as e:            # torchvision: "Dataset not found or corrupted. ..."
        raise FileNotFoundError(f"{name} not found under --data-root {d} ({e})") from None
    except OSError as e:                 # no network (URLError is an OSError), a timeout, a full disk
        raise ValueError(f"--download of {name} into {d} failed ({type(e).__name__}: {e}); without a network, "
                         f"put the files under --data-root") from None
    finally:
        socket.setdefaulttimeout(old)
    if name == "mnist":
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    return torch.as_tensor(ds.data).permute(0, 3, 1, 2).contiguous(), torch.as_tensor(ds.targets).long()


def _celeba(d: Path, download: bool, train: bool):
    """CelebA, centre-cropped and resized to 64 x 64 once, then cached as a uint8 tensor."""
    import torchvision
    import torchvision.transforms as T
    split = "train" if train else "test"
    key = hashlib.sha1(str(d.resolve()).encode()).hexdigest()[:8]          # one cache per --data-root
    cached = cache_dir() / f"celeba-{split}-64-{key}.pt"
    if cached.exists():
        return torch.load(cached, weights_only=True), None
    ds = torchvision.datasets.CelebA(str(d), split=split, download=download,
                                     transform=T.Compose([T.CenterCrop(178), T.Resize(64), T.PILToTensor()]))
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    torch.save(images, tmp)
    os.replace(tmp, cached)
    return images, None


def _folder(root: str, train: bool):
    """Every image under root, as one uint8 tensor; a TEST_FRACTION of them, drawn with seed 0 (the
    same split for every run), is the test split."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS
    d = _need_root("folder", root)
    if not d.is_dir():
        raise FileNotFoundError(f"--data-root {d} does not exist")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"--data-root {d} holds no image files ({', '.join(IMG_EXTENSIONS)})")
    import numpy as np
    arrays, first = [], None
    for p in files:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
        a = a[:, :, None] if a.ndim == 2 else a
        if first is None:
            first = (p, a.shape)
        elif a.shape != first[1]:
            raise ValueError(f"--data folder needs images of one size: {first[0]} is {first[1][1]}x{first[1][0]}x"
                             f"{first[1][2]}, {p} is {a.shape[1]}x{a.shape[0]}x{a.shape[2]} (resize them first)")
        arrays.append(a)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    n_test = max(1, int(round(TEST_FRACTION * len(images)))) if len(images) > 1 else 0
    idx = order[n_test:] if train else order[:n_test]
    return images[idx], None


def load_images(name: str, root: str = "", download: bool = False, train: bool = True):
    """(uint8 images [N, C, H, W], int64 labels [N] or None) of a split of an image data set."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data {name!r}; choose one of {IMAGE_DATASETS}")
    if name == "fashion-mnist":
        if download:
            raise ValueError(f"--download: Fashion-MNIST comes from the Debian package ({FASHION_MNIST_PACKAGE}) or "
                             "--data-root, not from the network")
        return _fashion_mnist(root, train)
    if name == "folder":
        return _folder(root, train)
    return _torchvision(name, root, download, train)


class ImageStream:
    """The training split as a stream of batches: a permutation per epoch, seeded by (seed, epoch),
    consumed in order. Its state is (epoch, position): in the checkpoint, so a resume draws the
    same batches. On many processes every rank draws the same permutation and takes every
    world-th image of it from its rank on: disjoint shards of one epoch."""

    def __init__(self, images: torch.Tensor, seed: int, rank: int = 0, world: int = 1):
        if len(images) < world:
            raise ValueError(f"the training split has {len(images)} images, fewer than the {world} processes")
        self.images, self.seed, self.rank, self.world = images, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        perm = torch.randperm(len(self.images), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        return perm[self.rank:len(perm) - len(perm) % self.world:self.world]

    def next(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """The next `batch` images in [-1, 1] on `device` (across an epoch's end if need be): the bin
        values u8/127.5 - 1, or, given a `generator`, dequantised as dequantise_unit does."""
        parts, left = [], batch
        while left:
            take = min(left, len(self._perm) - self.pos)
            parts.append(self._perm[self.pos:self.pos + take])
            self.pos += take
            left -= take
            if self.pos == len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        u8 = self.images[torch.cat(parts)].to(device, non_blocking=True)
        return to_unit(u8) if generator is None else dequantise_unit(u8, generator)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict):
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._perm = self._permutation(self.epoch)


@torch.no_grad()
def generator_samples(G, n: int, seed: int, batch: int = 500) -> torch.Tensor:
    """n samples of the one-way flow G in eval mode (BatchNorm on its running statistics: g_n is then
    one function of each u), on the CPU, from a stream of their own seeded with `seed`."""
    device = next(G.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    was = G.training
    G.eval()
    out = torch.cat([G.sample(min(batch, n - i), g).cpu() for i in range(0, n, batch)])
    G.train(was)
    return out
