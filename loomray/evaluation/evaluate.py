"""Evaluating a model: every sampler from the same fixed noise per sample index,
scored by an ``Evaluator`` (loomray.evaluation.evaluator), on one worker or shared
across many; the table of scores written as Parquet and JSON.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loomray.config import Config
from loomray.coupling import noise_from_seeds
from loomray.evaluation.evaluator import EVAL_SEED_OFFSET, Evaluator
from loomray.evaluation.weights import EvaluationError
from loomray.files.durable import replacing, write_text
from loomray.flow.sampling import SampleResult, parse_method, sample


@dataclass
class EvalRow:
    method: str
    nfe: float
    metric: str
    value: float
    n: int
    seconds: float
    protocol: str = "standard"
    """How the FID was measured (loomray.evaluation.paper_fid): a figure never travels
    without it."""


@dataclass
class MethodShare:
    """One worker's part of one sampler's evaluation."""

    share: Any  # the evaluator's share of all this worker's batches (see Evaluator.share)
    count: int
    nfe_total: float  # sum over the part's samples of the NFE spent on them
    seconds: float


def eval_batches(n: int, batch: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """The [lo, hi) sample ranges this worker evaluates: global batches of ``batch``
    samples, batch k to worker k % world. Batches are the same whatever the number of
    workers, so every sample (and dopri5's step control, which looks at its whole
    batch) is the same too."""
    ranges = [(lo, min(n, lo + batch)) for lo in range(0, n, batch)]
    return ranges[rank::world]


def eval_noise(cfg: Config, lo: int, hi: int, device: str | torch.device) -> torch.Tensor:
    """The fixed evaluation noise of samples ``lo..hi-1`` (the same on every worker)."""
    seeds = np.arange(lo, hi) + EVAL_SEED_OFFSET
    return torch.from_numpy(noise_from_seeds(seeds, cfg.sample_shape)).to(device)


def method_names(methods: str | None, cfg: Config) -> list[str]:
    """The samplers a ``--methods`` option names (comma-separated), else the config's
    eval.methods; EvaluationError for an empty list or an unknown sampler."""
    names = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else []
    if methods is not None and not names:
        raise EvaluationError("--methods names no sampler (e.g. --methods euler-1,dopri5)")
    for name in names:
        try:
            parse_method(name)
        except ValueError as err:
            raise EvaluationError(f"--methods: {err}") from err
    return names or list(cfg.eval.methods)


def with_precision(cfg: Config, precision: str | None) -> Config:
    """``cfg`` sampling in ``precision`` (fp32 or bf16; None: as it is)."""
    from dataclasses import replace

    from loomray.config import PRECISIONS

    if precision is None:
        return cfg
    if precision not in PRECISIONS:
        raise EvaluationError(f"--precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    return replace(cfg, eval=replace(cfg.eval, precision=precision))


def sampling_in_bf16(cfg: Config, device_type: str) -> bool:
    """Whether sampling runs the network under bf16 autocast: only when asked
    (``eval.precision``), and only on CUDA; never because training ran in bf16."""
    return device_type == "cuda" and cfg.eval.precision == "bf16"


def sample_eval(model: nn.Module, cfg: Config, z: torch.Tensor, method: str) -> SampleResult:
    """One sampler from ``z`` as evaluation runs it: no grad, the network in
    ``eval.precision`` (bf16: autocast on CUDA; the solver's state stays float32)."""
    bf16 = sampling_in_bf16(cfg, z.device.type)
    with torch.no_grad(), torch.autocast(z.device.type, torch.bfloat16, enabled=bf16):
        return sample(model, z, method, rtol=cfg.eval.rtol, atol=cfg.eval.atol)


def sample_shares(
    model: nn.Module,
    cfg: Config,
    methods: list[str] | tuple[str, ...],
    n: int,
    evaluator: Evaluator,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world: int = 1,
    progress=None,
) -> dict[str, MethodShare]:
    """This worker's part of the evaluation: its batches, every sampler from the same
    noise per sample index (EMA weights, no grad, the network in eval.precision)."""
    for m in methods:
        parse_method(m)
    device = torch.device(device)
    model = model.to(device).eval()
    parts = {m: MethodShare(None, 0, 0.0, 0.0) for m in methods}
    ranges = eval_batches(n, cfg.eval.batch, rank, world)
    from loomray.latents.decode import output_decoder

    decode = output_decoder(cfg, device)  # a latent model's samples become images
    total, done = sum(hi - lo for lo, hi in ranges), 0
    for lo, hi in ranges:
        z = eval_noise(cfg, lo, hi, device)
        for method in methods:
            start = time.perf_counter()
            result = sample_eval(model, cfg, z, method)
            part = parts[method]
            images = result.x.float() if decode is None else decode(result.x)
            share = evaluator.share(images.float(), lo)
            part.share = share if part.share is None else evaluator.merge(part.share, share)
            part.count += hi - lo
            part.nfe_total += result.nfe * (hi - lo)
            part.seconds += time.perf_counter() - start
        done += hi - lo
        if progress is not None:
            progress(done, total)
    return parts


def combine_shares(
    evaluator: Evaluator, methods, n: int, parts: list[dict[str, MethodShare]]
) -> list[EvalRow]:
    """The table of scores from every worker's parts (``sample_shares``)."""
    rows = []
    for method in methods:
        mine = [p[method] for p in parts if p[method].count]
        count = sum(p.count for p in mine)
        if count != n:
            raise ValueError(f"{method}: the workers' parts hold {count} of {n} samples")
        value = evaluator.value([p.share for p in mine])
        nfe = sum(p.nfe_total for p in mine) / count
        seconds = max(p.seconds for p in mine)
        protocol = evaluator.protocol if evaluator.metric == "fid" else "exact"
        rows.append(EvalRow(method, nfe, evaluator.metric, value, n, seconds, protocol))
    return rows


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    methods: list[str] | tuple[str, ...],
    n: int,
    evaluator: Evaluator,
    device: str | torch.device = "cpu",
    progress=None,
) -> list[EvalRow]:
    """Sample ``n`` per method from fixed evaluation noise and score each set (one worker)."""
    parts = sample_shares(model, cfg, methods, n, evaluator, device, progress=progress)
    return combine_shares(evaluator, methods, n, [parts])


def write_results(
    rows: list[EvalRow], folder: Path, stem: str, keep: bool = False
) -> tuple[Path, Path]:
    """The table as Parquet and JSON, side by side. ``keep``: the file's earlier rows
    stay, except those of the same sampler, sample count and protocol (a figure that
    is measured again, with the same seeds); a quick ``--n 2`` never replaces a
    careful n=50000."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq_path, json_path = folder / f"{stem}.parquet", folder / f"{stem}.json"
    records = [asdict(r) for r in rows]
    if keep:
        key = lambda r: (r["method"], r["n"], r.get("protocol", "standard"))  # noqa: E731
        new = {key(r) for r in records}
        records = [r for r in read_results(json_path) if key(r) not in new] + records
    with replacing(pq_path) as tmp:
        pq.write_table(pa.Table.from_pylist(records), tmp)
    write_text(json_path, json.dumps(records, indent=2))
    return pq_path, json_path


def read_results(json_path: Path) -> list[dict]:
    """The rows of an earlier table (none when there is none or it is unreadable)."""
    import json

    try:
        rows = json.loads(json_path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in rows if isinstance(r, dict) and "method" in r and "n" in r]
