"""Backbone registry, built-in backbones, local weight files, the embedding head."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from edgedml.errors import ConfigError, ModelError
from edgedml.models import EmbeddingModel, backbones, build_model, create_backbone


@pytest.mark.parametrize(
    ("name", "size", "features"), [("tiny", 32, 128), ("mobilenetv2", 64, 1280), ("resnet18", 64, 512)]
)
def test_builtin_backbones_give_normalized_embeddings(name, size, features):
    model = build_model(name, dim=24).eval()
    assert model.backbone.num_features == features
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 24)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_mobilenetv2_and_resnet18_have_their_reference_parameter_counts():
    """Backbones without classifier: MobileNetV2 2,223,872 and ResNet-18 11,176,512 parameters."""
    assert sum(p.numel() for p in create_backbone("mobilenetv2").parameters()) == 2_223_872
    assert sum(p.numel() for p in create_backbone("resnet18").parameters()) == 11_176_512
    # tiny by hand: 3x3 convs 3->32->64->128->128 without bias, 9 * 26,720 = 240,480, and BatchNorm's 2 * 352
    assert sum(p.numel() for p in create_backbone("tiny").parameters()) == 241_184


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        create_backbone("resnet1000")
    assert "resnet1000" in info.value.message
    for known in ("tiny", "mobilenetv2", "resnet18"):
        assert known in info.value.hint


def test_registry_drops_none_kwargs_and_can_register_temporarily():
    with backbones.registered("wide-tiny", lambda width=8: create_backbone("tiny", width=width)):
        model = backbones.create("wide-tiny", width=None)
        assert model.num_features == 32  # width 8 -> 4 * 8, the factory default survived the None
    assert "wide-tiny" not in backbones


def test_local_weights_round_trip_and_mismatch(tmp_path):
    source = create_backbone("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = create_backbone("tiny", weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    save_file({"conv.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError, match="missing"):
        create_backbone("tiny", weights=tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="no such file"):
        create_backbone("tiny", weights=tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        create_backbone("tiny", weights=tmp_path / "junk.safetensors")


def test_timm_backbone_without_timm_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelError) as info:
        create_backbone("timm:resnet50")
    assert "edgedml[timm]" in info.value.hint


def test_timm_backbone_is_created_without_pretrained_download(monkeypatch):
    calls = {}

    def create_model(name, pretrained, num_classes, **kwargs):
        calls.update(name=name, pretrained=pretrained, num_classes=num_classes)
        model = create_backbone("tiny")
        return model

    fake_timm = types.SimpleNamespace(list_models=lambda: ["fake_net"], create_model=create_model)
    monkeypatch.setitem(sys.modules, "timm", fake_timm)
    model = EmbeddingModel(create_backbone("timm:fake_net"), dim=8)
    assert calls == {"name": "fake_net", "pretrained": False, "num_classes": 0}
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 8)
    with pytest.raises(ModelError, match="no model"):
        create_backbone("timm:missing_net")


class FixedFeatures(torch.nn.Module):
    """A backbone whose pooled features are the first two pixels of channel 0: known numbers in, known numbers out."""

    num_features = 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, :2]


def test_embed_raw_is_the_unnormalized_head_output():
    """Head weight [[2, 0], [0, 2]], bias [1, -1]. Features (3, 4) give raw (7, 7), norm 7 sqrt 2, so the
    embedding is (1, 1) / sqrt 2; features (0, 0.5) give raw (1, 0) and embedding (1, 0); (-1, 0) gives (-1, -1)."""
    model = EmbeddingModel(FixedFeatures(), dim=2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 2.0]]))
        model.head.bias.copy_(torch.tensor([1.0, -1.0]))
    images = torch.zeros(3, 3, 1, 2)
    images[:, 0, 0] = torch.tensor([[3.0, 4.0], [0.0, 0.5], [-1.0, 0.0]])
    with torch.no_grad():
        raw, embedded = model.embed_raw(images), model(images)
    torch.testing.assert_close(raw, torch.tensor([[7.0, 7.0], [1.0, 0.0], [-1.0, -1.0]]))
    torch.testing.assert_close(embedded, torch.tensor([[0.5**0.5, 0.5**0.5], [1.0, 0.0], [-(0.5**0.5), -(0.5**0.5)]]))
