import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dmlsynth.data.manifest import ManifestError, class_disjoint_split, read_manifest


def test_digits_manifest_has_the_class_disjoint_split(digits_manifest):
    from sklearn.datasets import load_digits

    frame = read_manifest(digits_manifest)
    assert len(frame) == 1797
    assert sorted(frame.loc[frame.split == "train", "label"].unique()) == [0, 1, 2, 3, 4]
    assert sorted(frame.loc[frame.split == "test", "label"].unique()) == [5, 6, 7, 8, 9]
    assert set(frame.class_name) == {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    # Pixels are sklearn's 0..16 grey levels scaled to 0..255.
    reference = load_digits()
    row = frame.iloc[123]
    pixels = np.asarray(Image.open(row.file))
    assert pixels.shape == (8, 8)
    np.testing.assert_allclose(pixels, np.rint(reference.images[123] * 255 / 16), atol=0)
    assert reference.target[123] == row.label


def test_class_disjoint_split_sorts_class_ids():
    assert class_disjoint_split([200, 3, 101, 1, 3]) == {1: "train", 3: "train", 101: "test", 200: "test"}


def test_missing_manifest_says_how_to_fix(tmp_path):
    with pytest.raises(ManifestError, match="does not exist: prepare the dataset first"):
        read_manifest(tmp_path / "digits" / "manifest.csv")


def test_manifest_with_missing_columns_or_images(tmp_path):
    path = tmp_path / "manifest.csv"
    pd.DataFrame({"path": ["a.png"], "label": [1]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="lacks columns"):
        read_manifest(path)
    pd.DataFrame({"path": ["a.png"], "label": [1], "class_name": ["x"], "split": ["train"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="1 missing image"):
        read_manifest(path)
    pd.DataFrame({"path": ["a.png"], "label": [1], "class_name": ["x"], "split": ["val"]}).to_csv(path, index=False)
    with pytest.raises(ManifestError, match="unknown split"):
        read_manifest(path, check_files=False)
