"""State-dict names of the built-in backbones: legacy edgedml and timm layouts -> torchvision's.

The built-in ``resnet*`` and ``mobilenetv2`` use torchvision's names (``conv1``, ``layer1.0.conv1``,
``features.3.conv.1.0``). Two other layouts hold the same tensors under other names:

- edgedml's own layout before it took torchvision's (``stem.0``, ``stages.3.conv1.0``, ``features.3.block.3.0``),
  found in run checkpoints written by older versions; ``upgrade_legacy_state`` renames them.
- timm's: its ResNets already use torchvision's names (only the classifier differs), its ``mobilenetv2_100`` is built
  by the EfficientNet builder (``conv_stem``, ``bn1``, ``blocks.1.0.conv_pw``, ``conv_head``, ``bn2``);
  ``timm_to_torchvision`` renames them.

Each function takes a backbone's state dict (keys without the ``backbone.`` prefix) and returns the renamed dict;
one in another layout comes back unchanged, so ``to_torchvision_names`` can apply both.
"""

from __future__ import annotations

import re

import torch

BACKBONE_PREFIX = "backbone."
TIMM_PREFIX = "timm:"
CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.fc.")

State = dict[str, torch.Tensor]

# Old MobileNetV2 block paths (under ``features.i.block.``) -> torchvision's (under ``features.i.conv.``).
_LEGACY_EXPANDED_BLOCK = {"0": "0.0", "1": "0.1", "3.0": "1.0", "3.1": "1.1", "4": "2", "5": "3"}
_LEGACY_DEPTHWISE_BLOCK = {"0.0": "0.0", "0.1": "0.1", "1": "1", "2": "2"}
# timm's MobileNetV2 block modules -> torchvision's paths under ``features.i.conv.``.
_TIMM_INVERTED_RESIDUAL = {"conv_pw": "0.0", "bn1": "0.1", "conv_dw": "1.0", "bn2": "1.1", "conv_pwl": "2", "bn3": "3"}
_TIMM_DEPTHWISE_SEPARABLE = {"conv_dw": "0.0", "bn1": "0.1", "conv_pw": "1", "bn2": "2"}
_LEGACY_RESNET_BLOCK = {"conv1.0": "conv1", "conv1.1": "bn1", "conv2.0": "conv2", "conv2.1": "bn2"}
_LEGACY_RESNET18_BLOCKS_PER_STAGE = 2


def _is_resnet(backbone_name: str) -> bool:
    return re.fullmatch(r"resnet\d+", backbone_name) is not None


def expected_format(backbone_name: str) -> str:
    """What a weight file for this backbone should be, for error messages."""
    if backbone_name.startswith(TIMM_PREFIX):
        return f"a timm {backbone_name[len(TIMM_PREFIX) :]} state dict (.safetensors or .pth)"
    if _is_resnet(backbone_name):
        return f"a torchvision {backbone_name} state dict (.pth) or a timm {backbone_name} .safetensors"
    if backbone_name == "mobilenetv2":
        return "a torchvision mobilenet_v2 state dict (.pth) or a timm mobilenetv2_100 .safetensors"
    return f"a state dict of edgedml's {backbone_name} backbone (.safetensors or .pth)"


def to_torchvision_names(backbone_name: str, state: State) -> State:
    """A backbone state dict in any known layout (torchvision, timm, legacy edgedml) under torchvision's names."""
    return timm_to_torchvision(backbone_name, upgrade_legacy_state(backbone_name, state))


def upgrade_legacy_state(backbone_name: str, state: State) -> State:
    """Old edgedml ``resnet18`` / ``mobilenetv2`` names -> torchvision's; any other state dict unchanged."""
    if backbone_name == "resnet18" and any(key.startswith(("stem.", "stages.")) for key in state):
        return {_legacy_resnet18_key(key): value for key, value in state.items()}
    if backbone_name == "mobilenetv2" and any(".block." in key for key in state):
        return _rename(state, _legacy_mobilenetv2_names(state))
    return state


def timm_to_torchvision(backbone_name: str, state: State) -> State:
    """timm ``mobilenetv2_100`` names -> torchvision's (timm's ResNets already match); others unchanged."""
    if backbone_name == "mobilenetv2" and "conv_stem.weight" in state:
        return _rename(state, _timm_mobilenetv2_names(state))
    return state


def upgrade_model_state(backbone_name: str, model_state: State) -> State:
    """An ``EmbeddingModel`` state dict (``backbone.*``, ``head.*``) with its backbone keys upgraded from the legacy
    layout: what loading a run checkpoint written by an older edgedml needs."""
    backbone = {
        key[len(BACKBONE_PREFIX) :]: value for key, value in model_state.items() if key.startswith(BACKBONE_PREFIX)
    }
    others = {key: value for key, value in model_state.items() if not key.startswith(BACKBONE_PREFIX)}
    upgraded = upgrade_legacy_state(backbone_name, backbone)
    return {**{BACKBONE_PREFIX + key: value for key, value in upgraded.items()}, **others}


def _rename(state: State, names: dict[str, str]) -> State:
    return {names.get(key, key): value for key, value in state.items()}


def _legacy_resnet18_key(key: str) -> str:
    """``stem.0`` -> ``conv1``, ``stem.1`` -> ``bn1``, ``stages.i.conv1.0`` -> ``layer{i//2+1}.{i%2}.conv1`` ..."""
    module, leaf = key.rsplit(".", 1)
    if module in ("stem.0", "stem.1"):
        return ("conv1." if module == "stem.0" else "bn1.") + leaf
    match = re.fullmatch(r"stages\.(\d+)\.(conv1\.[01]|conv2\.[01]|shortcut\.[01])", module)
    if match is None:
        return key
    stage, block = divmod(int(match.group(1)), _LEGACY_RESNET18_BLOCKS_PER_STAGE)
    part = match.group(2)
    renamed = part.replace("shortcut.", "downsample.") if part.startswith("shortcut") else _LEGACY_RESNET_BLOCK[part]
    return f"layer{stage + 1}.{block}.{renamed}.{leaf}"


def _legacy_mobilenetv2_names(state: State) -> dict[str, str]:
    """Old MobileNetV2: blocks under ``features.i.block``, the head conv and its BatchNorm as ``features.n`` and
    ``features.n+1``; torchvision: ``features.i.conv`` and ``features.n.0/1``."""
    names = {}
    direct = sorted({int(m.group(1)) for key in state if (m := re.fullmatch(r"features\.(\d+)\.[a-z_]+", key))})
    head = direct[0] if direct else None
    for key in state:
        module, leaf = key.rsplit(".", 1)
        block = re.fullmatch(r"features\.(\d+)\.block\.(.+)", module)
        if block is not None:
            index, path = block.groups()
            table = _LEGACY_DEPTHWISE_BLOCK if f"features.{index}.block.0.0.weight" in state else _LEGACY_EXPANDED_BLOCK
            if path in table:
                names[key] = f"features.{index}.conv.{table[path]}.{leaf}"
        elif head is not None and module in (f"features.{head}", f"features.{head + 1}"):
            names[key] = f"features.{head}.{0 if module == f'features.{head}' else 1}.{leaf}"
    return names


def _timm_mobilenetv2_names(state: State) -> dict[str, str]:
    """timm: ``conv_stem``/``bn1``, ``blocks.stage.block.<module>``, ``conv_head``/``bn2``; torchvision numbers the
    blocks 1..n in order and puts the head conv at ``features.n+1``."""
    blocks = sorted(
        {(int(m.group(1)), int(m.group(2))) for key in state if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", key))}
    )
    position = {block: index + 1 for index, block in enumerate(blocks)}
    head = len(blocks) + 1
    top = {
        "conv_stem": "features.0.0",
        "bn1": "features.0.1",
        "conv_head": f"features.{head}.0",
        "bn2": f"features.{head}.1",
    }
    names = {}
    for key in state:
        module, leaf = key.rsplit(".", 1)
        if module in top:
            names[key] = f"{top[module]}.{leaf}"
            continue
        match = re.fullmatch(r"blocks\.(\d+)\.(\d+)\.(\w+)", module)
        if match is None:
            continue
        stage, block, part = int(match.group(1)), int(match.group(2)), match.group(3)
        inverted = f"blocks.{stage}.{block}.conv_pwl.weight" in state
        table = _TIMM_INVERTED_RESIDUAL if inverted else _TIMM_DEPTHWISE_SEPARABLE
        if part in table:
            names[key] = f"features.{position[stage, block]}.conv.{table[part]}.{leaf}"
    return names
