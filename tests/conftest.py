import pytest
import torch


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's tests (it costs ~2 GB and seconds to start)."""
    import ray

    from loomray.train.launch import connect

    connect(None, quiet=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory):
    """Inception-v3 of the right architecture with random weights: the real FID code
    path runs without the download."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    empty = tmp_path_factory.mktemp("weights") / "empty.pth"
    torch.save({}, empty)
    original = FeatureExtractorInceptionV3.load_state_dict
    FeatureExtractorInceptionV3.load_state_dict = lambda self, state: None
    try:
        torch.manual_seed(0)
        model = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)
        )
    finally:
        FeatureExtractorInceptionV3.load_state_dict = original
    for module in model.modules():  # keep activations alive through 20 random layers
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "inception-random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_vae():
    """A factory of tiny random diffusers AutoencoderKLs (16x16 RGB -> 4x8x8 latents)."""

    def tiny_vae(seed: int = 0):
        from diffusers import AutoencoderKL

        torch.manual_seed(seed)
        return AutoencoderKL(
            block_out_channels=(32, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=32,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            sample_size=16,
        ).eval()

    return tiny_vae
