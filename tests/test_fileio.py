"""Files vidbooth writes through a temporary file get the permissions of any new file, not mkstemp's 0600."""

import os
import stat

import numpy as np
import pytest

from vidbooth.data.video import write_video
from vidbooth.eval.report import EvaluationReport, write_reports


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_videos_are_readable_by_others(tmp_path, umask_022, suffix):
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert _mode(write_video(frames, tmp_path / f"out{suffix}")) == 0o644


def test_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        path = write_video(np.zeros((2, 16, 16, 3), dtype=np.uint8), tmp_path / "private.gif")
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600


def test_evaluation_reports_are_readable_by_others(tmp_path, umask_022):
    assert _mode(write_reports(EvaluationReport([], {}, {}, [], {}), tmp_path / "report.json")[0]) == 0o644
