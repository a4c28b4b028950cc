"""Exact channel compaction: silenced dead channels, Torch-Pruning removal, cost agreement."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hwsparse import masks as M
from hwsparse import train as T
from hwsparse.cost.estimate import estimate
from hwsparse.cost.flops import channel_liveness
from hwsparse.data import Dataset, load_dataset
from hwsparse.deploy.compact import compact, compaction, dead_channels, plain_copy, silence
from hwsparse.models import build_model

pytest.importorskip("torch_pruning")

PROFILE = "stm32h7"
SHAPES = {
    "mlp": (1, 8, 8),
    "lenet5": (1, 28, 28),
    "conv1d": (40,),
    "conv4": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "vgg16": (3, 32, 32),
}


def randomise(model: nn.Module, gen: torch.Generator) -> None:
    """Random biases and BatchNorm statistics, so no live entry is zero by chance and BN is
    not the identity."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, M.PRUNABLE_TYPES) and mod.bias is not None:
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=gen) * 0.1)
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(1 + 0.3 * torch.randn(n, generator=gen))
                mod.bias.copy_(0.3 * torch.randn(n, generator=gen))


def random_masks(
    model: nn.Module, granularity: str, density: float, gen: torch.Generator
) -> M.Masks:
    """Channel masks keep ~``density`` of every hidden layer's outputs (the output layer
    unmasked, as hwsparse.masks does); weight masks keep ~``density`` of every weight and also
    drop ~30 % of the rows, so some neurons lose all their incoming weights."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, M.PRUNABLE_TYPES)]
    out: M.Masks = {}
    for i, (name, layer) in enumerate(layers):
        w = layer.weight
        last = i == len(layers) - 1
        rows_keep = 1.0 if last else (density if granularity == "channel" else 0.7)
        rows = (torch.rand(w.shape[0], generator=gen) < rows_keep).float()
        rows[torch.randint(w.shape[0], (1,), generator=gen)] = 1.0  # never a whole layer
        mask = rows.view(-1, *[1] * (w.dim() - 1)).expand_as(w)
        if granularity == "weight":
            mask = mask * (torch.rand(w.shape, generator=gen) < density).float()
        elif last:
            continue
        out[name] = mask.contiguous()
    return out


def nonzero(model: nn.Module) -> int:
    return sum(int(p.count_nonzero()) for p in model.parameters())


def masked_ticket(name: str, granularity: str, seed: int = 0) -> tuple[nn.Module, M.Masks]:
    """A model as it trains: fixed masks attached as parametrizations, random statistics."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(name, SHAPES.get(name, (3, 8, 8)), 10)
    randomise(model, gen)
    masks = random_masks(model, granularity, 0.4, gen)
    M.attach_fixed(model, masks)
    return model, masks


def check_exact_and_costed(model: nn.Module, shape: tuple[int, ...], masks: M.Masks) -> None:
    """Silence, compact, and compare outputs and parameter counts with the cost model."""
    silence(model, shape, masks).remove()
    model.eval()
    shapes_before = [tuple(p.shape) for p in model.parameters()]
    result = compaction(model, shape, masks)
    small = result.model
    # the original is untouched, the copy is plain and smaller
    assert [tuple(p.shape) for p in model.parameters()] == shapes_before
    assert any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any(parametrize.is_parametrized(m) for m in small.modules())
    dense = sum(p.numel() for p in model.parameters())
    assert result.params == sum(p.numel() for p in small.parameters()) < dense
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-4
    # Parameters: live_params can be non-zero, the rest of the compacted network is exactly
    # zero, and live_params is the cost model's nonzero_params (same masks, same network).
    cost = estimate(plain_copy(model), shape, PROFILE, masks)
    assert result.live_params == cost.nonzero_params == nonzero(small)
    assert result.params >= result.live_params


@pytest.mark.parametrize(
    ("name", "granularity"),
    [
        ("mlp", "channel"),
        ("mlp", "weight"),
        ("lenet5", "channel"),
        ("lenet5", "weight"),
        ("conv1d", "channel"),
        ("conv4", "channel"),
        ("resnet20", "channel"),
        ("vgg16", "channel"),
    ],
)
def test_compacted_builtin_matches_masked_model_and_cost(name: str, granularity: str) -> None:
    model, masks = masked_ticket(name, granularity)
    dead = dead_channels(model, SHAPES[name], masks)
    assert dead.count() > 0  # there is something to remove
    check_exact_and_costed(model, SHAPES[name], masks)
    # the cost model computes (latency) and stores (weight rows) exactly the output channels
    # the compacted network keeps, coupled residual channels and classes included
    kept = channel_liveness(plain_copy(model), SHAPES[name], masks).kept_outputs
    small = compact(model, SHAPES[name], masks)
    outs = [
        m.weight.shape[0]
        for m in small.modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
    ]
    assert sum(int(k.sum()) for k in kept.values()) == sum(outs)


def test_silencing_matters_on_batchnorm_models() -> None:
    """Without silencing, a dead channel's BatchNorm constant reaches the logits."""
    model, masks = masked_ticket("resnet20", "channel")
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        small = compact(model, (3, 32, 32), masks)
        silence(model, (3, 32, 32), masks).remove()
        after = model(x)
        assert (before - after).abs().max() > 1e-2  # silencing changed the masked network
        assert (small(x) - after).abs().max() <= 1e-4  # compact computes the silenced one


@pytest.fixture
def user_model(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return "compact_models:factory"


def test_user_model_with_residual_depthwise_and_concat(user_model: str) -> None:
    shape = (3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(user_model, shape, 10)
    randomise(model, gen)
    masks = random_masks(model, "channel", 0.5, gen)
    M.attach_fixed(model, masks)
    check_exact_and_costed(model, shape, masks)
    result = compaction(model, shape, masks)
    small = dict(result.model.named_modules())
    # the residual group (conv2, projection, depthwise) lost the channels dead in all of them
    coupled = ("block.conv2", "block.shortcut.0", "ds.dw")
    assert len({result.removed[n] for n in coupled}) == 1 and result.removed["ds.dw"]
    for n in coupled:
        assert small[n].out_channels == 16 - len(result.removed["ds.dw"])  # type: ignore[operator]
    assert small["ds.dw"].groups == small["ds.dw"].in_channels  # still depthwise
    assert small["block.bn2"].num_features == small["ds.pw"].in_channels  # type: ignore[union-attr]
    # channels dead in one branch only stay (as zeros) because the other branch is live
    assert result.kept_dead.get("block.shortcut.0") or result.kept_dead.get("ds.dw")
    # concat: both branches shrank and the merge conv reads exactly what is left
    kept = small["left"].out_channels + small["right"].out_channels  # type: ignore[operator]
    assert small["merge"].in_channels == kept < 16


def whole_layer_dead(model: nn.Module, masks: M.Masks, layer: str) -> M.Masks:
    w = dict(model.named_modules())[layer].weight
    return {**masks, layer: torch.zeros(w.shape)}


def test_whole_dead_layer_keeps_one_channel() -> None:
    """A mask that kills a whole layer: the lowest channel stays (all zero), nothing breaks."""
    model, masks = masked_ticket("resnet20", "channel")
    M.detach_masks(model, bake=False)
    masks = whole_layer_dead(model, masks, "layer1.0.conv1")
    M.attach_fixed(model, masks)
    check_exact_and_costed(model, (3, 32, 32), masks)
    result = compaction(model, (3, 32, 32), masks)
    small = dict(result.model.named_modules())
    assert small["layer1.0.conv1"].out_channels == 1  # type: ignore[union-attr]
    assert small["layer1.0.bn1"].num_features == 1  # type: ignore[union-attr]
    assert result.kept_dead["layer1.0.conv1"] == (0,)
    assert not small["layer1.0.conv1"].weight.detach().any()  # type: ignore[union-attr]


def test_whole_dead_layer_in_a_chain_zeroes_the_logits() -> None:
    """In an MLP nothing flows past a dead layer: the costed (and silenced) logits are 0."""
    model, masks = masked_ticket("mlp", "channel")
    M.detach_masks(model, bake=False)
    masks = whole_layer_dead(model, masks, "fc2")
    M.attach_fixed(model, masks)
    silence(model, (1, 8, 8), masks).remove()
    small = compact(model, (1, 8, 8), masks)
    layers = dict(small.named_modules())
    assert layers["fc2"].out_features == 1 and layers["fc3"].in_features == 1  # type: ignore[union-attr]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(small(x), torch.zeros(5, 10))
        assert torch.equal(model(x), torch.zeros(5, 10))


@pytest.mark.parametrize("optimiser", ["adam", "sgd"])
def test_silenced_entries_stay_zero_while_training(optimiser: str) -> None:
    model, masks = masked_ticket("resnet20", "channel")
    handle = silence(model, (3, 32, 32), masks)
    params = [p for p in model.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer = (
        torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3)
        if optimiser == "adam"
        else torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=1e-3)
    )
    model.train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # type: ignore[no-untyped-call]
        opt.step()
    modules = dict(model.named_modules())
    silenced = 0
    for name, d in handle.dead.norms.items():
        bn = modules[name]
        silenced += int(d.sum())
        assert torch.all(bn.weight[d] == 0) and torch.all(bn.bias[d] == 0)
        assert torch.all(bn.running_mean[d] == 0)
    for name, d in handle.dead.outputs.items():
        assert torch.all(modules[name].bias[d] == 0)  # type: ignore[index]
    assert silenced > 0
    handle.remove()
    assert not any(p._backward_hooks for p in model.parameters())


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_ticket_trains_silenced_and_compacts_exactly(digits: Dataset) -> None:
    mask_cfg = M.MaskConfig(granularity="channel")
    ticket = T.TicketConfig(search_epochs=1, density=0.3, mask=mask_cfg)
    cfg = T.TrainConfig(epochs=1, batch_size=128, device="cpu", weight_decay=1e-3)
    factory = lambda: build_model("mlp", digits.input_shape, digits.num_classes)  # noqa: E731
    r = T.run_ticket(factory, digits, ticket, cfg)
    assert r.status == "ok" and r.model is not None
    model, shape = r.model, digits.input_shape
    dead = dead_channels(model, shape, r.masks)
    assert dead.count() > 0
    modules = dict(model.named_modules())
    for name, d in dead.outputs.items():
        assert torch.all(modules[name].bias[d] == 0)  # type: ignore[index]
    # no hook is left on the returned model
    assert all(not p._backward_hooks for p in model.parameters())
    result = compaction(model, shape, r.masks)
    x = digits.x_test[:64]
    with torch.no_grad():
        assert (result.model(x) - model(x)).abs().max() <= 1e-4
    assert result.live_params == estimate(model, shape, PROFILE, r.masks).nonzero_params
