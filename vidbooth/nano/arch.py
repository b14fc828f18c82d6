"""nano's sizes, world choices and run-folder files, which the pretraining config reads and checks without loading
torch or OpenCV.

`vidbooth.nano.model` builds the parts from them; a recipe's `arch:` section overrides them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

POSITION_CHANNELS = 3
"""Extra UNet input channels for x, y and frame position (`vidbooth.engine.positions`), when a UNet takes them."""
LINEAR_PATHS = ("random", "edge")
"""How the world lays out linear motions: from a random start, or across the frame from edge to edge."""
STATE_FILE = "state.json"
"""A pretraining run folder's steps, seeds and curve (`vidbooth.nano.checkpoint`)."""
STAGES = ("autoencoder", "clip", "unet")
"""The stages of pretraining, in order; each keeps `<stage>.safetensors` and `<stage>.optim.safetensors` in the run
folder."""
JOURNAL_FILE = "saving.json"
"""The renames of a checkpoint being saved (`fileio.write_together`), which a run killed while saving finishes."""


@dataclass
class VaeArch:
    block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """One entry per level; the spatial factor is 2 ** (levels - 1)."""
    latent_channels: int = 16
    layers_per_block: int = 1
    norm_num_groups: int = 8


@dataclass
class ClipArch:
    hidden_size: int = 64
    """Width of both towers; the text width is also the UNet's cross-attention width."""
    intermediate_size: int = 256
    text_layers: int = 3
    vision_layers: int = 3
    heads: int = 4
    patch_size: int = 8
    projection_dim: int = 64
    max_length: int = 77


@dataclass
class UNetArch:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_heads: int = 4
    """diffusers' `attention_head_dim`, which in UNet3DConditionModel is the number of heads."""
    norm_num_groups: int = 8
    position_channels: int = 0
    """POSITION_CHANNELS: the UNet also takes x, y and frame-position maps after the latents; 0: not."""


@dataclass
class NanoArch:
    size: int = 64
    """Frame side in pixels."""
    num_frames: int = 8
    vae: VaeArch = field(default_factory=VaeArch)
    clip: ClipArch = field(default_factory=ClipArch)
    unet: UNetArch = field(default_factory=UNetArch)

    @property
    def latent_size(self) -> int:
        return self.size // 2 ** (len(self.vae.block_out_channels) - 1)
