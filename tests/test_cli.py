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


def test_bench_coupling_bad_input_is_one_sentence():
    result = runner.invoke(app, ["bench", "coupling", "--rows", "10", "--batch", "20"])
    assert result.exit_code == 2
    assert "cannot exceed" in result.output
    assert "Traceback" not in result.output
