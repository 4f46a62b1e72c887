"""The LOOM-CFM authors' released checkpoints, as loomray runs: `loomray import`.

    loomray import model.pth --preset cifar10 --run-dir runs/cifar10-official

The released ``model.pth`` files (Hugging Face ``cvg-unibe/loom-cfm_<preset>``)
are ``torch.save`` dicts ``{optimizer, lr_scheduler, model, global_step}``;
``model`` is the EMA network (the trainer's final save: its DDP training network,
``module.``-prefixed), its keys ``backbone.<guided-diffusion ADM UNet key>``
(and ``ae.*``, the latent autoencoder, for ffhq256). loomray's UNet has the
same parameters in the same order under other names, so the import maps every
key by the network's structure and checks every shape. Two things differ:

* attention ``qkv`` rows: the authors' blocks use guided-diffusion's legacy head
  order (rows grouped per head as [q, k, v]), loomray's split q, k, v first;
  the rows are reordered;
* the time input: their ``backbone(x, t)`` embeds raw t in [0, 1], so imported
  models (and the paper presets) set ``model.time_scale = 1``.

The files are read with ``torch.load(weights_only=True)``: tensors and numbers
only, a pickle that needs more is refused.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from loomray.checkpoint import save_checkpoint
from loomray.config import Config, load_config
from loomray.files.durable import write_text
from loomray.models import build_model

PRESETS = ("cifar10", "imagenet32", "imagenet64", "ffhq256")
PREFIX = "backbone."


class ReleaseError(ValueError):
    """A file that is not one of the authors' checkpoints of this preset."""


def official_name(name: str, model: torch.nn.Module) -> str:
    """The authors' name of one of loomray's UNet parameters."""
    rename = {"skip": "skip_connection", "proj": "proj_out"}
    if name.startswith(("time_embed.", "out.")):
        return name
    if name.startswith("stem."):
        return "input_blocks.0.0." + name.split(".", 1)[1]
    m = re.match(r"(down|up|middle)\.(\d+)\.(res|attn|resample)\.(.*)", name)
    if m is None:
        raise KeyError(name)
    part, i, kind, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    for ours, theirs in rename.items():
        if rest.startswith(ours + "."):
            rest = theirs + rest[len(ours) :]
    if part == "middle":
        index = {(0, "res"): 0, (0, "attn"): 1, (1, "res"): 2}[i, kind]
        return f"middle_block.{index}.{rest}"
    block = f"input_blocks.{i + 1}" if part == "down" else f"output_blocks.{i}"
    if kind == "res":
        return f"{block}.0.{rest}"
    if kind == "attn":
        return f"{block}.1.{rest}"
    if part == "down":  # a Downsample is the level's only module, as ``op``
        return f"{block}.0.op.{rest.split('.', 1)[1]}"
    level = getattr(model, part)[i]
    return f"{block}.{2 if level.attn is not None else 1}.{rest}"


def _legacy_qkv(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows [head][q, k, v][channel] (the authors') -> [q, k, v][head][channel] (ours)."""
    three_c = tensor.shape[0]
    d = three_c // (3 * heads)
    return tensor.reshape(heads, 3, d, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def _heads_of(model: torch.nn.Module) -> dict[str, int]:
    return {
        name: module.heads
        for name, module in model.named_modules()
        if hasattr(module, "heads") and hasattr(module, "qkv")
    }


def convert_state_dict(theirs: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """loomray's state dict for ``model`` from the authors' UNet state dict (no prefix);
    refuses missing, unexpected or mis-shaped keys, naming the first offender."""
    ours = model.state_dict()
    heads = _heads_of(model)
    out, wanted = {}, set()
    for name, target in ours.items():
        source = official_name(name, model)
        wanted.add(source)
        if source not in theirs:
            raise ReleaseError(f"it lacks the key {source!r} (loomray's {name})")
        tensor = theirs[source]
        if not isinstance(tensor, torch.Tensor) or tensor.shape != target.shape:
            shape = list(getattr(tensor, "shape", [])) or type(tensor).__name__
            raise ReleaseError(
                f"its {source!r} has shape {shape}, the preset's network {list(target.shape)}"
            )
        owner = name.rsplit(".qkv.", 1)[0]
        if ".qkv." in name and owner in heads:
            tensor = _legacy_qkv(tensor, heads[owner])
        out[name] = tensor.to(target.dtype)
    extra = sorted(set(theirs) - wanted)
    if extra:
        raise ReleaseError(f"it holds the key {extra[0]!r}, which the preset's network has not")
    return out


def read_official(path: Path) -> tuple[dict, dict, int, bool]:
    """The backbone's state dict, the ``ae.*`` tensors, the global step of a file and
    whether it is a DDP module's state dict (``module.*`` keys)."""
    if not path.is_file():
        raise ReleaseError("it does not exist" if not path.exists() else "it is a folder")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad or unsafe file
        raise ReleaseError(
            f"it is not a torch file of tensors and plain values ({type(err).__name__})"
        ) from err
    if isinstance(raw, dict) and "format" in raw and "config" in raw:
        raise ReleaseError(
            "it is already a loomray checkpoint: pass it (or its run dir) as --ckpt, or "
            "as train.init to fine-tune from it"
        )
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise ReleaseError("it is not a LOOM-CFM release (no 'model' state dict)")
    model = raw["model"]
    ddp = bool(model) and all(k.startswith("module.") for k in model)
    if ddp:  # the trainer's final save: its DDP-wrapped training network
        model = {k[len("module.") :]: v for k, v in model.items()}
    backbone = {k[len(PREFIX) :]: v for k, v in model.items() if k.startswith(PREFIX)}
    ae = {k[3:]: v for k, v in model.items() if k.startswith("ae.")}
    other = sorted(k for k in model if not k.startswith((PREFIX, "ae.")))
    if other:
        raise ReleaseError(f"its model holds the key {other[0]!r} (expected backbone.* and ae.*)")
    if not backbone:
        raise ReleaseError("its model has no backbone.* keys")
    step = raw.get("global_step", 0)
    return backbone, ae, int(step) if isinstance(step, (int, float)) else 0, ddp


RAW_WEIGHTS = (
    "the training network's raw weights (module.* keys: the trainer's final save of its "
    "DDP model, not its EMA)"
)
SAVED_WEIGHTS = (
    "the network as saved (the authors' releases and periodic saves hold the EMA; a "
    "final save from one GPU holds the raw weights, which the file cannot tell apart)"
)


def import_config(preset: str) -> Config:
    cfg = load_config(preset)
    # fp32, as the authors train and evaluate these weights
    return replace(
        cfg,
        model=replace(cfg.model, time_scale=1.0),
        train=replace(cfg.train, bf16=False),
        eval=replace(cfg.eval, precision="fp32"),
    )


def import_official(path: str | Path, preset: str, run_dir: str | Path) -> dict[str, Any]:
    """Write a loomray run dir (config.yaml + a checkpoint whose model and EMA are the
    released network) from the authors' ``model.pth``; returns what was imported."""
    from loomray.config import dump_config
    from loomray.train.loop import build_state
    from loomray.train.worker import CHECKPOINT_FILE, checkpoint_dir_name

    path, run_dir = Path(path).expanduser(), Path(run_dir).expanduser()
    if preset not in PRESETS:
        raise ReleaseError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    cfg = import_config(preset)
    try:
        backbone, ae, step, ddp = read_official(path)
        weights = convert_state_dict(backbone, build_model(cfg))
        vae, scale = convert_autoencoder(ae) if ae else (None, None)
    except ReleaseError as err:
        raise ReleaseError(f"{path} cannot be imported as {preset}: {err}") from err
    state = build_state(cfg, torch.device("cpu"))
    state.model.load_state_dict(weights)
    state.ema.model.load_state_dict(weights)
    state.step = step
    if vae is not None:  # ffhq256: the latent autoencoder, in diffusers' layout beside the run
        folder = (run_dir / "autoencoder").resolve()
        cfg = replace(cfg, data=replace(cfg.data, autoencoder=str(folder), latent_scale=scale))
    run_dir.mkdir(parents=True, exist_ok=True)
    if vae is not None:
        vae.save_pretrained(str(run_dir / "autoencoder"))
    payload = state.payload(cfg)
    ckpt = save_checkpoint(
        run_dir / "train" / checkpoint_dir_name(step) / CHECKPOINT_FILE,
        {**payload, "imported_from": str(path)},
    )
    write_text(run_dir / "config.yaml", dump_config(cfg))
    return {
        "checkpoint": ckpt,
        "step": step,
        "keys": len(weights),
        "autoencoder": len(ae),
        "weights": RAW_WEIGHTS if ddp else SAVED_WEIGHTS,
    }


def convert_autoencoder(ae: dict[str, torch.Tensor]):
    """The authors' ``ae.*`` weights (LDM layout, with ``scale``: the std their latents
    were divided by) as (a diffusers ``AutoencoderKL``, loomray's latent scale 1 / std)."""
    from loomray.latents.autoencoder import AutoencoderError, from_ldm

    scale = ae.get("scale")
    if scale is None or scale.numel() != 1 or not float(scale) > 0:
        raise ReleaseError("its ae.* autoencoder has no positive ae.scale")
    try:
        return from_ldm(ae), 1.0 / float(scale)
    except AutoencoderError as err:
        raise ReleaseError(f"its ae.* autoencoder cannot be converted: {err}") from err


def check_run_dir(run_dir: Path) -> None:
    """An import writes a new run dir only: an existing, non-empty one is refused."""
    from loomray.files.locks import holds_anything
    from loomray.paths import PathError, folder_to_write

    try:
        folder_to_write(run_dir, "run dir")
    except PathError as err:
        raise ReleaseError(str(err)) from err
    if holds_anything(run_dir):
        raise ReleaseError(f"run dir {run_dir} is not empty; pass a new --run-dir")

