"""Distillation into low-dimensional embeddings: S2SD (self-distillation from auxiliary heads) and its post-hoc form."""

from edgedml.distill.s2sd import AuxiliaryHeads, S2SDLoss, TeacherDistillLoss, similarity_kl

__all__ = ["AuxiliaryHeads", "S2SDLoss", "TeacherDistillLoss", "similarity_kl"]
