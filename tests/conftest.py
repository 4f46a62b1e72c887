import pytest


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module's tests (it costs ~2 GB and seconds to start)."""
    import ray

    from loomray.train.launch import connect

    connect(None, quiet=True)
    yield
    ray.shutdown()
