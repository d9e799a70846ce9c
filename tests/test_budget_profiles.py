"""Device profiles: the shipped YAML files, schema validation, and `edgedml profiles list|show`."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from edgedml.budget.device import GIB
from edgedml.budget.profiles import PROFILE_KEYS, list_profiles, load_profile, read_profile
from edgedml.errors import ConfigError

REQUIRED_DEVICES = {
    "jetson-nano-4gb", "xavier-nx-8gb", "orin-nano-8gb", "orin-nx-16gb", "agx-orin-32gb", "agx-orin-64gb",
    "desktop-8gb", "desktop-24gb",
}  # fmt: skip


def shipped_text(name: str) -> str:
    return (files("edgedml.profiles") / f"{name}.yaml").read_text(encoding="utf-8")


def write_profile(tmp_path: Path, **changes) -> Path:
    """orin-nano-8gb as a user file, with some keys changed or added (None writes null)."""
    values = yaml.safe_load(shipped_text("orin-nano-8gb"))
    values.update(changes)
    path = tmp_path / "my-board.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


# ---- the shipped files ----------------------------------------------------------------------------


def test_every_required_device_ships():
    assert set(list_profiles()) >= REQUIRED_DEVICES


@pytest.mark.parametrize("name", list_profiles())
def test_every_shipped_profile_loads_with_all_keys(name):
    profile = read_profile(name)
    assert list(profile) == list(PROFILE_KEYS)
    assert profile["name"] == name
    memory = load_profile(name)
    assert memory.source == f"profile:{name}" and memory.name == profile["description"]
    assert memory.total_bytes == round(profile["memory_gib"] * GIB)
    assert memory.os_reserved_bytes == round(profile["os_reserved_gib"] * GIB)
    assert memory.cuda_context_bytes == round(profile["cuda_context_gib"] * GIB)
    # free is what a probe would read before this process's CUDA context; the planner subtracts the context
    assert memory.free_bytes == memory.total_bytes - memory.os_reserved_bytes
    assert memory.used_bytes == memory.os_reserved_bytes  # what the OS holds before this process starts
    assert memory.integrated == profile["integrated"] and memory.safety_margin == profile["safety_margin"]
    assert f"{memory.compute_capability[0]}.{memory.compute_capability[1]}" == profile["compute_capability"]


@pytest.mark.parametrize("name", list_profiles())
def test_every_key_of_a_shipped_file_is_documented_and_sourced(name):
    text = shipped_text(name)
    for key in PROFILE_KEYS:
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert re.search(r"#\s*\((str|float|int|bool)\) \S", line), f"{name}: {key} has no '# (type) meaning' comment"
    for key in ("os_reserved_gib", "cuda_context_gib"):
        line = next(line for line in text.splitlines() if line.startswith(f"{key}:"))
        assert "typical, measure with `edgedml profile` on the device" in line
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "data sheet" in header or "specifications" in header
    assert "developer.nvidia.com/cuda-gpus" in header


def test_known_hardware_facts():
    nano, orin_nano, orin_nx = (
        read_profile("jetson-nano-4gb"),
        read_profile("orin-nano-8gb"),
        read_profile("orin-nx-16gb"),
    )
    assert (nano["compute_capability"], nano["int8"], nano["dla_cores"], nano["jetpack"], nano["tensorrt_major"]) == (
        "5.3",
        False,
        0,
        "4.6",
        8,
    )
    assert (orin_nano["compute_capability"], orin_nano["dla_cores"], orin_nano["tensorrt_major"]) == ("8.7", 0, 10)
    assert orin_nx["dla_cores"] == 2 and read_profile("xavier-nx-8gb")["compute_capability"] == "7.2"
    for desktop in ("desktop-8gb", "desktop-24gb"):
        profile = read_profile(desktop)
        assert profile["jetpack"] is None and not profile["integrated"] and profile["os_reserved_gib"] == 0


@pytest.mark.parametrize(
    "name, total_gib, free_gib, used_gib, context_gib",
    [("orin-nano-8gb", 8, 6.5, 1.5, 0.5), ("jetson-nano-4gb", 4, 2.8, 1.2, 1.0), ("desktop-24gb", 24, 24, 0, 0.5)],
)
def test_profile_memory_in_bytes_by_hand(name, total_gib, free_gib, used_gib, context_gib):
    """memory_gib, less os_reserved_gib free (the CUDA context is a fixed cost the planner subtracts, not here)."""
    memory = load_profile(name)
    expected = (round(total_gib * GIB), round(free_gib * GIB), round(used_gib * GIB), round(context_gib * GIB))
    assert (memory.total_bytes, memory.free_bytes, memory.used_bytes, memory.cuda_context_bytes) == expected


# ---- validation -----------------------------------------------------------------------------------


def test_a_user_file_with_the_same_schema_loads(tmp_path):
    path = write_profile(tmp_path, name="my-board", memory_gib=6)
    memory = load_profile(str(path))
    assert memory.source == "profile:my-board" and memory.total_bytes == 6 * GIB


def test_unknown_key_names_the_file_and_suggests_the_close_match(tmp_path):
    path = write_profile(tmp_path, memory_gb=8.0)
    with pytest.raises(ConfigError) as raised:
        read_profile(str(path))
    assert str(path) in raised.value.message and "'memory_gb'" in raised.value.message
    assert raised.value.hint == "did you mean 'memory_gib'?"


@pytest.mark.parametrize(
    "key, value",
    [
        ("memory_gib", "eight"),
        ("fp16", "maybe"),
        ("dla_cores", 1.5),
        ("integrated", 1),
        ("safety_margin", True),
        ("jetpack", 6),
    ],
)
def test_a_wrong_type_names_the_key(tmp_path, key, value):
    path = write_profile(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: {key} must be"):
        read_profile(str(path))


def test_an_unquoted_version_gets_a_quoting_hint(tmp_path):
    path = write_profile(tmp_path, compute_capability=8.7)
    with pytest.raises(ConfigError) as raised:
        read_profile(str(path))
    assert (
        "compute_capability must be str" in raised.value.message
        and raised.value.hint == 'quote it: compute_capability: "8.7"'
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"safety_margin": 1.5}, "safety_margin must lie in [0, 1)"),
        ({"memory_gib": 0}, "memory_gib must be > 0"),
        ({"dla_cores": -1}, "dla_cores must be >= 0"),
        ({"compute_capability": "sm_87"}, "compute_capability must look like '8.7'"),
        ({"os_reserved_gib": 7.0, "cuda_context_gib": 1.0}, "leave no memory"),
    ],
)
def test_values_out_of_range_are_errors(tmp_path, changes, message):
    path = write_profile(tmp_path, **changes)
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_profile(str(path))


def test_missing_keys_are_listed_and_null_is_allowed_only_where_declared(tmp_path):
    values = yaml.safe_load(shipped_text("desktop-8gb"))
    del values["int8"], values["dla_cores"]
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match="missing int8, dla_cores"):
        read_profile(str(path))
    with pytest.raises(ConfigError, match="memory_gib must be float, got None"):
        read_profile(str(write_profile(tmp_path, memory_gib=None)))
    assert read_profile(str(write_profile(tmp_path, tensorrt_major=None)))["tensorrt_major"] is None


def test_a_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- memory_gib: 8\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_profile(str(path))


def test_unknown_profile_name_suggests_the_close_match_and_lists_all():
    with pytest.raises(ConfigError) as raised:
        load_profile("orin-nano")
    assert raised.value.message == "unknown device profile 'orin-nano'"
    assert raised.value.hint.startswith("did you mean 'orin-nano-8gb'?")
    assert all(name in raised.value.hint for name in list_profiles())


def test_a_missing_file_named_like_a_shipped_profile_hints_at_the_name(tmp_path):
    with pytest.raises(ConfigError) as raised:
        load_profile("orin-nano-8gb.yaml")
    assert "does not exist" in raised.value.message and raised.value.hint.endswith("--profile orin-nano-8gb")


# ---- CLI ------------------------------------------------------------------------------------------


def test_cli_profiles_list(cli):
    result = cli("profiles", "list")
    assert result.exit_code == 0, str(result)
    for name in list_profiles():
        assert name in result.output
    assert (
        "yes/no/0" in result.output and "4.6/8" in result.output
    )  # the Nano: no INT8, no DLA; JetPack 4.6, TensorRT 8


def test_cli_profiles_list_json(cli):
    result = cli("profiles", "list", "--json")
    assert result.exit_code == 0, str(result)
    profiles = json.loads(result.stdout)
    assert [profile["name"] for profile in profiles] == list_profiles()


def test_cli_profiles_show(cli):
    result = cli("profiles", "show", "orin-nano-8gb")
    assert result.exit_code == 0, str(result)
    for key in PROFILE_KEYS:
        assert key in result.output
    assert "NVIDIA Jetson Orin Nano 8GB" in result.output


def test_cli_profiles_show_json_is_the_file(cli):
    result = cli("profiles", "show", "orin-nano-8gb", "--json")
    assert result.exit_code == 0, str(result)
    assert json.loads(result.stdout) == yaml.safe_load(shipped_text("orin-nano-8gb"))


def test_cli_profiles_show_a_close_name_fails_with_a_suggestion(cli):
    result = cli("profiles", "show", "orin-nano")
    assert result.exit_code == ConfigError.exit_code, str(result)
    assert result.error_lines == ["error: unknown device profile 'orin-nano'"]
    assert len(result.hint_lines) == 1 and "did you mean 'orin-nano-8gb'?" in result.hint_lines[0]
    assert "Traceback" not in result.output


def test_cli_profiles_show_a_user_file_with_a_bad_key(cli, tmp_path):
    path = write_profile(tmp_path, safety_margine=0.2)
    result = cli("profiles", "show", path)
    assert result.exit_code == ConfigError.exit_code, str(result)
    assert (
        "unknown key 'safety_margine'" in result.error_lines[0]
        and "did you mean 'safety_margin'?" in result.hint_lines[0]
    )
