"""The ticket method and baselines on real (small) data: protocol, budgets, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hwsparse import train as T
from hwsparse.data import Dataset, load_dataset
from hwsparse.errors import InputError
from hwsparse.models import build_model
from hwsparse.phase import SearchPhase, Trainer, search_phase

CFG = T.TrainConfig(epochs=2, batch_size=128, device="cpu")


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def factory(data: Dataset, name: str = "mlp") -> T.ModelFactory:
    return lambda: build_model(name, data.input_shape, data.num_classes)


def test_ticket_learns_and_hits_exact_density(digits: Dataset) -> None:
    ticket = T.TicketConfig(density=0.1, auto_strength=True, search_epochs=4)
    seen: list[T.EpochInfo] = []
    r = T.run_ticket(
        factory(digits), digits, ticket, T.TrainConfig(epochs=4, device="cpu"), seen.append
    )
    assert r.status == "ok"
    assert r.density == pytest.approx(0.1, abs=1e-4)  # top-k lands on the density
    assert r.test_accuracy > 0.6  # far above chance (0.1) on 10 digit classes
    assert r.epochs == 8 and len(seen) == 8  # search + ticket, every epoch reported
    assert [i.phase for i in seen] == ["search"] * 4 + ["ticket"] * 4
    # the returned model is plain with the pruned weights zeroed
    assert r.model is not None
    for name, mask in r.masks.items():
        w = dict(r.model.named_modules())[name].weight
        assert torch.all(w[mask == 0] == 0)
        assert not torch.nn.utils.parametrize.is_parametrized(dict(r.model.named_modules())[name])


def test_concave_penalty_sparsifies_more_than_nothing(digits: Dataset) -> None:
    base = T.TicketConfig(search_epochs=3, mask_lr=0.1)  # fast masks for a short test
    none = T.run_ticket(
        factory(digits), digits, T.TicketConfig(strength=0.0, search_epochs=3, mask_lr=0.1), CFG
    )
    strong = T.run_ticket(factory(digits), digits, base, CFG)
    # Adam moves even unpenalised masks; the penalty must still prune far more
    assert strong.density < 0.5 * none.density


def test_same_seed_same_result(digits: Dataset) -> None:
    ticket = T.TicketConfig(search_epochs=2, density=0.2)
    a = T.run_ticket(factory(digits), digits, ticket, CFG)
    b = T.run_ticket(factory(digits), digits, ticket, CFG)
    c = T.run_ticket(
        factory(digits), digits, ticket, T.TrainConfig(epochs=2, seed=1, device="cpu")
    )
    assert a.test_accuracy == b.test_accuracy
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


def test_snapshot_is_the_weights_of_step_k(digits: Dataset) -> None:
    torch.manual_seed(0)
    model = build_model("linear", digits.input_shape, digits.num_classes)
    initial = T.weight_state(model)
    run = Trainer(digits, CFG, None)
    snap = run.fit(model, 2, "dense", snapshot_step=3)
    final = T.weight_state(model)
    assert snap is not None and snap.keys() == initial.keys()
    key = next(k for k in snap if k.endswith("weight"))
    assert not torch.equal(snap[key], initial[key])  # 3 steps were taken
    assert not torch.equal(snap[key], final[key])  # and it is not the end of training
    # rerunning exactly 3 steps from the same start reproduces the snapshot
    torch.manual_seed(0)
    again = build_model("linear", digits.input_shape, digits.num_classes)
    run2 = Trainer(digits, T.TrainConfig(epochs=1, batch_size=128, device="cpu"), None)
    snap2 = run2.fit(again, 1, "dense", snapshot_step=3)
    assert snap2 is not None
    torch.testing.assert_close(snap2[key], snap[key])


def test_ticket_masks_survive_save_and_load(digits: Dataset, tmp_path: object) -> None:
    from pathlib import Path

    from hwsparse.tickets import load_ticket, save_ticket

    r = T.run_ticket(factory(digits), digits, T.TicketConfig(search_epochs=1, density=0.2), CFG)
    assert r.model is not None
    folder = save_ticket(
        Path(str(tmp_path)) / "t",
        r.model,
        r.masks,
        model_name="mlp",
        input_shape=digits.input_shape,
        num_classes=digits.num_classes,
        metrics=r.summary(),
    )
    loaded = load_ticket(folder)
    x = digits.x_test[:32]
    torch.testing.assert_close(loaded.model(x), r.model.eval()(x))  # same function
    assert loaded.masks.keys() == r.masks.keys()
    assert loaded.meta["metrics"]["density"] == pytest.approx(r.density)


@pytest.mark.parametrize("method", ["imp", "magnitude", "random", "cs", "l1", "exp"])
def test_baselines_hit_the_density_and_count_epochs(digits: Dataset, method: str) -> None:
    density = 0.3
    r = T.run_method(
        method,
        factory(digits),
        digits,
        density,
        CFG,
        T.TicketConfig(search_epochs=2, auto_strength=True, density=density),
        T.BaselineConfig(cs_rounds=2, cs_epochs=1),
    )
    assert r.status == "ok"
    assert r.density == pytest.approx(density, abs=1e-3)
    assert r.test_accuracy > 0.3
    assert r.epochs == T.planned_epochs(
        method,
        density,
        CFG,
        T.TicketConfig(search_epochs=2),
        T.BaselineConfig(cs_rounds=2, cs_epochs=1),
    )


def test_imp_rounds_follow_the_prune_rate() -> None:
    assert T._imp_rounds(0.8, 0.2) == 1
    assert T._imp_rounds(0.05, 0.2) == 14  # (0.8)^14 = 0.044 <= 0.05 < 0.8^13
    assert T.planned_epochs("imp", 0.05, T.TrainConfig(epochs=10)) == 150


def test_imp_spares_the_output_layer(digits: Dataset) -> None:
    r = T.run_imp(factory(digits), digits, 0.5, CFG, T.BaselineConfig(prune_rate=0.2))
    layers = {row.name: row.density for row in r.layers}
    # rounds before the last prune the output layer at half rate
    assert layers["fc3"] > r.density


def test_divergence_ends_with_a_status_not_a_crash(digits: Dataset) -> None:
    r = T.run_dense(factory(digits), digits, T.TrainConfig(epochs=2, lr=1e6, device="cpu"))
    if r.status == "ok":  # Adam can survive a huge lr; force a NaN instead
        bad = Dataset(**{**digits.__dict__, "x_train": digits.x_train * float("nan")})
        r = T.run_dense(factory(digits), bad, CFG)
    assert r.status == "diverged"
    assert "loss" in r.message and math.isnan(r.test_accuracy) and r.model is None


def test_on_epoch_exception_stops_the_run(digits: Dataset) -> None:
    class Stop(Exception):
        pass

    def stop(info: T.EpochInfo) -> None:
        raise Stop

    with pytest.raises(Stop):
        T.run_dense(factory(digits), digits, CFG, stop)


def test_channel_granularity_prunes_whole_rows(digits: Dataset) -> None:
    from hwsparse.masks import MaskConfig

    ticket = T.TicketConfig(
        search_epochs=2, density=0.3, mask=MaskConfig(granularity="channel", mask_last=False)
    )
    r = T.run_ticket(factory(digits), digits, ticket, CFG)
    for mask in r.masks.values():
        rows = mask.flatten(1)
        assert torch.all((rows.sum(1) == 0) | (rows.sum(1) == rows.shape[1]))
    assert r.density <= 0.3


def test_bad_configs() -> None:
    with pytest.raises(InputError, match="auto needs"):
        T.TicketConfig(auto_strength=True)
    with pytest.raises(InputError, match="penalty"):
        T.TicketConfig(penalty="l0")
    with pytest.raises(InputError, match="device"):
        T.resolve_device("tpu")
    with pytest.raises(InputError, match="epochs"):
        T.TrainConfig(epochs=0)


def test_sigmoid_parameterisation_anneals_to_binary(digits: Dataset) -> None:
    from hwsparse.masks import MaskConfig

    ticket = T.TicketConfig(search_epochs=3, mask=MaskConfig(param="sigmoid"), strength=1e-4)
    model = factory(digits)()
    from hwsparse import masks as M

    relaxed = M.attach_relaxed(model, ticket.mask)
    search_phase(Trainer(digits, CFG, None), model, relaxed, SearchPhase.of(ticket))
    m = torch.cat([r.soft().detach().flatten() for r in relaxed.values()])
    # at T_0 / 200 almost every entry sits near 0 or 1
    assert ((m < 0.05) | (m > 0.95)).float().mean() > 0.9
    assert isinstance(model, nn.Module)
