"""S2SD: simultaneous similarity-based self-distillation (Roth et al., ICML 2021, seed 004; docs/methods.md §4).

Auxiliary heads on the backbone's pooled features, ``Linear(F, t) -> ReLU -> Linear(t, t)`` and L2
normalization, one per target dimension t (one head: DSD; several: MSD), each trained with its own
instance of the run's loss. Their batch similarity matrices teach the low-dimensional base
embedding through a KL divergence between row-wise softmaxes; the teacher matrices are detached, so
distillation trains only the base head and, through it, the backbone. MSDF adds the normalized
(detached) pooled features as one more teacher after ``feature_delay`` iterations. The heads never
reach inference: the exported and evaluated model is the base embedding alone.

    KL(S_base, S_t) = kl_div(log_softmax(S_base / T), softmax(S_t.detach() / T), sum) · T² / B
    loss = (base_loss + mean(aux_losses)) / 2 + w · mean(KLs) + w_feat · KL(S_base, n nᵀ)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AuxiliaryHeads(nn.Module):
    """features: (B, F) -> one L2-normalized (B, t) embedding per target dimension t."""

    def __init__(self, in_features: int, dims: list[int]):
        super().__init__()
        self.dims = list(dims)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim)) for dim in self.dims
        )

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [F.normalize(head(features), dim=1) for head in self.heads]


def similarity_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL between row-wise softmaxes of the (B, B) cosine similarity matrices; the teacher is detached.

    student: (B, D) and teacher: (B, D') L2-normalized embeddings of the same batch.
    """
    batch = len(student)
    student_similarity = student @ student.T
    teacher_similarity = (teacher @ teacher.T).detach()
    log_student = F.log_softmax(student_similarity / temperature, dim=1)
    target = F.softmax(teacher_similarity / temperature, dim=1)
    return F.kl_div(log_student, target, reduction="sum") * temperature**2 / batch


class S2SDLoss(nn.Module):
    """The run's loss for the base embedding, one loss instance per auxiliary head, and the distillation terms.

    base_loss: takes the base embedding as the run's loss takes it (and may be a cross-batch memory
    wrapper: the memory holds the base embedding); aux_losses: one per head, same kind as base_loss.
    """

    def __init__(
        self,
        base_loss: nn.Module,
        aux_losses: list[nn.Module],
        weight: float = 50.0,
        temperature: float = 1.0,
        feature_weight: float = 50.0,
        feature_delay: int = 1000,
        feature_distill: bool = False,
    ):
        super().__init__()
        self.base_loss = base_loss
        self.aux_losses = nn.ModuleList(aux_losses)
        self.weight = weight
        self.temperature = temperature
        self.feature_weight = feature_weight
        self.feature_delay = feature_delay
        self.feature_distill = feature_distill
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    @property
    def feature_active(self) -> bool:
        return self.feature_distill and int(self.iteration) >= self.feature_delay

    def forward(
        self, base: torch.Tensor, labels: torch.Tensor, aux: list[torch.Tensor], features: torch.Tensor
    ) -> torch.Tensor:
        """base: (B, D) raw base embedding; aux: the heads' normalized embeddings; features: (B, F) pooled."""
        feature_active = self.feature_active
        self.iteration += 1
        aux_loss = torch.stack(
            [loss(embedding, labels) for loss, embedding in zip(self.aux_losses, aux, strict=True)]
        ).mean()
        total = (self.base_loss(base, labels) + aux_loss) / 2
        student = F.normalize(base, dim=1)
        distill = torch.stack([similarity_kl(student, teacher, self.temperature) for teacher in aux]).mean()
        total = total + self.weight * distill
        if feature_active:
            total = total + self.feature_weight * similarity_kl(student, F.normalize(features, dim=1), self.temperature)
        return total


class TeacherDistillLoss(nn.Module):
    """Post-hoc S2SD: a frozen, trained high-dimensional model teaches a new low-dimensional student.

    loss = student_loss + w · KL(S_student, S_teacher), the teacher's embeddings computed without
    gradient on the same images (resized to the teacher's input size when it differs).
    """

    def __init__(
        self,
        student_loss: nn.Module,
        teacher: nn.Module,
        teacher_input_size: int,
        weight: float = 50.0,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.student_loss = student_loss
        self.teacher = teacher.eval().requires_grad_(False)
        self.teacher_input_size = teacher_input_size
        self.weight = weight
        self.temperature = temperature

    def train(self, mode: bool = True) -> TeacherDistillLoss:
        super().train(mode)
        self.teacher.eval()  # frozen: its BatchNorm statistics never move
        return self

    @torch.no_grad()
    def teacher_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.teacher_input_size:
            size = (self.teacher_input_size, self.teacher_input_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.teacher(images)

    def forward(self, student: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        teacher = self.teacher_embeddings(images)
        distill = similarity_kl(F.normalize(student, dim=1), teacher, self.temperature)
        return self.student_loss(student, labels) + self.weight * distill
