"""Position channels: the maps, where vidbooth appends them, and UNets it refuses."""

from __future__ import annotations

import pytest
import torch

from vidbooth.engine.positions import POSITION_CHANNELS, extra_input_channels, position_maps, with_positions
from vidbooth.errors import UserError


def test_maps_run_from_minus_one_to_one_along_width_height_and_frames():
    maps = position_maps(torch.zeros(2, 4, 5, 3, 6, dtype=torch.float16))  # (B, C, F, h, w)
    assert maps.shape == (2, 3, 5, 3, 6) and maps.dtype == torch.float16
    x, y, frame = maps[1]

    def line(n):
        return torch.linspace(-1, 1, n).half()

    assert torch.equal(x[0, 0], line(6)) and torch.equal(y[0, :, 0], line(3)) and torch.equal(frame[:, 0, 0], line(5))
    assert torch.equal(x[4], x[0]) and torch.equal(frame[2], torch.zeros(3, 6))  # x ignores time, the middle frame is 0
    assert torch.equal(position_maps(torch.zeros(1, 1, 1, 1, 1)), torch.zeros(1, 3, 1, 1, 1))


def test_with_positions_appends_the_maps_only_for_a_unet_that_takes_them():
    latents = torch.randn(2, 4, 3, 4, 4)
    assert with_positions(latents, 0) is latents
    extended = with_positions(latents, POSITION_CHANNELS)
    assert extended.shape == (2, 7, 3, 4, 4)
    assert torch.equal(extended[:, :4], latents) and torch.equal(extended[:, 4:], position_maps(latents))


class _Unet:
    def __init__(self, in_channels):
        self.config = type("Config", (), {"in_channels": in_channels})()


def test_extra_input_channels_accepts_none_or_positions_and_refuses_the_rest():
    assert extra_input_channels(_Unet(4), 4) == 0 and extra_input_channels(_Unet(7), 4) == 3
    with pytest.raises(UserError, match="takes 9 input channels for 4 latent channels: .* 0 or 3 extra .* not 5"):
        extra_input_channels(_Unet(9), 4)
