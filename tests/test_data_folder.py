"""Writing samples as an image folder with one held-out query per class (the quick start's gallery)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgedml.data import Sample, load_source, write_gallery_and_queries


def test_the_first_image_of_each_class_is_the_query_and_the_rest_the_gallery(tmp_path):
    samples = [Sample(image=np.full((4, 4), 10 * i, np.uint8), label=label) for i, label in enumerate("aabbba")]
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    (gallery / "stale").mkdir(parents=True)  # the tool's own output from an earlier run is replaced
    written = write_gallery_and_queries(samples, gallery, queries)
    assert written == [queries / "a.png", queries / "b.png"]
    assert sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.png")) == [
        "a/0001.png",
        "a/0005.png",
        "b/0003.png",
        "b/0004.png",
    ]
    assert not (gallery / "stale").exists()
    # pixels and mode survive the round trip: digits' grayscale arrays stay grayscale
    with Image.open(queries / "b.png") as query:
        assert query.mode == "L" and np.asarray(query).tolist() == [[20] * 4] * 4
    with Image.open(gallery / "a" / "0005.png") as image:
        assert np.asarray(image)[0, 0] == 50
    source = load_source(str(gallery))
    assert sorted({s.label for s in source.samples}) == ["a", "b"] and len(source.samples) == 4
