"""Datasets: shapes, splits, local file formats (IDX, CIFAR-10), npz input, and refusals."""

from __future__ import annotations

import builtins
import gzip
import os
import pickle
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hwsparse import data
from hwsparse.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DATASETS,
    Dataset,
    load_dataset,
    read_idx,
    stratified_holdout,
)
from hwsparse.errors import InputError

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _check_tensors(ds: Dataset) -> None:
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == "cpu" and y.device.type == "cpu"
        assert tuple(x.shape[1:]) == ds.input_shape
        assert len(x) == len(y) > 0
        assert int(y.min()) >= 0 and int(y.max()) < ds.num_classes
        assert torch.isfinite(x).all()


def _class_counts(y: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=k)


# --------------------------------------------------------------------------------------------
# Built-in datasets
# --------------------------------------------------------------------------------------------


def test_digits_shapes_and_scale() -> None:
    ds = load_dataset("digits")
    _check_tensors(ds)
    assert ds.name == "digits" and DATASETS[0] == "digits"
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 1797
    assert len(ds.y_test) == round(0.2 * 1797)
    assert len(ds.y_val) == round(0.1 * (1797 - len(ds.y_test)))
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert "load_digits" in ds.source
    assert "train=" in repr(ds) and "tensor" not in repr(ds)


def test_digits_splits_are_stratified() -> None:
    ds = load_dataset("digits")
    train = _class_counts(ds.y_train, 10)
    for split in (ds.y_val, ds.y_test):
        counts = _class_counts(split, 10)
        expected = train * len(split) / len(ds.y_train)
        assert np.all(np.abs(counts - expected) <= 2), (counts, expected)


def test_mnist1d_shapes_and_global_rng_untouched() -> None:
    data._mnist1d_arrays.cache_clear()  # force a real generation inside this test
    np.random.seed(1234)
    random.seed(1234)
    np_before = np.random.get_state()
    py_before = random.getstate()
    ds = load_dataset("mnist1d")
    np_after = np.random.get_state()
    assert np_before[0] == np_after[0] and np.array_equal(np_before[1], np_after[1])
    assert np_before[2:] == np_after[2:]
    assert random.getstate() == py_before
    _check_tensors(ds)
    assert ds.input_shape == (1, 40) and ds.num_classes == 10
    assert len(ds.y_test) == 1000  # mnist1d's own test split
    assert len(ds.y_train) + len(ds.y_val) == 4000 and len(ds.y_val) == 400
    assert set(_class_counts(ds.y_val, 10)) <= {39, 40, 41}
    # the in-process cache gives identical tensors and they are not shared memory
    again = load_dataset("mnist1d")
    assert torch.equal(again.x_test, ds.x_test)
    again.x_test[0, 0, 0] = 1e6
    assert not torch.equal(again.x_test, load_dataset("mnist1d").x_test)


def test_mnist10k_shapes_and_scale() -> None:
    ds = load_dataset("mnist10k")
    _check_tensors(ds)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 10_000
    assert len(ds.y_test) == 2000 and len(ds.y_val) == 800
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert "Cazala" in ds.source and "LeCun" in ds.source
    assert np.all(_class_counts(ds.y_test, 10) > 150)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(InputError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message and "npz:PATH" in message
    assert all(name in message for name in DATASETS)
    assert "\n" not in message


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _id_npz(path: Path, n: int = 200, k: int = 4) -> Path:
    """Images whose pixel [0, 0] is the sample id, so splits can be traced back."""
    x = np.zeros((n, 8, 8), dtype=np.float32)
    x[:, 0, 0] = np.arange(n)
    y = np.arange(n) % k
    np.savez(path, X=x, y=y)
    return path


def _ids(x: torch.Tensor) -> set[int]:
    return {int(v) for v in x[:, 0, 0, 0]}


def test_splits_disjoint_and_cover_everything(tmp_path: Path) -> None:
    ds = load_dataset(f"npz:{_id_npz(tmp_path / 'ids.npz')}")
    train, val, test = _ids(ds.x_train), _ids(ds.x_val), _ids(ds.x_test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(200))
    assert (len(test), len(val)) == (40, 16)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert torch.equal(x[:, 0, 0, 0].long() % 4, y)  # labels stay with their samples
    assert list(_class_counts(ds.y_test, 4)) == [10, 10, 10, 10]
    assert list(_class_counts(ds.y_val, 4)) == [4, 4, 4, 4]


def test_splits_deterministic_and_independent_of_training_seed(tmp_path: Path) -> None:
    name = f"npz:{_id_npz(tmp_path / 'ids.npz')}"
    torch.manual_seed(0)
    np.random.seed(0)
    first = load_dataset(name)
    torch.manual_seed(99)
    np.random.seed(99)
    second = load_dataset(name)
    assert _ids(first.x_test) == _ids(second.x_test)
    assert _ids(first.x_val) == _ids(second.x_val)
    assert torch.equal(first.x_train, second.x_train)
    other = load_dataset(name, split_seed=1)
    assert _ids(other.x_test) != _ids(first.x_test)


def test_stratified_holdout_partitions_and_keeps_rare_classes() -> None:
    y = np.array([0] * 50 + [1] * 7 + [2] * 1)
    keep, hold = stratified_holdout(y, 0.2, np.random.default_rng(0))
    assert np.array_equal(np.sort(np.concatenate([keep, hold])), np.arange(len(y)))
    assert len(hold) == round(0.2 * len(y))
    assert np.bincount(y[hold], minlength=3)[2] == 0  # the single sample of class 2 stays
    assert abs(np.bincount(y[hold], minlength=3)[0] - 10) <= 1


# --------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return (
        struct.pack(">I", magic)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + (array.astype(">u1").tobytes())
    )


def _write_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        MNIST_FILES[0]: (rng.integers(0, 256, (n_train, 28, 28)), 0x803),
        MNIST_FILES[1]: (np.arange(n_train) % 10, 0x801),
        MNIST_FILES[2]: (rng.integers(0, 256, (n_test, 28, 28)), 0x803),
        MNIST_FILES[3]: (np.arange(n_test) % 10, 0x801),
    }
    for name, (array, magic) in arrays.items():
        payload = _idx_bytes(array, magic)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    (tmp_path / "a").write_bytes(_idx_bytes(images, 0x803))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(images, 0x803)))
    for name in ("a", "a.gz"):
        loaded = read_idx(tmp_path / name, 0x803)
        assert loaded.dtype == np.uint8 and np.array_equal(loaded, images)


@pytest.mark.parametrize(
    ("mangle", "expected"),
    [
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw[:10], "truncated"),
        (lambda raw: raw + b"\x00", "trailing"),
        (lambda raw: b"\x00\x00\x08\x01" + raw[4:], "magic number 0x801, expected 0x803"),
        (lambda raw: b"PK\x03\x04" + raw[4:], "not an IDX header"),
        (lambda raw: raw[:2], "too short"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path: Path, mangle: Any, expected: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mangle(_idx_bytes(np.zeros((3, 4, 4)), 0x803)))
    with pytest.raises(InputError, match=expected) as info:
        read_idx(path, 0x803)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros(50), 0x801))[:-8])
    with pytest.raises(InputError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(path, 0x801)


def test_mnist_from_raw_folder_gz_and_fashion_from_root(tmp_path: Path) -> None:
    _write_mnist(tmp_path / "MNIST" / "raw", gz=True)
    ds = load_dataset("mnist", tmp_path)
    _check_tensors(ds)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (27, 3, 10)
    assert float(ds.x_train.max()) <= 1.0 and float(ds.x_train.min()) >= 0.0
    assert torch.equal(ds.y_test, torch.arange(10))  # the t10k files are the test split

    _write_mnist(tmp_path / "fashion")
    fashion = load_dataset("fashion-mnist", str(tmp_path / "fashion"))
    assert len(fashion.y_test) == 10 and "Fashion-MNIST" in fashion.source


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    _write_mnist(tmp_path)
    (tmp_path / MNIST_FILES[1]).write_bytes(_idx_bytes(np.zeros(29), 0x801))
    with pytest.raises(InputError, match="30 images but .* 29 labels"):
        load_dataset("mnist", tmp_path)


def test_mnist_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_dataset("mnist", tmp_path)
    message = str(info.value)
    assert all(name in message for name in MNIST_FILES)
    assert str(tmp_path) in message and "MNIST/raw" in message
    _write_mnist(tmp_path)
    (tmp_path / MNIST_FILES[2]).unlink()
    with pytest.raises(InputError, match=f"missing {MNIST_FILES[2]} in"):
        load_dataset("mnist", tmp_path)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10"])
def test_file_datasets_without_data_dir(name: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--data-dir"):
        load_dataset(name)
    with pytest.raises(InputError, match="not a folder"):
        load_dataset(name, tmp_path / "nope")


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def _cifar_batch(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    pixels = np.zeros((n, 3072), dtype=np.uint8)
    pixels[:, :1024] = 255  # red plane full, green 0, blue 0
    pixels[:, 1024:2048] = 0
    pixels[:, 2048:] = 128
    labels = [(offset + i) % 10 for i in range(n)]
    return pixels, labels


def _write_cifar_binary(folder: Path, n: int = 10) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate([*CIFAR_TRAIN, "test_batch"]):
        pixels, labels = _cifar_batch(n, i)
        records = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], pixels], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())


def _write_cifar_python(folder: Path, protocol: int, n: int = 10) -> None:
    folder.mkdir(parents=True)
    for i, name in enumerate([*CIFAR_TRAIN, "test_batch"]):
        pixels, labels = _cifar_batch(n, i)
        if protocol <= 2:  # like the original files: bytes keys
            batch: dict[Any, Any] = {b"batch_label": b"x", b"labels": labels, b"data": pixels}
        else:
            batch = {"labels": labels, "data": pixels, "filenames": ["a.png"] * n}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


def _check_cifar(ds: Dataset) -> None:
    _check_tensors(ds)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert (len(ds.y_train) + len(ds.y_val), len(ds.y_test)) == (50, 10)
    assert torch.equal(ds.y_test, (torch.arange(10) + 5) % 10)  # test_batch, in file order
    expected = [
        (1.0 - CIFAR10_MEAN[0]) / CIFAR10_STD[0],
        (0.0 - CIFAR10_MEAN[1]) / CIFAR10_STD[1],
        (128 / 255 - CIFAR10_MEAN[2]) / CIFAR10_STD[2],
    ]
    assert torch.allclose(ds.x_test[:, :, 5, 7], torch.tensor(expected).expand(10, 3))


def test_cifar10_binary(tmp_path: Path) -> None:
    _write_cifar_binary(tmp_path / "cifar-10-batches-bin")
    ds = load_dataset("cifar10", tmp_path)
    _check_cifar(ds)
    assert "binary" in ds.source


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_python_pickles(tmp_path: Path, protocol: int) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py", protocol)
    ds = load_dataset("cifar10", tmp_path)
    _check_cifar(ds)
    assert "python" in ds.source


def test_cifar10_binary_preferred_and_bad_size(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py", 2)
    _write_cifar_binary(tmp_path / "cifar-10-batches-bin")
    assert "binary" in load_dataset("cifar10", tmp_path).source
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(b"\x01" * 3000)
    with pytest.raises(InputError, match="data_batch_3.bin.*3073"):
        load_dataset("cifar10", tmp_path)


def test_cifar10_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    for name in ("cifar-10-batches-bin", "data_batch_1.bin", "test_batch.bin"):
        assert name in message
    assert "cifar-10-batches-py" in message and "data_batch_5," in message


class _Evil:
    """Unpickling this would call ``func(arg)``: the loader must never do it."""

    def __init__(self, func: Any, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.func, (self.arg,)


@pytest.mark.parametrize("attack", ["os.system", "builtins.exec"])
def test_cifar10_malicious_pickle_refused(tmp_path: Path, attack: str) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py", 2)
    marker = tmp_path / "pwned"
    if attack == "os.system":
        payload = _Evil(os.system, f"touch {marker}")
    else:
        payload = _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()")
    evil = {b"data": payload, b"labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(evil, 2))
    with pytest.raises(InputError, match="refusing to unpickle .*data_batch_2"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_cifar10_garbage_pickle(tmp_path: Path) -> None:
    _write_cifar_python(tmp_path / "cifar-10-batches-py", 2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(InputError, match="test_batch"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps([1, 2], 2))
    with pytest.raises(InputError, match="expected a dict"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------------------------
# npz:PATH
# --------------------------------------------------------------------------------------------


def test_npz_tabular_standardized_with_train_stats(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(100, 6))
    x[:, 2] = 7.0  # a constant feature must not divide by zero
    y = rng.integers(0, 3, size=100)
    path = tmp_path / "tab.npz"
    np.savez(path, X=x, y=y)
    ds = load_dataset(f"npz:{path}")
    _check_tensors(ds)
    assert ds.input_shape == (6,) and ds.num_classes == 3
    assert ds.name == f"npz:{path}" and str(path) in ds.source
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(6), atol=1e-5)
    std = ds.x_train.std(0, unbiased=False)
    assert torch.allclose(std[[0, 1, 3, 4, 5]], torch.ones(5), atol=1e-4)
    assert float(std[2]) == 0.0
    assert float(ds.x_test.mean().abs()) < 0.5  # same transform applied to test


@pytest.mark.parametrize(
    ("x_shape", "input_shape"),
    [((40, 12, 10), (1, 12, 10)), ((40, 3, 9, 9), (3, 9, 9)), ((40, 2, 50), (2, 50))],
)
def test_npz_image_and_signal_layouts(
    tmp_path: Path, x_shape: tuple[int, ...], input_shape: tuple[int, ...]
) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=x_shape).astype(np.uint8)
    path = tmp_path / "img.npz"
    np.savez(path, X=x, y=np.arange(40) % 5)
    ds = load_dataset(f"npz:{path}")
    _check_tensors(ds)
    assert ds.input_shape == input_shape and ds.num_classes == 5
    assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) <= 1.0  # uint8 / 255


def test_npz_own_test_split(tmp_path: Path) -> None:
    x = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    path = tmp_path / "split.npz"
    np.savez(path, X=x, y=np.arange(30) % 2, X_test=x[:7] + 0.5, y_test=np.array([0, 1] * 3 + [2]))
    ds = load_dataset(f"npz:{path}")
    assert len(ds.y_test) == 7 and len(ds.y_train) + len(ds.y_val) == 30
    assert ds.num_classes == 3 and torch.equal(ds.y_test, torch.tensor([0, 1] * 3 + [2]))


def _write(path: Path, **arrays: Any) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


GOOD_X = np.zeros((20, 3), dtype=np.float32)
GOOD_Y = np.arange(20) % 2


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"X": GOOD_X}, "expected an .npz file with X"),
        ({"y": GOOD_Y}, "expected an .npz file with X"),
        ({"X": GOOD_X, "y": GOOD_Y.astype(float)}, "integer array of class labels"),
        ({"X": GOOD_X, "y": GOOD_Y - 1}, "negative labels"),
        ({"X": GOOD_X, "y": GOOD_Y[:-1]}, "19 labels but X has 20"),
        ({"X": GOOD_X, "y": GOOD_Y[:, None]}, "1-D integer array"),
        ({"X": np.where(np.eye(20, 3) > 0, np.nan, 0.0), "y": GOOD_Y}, "NaN or infinite"),
        ({"X": np.full((20, 3), np.inf), "y": GOOD_Y}, "NaN or infinite"),
        ({"X": np.array([{"a": 1}] * 20, dtype=object), "y": GOOD_Y}, "without pickle"),
        ({"X": np.array(["a"] * 20), "y": GOOD_Y}, "expected numbers"),
        ({"X": GOOD_X[:9], "y": GOOD_Y[:9]}, "9 samples; need at least 10"),
        ({"X": np.zeros(20), "y": GOOD_Y}, "has shape \\(20,\\)"),
        ({"X": np.zeros((20, 2, 2, 2, 2)), "y": GOOD_Y}, "has shape"),
        ({"X": GOOD_X, "y": np.zeros(20, dtype=int)}, "single class"),
        ({"X": GOOD_X, "y": GOOD_Y, "X_test": GOOD_X}, "both X_test and y_test"),
        ({"X": GOOD_X, "y": GOOD_Y, "X_test": GOOD_X[:, :2], "y_test": GOOD_Y}, "X_test in"),
        ({"X": GOOD_X, "y": GOOD_Y, "X_test": GOOD_X, "y_test": GOOD_Y[:3]}, "3 labels"),
    ],
)
def test_npz_malformed(tmp_path: Path, arrays: dict[str, Any], expected: str) -> None:
    name = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=expected) as info:
        load_dataset(name)
    assert "\n" not in str(info.value)


def test_npz_not_an_npz(tmp_path: Path) -> None:
    text = tmp_path / "data.npz"
    text.write_text("X,y\n1,2\n")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_dataset(f"npz:{text}")
    single = tmp_path / "single.npy"
    np.save(single, GOOD_X)
    with pytest.raises(InputError, match="single .npy array"):
        load_dataset(f"npz:{single}")
    with pytest.raises(InputError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    with pytest.raises(InputError, match="needs a path"):
        load_dataset("npz:")


def test_npz_too_small_to_split(tmp_path: Path) -> None:
    name = _write(tmp_path / "tiny.npz", X=np.zeros((10, 2)), y=np.arange(10))
    with pytest.raises(InputError, match="too small to split"):
        load_dataset(name)
