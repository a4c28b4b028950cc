"""The reference workloads rebuild the graphs that were measured.

Every builder in ``WORKLOADS`` is checked against published MACs and parameter counts (within
2 %), and the rebuilds of ncnn ``benchmark/*.param`` graphs against the exact weight totals of
those files (sum of their ``weight_data_size`` fields; commits in
benchmarks/latency/public/SOURCES.md). MACs are counted the way the cost model counts them
(fvcore through :func:`hwsparse.cost.flops.count_flops`, 1 multiply-add = 1 flop, batch 1),
Conv/Linear layers only: published tables do not count batch-norm or pooling as MACs.

The public measurement data set is checked here too: every row names a shipped profile, one of
its engines, a workload and that workload's input shape.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import nn

from hwsparse.cost import zoo
from hwsparse.cost.anchors import WORKLOADS
from hwsparse.cost.flops import count_flops
from hwsparse.cost.profiles import load_profile, profile_ids

MEASUREMENTS = Path(__file__).parents[1] / "benchmarks/latency/public/measurements.csv"
SOURCES = MEASUREMENTS.with_name("SOURCES.md")
TOLERANCE = 0.02


@dataclass(frozen=True)
class Published:
    """A published size: MACs and parameters (None where nothing trustworthy is published).

    ``with_bn``: whether the parameter figure counts batch-norm scales (torchvision's tables
    do, papers usually do not).
    """

    macs: float | None
    params: float | None
    with_bn: bool = False


# Sources: [H17] Howard et al. 2017 (MobileNets) Table 8; [S18] Sandler et al. 2018 Table 4;
# [H19] Howard et al. 2019 (MobileNetV3) Tables 3-4; [HE16] He et al. 2016 Table 1;
# [TV] torchvision model table (docs.pytorch.org/vision/stable/models: "GFLOPS" = GMACs,
# params with batch-norm); [SZE] Sze et al. 2017 "Efficient Processing of DNNs" Table III;
# [G15] Szegedy et al. 2015 Table 1 (sum of the "ops" column: 1586 M); [TL19] Tan & Le 2019
# Table 2; [TL21] Tan & Le 2021 (EfficientNetV2-B0: 0.72 B FLOPs, 7.1 M);
# [MA18] Ma et al. 2018 Table 5; [Z18] Zhang et al. 2018 Table 2 (ShuffleNet 1x g=3);
# [CAI19] Cai et al. 2019 (ProxylessNAS mobile, 320 M); [R20] Radosavovic et al. 2020 / pycls
# model zoo (RegNetY-400MF 0.40 GF, 4.3 M); [DEV] shared reference devices.md §1.1 (MLPerf
# Tiny, derived layer by layer); [HE17] Zhang et al. 2017 "Hello Edge" (DS-CNN S 5.4 M ops).
PUBLISHED: dict[str, Published] = {
    "mobilenet_v1": Published(569e6, 4.2e6),  # [H17]
    "mobilenet_v2": Published(300e6, 3.5e6, with_bn=True),  # [S18] MACs, [TV] params
    "resnet18": Published(1.8e9, 11.7e6, with_bn=True),  # [HE16], [TV]
    "resnet50": Published(4.09e9, 25.6e6, with_bn=True),  # [TV] (torchvision layout)
    "alexnet": Published(724e6, 61e6),  # [SZE]
    "efficientnet_b0": Published(0.39e9, 5.3e6),  # [TL19]
    "efficientnetv2_b0": Published(0.72e9, 7.1e6, with_bn=True),  # [TL21]
    "googlenet": Published(1586e6, 7e6),  # [G15] MACs, [SZE] weights
    "mnasnet": Published(0.31e9, 4.4e6, with_bn=True),  # [TV] mnasnet1_0
    # ncnn graph: [TV] mobilenet_v2 + the t=1 block's 32->32 expand conv at 112x112
    # (32 * 32 * 112 * 112 = 12.85 M MACs, 1024 weights + 64 batch-norm values).
    "mobilenet_v2_ncnn": Published(300e6 + 12.85e6, 3.5e6 + 1088, with_bn=True),
    "mobilenet_v3_large": Published(219e6, 5.4e6),  # [H19]
    # ncnn graph: [H19] + 28.97 M MACs from its last stage (672/s1 and 672/s2 blocks at 14x14
    # instead of 672/s2 and 960/s1 at 7x7); parameters: exact file total below.
    "mobilenet_v3_ncnn": Published(219e6 + 28.97e6, None),
    "mobilenet_v3_small": Published(56e6, 2.5e6),  # [H19]
    # ncnn graph: [CAI19] + 16.06 M MACs from its 32-wide first block (32x32 instead of 32x16
    # projection, 32->48 instead of 16->48 expand, both at 112x112).
    "proxylessnas_mobile": Published(320e6 + 16.06e6, 4.1e6),
    "regnety_400mf": Published(0.40e9, 4.3e6),  # [R20]
    # ncnn graph: [HE16] + the res2a 64->64 1x1 projection at 56x56 (12.85 M MACs, 4096 w).
    "resnet18_ncnn": Published(1.8e9 + 12.85e6, 11.7e6 + 4096, with_bn=True),
    "resnet50_caffe": Published(3.8e9, 25.5e6),  # [HE16] (Caffe layout), [SZE] weights
    # Caffe graph: bottleneck widths differ from the paper (see test_shufflenet_v1_paper_layout);
    # parameters: exact file total below.
    "shufflenet_v1_g3": Published(None, None),
    "shufflenet_v2": Published(146e6, 2.3e6),  # [MA18]
    "squeezenet_v1_1": Published(None, 1.235e6),  # [TV] squeezenet1_1 (MACs: see below)
    "vgg16": Published(15.5e9, 138e6),  # [SZE]
    "mlperf_tiny_ic": Published(12.5e6, 78e3, with_bn=True),  # [DEV]
    "mlperf_tiny_vww": Published(7.5e6, None),  # [DEV]; no verified parameter figure
    "mlperf_tiny_kws": Published(2.7e6, None),  # [HE17]; no verified parameter figure
    "mlperf_tiny_ad": Published(0.264e6, 270e3, with_bn=True),  # [DEV] (about 270 KB int8)
}

# Sum of every Convolution/ConvolutionDepthWise/InnerProduct weight_data_size in the ncnn
# benchmark param file (Tencent/ncnn benchmark/<file>, commits in SOURCES.md).
PARAM_FILE_WEIGHTS = {
    "alexnet": 60_954_656,  # alexnet.param
    "mobilenet_v3_ncnn": 5_115_080,  # mobilenet_v3.param
    "proxylessnas_mobile": 4_046_296,  # proxylessnasnet.param
    "shufflenet_v1_g3": 1_789_998,  # shufflenet.param
    "squeezenet_v1_1": 1_231_552,  # squeezenet.param
}


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    count = count_flops(model, shape)
    return sum(layer.dense for layer in count.layers if layer.kind in ("Conv2d", "Linear"))


def _weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _params(model: nn.Module, with_bn: bool) -> int:
    norms = (nn.BatchNorm1d, nn.BatchNorm2d)
    bn = sum(p.numel() for m in model.modules() if isinstance(m, norms) for p in m.parameters())
    return sum(p.numel() for p in model.parameters()) - (0 if with_bn else bn)


def test_every_workload_has_a_published_reference() -> None:
    assert sorted(PUBLISHED) == sorted(WORKLOADS)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_matches_published_size(name: str) -> None:
    work, ref = WORKLOADS[name], PUBLISHED[name]
    model = work.build().eval()
    if ref.macs is not None:
        macs = _macs(model, work.input_shape)
        assert macs == pytest.approx(ref.macs, rel=TOLERANCE), f"{name}: {macs / 1e6:.1f} M MACs"
    if ref.params is not None:
        params = _params(model, ref.with_bn)
        assert params == pytest.approx(ref.params, rel=TOLERANCE), f"{name}: {params} params"


@pytest.mark.parametrize("name", sorted(PARAM_FILE_WEIGHTS))
def test_ncnn_rebuild_has_the_param_files_weights(name: str) -> None:
    assert _weights(WORKLOADS[name].build()) == PARAM_FILE_WEIGHTS[name]


def test_shufflenet_v1_paper_layout() -> None:
    """The same builder with the paper's bottleneck widths gives the paper's 140 M [Z18]."""
    paper = _macs(zoo.shufflenet_v1_g3(paper_bottleneck=True).eval(), (3, 224, 224))
    caffe = _macs(zoo.shufflenet_v1_g3().eval(), (3, 224, 224))
    assert paper == pytest.approx(140e6, rel=TOLERANCE)
    assert caffe < paper  # the Caffe graph's stride-2 units are narrower


def test_squeezenet_v1_1_at_224_matches_torchvision() -> None:
    """Published figures are at 224x224: [TV] squeezenet1_1 0.35 GMACs, plus the Caffe graph's
    padded conv10 (512 x 1000 weights on 15x15 instead of 13x13: +28.7 M MACs)."""
    macs = _macs(zoo.squeezenet_v1_1().eval(), (3, 224, 224))
    assert macs == pytest.approx(0.35e9 + 512_000 * (15**2 - 13**2), rel=TOLERANCE)


def _rows() -> list[dict[str, str]]:
    with MEASUREMENTS.open(newline="") as f:
        return list(csv.DictReader(f))


def test_measurements_name_shipped_engines_and_workloads() -> None:
    rows = _rows()
    keys = set(SOURCES.read_text().split("`"))
    shipped = set(profile_ids())
    for i, row in enumerate(rows, start=2):
        where = f"measurements.csv line {i}"
        assert row["device"] in shipped, where
        engine = {e.name: e for e in load_profile(row["device"]).engines}.get(row["engine"])
        assert engine is not None, f"{where}: no engine {row['engine']}"
        assert row["dtype"] == engine.dtype and int(row["threads"]) == engine.threads, where
        work = WORKLOADS[row["network"]]
        shape = tuple(int(d) for d in row["input_shape"].split("x"))
        assert shape == work.input_shape, where
        assert row["statistic"] in {"min", "avg", "median", "mean"}, where
        assert float(row["latency_ms"]) > 0, where
        assert row["source_key"] in keys, f"{where}: {row['source_key']} not in SOURCES.md"


def test_measurements_are_unique() -> None:
    rows = _rows()
    ids = [
        (r["device"], r["engine"], r["network"], r["source_key"], r["source_ref"]) for r in rows
    ]
    assert len(ids) == len(set(ids))


def test_measurements_file_is_built_from_its_inputs() -> None:
    """measurements.csv is what build.py makes of the copied tables (nothing edited by hand)."""
    spec = importlib.util.spec_from_file_location(
        "public_build", MEASUREMENTS.with_name("build.py")
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.render() == MEASUREMENTS.read_text()
