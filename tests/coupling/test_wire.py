import numpy as np

from loomray.coupling.wire import decode, pack, wire_bytes
from loomray.data import ArrayDataset


def test_image_rows_travel_as_uint8_and_decode_to_the_same_bits():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8)
    dataset = ArrayDataset(images, flip=True)
    x = dataset.batch(np.array([0, 7, 3, 11])).numpy()  # two mirrored rows
    sent = pack(x)
    assert sent.dtype == np.uint8 and sent.nbytes == x.nbytes // 4
    assert np.array_equal(decode(sent).view(np.uint32), x.view(np.uint32))


def test_other_rows_travel_as_float32_unchanged():
    rng = np.random.default_rng(1)
    for x in (
        rng.standard_normal((5, 8)).astype(np.float32),  # latents, points: not images
        np.full((3, 4), 0.5, np.float32),  # within [-1, 1] but not on the uint8 grid
        np.zeros((0, 4), np.float32),
    ):
        sent = pack(x)
        assert sent.dtype == np.float32 and np.array_equal(sent, x)


def test_wire_bytes_of_a_cifar_batch_of_2048():
    before, after = wire_bytes(2048, 3072, 1)
    assert before == 2 * 2048 * 3072 * 4  # 50 MB: the batch out, the noise back
    assert after == 2048 * 3072 + 2048 * 8  # 6.3 MB: uint8 out, seeds back
