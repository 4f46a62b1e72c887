"""Evaluation during training on 2 ranks (gloo, no Ray): the shares meet on rank 0 with
the one-process figures, and a failure on any rank switches evaluation off on all of
them together, without a rank left waiting in a collective."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from loomray.config import load_config
from loomray.train.evaluation import TrainingEvaluation
from loomray.train.loop import train_local

CONFIGS = {
    "digits": [
        "train.workers=1",
        "train.steps=50",
        "eval.n=300",
        "eval.batch=100",
        "eval.methods=[euler-1,dopri5]",
    ],
    "toy2d": ["train.steps=50", "eval.n=400", "eval.batch=150", "eval.methods=[euler-2]"],
}


def _rank(rank, world, store, preset, fail_rank, model_path, out_path):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cfg = load_config(preset, CONFIGS[preset])
    model = torch.load(model_path, weights_only=False)
    evaluation = TrainingEvaluation(cfg, torch.device("cpu"), out_path.parent, rank, world)
    if rank == fail_rank:
        evaluation._prepare = lambda: f"rank {rank}: no weights here"
    first = evaluation.run(model, 50)
    second = evaluation.run(model, 100)  # a rank stuck in a collective would hang here
    result = {"first": first, "second": second, "disabled": evaluation.disabled}
    torch.save(result, out_path.with_name(f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize(
    "preset,fail_rank", [("digits", None), ("digits", 0), ("toy2d", None), ("toy2d", 1)]
)
def test_two_ranks_agree_with_one_process_and_fail_together(tmp_path, preset, fail_rank):
    from loomray.evaluation.evaluate import evaluate_model
    from loomray.evaluation.evaluator import make_evaluator

    cfg = load_config(preset, CONFIGS[preset])
    model = train_local(cfg).state.ema.model
    torch.save(model, tmp_path / "model.pt")
    mp.spawn(
        _rank,
        args=(2, tmp_path / "store", preset, fail_rank, tmp_path / "model.pt", tmp_path / "x"),
        nprocs=2,
        join=True,
    )
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    if fail_rank is not None:
        assert all(r["disabled"] and r["first"] == {} == r["second"] for r in results)
        return
    alone = evaluate_model(model, cfg, cfg.eval.methods, cfg.eval.n, make_evaluator(cfg))
    figures = results[0]["first"]
    for row in alone:
        assert figures[f"{row.metric}/{row.method}"] == pytest.approx(row.value, rel=1e-9)
        assert figures[f"nfe/{row.method}"] == row.nfe
    assert results[1]["first"] == {} and not results[1]["disabled"]


def test_a_training_that_needs_its_evaluation_fails_before_training(tmp_path):
    """A sweep's training exists for its score: when the evaluation cannot run (here
    CIFAR-10's reference images are missing on this node), it fails at once, in
    loomray's words, which the driver shows instead of Ray Train's report."""
    from loomray.train.launch import loomray_reason

    cfg = load_config("cifar10", [f"data.root={tmp_path / 'nocifar'}", "train.gpus_per_worker=0"])
    evaluation = TrainingEvaluation(cfg, torch.device("cpu"), tmp_path, 0, 1)
    with pytest.raises(RuntimeError) as err:
        evaluation.require()
    message = str(err.value)
    assert message.startswith("loomray: the evaluation this training needs cannot run: rank 0:")
    assert "nocifar" in message
    report = f"Training failed.\nTraceback ...\nRuntimeError: {message}\n\n(more)"
    assert loomray_reason(report) == message.removeprefix("loomray: ")


def test_a_worker_that_does_not_see_the_run_dir_says_so(tmp_path):
    from loomray.train.worker import check_run_dir_shared

    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "config.yaml").write_text("name: x\n")
    check_run_dir_shared(tmp_path / "here")
    with pytest.raises(RuntimeError, match="run dir .*elsewhere is not shared: the node at"):
        check_run_dir_shared(tmp_path / "elsewhere")
