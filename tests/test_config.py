import pytest

from loomray.config import ConfigError, dump_config, load_config, parse_overrides, preset_names

PAPER = {  # DESIGN.md's table of the paper's hyper-parameters
    "cifar10": (128, 2, (1, 2, 2, 2), (16,), 128, 391_000, 2e-4, 5_000, 4),
    "imagenet32": (128, 3, (1, 2, 2, 2), (16, 8), 512, 500_000, 1e-4, 20_000, 1),
    "imagenet64": (192, 2, (1, 2, 3, 4), (16,), 96, 1_334_000, 1e-4, 20_000, 1),
    "ffhq256": (256, 2, (1, 2, 3, 4), (16, 8, 4), 128, 273_000, 2e-5, 3_500, 4),
}


def test_presets_ship_and_load():
    assert set(preset_names()) >= {
        "cifar10",
        "imagenet32",
        "imagenet64",
        "ffhq256",
        "digits",
        "toy2d",
    }
    for name in preset_names():
        assert load_config(name).name == name


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_hyper_parameters(name):
    c = load_config(name)
    got = (
        c.model.channels,
        c.model.res_blocks,
        c.model.channel_mult,
        c.model.attn_resolutions,
        c.train.batch,
        c.train.steps,
        c.train.lr,
        c.train.warmup,
        c.coupling.caches,
    )
    assert got == PAPER[name]
    assert (c.train.ema, c.train.sigma, c.model.dropout, c.model.head_channels) == (
        0.9999,
        1e-7,
        0.1,
        64,
    )
    assert c.train.workers == 4 and c.train.gpus_per_worker == 1


def test_offline_presets_default_to_enough_caches():
    assert load_config("digits").coupling.caches >= 4
    assert load_config("digits").coupling.kind == "loom"


@pytest.mark.parametrize(
    "source,overrides,message",
    [
        ("digits", ["model.channel_mult=[1,2,2]"], "model.channel_mult has no effect: it shapes "
         "the UNet and model.kind is mlp"),
        ("cifar10", ["model.hidden=64"], "model.hidden has no effect: it shapes the MLP"),
        ("digits", ["data.root=/data"], "data.root has no effect: digits is built in"),
        ("digits", ["data.toy=moons"], "data.toy has no effect: it shapes toy2d"),
        ("toy2d", ["data.resolution=16"], "toy2d data is 2-D points"),
        ("imagenet32", ["data.download=true"], "only CIFAR-10 is downloaded"),
        (
            "digits",
            ["coupling.kind=independent", "coupling.caches=2"],
            "coupling.caches has no effect: only the loom coupling keeps noise caches",
        ),
    ],
)
def test_keys_that_would_change_nothing_are_refused(source, overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(source, overrides)
    assert message in str(err.value) and str(err.value).endswith("drop it")
    # what a preset sets for another kind is no override: switching the kind is fine
    load_config(source, ["coupling.kind=independent"])


def test_overrides_are_typed():
    c = load_config(
        "digits",
        [
            "train.lr=1e-4",
            "coupling.caches=8",
            "model.kind=unet",
            "model.channel_mult=1,2",
            "data.flip=true",
            "eval.methods=[euler-1,dopri5]",
        ],
    )
    assert c.train.lr == 1e-4 and isinstance(c.train.lr, float)
    assert c.coupling.caches == 8
    assert c.model.channel_mult == (1, 2)
    assert c.data.flip is True
    assert c.eval.methods == ("euler-1", "dopri5")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.nope=1"], "unknown config key train.nope"),
        (["nope.x=1"], "unknown config key nope"),
        (["train.lr=abc"], "train.lr must be float"),
        (["coupling.caches=two"], "coupling.caches must be int"),
        (["coupling.caches=0"], "coupling.caches must be at least 1"),
        (["train.batch=100", "train.workers=3"], "not divisible by train.workers"),
        (["eval.methods=[midpoint-0]"], "unknown sampler"),
        (["eval.methods=[leapfrog-2]"], "unknown sampler"),
        (["coupling.kind=sinkhorn"], "coupling.kind must be one of"),
        (["train.ema=1.5"], "train.ema must be in"),
        (["data.flip=maybe"], "data.flip must be bool"),
        (["model.kind=unet", "model.channel_mult=1,2,2,2,2"], "cannot be halved"),
        (["train"], "not of the form"),
        (["data.limit=10"], "exceeds the 10 rows"),
    ],
)
def test_bad_values_are_one_sentence(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config("digits", overrides)
    assert "\n" not in str(err.value)


def test_yaml_file_with_base_and_errors(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: toy2d\ntrain:\n  steps: 17\n")
    c = load_config(str(path))
    assert c.train.steps == 17 and c.data.name == "toy2d" and c.name == "mine"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("cifar11")


def test_dump_round_trips(tmp_path):
    c = load_config("cifar10", ["coupling.caches=8"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_config(c))
    assert load_config(str(path)) == c


def test_parse_overrides_nests():
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


def test_a_resume_may_change_what_cannot_change_the_result(tmp_path, capsys):
    """Logging, checkpoints, retries and (with the global batch kept) the worker count;
    anything else is refused with the key."""
    from loomray.config import dump_config
    from loomray.train.launch import LaunchError, prepare_run_dir

    (tmp_path / "config.yaml").write_text(dump_config(load_config("digits")))
    free = ["train.log_every=7", "train.ckpt_every=300", "train.keep_checkpoints=1"]
    free += ["train.max_failures=0", "train.sample_every=100", "eval.n=100", "train.workers=1"]
    assert prepare_run_dir(load_config("digits", free), tmp_path, resume=True)
    assert "resuming with 1 worker instead of 2" in capsys.readouterr().out
    assert "log_every: 7" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(LaunchError, match=r"another config \(train.batch"):
        prepare_run_dir(load_config("digits", ["train.batch=64"]), tmp_path, resume=True)
