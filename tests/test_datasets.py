"""Datasets: registry, fixed splits, binarization, the IDX reader and missing-file errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from bench.problems import datasets


def _write_idx(path, arr: np.ndarray, gz: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(raw)
    else:
        path.write_bytes(raw)


def test_registry_lists_the_four_datasets():
    assert {"digits", "mnist5k", "fashion-mnist", "ppca"} <= set(datasets.available())


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match=r"dataset must be one of .*digits.*mnist5k.*got 'mnist'"):
        datasets.load("mnist")


def test_bad_binarize_and_split_are_clear():
    with pytest.raises(ValueError, match="binarize must be one of"):
        datasets.load("digits", binarize="otsu")
    with pytest.raises(ValueError, match="asks for 2000 rows but the dataset has 1797"):
        datasets.load("digits", split=(1000, 500, 500))
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        datasets.load("digits", seed=-1)


def test_digits_splits_are_fixed_by_seed_and_disjoint():
    a = datasets.load("digits", seed=3, binarize="none")
    b = datasets.load("digits", seed=3, binarize="none")
    c = datasets.load("digits", seed=4, binarize="none")
    assert a.train.shape == (1437, 64) and a.val.shape == (180, 64) and a.test.shape == (180, 64)
    assert a.image_shape == (8, 8) and a.dim == 64
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert float(a.train.min()) >= 0.0 and float(a.train.max()) == 1.0
    # the three splits together are exactly the 1,797 images (as a multiset of rows)
    from sklearn.datasets import load_digits

    full = torch.as_tensor(load_digits().data / 16.0, dtype=torch.float32)
    mine = torch.cat([a.train, a.val, a.test])
    key = lambda t: sorted(map(tuple, t.mul(16).round().int().tolist()))
    assert key(mine) == key(full)


def test_binarization_modes():
    raw = datasets.load("digits", seed=0, binarize="none")
    st = datasets.load("digits", seed=0, binarize="static")
    dy = datasets.load("digits", seed=0, binarize="dynamic")
    for t in (st.train, st.val, st.test, dy.val, dy.test):
        assert set(t.unique().tolist()) <= {0.0, 1.0}
    # dynamic keeps intensities for training and resamples every batch
    assert torch.equal(dy.train, raw.train)
    b0 = next(dy.batches(64, seed=1))
    assert set(b0.unique().tolist()) <= {0.0, 1.0}
    # a binarized pixel is 1 with probability x: mean over the static train set vs the intensities.
    # Each pixel mean over N rows has SE <= 0.5/sqrt(N); the grand mean over 64*N draws has SE < 0.5/sqrt(64 N).
    n = st.train.numel()
    assert abs(float(st.train.mean() - raw.train.mean())) < 4 * 0.5 / n**0.5  # z = 4
    # static val/test equal the dynamic ones (both binarized once from the seed)
    assert torch.equal(st.val, dy.val) and torch.equal(st.test, dy.test)


def test_batches_are_reproducible_and_resumable():
    ds = datasets.load("digits", seed=0, binarize="dynamic")
    it = ds.batches(100, seed=5)
    first = [next(it) for _ in range(20)]  # crosses an epoch boundary (14 batches per epoch)
    again = ds.batches(100, seed=5, start=17)
    for k in range(17, 20):
        assert torch.equal(first[k], next(again))
    other = next(ds.batches(100, seed=6))
    assert not torch.equal(first[0], other)
    # the binarization of one batch is resampled from epoch to epoch
    assert not torch.equal(first[0], first[14])
    with pytest.raises(ValueError, match="batch_size must be in"):
        next(ds.batches(0, seed=0))


def test_train_mean_and_split_accessor():
    ds = datasets.load("digits", seed=0, binarize="none")
    assert torch.allclose(ds.train_mean(), ds.train.mean(0))
    assert ds.split("val") is ds.val
    with pytest.raises(ValueError, match="split must be"):
        ds.split("dev")


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if gz else ""))
    _write_idx(path, arr, gz)
    out = datasets.read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr)


def test_read_idx_rejects_other_files(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        datasets.read_idx(p)


@pytest.mark.parametrize("layout", ["flat-gz", "mnist-dots", "subdir"])
def test_fashion_mnist_reads_idx_directories(tmp_path, layout):
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, size=(50, 4, 5), dtype=np.uint8)
    te = rng.integers(0, 256, size=(10, 4, 5), dtype=np.uint8)
    d = tmp_path
    if layout == "flat-gz":
        _write_idx(d / "train-images-idx3-ubyte.gz", tr, True)
        _write_idx(d / "t10k-images-idx3-ubyte.gz", te, True)
    elif layout == "mnist-dots":
        _write_idx(d / "train-images.idx3-ubyte", tr, False)
        _write_idx(d / "t10k-images.idx3-ubyte", te, False)
    else:
        (d / "fashion").mkdir()
        _write_idx(d / "fashion" / "train-images-idx3-ubyte", tr, False)
        _write_idx(d / "fashion" / "t10k-images-idx3-ubyte.gz", te, True)
    ds = datasets.load("fashion-mnist", data_dir=d, split=(40, 10, 0), binarize="none")
    assert ds.image_shape == (4, 5) and ds.train.shape == (40, 20) and ds.val.shape == (10, 20)
    # the test set is the t10k file itself, in order, scaled to [0, 1]
    torch.testing.assert_close(ds.test, torch.as_tensor(te.reshape(10, 20) / 255.0, dtype=torch.float32))


def test_missing_idx_files_say_where_and_how(tmp_path):
    with pytest.raises(datasets.DatasetNotFoundError) as err:
        datasets.load("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(err.value)
    assert "nowhere" in msg and "apt-get install dataset-fashion-mnist" in msg and "train-images" in msg


def test_register_rejects_duplicates_and_bad_likelihood():
    with pytest.raises(ValueError, match="already registered"):
        datasets.register(datasets.DatasetSpec("digits", lambda **k: None, "dup"))
    with pytest.raises(ValueError, match="likelihood must be"):
        datasets.register(datasets.DatasetSpec("x_new", lambda **k: None, "x", likelihood="poisson"))


def test_mnist5k_shape_and_split():
    ds = datasets.load("mnist5k", seed=0, binarize="none", split=(4000, 0, 1000))
    assert ds.train.shape == (4000, 784) and ds.val.shape == (0, 784) and ds.test.shape == (1000, 784)
    assert ds.image_shape == (28, 28)
    assert 0.0 <= float(ds.train.min()) and float(ds.train.max()) <= 1.0
    # MNIST's mean intensity is about 0.13
    assert 0.1 < float(ds.train.mean()) < 0.16


def test_ppca_is_real_valued_with_true_parameters():
    a = datasets.load("ppca", seed=2, binarize="static")
    b = datasets.load("ppca", seed=2)
    assert a.binarize == "none" and a.likelihood == "gaussian"
    assert torch.equal(a.train, b.train)
    assert a.train.shape[0] + a.val.shape[0] + a.test.shape[0] == 2000
    w = np.asarray(a.info["W"])
    assert w.shape == (a.dim, int(a.info["k"]))
    # the data are not confined to [0, 1]
    assert float(a.train.min()) < 0.0 or float(a.train.max()) > 1.0


def test_fashion_mnist_directory_from_environment(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, size=(30, 2, 2), dtype=np.uint8), True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(5, 2, 2), dtype=np.uint8), True)
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    ds = datasets.load("fashion-mnist", split=(20, 10, 0))
    assert ds.train.shape == (20, 4) and ds.test.shape == (5, 4)
