"""Sample quality: FID through torch-fidelity, and exact distances for 2-D toys.

Which metric a config gets:

* images (cifar10, imagenet*, folders): FID with torch-fidelity's Inception
  (``inception-v3-compat``). Its weights come from ``--fid-weights PATH`` or
  ``$LOOMRAY_FID_WEIGHTS``; failing both, torch-fidelity downloads them, and if
  that fails too the error says how to supply them.
* digits, mnist: FID in the feature space of a small classifier trained on the
  set itself (loomray.evaluation.classifier_fid: deterministic, cached under
  ``~/.cache/loomray``, its held-out accuracy reported), so an offline sweep has a
  real FID objective.
* toy2d: the energy distance between samples and data (exact, no network).

Reference statistics of a dataset split are cached by torch-fidelity under the
cache dir, keyed by dataset, split, size and extractor, and computed once.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loomray.config import Config
from loomray.evaluation.classifier_fid import EXTRACTORS, FEATURES, SETS, cache_dir
from loomray.evaluation.fid import FeatureSums, extract_features, frechet_distance
from loomray.evaluation.weights import EvaluationError, weights_state
from loomray.files.tensor_files import plain_copy

WEIGHTS_ENV = "LOOMRAY_FID_WEIGHTS"
PAPER_WEIGHTS_ENV = "LOOMRAY_PAPER_FID_WEIGHTS"  # torchvision's Inception, for protocol paper
PROTOCOLS = ("standard", "paper")
INCEPTION = "inception-v3-compat"
EVAL_SEED_OFFSET = 2 * 10**12  # evaluation noise never collides with training seeds


# ---- metrics -------------------------------------------------------------------
def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 images, as a PNG of the sample would hold them."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 E|X-Y| - E|X-X'| - E|Y-Y'| on the samples (V-statistic, exact)."""
    x, y = x.double().reshape(len(x), -1), y.double().reshape(len(y), -1)
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@dataclass
class Evaluator:
    """Scores sample sets against one reference set of a dataset split.

    A set can be scored in shares (``share`` per part, ``value`` of them all), so
    several workers each sample and featurize a part and only the shares travel:
    FeatureSums for FID (see loomray.evaluation.fid), the samples themselves for toy2d."""

    metric: str  # "fid" or "energy"
    reference: torch.Tensor
    extractor: str | None = None
    weights: str | None = None
    cache_name: str | None = None
    device: str = "cpu"
    note: str = ""
    protocol: str = "standard"
    """standard (torch-fidelity's TF-Inception on uint8) or paper (see
    loomray.evaluation.paper_fid)."""
    split: str = "train"
    """The dataset split the reference images come from."""
    _model: nn.Module | None = field(default=None, repr=False)

    def _extractor(self) -> nn.Module:
        if self._model is None and self.protocol == "paper":
            self._model = self._paper_extractor()
        if self._model is None:
            from torch_fidelity.utils import create_feature_extractor

            layer = str(self.feature_dim)
            cuda = torch.device(self.device).type == "cuda"  # "cuda:1" too
            try:
                if self.weights:  # torch-fidelity unpickles a path fully: give it a plain copy
                    with plain_copy(weights_state(self.weights, self.protocol)) as plain:
                        self._model = create_feature_extractor(
                            self.extractor,
                            [layer],
                            cuda=cuda,
                            verbose=False,
                            feature_extractor_weights_path=plain,
                        )
                else:
                    self._model = create_feature_extractor(
                        self.extractor, [layer], cuda=cuda, verbose=False
                    )
            except (OSError, RuntimeError) as err:
                if self.extractor == INCEPTION and not self.weights:
                    raise EvaluationError(
                        "FID needs torch-fidelity's Inception weights "
                        "(weights-inception-2015-12-05-6726825d.pth): pass --fid-weights PATH "
                        f"or set {WEIGHTS_ENV}; downloading them failed ({err})"
                    ) from err
                raise
        return self._model

    def _paper_extractor(self) -> nn.Module:
        from loomray.evaluation.paper_fid import TORCHVISION_WEIGHTS, paper_inception

        try:
            return paper_inception(self.weights, self.device)
        except (OSError, RuntimeError, KeyError) as err:
            what = f"the weights {self.weights} are not" if self.weights else "it needs"
            raise EvaluationError(
                f"the paper's FID protocol uses torchvision's Inception-v3 and {what} "
                f"torchvision's ImageNet weights ({TORCHVISION_WEIGHTS}): pass --fid-weights "
                f"PATH, set {PAPER_WEIGHTS_ENV}, or put the file in $TORCH_HOME/hub/checkpoints "
                f"({type(err).__name__})"
            ) from err

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        """What the feature network reads: uint8 (standard), floats in [0, 1] (paper)."""
        if self.protocol == "paper":
            return images.float() / 255.0 if images.dtype == torch.uint8 else images
        return images

    def share(self, samples: torch.Tensor, key: int = 0):
        """What the part ``key`` (e.g. a batch index) of a sample set contributes:
        its FeatureSums for FID, the points themselves (by key) for toy2d."""
        if self.metric == "energy":
            return {key: samples.detach().double().cpu()}
        if self.protocol == "paper":
            from loomray.evaluation.paper_fid import to_unit

            images = to_unit(samples.detach().cpu())
        else:
            images = to_uint8(samples)
        return FeatureSums.of(extract_features(self._extractor(), images, self.device))

    @staticmethod
    def merge(a, b):
        """Two shares as one: sums add up, points are kept by key."""
        return {**a, **b} if isinstance(a, dict) else a + b

    def value(self, shares: list) -> float:
        """The score of the set that ``shares`` make up together."""
        total = functools.reduce(self.merge, shares)
        if self.metric == "energy":
            return energy_distance(torch.cat([total[k] for k in sorted(total)]), self.reference)
        return frechet_distance(total, self.reference_sums())

    def score(self, samples: torch.Tensor) -> float:
        return self.value([self.share(samples)])

    @property
    def feature_dim(self) -> int:
        """The width of the features FID compares (a share's sums are this wide)."""
        return FEATURES if self.extractor in EXTRACTORS else 2048

    def reference_sums(self) -> FeatureSums:
        """The reference split's feature sums, computed once and cached on disk."""
        path = cache_dir() / "fid" / f"{self.cache_name}-{self.extractor}-sums.npz"
        sums = FeatureSums.load(path) if self.cache_name else None
        if sums is None:
            images = self._images(self.reference)
            sums = FeatureSums.of(extract_features(self._extractor(), images, self.device))
            if self.cache_name:
                sums.save(path)
        return sums


def reference_images(cfg: Config, split: str, draw=None) -> torch.Tensor:
    """The reference split as uint8 images (no mirrored rows) or 2-D points; ``draw``:
    ``draw(len(split))`` gives the rows to keep (with repeats), e.g. the paper
    protocol's draw, so only those are built."""
    from dataclasses import replace as dc_replace

    from loomray.data import build_dataset, load_cifar10, toy_points

    if cfg.data.name == "toy2d":
        seed = cfg.train.seed + (1 if split == "test" else 0)
        return torch.from_numpy(toy_points(cfg.data.toy, cfg.data.toy_points, seed))
    if split == "test":
        if cfg.data.name != "cifar10":
            raise EvaluationError(f"--ref test is only known for cifar10, not {cfg.data.name}")
        from pathlib import Path as P

        images = torch.from_numpy(
            load_cifar10(P(cfg.data.root).expanduser(), False, cfg.data.download)
        )
        return images if draw is None else images[torch.from_numpy(draw(len(images)))]
    dataset = build_dataset(dc_replace(cfg, data=dc_replace(cfg.data, flip=False)))
    rows = np.arange(len(dataset)) if draw is None else draw(len(dataset))
    # In chunks: the split as float32 at once would be 4x its uint8 size.
    chunks = [to_uint8(dataset.batch(rows[i : i + 10_000])) for i in range(0, len(rows), 10_000)]
    return torch.cat(chunks)


def real_data_config(cfg: Config) -> Config:
    """``cfg`` with the data its samples are compared with: for reflow pairs, the data
    the pairs' source model was trained on (its FID reference), not the pairs; for
    latents, the images they encode."""
    if cfg.data.name == "latents":
        return _images_of_latents(cfg)
    if cfg.data.name != "pairs":
        return cfg
    from dataclasses import replace as dc_replace

    from loomray.config import ConfigError, config_from_dict
    from loomray.data.pairs import PairsError, read_manifest

    try:
        source = config_from_dict(read_manifest(cfg.data.root).source_config)
    except (PairsError, ConfigError) as err:
        raise EvaluationError(f"the real data of pairs {cfg.data.root} is unknown: {err}") from err
    # a second round of reflow: the pairs' source trained on pairs too
    return real_data_config(dc_replace(cfg, data=source.data))


def _images_of_latents(cfg: Config) -> Config:
    """``cfg`` with the image data set its latents folder (``data.root``) encodes."""
    from dataclasses import replace as dc_replace

    from loomray.config import ConfigError, DataConfig
    from loomray.data.latents import read_manifest
    from loomray.files.shards import ShardsError

    try:
        images = DataConfig(**read_manifest(cfg.data.root or "").images)
    except (ShardsError, ConfigError, TypeError) as err:
        raise EvaluationError(
            f"the real images of a latent model are those its latents folder encodes: {err}"
        ) from err
    return dc_replace(cfg, data=dc_replace(images, flip=False))


def make_evaluator(
    cfg: Config,
    split: str = "train",
    fid_weights: str | None = None,
    device: str = "cpu",
    with_reference: bool = True,
    protocol: str | None = None,
) -> Evaluator:
    """The metric of a config's data under ``protocol`` (default ``cfg.eval.protocol``).
    ``with_reference=False``: for a worker that only computes shares
    (``Evaluator.share``); whoever combines them needs the reference."""
    protocol = protocol or cfg.eval.protocol
    cfg = real_data_config(cfg)
    if split not in ("train", "test"):
        raise EvaluationError(f"--ref must be train or test, got {split!r}")
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"--protocol must be {' or '.join(PROTOCOLS)}, got {protocol!r}")
    if protocol == "paper" and (cfg.data.name in SETS or cfg.data.name == "toy2d"):
        raise EvaluationError(
            f"the paper's FID protocol is Inception FID of RGB images, not for {cfg.data.name}"
        )
    if not with_reference:
        return _share_evaluator(cfg, fid_weights, device, protocol)
    drawn = None
    if protocol == "paper":
        from loomray.evaluation.paper_fid import real_count, real_indices

        if cfg.data.name == "cifar10":
            split = "test"  # the authors draw CIFAR-10's real images from its test split

        def drawn(size: int) -> np.ndarray:
            return real_indices(size, real_count(cfg.data.name)).numpy()

    reference = reference_images(cfg, split, drawn)
    if cfg.data.name == "toy2d":
        return Evaluator("energy", reference, device=device, note="energy distance to data")
    digest = hashlib.sha256(reference.numpy().tobytes()).hexdigest()[:12]
    cache_name = f"loomray-{cfg.data.name}-{split}-{len(reference)}-{digest}"
    if cfg.data.name in SETS:
        from loomray.evaluation.classifier_fid import classifier, register_extractor

        extractor = register_extractor(cfg.data.name)
        _, accuracy = classifier(cfg.data.name)
        return Evaluator(
            "fid",
            reference,
            extractor,
            cache_name=cache_name,
            device=device,
            note=f"{cfg.data.name}-classifier FID (held-out accuracy {100 * accuracy:.1f}%)",
        )
    weights = _weights_file(fid_weights, protocol)
    if reference.shape[1] != 3:
        raise EvaluationError(
            f"Inception FID needs RGB images, {cfg.data.name} has {reference.shape[1]} channels"
        )
    if weights:
        cache_name += "-" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:8]
    if protocol == "paper":
        from loomray.evaluation.paper_fid import PAPER_EXTRACTOR

        note = f"paper protocol: torchvision Inception FID, {len(reference)} real images"
        return Evaluator(
            "fid", reference, PAPER_EXTRACTOR, weights, cache_name, device, note, "paper", split
        )
    return Evaluator(
        "fid", reference, INCEPTION, weights, cache_name, device, "Inception FID", split=split
    )


def _weights_file(fid_weights: str | None, protocol: str = "standard") -> str | None:
    """--fid-weights, else the protocol's own setting: torch-fidelity's TF-Inception file
    (LOOMRAY_FID_WEIGHTS) or torchvision's Inception-v3 (LOOMRAY_PAPER_FID_WEIGHTS)."""
    env = PAPER_WEIGHTS_ENV if protocol == "paper" else WEIGHTS_ENV
    weights = fid_weights or os.environ.get(env) or None
    if weights:
        weights_state(weights, protocol)  # refused here, in one sentence, before any use
    return weights


def _share_evaluator(
    cfg: Config, fid_weights: str | None, device: str, protocol: str = "standard"
) -> Evaluator:
    empty = torch.zeros(0)
    cfg = real_data_config(cfg)
    if cfg.data.name == "toy2d":
        return Evaluator("energy", empty, device=device)
    if cfg.data.name in SETS:
        from loomray.evaluation.classifier_fid import register_extractor

        return Evaluator("fid", empty, register_extractor(cfg.data.name), device=device)
    if cfg.data.channels != 3:
        raise EvaluationError(
            f"Inception FID needs RGB images, {cfg.data.name} has {cfg.data.channels} channels"
        )
    weights = _weights_file(fid_weights, protocol)
    if protocol == "paper":
        from loomray.evaluation.paper_fid import PAPER_EXTRACTOR

        return Evaluator("fid", empty, PAPER_EXTRACTOR, weights, device=device, protocol="paper")
    return Evaluator("fid", empty, INCEPTION, weights, device=device)
