"""Several workers of one study from one command (``hwsparse search --workers N``).

Each worker is a process running ``hwsparse search`` on the same storage; Optuna's storage is
the only coordination (no scheduler of ours). CPU threads are split between the workers; with
GPUs, each worker sees one GPU through ``CUDA_VISIBLE_DEVICES`` (``--gpus 0,1``: indices of the
GPUs this process sees, default all of them), worker ``i`` taking GPU ``i mod len(gpus)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hwsparse.errors import InputError

INDEX_ENV = "HWSPARSE_WORKER_INDEX"  # 0..N-1 for the workers of one command (seeds differ)
SEED_STRIDE = 1000  # worker i's sampler seed is offset by i * SEED_STRIDE


def worker_index() -> int:
    """This process's index among the workers of one ``--workers`` command (0 otherwise)."""
    text = os.environ.get(INDEX_ENV, "0")
    return int(text) if text.isdigit() else 0


@dataclass(frozen=True)
class WorkerPlan:
    """One worker: its index, torch threads, training device and extra environment."""

    index: int
    threads: int
    device: str
    env: tuple[tuple[str, str], ...]


def visible_gpus(environ: dict[str, str] | None, count: int) -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` entries: that variable's list
    when set (ids or UUIDs), else ``0..count-1`` (``count``: ``torch.cuda.device_count()``)."""
    env = os.environ if environ is None else environ
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g.strip() for g in given.split(",") if g.strip()][:count]
    return [str(i) for i in range(count)]


def choose_gpus(text: str | None, visible: list[str]) -> list[str]:
    """``--gpus 0,2`` (indices into the visible GPUs) -> their ``CUDA_VISIBLE_DEVICES`` ids;
    None: all visible ones."""
    if text is None:
        return list(visible)
    valid = f"0..{len(visible) - 1}" if visible else "none (no GPU visible)"
    chosen = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) >= len(visible):
            raise InputError(f"--gpus {text!r}: {part!r} is not a visible GPU; valid: {valid}")
        chosen.append(visible[int(part)])
    if len(set(chosen)) != len(chosen):
        raise InputError(f"--gpus {text!r} names a GPU twice")
    return chosen


def plan(workers: int, gpus: list[str], threads: int) -> list[WorkerPlan]:
    """Who gets what: with GPUs, worker i sees GPU ``gpus[i % len(gpus)]`` (as its only device,
    ``cuda``); without, workers train on the CPU and share ``threads`` evenly (at least 1)."""
    if workers < 1:
        raise InputError(f"--workers must be >= 1 (got {workers})")
    each = max(1, threads // workers)
    plans = []
    for i in range(workers):
        env = [(INDEX_ENV, str(i)), ("OMP_NUM_THREADS", str(each))]
        if gpus:
            env.append(("CUDA_VISIBLE_DEVICES", gpus[i % len(gpus)]))
        plans.append(WorkerPlan(i, each, "cuda" if gpus else "cpu", tuple(env)))
    return plans


def start(args: list[str], plans: list[WorkerPlan], logs: Path) -> list[subprocess.Popen[bytes]]:
    """Start one ``hwsparse search ARGS --threads T --device D`` process per plan; each one's
    stderr goes to ``logs/worker-I.log``."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for p in plans:
        cmd = [sys.executable, "-m", "hwsparse", "search", *args]
        cmd += ["--threads", str(p.threads), "--device", p.device]
        with open(logs / f"worker-{p.index}.log", "wb") as log:
            procs.append(
                subprocess.Popen(
                    cmd, stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **dict(p.env)}
                )
            )
    return procs


def last_line(logs: Path, index: int) -> str:
    """The last line a worker wrote to its log (its error, when it failed)."""
    lines = (logs / f"worker-{index}.log").read_text(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(no output)"
