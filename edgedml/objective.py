"""What one training step computes, built once for the trainer and the memory planner alike.

``TrainingNetwork`` is the module trained (and wrapped by DDP): the embedding model plus, with
S2SD, its auxiliary heads; it returns ``StepOutputs``. An objective maps (outputs, labels) to the
loss: the run's loss on the base embedding, wrapped by the cross-batch memory when one is
configured, and by S2SD self-distillation or a frozen teacher when asked (docs/methods.md §2-4).
``make_optimizer`` is the optimizer both build over the network's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edgedml.config import TrainConfig
from edgedml.distill import AuxiliaryHeads, S2SDLoss, TeacherDistillLoss
from edgedml.losses import create_loss
from edgedml.memory import CrossBatchLoss, CrossBatchMemory, Gather, build_memory_adapter, local_gather
from edgedml.models import EmbeddingModel


@dataclass
class StepOutputs:
    embeddings: torch.Tensor  # (B, D) raw base embedding, what the run's loss takes
    features: torch.Tensor  # (B, F) pooled backbone features
    aux: list[torch.Tensor] = field(default_factory=list)  # S2SD heads' normalized embeddings
    images: torch.Tensor | None = None  # the batch, for a teacher that embeds it itself


class TrainingNetwork(nn.Module):
    """model: the embedding model that is exported; aux_heads: training-only S2SD heads (or None).

    Fine-tuning switches (docs/methods.md §7): ``freeze_bn`` keeps the backbone's BatchNorm layers in
    eval mode (running statistics frozen) with their affine parameters untrained, whatever ``train()``
    is called with; ``backbone_frozen`` (set per epoch by the trainer) runs the backbone without
    gradients and in eval mode, so that only the heads learn.
    """

    def __init__(self, model: EmbeddingModel, aux_heads: AuxiliaryHeads | None = None, freeze_bn: bool = False):
        super().__init__()
        self.model = model
        self.aux_heads = aux_heads
        self.freeze_bn = freeze_bn
        self.backbone_frozen = False
        if freeze_bn:
            for module in batch_norms(model.backbone):
                module.requires_grad_(False)

    def train(self, mode: bool = True) -> TrainingNetwork:
        super().train(mode)
        if mode and self.backbone_frozen:
            self.model.backbone.eval()
        elif mode and self.freeze_bn:
            for module in batch_norms(self.model.backbone):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if self.backbone_frozen:
            with torch.no_grad():
                features = self.model.features(images)
        else:
            features = self.model.features(images)
        aux = self.aux_heads(features) if self.aux_heads is not None else []
        return self.model.head(features), features, aux


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def build_network(config: TrainConfig, model: EmbeddingModel) -> TrainingNetwork:
    heads = AuxiliaryHeads(model.backbone.num_features, config.aux_dim_list) if config.distill == "s2sd" else None
    return TrainingNetwork(model, heads, freeze_bn=config.freezes_bn)


class Objective(nn.Module):
    """The step's loss from its outputs. kind: ``plain`` | ``s2sd`` | ``teacher``."""

    def __init__(self, loss: nn.Module, kind: str = "plain"):
        super().__init__()
        self.loss = loss
        self.kind = kind

    @property
    def memory_loss(self) -> CrossBatchLoss | None:
        base = (
            self.loss.base_loss
            if self.kind == "s2sd"
            else self.loss.student_loss
            if self.kind == "teacher"
            else self.loss
        )
        return base if isinstance(base, CrossBatchLoss) else None

    def forward(self, outputs: StepOutputs, labels: torch.Tensor) -> torch.Tensor:
        embeddings = outputs.embeddings.float()
        if self.kind == "s2sd":
            return self.loss(embeddings, labels, [a.float() for a in outputs.aux], outputs.features.float())
        if self.kind == "teacher":
            return self.loss(embeddings, labels, outputs.images)
        return self.loss(embeddings, labels)


def build_objective(
    config: TrainConfig,
    memory_size: int,
    gather: Gather = local_gather,
    teacher: tuple[nn.Module, int] | None = None,
) -> Objective:
    """memory_size: resolved slot count (0: no memory); teacher: (frozen model, its input size) for ``--teacher``."""
    base: nn.Module = _run_loss(config)
    if config.memory != "none" and memory_size > 0:
        adapter = build_memory_adapter(
            config.memory, config.dim, config.axbn_q, config.axbn_r, config.axbn_p0, config.axbn_gain_interval
        )
        memory = CrossBatchMemory(memory_size, config.dim, config.memory_storage)
        base = CrossBatchLoss(
            base, memory, adapter, config.memory_warmup, config.memory_weight, config.memory_batch_loss, gather
        )
    if config.distill == "s2sd":
        aux_losses = [_run_loss(config) for _ in config.aux_dim_list]
        return Objective(
            S2SDLoss(
                base,
                aux_losses,
                config.distill_weight,
                config.distill_temperature,
                config.feature_distill_weight,
                config.feature_distill_delay,
                config.feature_distill,
            ),
            kind="s2sd",
        )
    if teacher is not None:
        model, input_size = teacher
        return Objective(
            TeacherDistillLoss(base, model, input_size, config.distill_weight, config.distill_temperature),
            kind="teacher",
        )
    return Objective(base)


def _run_loss(config: TrainConfig) -> nn.Module:
    return create_loss(config.loss, config.margin, config.mining, config.normalize)


def make_optimizer(network: TrainingNetwork, config: TrainConfig) -> torch.optim.Optimizer:
    """The run's optimizer over the trainable parameters, in two groups: the backbone's, whose learning rate is
    ``lr * backbone_lr_mult``, and the heads' (embedding head, S2SD heads) at ``lr``. Each group carries its
    ``lr_mult``, which the trainer's schedule multiplies in."""
    backbone = [p for p in network.model.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in network.model.backbone.parameters()}
    heads = [p for p in network.parameters() if p.requires_grad and id(p) not in backbone_ids]
    mult = config.backbone_lr_multiplier
    groups = [
        {"params": backbone, "lr": config.lr * mult, "lr_mult": mult, "name": "backbone"},
        {"params": heads, "lr": config.lr, "lr_mult": 1.0, "name": "heads"},
    ]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
