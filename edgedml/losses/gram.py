"""Gram matrices with hand-written backward passes, so that a loss's only state is S x N scalars.

Autograd's backward of ``E @ E.T`` materializes two (S, D) partial gradients and adds them;
the functions here write the gradient of the embeddings once. Norms come from the same
products (``||a|| = sqrt(G_aa)``), which is what keeps Shadow loss memory-linear
(docs/methods.md §1).
"""

from __future__ import annotations

import torch


class _SelfGram(torch.autograd.Function):
    """G = E Eᵀ; backward: dE = (dG + dGᵀ) E, written in one (S, D) buffer."""

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(embeddings)
        return embeddings @ embeddings.T

    @staticmethod
    def backward(ctx, grad_gram: torch.Tensor) -> torch.Tensor:
        (embeddings,) = ctx.saved_tensors
        return (grad_gram + grad_gram.T) @ embeddings


class _CrossGram(torch.autograd.Function):
    """(G = E Rᵀ, ‖E_i‖², ‖R_j‖²) with one gradient buffer per input."""

    @staticmethod
    def forward(ctx, embeddings: torch.Tensor, ref: torch.Tensor):
        ctx.save_for_backward(embeddings, ref)
        gram = embeddings @ ref.T
        sq_emb = torch.linalg.vector_norm(embeddings, dim=1).square()
        sq_ref = torch.linalg.vector_norm(ref, dim=1).square()
        return gram, sq_emb, sq_ref

    @staticmethod
    def backward(ctx, grad_gram, grad_sq_emb, grad_sq_ref):
        embeddings, ref = ctx.saved_tensors
        grad_emb = grad_ref = None
        if ctx.needs_input_grad[0]:
            grad_emb = grad_gram @ ref
            grad_emb.addcmul_(embeddings, (2.0 * grad_sq_emb)[:, None])
        if ctx.needs_input_grad[1]:
            grad_ref = grad_gram.T @ embeddings
            grad_ref.addcmul_(ref, (2.0 * grad_sq_ref)[:, None])
        return grad_emb, grad_ref


def gram_and_norms(
    embeddings: torch.Tensor, ref: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(G, norms_E, norms_R)``: G (S, N) = E Rᵀ, norms (S,) and (N,).

    With ``ref=None`` the batch is its own reference and the norms are ``sqrt(diag G)``.
    """
    if ref is None:
        gram = _SelfGram.apply(embeddings)
        norms = gram.diagonal().clamp(min=0).sqrt()
        return gram, norms, norms
    gram, sq_emb, sq_ref = _CrossGram.apply(embeddings, ref)
    return gram, sq_emb.sqrt(), sq_ref.sqrt()
