"""The autoencoder of latent training: diffusers' ``AutoencoderKL``, nothing hand-written.

    vae = load_autoencoder("models/sd-vae-ft-mse")        # a save_pretrained folder
    vae = load_autoencoder("vae-ft-mse-840000-ema-pruned.ckpt")   # one LDM-layout file
    vae = load_autoencoder("stabilityai/sd-vae-ft-mse")   # a hub id (needs internet)

A single file in the original (LDM) layout, like the authors' ``ae.*`` weights,
is converted by diffusers' own ``convert_ldm_vae_checkpoint``; the block layout
is read off the weights' shapes (SD's KL-f8: 128/256/512/512 channels, 2 blocks
per level, 4 latent channels), and the group-norm groups are LDM's 32.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

LDM_GROUPS = 32  # every LDM autoencoder normalises in 32 groups
LDM_PREFIXES = ("first_stage_model.", "vae.", "ae.")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name


class AutoencoderError(ValueError):
    """An autoencoder cannot be loaded as asked; the message says why."""


def ldm_config(state: dict[str, torch.Tensor], groups: int = LDM_GROUPS) -> dict[str, Any]:
    """The diffusers config of an LDM-layout KL autoencoder, from its weights' shapes."""
    def count(pattern: str) -> int:
        return 1 + max(int(m.group(1)) for k in state if (m := re.match(pattern, k)))

    try:
        levels = count(r"encoder\.down\.(\d+)\.")
        blocks = count(r"encoder\.down\.0\.block\.(\d+)\.")
        channels = [
            int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in range(levels)
        ]
        latent = int(state["post_quant_conv.weight"].shape[0])
        image = int(state["encoder.conv_in.weight"].shape[1])
        out = int(state["decoder.conv_out.weight"].shape[0])
    except (ValueError, KeyError) as err:
        raise AutoencoderError(
            f"the weights are not an LDM KL autoencoder (encoder.down.*, decoder.up.*, "
            f"quant_conv, post_quant_conv): {err}"
        ) from err
    return {
        "in_channels": image,
        "out_channels": out,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels,
        "layers_per_block": blocks,
        "latent_channels": latent,
        "norm_num_groups": groups,
    }


def from_ldm(state: dict[str, torch.Tensor], groups: int = LDM_GROUPS):
    """An ``AutoencoderKL`` with the weights of an LDM-layout state dict (prefixes such as
    ``first_stage_model.`` or ``ae.`` are dropped; the authors' ``scale`` is not a weight)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    for prefix in LDM_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k != "scale"}
    config = ldm_config(state, groups)
    converted = convert_ldm_vae_checkpoint(state, config)
    vae = AutoencoderKL(**config)
    missing, unexpected = vae.load_state_dict(converted, strict=False)
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise AutoencoderError(
            f"the LDM autoencoder weights do not convert to diffusers' layout ({what}, "
            f"{len(missing)} missing and {len(unexpected)} unexpected in all)"
        )
    return vae.eval()


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return raw.get("state_dict", raw) if isinstance(raw, dict) else raw


def load_autoencoder(spec: str):
    """The ``AutoencoderKL`` that ``spec`` names, in eval mode on the CPU."""
    from diffusers import AutoencoderKL

    path = Path(spec).expanduser()
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise AutoencoderError(
                    f"autoencoder folder {path} has no config.json (expected a folder written by "
                    "AutoencoderKL.save_pretrained, e.g. a download of stabilityai/sd-vae-ft-mse)"
                )
            return AutoencoderKL.from_pretrained(
                str(path), local_files_only=True, low_cpu_mem_usage=False
            ).eval()
        if path.is_file():
            return from_ldm(_read_state(path))
        if not HUB_ID.match(spec) or path.parent.is_dir():
            # owner/name, but its folder "owner" is here: a local path that is missing
            raise AutoencoderError(f"autoencoder {spec} does not exist")
        return AutoencoderKL.from_pretrained(spec).eval()  # a hub id: needs internet
    except AutoencoderError:
        raise
    except Exception as err:  # diffusers and the hub raise many types
        raise AutoencoderError(
            f"autoencoder {spec} cannot be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); there is no folder "
            f"{spec} here either: pass a folder written by save_pretrained, an LDM "
            ".ckpt/.safetensors file, or a hub id with internet"
        ) from err
