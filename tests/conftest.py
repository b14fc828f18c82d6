"""Shared fixtures: an isolated library and cache per test, tiny backbones of both families, slow-test gating."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

RUN_SLOW = os.environ.get("RUN_SLOW", "") not in ("", "0")
for _name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):  # before vidbooth's consoles are made: the tests
    os.environ.pop(_name, None)  # read its output as a pipe or log gets it, whatever the caller's terminal settings


def pytest_collection_modifyitems(config, items):
    import torch

    selected_slow = "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow: set RUN_SLOW=1 (or -m slow) to run")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not (RUN_SLOW or selected_slow):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the whole session, so built-in tiny models are built once."""
    return tmp_path_factory.mktemp("vidbooth-cache")


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_as_in_a_terminal():
    """pytest started with SIGINT (or SIGTERM) ignored (a script's background job, as some CI runners start it) runs
    the tests as from a terminal: Python's Ctrl-C handler here, the default ones in the commands the tests start.
    vidbooth keeps a signal its process was started ignoring ignored, which the tests that send one would meet."""
    import signal

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if previous[signum] == signal.SIG_IGN:
            signal.signal(signum, handler)
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session", autouse=True)
def no_real_library(tmp_path_factory) -> None:
    """A net under `isolated_home`: a test that undoes its monkeypatches (`monkeypatch.undo()`) falls back to these
    session folders, not to the user's real library and cache, which one such test had written in."""
    stray = tmp_path_factory.mktemp("outside-a-test")
    for name, folder in (("VIDBOOTH_HOME", "home"), ("VIDBOOTH_CACHE", "cache"), ("XDG_DATA_HOME", "data")):
        os.environ[name] = str(stray / folder)


@pytest.fixture(autouse=True)
def isolated_home(no_real_library, tmp_path, shared_cache, monkeypatch, request) -> Path:
    """Every test gets an empty library; nothing touches the user's real one. Tests not marked gpu run on the CPU
    also where a GPU is visible (in this process and in the ones they start): the numbers they check, bit-identical
    reruns and resumes among them, are the CPU's."""
    if "gpu" not in request.node.keywords:
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    home = tmp_path / "vidbooth-home"
    monkeypatch.setenv("VIDBOOTH_HOME", str(home))
    monkeypatch.setenv("VIDBOOTH_CACHE", str(shared_cache))
    monkeypatch.setenv("VIDBOOTH_QUIET", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the commands the tests start: as `one_torch_thread`, several times
    # faster on the shared 2-core machines than on two contended threads (accelerate's launcher sets it there already)
    monkeypatch.delenv("VIDBOOTH_ATTENTION", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_base_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny models of each family saved in diffusers layout, as a user would have them on disk."""
    from vidbooth.engine.tiny import save_tiny_backbone

    root = tmp_path_factory.mktemp("tiny-bases")
    return {family: save_tiny_backbone(root / family, family) for family in ("unet3d", "animatediff")}


@pytest.fixture(scope="session")
def tiny_backbones(tiny_base_dirs):
    """Loaded once per session through `load_backbone`; tests must not leave adapters injected."""
    from vidbooth.engine.backbone import load_backbone
    from vidbooth.engine.tiny import motion_adapter_folder

    return {
        "unet3d": load_backbone(str(tiny_base_dirs["unet3d"]), device="cpu"),
        "animatediff": load_backbone(
            str(tiny_base_dirs["animatediff"]),
            motion_adapter=str(motion_adapter_folder(tiny_base_dirs["animatediff"])),
            device="cpu",
        ),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Opt in per module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): on the shared 2-core machines,
    the tiny models train several times faster on one thread than on two contended ones."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny CLIP (text and image towers) saved in transformers' layout."""
    from media import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A tiny ViT saved in transformers' layout, standing in for DINO."""
    from media import save_tiny_vit

    return save_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture
def fails_rather_than_hangs():
    """The test fails after `HANG_SECONDS` instead of running on: a bad input let through (an uncapped
    grad_accumulation, 2**31 micro-batches a step) would loop for days, and pytest-timeout is not a dependency.
    Where there is no SIGALRM (Windows) the test runs without the limit."""
    import signal

    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def hung(signum, frame):
        raise TimeoutError(f"still running after {HANG_SECONDS} s: an input that should be refused was let through")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


HANG_SECONDS = 300
"""How long a test under `fails_rather_than_hangs` may run: its refusal takes seconds on 2 slow cores."""


@pytest.fixture
def fresh_accelerate_state():
    """One process holds one mixed-precision setting; reset it around a test that needs another (as accelerate's
    own test cases do). The fixture's value resets it again, for a test that changes it part-way."""
    from accelerate.state import AcceleratorState

    def reset() -> None:
        AcceleratorState._reset_state(True)

    reset()
    yield reset
    reset()


@pytest.fixture
def world_inputs(tmp_path) -> tuple[Path, Path]:
    """(photos folder, clip): 3 photos of a red striped circle and a clip of a blue square moving right, 64x64."""
    from PIL import Image

    from vidbooth.data.video import write_video
    from vidbooth.nano.world import Motion, Sprite, render_motion_clips, render_photos

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(render_photos(Sprite("circle", "red", "striped"), n=3, size=64, seed=1)):
        Image.fromarray(image).save(photos / f"{i}.png")
    clip = tmp_path / "clip.mp4"
    write_video(render_motion_clips(Motion("right"), Sprite("square", "blue", "solid"), n=1, size=64)[0], clip)
    return photos, clip


@pytest.fixture
def two_process_launch(tmp_path, monkeypatch) -> list[str]:
    """The start of an `accelerate launch` command of two CPU processes (gloo), on a free port: the default 29500
    may be held (a training on this machine, another test's processes not yet gone). The launcher's temporary
    folders (torchelastic_*, which it leaves behind) go to the test's own: TMPDIR is set for the processes started
    with this environment."""
    import socket
    import sys

    launch_tmp = tmp_path / "launch-tmp"
    launch_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(launch_tmp))

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--mixed_precision", "no", "--num_machines", "1", "--dynamo_backend", "no",
            "--main_process_port", str(port)]



@pytest.fixture
def recomputations(monkeypatch) -> list[str]:
    """The layers (class names) gradient checkpointing ran through `torch.utils.checkpoint` in this test, as
    `vidbooth.engine.recompute` calls it: a run that trains the same weights with the setting ignored is told
    from one that recomputed."""
    from vidbooth.engine import recompute

    calls = []
    real = recompute.checkpoint

    def counted(run, forward, *args, **kwargs):
        calls.append(type(forward.__self__).__name__)
        return real(run, forward, *args, **kwargs)

    monkeypatch.setattr(recompute, "checkpoint", counted)
    return calls
