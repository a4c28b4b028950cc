"""FLOP counting: hand-checked counts, mask scaling, channel propagation, flop_counter parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hwsparse.cost.flops import count_flops
from hwsparse.errors import InputError


def _torch_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """torch.utils.flop_counter counts 2 flops per multiply-add and skips batch-norm."""
    with FlopCounterMode(display=False) as fcm, torch.no_grad():
        model.eval()(torch.randn(1, *input_shape))
    total = fcm.get_total_flops()
    assert total % 2 == 0
    return total // 2


def _chain() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 8*3*9 * 8*8 = 13824
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),  # 16*8*9 * 64 = 73728
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 10),  # 10240
    )


def test_hand_checked_dense_counts() -> None:
    # Linear(20 -> 10): 200 multiply-adds; bias not counted.
    assert count_flops(nn.Linear(20, 10), (20,)).total == 200
    # Conv2d(1 -> 8, 3x3) on 8x8, no padding: out 6x6 -> 8*1*9*36 = 2592.
    assert count_flops(nn.Conv2d(1, 8, 3), (1, 8, 8)).total == 2592
    # Conv1d(2 -> 4, k=5, stride 2) on length 21: out 9 -> 4*2*5*9 = 360.
    assert count_flops(nn.Conv1d(2, 4, 5, stride=2), (2, 21)).total == 360
    # Depthwise 3x3 on 8 channels 6x6 with padding: 8*1*9*36 = 2592.
    assert count_flops(nn.Conv2d(8, 8, 3, padding=1, groups=8), (8, 6, 6)).total == 2592
    fc = count_flops(_chain(), (3, 8, 8))
    assert fc.total == fc.dense == 13824 + 73728 + 10240
    assert [r.name for r in fc.layers] == ["0", "2", "5"]


def test_batchnorm_counts_two_per_element() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4))
    rows = {r.name: r for r in count_flops(net, (1, 5, 5)).layers}
    assert rows["0"].dense == 4 * 25  # 1x1 conv, 1 input channel
    assert rows["1"].dense == 2 * 4 * 25  # fvcore: affine batch-norm = 2 flops/element


def test_matches_torch_flop_counter_dense() -> None:
    for model, shape in [
        (_chain(), (3, 8, 8)),
        (nn.Sequential(nn.Conv1d(2, 6, 3), nn.ReLU(), nn.Conv1d(6, 6, 1)), (2, 30)),
        (nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)), (1, 8, 8)),
    ]:
        assert count_flops(model, shape).dense == _torch_macs(model, shape)


def test_element_mask_scales_by_density() -> None:
    lin = nn.Linear(10, 10)
    mask = torch.zeros(10, 10)
    mask.view(-1)[::4] = 1  # 25 of 100 weights kept
    fc = count_flops(lin, (10,), {"": mask})
    assert (fc.dense, fc.total) == (100, 25)
    assert fc.layers[0].density == pytest.approx(0.25)


def test_channel_mask_propagates_to_consumer_and_matches_compact_net() -> None:
    net = _chain()
    m0 = torch.ones(8, 3, 3, 3)
    m0[[1, 4, 5, 7]] = 0  # keep 4 of 8 output channels
    m2 = torch.ones(16, 8, 3, 3)
    m2[::2] = 0  # keep 8 of 16
    fc = count_flops(net, (3, 8, 8), {"0": m0, "2": m2})
    rows = {r.name: r.flops for r in fc.layers}
    assert rows["0"] == 13824 // 2
    assert rows["2"] == 73728 // 4  # kept out 8/16 x kept in 4/8
    # The Linear has no mask, but half of its inputs (flattened dead channels) are gone.
    assert rows["5"] == 10240 // 2
    # Same number as torch's counter on the physically compacted network.
    keep0, keep2 = [0, 2, 3, 6], list(range(1, 16, 2))
    compact = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 10),
    )
    assert len(keep0) == 4 and len(keep2) == 8
    assert fc.total == _torch_macs(compact, (3, 8, 8))


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(torch.relu(self.branch(y)) + y)


def test_residual_add_is_a_union_of_live_channels() -> None:
    net = _Residual()
    branch = torch.ones(4, 4, 1, 1)
    branch[0] = 0
    fc = count_flops(net, (1, 3, 3), {"branch": branch})
    rows = {r.name: r.flops for r in fc.layers}
    assert rows["head"] == 2 * 4 * 9  # channel 0 still arrives through the shortcut
    stem = torch.ones(4, 1, 1, 1)
    stem[0] = 0
    both = count_flops(net, (1, 3, 3), {"branch": branch, "stem": stem})
    rows = {r.name: r.flops for r in both.layers}
    assert rows["branch"] == 3 * 3 * 9  # 3 kept outputs x 3 live inputs
    assert rows["head"] == 2 * 3 * 9  # channel 0 dead on both paths


def test_depthwise_follows_dead_input_channels() -> None:
    net = nn.Sequential(nn.Conv2d(2, 6, 1), nn.Conv2d(6, 6, 3, padding=1, groups=6))
    m = torch.ones(6, 2, 1, 1)
    m[:3] = 0
    rows = {r.name: r.flops for r in count_flops(net, (2, 4, 4), {"0": m}).layers}
    assert rows["1"] == 3 * 9 * 16  # 3 of 6 depthwise channels have data


def test_bad_masks_and_shapes_are_input_errors() -> None:
    net = _chain()
    with pytest.raises(InputError, match="unknown Conv/Linear layer 'nope'"):
        count_flops(net, (3, 8, 8), {"nope": torch.ones(1)})
    with pytest.raises(InputError, match="shape"):
        count_flops(net, (3, 8, 8), {"0": torch.ones(8, 3)})
    with pytest.raises(InputError, match="not binary"):
        count_flops(net, (3, 8, 8), {"0": torch.full((8, 3, 3, 3), 0.5)})
    with pytest.raises(InputError, match="cannot run on input shape"):
        count_flops(net, (3, 9, 9))
    with pytest.raises(InputError, match="positive integers"):
        count_flops(net, (3, 0, 8))


def test_training_flag_restored_and_cache_reused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    first = count_flops(net, (3, 6, 6))
    assert net.training
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # same architecture
    assert count_flops(other, (3, 6, 6)) == first
