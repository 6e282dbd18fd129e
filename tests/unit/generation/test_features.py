"""The generation report's image features on the generation device (the fidelity classifier's input)."""

import numpy as np
import pytest
from PIL import Image

from dmlsynth.generation.features import features


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    files = []
    for i in range(5):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(path, quality=95)
        files.append(str(path))
    return files


def test_photo_features_on_the_device_match_the_cpu(photos, device):
    cpu = features(photos, "RGB", 224, pretrained=False, device="cpu", batch_size=2)
    assert cpu.shape == (5, 2048) and np.isfinite(cpu).all()
    assert np.array_equal(cpu, features(photos, "RGB", 224, pretrained=False, device="cpu", batch_size=2))
    # Decoding in worker processes (threads > 1) and other batch sizes give the same features.
    np.testing.assert_allclose(features(photos, "RGB", 224, pretrained=False, device="cpu", threads=2, batch_size=4),
                               cpu, rtol=1e-4, atol=1e-5)  # fmt: skip
    on_device = features(photos, "RGB", 224, pretrained=False, device=device, batch_size=2)
    # CUDA convolutions may use TF32: agreement to ~1e-3 relative.
    np.testing.assert_allclose(on_device, cpu, rtol=2e-2, atol=2e-3)
    assert not np.allclose(cpu[0], cpu[1])  # different photos, different features
