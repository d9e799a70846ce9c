"""Every command README.md shows, run as written, so that a documented command cannot break unseen.

The commands are read from README.md at collection time: each line of a ```bash / ```sh / ``` block that
starts with ``edgedml `` (or ``torchrun ... -m edgedml.cli.main``), backslash continuations joined, comments
dropped. Each runs once, in a module-wide folder that stands in for the user's working directory, with
only these changes, each made by one explicit rule below:

- paths: relative paths (``runs/digits``, ``manifest.csv``, ``exports/m.onnx``) are taken as written,
  inside the folder; ``~/...`` folders and bare placeholders (``model.onnx``) are mapped by ``PLACEHOLDERS``,
  absolute ``/tmp/...`` paths by ``PREFIXES``; the inputs a command reads are made first: by the README
  command that writes them (the ``train`` of ``runs/digits`` before its ``export``, that ``export`` before
  ``bench runs/digits/model.onnx``), or by ``Workspace.input_files`` (image folders, CSV manifests, query
  images, a config file); an engine this machine cannot build is a stand-in copied "from the device";
- tiny sizes (``tiny``): one epoch and 16 px inputs for ``train`` / ``profile`` (``--resume`` takes only
  ``--epochs``: 2, one more than the run it continues), one epoch per quick-start run, 3 timed calls after
  1 warm-up for ``bench``; the data sets are digits, glyphs and tiny image folders;
- ``torchrun`` runs as ``python -m torch.distributed.run --standalone`` (a free port) with ``--device cpu``;
- downloads (``--weights imagenet``, ``weights download``) come from a server on 127.0.0.1 standing in for
  download.pytorch.org (``weights_mirror``): this machine has no internet;
- ``serve`` runs as a user runs it, as a process, on a free port (``--port 0``) and on 127.0.0.1 (servers the
  tests start listen on loopback only: another ``--host`` is replaced); once ``/health`` answers, ``/search``
  is asked for the query image's neighbours, then Ctrl-C (SIGINT) must stop it with exit code 0.

Every other option stays as written: the point is that the documented combinations are accepted and work.
A command that needs what this machine lacks (a TensorRT engine, ``--device cuda``, ``--amp``) still runs
and must end in one ``error:`` line and a hint, with a non-zero exit code and no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache, partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import CliResult
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_BLOCKS = {"", "bash", "sh", "shell"}  # info strings of the fenced blocks whose lines are commands
FENCE = re.compile(r"^\s*```\s*(\S*)")


# ---------------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Command:
    line: int  # README line the command starts on
    text: str  # as written, continuations joined
    args: tuple[str, ...]  # shell words, trailing comment dropped; args[0] is edgedml or torchrun

    @property
    def torchrun(self) -> bool:
        return self.args[0] == "torchrun"

    @property
    def cli_args(self) -> list[str]:
        """The arguments edgedml itself parses."""
        if self.torchrun:
            return list(self.args[self.args.index("edgedml.cli.main") + 1 :])
        return list(self.args[1:])

    @property
    def subcommand(self) -> str:
        words = self.cli_args
        return " ".join(words[:2]) if words[0] == "profiles" else words[0]

    @property
    def id(self) -> str:
        return f"L{self.line}-{'torchrun-' * self.torchrun}{self.subcommand.replace(' ', '-')}"

    def option(self, name: str) -> str | None:
        args = self.cli_args
        return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else None


def parse_commands(text: str) -> list[Command]:
    """The edgedml and torchrun command lines of the shell blocks of a Markdown text."""
    commands: list[Command] = []
    in_block = shell = False
    start, parts = 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        fence = FENCE.match(line)
        if fence and not parts:
            in_block, shell = (False, False) if in_block else (True, fence.group(1).lower() in SHELL_BLOCKS)
            continue
        if not (in_block and shell):
            continue
        if not parts:
            start = number
        stripped = line.strip()
        parts.append(stripped.removesuffix("\\").strip())
        if stripped.endswith("\\"):
            continue
        joined, parts = " ".join(parts), []
        if not joined.startswith(("edgedml ", "torchrun ")):  # comments, other commands, program output
            continue
        words = shlex.split(joined, comments=True)
        if words[0] == "edgedml" or "edgedml.cli.main" in words:
            commands.append(Command(start, joined, tuple(words)))
    return commands


@cache
def readme_commands() -> tuple[Command, ...]:
    return tuple(parse_commands(README.read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------- the rules

# Paths a README command names that do not exist on a user's machine, and what stands in for them here
# (relative to the working folder). Every `~/` path must have a rule: an unknown one fails the test.
PLACEHOLDERS = {
    "~/data/products": "images/products",  # "your images": an ImageFolder
    "~/data/shop": "images/shop",  # other images to calibrate int8 on
    "~/photos/new": "images/new",  # new images to append to an index
    "path/to/images": "images/products",
    # "an exported model": the quick start's 16-d fp32 file (IVF-PQ trains 4x faster on 16-d than on 64-d vectors)
    "model.onnx": "runs/quickstart/s2sd-16d/model.onnx",
    "model.engine": "runs/digits/model.engine",  # "a TensorRT engine"
    "RUN_DIR": "runs/digits",
    "QUERY.png": "query.png",
}
# Backbones whose ImageNet weights README commands download (from the local mirror, see weights_mirror).
MIRRORED_WEIGHTS = ("mobilenetv2",)
# Absolute paths the README writes to, moved into the folder.
PREFIXES = {"/tmp/": "tmp/"}
# Options whose value a command reads (an input); a positional argument is an input too.
# (--uri: a Milvus Lite file the command writes) ... except with --append, where it is the index to extend
OUTPUT_OPTIONS = ("--out", "--uri")
PICTURE_OPTIONS = ("--show", "--examples", "--embedding-plot")  # outputs too: the pictures a command draws


def tiny(command: Command, args: list[str], set_option: Callable) -> list[str]:
    """``args`` with the sizes made tiny: each command takes seconds on a CPU."""
    name = command.subcommand
    if name == "train" and "--resume" in args:
        # only --epochs may be given with --resume; the run it continues trained 1 epoch
        return set_option(args, "--epochs", "2") if "--epochs" in args else args
    if name == "train":
        args = set_option(set_option(args, "--epochs", "1"), "--input-size", "16")
        return set_option(args, "--device", "cpu") if command.torchrun else args
    if name == "profile":
        return set_option(args, "--input-size", "16")
    if name == "quickstart":
        return set_option(args, "--epochs", "1")
    if name == "bench":
        return set_option(set_option(args, "--iters", "3"), "--warmup", "1")
    if name == "serve":  # a free port, on loopback only
        args = set_option(args, "--port", "0")
        return set_option(args, "--host", "127.0.0.1") if "--host" in args else args
    return args


def uses_tensorrt(args: list[str]) -> bool:
    """A TensorRT engine is built (--format engine) or run (an .engine / .plan file)."""
    engine_export = "--format" in args and args[args.index("--format") + 1] == "engine"
    return engine_export or any(a.endswith((".engine", ".plan")) for a in args)


def needs_missing_hardware(args: list[str]) -> bool:
    """The command needs CUDA or TensorRT (which this machine may lack)."""
    cuda = "--device" in args and args[args.index("--device") + 1] == "cuda"
    return uses_tensorrt(args) or cuda or "--amp" in args


def hardware_present(args: list[str]) -> bool:
    """This machine has what the command needs: CUDA, and TensorRT for an engine."""
    import torch

    if not torch.cuda.is_available():
        return False
    if uses_tensorrt(args):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return False
    return True


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def digit_image(index: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images[index] * 16


def write_manifest(path: Path, folder: Path) -> None:
    rows = ["path,label"] + [
        f"{image.relative_to(path.parent).as_posix()},{image.parent.name}" for image in sorted(folder.glob("*/*.png"))
    ]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_big_gallery(path: Path, count: int = 10_000) -> None:
    """A CSV of ``count`` distinct 8x8 images: IVF-PQ needs at least 9,984 to train."""
    rng = np.random.default_rng(0)
    folder = path.parent / "big"
    rows = ["path,label"]
    for i, pixels in enumerate(rng.integers(0, 256, (count, 8, 8))):
        image = folder / f"c{i % 10}" / f"{i}.png"
        write_png(image, pixels)
        rows.append(f"{image.relative_to(path.parent).as_posix()},c{i % 10}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def write_engine_stand_in(path: Path) -> None:
    """An engine as copied from the device that built it: the file and its sidecar (this machine cannot build one)."""
    from edgedml.export.tensorrt import SIDECAR_FORMAT, SIDECAR_VERSION, sidecar_path

    path.write_bytes(b"not an engine this machine can run")
    sidecar = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "tensorrt_version": "10.3.0"}
    sidecar["gpu"] = {"name": "Orin (nvgpu)", "compute_capability": "8.7"}
    sidecar_path(path).write_text(json.dumps(sidecar), encoding="utf-8")


def substitute(args: list[str]) -> list[str]:
    """``args`` with the placeholders replaced (PLACEHOLDERS, PREFIXES)."""
    result = []
    for arg in args:
        arg = PLACEHOLDERS.get(arg, arg)
        for prefix, replacement in PREFIXES.items():
            if arg.startswith(prefix):
                arg = replacement + arg.removeprefix(prefix)
        assert not arg.startswith(("~", "/")), f"{arg}: no rule in PLACEHOLDERS or PREFIXES for this path"
        result.append(arg)
    return result


def inputs(args: list[str]) -> list[str]:
    """The paths a command reads: its words that look like relative paths, except where it writes."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("-"):
            continue
        if i and args[i - 1] in OUTPUT_OPTIONS and "--append" not in args:
            continue
        if i and args[i - 1] in PICTURE_OPTIONS:
            continue
        if "/" in arg or re.search(r"\.(csv|ya?ml|png|jpe?g|onnx|engine|plan|safetensors)$", arg):
            found.append(arg)
    return found


def producers(path: str) -> list[Command]:
    """README commands that write ``path``: those writing its folder (a run, the quick start), then an
    export into that run (model.onnx, model.fp16.onnx with --half, model.int8.onnx with --int8)."""
    writers = []
    for command in readme_commands():
        out = command.option("--out") or command.option("--uri")
        out = substitute([out])[0] if out else None
        if out and (path == out or path.startswith(out + "/")) and "--append" not in command.args:
            writers.append(command)
    parent, _, name = path.rpartition("/")
    for command in readme_commands():
        args = substitute(command.cli_args)
        if command.subcommand != "export" or args[1] != parent or "--out" in args:
            continue
        if "engine" in args:
            writes = name == "model.engine"
        else:
            writes = {"model.onnx": True, "model.fp16.onnx": "--half" in args, "model.int8.onnx": "--int8" in args}
            writes = writes.get(name, False)
        if writes:
            writers.append(command)
    return writers


# ---------------------------------------------------------------------------------------- running


@dataclass
class Outcome(CliResult):
    args: list[str] = field(default_factory=list)  # the command as run

    def __str__(self) -> str:
        return f"ran: {shlex.join(self.args)}\n{super().__str__()}"


class Workspace:
    """The user's working folder: runs each README command once (the first test that needs it)."""

    def __init__(self, root: Path, cli, make_image_folder, set_option) -> None:
        self.root, self.cli, self.set_option = root, cli, set_option
        self.make_image_folder = make_image_folder
        self.outcomes: dict[int, Outcome] = {}  # by README line
        self.running: set[int] = set()
        self.input_files: dict[str, Callable[[Path], object]] = {
            # 16 training classes: the default batch (16 classes x 4 images) fits
            "images/products": lambda p: make_image_folder(p, classes=32, seed=0),
            "images/shop": lambda p: make_image_folder(p, seed=1),
            "images/new": lambda p: make_image_folder(p, seed=2),
            "manifest.csv": lambda p: write_manifest(p, self.ensure("images/products")),
            "other.csv": lambda p: write_manifest(p, self.ensure("images/shop")),
            "big.csv": write_big_gallery,
            # a run's resolved configuration is re-usable with --config (README, "A run directory holds")
            "cfg.yaml": lambda p: shutil.copyfile(self.ensure("runs/digits") / "config.yaml", p),
            "query.png": lambda p: write_png(p, digit_image(5)),
            "a.png": lambda p: write_png(p, digit_image(6)),
            "b.png": lambda p: write_png(p, digit_image(7)),
        }

    def ensure(self, path: str) -> Path:
        """``path`` inside the folder, made first if it is missing."""
        target = self.root / path
        if target.exists():
            return target
        if path in self.input_files:
            self.input_files[path](target)
            return target
        for command in producers(path):
            if command.line in self.running:
                continue
            outcome = self.run(command)
            if target.exists():
                return target
            assert outcome.exit_code == 0 or needs_missing_hardware(outcome.args), (
                f"README line {command.line}, which makes {path}, failed:\n{outcome}"
            )
        if path.endswith((".engine", ".plan")):  # no GPU to build it here: as if built on the device
            write_engine_stand_in(target)
            return target
        raise AssertionError(f"{path}: neither a README command nor a rule of this test makes it")

    # -- commands

    def arguments(self, command: Command) -> list[str]:
        args = tiny(command, substitute(command.cli_args), self.set_option)
        for path in inputs(args):
            self.ensure(path)
        return args

    def run(self, command: Command) -> Outcome:
        if command.line not in self.outcomes:
            self.running.add(command.line)
            try:
                if command.torchrun:
                    self.outcomes[command.line] = self._torchrun(command)
                elif command.subcommand == "serve":
                    self.outcomes[command.line] = self._serve(command)
                else:
                    self.outcomes[command.line] = self._cli(command)
            finally:
                self.running.discard(command.line)
        return self.outcomes[command.line]

    def _cli(self, command: Command) -> Outcome:
        import torch

        args = self.arguments(command)
        threads, cwd = torch.get_num_threads(), Path.cwd()
        os.chdir(self.root)
        try:
            result = self.cli(*args)
        finally:
            os.chdir(cwd)
            torch.set_num_threads(threads)  # bench --threads sets PyTorch's process-wide count
        return Outcome(result.exit_code, result.output, result.stdout, result.exception, ["edgedml", *args])

    def _serve(self, command: Command) -> Outcome:
        """The server as a process: up, one search of the query image answered, stopped by Ctrl-C."""
        import httpx

        from edgedml.retrieval.milvus_store import close_connections

        args = self.arguments(command)
        close_connections()  # the commands run in this process hold their Milvus Lite databases until released
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1"}
        token = args[args.index("--token") + 1] if "--token" in args else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        server = subprocess.Popen(
            [sys.executable, "-m", "edgedml.cli.main", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.root,
        )
        lines: list[str] = []
        try:
            url = None
            for line in server.stdout:  # the start-up lines, up to the URL
                lines.append(line)
                found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
                if found:
                    url = found.group(1)
                    break
            assert url is not None, "".join(lines)
            with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                assert client.get("health").json()["status"] == "ok"
                query = self.ensure("query.png").read_bytes()
                found = client.post("search", files={"images": ("query.png", query, "image/png")})
                assert found.status_code == 200, found.text
                assert found.json()["results"][0]["hits"], found.text
            server.send_signal(signal.SIGINT)
            rest, _ = server.communicate(timeout=60)
            lines.append(rest)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
        return Outcome(server.returncode, "".join(lines), "".join(lines), None, ["edgedml", *args])

    def _torchrun(self, command: Command) -> Outcome:
        launcher = list(command.args[1 : command.args.index("-m")])
        args = self.arguments(command)
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone", *launcher, "-m", "edgedml.cli.main"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "NO_COLOR": "1"}
        done = subprocess.run([*run, *args], capture_output=True, text=True, env=env, timeout=600, cwd=self.root)
        output = done.stdout + done.stderr
        return Outcome(
            done.returncode,
            output,
            done.stdout,
            None,
            ["torchrun", "--standalone", *launcher, "-m", "edgedml.cli.main", *args],
        )


@pytest.fixture(scope="module")
def weights_mirror(tmp_path_factory) -> Iterator[str]:
    """download.pytorch.org, as far as this offline machine can have it: a server on 127.0.0.1 serving a
    torchvision-layout state dict of every backbone the README downloads (seeded random weights, not ImageNet's),
    each in the catalogue under its own sha256; ``EDGEDML_WEIGHTS_URL`` and the cache point at temporary folders.
    The README's ``--weights imagenet`` and ``weights download`` then run as a user's do: download, check, cache."""
    import torch

    from edgedml.models import create_backbone
    from edgedml.models.pretrained import CATALOGUE, PretrainedWeights

    folder = tmp_path_factory.mktemp("weights-mirror")
    with pytest.MonkeyPatch.context() as patch:
        for backbone in MIRRORED_WEIGHTS:
            torch.manual_seed(0)
            staged = folder / "staged.pth"
            torch.save(create_backbone(backbone).state_dict(), staged)
            digest = hashlib.sha256(staged.read_bytes()).hexdigest()
            served = staged.rename(folder / f"{backbone}-{digest[:8]}.pth")
            patch.setitem(CATALOGUE, backbone, PretrainedWeights(backbone, served.name, digest))
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(folder)))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        patch.setenv("EDGEDML_WEIGHTS_URL", url)
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        try:
            yield url
        finally:
            server.shutdown()
            thread.join()
            server.server_close()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cli, make_image_folder, set_option, weights_mirror) -> Workspace:
    return Workspace(tmp_path_factory.mktemp("readme"), cli, make_image_folder, set_option)


# ---------------------------------------------------------------------------------------- the tests


def trains(command: Command, seen: frozenset[int] = frozenset()) -> bool:
    """The command trains, or needs a run that a README command must train first."""
    if command.subcommand in ("train", "quickstart"):
        return True
    return any(
        trains(producer, seen | {command.line})
        for path in inputs(substitute(command.cli_args))
        for producer in producers(path)
        if producer.line not in seen | {command.line}
    )


def params() -> list:
    return [
        pytest.param(command, id=command.id, marks=[pytest.mark.slow] if trains(command) else [])
        for command in readme_commands()
    ]


@pytest.mark.parametrize("command", params())
def test_readme_command(workspace: Workspace, command: Command):
    outcome = workspace.run(command)
    print(outcome)  # shown with -rP
    assert "Traceback" not in outcome.output, str(outcome)
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit), str(outcome)
    if needs_missing_hardware(outcome.args) and not hardware_present(outcome.args):
        # the documented one-line error: what is missing, and a hint
        assert outcome.exit_code != 0, str(outcome)
        assert len(outcome.error_lines) == 1 and len(outcome.hint_lines) == 1, str(outcome)
        assert re.search(r"TensorRT|CUDA|GPU", outcome.error_lines[0]), str(outcome)
        return
    assert outcome.exit_code == 0, str(outcome)
    assert not outcome.error_lines, str(outcome)
    if "--json" in outcome.args:
        json.loads(outcome.stdout)
    out = command.option("--out")
    if out is not None:
        assert (workspace.root / substitute([out])[0]).exists(), str(outcome)


def test_the_readme_shows_every_command():
    """The parser finds the README's commands, and every sub-command of the app is among them."""
    from edgedml.cli.main import app

    commands = readme_commands()
    shown = {command.subcommand.split()[0] for command in commands}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    registered |= {g.name for g in app.registered_groups}
    assert registered <= shown, f"no README command for {sorted(registered - shown)}"
    assert any(command.torchrun for command in commands)


def test_parse_commands_joins_continuations_and_skips_comments():
    text = "\n".join(
        [
            "```bash",
            "# a comment: edgedml train",
            "edgedml train --data digits \\",
            "    --epochs 2   # trailing comment",
            "pip install edgedml",
            "```",
            "```python",
            "edgedml not a shell block",
            "```",
            "```",
            "torchrun --nproc-per-node 2 -m edgedml.cli.main train --out runs/x",
            "```",
        ]
    )
    commands = parse_commands(text)
    assert [(c.line, c.args) for c in commands] == [
        (3, ("edgedml", "train", "--data", "digits", "--epochs", "2")),
        (11, ("torchrun", "--nproc-per-node", "2", "-m", "edgedml.cli.main", "train", "--out", "runs/x")),
    ]
    assert [c.id for c in commands] == ["L3-train", "L11-torchrun-train"]
