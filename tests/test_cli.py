from typer.testing import CliRunner

from loomray.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "bench" in result.output


def test_bench_coupling_small():
    result = runner.invoke(
        app, ["bench", "coupling", "--rows", "500", "--batch", "16", "--dim", "12", "--steps", "20"]
    )
    assert result.exit_code == 0, result.output
    assert "solves/s" in result.output
    for part in ("noise", "cost", "assign", "update"):
        assert part in result.output


def test_bench_coupling_on_settled_image_rows_with_both_solvers_and_threads():
    args = ["bench", "coupling", "--data", "mnist", "--rows", "300", "--caches", "1"]
    args += ["--batch", "100", "--warmup", "9", "--steps", "3", "--threads", "2"]
    for solver in ("lapjv", "lap", "scipy"):
        result = runner.invoke(app, [*args, "--solver", solver])
        assert result.exit_code == 0, result.output
        assert f"data=mnist solver={solver}" in result.output and "on 2 thread(s)" in result.output
        assert "8.0x fewer" in result.output  # uint8 images and seeds against floats


def test_bench_coupling_bad_input_is_one_sentence():
    for args, says in (
        (["--rows", "10", "--batch", "20"], "cannot exceed"),
        (["--solver", "hungarian"], "--solver must be one of lapjv, lap, scipy"),
        (["--data", "mnist", "--rows", "6000"], "has 5000 rows, fewer than --rows 6000"),
        (["--data", "mnist", "--rows", "600", "--dim", "12"], "3072 values, not --dim 12"),
    ):
        result = runner.invoke(app, ["bench", "coupling", *args])
        assert result.exit_code == 2, result.output
        assert says in result.output
        assert "Traceback" not in result.output


def test_sample_writes_any_number_of_samples_as_an_array(tmp_path):
    import numpy as np

    from loomray.checkpoint import save_checkpoint
    from loomray.config import load_config
    from loomray.models import build_model

    cfg = load_config("toy2d", ["train.steps=1"])
    ema = build_model(cfg).state_dict()
    ckpt = save_checkpoint(
        tmp_path / "toy.pt", {"format": 1, "config": cfg.to_dict(), "step": 0, "ema": ema}
    )
    out = tmp_path / "many.npz"
    args = ["sample", "--ckpt", str(ckpt), "--n", "5000", "--method", "euler-1"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    with np.load(out) as z:
        assert z["samples"].shape == (5000, 2) and int(z["seed"]) == 0


def test_short_help_and_version():
    from loomray import __version__

    assert runner.invoke(app, ["--version"]).output.strip() == f"loomray {__version__}"
    for args in (["-h"], ["train", "-h"], ["bench", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage: " in result.output, result.output
        assert "<bool>" not in result.output  # a flag takes no value


def test_tables_wrap_in_an_80_column_terminal_instead_of_cutting_figures():
    result = CliRunner().invoke(app, ["presets"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.output
    assert "imagenet" in result.output and "1334000" in result.output
