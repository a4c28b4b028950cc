"""Property-based fuzzing of every file hwsparse reads (issue 14).

Random bytes, truncations, flipped bytes, wrong types and huge values go into ``ticket.json``,
``weights.pt``, device profile YAML, search space YAML, ``.npz``, IDX (plain and ``.gz``),
CIFAR-10 batches (binary and python) and journal files. The only outcomes allowed are a clean
result or :class:`~hwsparse.errors.InputError` (exit 2): never another exception, never more
than 10 s for one file, never an import of a module the file names.

The CI budget is small (``HWSPARSE_FUZZ_EXAMPLES``, default 40 examples per file type; the file
runs in well under a minute). A longer run::

    HWSPARSE_FUZZ_EXAMPLES=5000 .venv/bin/pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import signal
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwsparse import _journal, data, search
from hwsparse import storage as stores
from hwsparse.cost.profiles import PROFILE_DIR, load_profile
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.space import SPACES_DIR, load_space
from hwsparse.tickets import load_ticket, save_ticket

EXAMPLES = int(os.environ.get("HWSPARSE_FUZZ_EXAMPLES", "40"))
LIMIT_S = 10
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=LIMIT_S * 1000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=EXAMPLES <= 100,  # CI: the same examples every run
)


class _Hang(Exception):
    pass


@contextmanager
def _within(seconds: float) -> Iterator[None]:
    def alarm(*_: object) -> None:
        raise _Hang(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _no_import(*args: object, **kw: object) -> None:
    raise AssertionError(f"a file made hwsparse import {args}")


def check(read: Callable[[], object]) -> None:
    """``read()`` returns or raises InputError, within LIMIT_S, importing no module."""
    with mock.patch("hwsparse.models.importlib.import_module", _no_import), _within(LIMIT_S):
        try:
            read()
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc).strip(), repr(exc)


# --- strategies ----------------------------------------------------------------------------

HUGE = st.sampled_from([2**31, 2**63, 10**30, -(2**63), 10**400, 1e308, -1e308])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), HUGE, st.floats(allow_nan=True), st.text(max_size=20)
)
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Random bytes; a truncation of ``valid``; ``valid`` with a few bytes changed."""

    @st.composite
    def flipped(draw: st.DrawFn) -> bytes:
        out = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            if out:
                out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)

    return st.one_of(
        st.binary(max_size=2048),
        st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n]),
        flipped(),
    )


@st.composite
def replaced(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` (parsed JSON/YAML) with one value somewhere replaced by a random one."""
    doc = json.loads(json.dumps(doc))
    node, path = doc, []
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    value = draw(JSONISH)
    if not path:
        return value
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


# --- tickets -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ticket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("mlp", (1, 8, 8), 10)
    masks = {n: torch.ones_like(m.weight) for n, m in model.named_modules() if n.startswith("fc")}
    return save_ticket(
        tmp_path_factory.mktemp("valid") / "t", model, masks, model_name="mlp",
        input_shape=(1, 8, 8), num_classes=10, dataset="digits", method="log",
    )  # fmt: skip


def _with_file(ticket: Path, tmp: Path, name: str, content: bytes) -> Path:
    folder = tmp / "t"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(ticket, folder)
    (folder / name).write_bytes(content)
    return folder


@FUZZ
@given(blob=st.data())
def test_ticket_json(ticket: Path, tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    valid = (ticket / "ticket.json").read_bytes()
    meta = json.loads(valid)
    content = blob.draw(
        st.one_of(
            mutations(valid),
            replaced(meta).map(lambda d: json.dumps(d).encode()),
            st.sampled_from(
                [
                    json.dumps({**meta, "input_shape": [1, 10**9, 10**9]}).encode(),
                    json.dumps({**meta, "input_shape": [10**6]}).encode(),
                    json.dumps({**meta, "num_classes": 10**12}).encode(),
                    json.dumps({**meta, "model": "os:system"}).encode(),
                    json.dumps(
                        {**meta, "model": "lenet5", "input_shape": [1, 4096, 4096]}
                    ).encode(),
                    valid.replace(b"[", b"[" * 100_000, 1),
                    json.dumps({**meta, "num_classes": 1e400}).encode(),
                    valid.replace(b'"num_classes": 10', b'"num_classes": ' + b"9" * 5000),
                ]
            ),
        )
    )
    folder = _with_file(ticket, tmp_path_factory.mktemp("fz"), "ticket.json", content)
    check(lambda: load_ticket(folder))


@FUZZ
@given(blob=st.data())
def test_weights_pt(ticket: Path, tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    valid = (ticket / "weights.pt").read_bytes()
    saved = torch.load(ticket / "weights.pt", weights_only=True)
    odd = st.sampled_from(
        [
            {"state_dict": [1, 2], "masks": {}},
            {"state_dict": saved["state_dict"], "masks": [torch.ones(3)]},
            {"state_dict": saved["state_dict"], "masks": {"fc1": 3}},
            {"state_dict": {**saved["state_dict"], "fc1.weight": torch.zeros(2, 2)}, "masks": {}},
            {"state_dict": {**saved["state_dict"], "x": torch.zeros(1)}, "masks": {}},
            {
                "state_dict": {k: v.to(torch.complex64) for k, v in saved["state_dict"].items()},
                "masks": {},
            },  # fmt: skip
            {"state_dict": saved["state_dict"], "masks": {"nope": torch.ones(1)}},
            {"state_dict": {}, "masks": {}},
            [1, 2, 3],
            "text",
        ]
    )

    def saved_bytes(obj: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    content = blob.draw(st.one_of(mutations(valid), odd.map(saved_bytes)))
    folder = _with_file(ticket, tmp_path_factory.mktemp("fz"), "weights.pt", content)
    check(lambda: load_ticket(folder))


# --- YAML: device profiles and search spaces ---------------------------------------------------

BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n".encode()
    for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def _yaml_cases(valid: bytes) -> st.SearchStrategy[bytes]:
    doc = yaml.safe_load(valid)
    return st.one_of(
        mutations(valid),
        replaced(doc).map(lambda d: yaml.safe_dump(d).encode()),
        st.sampled_from([BOMB, b"[" * 50_000, b"!!python/object/apply:os.system [true]\n"]),
    )


@FUZZ
@given(blob=st.data())
def test_profile_yaml(tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    valid = (PROFILE_DIR / "raspberry-pi-4.yaml").read_bytes()
    path = tmp_path_factory.mktemp("fz") / "p.yaml"
    path.write_bytes(blob.draw(_yaml_cases(valid)))
    check(lambda: load_profile(path))


@FUZZ
@given(blob=st.data())
def test_space_yaml(tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    valid = (SPACES_DIR / "wide.yaml").read_bytes()
    path = tmp_path_factory.mktemp("fz") / "s.yaml"
    path.write_bytes(blob.draw(_yaml_cases(valid)))
    check(lambda: load_space(path))


# --- datasets ------------------------------------------------------------------------------


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_header_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npz whose X header claims ``shape`` but holds 8 bytes: no allocation may follow it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    member = buf.getvalue() + b"\0" * 8
    out = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(out, "w") as z:
        z.writestr("X.npy", member)
        z.writestr("y.npy", member)
    return out.getvalue()


@FUZZ
@given(blob=st.data())
def test_npz(tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    rng = np.random.default_rng(0)
    valid = _npz(X=rng.random((40, 6)).astype(np.float32), y=np.arange(40) % 3)
    odd = st.sampled_from(
        [
            _npz(X=np.full((40, 6), np.inf), y=np.arange(40) % 3),
            _npz(X=rng.random((40, 6)), y=np.full(40, 2**62)),
            _npz(X=rng.random((40, 6)), y=-np.ones(40, dtype=np.int64)),
            _npz(X=np.array(["a"] * 40), y=np.arange(40)),
            _npz(X=rng.random((40, 0)), y=np.arange(40)),
            _npz(X=rng.random((4, 1, 1, 1, 1)), y=np.arange(4)),
            _npz(X=rng.random((40, 6)), y=np.arange(40) % 3, X_test=rng.random((5, 7))),
            _npz(
                X=rng.random((40, 6)),
                y=np.arange(40) % 3,
                X_test=rng.random((5, 7)),
                y_test=np.arange(5),
            ),  # fmt: skip
            _npz(X=rng.random((2, 6)), y=np.arange(2)),
            _npy_header_claiming((10**12,)),
            _npy_header_claiming((2**62, 2**62)),
        ]
    )
    path = tmp_path_factory.mktemp("fz") / "d.npz"
    path.write_bytes(blob.draw(st.one_of(mutations(valid), odd)))
    check(lambda: data.load_dataset(f"npz:{path}"))


def _idx(array: np.ndarray[Any, Any]) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(">u1").tobytes()
    )


@FUZZ
@given(blob=st.data(), gz=st.booleans())
def test_idx(tmp_path_factory: pytest.TempPathFactory, blob: Any, gz: bool) -> None:
    valid = _idx(np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28))
    huge = struct.pack(">BBBB", 0, 0, 0x0E, 3) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 9)
    content = blob.draw(st.one_of(mutations(valid), st.just(huge)))
    path = tmp_path_factory.mktemp("fz") / ("x-idx3-ubyte" + (".gz" if gz else ""))
    if gz and blob.draw(st.booleans()):
        content = gzip.compress(content)
    path.write_bytes(content)
    check(lambda: data.read_idx(path, data.IDX_IMAGES_MAGIC))


@FUZZ
@given(blob=st.data())
def test_cifar_batches(tmp_path_factory: pytest.TempPathFactory, blob: Any) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (3, 3072), dtype=np.uint8)
    binary = b"".join(bytes([i]) + pixels[i].tobytes() for i in range(3))
    python = pickle.dumps({b"data": pixels, b"labels": [0, 1, 2]}, protocol=2)
    evil = b"cos\nsystem\n(S'true'\ntR."  # pickle that would run os.system
    folder = tmp_path_factory.mktemp("fz")
    which = blob.draw(st.sampled_from(["binary", "python"]))
    if which == "binary":
        path = folder / "data_batch_1.bin"
        path.write_bytes(blob.draw(mutations(binary)))
        check(lambda: data._cifar_binary(path))
    else:
        path = folder / "data_batch_1"
        path.write_bytes(blob.draw(st.one_of(mutations(python), st.just(evil))))
        check(lambda: data._cifar_python(path))


# --- journal files -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "j.journal"
    storage = stores.open_storage(path, create=True)
    import optuna

    study = optuna.create_study(study_name="s", storage=storage.backend)
    study.set_user_attr(search.CONFIG_ATTR, {"model": "mlp"})
    trial = study.ask()
    trial.suggest_float("density", 0.01, 0.5)
    study.tell(trial, 0.5)
    return path.read_bytes()


@FUZZ
@given(blob=st.data())
def test_journal_lines(
    journal: bytes, tmp_path_factory: pytest.TempPathFactory, blob: Any
) -> None:
    lines = journal.splitlines(keepends=True)
    records = [json.loads(line) for line in lines]

    @st.composite
    def one_record_changed(draw: st.DrawFn) -> bytes:
        i = draw(st.integers(0, len(records) - 1))
        changed = draw(replaced(records[i]))
        out = [*lines]
        out[i] = (json.dumps(changed) + "\n").encode()
        return b"".join(out)

    content = blob.draw(st.one_of(mutations(journal), one_record_changed()))
    path = tmp_path_factory.mktemp("fz") / "j.journal"
    path.write_bytes(content)

    def read() -> None:
        import optuna

        storage = stores.open_storage(path)
        for name in optuna.study.get_all_study_names(storage=storage.backend):
            stores.load_study(name, storage).get_trials()

    check(read)
    check(lambda: _journal.scan(path))
