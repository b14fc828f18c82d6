"""What a command changes for the whole Python process, put back when it ends.

A script or notebook that calls `vidbooth.cli.app.main` keeps its own state across commands: its random streams
(training seeds Python's, NumPy's and torch's for a reproducible start), stdout's handling of characters its
encoding lacks (escaped while a command runs), the library folder (`--home` sets VIDBOOTH_HOME for the command's
code) and `--quiet` (VIDBOOTH_QUIET), torch's thread count (pretrain sets it) and the Hugging Face libraries'
logging and progress bars (silenced while vidbooth loads and runs models, as it reports on its own). A library
first imported by the command is left as a fresh import would be: unseeded, at its default verbosity.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

HOME_VARIABLE = "VIDBOOTH_HOME"
KEPT_VARIABLES = (HOME_VARIABLE, "VIDBOOTH_QUIET")
"""The environment variables vidbooth's own options set for the command's code (--home, --quiet)."""
LOGGING_LIBRARIES = ("transformers", "diffusers")


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """The block's changes to the process's random streams, VIDBOOTH_HOME and VIDBOOTH_QUIET, torch's thread count
    and the Hugging Face libraries' logging undone when it ends, however it ends."""
    variables = {name: os.environ.get(name) for name in KEPT_VARIABLES}
    stdout, stdout_errors = sys.stdout, getattr(sys.stdout, "errors", None)
    python_random = random.getstate()
    numpy_random = _numpy_random_state()
    torch_state = _torch_state()
    logging_state = {name: _logging_state(sys.modules[name]) for name in LOGGING_LIBRARIES if name in sys.modules}
    hub_bars = _hub_progress_bars()
    try:
        yield
    finally:
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if sys.stdout is stdout and stdout_errors and getattr(stdout, "errors", None) != stdout_errors:
            with contextlib.suppress(AttributeError, ValueError):
                stdout.reconfigure(errors=stdout_errors)
        random.setstate(python_random)
        _restore_numpy_random(numpy_random)
        _restore_torch(torch_state)
        for name in LOGGING_LIBRARIES:
            if name in sys.modules:
                _restore_logging(sys.modules[name], logging_state.get(name))
        _restore_hub_progress_bars(hub_bars)


def _numpy_random_state() -> Any:
    numpy = sys.modules.get("numpy")
    return None if numpy is None else numpy.random.get_state()


def _restore_numpy_random(state: Any) -> None:
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return
    if state is None:  # imported by the command: unseeded, as a fresh import is
        numpy.random.seed()
    else:
        numpy.random.set_state(state)


def _torch_state() -> dict | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return {"cpu": torch.get_rng_state(), "seed": torch.initial_seed(), "cuda": cuda,
            "threads": torch.get_num_threads()}


def _restore_torch(state: dict | None) -> None:
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if state is None:  # imported by the command: what it seeded is left unseeded
        torch.seed()
        return
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    elif torch.cuda.is_initialized():  # first used by the command: as `torch.manual_seed` left it for CUDA to take
        torch.cuda.manual_seed_all(state["seed"])
    if torch.get_num_threads() != state["threads"]:
        torch.set_num_threads(state["threads"])


def _logging_state(library: Any) -> tuple[int, bool]:
    logging = library.utils.logging
    return logging.get_verbosity(), logging.is_progress_bar_enabled()


def _restore_logging(library: Any, state: tuple[int, bool] | None) -> None:
    """`library`'s verbosity and progress bars as `state` holds them; None: as the library starts."""
    logging = library.utils.logging
    if state is None:
        from huggingface_hub.constants import HF_HUB_DISABLE_PROGRESS_BARS

        state = logging._get_default_logging_level(), HF_HUB_DISABLE_PROGRESS_BARS is not True
    verbosity, bars = state
    logging.set_verbosity(verbosity)
    logging._tqdm_active = bars  # the switch itself: enable_progress_bar would also turn on the hub's, put back below


def _hub_progress_bars() -> dict | None:
    """huggingface_hub's progress-bar switches (a library's disable_progress_bar turns them off too)."""
    states = _hub_switches()
    return None if states is None else dict(states)


def _restore_hub_progress_bars(saved: dict | None) -> None:
    states = _hub_switches()
    if states is None:
        return
    states.clear()
    states.update(saved or {})  # imported by the command: no switch set, as the hub starts


def _hub_switches() -> dict | None:
    if "huggingface_hub" not in sys.modules:
        return None
    import importlib

    states = getattr(importlib.import_module("huggingface_hub.utils.tqdm"), "progress_bar_states", None)
    return states if isinstance(states, dict) else None
