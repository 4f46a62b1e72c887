"""`loomray import`: the LOOM-CFM authors' released checkpoints as loomray runs.

tests/fixtures/official-unet-keys.json and official-unet-tiny.pt come from
running the authors' UNet code (araachie/loom-cfm, model/unet/): every state_dict
key and shape of the four paper presets, and a tiny random network of that class
with its float32 output on fixed inputs. No code of theirs is in this repository.
"""

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loomray.cli import app
from loomray.config import load_config
from loomray.models import build_model, count_parameters
from loomray.models.unet import UNet
from loomray.train.official import (
    PRESETS,
    ReleaseError,
    convert_state_dict,
    import_config,
    official_name,
)

FIXTURES = Path(__file__).parent / "fixtures"
KEYS = json.loads((FIXTURES / "official-unet-keys.json").read_text())


@pytest.mark.parametrize("preset", PRESETS)
def test_every_official_key_of_every_preset_maps_with_its_shape(preset):
    official = KEYS[preset]
    with torch.device("meta"):  # shapes only: imagenet64 and ffhq256 are 0.2-0.4 B parameters
        model = build_model(import_config(preset))
        theirs = {k: torch.empty(shape) for k, shape in official["state_dict"].items()}
    assert count_parameters(model) == official["parameters"]
    ours = convert_state_dict(theirs, model)
    assert set(ours) == set(model.state_dict())  # nothing missing, nothing left over
    with pytest.raises(ReleaseError, match="lacks the key 'out.2.bias'"):
        convert_state_dict({k: v for k, v in theirs.items() if k != "out.2.bias"}, model)
    with pytest.raises(ReleaseError, match="holds the key 'extra.weight'"):
        convert_state_dict({**theirs, "extra.weight": torch.empty(1)}, model)
    first = next(iter(theirs))
    with pytest.raises(ReleaseError, match=f"its '{first}' has shape \\[7\\]"):
        convert_state_dict({**theirs, first: torch.empty(7)}, model)


def test_the_tiny_official_network_gives_its_recorded_output():
    tiny = torch.load(FIXTURES / "official-unet-tiny.pt", weights_only=True)
    c = tiny["constructor"]
    model = UNet(
        in_channels=c["in_channels"],
        resolution=c["image_size"],
        channels=c["model_channels"],
        res_blocks=c["num_res_blocks"],
        channel_mult=tuple(c["channel_mult"]),
        attn_resolutions=tuple(c["image_size"] // ds for ds in c["attention_resolutions"]),
        head_channels=c["num_head_channels"],
        dropout=c["dropout"],
        time_scale=1.0,
    )
    state = {k: v.float() for k, v in tiny["state_dict"].items()}
    model.load_state_dict(convert_state_dict(state, model))
    with torch.no_grad():
        y = model.eval()(tiny["x"].float(), tiny["t"].float())
    assert (y - tiny["y"]).abs().max() < 1e-5
    # without the legacy head order of qkv the output is off: the reordering matters
    names_only = convert_state_dict(state, model)
    for name in names_only:
        if ".qkv." in name:
            names_only[name] = state[official_name(name, model)]
    model.load_state_dict(names_only)
    with torch.no_grad():
        assert (model(tiny["x"].float(), tiny["t"].float()) - tiny["y"]).abs().max() > 1e-3


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A cifar10 release file with the official keys, shapes and layout (random weights)."""
    folder = tmp_path_factory.mktemp("release")
    gen = torch.Generator().manual_seed(0)
    model = {
        f"backbone.{k}": torch.randn(shape, generator=gen, dtype=torch.float16) * 0.02
        for k, shape in KEYS["cifar10"]["state_dict"].items()
    }
    path = folder / "model.pth"
    torch.save({"optimizer": {}, "lr_scheduler": {}, "model": model, "global_step": 390000}, path)
    return path


def test_import_writes_a_run_that_samples_and_evaluates(release, tmp_path):
    run = tmp_path / "official"
    args = ["import", str(release), "--preset", "cifar10", "--run-dir", str(run)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    assert "imported 304 tensors at step 390000" in " ".join(out.output.split())
    assert "the network as saved (the authors' releases" in " ".join(out.output.split())
    cfg = load_config(str(run / "config.yaml"))
    assert cfg.model.time_scale == 1.0 and cfg.name == "cifar10"
    assert not cfg.train.bf16 and cfg.eval.precision == "fp32"  # the authors' fp32
    ckpt = torch.load(run / "train" / "step-0390000" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 390000
    assert all(torch.equal(ckpt["model"][k], ckpt["ema"][k]) for k in ckpt["model"])
    grid = tmp_path / "grid.png"
    sample = CliRunner().invoke(
        app, ["sample", "--ckpt", str(run), "--n", "4", "--method", "euler-1", "--out", str(grid)]
    )
    assert sample.exit_code == 0, sample.output and grid.is_file()
    # the authors' trainer saves its DDP module at the end: module.backbone.* keys
    ddp = tmp_path / "ddp.pth"
    raw = torch.load(release, weights_only=True)
    torch.save({**raw, "model": {f"module.{k}": v for k, v in raw["model"].items()}}, ddp)
    args = ["import", str(ddp), "--preset", "cifar10", "--run-dir", str(tmp_path / "ddp")]
    out = CliRunner().invoke(app, args)
    text = " ".join(out.output.split())
    assert out.exit_code == 0 and "imported 304 tensors" in text and "raw weights" in text
    again = torch.load(tmp_path / "ddp" / "train" / "step-0390000" / "checkpoint.pt")
    assert all(torch.equal(again["model"][k], v) for k, v in ckpt["model"].items())


def _bad_files(folder: Path, release: Path) -> dict[str, tuple[Path, str]]:
    (folder / "garbage.pth").write_bytes(b"\x00not torch" * 40)
    data = release.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 3])
    torch.save({"weights": torch.zeros(2)}, folder / "foreign.pth")
    (folder / "evil.pth").write_bytes(pickle.dumps(_Evil(folder / "pwned")))
    imagenet = {f"backbone.{k}": torch.empty(0) for k in KEYS["imagenet32"]["state_dict"]}
    torch.save({"model": imagenet}, folder / "imagenet32.pth")
    torch.save({"format": 1, "config": {}, "step": 0}, folder / "loomray.pt")
    return {
        "a loomray checkpoint": (folder / "loomray.pt", "it is already a loomray checkpoint"),
        "garbage": (folder / "garbage.pth", "is not a torch file of tensors and plain values"),
        "truncated": (folder / "truncated.pth", "is not a torch file of tensors"),
        "foreign": (folder / "foreign.pth", "no 'model' state dict"),
        "evil": (folder / "evil.pth", "is not a torch file of tensors and plain values"),
        "other preset": (folder / "imagenet32.pth", "'time_embed.0.weight' has shape [0]"),
        "missing": (folder / "nope.pth", "does not exist"),
    }


def test_bad_release_files_end_in_one_sentence_and_write_nothing(release, tmp_path):
    cases = _bad_files(tmp_path, release)

    def tree():
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    before = tree()
    for what, (path, message) in cases.items():
        args = ["import", str(path), "--preset", "cifar10", "--run-dir", str(tmp_path / "run")]
        out = CliRunner().invoke(app, args)
        text = " ".join(out.output.split())
        assert out.exit_code == 2 and "error:" in text and message in text, (what, out.output)
        assert "Traceback" not in out.output
    assert tree() == before and not (tmp_path / "run").exists()
    assert not (tmp_path / "pwned").exists()  # the pickle never ran
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "x").write_text("mine")
    for preset, run, message in (
        ("cifar10", occupied, "is not empty"),
        ("cifar11", tmp_path / "r", "--preset must be one of"),
    ):
        args = ["import", str(release), "--preset", preset, "--run-dir", str(run)]
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 2 and message in out.output
    assert (occupied / "x").read_text() == "mine" and len(list(occupied.iterdir())) == 1
