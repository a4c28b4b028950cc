"""Build measurements.csv from the copied benchncnn tables and the hand-entered rows.

    .venv/bin/python benchmarks/latency/public/build.py          # rewrite measurements.csv
    .venv/bin/python benchmarks/latency/public/build.py --check  # exit 1 if it is stale

Inputs (this folder):

- ``benchncnn_excerpt.txt``: benchncnn output lines copied verbatim from ncnn's
  benchmark/README.md, one block per run under an ``@ device engine dtype threads "ref"`` line.
  The 'min' column is used (the fastest of the loop; benchncnn also prints max and avg).
- ``other_sources.csv``: rows from XNNPACK, Coral, MLPerf Tiny and devices.md. A latency
  written ``1000/<inferences per second>`` is an MLPerf Tiny median throughput, converted here.

Input shapes come from the workload registry, so a row always describes the graph it names.
"""

from __future__ import annotations

import csv
import io
import shlex
import sys
from pathlib import Path

from hwsparse.cost.anchors import WORKLOADS

HERE = Path(__file__).parent
OUT = HERE / "measurements.csv"
HEADER = [
    "device", "engine", "network", "input_shape", "dtype", "threads", "latency_ms",
    "statistic", "runtime", "source_key", "source_ref",
]  # fmt: skip

# benchncnn model name -> workload key (hwsparse.cost.zoo rebuilds of benchmark/<name>.param)
NCNN_NETWORKS = {
    "squeezenet": "squeezenet_v1_1",
    "mobilenet": "mobilenet_v1",
    "mobilenet_v2": "mobilenet_v2_ncnn",
    "mobilenet_v3": "mobilenet_v3_ncnn",
    "shufflenet": "shufflenet_v1_g3",
    "shufflenet_v2": "shufflenet_v2",
    "mnasnet": "mnasnet",
    "proxylessnasnet": "proxylessnas_mobile",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnetv2_b0": "efficientnetv2_b0",
    "regnety_400m": "regnety_400mf",
    "googlenet": "googlenet",
    "resnet18": "resnet18_ncnn",
    "alexnet": "alexnet",
    "vgg16": "vgg16",
    "resnet50": "resnet50_caffe",
}


def _shape(network: str) -> str:
    return "x".join(str(d) for d in WORKLOADS[network].input_shape)


def _ms(text: str) -> str:
    if text.startswith("1000/"):
        return f"{1000 / float(text[5:]):.5g}"
    return text


def ncnn_rows(path: Path = HERE / "benchncnn_excerpt.txt") -> list[list[str]]:
    """One row per benchncnn line of a copied block (the 'min' column)."""
    rows: list[list[str]] = []
    head: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("@"):
            head = shlex.split(line[1:])
            continue
        fields = line.split()
        if not fields or line.startswith("#"):
            continue
        device, engine, dtype, threads, ref = head
        name, minimum = fields[0], fields[3]
        network = NCNN_NETWORKS[name.removesuffix("_int8")]  # *_int8: same graph, quantized
        runtime = f"ncnn benchncnn ({'Vulkan' if 'gpu' in engine else 'CPU'}), {threads} thread"
        runtime += "s" if threads != "1" else ""
        rows.append(
            [device, engine, network, _shape(network), dtype, threads, minimum, "min",
             runtime, "NCNN-README", f"{ref}, {name}"]
        )  # fmt: skip
    return rows


def other_rows(path: Path = HERE / "other_sources.csv") -> list[list[str]]:
    """The hand-entered rows, with input shapes and MLPerf throughputs filled in."""
    with path.open(newline="") as f:
        return [
            [r["device"], r["engine"], r["network"], _shape(r["network"]), r["dtype"],
             r["threads"], _ms(r["latency_ms"]), r["statistic"], r["runtime"],
             r["source_key"], r["source_ref"]]
            for r in csv.DictReader(f)
        ]  # fmt: skip


def render() -> str:
    """The full measurements.csv text."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(ncnn_rows() + other_rows())
    return buf.getvalue()


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        stale = not OUT.exists() or OUT.read_text() != text
        print(f"{OUT.name}: {'stale' if stale else 'up to date'}")
        return 1 if stale else 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
