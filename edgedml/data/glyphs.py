"""The ``glyphs`` data source: characters rendered in the typefaces that ship inside matplotlib.

Many classes with few images each, like Stanford Online Products: the small-batch regime in which a
cross-batch memory pays off (docs/methods.md §2), since a batch of 16 to 64 images holds only a few of the
hundreds of classes. One class per character (Latin letters and digits, ASCII punctuation, Latin-1 and
some Latin Extended-A letters, Greek, math symbols); one clean image per font that really contains the
character, plus ``copies`` mildly augmented ones (rotation, scale, shift). Everything is rendered in
memory with Pillow's FreeType binding, deterministically for a given seed; nothing is cached on disk.

Which fonts count, and why:

- Unicode text typefaces (DejaVu Sans / Serif / Sans Mono and STIX General, each with its bold and
  italic variants): a character is present when it renders ink that is not the font's .notdef glyph.
  A font must contain the whole Latin alphabet and the digits to count as a text typeface, which leaves
  out the display and size variants (DejaVu*Display, STIXSiz*) and the private-use STIXNonUni* fonts.
- A font that draws the same image for many different characters is not a typeface for this purpose
  (LastResort draws one box per Unicode block) and is left out.
- The Computer Modern fonts (BaKoMa cm*.ttf) declare a Unicode cmap but hold TeX's 7-bit encodings
  behind it: in cmr10 the code point of '<' draws '¡' and that of 'Ä' draws a dieresis accent; in
  cmsy10 'A' draws a calligraphic capital and 'a' the turnstile '⊣'. Reading their cmap as Unicode would put
  other shapes into a class, so they are read only through the TeX encoding tables below, which name
  the slots that hold the character itself (OT1 text, OML math italic, OMS math symbols). cmex10 holds
  delimiter pieces and display-size operators, not text characters, and is left out.

The character set avoids pairs that are one shape under two code points (Latin A / Greek Alpha,
micro / mu, summation / Sigma, middle dot / period) and marks that differ only by their height above
the baseline (underscore / hyphen), since every glyph is centred on its ink box and would otherwise
give two classes of the same images.

Each font draws all its glyphs at one scale, chosen so that its letters and digits fit the image with a
margin; only a glyph larger than that (a tall bracket, a wide '‰') is shrunk to fit. Scaling every glyph
to fill the image would make 'o' and 'O', 'c' and 'C', '.' and '•' the same picture.

Labels are the characters themselves, so the class-disjoint split (classes sorted by name, that is by
code point) trains on ASCII and most of Latin-1 and tests on the rest of Latin-1, Latin Extended-A,
Greek and the math symbols: unseen classes from partly unseen scripts.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgedml.data.sources import Sample, Source, named_sources

log = logging.getLogger(__name__)

ALPHANUMERIC = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PUNCTUATION = "!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~"
LATIN_1_LETTERS = "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÐÑÒÓÔÕÖØÙÚÛÜÝÞßàáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ"
LATIN_1_SYMBOLS = "¡¢£¤¥¦§©«¬®°±¶»¼½¾¿×÷"
LATIN_EXTENDED_A = "ĆćČčĎďĘęĞğŁłŃńŐőŒœŘřŚśŠšŰűŸŹźŻżŽž"
GREEK = "ΓΔΘΛΞΠΣΦΨΩαβγδεζηθικλμνξπρςστυφχψω"
MATH = "€†‡‰←↑→↓↔⇐⇒⇔∀∂∃∇∈∋∝∞∠∩∪∫∴≈≠≡≤≥⊂⊃⊆⊇⊕⊗⊥♠♡♢♣"
CHARACTERS = ALPHANUMERIC + PUNCTUATION + LATIN_1_LETTERS + LATIN_1_SYMBOLS + LATIN_EXTENDED_A + GREEK + MATH

NOTDEF_PROBE = "\U0010fffd"  # a private-use code point no font here maps: draws the .notdef glyph
RENDER_SIZE = 96  # px per em when rasterizing; images are drawn at SUPERSAMPLE x their side, then box-averaged
SUPERSAMPLE = 3
DISTINCT_FRACTION = 0.9  # below this share of distinct renders, a font draws placeholders, not characters

# Augmented copies: rotation in degrees, scale, and shift in output pixels, each drawn uniformly from its range.
MAX_ROTATION = 8.0
SCALE_RANGE = (0.85, 1.0)
MAX_SHIFT = 2.0


def _tex_slots(characters: str, first_slot: int) -> dict[str, int]:
    """Consecutive TeX slots from ``first_slot``, one per character."""
    return {character: first_slot + offset for offset, character in enumerate(characters)}


def _ascii_slots(characters: str) -> dict[str, int]:
    """Characters that sit at their own ASCII code in a TeX encoding."""
    return {character: ord(character) for character in characters}


# The slots of TeX's encodings (TeXbook appendix F) that hold the character itself.
_OT1_COMMON = {
    **_ascii_slots(ALPHANUMERIC + "!#%&()*+,-./:;=?@[]"),
    **_tex_slots("ΓΔΘΛΞΠΣΥΦΨΩ", 0x00),
    **_tex_slots("ßæœøÆŒØ", 0x19),
}
OT1_ROMAN = {**_OT1_COMMON, "$": 0x24, "¡": 0x3C, "¿": 0x3E}
OT1_ITALIC = {**_OT1_COMMON, "£": 0x24, "¡": 0x3C, "¿": 0x3E}  # cmti10 has the pound sign at '$'
OT1_TYPEWRITER = {
    **_OT1_COMMON,
    **_ascii_slots('"$<>\\^_{|}~'),
    "'": 0x0D,  # 0x27 is a right quote; the straight one is at 0x0D
    "¡": 0x0E,
    "¿": 0x0F,
}
OML_MATH_ITALIC = {
    **_ascii_slots(ALPHANUMERIC + "<>"),
    ".": 0x3A,
    ",": 0x3B,
    "/": 0x3D,
    "∂": 0x40,
    **_tex_slots("ΓΔΘΛΞΠΣΥΦΨΩ", 0x00),
    **_tex_slots("αβγδϵζηθικλμνξπρστυϕχψω", 0x0B),
    **_tex_slots("εϑϖϱςφ", 0x22),
}
OMS_MATH_SYMBOLS = {
    **_tex_slots("−⋅×∗÷⋄±∓⊕⊖⊗⊘⊙○∘∙≍≡⊆⊇≤≥⪯⪰∼≈⊂⊃≪≫≺≻←→↑↓↔↗↘≃⇐⇒⇑⇓⇔↖↙∝′∞∈∋△▽", 0x00),
    **_tex_slots("∀∃¬∅ℜℑ⊤⊥ℵ", 0x38),
    **_tex_slots("∪∩⊎∧∨⊢⊣⌊⌋⌈⌉{}⟨⟩|‖↕⇕\\≀√⨿∇∫⊔⊓⊑⊒§†‡¶♣♢♡♠", 0x5B),
}
TEX_ENCODED_FONTS: dict[str, dict[str, int]] = {
    "cmr10": OT1_ROMAN,
    "cmb10": OT1_ROMAN,
    "cmss10": OT1_ROMAN,
    "cmti10": OT1_ITALIC,
    "cmtt10": OT1_TYPEWRITER,
    "cmmi10": OML_MATH_ITALIC,
    "cmsy10": OMS_MATH_SYMBOLS,
}


def bakoma_code(tex_slot: int) -> int:
    """The code point at which the BaKoMa TrueType fonts put TeX slot ``tex_slot``: slots below 0x21
    (and 0x7F) are moved up to 0xA1-0xC4, skipping 0xAB, 0xAC and 0xB7 (slot 0x14 went to 0x2219)."""
    if tex_slot <= 0x09:
        return 0xA1 + tex_slot
    if tex_slot == 0x14:
        return 0x2219
    if tex_slot <= 0x20:
        return 0xA3 + tex_slot
    if tex_slot == 0x7F:
        return 0xC4
    return tex_slot


@dataclass(frozen=True)
class Glyph:
    """A character's ink in one font at RENDER_SIZE: ``ink`` is the cropped coverage image."""

    ink: Image.Image
    top: int  # ink box top, relative to the baseline (negative above it)
    bottom: int


@dataclass
class Typeface:
    name: str
    glyphs: dict[str, Glyph]  # character -> its glyph, only the characters the font really holds
    extent: int = 0  # render pixels that fill the image's height: see _set_extents


def font_directory() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render(font: ImageFont.FreeTypeFont, text: str) -> Glyph | None:
    left, top, right, bottom = font.getbbox(text, anchor="ls")
    if right <= left or bottom <= top:
        return None
    canvas = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255, anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None
    return Glyph(ink=canvas.crop(box), top=top - 1 + box[1], bottom=top - 1 + box[3])


def _same(first: Glyph, second: Glyph) -> bool:
    return first.ink.size == second.ink.size and first.ink.tobytes() == second.ink.tobytes()


def _load_font(path: Path) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), RENDER_SIZE, layout_engine=ImageFont.Layout.BASIC)


def _unicode_typeface(path: Path) -> Typeface | None:
    """Render CHARACTERS through the font's Unicode cmap; ``None`` if it is not a text typeface."""
    font = _load_font(path)
    notdef = _render(font, NOTDEF_PROBE)
    glyphs: dict[str, Glyph] = {}
    for character in CHARACTERS:
        glyph = _render(font, character)
        if glyph is not None and not (notdef is not None and _same(glyph, notdef)):
            glyphs[character] = glyph
        elif character in ALPHANUMERIC:
            return None
    return Typeface(path.stem, glyphs)


def _tex_typeface(path: Path, slots: dict[str, int]) -> Typeface:
    font = _load_font(path)
    glyphs = {}
    for character in CHARACTERS:
        if character in slots:
            glyph = _render(font, chr(bakoma_code(slots[character])))
            if glyph is not None:
                glyphs[character] = glyph
    return Typeface(path.stem, glyphs)


def _draws_placeholders(typeface: Typeface) -> bool:
    distinct = {(g.ink.size, g.ink.tobytes()) for g in typeface.glyphs.values()}
    return len(distinct) < DISTINCT_FRACTION * len(typeface.glyphs)


def load_typefaces(directory: Path) -> list[Typeface]:
    """The fonts in ``directory`` that are typefaces in the sense of the module docstring."""
    typefaces = []
    for path in sorted(directory.glob("*.ttf")):
        if path.stem in TEX_ENCODED_FONTS:
            typeface = _tex_typeface(path, TEX_ENCODED_FONTS[path.stem])
        elif path.stem.startswith("cm"):
            log.debug("glyphs: skipped %s (TeX-encoded, no text characters)", path.name)
            continue
        else:
            typeface = _unicode_typeface(path)
        if typeface is None or _draws_placeholders(typeface):
            log.debug("glyphs: skipped %s (not a text typeface)", path.name)
            continue
        typefaces.append(typeface)
    _set_extents(typefaces)
    return typefaces


def _set_extents(typefaces: list[Typeface]) -> None:
    """A font's extent is the height of the union of its letters' and digits' ink boxes, so that all
    glyphs of a font keep their relative sizes ('o' stays smaller than 'O'); a font without letters
    (cmsy10) takes the median extent of the others, which share its em size."""
    for typeface in typefaces:
        boxes = [typeface.glyphs[c] for c in ALPHANUMERIC if c in typeface.glyphs]
        if boxes:
            typeface.extent = max(g.bottom for g in boxes) - min(g.top for g in boxes)
    median = int(np.median([t.extent for t in typefaces if t.extent]))
    for typeface in typefaces:
        typeface.extent = typeface.extent or median


def _draw(
    glyph: Glyph, scale: float, side: int, rotation: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """The glyph's ink box centred in a ``side`` x ``side`` image at ``scale`` output pixels per render
    pixel, rotated by ``rotation`` degrees about its centre and moved by ``shift`` output pixels."""
    big = side * SUPERSAMPLE
    zoom = scale * SUPERSAMPLE
    cos, sin = math.cos(math.radians(rotation)) / zoom, math.sin(math.radians(rotation)) / zoom
    centre_x, centre_y = big / 2 + shift[0] * SUPERSAMPLE, big / 2 + shift[1] * SUPERSAMPLE
    ink_x, ink_y = glyph.ink.width / 2, glyph.ink.height / 2
    # output pixel -> ink pixel: un-shift, un-rotate, un-scale
    matrix = (cos, sin, ink_x - cos * centre_x - sin * centre_y, -sin, cos, ink_y + sin * centre_x - cos * centre_y)
    drawn = glyph.ink.transform((big, big), Image.Transform.AFFINE, matrix, resample=Image.Resampling.BILINEAR)
    return np.asarray(drawn.reduce(SUPERSAMPLE))


def _images(typeface: Typeface, glyph: Glyph, side: int, margin: int, augmentations: np.ndarray) -> list[np.ndarray]:
    """One clean image, then one per row of ``augmentations`` (rotation, scale, shift x, shift y)."""
    room = side - 2 * margin
    scale = min(room / typeface.extent, room / glyph.ink.width, room / glyph.ink.height)
    images = [_draw(glyph, scale, side)]
    for rotation, zoom, shift_x, shift_y in augmentations:
        images.append(_draw(glyph, scale * zoom, side, rotation, (shift_x, shift_y)))
    return images


@lru_cache(maxsize=4)
def render_glyphs(
    side: int, margin: int, copies: int, min_fonts: int, seed: int
) -> tuple[tuple[str, str, np.ndarray], ...]:
    """(character, font, image) for every kept character, font by font: first the clean image, then
    ``copies`` augmented ones. Images are read-only (side, side) uint8 arrays, white ink on black."""
    started = time.perf_counter()
    typefaces = load_typefaces(font_directory())
    kept = [c for c in CHARACTERS if sum(c in t.glyphs for t in typefaces) >= min_fonts]
    rng = np.random.default_rng(seed)
    low = np.array([-MAX_ROTATION, SCALE_RANGE[0], -MAX_SHIFT, -MAX_SHIFT])
    high = np.array([MAX_ROTATION, SCALE_RANGE[1], MAX_SHIFT, MAX_SHIFT])
    rendered = []
    for character in kept:
        for typeface in typefaces:
            if character not in typeface.glyphs:
                continue
            augmentations = rng.uniform(low, high, size=(copies, 4))
            for image in _images(typeface, typeface.glyphs[character], side, margin, augmentations):
                image.flags.writeable = False
                rendered.append((character, typeface.name, image))
    log.debug(
        "glyphs: %d fonts, %d of %d characters, %d images in %.2f s",
        len(typefaces), len(kept), len(CHARACTERS), len(rendered), time.perf_counter() - started,
    )  # fmt: skip
    return tuple(rendered)


def build_glyphs(side: int = 32, margin: int = 2, copies: int = 2, min_fonts: int = 6, seed: int = 0) -> Source:
    """The ``glyphs`` source: one class per character held by at least ``min_fonts`` fonts, one clean
    and ``copies`` augmented ``side`` x ``side`` images per (character, font); the label is the character."""
    rendered = render_glyphs(side, margin, copies, min_fonts, seed)
    samples = [Sample(image=image, label=character) for character, _, image in rendered]
    return Source(name="glyphs", samples=samples, default_input_size=side, default_crop_scale=1.0)


@named_sources.register("glyphs")
def load_glyphs() -> Source:
    return build_glyphs()
