"""A script or notebook calling vidbooth several times in one process: each command leaves the process as it found
it (random streams, --home, torch's threads, the Hugging Face libraries' logging), and a second command or load
that the first one's state would refuse works or says what to do."""

from __future__ import annotations

import copy
import os
import random

import numpy as np
import pytest
import torch

from tests.test_subject_cli import train_subject
from vidbooth.cli.app import main
from vidbooth.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def photos(tmp_path):
    from tests.badinputs import write_photos

    return write_photos(tmp_path / "photos")


@pytest.fixture
def library_logging():
    """transformers at info level with its progress bars on, as a notebook may have them; put back afterwards."""
    import diffusers
    import transformers

    libraries = (transformers.utils.logging, diffusers.utils.logging)
    saved = [(lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in libraries]
    transformers.utils.logging.set_verbosity_info()
    for lib in libraries:
        lib.enable_progress_bar()
    yield
    for lib, (verbosity, bars) in zip(libraries, saved):
        lib.set_verbosity(verbosity)
        (lib.enable_progress_bar if bars else lib.disable_progress_bar)()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _draws() -> tuple:
    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_a_training_command_leaves_the_callers_random_streams_home_threads_and_logging(
        photos, isolated_home, tmp_path, library_logging):
    import diffusers
    import huggingface_hub.utils
    import transformers

    _seed_all(7)
    expected = _draws()
    _seed_all(7)
    torch.set_num_threads(1)
    elsewhere = tmp_path / "elsewhere"
    diffusers_verbosity = diffusers.utils.logging.get_verbosity()

    assert main(["--home", str(elsewhere), "train-subject", str(photos), "--name", "S*", "--class-noun", "dog",
                 "--recipe", "tiny/subject", "--set", "data.resolution=16", "--batch-size", "1", "--no-preview",
                 "--ti-steps", "2", "--identity-steps", "2"]) == 0

    assert (elsewhere / "subjects" / "S%2A" / "manifest.json").is_file()  # --home held for the command ...
    assert os.environ["VIDBOOTH_HOME"] == str(isolated_home)  # ... and for it alone
    assert _draws() == expected  # training seeded every stream; the caller's go on where they were
    assert torch.get_num_threads() == 1
    assert transformers.utils.logging.get_verbosity() == transformers.logging.INFO
    assert diffusers.utils.logging.get_verbosity() == diffusers_verbosity
    assert transformers.utils.logging.is_progress_bar_enabled() and diffusers.utils.logging.is_progress_bar_enabled()
    assert not huggingface_hub.utils.are_progress_bars_disabled()


def test_a_library_first_imported_by_a_command_is_left_as_a_fresh_import_has_it(monkeypatch):
    import sys

    import diffusers

    from vidbooth.cli.process_state import process_state_kept

    logging = diffusers.utils.logging
    saved = logging.get_verbosity(), logging.is_progress_bar_enabled()
    monkeypatch.delitem(sys.modules, "diffusers")  # not imported when the command starts
    try:
        with process_state_kept():
            sys.modules["diffusers"] = diffusers  # the command imports it and silences it
            logging.set_verbosity_error()
            logging.disable_progress_bar()
        assert logging.get_verbosity() == logging._get_default_logging_level() == logging.WARNING
        assert logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity(saved[0])
        (logging.enable_progress_bar if saved[1] else logging.disable_progress_bar)()


def test_training_in_another_mixed_precision_after_one_in_this_process(fresh_accelerate_state, monkeypatch):
    """accelerate holds one setting per process; with no launcher vidbooth starts it afresh (a notebook training on
    nano, mixed precision no, then on a model in bf16 had been refused with 'check --device and ...')."""
    from vidbooth.engine.train import make_accelerator

    assert make_accelerator("no", "cpu").mixed_precision == "no"
    assert make_accelerator("bf16", "cpu").mixed_precision == "bf16"
    monkeypatch.setenv("WORLD_SIZE", "2")  # under a launcher the state is the run's: still refused
    with pytest.raises(UserError, match="cannot set up training: AcceleratorState has already been initialized"):
        make_accelerator("no", "cpu")


def test_loading_a_subject_twice_on_one_model_is_one_clear_error(photos, isolated_home, tiny_backbones):
    from vidbooth.adapters.base import adapters_of
    from vidbooth.adapters.identity import subject_kind
    from vidbooth.engine.subject import load_subject

    assert train_subject(photos, "--no-preview") == 0
    bb = copy.deepcopy(tiny_backbones["unet3d"])
    load_subject(bb, "S*")
    adapters = dict(adapters_of(bb.unet, subject_kind("S*")))
    with pytest.raises(UserError, match=r"subject 'S\*' is already loaded on this model: load each subject once"):
        load_subject(bb, "S*", scale=0.5)
    assert adapters_of(bb.unet, subject_kind("S*")) == adapters  # as it was: the same adapters, nothing beside


def test_home_unset_before_a_command_with_home_is_unset_after_it(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("VIDBOOTH_HOME", raising=False)
    assert main(["--home", str(tmp_path / "library"), "list"]) == 0
    assert "VIDBOOTH_HOME" not in os.environ
