import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tissue_folder(tmp_path_factory):
    """A folder of small H&E-like images from the GLaS generator (uses the glas: reader's format)."""
    from histodrl.data.synth_glas import make_glas

    root = tmp_path_factory.mktemp("glas")
    make_glas(root, n_train=6, n_test_a=1, n_test_b=1, size=(160, 128), seed=0)
    return root


@pytest.fixture()
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "images"
    d.mkdir()
    for i in range(4):
        arr = (rng.random((80, 80, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    return d
