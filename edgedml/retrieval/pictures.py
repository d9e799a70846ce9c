"""Pictures of retrieval, for the results people would rather look at than read.

- Search results (``edgedml search --show``, :func:`write_search_grid`): one row per query image: the query
  (framed blue), then its top-k gallery images, each captioned with its label, rank and cosine score. A hit is
  framed green (and marked ✓) when its label is the query's, red (✗) when it is another. The query's label is
  the name of the folder it is in (``.../<label>/<file>``, the layout of an image-folder gallery) when the index
  holds that label; otherwise it is unknown and the hits are framed grey.
- Evaluation examples (``edgedml eval --examples``, :func:`write_eval_examples`): the same grid for a split scored
  leave-one-out (each query against all the split's other images): a seeded sample of up to 8 queries, half
  among those whose nearest neighbour is of another class (when there are any), the rest among those it gets
  right, failures first; each with its top-k neighbours framed green (same class) or red (another class).
  The neighbour lists are an argument, so re-ranked lists can be drawn as well as plain cosine ones.
- Embedding plot (``edgedml eval --embedding-plot``, :func:`write_embedding_plot`): the split's embeddings
  projected to 2-d (PCA, or t-SNE), one colour per class, with a legend up to 20 classes; above 3,000 images a
  seeded random 3,000 of them, as the title says.

Thumbnails are 128 px squares. Images too small to be seen (8x8 digits, 32 px glyphs) are enlarged by a whole
factor with nearest-neighbour sampling, so their pixels stay sharp; larger ones are fitted with Lanczos.

Every picture is drawn on its own matplotlib ``Figure`` with the Agg canvas (no pyplot state: safe in threads)
and written atomically; its format follows the file's suffix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from PIL import Image

from edgedml.data import Sample
from edgedml.data.images import DECODE_ERRORS, load_image
from edgedml.data.sources import ImageRef
from edgedml.errors import ConfigError, DataError
from edgedml.io import check_output_file, write_figure
from edgedml.metrics import ranked_neighbours
from edgedml.retrieval.evaluate import EmbeddedSplit
from edgedml.retrieval.search import QueryResult
from edgedml.retrieval.store import GalleryIndex

log = logging.getLogger(__name__)

PICTURE_FORMATS = ("png", "jpg", "jpeg", "svg", "pdf")
PROJECTIONS = ("pca", "tsne")
EXAMPLE_ROWS = 8
EXAMPLE_TOP_K = 5
MAX_PLOT_POINTS = 3000
LEGEND_CLASSES = 20

# The grid, in pixels (the figure is drawn at DPI, so one pixel of the layout is one pixel of the file).
DPI = 100
THUMB = 128  # the square a thumbnail is fitted in: 8, 16, 32 and 64 px images fill it at a whole factor
FRAME = 6
TILE = THUMB + 2 * FRAME
GAP = 12  # between tiles
QUERY_GAP = 20  # more between a query and its hits
CAPTION = 34  # two lines under each tile
MARGIN = 12
TITLE_LINE = 16  # px per line of the title

GREEN = (26, 150, 65)
RED = (215, 25, 28)
GREY = (170, 170, 170)
QUERY = (40, 90, 190)  # blue: apart from the verdicts, and from the black of digits and glyphs
BACKDROP = (235, 235, 235)  # around a thumbnail that does not fill its square, and for an unreadable image
FONTS = ["DejaVu Sans", "STIXGeneral"]  # the second draws the math symbols the first lacks (glyphs' labels)
TITLE_FONT = FontProperties(family=FONTS, size=10)
CAPTION_FONTS = (FontProperties(family=FONTS, size=9, weight="bold"), FontProperties(family=FONTS, size=9))

Colour = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------- options


def check_picture_path(path: str | Path, option: str) -> None:
    """A picture can be written at ``path`` in a format its suffix names: else one ConfigError naming ``option``."""
    target = Path(path)
    check_output_file(target, option)
    suffix = target.suffix.lstrip(".").lower()
    if suffix not in PICTURE_FORMATS:
        raise ConfigError(
            f"{option} {target}: its suffix names no picture format edgedml writes "
            f"({', '.join('.' + name for name in PICTURE_FORMATS)})",
            hint=f"give {option} a name such as {target.stem or 'picture'}.png",
        )


def check_projection(projection: str) -> None:
    if projection not in PROJECTIONS:
        raise ConfigError(
            f"--projection {projection!r} is not one of {', '.join(PROJECTIONS)}", hint="use --projection pca"
        )


def check_evaluation_pictures(
    examples: str | Path | None, embedding_plot: str | Path | None, projection: str | None
) -> None:
    """The options of :func:`evaluation_pictures`, checked before any work."""
    if examples is not None:
        check_picture_path(examples, "--examples")
    if embedding_plot is not None:
        check_picture_path(embedding_plot, "--embedding-plot")
    if projection is not None:
        if embedding_plot is None:
            raise ConfigError(
                f"--projection {projection} applies to --embedding-plot, which is not given",
                hint="add --embedding-plot PLOT.png, or drop --projection",
            )
        check_projection(projection)
    if (
        examples is not None
        and embedding_plot is not None
        and Path(examples).absolute() == Path(embedding_plot).absolute()
    ):
        raise ConfigError(
            f"--examples and --embedding-plot both name {examples}", hint="give each picture its own file"
        )


# ---------------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Tile:
    """One framed thumbnail and its two caption lines; ``image`` None: it could not be read."""

    image: Image.Image | None
    caption: tuple[str, str]
    frame: Colour


@dataclass(frozen=True)
class GridRow:
    query: Tile
    hits: list[Tile]


@dataclass(frozen=True)
class GridLayout:
    """Where each tile of a grid of ``rows`` rows and ``columns`` columns (the query and its hits) lies, under a
    title of ``title_lines`` lines."""

    rows: int
    columns: int
    title_lines: int = 2

    @property
    def width(self) -> int:
        return 2 * MARGIN + self.columns * TILE + (self.columns - 1) * GAP + QUERY_GAP

    @property
    def title_height(self) -> int:
        return MARGIN + self.title_lines * TITLE_LINE + MARGIN

    @property
    def height(self) -> int:
        return self.title_height + self.rows * (TILE + CAPTION) + (self.rows - 1) * GAP + MARGIN

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels of the tile, frame included; column 0 is the query."""
        left = MARGIN + column * (TILE + GAP) + (QUERY_GAP if column else 0)
        top = self.title_height + row * (TILE + CAPTION + GAP)
        return left, top, left + TILE, top + TILE


def thumbnail(image: Image.Image | None) -> np.ndarray:
    """(THUMB, THUMB, 3) uint8: ``image`` fitted in the square and centred on the backdrop."""
    square = np.full((THUMB, THUMB, 3), BACKDROP, dtype=np.uint8)
    if image is None:
        return square
    width, height = image.size
    if 2 * max(width, height) <= THUMB:  # tiny: a whole factor, pixels kept sharp
        factor = THUMB // max(width, height)
        fitted = image.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    else:
        scale = THUMB / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        fitted = image.resize(size, Image.Resampling.LANCZOS)
    pixels = np.asarray(fitted.convert("RGB"))
    top, left = (THUMB - pixels.shape[0]) // 2, (THUMB - pixels.shape[1]) // 2
    square[top : top + pixels.shape[0], left : left + pixels.shape[1]] = pixels
    return square


def write_grid(rows: Sequence[GridRow], title: str, path: str | Path) -> GridLayout:
    """Draw ``rows`` under ``title`` (wrapped to the grid's width) into ``path``; returns where the tiles are."""
    text = _TextMeasure()
    columns = 1 + max((len(row.hits) for row in rows), default=0)
    title_lines = text.wrap(title, TITLE_FONT, GridLayout(1, columns).width - 2 * MARGIN)
    layout = GridLayout(max(len(rows), 1), columns, len(title_lines))
    pixels = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    figure = Figure(figsize=(layout.width / DPI, layout.height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)

    def write(x: float, y: float, line: str, font: FontProperties, **options: object) -> None:
        figure.text(x / layout.width, 1 - y / layout.height, line, fontproperties=font, parse_math=False, **options)

    for r, row in enumerate(rows):
        for column, tile in enumerate([row.query, *row.hits]):
            left, top, right, bottom = layout.tile_box(r, column)
            pixels[top:bottom, left:right] = tile.frame
            pixels[top + FRAME : bottom - FRAME, left + FRAME : right - FRAME] = thumbnail(tile.image)
            for number, (line, font) in enumerate(zip(tile.caption, CAPTION_FONTS, strict=True)):
                shown = text.fit(line, font, TILE + GAP - 4)
                write((left + right) / 2, bottom + 3 + number * 15, shown, font, ha="center", va="top")
    figure.figimage(pixels, origin="upper")
    for number, line in enumerate(title_lines):
        write(MARGIN, MARGIN + number * TITLE_LINE, line, TITLE_FONT, ha="left", va="top")
    write_figure(figure, path, DPI)
    return layout


class _TextMeasure:
    """Widths of text as the Agg canvas draws it: to shorten a caption or wrap a title to a width in pixels."""

    def __init__(self) -> None:
        self.renderer = RendererAgg(1, 1, DPI)

    def width(self, text: str, font: FontProperties) -> float:
        return self.renderer.get_text_width_height_descent(text, font, ismath=False)[0]

    def fit(self, text: str, font: FontProperties, width: float) -> str:
        """``text``, shortened with an ellipsis until it fits."""
        shown = text
        while len(shown) > 1 and self.width(shown, font) > width:
            shown = shown[:-2] + "…"
        return shown

    def wrap(self, text: str, font: FontProperties, width: float) -> list[str]:
        """``text``'s lines, each broken between words where it would not fit."""
        lines: list[str] = []
        for paragraph in text.splitlines():
            line = ""
            for word in paragraph.split(" "):
                longer = f"{line} {word}" if line else word
                if line and self.width(longer, font) > width:
                    lines.append(line)
                    longer = word
                line = longer
            lines.append(line)
        return lines


def hit_tile(image: Image.Image | None, query_label: str | None, label: str, rank: int, score: float) -> Tile:
    """A hit framed green for the query's label, red for another, grey when the query's label is unknown; the
    caption marks it too (✓, ✗), for eyes that tell red from green poorly."""
    if query_label is None:
        return Tile(image, (label, f"#{rank}  {score:.3f}"), GREY)
    right = label == query_label
    return Tile(image, (f"{'✓' if right else '✗'} {label}", f"#{rank}  {score:.3f}"), GREEN if right else RED)


# ---------------------------------------------------------------------------------------------- search


def query_label(query: ImageRef | Path, labels: set[str]) -> str | None:
    """The label of a query file: its folder's name (``.../<label>/<file>``) when that is one of ``labels``."""
    if isinstance(query, np.ndarray):
        return None
    folder = Path(query).absolute().parent.name
    return folder if folder in labels else None


def write_search_grid(
    results: Sequence[QueryResult], index: GalleryIndex, queries: Sequence[ImageRef | Path], path: str | Path
) -> Path:
    """The grid of ``results`` (one per query of ``queries``, in order): each query and its hits from ``index``."""
    labels = set(index.manifest.labels)
    rows, unknown = [], 0
    for result, query in zip(results, queries, strict=True):
        label = query_label(query, labels)
        unknown += label is None
        hits = [hit_tile(_gallery_image(index, hit.id), label, hit.label, hit.rank, hit.score) for hit in result.hits]
        name = result.query if isinstance(query, np.ndarray) else Path(query).name
        rows.append(GridRow(Tile(_image(query), (label or "label unknown", name), QUERY), hits))
    top_k = max((len(result.hits) for result in results), default=0)
    legend = "frame: blue = the query, green = the query's label, red = another label"
    if unknown:
        legend += "; grey = the query's label is unknown (its folder's name is not a label of the index)"
    queries_text = f"{len(rows)} quer{'y' if len(rows) == 1 else 'ies'}"
    title = f"{queries_text}: top {top_k} of {index.count} in {index.location}\n{legend}"
    write_grid(rows, title, path)
    return Path(path)


def _gallery_image(index: GalleryIndex, row: int) -> Image.Image | None:
    try:
        return index.image(row, THUMB)
    except DataError as exc:
        log.warning("%s; drawn blank", exc.message)
        return None


def _image(image: ImageRef | Path) -> Image.Image | None:
    try:
        return load_image(str(image) if isinstance(image, Path) else image, THUMB)
    except DECODE_ERRORS as exc:
        log.warning("%s: unreadable (%s); drawn blank", image if isinstance(image, str | Path) else "array", exc)
        return None


# ---------------------------------------------------------------------------------------------- evaluation


def plain_neighbours(embedded: EmbeddedSplit, depth: int = EXAMPLE_TOP_K) -> np.ndarray:
    """(N, depth) indices of each item's nearest others by cosine similarity (leave-one-out), nearest first."""
    indices, _ = ranked_neighbours(torch.from_numpy(embedded.embeddings), depth)
    return indices.numpy()


def example_queries(labels: np.ndarray, neighbours: np.ndarray, seed: int, count: int = EXAMPLE_ROWS) -> np.ndarray:
    """Indices of up to ``count`` queries: half among those whose top-1 neighbour has another label (all of them
    when there are fewer), the rest among those whose top-1 is right, drawn with ``seed``; failures first.

    Only queries with another item of their class count: the others have nothing to find.
    labels: (N,) int; neighbours: (N, k) int indices into labels.
    """
    class_sizes = np.bincount(labels)
    retrievable = class_sizes[labels] > 1
    right = labels[neighbours[:, 0]] == labels
    wrong_queries = np.flatnonzero(retrievable & ~right)
    right_queries = np.flatnonzero(retrievable & right)
    wrong_count = min(len(wrong_queries), count // 2)
    right_count = min(len(right_queries), count - wrong_count)
    wrong_count = min(len(wrong_queries), count - right_count)  # few right ones: more failures fill the rows
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [
            np.sort(rng.choice(wrong_queries, wrong_count, replace=False)),
            np.sort(rng.choice(right_queries, right_count, replace=False)),
        ]
    ).astype(np.int64)


def write_eval_examples(
    embedded: EmbeddedSplit,
    neighbours: np.ndarray,
    path: str | Path,
    split: str = "test",
    top_k: int = EXAMPLE_TOP_K,
    rows: int = EXAMPLE_ROWS,
) -> Path:
    """Draw :func:`example_grid` into ``path``."""
    write_grid(*example_grid(embedded, neighbours, split, top_k, rows), path)
    return Path(path)


def example_grid(
    embedded: EmbeddedSplit,
    neighbours: np.ndarray,
    split: str = "test",
    top_k: int = EXAMPLE_TOP_K,
    rows: int = EXAMPLE_ROWS,
) -> tuple[list[GridRow], str]:
    """The example grid of a split and its title: ``rows`` queries chosen by :func:`example_queries` (seeded by the
    run's seed), each with the first ``top_k`` of its ``neighbours`` ((N, k) int indices into ``embedded.samples``,
    best first: plain ones from :func:`plain_neighbours`, or re-ranked ones), captioned with their cosine."""
    neighbours = np.asarray(neighbours)
    count = len(embedded.samples)
    if neighbours.ndim != 2 or len(neighbours) != count or neighbours.shape[1] == 0:
        raise ValueError(f"neighbours: expected ({count}, k>0) indices, got shape {neighbours.shape}")
    neighbours = neighbours[:, :top_k]
    labels = embedded.labels.numpy()
    chosen = example_queries(labels, neighbours, embedded.settings.seed, rows)
    failures = int(np.sum(labels[neighbours[chosen, 0]] != labels[chosen]))
    grid = [_example_row(embedded, int(query), neighbours[query]) for query in chosen]
    title = (
        f"{split} split of {_short(embedded.settings.data)}: {len(chosen)} of its {count} queries "
        f"({failures} with a wrong top-1), each with its top {neighbours.shape[1]} among the split's other images\n"
        "frame: blue = the query, green = the query's class, red = another class; caption: class, rank, cosine"
    )
    return grid, title


def _example_row(embedded: EmbeddedSplit, query: int, neighbours: np.ndarray) -> GridRow:
    samples, embeddings = embedded.samples, embedded.embeddings
    label = samples[query].label
    hits = [
        hit_tile(_image(samples[n].image), label, samples[n].label, rank, float(embeddings[query] @ embeddings[n]))
        for rank, n in enumerate(neighbours.tolist(), 1)
    ]
    return GridRow(Tile(_image(samples[query].image), (label, _sample_name(samples[query], query)), QUERY), hits)


def _sample_name(sample: Sample, position: int) -> str:
    return Path(sample.image).name if isinstance(sample.image, str) else f"query #{position}"


def _short(data: str) -> str:
    return Path(data).name or data


# ---------------------------------------------------------------------------------------------- embeddings


def write_embedding_plot(
    embedded: EmbeddedSplit,
    path: str | Path,
    projection: str = "pca",
    split: str = "test",
    max_points: int = MAX_PLOT_POINTS,
) -> Path:
    """Draw :func:`embedding_figure` into ``path``."""
    write_figure(embedding_figure(embedded, projection, split, max_points), path, DPI)
    return Path(path)


def embedding_figure(
    embedded: EmbeddedSplit, projection: str = "pca", split: str = "test", max_points: int = MAX_PLOT_POINTS
) -> Figure:
    """A 2-d ``projection`` (pca | tsne) of the split's embeddings, coloured by class, with a legend up to
    ``LEGEND_CLASSES`` classes; a seeded random ``max_points`` of them when there are more."""
    check_projection(projection)
    seed = embedded.settings.seed
    total = len(embedded.samples)
    shown = np.arange(total)
    if total > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(total, max_points, replace=False))
    names = sorted({embedded.samples[i].label for i in shown})
    number_of = {name: number for number, name in enumerate(names)}
    classes = np.array([number_of[embedded.samples[i].label] for i in shown])
    points, axis_names = project(embedded.embeddings[shown], projection, seed)
    with_legend = len(names) <= LEGEND_CLASSES
    figure = Figure(figsize=(9.5 if with_legend else 7.5, 6.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    colours = _class_colours(len(names), seed)
    size = 24 if len(shown) <= 1000 else 12
    if with_legend:
        for number, name in enumerate(names):
            mine = classes == number
            axes.scatter(*points[mine].T, s=size, color=colours[number], label=name, alpha=0.85, linewidths=0)
        handles, labels = axes.get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right upper", title="class", fontsize=9, markerscale=2)
    else:
        axes.scatter(*points.T, s=size, c=colours[classes], alpha=0.85, linewidths=0)
    axes.set_xlabel(axis_names[0])
    axes.set_ylabel(axis_names[1])
    if projection == "tsne":  # t-SNE's coordinates have no units worth reading
        axes.set_xticks([])
        axes.set_yticks([])
    axes.grid(alpha=0.25)
    method = "PCA" if projection == "pca" else "t-SNE"
    lines = [
        f"{split} split of {_short(embedded.settings.data)}: {len(shown)} embeddings of {len(names)} classes, {method}"
    ]
    if len(shown) < total:
        lines.append(f"a seeded random {len(shown)} of its {total} images")
    if not with_legend:
        lines.append(f"one colour per class, no legend above {LEGEND_CLASSES} classes")
    axes.set_title("\n".join(lines), fontsize=10)
    return figure


def project(embeddings: np.ndarray, projection: str, seed: int) -> tuple[np.ndarray, tuple[str, str]]:
    """(N, 2) coordinates of (N, dim) embeddings, and the names of the two axes."""
    points = embeddings.astype(np.float64)
    if projection == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (len(points) - 1) / 3)))
        coords = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)
        return coords, ("t-SNE 1", "t-SNE 2")
    from sklearn.decomposition import PCA

    pca = PCA(2, random_state=seed).fit(points)
    share = pca.explained_variance_ratio_
    return pca.transform(points), (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%} of variance)")


def _class_colours(count: int, seed: int) -> np.ndarray:
    """(count, 4) RGBA: the tab10 / tab20 palettes up to 20 classes, else the turbo map in a seeded order
    (so that classes next to each other in name order are not next to each other in colour)."""
    from matplotlib import colormaps

    if count <= 10:
        return colormaps["tab10"](np.arange(count))
    if count <= 20:
        return colormaps["tab20"](np.arange(count))
    order = np.random.default_rng(seed).permutation(count)
    return colormaps["turbo"](0.05 + 0.9 * order / max(count - 1, 1))


def evaluation_pictures(
    embedded: EmbeddedSplit,
    examples: str | Path | None = None,
    embedding_plot: str | Path | None = None,
    projection: str | None = None,
    neighbours: np.ndarray | None = None,
    split: str = "test",
) -> list[Path]:
    """The pictures ``edgedml eval`` draws of an embedded split: the example grid (with ``neighbours``, or the
    plain cosine ones) and the embedding plot (``projection`` None: PCA). Returns the files written."""
    written = []
    if examples is not None:
        ranked = neighbours if neighbours is not None else plain_neighbours(embedded)
        written.append(write_eval_examples(embedded, ranked, examples, split))
    if embedding_plot is not None:
        written.append(write_embedding_plot(embedded, embedding_plot, projection or "pca", split))
    return written
