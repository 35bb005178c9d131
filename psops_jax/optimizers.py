"""The inner optimizer of every particle, built from config.optimizer: sgd, adam, adamw or muon,
with a learning-rate schedule and gradient clipping, as one optax transformation.

    tx = optimizers.from_config(config)       # what run.build_run gives every particle
    tx = optimizers.optimizer("adamw", 1e-3, total_steps=400, schedule="warmup_cosine",
                              warmup_steps=40, clip_norm=1.0)

t counts the updates a particle made before this one, T = train.rounds x sync.period the run's
local steps, eta = learning_rate, f = final_fraction, W = warmup_steps:

  schedule constant:       lr(t) = eta
  schedule warmup_cosine:  lr(t) = eta t / W                                           t < W
                           lr(t) = eta (f + (1 - f) (1 + cos(pi (t - W) / (T - W))) / 2)
                                                                                   W <= t <= T
                           (0 at the first update, eta after the warmup, f eta at T, the end)
  clip_norm c > 0:         g := g min(1, c / ||g||), ||g|| the L2 norm over every leaf of g
  sgd:    m := mu m + g;  x := x - lr m                                  (mu = momentum; 0: plain)
  adam:   m := b1 m + (1 - b1) g;  v := b2 v + (1 - b2) g^2
          x := x - lr m^ / (sqrt(v^) + 1e-8),  m^ = m / (1 - b1^(t+1)), v^ = v / (1 - b2^(t+1))
  adamw:  adam's step plus decoupled weight decay:  x := x - lr (m^ / (sqrt(v^) + 1e-8) + wd x)
  muon:   each matrix (2-D weight) X of r x c: m := b1 m + (1 - b1) g;  O := NS5(Nesterov m^),
          five Newton-Schulz steps that map U S V^T to about U V^T (singular values pulled into
          ~[0.7, 1.15]);  X := X - lr (0.2 sqrt(max(r, c)) O + wd X)  (Jordan et al. 2024; the
          0.2 sqrt(max(r, c)) factor gives the update AdamW's RMS, Liu et al. 2025, so that one
          learning_rate and weight_decay serve both groups). Every other leaf (biases, norm
          scales, convolution kernels, embedding tables) gets adamw's step with a Nesterov first
          moment (optax.contrib.muon's). MuLoCo (Therien et al. 2025, arXiv 2505.23725) is
          muon inside the `diloco` strategy.

Every argument is checked here (errors.BadArgument); `from_config` names the config field
(`optimizer.<argument>`) in the ConfigError. The constant schedule and clip_norm 0 add nothing
to the chain: the default sgd is optax.sgd(learning_rate, momentum=0.9), state and numbers alike.
"""

import inspect
from typing import Callable

import jax
import optax
from optax import contrib

from psops_jax import errors
from psops_jax.errors import is_integer, is_number, require
from psops_jax.sync.registry import naming_fields

SCHEDULES = ("constant", "warmup_cosine")
# muon: the update of a matrix scaled by MUON_RMS sqrt(max(rows, columns)), the RMS of AdamW's
MUON_RMS = 0.2
# 2-D leaves that are tables looked up, not matrices multiplied (flax.linen.Embed's): AdamW's
NOT_MATRICES = ("embedding",)

LearningRate = float | optax.Schedule


def warmup_cosine(
  peak: float, warmup_steps: int, total_steps: int, final_fraction: float
) -> optax.Schedule:
  """lr(t): 0 -> peak linearly over warmup_steps, then a cosine to final_fraction x peak at
  total_steps (held after it)."""
  return optax.warmup_cosine_decay_schedule(
    0.0, peak, warmup_steps, total_steps, final_fraction * peak
  )


def matrix_dimensions(params) -> object:
  """optax.contrib.muon's `muon_weight_dimension_numbers`: MuonDimensionNumbers() (rows reduced,
  columns out, as a Dense kernel) for each 2-D weight, None (AdamW) for every other leaf."""

  def dimensions(path, leaf):
    name = getattr(path[-1], "key", None) if path else None
    is_matrix = leaf.ndim == 2 and name not in NOT_MATRICES
    return contrib.MuonDimensionNumbers() if is_matrix else None

  return jax.tree_util.tree_map_with_path(dimensions, params)


def sgd(learning_rate: LearningRate, momentum: float = 0.9) -> optax.GradientTransformation:
  """SGD with heavy-ball momentum (0: plain SGD)."""
  return optax.sgd(learning_rate, momentum=momentum or None)


def adam(
  learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999
) -> optax.GradientTransformation:
  """Adam."""
  return optax.adam(learning_rate, b1=b1, b2=b2)


def adamw(
  learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 1e-4
) -> optax.GradientTransformation:
  """AdamW: Adam with decoupled weight decay (times the learning rate, as optax and PyTorch)."""
  return optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def muon(
  learning_rate: LearningRate, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 1e-4
) -> optax.GradientTransformation:
  """Muon on the matrices (momentum b1, Nesterov), AdamW on every other leaf; one learning rate
  and weight decay for both (the module's docstring)."""
  return contrib.muon(
    learning_rate,
    beta=b1,
    weight_decay=weight_decay,
    adam_b1=b1,
    adam_b2=b2,
    adam_weight_decay=weight_decay,
    muon_weight_dimension_numbers=matrix_dimensions,
    consistent_rms=MUON_RMS,
  )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
  "sgd": sgd,
  "adam": adam,
  "adamw": adamw,
  "muon": muon,
}
# optimizer()'s arguments, each fed by config field optimizer.<argument>
FIELDS = {
  argument: f"optimizer.{argument}"
  for argument in ("name", "learning_rate", "schedule", "warmup_steps", "final_fraction")
  + ("clip_norm", "momentum", "b1", "b2", "weight_decay")
}


def require_number(argument: str, value, ok: Callable[[float], bool], accepted: str) -> None:
  """BadArgument(argument) unless `value` is a finite number for which `ok` holds."""
  require(is_number(value) and ok(value), argument, value, f"accepted values are finite {accepted}")


def optimizer(
  name: str,
  learning_rate: float,
  total_steps: int = 1,
  *,
  schedule: str = "constant",
  warmup_steps: int = 0,
  final_fraction: float = 0.1,
  clip_norm: float = 0.0,
  momentum: float = 0.9,
  b1: float = 0.9,
  b2: float = 0.999,
  weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
  """Optimizer `name` (OPTIMIZERS) at peak `learning_rate` following `schedule` over
  `total_steps` updates, gradients clipped to global norm `clip_norm` first (0: not clipped).

  Each optimizer reads the hyperparameters its builder names (sgd: momentum; adam: b1, b2;
  adamw and muon: b1, b2, weight_decay); all are checked whichever is used.
  """
  require(name in OPTIMIZERS, "name", name, f"accepted values are {tuple(OPTIMIZERS)}")
  require_number("learning_rate", learning_rate, lambda v: v > 0, "numbers > 0")
  require(schedule in SCHEDULES, "schedule", schedule, f"accepted values are {SCHEDULES}")
  require(
    is_integer(total_steps) and total_steps >= 1,
    "total_steps",
    total_steps,
    "accepted values are integers >= 1",
  )
  last = total_steps - 1 if schedule == "warmup_cosine" else None  # the warmup must end in the run
  require(
    is_integer(warmup_steps) and 0 <= warmup_steps and (last is None or warmup_steps <= last),
    "warmup_steps",
    warmup_steps,
    "accepted values are integers >= 0"
    if last is None
    else f"accepted values are the integers 0..{last} (the run has {total_steps} local steps, "
    "train.rounds x sync.period)",
  )
  require_number("final_fraction", final_fraction, lambda v: 0 <= v <= 1, "numbers in [0, 1]")
  require_number("clip_norm", clip_norm, lambda v: v >= 0, "numbers >= 0 (0: no clipping)")
  for argument, value in (("momentum", momentum), ("b1", b1), ("b2", b2)):
    require_number(argument, value, lambda v: 0 <= v < 1, "numbers in [0, 1)")
  require_number("weight_decay", weight_decay, lambda v: v >= 0, "numbers >= 0")

  rate = (
    warmup_cosine(learning_rate, warmup_steps, total_steps, final_fraction)
    if schedule == "warmup_cosine"
    else learning_rate
  )
  build = OPTIMIZERS[name]
  given = dict(momentum=momentum, b1=b1, b2=b2, weight_decay=weight_decay)
  reads = inspect.signature(build).parameters
  tx = build(rate, **{k: v for k, v in given.items() if k in reads})
  return optax.chain(optax.clip_by_global_norm(clip_norm), tx) if clip_norm > 0 else tx


def total_steps(config) -> int:
  """The local steps of a particle over the run: train.rounds x sync.period."""
  return config.train.rounds * config.sync.period


def from_config(config) -> optax.GradientTransformation:
  """The optimizer config.optimizer describes, its schedule over the run's total_steps; a bad or
  missing field raises ConfigError naming it."""
  section = config.optimizer
  for argument, field in FIELDS.items():
    if argument not in section:
      raise errors.ConfigError(
        f"config field {field!r} is missing (see configs/digits_pso.py for all fields)"
      )
  with naming_fields(FIELDS):
    return optimizer(
      total_steps=total_steps(config), **{argument: section[argument] for argument in FIELDS}
    )
