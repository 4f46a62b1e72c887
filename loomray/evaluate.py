"""Sample quality: FID through torch-fidelity, and exact distances for 2-D toys.

Which metric a config gets:

* images (cifar10, imagenet*, folders): FID with torch-fidelity's Inception
  (``inception-v3-compat``). Its weights come from ``--fid-weights PATH`` or
  ``$LOOMRAY_FID_WEIGHTS``; failing both, torch-fidelity downloads them, and if
  that fails too the error says how to supply them.
* digits: FID in the feature space of a small classifier trained on the
  digits themselves (deterministic, cached under ``~/.cache/loomray``, its
  held-out accuracy reported), registered with torch-fidelity as a feature
  extractor, so an offline sweep has a real FID objective.
* toy2d: the energy distance between samples and data (exact, no network).

Reference statistics of a dataset split are cached by torch-fidelity under the
cache dir, keyed by dataset, split, size and extractor, and computed once.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from loomray.config import Config
from loomray.coupling import noise_from_seeds
from loomray.sampling import parse_method, sample

WEIGHTS_ENV = "LOOMRAY_FID_WEIGHTS"
DIGITS_EXTRACTOR = "loomray-digits-classifier"
INCEPTION = "inception-v3-compat"
EVAL_SEED_OFFSET = 2 * 10**12  # evaluation noise never collides with training seeds


class EvaluationError(ValueError):
    """An evaluation cannot run as asked; the message says how to fix it."""


def cache_dir() -> Path:
    return Path(os.environ.get("LOOMRAY_CACHE", Path.home() / ".cache" / "loomray"))


# ---- the digits classifier ----------------------------------------------------
class DigitsClassifier(nn.Module):
    """64 pixels -> 128 features -> 10 classes; the features define digits FID."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(64, 256), nn.SiLU(), nn.Linear(256, 128), nn.SiLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(len(x), -1)))


def train_digits_classifier(seed: int = 0, epochs: int = 60) -> tuple[DigitsClassifier, float]:
    """Deterministic: fixed seed, fixed split (80/20), full-precision CPU training."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0).reshape(-1, 64)
    y = torch.from_numpy(digits.target.astype(np.int64))
    order = np.random.default_rng(seed).permutation(len(x))
    split = int(0.8 * len(x))
    train, test = order[:split], order[split:]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        perm = torch.from_numpy(train)[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model.eval(), accuracy


def digits_classifier() -> tuple[DigitsClassifier, float]:
    """The cached classifier and its held-out accuracy (trained on first use)."""
    path = cache_dir() / "digits-classifier.pt"
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = DigitsClassifier()
        model.load_state_dict(state["model"])
        return model.eval(), float(state["accuracy"])
    model, accuracy = train_digits_classifier()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save({"model": model.state_dict(), "accuracy": accuracy}, tmp)
    os.replace(tmp, path)
    return model, accuracy


def _register_digits_extractor() -> None:
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if DIGITS_EXTRACTOR in FEATURE_EXTRACTORS_REGISTRY:
        return

    class DigitsFeatures(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net, _ = digits_classifier()
            self.requires_grad_(False)

        @staticmethod
        def get_provided_features_list():
            return ("128", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "128"

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            x = x.float() / 127.5 - 1.0
            feats = self.net.features(x.reshape(len(x), -1))
            out = {"128": feats, "logits": self.net.head(feats)}
            return tuple(out[name] for name in self.features_list)

    torch_fidelity.register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatures)


# ---- metrics -------------------------------------------------------------------
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 images, as a PNG of the sample would hold them."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class _Images(Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| on the samples (V-statistic, exact)."""
    x, y = x.double().reshape(len(x), -1), y.double().reshape(len(y), -1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@dataclass
class Evaluator:
    """Scores sample sets against one reference set of a dataset split."""

    metric: str  # "fid" or "energy"
    reference: torch.Tensor
    extractor: str | None = None
    weights: str | None = None
    cache_name: str | None = None
    device: str = "cpu"
    note: str = ""

    def score(self, samples: torch.Tensor) -> float:
        if self.metric == "energy":
            return energy_distance(samples.cpu(), self.reference)
        import torch_fidelity

        kwargs = dict(
            input1=_Images(to_uint8(samples)),
            input2=_Images(self.reference),
            fid=True,
            feature_extractor=self.extractor,
            cuda=self.device == "cuda",
            verbose=False,
            save_cpu_ram=True,
            samples_shuffle=False,
            cache_root=str(cache_dir() / "fid"),
            cache=self.cache_name is not None,
            input2_cache_name=self.cache_name,
        )
        if self.weights:
            kwargs["feature_extractor_weights_path"] = self.weights
        try:
            metrics = torch_fidelity.calculate_metrics(**kwargs)
        except (OSError, RuntimeError) as err:
            if self.extractor == INCEPTION and not self.weights:
                raise EvaluationError(
                    "FID needs torch-fidelity's Inception weights "
                    "(weights-inception-2015-12-05-6726825d.pth): pass --fid-weights PATH or "
                    f"set {WEIGHTS_ENV}; downloading them failed ({err})"
                ) from err
            raise
        return float(metrics["frechet_inception_distance"])


def reference_images(cfg: Config, split: str) -> torch.Tensor:
    """The reference split as uint8 images (no mirrored rows) or 2-D points."""
    from dataclasses import replace as dc_replace

    from loomray.data import build_dataset, load_cifar10, toy_points

    if cfg.data.name == "toy2d":
        seed = cfg.train.seed + (1 if split == "test" else 0)
        return torch.from_numpy(toy_points(cfg.data.toy, cfg.data.toy_points, seed))
    if split == "test":
        if cfg.data.name != "cifar10":
            raise EvaluationError(f"--ref test is only known for cifar10, not {cfg.data.name}")
        from pathlib import Path as P

        return torch.from_numpy(
            load_cifar10(P(cfg.data.root).expanduser(), False, cfg.data.download)
        )
    dataset = build_dataset(dc_replace(cfg, data=dc_replace(cfg.data, flip=False)))
    return to_uint8(dataset.batch(np.arange(len(dataset))))


def make_evaluator(
    cfg: Config, split: str = "train", fid_weights: str | None = None, device: str = "cpu"
) -> Evaluator:
    if split not in ("train", "test"):
        raise EvaluationError(f"--ref must be train or test, got {split!r}")
    reference = reference_images(cfg, split)
    if cfg.data.name == "toy2d":
        return Evaluator("energy", reference, device=device, note="energy distance to data")
    digest = hashlib.sha256(reference.numpy().tobytes()).hexdigest()[:12]
    cache_name = f"loomray-{cfg.data.name}-{split}-{len(reference)}-{digest}"
    if cfg.data.name == "digits":
        _register_digits_extractor()
        _, accuracy = digits_classifier()
        return Evaluator(
            "fid",
            reference,
            DIGITS_EXTRACTOR,
            cache_name=cache_name,
            device=device,
            note=f"digits-classifier FID (held-out accuracy {100 * accuracy:.1f}%)",
        )
    weights = fid_weights or os.environ.get(WEIGHTS_ENV) or None
    if weights:
        from loomray.paths import PathError, file_to_read

        try:
            file_to_read(weights, "Inception weights file")
        except PathError as err:
            raise EvaluationError(str(err)) from err
    if reference.shape[1] != 3:
        raise EvaluationError(
            f"Inception FID needs RGB images, {cfg.data.name} has {reference.shape[1]} channels"
        )
    if weights:
        cache_name += "-" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:8]
    return Evaluator("fid", reference, INCEPTION, weights, cache_name, device, note="Inception FID")


@dataclass
class EvalRow:
    method: str
    nfe: float
    metric: str
    value: float
    n: int
    seconds: float


def evaluate_model(
    model: nn.Module,
    cfg: Config,
    methods: list[str] | tuple[str, ...],
    n: int,
    evaluator: Evaluator,
    device: str | torch.device = "cpu",
    batch: int = 1000,
    progress=None,
) -> list[EvalRow]:
    """Sample ``n`` per method from fixed evaluation noise and score each set."""
    for m in methods:
        parse_method(m)
    device = torch.device(device)
    model = model.to(device).eval()
    rows = []
    for method in methods:
        start = time.perf_counter()
        chunks, nfes = [], []
        for lo in range(0, n, batch):
            seeds = np.arange(lo, min(n, lo + batch)) + EVAL_SEED_OFFSET
            z = torch.from_numpy(noise_from_seeds(seeds, cfg.sample_shape)).to(device)
            result = sample(model, z, method, rtol=cfg.eval.rtol, atol=cfg.eval.atol)
            chunks.append(result.x.float().cpu())
            nfes.append(result.nfe)
            if progress is not None:
                progress(method, min(n, lo + batch), n)
        value = evaluator.score(torch.cat(chunks))
        rows.append(
            EvalRow(
                method,
                float(np.mean(nfes)),
                evaluator.metric,
                value,
                n,
                time.perf_counter() - start,
            )
        )
    return rows


def write_results(rows: list[EvalRow], folder: Path, stem: str) -> tuple[Path, Path]:
    """The table as Parquet and JSON, side by side."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for r in rows]
    pq_path, json_path = folder / f"{stem}.parquet", folder / f"{stem}.json"
    pq.write_table(pa.Table.from_pylist(records), pq_path)
    json_path.write_text(json.dumps(records, indent=2))
    return pq_path, json_path
