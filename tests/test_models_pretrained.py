"""Built-in backbones load torchvision, timm and older edgedml weights unchanged, and give the same features.

``fixtures/torchvision_backbones.json`` was made by ``fixtures/make_torchvision_fixture.py`` in a venv with torchvision
and timm: for each reference model, the state dict's (name, shape, dtype) rows and its pooled features on seeded
weights. Here the same tensors are rebuilt from their names (``fixtures/seeded_weights.py``), saved as a plain
``.pth`` and as ``.safetensors``, loaded through ``create_backbone(name, weights=path)``, and the features compared.
``fixtures/legacy_backbones.json`` does the same for the backbones' layout before they took torchvision's names.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from fixtures.seeded_weights import seeded_input, seeded_state, state_entries
from safetensors.torch import save_file

from edgedml.config import TrainConfig
from edgedml.errors import ModelError
from edgedml.models import EmbeddingModel, create_backbone, upgrade_legacy_state, upgrade_model_state
from edgedml.training import load_run_model
from edgedml.training.checkpoint import MODEL, save_checkpoint, with_prefix

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = json.loads((FIXTURES / "torchvision_backbones.json").read_text(encoding="utf-8"))
LEGACY = json.loads((FIXTURES / "legacy_backbones.json").read_text(encoding="utf-8"))
REFERENCE_MODELS = {model["key"]: model for model in REFERENCE["models"]}
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return seeded_input(tuple(REFERENCE["made_by"]["input"]["shape"]), REFERENCE["made_by"]["input"]["seed"])


@torch.no_grad()
def features_of(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    return backbone.eval()(images)


def assert_features_match(features: torch.Tensor, record: dict) -> None:
    expected = torch.tensor(record["values"], dtype=torch.float64)
    assert list(features.shape) == record["shape"]
    difference = (features.double() - expected).abs().max().item()
    assert difference < TOLERANCE, f"max |difference| {difference:.2e}"
    torch.testing.assert_close(
        features.double().sum(dim=1), torch.tensor(record["row_sums"], dtype=torch.float64), rtol=1e-5, atol=1e-4
    )


def save_weights(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@functools.cache
def _cached_reference_state(key: str) -> dict[str, torch.Tensor]:
    return seeded_state(REFERENCE_MODELS[key]["state"])


def reference_state(key: str) -> dict[str, torch.Tensor]:
    """The reference model's seeded tensors (a fresh dict each time; the tensors are never changed in place)."""
    return dict(_cached_reference_state(key))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("key", list(REFERENCE_MODELS))
def test_reference_weights_give_the_reference_features(key, suffix, images, tmp_path):
    model = REFERENCE_MODELS[key]
    path = save_weights(reference_state(key), tmp_path / f"weights{suffix}")
    backbone = create_backbone(model["backbone"], weights=path)
    assert_features_match(features_of(backbone, images), model["features"])


@pytest.mark.parametrize("key", [key for key in REFERENCE_MODELS if key.startswith("torchvision:")])
def test_builtin_backbones_have_torchvision_names_shapes_and_order(key):
    model = REFERENCE_MODELS[key]
    backbone = create_backbone(model["backbone"])
    assert state_entries(backbone.state_dict()) == model["state"]
    assert backbone.num_features == model["features"]["shape"][1]


def test_integer_buffers_load_too(tmp_path):
    state = reference_state("torchvision:resnet18")
    assert state["bn1.num_batches_tracked"].dtype == torch.int64 and state["bn1.num_batches_tracked"].item() != 0
    backbone = create_backbone("resnet18", weights=save_weights(state, tmp_path / "r18.pth"))
    assert torch.equal(backbone.bn1.num_batches_tracked, state["bn1.num_batches_tracked"])


def test_classifier_tensors_are_dropped(images, tmp_path):
    resnet = reference_state("torchvision:resnet50") | {
        "fc.weight": torch.zeros(1000, 2048),
        "fc.bias": torch.zeros(1000),
    }
    backbone = create_backbone("resnet50", weights=save_weights(resnet, tmp_path / "r50.pth"))
    assert_features_match(features_of(backbone, images), REFERENCE_MODELS["torchvision:resnet50"]["features"])
    mobilenet = reference_state("timm:mobilenetv2_100") | {
        "classifier.weight": torch.zeros(1000, 1280),
        "classifier.bias": torch.zeros(1000),
    }
    backbone = create_backbone("mobilenetv2", weights=save_weights(mobilenet, tmp_path / "mnv2.safetensors"))
    assert_features_match(features_of(backbone, images), REFERENCE_MODELS["timm:mobilenetv2_100"]["features"])


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: {"state_dict": state, "epoch": 90},
        lambda state: {"model": {f"module.{key}": value for key, value in state.items()}},
        lambda state: {f"module.{key}": value for key, value in state.items()},
    ],
    ids=["state_dict", "model+ddp", "ddp"],
)
def test_containers_and_the_ddp_prefix_are_unwrapped(wrap, images, tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(wrap(reference_state("torchvision:resnet18")), path)
    backbone = create_backbone("resnet18", weights=path)
    assert_features_match(features_of(backbone, images), REFERENCE_MODELS["torchvision:resnet18"]["features"])


def one_line_error(backbone: str, path: Path) -> ModelError:
    with pytest.raises(ModelError) as info:
        create_backbone(backbone, weights=path)
    assert "\n" not in info.value.message and str(path) in info.value.message
    return info.value


def test_a_wrong_shaped_tensor_is_named(tmp_path):
    state = reference_state("torchvision:resnet34")
    state["layer3.2.conv2.weight"] = torch.zeros(256, 256, 1, 1)
    error = one_line_error("resnet34", save_weights(state, tmp_path / "r34.pth"))
    assert "'layer3.2.conv2.weight' has shape (256, 256, 1, 1), the backbone's is (256, 256, 3, 3)" in error.message
    assert "expected a torchvision resnet34 state dict (.pth) or a timm resnet34 .safetensors" in error.message


def test_a_missing_tensor_is_named(tmp_path):
    state = reference_state("torchvision:mobilenet_v2")
    del state["features.7.conv.1.1.running_var"]
    error = one_line_error("mobilenetv2", save_weights(state, tmp_path / "mnv2.safetensors"))
    assert "'features.7.conv.1.1.running_var' missing" in error.message
    assert "torchvision mobilenet_v2 state dict (.pth) or a timm mobilenetv2_100 .safetensors" in error.message


def test_weights_of_another_backbone_are_refused(tmp_path):
    error = one_line_error("resnet18", save_weights(reference_state("torchvision:resnet50"), tmp_path / "r50.pth"))
    assert "unexpected tensor 'layer1.0.conv3.weight' (198 the backbone does not have)" in error.message
    state = reference_state("torchvision:resnet18") | {"layer5.0.conv1.weight": torch.zeros(1)}
    error = one_line_error("resnet18", save_weights(state, tmp_path / "r18.pth"))
    assert "unexpected tensor 'layer5.0.conv1.weight' (1 the backbone does not have)" in error.message


def test_a_pickled_model_is_refused_without_unpickling_it(tmp_path):
    path = tmp_path / "full_model.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), path)
    error = one_line_error("resnet18", path)
    assert "not a plain state dict" in error.message
    assert "torch.save(model.state_dict(), path)" in error.hint
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert "not a readable torch file" in one_line_error("resnet18", tmp_path / "junk.pt").message
    (tmp_path / "weights.bin").write_bytes(b"")
    assert "unknown weight file type '.bin'" in one_line_error("resnet18", tmp_path / "weights.bin").message


def legacy_cases() -> list[dict]:
    return [pytest.param(model, id=f"{model['backbone']}{model['kwargs']}") for model in LEGACY["models"]]


@pytest.mark.parametrize("model", legacy_cases())
def test_legacy_edgedml_weights_are_upgraded(model, images, tmp_path):
    legacy = seeded_state(model["state"])
    backbone = create_backbone(model["backbone"], **model["kwargs"])
    backbone.load_state_dict(upgrade_legacy_state(model["backbone"], legacy))
    assert_features_match(features_of(backbone, images), model["features"])
    loaded = create_backbone(
        model["backbone"], weights=save_weights(legacy, tmp_path / "old.safetensors"), **model["kwargs"]
    )
    assert_features_match(features_of(loaded, images), model["features"])


def test_an_old_run_checkpoint_still_loads(images, tmp_path):
    """A run directory written before the rename: ``model.backbone.stem.0.weight`` and the head, as edgedml saved."""
    legacy = next(model for model in LEGACY["models"] if model["backbone"] == "resnet18")
    head = {"head.weight": torch.randn(8, 512), "head.bias": torch.randn(8)}
    model_state = with_prefix("backbone.", seeded_state(legacy["state"])) | head
    assert set(upgrade_model_state("resnet18", model_state)) == set(
        EmbeddingModel(create_backbone("resnet18"), 8).state_dict()
    )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TrainConfig(backbone="resnet18", dim=8, input_size=64).to_yaml(), encoding="utf-8")
    save_checkpoint(run / "best.safetensors", with_prefix(MODEL, model_state), {"epoch": 1})
    loaded, _ = load_run_model(run, device="cpu")
    assert_features_match(features_of(loaded.backbone, images), legacy["features"])
    assert torch.equal(loaded.head.weight, head["head.weight"])


def test_current_layouts_pass_the_upgrade_unchanged():
    for name in ("resnet18", "mobilenetv2", "tiny"):
        state = create_backbone(name).state_dict()
        assert upgrade_legacy_state(name, state) is state
