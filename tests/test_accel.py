"""Device, precision, determinism and evaluation: every decision the GPU path takes, on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hwsparse import accel as A
from hwsparse import train as T
from hwsparse.cli import app
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError
from hwsparse.models import build_model

CUDA = torch.device("cuda:0")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_cuda_index_is_checked_against_the_device_count() -> None:
    assert A.resolve_device("cuda:1", count=2) == torch.device("cuda:1")
    with pytest.raises(InputError) as e:
        A.resolve_device("cuda:2", count=2)
    assert str(e.value) == (
        "--device cuda:2: this machine has 2 CUDA device(s); "
        "valid: auto, cpu, cuda, cuda:0, cuda:1"
    )
    with pytest.raises(InputError, match="no CUDA device"):
        A.resolve_device("cuda:0", count=0)
    with pytest.raises(InputError, match="valid: auto, cpu$"):
        A.resolve_device("tpu", count=0)
    assert A.resolve_device("auto", count=0) == CPU
    assert A.resolve_device("auto", count=3) == CUDA


def test_precision_selection() -> None:
    assert A.select_precision("auto", CUDA, bf16_ok=True).dtype == torch.bfloat16
    assert A.select_precision("auto", CUDA, bf16_ok=False).name == "fp32"  # an old GPU
    assert A.select_precision("auto", CPU).name == "fp32"
    with pytest.raises(InputError, match="does not support bf16; valid here: auto, fp32, fp16"):
        A.select_precision("bf16", CUDA, bf16_ok=False)
    fp16 = A.select_precision("fp16", CUDA, bf16_ok=False)
    assert fp16.dtype == torch.float16 and fp16.scaler  # fp16 always scales the loss
    assert not A.select_precision("bf16", CUDA, bf16_ok=True).scaler
    assert A.select_precision("fp16", CPU).grad_scaler(CPU).is_enabled()
    assert not A.select_precision("fp32", CPU).grad_scaler(CPU).is_enabled()
    with pytest.raises(InputError, match="valid: auto, fp32, bf16, fp16"):
        A.select_precision("fp8", CPU)
    with pytest.raises(InputError, match="--precision"):
        T.TrainConfig(precision="half")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_evaluates_in_fp32(digits: Dataset, precision: str) -> None:
    """The autocast (and, for fp16, the grad scaler) path of the loop, run for real on CPU;
    val and test are then measured by the same fp32 routine."""
    cfg = T.TrainConfig(epochs=2, batch_size=128, device="cpu", precision=precision)
    ticket = T.TicketConfig(search_epochs=2, density=0.3, auto_strength=True)
    r = T.run_ticket(lambda: build_model("mlp", (64,), 10), digits, ticket, cfg)
    assert r.status == "ok" and r.test_accuracy > 0.5
    assert r.model is not None
    assert r.val_accuracy == A.evaluate(r.model, digits.x_val, digits.y_val)
    assert r.test_accuracy == A.evaluate(r.model, digits.x_test, digits.y_test)


def test_evaluate_batches_the_split_in_fp32() -> None:
    seen: list[tuple[int, torch.dtype]] = []
    model = torch.nn.Linear(4, 3)
    model.register_forward_hook(lambda m, i, o: seen.append((len(i[0]), o.dtype)))
    x = torch.randn(A.EVAL_BATCH + 5, 4)
    y = model(x).argmax(1)
    seen.clear()
    assert A.evaluate(model, x, y) == 1.0
    assert seen == [(A.EVAL_BATCH, torch.float32), (5, torch.float32)]


def test_deterministic_is_on_during_the_run_and_restored(digits: Dataset) -> None:
    states: list[bool] = []
    cfg = T.TrainConfig(epochs=1, batch_size=256, device="cpu", deterministic=True)
    before = torch.are_deterministic_algorithms_enabled()
    T.run_dense(
        lambda: build_model("linear", (64,), 10),
        digits,
        cfg,
        lambda info: states.append(torch.are_deterministic_algorithms_enabled()),
    )
    assert states == [True]
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize(
    "args",
    [
        ["ticket", "--precision", "fp8"],
        ["compare", "--precision", "fp8"],
        ["ticket", "--batch-size", "0"],
        ["compare", "--device", "cuda:1"],
    ],
)
def test_ticket_and_compare_take_the_same_training_flags(args: list[str]) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda:7"], "--device cuda"),
        (["--precision", "fp8"], "valid: auto, fp32, bf16, fp16"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
    ],
)
def test_search_refuses_bad_device_flags_in_one_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    journal = tmp_path / "s.journal"
    r = CliRunner().invoke(app, ["search", "--storage", str(journal), *args])
    assert r.exit_code == 2, r.output
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not journal.exists()  # refused before any study was made
