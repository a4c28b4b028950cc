"""Ticket files: round trip, and refusal of missing, corrupt or code-carrying files."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from hwsparse.errors import InputError
from hwsparse.masks import attach_fixed, detach_masks
from hwsparse.models import build_model
from hwsparse.tickets import META_FILE, WEIGHTS_FILE, load_ticket, save_ticket


def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    masks = {"fc2": (torch.rand(100, 300) > 0.9).float()}
    attach_fixed(model, masks)
    detach_masks(model, bake=True)
    return save_ticket(
        tmp_path / "ticket",
        model,
        masks,
        model_name="mlp",
        input_shape=(1, 8, 8),
        num_classes=10,
        dataset="digits",
    )


def test_round_trip(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    t = load_ticket(folder)
    assert t.model_name == "mlp" and t.input_shape == (1, 8, 8) and t.num_classes == 10
    assert torch.all(t.model.fc2.weight[t.masks["fc2"] == 0] == 0)
    meta = json.loads((folder / META_FILE).read_text())
    assert {row["name"] for row in meta["layers"]} == {"fc1", "fc2", "fc3"}
    assert not list(folder.glob(".*"))  # no temporary files left behind


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="ticket.json"):
        load_ticket(tmp_path)


def test_corrupt_json(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    (folder / META_FILE).write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_ticket(folder)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_pickled_code_is_never_executed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = saved(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open(folder / WEIGHTS_FILE, "wb") as f:
        pickle.dump({"state_dict": _Evil(), "masks": {}}, f)
    with pytest.raises(InputError, match="cannot be read"):
        load_ticket(folder)
    assert not (tmp_path / "pwned").exists()


def test_weights_of_another_model(tmp_path: Path) -> None:
    folder = saved(tmp_path)
    meta = json.loads((folder / META_FILE).read_text())
    meta["model"] = "lenet5"
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(InputError, match="does not fit model 'lenet5'"):
        load_ticket(folder)
