"""`TrainConfig`: the optimisation settings every training command shares (`vidbooth/engine/train.py` runs them)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from vidbooth.config import checks
from vidbooth.errors import UserError

LR_SCHEDULES = ("constant", "linear", "cosine")
MAX_BATCH_SIZE = 1024
"""Samples per process and micro-batch at most: one micro-batch is one UNet call, which Ctrl-C cannot stop midway
(a typo of 100000 ran for minutes in it on nano without finishing a step)."""
MAX_GRAD_ACCUMULATION = 1024
"""Micro-batches per step at most: a step is where a stop is looked for and progress shown (a typo of 2**31 never
finished its first)."""
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
FLOAT32_MAX = 3.4028234663852886e38
"""The largest float32: the trainable weights and the optimizer's state are float32."""


@dataclass
class TrainConfig:
    steps: int = 1000
    """Optimizer steps. One step sees batch_size x grad_accumulation x processes samples."""
    lr: float = 1e-4
    """Peak learning rate (AdamW, weight decay 0)."""
    lr_schedule: str = "constant"
    """constant | linear | cosine: decay from `lr` to 0 over `steps`, after the warm-up."""
    lr_warmup_steps: int = 0
    """Steps of linear warm-up from 0 to `lr`."""
    batch_size: int = 1
    """Samples per micro-batch on each process."""
    grad_accumulation: int = 1
    """Micro-batches per optimizer step, their gradients averaged: a step follows the mean loss of its batch_size x
    grad_accumulation samples (x processes), as one micro-batch that large would."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this value; 0 turns clipping off."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    mixed_precision: str = "auto"
    """auto | no | fp16 | bf16. auto: on CUDA autocast in the base's half type (bf16 with runtime.precision bf16,
    else fp16), none on CPU; the other half type than the base's is refused. Trainable weights stay fp32."""
    gradient_checkpointing: bool = False
    """Recompute the UNet's activations in the backward pass instead of keeping them: much less memory for about one
    more forward pass a step; the trained weights are the same (engine/recompute.py)."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps (0: only on interruption); one is also saved at the last step."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep in the run folder."""
    high_noise_fraction: float = 0.0
    """Fraction of samples trained at a timestep drawn from [high_noise_from, T) instead of [0, T), T being the
    model's `num_train_timesteps`. A video's layout and motion are decided at high noise, so motion learning
    gains from a share there (docs/motion.md); 0 keeps uniform timesteps."""
    high_noise_from: int = 600
    """First timestep of the high-noise range."""
    seed: int = 0
    """Seeds initialisation, batch order, noise and timesteps; the same seed gives the same weights on CPU."""

    # Not settings (no annotation, so not dataclass fields): where this config sits in its command's config and
    # that command's flags, which `load_config` notes so that the training engine's messages name them.
    _key = "train"
    _flags = None  # dict[str, str]: config key -> flag

    def locate(self, key: str, flags: dict[str, str] | None) -> None:
        """Note that this config is `key` ('identity.train') of a command whose flags are `flags` (config key ->
        flag)."""
        self._key, self._flags = key, dict(flags or {})

    def full_key(self, key: str) -> str:
        """The command config's key of `key`: 'lr' -> 'identity.train.lr'; a key not of this config as it is."""
        return f"{self._key}.{key}" if key in {f.name for f in fields(self)} else key

    def setting_name(self, key: str) -> str:
        """How a message names the setting `key`: one of this config's ('lr'), or a key of the command's config
        ('data.num_frames'), as its full key followed by the flag that sets it, if any: 'identity.train.lr (--lr)'."""
        full = self.full_key(key)
        flag = (self._flags or {}).get(full)
        return f"{full} ({flag})" if flag else full

    def check(self, prefix: str = "train") -> None:
        """Raise a UserError naming the first bad value by its key, `prefix` being where this config sits
        ('identity.train' in a subject's config). The configs that hold one call it when they are built."""
        for key in ("steps", "batch_size", "grad_accumulation", "keep_checkpoints"):
            checks.at_least(f"{prefix}.{key}", getattr(self, key), 1)
        checks.at_most(f"{prefix}.batch_size", self.batch_size, MAX_BATCH_SIZE,
                       hint=" (for a larger batch per step, raise grad_accumulation)")
        checks.at_most(f"{prefix}.grad_accumulation", self.grad_accumulation, MAX_GRAD_ACCUMULATION)
        checks.positive(f"{prefix}.lr", self.lr)
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"{prefix}.lr_schedule '{self.lr_schedule}' is unknown: use {', '.join(LR_SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise UserError(
                f"{prefix}.mixed_precision '{self.mixed_precision}' is unknown: use {', '.join(MIXED_PRECISIONS)}"
            )
        for key in ("lr_warmup_steps", "checkpoint_every", "high_noise_from"):
            checks.at_least(f"{prefix}.{key}", getattr(self, key), 0)
        if not 0 <= self.high_noise_fraction <= 1:
            raise UserError(f"{prefix}.high_noise_fraction must be in [0, 1], got {self.high_noise_fraction}")
        checks.non_negative(f"{prefix}.max_grad_norm", self.max_grad_norm, hint=" (0: no clipping)")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise UserError(f"{prefix}.{key} must be in [0, 1), got {getattr(self, key)}")
        if self.lr / (1 - self.adam_beta1) > FLOAT32_MAX:  # AdamW's first step: lr over its bias correction
            raise UserError(
                f"{prefix}.lr must be at most {FLOAT32_MAX * (1 - self.adam_beta1):.3g}, got {self.lr}: a larger rate "
                f"overflows float32 in AdamW's first step (lr / (1 - adam_beta1), adam_beta1 being {self.adam_beta1})"
            )
        checks.positive(f"{prefix}.adam_epsilon", self.adam_epsilon)
        checks.seed(f"{prefix}.seed", self.seed)
