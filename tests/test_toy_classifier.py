"""The shipped toy classifier names fresh ground-truth renders; weights round-trip through safetensors."""

import pytest
import torch

from dreamfield.toy import classifier, data
from dreamfield.toy.domain import ALL_PAIRS


@pytest.mark.skipif(not classifier.DEFAULT_PATH.is_file(), reason="classifier weights not trained yet")
def test_shipped_classifier_names_fresh_renders():
    clf = classifier.load_classifier()
    test = data.render_pairs(ALL_PAIRS, 1, seed=12345)  # cameras it has not seen
    acc_s, acc_c = classifier.accuracy(clf, test["images"], test["shape"], test["colour"])
    assert acc_s >= 0.95 and acc_c >= 0.98
    # A blank white image is not confidently anything in particular, but must still give valid indices.
    s, c = clf.predict(torch.ones(1, 3, 64, 64))
    assert 0 <= s.item() < 6 and 0 <= c.item() < 6


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = classifier.ToyClassifier().eval()
    path = classifier.save_classifier(model, tmp_path / "clf.safetensors")
    back = classifier.load_classifier(path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), back(x)
    assert torch.allclose(a[0], b[0], atol=2e-2) and torch.allclose(a[1], b[1], atol=2e-2)  # fp16 weights
    with pytest.raises(FileNotFoundError, match="not found"):
        classifier.load_classifier(tmp_path / "missing.safetensors")


def test_augment_shifts_with_white_fill():
    g = torch.Generator().manual_seed(0)
    img = torch.ones(8, 3, 64, 64)
    img[:, :, 30:34, 30:34] = 0.0
    out = classifier.augment(img, g)
    assert out.shape == img.shape and out.min() >= 0 and out.max() <= 1
    dark = (out.mean(1) < 0.5).float()
    assert torch.allclose(dark.sum((1, 2)), torch.full((8,), 16.0))  # the square survives every shift
    ys = (dark.sum(2) > 0).float().argmax(1)
    assert ((ys >= 27) & (ys <= 33)).all()
