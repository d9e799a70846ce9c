"""Class-disjoint splits, P x K batch sampling, seeded transforms and per-slot augmentation seeds."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import torch

from edgedml.data import PKSampler, Sample, class_disjoint_split, eval_transform, sample_seed, train_transform
from edgedml.data.transforms import Normalize, RandomResizedCrop, resize
from edgedml.errors import ConfigError, DataError

# --------------------------------------------------------------------------- helpers


def make_samples(counts: dict[str, int], splits: dict[str, str] | None = None) -> list[Sample]:
    """``counts[label]`` samples per class (paths need not exist); ``splits[label]`` declares a split."""
    splits = splits or {}
    return [
        Sample(image=f"{label}/{i}.png", label=label, split=splits.get(label))
        for label, count in counts.items()
        for i in range(count)
    ]


def class_names(n: int) -> list[str]:
    """``n`` class names given in reverse order, so that "sorted" is not the insertion order."""
    return [f"c{i:02d}" for i in reversed(range(n))]


def labels_of(samples: list[Sample]) -> set[str]:
    return {s.label for s in samples}


def images_of(samples: list[Sample]) -> list[str]:
    return [s.image for s in samples]


def balanced_labels(num_classes: int, per_class: int) -> list[int]:
    """Class index per sample, classes interleaved (0, 1, 2, ..., 0, 1, 2, ...)."""
    return [i % num_classes for i in range(num_classes * per_class)]


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- class-disjoint splits


@pytest.mark.parametrize(
    ("num_classes", "fraction"),
    [(10, 0.5), (7, 0.7), (5, 0.5), (9, 0.3)],  # 5 x 0.5 = 2.5 rounds to 2 (Python's round)
)
def test_split_trains_on_the_first_sorted_classes_and_tests_on_the_rest(num_classes, fraction):
    samples = make_samples({name: 6 for name in class_names(num_classes)})

    splits = class_disjoint_split(samples, train_fraction=fraction, val_fraction=0.2, seed=0)

    ordered = sorted(labels_of(samples))
    n_train = round(num_classes * fraction)
    assert splits.train_classes == ordered[:n_train]
    assert splits.test_classes == ordered[n_train:]
    assert not labels_of(splits.train) & labels_of(splits.test)
    assert Counter(images_of(splits.test)) == Counter(s.image for s in samples if s.label in ordered[n_train:])


def test_val_is_carved_from_training_classes_only():
    counts = {"a": 10, "b": 7, "c": 5, "d": 1, "e": 14, "f": 4, "g": 4, "h": 4, "i": 4, "j": 4}
    samples = make_samples(counts)

    splits = class_disjoint_split(samples, train_fraction=0.5, val_fraction=0.2, seed=3)

    train_classes = ["a", "b", "c", "d", "e"]
    assert splits.train_classes == train_classes
    assert labels_of(splits.val) <= set(train_classes)
    assert not set(images_of(splits.val)) & set(images_of(splits.train))
    val_per_class = Counter(s.label for s in splits.val)
    for label in train_classes:
        assert val_per_class[label] == int(counts[label] * 0.2)  # a: 2, b: 1, c: 1, d: 0 (single image), e: 2
    # together, train and val are exactly the training classes' images, each once
    assert sorted(images_of(splits.train) + images_of(splits.val)) == sorted(
        s.image for s in samples if s.label in train_classes
    )


def test_same_seed_gives_the_same_split_and_another_seed_another_val():
    samples = make_samples({name: 20 for name in class_names(6)})

    first = class_disjoint_split(samples, seed=11)
    again = class_disjoint_split(samples, seed=11)
    other = class_disjoint_split(samples, seed=12)

    assert (first.train, first.val, first.test) == (again.train, again.val, again.test)
    assert images_of(first.val) != images_of(other.val)
    assert first.train_classes == other.train_classes  # only the val draw depends on the seed


@pytest.mark.parametrize(
    ("num_classes", "fraction"),
    [(3, 0.5), (4, 0.25), (4, 0.75), (1, 0.5)],  # 2/1, 1/3, 3/1, 0/1 train/test classes
)
def test_too_few_classes_on_either_side_is_a_data_error(num_classes, fraction):
    samples = make_samples({name: 4 for name in class_names(num_classes)})
    with pytest.raises(DataError, match="each side needs at least 2"):
        class_disjoint_split(samples, train_fraction=fraction)


def test_declared_split_column_is_used_as_written():
    splits_by_class = {"a": "train", "b": "train", "c": "val", "d": "test", "e": "test"}
    samples = make_samples({label: 3 for label in splits_by_class}, splits_by_class)

    splits = class_disjoint_split(samples, train_fraction=0.9, val_fraction=0.5, seed=5)

    assert splits.train == samples[0:6]
    assert splits.val == samples[6:9]
    assert splits.test == samples[9:15]


def test_declared_split_missing_for_some_rows_is_an_error():
    samples = make_samples({"a": 2, "b": 2}, {"a": "train"}) + make_samples({"c": 1}, {"c": "test"})
    with pytest.raises(DataError, match=r"not for b/0.png \(2 rows\)"):
        class_disjoint_split(samples)


def test_declared_split_with_a_single_test_class_is_an_error():
    samples = make_samples({"a": 2, "b": 2, "c": 2}, {"a": "train", "b": "train", "c": "test"})
    with pytest.raises(DataError, match="split 'test' has fewer than 2 classes"):
        class_disjoint_split(samples)


# --------------------------------------------------------------------------- P x K sampler


def batch_class_counts(batch: list[int], labels: list[int]) -> Counter:
    return Counter(labels[i] for i in batch)


@pytest.fixture
def balanced() -> tuple[PKSampler, list[int]]:
    labels = balanced_labels(num_classes=12, per_class=8)
    return PKSampler(labels, classes_per_batch=4, samples_per_class=4, seed=7), labels


def test_every_batch_holds_p_classes_of_k_distinct_images(balanced):
    sampler, labels = balanced
    for epoch in range(5):
        batches = sampler.batches(epoch)
        assert len(batches) == len(sampler) == 96 // 16
        for batch in batches:
            assert len(batch) == 16
            counts = batch_class_counts(batch, labels)
            assert len(counts) == 4
            assert set(counts.values()) == {4}
            assert len(set(batch)) == len(batch)  # no index twice: every class has >= K images


def test_batches_are_a_function_of_seed_and_epoch(balanced):
    sampler, labels = balanced
    twin = PKSampler(labels, 4, 4, seed=7)
    other_seed = PKSampler(labels, 4, 4, seed=8)

    assert sampler.batches(3) == twin.batches(3)
    assert sampler.batches(3) == sampler.batches(3)  # no state carried between calls
    assert sampler.batches(0) != sampler.batches(1)
    assert sampler.batches(0) != other_seed.batches(0)


def test_one_epoch_sees_nearly_every_image_once(balanced):
    sampler, labels = balanced
    for epoch in range(3):
        drawn = [i for batch in sampler.batches(epoch) for i in batch]
        assert len(drawn) == len(labels)
        assert len(set(drawn)) >= 0.9 * len(labels)


def test_small_class_is_drawn_with_replacement_and_warned_about_once(caplog):
    caplog.set_level(logging.WARNING, logger="edgedml")
    labels = [0, 0] + [1 + (i % 3) for i in range(18)]  # class 0: 2 images, classes 1..3: 6 each

    sampler = PKSampler(labels, classes_per_batch=3, samples_per_class=4, seed=0)
    construction_warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    batches = [batch for epoch in range(4) for batch in sampler.batches(epoch)]

    all_warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert all_warnings == construction_warnings
    assert len(all_warnings) == 1
    assert "1 class(es) have fewer than K=4 images" in all_warnings[0]
    assert "class indices 0" in all_warnings[0]

    with_small = [batch for batch in batches if 0 in batch_class_counts(batch, labels)]
    assert with_small, "class 0 should be drawn at least once in 4 epochs"
    for batch in with_small:
        small_part = [i for i in batch if labels[i] == 0]
        assert len(small_part) == 4 and set(small_part) <= {0, 1}  # K draws from its 2 images
        big_part = [i for i in batch if labels[i] != 0]
        assert len(set(big_part)) == len(big_part) == 8


def test_no_warning_when_every_class_has_k_images(caplog, balanced):
    caplog.set_level(logging.WARNING, logger="edgedml")
    PKSampler(balanced[1], 4, 8)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_more_classes_per_batch_than_classes_is_a_config_error():
    with pytest.raises(ConfigError, match="needs 5 training classes, the training split has 4") as info:
        PKSampler(balanced_labels(4, 10), classes_per_batch=5, samples_per_class=3)
    assert "--batch-size 12" in info.value.hint


def test_a_single_class_is_a_config_error():
    with pytest.raises(ConfigError, match="fewer than 2 classes"):
        PKSampler([0] * 10, classes_per_batch=1, samples_per_class=2)


@pytest.mark.parametrize(
    ("num_samples", "p", "k", "expected"),
    [(96, 4, 4, 6), (100, 4, 4, 6), (100, 2, 5, 10), (15, 4, 4, 1)],  # at least one batch
)
def test_len_is_samples_over_batch_size(num_samples, p, k, expected):
    sampler = PKSampler(balanced_labels(5, 20)[:num_samples], p, k)
    assert len(sampler) == expected
    assert len(sampler.batches(0)) == expected


# --------------------------------------------------------------------------- transforms


def test_train_transform_output_shape():
    out = train_transform(24)(random_image(40, 30), seeded(0))
    assert out.shape == (3, 24, 24)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("hflip", [False, True])
def test_train_transform_is_a_function_of_the_generator_seed(hflip):
    transform = train_transform(16, crop_scale=0.5, hflip=hflip)
    image = random_image(40, 40)

    assert torch.equal(transform(image, seeded(1)), transform(image, seeded(1)))
    outputs = [transform(image, seeded(seed)) for seed in range(5)]
    assert all(not torch.equal(outputs[0], other) for other in outputs[1:])


def test_train_transform_without_crop_is_a_deterministic_resize():
    image = random_image(20, 20)
    out = train_transform(10, crop_scale=1.0)(image, seeded(0))
    assert torch.equal(out, Normalize()(resize(image, 10)))


def test_eval_transform_is_deterministic():
    transform = eval_transform(16)
    image = random_image(30, 20)
    first = transform(image)
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, transform(image))
    assert torch.equal(first, transform(image, seeded(1)))  # a generator changes nothing
    assert torch.equal(first, Normalize()(resize(image, 16)))


def test_normalize_of_a_constant_image_matches_hand_computed_values():
    out = Normalize()(torch.full((3, 2, 2), 0.5))
    # (0.5 - mean) / std with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
    expected = torch.tensor([0.0655022, 0.1964286, 0.4177778]).view(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)

    custom = Normalize(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))(torch.ones(3, 1, 1))
    assert custom.flatten().tolist() == [2.0, 1.0, 0.5]


@pytest.mark.parametrize("side", [24, 33])
def test_random_resized_crop_with_full_scale_on_a_square_image_is_a_plain_resize(side):
    image = random_image(side, side)
    crop = RandomResizedCrop(16, scale_min=1.0)
    for seed in range(30):
        assert torch.equal(crop(image, seeded(seed)), resize(image, 16))


def test_random_resized_crop_output_size_for_any_input_shape():
    crop = RandomResizedCrop(12)
    for seed, (height, width) in enumerate([(12, 12), (50, 20), (8, 40), (100, 100)]):
        assert crop(random_image(height, width, seed), seeded(seed)).shape == (3, 12, 12)


# --------------------------------------------------------------------------- augmentation seeds


def test_sample_seed_is_distinct_per_slot_batch_epoch_and_run():
    slots = [
        (run, epoch, batch, position)
        for run in (0, 1, 2024)
        for epoch in range(4)
        for batch in range(25)
        for position in range(64)
    ]
    seeds = [sample_seed(*slot) for slot in slots]

    assert len(set(seeds)) == len(slots)
    assert all(0 <= s < 2**63 for s in seeds)
    assert seeds == [sample_seed(*slot) for slot in slots]  # reproducible
    torch.Generator().manual_seed(max(seeds))  # a valid torch seed
