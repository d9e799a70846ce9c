"""Shadow loss against a hand-written per-triplet loop, its gradient, and its memory-linear property."""

from __future__ import annotations

import itertools

import pytest
import torch

from edgedml.losses import ShadowLoss, create_loss, shadow_distances
from edgedml.losses.gram import _CrossGram, _SelfGram

MARGIN = 0.2


def loop_delta(anchor: torch.Tensor, other: torch.Tensor, normalize: bool) -> torch.Tensor:
    """δ(a, x) = | ‖a‖ − a·x/‖a‖ |, straight from the definition (docs/methods.md §1)."""
    if normalize:
        anchor, other = anchor / anchor.norm(), other / other.norm()
    norm = anchor.norm()
    return (norm - anchor.dot(other) / norm).abs()


def loop_loss(emb, labels, ref=None, ref_labels=None, self_slot=None, mining="all", normalize=True, margin=MARGIN):
    """Per-triplet reference: Python loops over (a, p, n), averaged over the non-zero triplets."""
    if ref is None:
        ref, ref_labels, self_slot = emb, labels, list(range(len(emb)))
    terms = []
    for a in range(len(emb)):
        positives = [j for j in range(len(ref)) if ref_labels[j] == labels[a] and j != self_slot[a]]
        negatives = [j for j in range(len(ref)) if ref_labels[j] != labels[a]]
        d_pos = {p: loop_delta(emb[a], ref[p], normalize) for p in positives}
        d_neg = {n: loop_delta(emb[a], ref[n], normalize) for n in negatives}
        if mining == "hard":
            if positives and negatives:
                hardest = torch.stack(list(d_pos.values())).max() - torch.stack(list(d_neg.values())).min()
                terms.append(torch.relu(hardest + margin))
            continue
        for p, n in itertools.product(positives, negatives):
            if mining == "semihard" and not d_pos[p] < d_neg[n] < d_pos[p] + margin:
                continue
            terms.append(torch.relu(d_pos[p] - d_neg[n] + margin))
    nonzero = [t for t in terms if t > 0]
    if not nonzero:
        return emb.sum() * 0.0
    return torch.stack(nonzero).sum() / len(nonzero)


def batch(seed=0, size=12, dim=5, classes=3):
    generator = torch.Generator().manual_seed(seed)
    emb = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    labels = torch.arange(size) % classes
    return emb, labels


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_per_triplet_loop_and_its_gradient(mining, normalize):
    emb, labels = batch(seed=1)
    # a wide margin keeps the semi-hard band populated for unnormalized (long) vectors
    margin = 0.2 if normalize else 1.5
    ours_input = emb.clone().requires_grad_(True)
    loop_input = emb.clone().requires_grad_(True)
    ours = ShadowLoss(margin=margin, mining=mining, normalize=normalize)(ours_input, labels)
    expected = loop_loss(loop_input, labels.tolist(), mining=mining, normalize=normalize, margin=margin)
    assert expected > 0
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_input.grad, loop_input.grad, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("normalize", [True, False])
def test_reference_embeddings_with_self_slots(mining, normalize):
    """Against a memory: the anchor's own slot is excluded, other copies of its label stay positives."""
    emb, labels = batch(seed=2, size=6)
    memory, memory_labels = batch(seed=3, size=10)
    ref = torch.cat([memory, emb])  # the batch was enqueued into slots 10..15
    ref_labels = torch.cat([memory_labels, labels])
    self_slot = torch.arange(10, 16)
    margin = 0.2 if normalize else 1.5
    ours_input = emb.clone().requires_grad_(True)
    loop_input = emb.clone().requires_grad_(True)
    ours = ShadowLoss(margin=margin, mining=mining, normalize=normalize)(
        ours_input, labels, ref_emb=ref, ref_labels=ref_labels, anchor_ref_index=self_slot
    )
    expected = loop_loss(
        loop_input, labels.tolist(), ref, ref_labels.tolist(), self_slot.tolist(), mining, normalize, margin
    )
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    ours.backward()
    expected.backward()
    torch.testing.assert_close(ours_input.grad, loop_input.grad, rtol=1e-8, atol=1e-10)


def test_gradient_flows_into_reference_embeddings_that_require_it():
    emb, labels = batch(seed=4, size=6)
    ref, ref_labels = batch(seed=5, size=9)
    ref.requires_grad_(True)
    ours = ShadowLoss(normalize=False, margin=1.5)(emb, labels, ref_emb=ref, ref_labels=ref_labels)
    ours.backward()
    ref_loop = ref.detach().clone().requires_grad_(True)
    loop_loss(emb, labels.tolist(), ref_loop, ref_labels.tolist(), [-1] * 6, normalize=False, margin=1.5).backward()
    torch.testing.assert_close(ref.grad, ref_loop.grad, rtol=1e-8, atol=1e-10)


def test_own_slot_is_never_a_positive_but_other_copies_are():
    """Two identical items of one class: each is the other's positive at distance 0, never its own."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    ref = torch.cat([emb, emb])  # slots 0,1: older copies; slots 2,3: the batch itself
    ref_labels = torch.cat([labels, labels])
    distances = shadow_distances(emb, ref)
    assert distances[0, 0] == 0 and distances[0, 2] == 0
    loss = ShadowLoss(margin=0.5, mining="hard")
    # hardest positive of anchor 0 is its old copy (δ = 0), hardest negative δ = 1: no violation
    with_self_removed = loss(emb, labels, ref_emb=ref, ref_labels=ref_labels, anchor_ref_index=torch.tensor([2, 3]))
    assert with_self_removed == 0
    # with no self slot declared, the anchor's own copy counts as a positive too, still at δ = 0
    assert loss(emb, labels, ref_emb=ref, ref_labels=ref_labels) == 0


def test_hand_computed_value_in_two_dimensions():
    """a=(2,0), p=(1,1), n=(0,1), unnormalized: ‖a‖=2, π(p)=1, π(n)=0 → δ_ap=1, δ_an=2, L=max(0, 1−2+1.5)=0.5."""
    emb = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    distances = shadow_distances(emb, emb, normalize=False)
    torch.testing.assert_close(distances[0], torch.tensor([0.0, 1.0, 2.0]))
    per_anchor = ShadowLoss(margin=1.5, normalize=False, mining="hard").compute_loss(emb, labels, None, None, None)
    torch.testing.assert_close(per_anchor.losses[0], torch.tensor(0.5))


def test_normalized_shadow_equals_pytorch_metric_learning_cosine_triplet():
    """With unit vectors δ = 1 − cos, so Shadow is the cosine triplet hinge (docs/methods.md §1)."""
    emb, labels = batch(seed=6, size=16, dim=8, classes=4)
    emb = emb.float()
    for mining in ("all", "hard", "semihard"):
        shadow = create_loss("shadow", MARGIN, mining, True)(emb, labels)
        triplet = create_loss("triplet", MARGIN, mining, True)(emb, labels)
        torch.testing.assert_close(shadow, triplet, rtol=1e-5, atol=1e-6)


def test_no_triplets_gives_zero_with_a_gradient_path():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = ShadowLoss()(emb, torch.tensor([0, 1, 2, 3]))  # no positives at all
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_gram_functions_pass_gradcheck():
    generator = torch.Generator().manual_seed(0)
    emb = torch.randn(5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    ref = torch.randn(7, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(_SelfGram.apply, (emb,))
    assert torch.autograd.gradcheck(_CrossGram.apply, (emb, ref))


def loss_bytes_beyond_inputs(size: int, dim: int) -> int:
    """Peak bytes of one forward+backward, beyond the embeddings and their gradient."""
    from edgedml.budget.trace import AllocationTimeline, storage_key

    emb = torch.randn(size, dim, requires_grad=True)
    labels = torch.arange(size) % (size // 4)
    with AllocationTimeline() as timeline:
        ShadowLoss()(emb, labels).backward()
    return timeline.peak_bytes(exclude={storage_key(emb.grad)})


def test_loss_memory_does_not_grow_with_dimension():
    """The memory-linear claim: the loss's own allocations are S x N scalars, independent of D."""
    small, large = loss_bytes_beyond_inputs(128, 64), loss_bytes_beyond_inputs(128, 2048)
    # One (S, D) buffer at D=2048 would add 1 MiB. When temporaries die (backward's order of frees) may shift one or
    # two (S, S) matrices (64 KiB each) between the runs: a quarter of that (S, D) buffer is the bound.
    assert abs(large - small) <= 128 * 2048 * 4 // 4
    assert small < 32 * 128 * 128 * 4  # a few dozen (S, S) matrices at most, no (S, S, S) cube


def test_allocation_timeline_counts_a_known_allocation_and_ignores_views():
    from edgedml.budget.trace import AllocationTimeline

    base = torch.zeros(10, 10)
    with AllocationTimeline() as timeline:
        view = base.T  # shares base's storage
        product = view @ base  # one new (10, 10) float32 tensor
    assert timeline.peak_bytes() == 10 * 10 * 4
    assert product.shape == (10, 10)
