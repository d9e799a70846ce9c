"""The glyphs source: characters rendered in matplotlib's fonts, one class per character."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from edgedml.data import class_disjoint_split, glyphs, load_image, load_source
from edgedml.data.glyphs import TEX_ENCODED_FONTS, bakoma_code, build_glyphs, load_typefaces, render_glyphs

COPIES = 2  # build_glyphs' default: each (character, font) gives 1 clean + 2 augmented images
MIN_FONTS = 6


@pytest.fixture(scope="module")
def rendered() -> tuple[tuple[str, str, np.ndarray], ...]:
    return render_glyphs(32, 2, COPIES, MIN_FONTS, 0)


@pytest.fixture(scope="module")
def by_pair(rendered) -> dict[tuple[str, str], list[np.ndarray]]:
    """(character, font) -> [clean image, augmented copies...]."""
    pairs: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for character, font, image in rendered:
        pairs[(character, font)].append(image)
    return pairs


@pytest.fixture(scope="module")
def typefaces() -> list[glyphs.Typeface]:
    return load_typefaces(glyphs.font_directory())


def aligned_ink_iou(first: np.ndarray, second: np.ndarray, reach: int = 3, threshold: int = 63) -> np.ndarray:
    """IoU of the ink masks of (N, H, W) image stacks, at the best common shift of up to ``reach`` px."""
    first, second = first > threshold, second > threshold
    best = np.zeros(len(first))
    for dy in range(-reach, reach + 1):
        for dx in range(-reach, reach + 1):
            moved = np.roll(second, (dy, dx), axis=(1, 2))
            overlap = (first & moved).sum(axis=(1, 2)) / np.maximum((first | moved).sum(axis=(1, 2)), 1)
            best = np.maximum(best, overlap)
    return best


# --------------------------------------------------------------------------- the source


def test_load_source_gives_hundreds_of_classes():
    source = load_source("glyphs")
    assert source.name == "glyphs"
    assert source.default_input_size == 32
    assert len(source.classes) >= 200
    assert all(len(label) == 1 for label in source.classes)


def test_every_class_has_several_fonts_and_all_their_images(by_pair):
    fonts_per_class: dict[str, set[str]] = defaultdict(set)
    for character, font in by_pair:
        fonts_per_class[character].add(font)
    assert min(len(fonts) for fonts in fonts_per_class.values()) >= MIN_FONTS
    assert {len(images) for images in by_pair.values()} == {1 + COPIES}


def test_images_are_uint8_32px_and_not_blank(rendered):
    images = np.stack([image for _, _, image in rendered])
    assert images.dtype == np.uint8
    assert images.shape[1:] == (32, 32)
    assert (images.max(axis=(1, 2)) >= 96).all()  # a 1-px stroke between two pixel rows peaks near 128
    assert (images.sum(axis=(1, 2), dtype=np.int64) >= 4 * 255).all()  # even '.' has 4 pixels' worth of ink
    corners = images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).mean() > 0.99  # white ink on a black ground


def test_images_are_read_only_and_load_as_rgb():
    sample = build_glyphs().samples[0]
    assert not sample.image.flags.writeable
    image = load_image(sample.image)
    assert image.mode == "RGB" and image.size == (32, 32)


def test_clean_glyphs_are_centred(by_pair):
    centres = []
    for images in by_pair.values():
        rows, columns = np.nonzero(images[0])
        centres.append(((rows.min() + rows.max()) / 2, (columns.min() + columns.max()) / 2))
    assert np.allclose(np.mean(centres, axis=0), 15.5, atol=0.1)
    assert np.abs(np.array(centres) - 15.5).max() <= 1.0


def test_build_is_deterministic(rendered):
    again = render_glyphs.__wrapped__(32, 2, COPIES, MIN_FONTS, 0)
    assert [(c, f) for c, f, _ in again] == [(c, f) for c, f, _ in rendered]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(again, rendered, strict=True))


def test_seed_changes_only_the_augmented_copies(by_pair):
    other: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for character, font, image in render_glyphs(32, 2, 1, MIN_FONTS, 1):
        other[(character, font)].append(image)
    assert other.keys() == by_pair.keys()
    assert all(np.array_equal(other[pair][0], by_pair[pair][0]) for pair in by_pair)
    changed = [not np.array_equal(other[pair][1], by_pair[pair][1]) for pair in by_pair]
    assert np.mean(changed) > 0.99


def test_different_characters_in_one_font_render_differently(by_pair):
    clean_by_font: dict[str, dict[bytes, str]] = defaultdict(dict)
    for (character, font), images in by_pair.items():
        duplicate_of = clean_by_font[font].setdefault(images[0].tobytes(), character)
        assert duplicate_of == character, f"{font}: {character!r} renders as {duplicate_of!r}"
    assert not np.array_equal(by_pair[("A", "DejaVuSans")][0], by_pair[("B", "DejaVuSans")][0])


def test_augmented_copies_differ_from_the_clean_image_but_stay_close(by_pair):
    clean = np.stack([images[0] for images in by_pair.values() for _ in images[1:]])
    augmented = np.stack([image for images in by_pair.values() for image in images[1:]])
    assert not any(np.array_equal(c, a) for c, a in zip(clean, augmented, strict=True))
    iou = aligned_ink_iou(clean, augmented)
    assert iou.min() > 0.2  # thin outlines (white heart, diamond) at 32 px are the lowest
    assert iou.mean() > 0.6
    letters = np.array([c in glyphs.ALPHANUMERIC for (c, _), images in by_pair.items() for _ in images[1:]])
    assert iou[letters].min() > 0.3


def test_class_disjoint_split_keeps_classes_apart():
    source = build_glyphs()
    splits = class_disjoint_split(source.samples, train_fraction=0.5, val_fraction=0.2, seed=0)
    train, test = set(splits.train_classes), set(splits.test_classes)
    assert train and test and not train & test
    assert train | test == set(source.classes)
    assert {s.label for s in splits.val} <= train


# --------------------------------------------------------------------------- which fonts, which characters


def test_uses_the_text_typefaces_and_leaves_out_the_others(typefaces):
    names = {t.name for t in typefaces}
    assert {"DejaVuSans", "DejaVuSerif-BoldItalic", "DejaVuSansMono", "STIXGeneral", "cmr10", "cmtt10"} <= names
    assert not {n for n in names if n.startswith(("LastResort", "STIXSiz", "STIXNonUni")) or "Display" in n}
    assert "cmex10" not in names


def test_presence_check_matches_the_font_cmaps(typefaces):
    """Pillow's render-versus-.notdef test finds exactly the characters each Unicode font maps."""
    ttlib = pytest.importorskip("fontTools.ttLib")  # a matplotlib dependency; used here as a witness only
    for typeface in typefaces:
        if typeface.name in TEX_ENCODED_FONTS:
            continue
        cmap = ttlib.TTFont(glyphs.font_directory() / f"{typeface.name}.ttf").getBestCmap()
        assert set(typeface.glyphs) == {c for c in glyphs.CHARACTERS if ord(c) in cmap}, typeface.name


def test_tex_tables_agree_with_matplotlibs_mathtext():
    """Where matplotlib's own Computer Modern table names a character, our TeX slot is the same glyph."""
    mathtext = pytest.importorskip("matplotlib._mathtext_data")
    codes: dict[tuple[str, str], set[int]] = defaultdict(set)
    for name, (font, code) in mathtext.latex_to_bakoma.items():
        codepoint = mathtext.tex2uni.get(name[1:]) if name.startswith("\\") else ord(name) if len(name) == 1 else None
        if codepoint is not None:
            codes[(font, chr(codepoint))].add(code)
    compared = 0
    for font, slots in TEX_ENCODED_FONTS.items():
        for character, slot in slots.items():
            if (font, character) in codes:
                assert bakoma_code(slot) in codes[(font, character)], (font, character)
                compared += 1
    assert compared >= 60


def test_tex_fonts_only_hold_their_table(typefaces):
    for typeface in typefaces:
        if typeface.name in TEX_ENCODED_FONTS:
            assert set(typeface.glyphs) <= set(TEX_ENCODED_FONTS[typeface.name])
    cmr10 = next(t for t in typefaces if t.name == "cmr10")
    assert "<" not in cmr10.glyphs and "Ä" not in cmr10.glyphs  # OT1 has '¡' and an accent there


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_one_epoch_on_glyphs(cli, tmp_path: Path):
    result = cli(
        "train", "--data", "glyphs", "--out", tmp_path / "run",
        "--backbone", "tiny", "--input-size", "32", "--dim", "16",
        "--batch-size", "16", "--samples-per-class", "2", "--epochs", "1", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, str(result)
    assert "Recall@1" in result.output
    assert (tmp_path / "run" / "config.yaml").is_file()
