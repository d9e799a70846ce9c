"""Cross-batch memory: ring buffer, self slots, XBN / AXBN adapters, warm-up, fp16, bounded mining."""

from __future__ import annotations

import pytest
import torch

from edgedml.budget.trace import AllocationTimeline
from edgedml.config import TrainConfig
from edgedml.losses import ShadowLoss, create_loss
from edgedml.memory import (
    AXBNAdapter,
    CrossBatchLoss,
    CrossBatchMemory,
    KalmanMoments,
    XBNAdapter,
    moments,
    resolve_memory_size,
)
from edgedml.memory.adapters import steady_state_gain


def rows(count: int, dim: int = 3, start: float = 0.0) -> torch.Tensor:
    return torch.arange(start, start + count * dim).reshape(count, dim).float()


def test_ring_buffer_uses_only_the_filled_part_until_it_wraps():
    memory = CrossBatchMemory(size=5, dim=3)
    slots = memory.enqueue(rows(3), torch.tensor([0, 1, 2]))
    assert slots.tolist() == [0, 1, 2]
    stored, labels = memory.contents()
    assert torch.equal(stored, rows(3)) and labels.tolist() == [0, 1, 2]
    slots = memory.enqueue(rows(3, start=100), torch.tensor([3, 4, 5]))
    assert slots.tolist() == [3, 4, 0]  # wraps: the oldest item (slot 0) is overwritten, nothing else
    assert (int(memory.pointer), int(memory.filled)) == (1, 5)
    stored, labels = memory.contents()
    assert labels.tolist() == [5, 1, 2, 3, 4]
    assert torch.equal(stored[0], rows(3, start=100)[2])


def test_batch_larger_than_memory_keeps_its_last_items():
    memory = CrossBatchMemory(size=4, dim=3)
    slots = memory.enqueue(rows(6), torch.arange(6))
    assert slots.tolist() == [-1, -1, 0, 1, 2, 3]
    assert memory.contents()[1].tolist() == [2, 3, 4, 5]


def test_fp16_storage_halves_the_bytes_and_reads_back_fp32():
    memory = CrossBatchMemory(size=8, dim=4, storage="fp16")
    values = torch.randn(3, 4)
    memory.enqueue(values, torch.arange(3))
    assert memory.embeddings.dtype == torch.float16
    assert memory.embeddings.element_size() * memory.embeddings.nelement() == 8 * 4 * 2
    stored, _ = memory.contents()
    assert stored.dtype == torch.float32
    assert torch.equal(stored, values.half().float())


def test_memory_buffers_are_in_the_state_dict():
    memory = CrossBatchMemory(size=4, dim=2)
    memory.enqueue(rows(3, dim=2), torch.arange(3))
    copy = CrossBatchMemory(size=4, dim=2)
    copy.load_state_dict(memory.state_dict())
    assert torch.equal(copy.embeddings, memory.embeddings) and int(copy.filled) == 3 and int(copy.pointer) == 3


def test_xbn_gives_the_memory_exactly_the_batch_moments():
    generator = torch.Generator().manual_seed(0)
    stored = torch.randn(50, 6, generator=generator) * 3 + 1
    batch = torch.randn(8, 6, generator=generator) * 0.5 - 2
    adapted = XBNAdapter()(stored, batch)
    adapted_mean, adapted_std = moments(adapted)
    batch_mean, batch_std = moments(batch)
    torch.testing.assert_close(adapted_mean, batch_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(adapted_std, batch_std, rtol=1e-5, atol=1e-6)


def test_kalman_filter_follows_the_equations_by_hand():
    """q = 1, r = 0.5, p0 = 1, |B| = 2 (r/|B| = 0.25), observations 1 then 3.
    step 1: P = 2, K = 2 / 2.25 = 8/9, u = 8/9, P = (1/9) * 2 = 2/9
    step 2: P = 11/9, K = (11/9) / (11/9 + 1/4) = 44/53, u = 8/9 + 44/53 (3 - 8/9) = 8/9 + 44/53 * 19/9,
            P = (9/53)(11/9) = 11/53
    with the gain held for 2 iterations, step 2 uses K = 8/9: u = 8/9 + 8/9 * 19/9, P = (1/9)(11/9) = 11/81
    """
    fresh = KalmanMoments(dim=1, q=1.0, r=0.5, p0=1.0, gain_interval=1)
    assert fresh.update(torch.tensor([1.0]), batch_size=2).item() == pytest.approx(8 / 9)
    assert fresh.variance.item() == pytest.approx(2 / 9)
    assert fresh.update(torch.tensor([3.0]), batch_size=2).item() == pytest.approx(8 / 9 + 44 / 53 * 19 / 9)
    assert fresh.variance.item() == pytest.approx(11 / 53)
    held = KalmanMoments(dim=1, q=1.0, r=0.5, p0=1.0, gain_interval=2)
    held.update(torch.tensor([1.0]), batch_size=2)
    assert held.update(torch.tensor([3.0]), batch_size=2).item() == pytest.approx(8 / 9 + 8 / 9 * 19 / 9)
    assert held.variance.item() == pytest.approx(11 / 81)
    assert held.gain.item() == pytest.approx(8 / 9)


def test_axbn_with_zero_measurement_noise_is_xbn():
    generator = torch.Generator().manual_seed(1)
    axbn, xbn = AXBNAdapter(dim=4, r=0.0, gain_interval=3), XBNAdapter()
    stored = torch.randn(30, 4, generator=generator)
    for _ in range(5):
        batch = torch.randn(6, 4, generator=generator)
        torch.testing.assert_close(axbn(stored, batch), xbn(stored, batch), rtol=1e-6, atol=1e-6)


def test_axbn_smooths_noisy_batch_means():
    """With measurement noise the estimate moves only part of the way toward each observation."""
    axbn = AXBNAdapter(dim=1, q=0.01, r=1.0, gain_interval=1)
    stored = torch.randn(20, 1)
    for value in (1.0, -1.0, 1.0, -1.0):
        batch = torch.full((4, 1), value) + torch.tensor([[0.1], [-0.1], [0.2], [-0.2]])
        axbn(stored, batch)
    assert abs(axbn.mean_filter.estimate.item()) < 0.6  # XBN would sit at the last batch's mean, -1


def wrapped(warmup: int = 0, adapter=None, batch_term: bool = False, size: int = 64) -> CrossBatchLoss:
    return CrossBatchLoss(
        ShadowLoss(margin=0.5), CrossBatchMemory(size, 4), adapter, warmup_iters=warmup, batch_term=batch_term
    )


def test_warmup_neither_fills_nor_uses_the_memory():
    loss = wrapped(warmup=2, batch_term=True)
    embeddings, labels = torch.randn(6, 4), torch.arange(6) % 2
    for _ in range(2):
        torch.testing.assert_close(loss(embeddings, labels), ShadowLoss(margin=0.5)(embeddings, labels))
        assert int(loss.memory.filled) == 0
    loss(embeddings, labels)
    assert int(loss.memory.filled) == 6


def test_memory_loss_removes_own_slots_but_keeps_older_copies():
    loss = wrapped()
    embeddings, labels = torch.randn(6, 4), torch.arange(6) % 3
    loss(embeddings, labels)  # slots 0..5
    value = loss(embeddings, labels)  # slots 6..11: the older copies stay positives
    ref = torch.nn.functional.normalize(torch.cat([embeddings, embeddings]), dim=1)
    expected = ShadowLoss(margin=0.5)(
        embeddings, labels, ref_emb=ref, ref_labels=torch.cat([labels, labels]), anchor_ref_index=torch.arange(6, 12)
    )
    torch.testing.assert_close(value, expected)


def test_adapted_embeddings_are_written_back_before_the_batch_is_enqueued():
    loss = wrapped(adapter=XBNAdapter())
    first, second = torch.randn(8, 4), torch.randn(8, 4) * 3
    labels = torch.arange(8) % 2
    loss(first, labels)
    loss(second, labels)
    stored, _ = loss.memory.contents()
    batch_mean, batch_std = moments(torch.nn.functional.normalize(second, dim=1))
    old_mean, old_std = moments(stored[:8])
    torch.testing.assert_close(old_mean, batch_mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(old_std, batch_std, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stored[8:], torch.nn.functional.normalize(second, dim=1))


def test_memory_size_as_count_or_fraction():
    assert resolve_memory_size(8192, 1000) == 8192
    assert resolve_memory_size(0.5, 1000) == 500
    assert resolve_memory_size(1.0, 1000) == 1000
    with pytest.raises(ValueError):
        resolve_memory_size(10.5, 1000)


def peak_against_memory(loss_name: str, mining: str, memory_size: int, batch: int = 8) -> int:
    """Peak bytes of one loss forward+backward against a full 10-class memory of ``memory_size`` items."""
    generator = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(memory_size, 16, generator=generator), dim=1)
    ref_labels = torch.arange(memory_size) % 10
    embeddings = torch.randn(batch, 16, generator=generator, requires_grad=True)
    labels = torch.arange(batch) % 10
    loss = create_loss(loss_name, 0.2, mining, True)
    with AllocationTimeline() as timeline:
        loss(
            embeddings, labels, ref_emb=ref, ref_labels=ref_labels, anchor_ref_index=torch.full((batch,), -1)
        ).backward()
    return timeline.peak_bytes()


@pytest.mark.parametrize("loss_name", ["shadow", "triplet"])
@pytest.mark.parametrize("mining", ["all", "semihard", "hard"])
def test_mining_against_a_large_memory_stays_bounded(loss_name, mining, monkeypatch):
    """10 classes, M = 4096: ~410 positives x ~3690 negatives per anchor, 12M triplets for 8 anchors.
    A triplet tensor would need 12M x 8 bytes x 3 = 290 MB; we allow a chunk plus (S, M) matrices."""
    import edgedml.losses.pml as pml

    monkeypatch.setattr(pml, "CHUNK_TRIPLETS", 1 << 16)
    batch, memory_size = 8, 4096
    chunk_bytes = 40 * (1 << 16) * 8  # a few dozen chunk-sized index / value tensors
    matrix_bytes = 40 * batch * memory_size * 8  # a few dozen (S, M) matrices
    peak = peak_against_memory(loss_name, mining, memory_size, batch)
    assert peak < chunk_bytes + matrix_bytes, peak
    assert peak < 0.1 * (12_000_000 * 8 * 3)


def test_memory_state_is_checkpointed_and_restored_by_resume(tmp_path):
    """Two epochs straight vs one epoch, then --resume to two: same weights and same memory, bit for bit."""
    from safetensors.torch import load_file

    from edgedml.config import TrainConfig
    from edgedml.training import Trainer

    options = dict(
        data="digits",
        batch_size=16,
        samples_per_class=4,
        epochs=2,
        scheduler="none",
        dim=16,
        input_size=16,
        memory="axbn",
        memory_size=200,
        memory_warmup=3,
        axbn_gain_interval=2,
        device="cpu",
    )
    Trainer(TrainConfig.from_sources(overrides=options), tmp_path / "straight").fit()
    Trainer(TrainConfig.from_sources(overrides={**options, "epochs": 1}), tmp_path / "resumed").fit()
    Trainer.resume(tmp_path / "resumed", epochs=2).fit()
    straight = load_file(str(tmp_path / "straight" / "last.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    memory_keys = [k for k in straight if k.startswith("loss.")]
    assert {"loss.memory.embeddings", "loss.memory.pointer", "loss.adapter.mean_filter.gain", "loss.iteration"} <= set(
        memory_keys
    )
    for key in memory_keys + [k for k in straight if k.startswith("model.")]:
        assert torch.equal(straight[key], resumed[key]), key
    assert int(straight["loss.memory.filled"]) == 200


@pytest.mark.parametrize(("q", "r", "batch"), [(1.0, 0.01, 16), (1e-5, 0.01, 16), (1e-5, 0.01, 64), (1e-6, 0.02, 8)])
def test_steady_state_gain_is_where_the_filter_settles(q, r, batch):
    filt = KalmanMoments(dim=1, q=q, r=r, p0=1.0, gain_interval=1)
    for _ in range(20_000):
        filt.update(torch.zeros(1), batch)
    assert float(filt.gain) == pytest.approx(steady_state_gain(q, r, batch), rel=1e-4)


def test_the_former_axbn_defaults_make_it_xbn_and_the_new_ones_do_not():
    assert steady_state_gain(1.0, 0.01, 16) == pytest.approx(0.9994, abs=1e-4)  # K = 1 is XBN
    defaults = TrainConfig()
    assert steady_state_gain(defaults.axbn_q, defaults.axbn_r, 16) == pytest.approx(0.1187, abs=1e-4)
    assert steady_state_gain(defaults.axbn_q, 0.0, 16) == 1.0  # r = 0: XBN
