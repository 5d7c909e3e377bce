import numpy as np
import pytest
import torch
import torch.nn as nn

from synthcxr.metrics import inception
from synthcxr.metrics.features import classifier_extractor, get_extractor


class TinyClassifier(nn.Module):
    """A real (small) module exposing the classifier contract: .features, .input_res."""

    input_res = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.seen = []

    def features(self, x):
        self.seen.append(tuple(x.shape))
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


def test_unknown_name():
    with pytest.raises(KeyError, match="validate.features"):
        get_extractor("nope")


def test_classifier_extractor_resizes_to_input_res_and_batches():
    torch.manual_seed(0)
    clf = TinyClassifier()
    ext = classifier_extractor(clf)
    imgs = np.random.default_rng(0).integers(0, 256, (10, 32, 32), dtype=np.uint8)
    f = ext.from_uint8(imgs, batch_size=4)
    assert f.shape == (10, 4) and f.dtype == np.float32
    assert all(s[-1] == 16 for s in clf.seen)
    # batching does not change the numbers
    np.testing.assert_allclose(f, ext.from_uint8(imgs, batch_size=10), rtol=1e-6)
    with pytest.raises(TypeError, match="features"):
        classifier_extractor(nn.Linear(2, 2))


def test_inception_architecture_output_shape_random_weights():
    torch.manual_seed(0)
    net = inception.FIDInceptionV3().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64) * 2 - 1)
    assert out.shape == (2, 2048)
    assert torch.isfinite(out).all()
    keys = net.state_dict().keys()
    # names of the pt_inception-2015-12-05 weight file (torchvision Inception3 layout, 1008-way fc)
    for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var", "Mixed_6e.branch7x7dbl_5.conv.weight",
              "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.weight"):
        assert k in keys
    assert net.state_dict()["fc.weight"].shape == (1008, 2048)
    assert net.Mixed_7c.branch_pool.conv.in_channels == 2048
    assert not any("AuxLogits" in k for k in keys)


def test_inception_loads_a_matching_state_dict(tmp_path):
    torch.manual_seed(1)
    src = inception.FIDInceptionV3()
    path = tmp_path / inception.WEIGHTS_NAME
    torch.save(src.state_dict(), path)
    net = inception.load_fid_inception(path)
    assert torch.equal(net.state_dict()["Mixed_6a.branch3x3.conv.weight"], src.state_dict()["Mixed_6a.branch3x3.conv.weight"])
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(RuntimeError, match="not the FID Inception weights"):
        inception.load_fid_inception(bad)


def test_missing_inception_weights_error_explains_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    with pytest.raises(FileNotFoundError) as err:
        get_extractor("inception", inception_weights=str(tmp_path / "missing.pth"))
    msg = str(err.value)
    assert inception.WEIGHTS_URL in msg
    assert "resources/pt_inception-2015-12-05-6726825d.pth" in msg
    assert str(tmp_path / "missing.pth") in msg
    assert "validate.features: checker" in msg
