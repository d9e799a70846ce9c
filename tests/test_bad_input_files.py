"""Files the tool cannot read as they are: manifests in another encoding or with a byte-order mark, rows that
lead outside the manifest's folder, decompression bombs, 16-bit images, YAML files that are not UTF-8.

Each is either read correctly or refused with one ``error:`` line naming the file (and line) and a hint that
works; an unreadable image is skipped with a warning like any other; the files themselves stay unchanged.
"""

from __future__ import annotations

import logging
import struct
import zlib
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_error, sha256
from PIL import Image

from edgedml.budget.profiles import load_profile, read_profile
from edgedml.config import TrainConfig
from edgedml.data import load_image, load_source, scan_samples
from edgedml.data.images import DECODE_ERRORS, check_image
from edgedml.data.transforms import pil_to_tensor
from edgedml.errors import ConfigError, DataError


@pytest.fixture
def manifest_folder(tmp_path) -> Path:
    """tmp_path/set/imgs/{a0,a1,b0,b1}.png (8 x 8 RGB); returns the ``set`` folder."""
    folder = tmp_path / "set"
    (folder / "imgs").mkdir(parents=True)
    for i, name in enumerate(["a0", "a1", "b0", "b1"]):
        Image.new("RGB", (8, 8), (60 * i, 20, 200 - 40 * i)).save(folder / "imgs" / f"{name}.png")
    return folder


ROWS = ["imgs/a0.png,a", "imgs/a1.png,a", "imgs/b0.png,b", "imgs/b1.png,b"]


# ---- CSV encodings ----------------------------------------------------------------------------------


def test_a_utf8_bom_does_not_turn_the_header_into_an_image(manifest_folder):
    manifest = manifest_folder / "m.csv"
    manifest.write_bytes(("\ufeffpath,label\n" + "\n".join(ROWS) + "\n").encode("utf-8"))
    source = load_source(str(manifest))
    assert [Path(s.image).name for s in source.samples] == ["a0.png", "a1.png", "b0.png", "b1.png"]
    assert source.classes == ["a", "b"]


def test_a_latin1_manifest_is_one_error_naming_the_file_and_line_and_the_hint_works(
    cli, manifest_folder, tmp_path, tiny_train_options
):
    manifest = manifest_folder / "m.csv"
    manifest.write_bytes(
        ("path,label\n" + "\n".join([*ROWS[:2], "imgs/b0.png,caf\xe9", "imgs/b1.png,caf\xe9"]) + "\n").encode("latin-1")
    )
    before = sha256(manifest)
    result = cli("train", "--data", manifest, "--out", tmp_path / "run", *tiny_train_options)
    assert_one_error(result, f"{manifest}:4", "not UTF-8", "0xe9")
    assert "iconv -f latin1 -t utf-8" in result.hint_lines[0]
    assert sha256(manifest) == before and not (tmp_path / "run").exists()
    # what the hint's iconv writes loads, the accented label intact
    fixed = manifest_folder / "m.utf8.csv"
    assert str(fixed) in result.hint_lines[0]
    fixed.write_bytes(manifest.read_bytes().decode("latin-1").encode("utf-8"))
    assert load_source(str(fixed)).classes == ["a", "café"]


def test_bytes_that_are_no_text_at_all_are_a_data_error(manifest_folder):
    manifest = manifest_folder / "m.csv"
    manifest.write_bytes(b"\xff\xfe\x00\x01garbage\n\x80\x81")
    with pytest.raises(DataError, match=r"m\.csv:1: not UTF-8 text"):
        load_source(str(manifest))


# ---- rows stay inside the manifest's folder -----------------------------------------------------------


def test_a_relative_row_leading_outside_the_folder_is_an_error_naming_the_line(cli, manifest_folder, tmp_path):
    manifest = manifest_folder / "m.csv"
    manifest.write_text("path,label\n" + "\n".join([*ROWS[:2], "../../etc/shadow,b", ROWS[3]]) + "\n", encoding="utf-8")
    before = sha256(manifest)
    result = cli("train", "--data", manifest, "--out", tmp_path / "run", "--device", "cpu")
    assert_one_error(result, f"{manifest}:4", "'../../etc/shadow'", "outside the manifest's folder")
    assert "absolute path" in result.hint_lines[0]
    assert sha256(manifest) == before and not (tmp_path / "run").exists()


@pytest.mark.parametrize("row", ["../outside.png,b", "imgs/../../outside.png,b", "./imgs/../../outside.png,b"])
def test_every_spelling_of_outside_is_refused(manifest_folder, row):
    manifest = manifest_folder / "m.csv"
    manifest.write_text("\n".join([*ROWS, row]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.csv:5: .* leads outside the manifest's folder"):
        load_source(str(manifest))


def test_an_absolute_path_is_taken_as_meant_and_dotdot_inside_the_folder_is_fine(manifest_folder, tmp_path):
    outside = tmp_path / "elsewhere" / "c0.png"
    outside.parent.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    manifest = manifest_folder / "m.csv"
    manifest.write_text("\n".join([*ROWS, f"{outside},c", "imgs/../imgs/a0.png,c"]) + "\n", encoding="utf-8")
    samples = load_source(str(manifest)).samples
    assert (
        samples[4].image == str(outside)
        and Path(samples[5].image).resolve() == (manifest_folder / "imgs" / "a0.png").resolve()
    )
    assert scan_samples(samples).skipped == []


def test_a_manifest_given_by_a_relative_path_checks_against_its_own_folder(manifest_folder, monkeypatch):
    monkeypatch.chdir(manifest_folder)
    Path("m.csv").write_text("\n".join([*ROWS, "../x.png,b"]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"m\.csv:5"):
        load_source("m.csv")
    Path("m.csv").write_text("\n".join(ROWS) + "\n", encoding="utf-8")
    assert len(load_source("m.csv").samples) == 4


@pytest.mark.parametrize(("row", "fragment"), [(",a", "empty path"), ("imgs/a0.png,", "empty label")])
def test_an_empty_path_or_label_names_the_line(manifest_folder, row, fragment):
    manifest = manifest_folder / "m.csv"
    manifest.write_text("\n".join([*ROWS, row]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"m\.csv:5: {fragment}"):
        load_source(str(manifest))


# ---- decompression bombs ----------------------------------------------------------------------------


def write_bomb(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header claims ``side`` x ``side`` pixels (CRC fixed, so the header itself is valid)."""
    Image.new("RGB", (4, 4), (9, 9, 9)).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", side, side)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path):
    bomb = write_bomb(tmp_path / "bomb.png")
    assert check_image(str(bomb)) == "unreadable (DecompressionBombError)"
    with pytest.raises(DECODE_ERRORS):
        load_image(str(bomb))


def test_training_skips_a_bomb_with_a_warning_instead_of_aborting(
    cli, tmp_path, make_image_folder, tiny_train_options, set_option
):
    data = make_image_folder(tmp_path / "images")
    bomb = write_bomb(data / "class0" / "zz-bomb.png")
    before = sha256(bomb)
    result = cli("train", "--data", data, "--out", tmp_path / "run", *set_option(tiny_train_options, "--epochs", "1"))
    assert result.exit_code == 0, str(result)
    assert (
        "skipped 1 unusable image(s)" in result.output
        and "zz-bomb.png (unreadable (DecompressionBombError))" in result.output
    )
    assert "Traceback" not in result.output and sha256(bomb) == before


def test_the_scan_used_by_index_and_search_skips_a_bomb(tmp_path, make_image_folder, caplog):
    data = make_image_folder(tmp_path / "images", classes=2, per_class=3)
    write_bomb(data / "class1" / "bomb.png")
    caplog.set_level(logging.WARNING, logger="edgedml")
    scan = scan_samples(load_source(str(data)).samples)
    assert len(scan.usable) == 6 and [Path(p).name for p, _ in scan.skipped] == ["bomb.png"]
    assert "DecompressionBombError" in caplog.text


# ---- 16-bit images ----------------------------------------------------------------------------------


def test_a_16_bit_png_is_scaled_by_its_range_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257, 128 * 257], [200 * 257, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "I;16"  # what Pillow reads a 16-bit grey PNG as
    rgb = np.asarray(load_image(str(path)))
    expected = np.array([[0, 1, 128], [200, 255, 4]], dtype=np.uint8)  # round(v / 257)
    assert rgb.shape == (2, 3, 3)
    for channel in range(3):
        assert (rgb[..., channel] == expected).all()
    assert pil_to_tensor(load_image(str(path))).max() == 1.0 and pil_to_tensor(load_image(str(path))).min() == 0.0


def test_16_bit_arrays_and_32_bit_modes_convert_by_their_range():
    assert (np.asarray(load_image(np.array([[0, 65535]], dtype=np.uint16)))[..., 0] == [0, 255]).all()
    as_int = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))  # mode I: a 16-bit range in 32 bits
    assert as_int.mode == "I"
    from edgedml.data.images import to_rgb

    assert (np.asarray(to_rgb(as_int))[..., 0] == [0, 128, 255]).all()
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert (np.asarray(to_rgb(as_float))[..., 0] == [0, 128, 255]).all()
    eight_bit = Image.fromarray(np.array([[3, 250]], dtype=np.uint8))
    assert (np.asarray(to_rgb(eight_bit))[..., 0] == [3, 250]).all()  # 8-bit images unchanged


# ---- YAML files that are not UTF-8 ------------------------------------------------------------------


def shipped_profile_text() -> str:
    return (files("edgedml.profiles") / "orin-nano-8gb.yaml").read_text(encoding="utf-8")


def test_a_latin1_profile_is_one_error_naming_the_file_and_the_hint_works(cli, tmp_path):
    path = tmp_path / "board.yaml"
    text = shipped_profile_text().replace("description: NVIDIA Jetson Orin Nano 8GB", "description: Carte d'évaluation")
    path.write_bytes(text.encode("latin-1"))
    before = sha256(path)
    result = cli("profiles", "show", path)
    assert_one_error(result, f"profile file {path}", "not UTF-8", "0xe9")
    assert "iconv -f latin1 -t utf-8" in result.hint_lines[0]
    assert sha256(path) == before
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_profile(str(path))
    fixed = tmp_path / "fixed.yaml"  # what the hint's iconv writes
    fixed.write_bytes(path.read_bytes().decode("latin-1").encode("utf-8"))
    assert read_profile(str(fixed))["description"] == "Carte d'évaluation"


def test_a_profile_yaml_value_pyyaml_cannot_construct_is_one_error(cli, tmp_path):
    path = tmp_path / "board.yaml"
    path.write_text(shipped_profile_text().replace('jetpack: "6.2"', "jetpack: 2024-13-01"), encoding="utf-8")
    result = cli("profiles", "show", path)
    assert_one_error(result, str(path), "a value YAML cannot read")


def test_a_latin1_config_file_is_one_error_naming_the_file(cli, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_bytes("# réglages\nepochs: 2\n".encode("latin-1"))
    before = sha256(path)
    result = cli("train", "--config", path, "--out", tmp_path / "run")
    assert_one_error(result, f"config file {path}", "not UTF-8", "line 1")
    assert sha256(path) == before
    fixed = tmp_path / "fixed.yaml"
    fixed.write_bytes(path.read_bytes().decode("latin-1").encode("utf-8"))
    assert TrainConfig.from_sources(fixed).epochs == 2
