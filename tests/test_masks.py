"""Relaxed and fixed masks on Conv/Linear layers; binarisation; density reporting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hwsparse import masks as M
from hwsparse.errors import InputError


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def test_attach_masks_only_conv_linear_weights() -> None:
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    assert list(relaxed) == ["0", "4", "6"]  # Conv/Linear only, never the BatchNorm
    for layer in (net[0], net[4], net[6]):
        assert not torch.nn.utils.parametrize.is_parametrized(layer, "bias")


def test_projected_mask_starts_as_identity_and_clamps() -> None:
    net = small_net()
    x = torch.randn(2, 1, 6, 6)
    net.eval()
    before = net(x)
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    torch.testing.assert_close(net(x), before)  # m = 1 at the start
    with torch.no_grad():
        relaxed["4"].score.add_(
            torch.linspace(-2, 2, relaxed["4"].score.numel()).view_as(relaxed["4"].score)
        )
    M.project(relaxed)
    assert relaxed["4"].score.min() == 0.0 and relaxed["4"].score.max() == 1.0


def test_sigmoid_mask_starts_as_identity() -> None:
    net = small_net().eval()
    x = torch.randn(2, 1, 6, 6)
    before = net(x)
    M.attach_relaxed(net, M.MaskConfig(param="sigmoid", temperature=0.5))
    torch.testing.assert_close(net(x), before)  # scaled so the masked net starts unmasked


@pytest.mark.parametrize("node_min", [0, 10**9], ids=["custom-node", "autograd-chain"])
@pytest.mark.parametrize("granularity", M.GRANULARITIES)
def test_sigmoid_mask_gradients_match_autograd(
    granularity: str, node_min: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both paths (the custom node for large layers, autograd's chain for small ones) give the
    # weight and the scores the gradients of the plain expression scale * sigmoid(s / T) * w
    monkeypatch.setattr(M, "_SIGMOID_NODE_MIN", node_min)
    torch.manual_seed(1)
    cfg = M.MaskConfig(param="sigmoid", granularity=granularity, temperature=0.7)
    weight = torch.randn(5, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    mask = M.RelaxedMask(weight, cfg).double()
    with torch.no_grad():
        mask.score.add_(torch.randn_like(mask.score))
    mask.temperature = 0.3
    upstream = torch.randn(5, 3, 2, 2, dtype=torch.float64)
    (mask(weight) * upstream).sum().backward()
    got_w, got_s = weight.grad, mask.score.grad
    w = weight.detach().clone().requires_grad_(True)
    s = mask.score.detach().clone().requires_grad_(True)
    (mask.scale * torch.sigmoid(s / 0.3) * w * upstream).sum().backward()
    torch.testing.assert_close(got_w, w.grad)
    torch.testing.assert_close(got_s, s.grad)


@pytest.mark.parametrize("param", M.PARAMETERIZATIONS)
def test_kept_counts_entries_above_the_threshold(param: str) -> None:
    # sigmoid masks compare scores with T * logit(threshold): the same count as m > threshold
    torch.manual_seed(2)
    weight = torch.randn(40, 30)
    mask = M.RelaxedMask(weight, M.MaskConfig(param=param))
    with torch.no_grad():
        mask.score.copy_(torch.rand_like(mask.score) if param == "projected" else
                         4 * torch.randn_like(mask.score))  # fmt: skip
    mask.temperature = 0.4
    for threshold in (0.0, 0.1, 0.5, 0.9):
        expected = int((mask.soft() > threshold).sum())
        assert 0 < expected < mask.score.numel() or threshold == 0.0
        assert int(mask.kept(threshold)) == expected


def test_first_and_last_layer_options() -> None:
    names = [n for n, _ in M.prunable_layers(small_net(), mask_first=False, mask_last=False)]
    assert names == ["4"]


def test_channel_masks_have_one_entry_per_output_channel() -> None:
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig(granularity="channel"))
    assert relaxed["0"].score.shape == (4, 1, 1, 1)
    assert relaxed["4"].score.shape == (8, 1)
    assert "6" not in relaxed  # the classifier's output channels are the classes
    with torch.no_grad():
        relaxed["4"].score[:4] = 0.0
    masks = M.binarize(net)
    assert masks["4"].shape == (8, 144)  # expanded to the weight's shape
    assert masks["4"][:4].sum() == 0 and masks["4"][4:].min() == 1  # whole rows


def test_binarize_threshold() -> None:
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    with torch.no_grad():
        relaxed["6"].score.fill_(0.4)
    masks = M.binarize(net, threshold=0.5)
    assert masks["6"].sum() == 0 and masks["0"].min() == 1


@pytest.mark.parametrize("density", [0.5, 0.1, 0.013])
def test_binarize_exact_global_density(density: float) -> None:
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    with torch.no_grad():
        for m in relaxed.values():
            m.score.uniform_(0.01, 1.0)
    masks = M.binarize(net, density=density)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == int(density * total)  # exact to one weight
    assert M.global_density(net, masks) == pytest.approx(kept / total)
    # within each layer the kept entries are the highest-scoring ones
    for n, r in relaxed.items():
        if 0 < masks[n].sum() < masks[n].numel():
            assert r.score[masks[n] > 0].min() >= r.score[masks[n] == 0].max()


def test_global_ranking_never_empties_a_layer() -> None:
    # Scores that favour one layer completely: without the guard the others get nothing.
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    with torch.no_grad():
        for m in relaxed.values():
            m.score.fill_(0.1)
        relaxed["4"].score.fill_(1.0)
    masks = M.binarize(net, density=0.05)
    assert all(int(m.sum()) >= 1 for m in masks.values())
    assert int(masks["4"].sum()) > int(masks["0"].sum())  # the ranking still decides the rest


def test_channel_ticket_at_min_density_keeps_a_channel_in_every_layer() -> None:
    # the conv layer's guard (two channels) outranks the hidden layer's by score, and both do
    # not fit: each layer's best channel goes first
    net = small_net()
    config = M.MaskConfig(granularity="channel")
    relaxed = M.attach_relaxed(net, config)
    with torch.no_grad():
        for m in relaxed.values():
            m.score.fill_(0.1)
        relaxed["0"].score.fill_(0.9)
        relaxed["0"].score[2] = 1.0
    floor = M.min_density(net, config)
    counts = {n: M.raw_weight(net[int(n)]).numel() for n in ("0", "4", "6")}
    # unmasked output layer + one conv channel (9 weights) + one hidden unit (144 weights)
    assert floor == pytest.approx((counts["6"] + 9 + 144) / sum(counts.values()))
    masks = M.binarize(net, density=floor)
    assert int(masks["0"].sum()) == 9 and int(masks["4"].sum()) == 144
    assert int(masks["0"][2].sum()) == 9  # the conv layer's best channel
    with pytest.raises(InputError):
        M.binarize(net, density=counts["6"] / sum(counts.values()) * 0.99)


def test_binarize_keeps_projected_zeros_only_to_keep_a_layer() -> None:
    net = small_net()
    relaxed = M.attach_relaxed(net, M.MaskConfig())
    with torch.no_grad():
        for m in relaxed.values():
            m.score.zero_()
        relaxed["6"].score[0, :5] = 1.0
        relaxed["4"].score[0, 0] = 1.0
    masks = M.binarize(net, density=0.1)
    # a layer with positive entries keeps only those, however much budget is left
    assert int(masks["6"].sum()) == 5 and int(masks["4"].sum()) == 1
    # a layer projected all to zero would cut the network: its guard keeps its largest weights
    budget = int(0.1 * sum(M.raw_weight(net[i]).numel() for i in (0, 4, 6)))
    take = max(1, budget // (4 * 3))
    assert take < M.raw_weight(net[0]).numel()
    kept = masks["0"].flatten().bool()
    assert int(kept.sum()) == take
    magnitude = M.raw_weight(net[0]).detach().abs().flatten()
    assert magnitude[kept].min() >= magnitude[~kept].max()


def test_density_impossible_when_unmasked_layers_too_big() -> None:
    net = small_net()
    M.attach_relaxed(net, M.MaskConfig(mask_last=False, mask_first=False))
    with pytest.raises(InputError, match="impossible"):
        M.binarize(net, density=0.01)


def test_fixed_mask_zeroes_weights_and_their_gradients() -> None:
    net = small_net()
    mask = (torch.rand(8, 144) > 0.5).float()
    M.attach_fixed(net, {"4": mask})
    net(torch.randn(3, 1, 6, 6)).sum().backward()
    original = net[4].parametrizations.weight.original
    assert torch.all(original.grad[mask == 0] == 0)
    M.detach_masks(net, bake=True)
    assert torch.all(net[4].weight[mask == 0] == 0)
    assert not torch.nn.utils.parametrize.is_parametrized(net[4])


def test_layer_densities_count_unmasked_layers_as_dense() -> None:
    net = small_net()
    mask = torch.zeros(3, 8)
    mask[0, 0] = 1
    rows = {r.name: r for r in M.layer_densities(net, {"6": mask})}
    assert rows["6"].kept == 1 and rows["0"].density == 1.0


@pytest.mark.parametrize(
    "kwargs", [{"param": "hard"}, {"granularity": "block"}, {"temperature": 0.0}]
)
def test_bad_mask_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(InputError):
        M.MaskConfig(**kwargs)  # type: ignore[arg-type]
