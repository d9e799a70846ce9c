"""The cross-batch memory (XBM, Wang et al., CVPR 2020, seed 001; docs/methods.md §2).

A true ring buffer of the last M embeddings (detached) and their labels, held in registered
buffers so ``.to()``, ``state_dict()`` and checkpoints carry it. Storage may be fp16 (half the
bytes); reads return fp32. Until the buffer has wrapped once only the filled part is used, and
"filled" is a counter, not a guess from label values. Every enqueue returns the slot each item
was written to, which is how an item's own copy is kept out of its positives.
"""

from __future__ import annotations

import torch
from torch import nn

STORAGE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class CrossBatchMemory(nn.Module):
    """size: M slots; dim: D; storage: ``fp32`` or ``fp16``.

    Buffers: ``embeddings`` (M, D), ``labels`` (M,) long (-1 where empty), ``pointer`` (next
    slot to write) and ``filled`` (number of valid slots), both 0-d long.
    """

    def __init__(self, size: int, dim: int, storage: str = "fp32"):
        super().__init__()
        if size < 1:
            raise ValueError(f"memory size must be positive, got {size}")
        self.register_buffer("embeddings", torch.zeros(size, dim, dtype=STORAGE_DTYPES[storage]))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Write a batch (S, D) / (S,) after the newest entry, wrapping around; return each item's slot (S,).

        A batch larger than the memory keeps its last M items; the others get slot -1.
        """
        count = len(labels)
        kept = min(count, self.size)
        slots = torch.full((count,), -1, dtype=torch.long, device=labels.device)
        written = (self.pointer + torch.arange(kept, device=self.pointer.device)) % self.size
        self.embeddings.index_copy_(0, written, embeddings[count - kept :].detach().to(self.embeddings.dtype))
        self.labels.index_copy_(0, written, labels[count - kept :].to(self.labels.device))
        slots[count - kept :] = written.to(slots.device)
        self.pointer.copy_((self.pointer + kept) % self.size)
        self.filled.copy_(torch.clamp(self.filled + kept, max=self.size))
        return slots

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The filled part: embeddings (F, D) in fp32 and labels (F,)."""
        filled = int(self.filled)
        return self.embeddings[:filled].float(), self.labels[:filled]

    @torch.no_grad()
    def transform_(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Apply ``z ← z * scale + shift`` (per dimension) to the filled part, in place."""
        filled = self.embeddings[: int(self.filled)]
        filled.mul_(scale.to(filled.dtype)).add_(shift.to(filled.dtype))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.embeddings.shape[1]}, storage={self.embeddings.dtype}"
