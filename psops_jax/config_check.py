"""Up-front validation of a run's config: every bad field is named with its value and what is
accepted."""

import math

from psops_jax import data as data_lib
from psops_jax import models
from psops_jax import swarm as swarm_lib
from psops_jax import sync as sync_lib

OPTIMIZERS = ("sgd", "adam")
LOOPS = ("auto", "unroll", "scan")
LAYOUTS = ("unroll", "vmap")
INITS = ("shared", "independent")


class ConfigError(ValueError):
  """A config field with a value the run cannot use."""


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if part not in node:
      raise ConfigError(
        f"config field {dotted!r} is missing (see configs/digits_pso.py for all fields)"
      )
    node = node[part]
  return node


def _choice(config, field, accepted):
  value = _get(config, field)
  if value not in accepted:
    raise ConfigError(f"{field}={value!r}: accepted values are {tuple(accepted)}")


def _number(config, field, minimum, integer=False, strict=False):
  value = _get(config, field)
  kind = "an integer" if integer else "a number"
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type:
    raise ConfigError(f"{field}={value!r}: must be {kind}")
  bound = f"> {minimum}" if strict else f">= {minimum}"
  if not math.isfinite(value):  # NaN would pass the comparisons below
    raise ConfigError(f"{field}={value!r}: must be a finite number {bound}")
  if value < minimum or (strict and value == minimum):
    raise ConfigError(f"{field}={value!r}: must be {kind} {bound}")


def validate(config) -> None:
  """Raise ConfigError naming the first field whose value cannot be used."""
  _number(config, "seed", 0, integer=True)
  _number(config, "num_particles", 1, integer=True)
  _number(config, "num_devices", 0, integer=True)
  _choice(config, "data.name", data_lib.NAMES)
  _choice(config, "data.source", data_lib.SOURCES)
  _choice(config, "data.partition", data_lib.PARTITIONS)
  _number(config, "data.synthetic_size", 0, integer=True)
  _number(config, "data.dirichlet_alpha", 0.0, strict=True)
  _choice(config, "faults.kind", swarm_lib.FAULT_KINDS)
  _number(config, "faults.step", 0, integer=True)
  _number(config, "faults.scale", 0.0)
  _number(config, "faults.particles", 0, integer=True)
  if config.faults.particles > config.num_particles:
    raise ConfigError(
      f"faults.particles={config.faults.particles}: accepted values are "
      f"0..num_particles={config.num_particles}"
    )
  _choice(config, "sync.robust.method", sync_lib.ROBUST_METHODS)
  _number(config, "sync.robust.trim", 0, integer=True)
  if (
    config.sync.strategy == "robust_average" and 2 * config.sync.robust.trim >= config.num_particles
  ):
    raise ConfigError(
      f"sync.robust.trim={config.sync.robust.trim}: accepted values are 0.."
      f"{(config.num_particles - 1) // 2} (2 * trim < num_particles)"
    )
  _number(config, "data.validation_size", 0, integer=True)
  _choice(config, "model.name", models.MODELS)
  _choice(config, "model.dtype", models.DTYPES)
  _choice(config, "optimizer.name", OPTIMIZERS)
  _number(config, "optimizer.learning_rate", 0.0, strict=True)
  _number(config, "optimizer.momentum", 0.0)
  _number(config, "train.batch_size", 1, integer=True)
  _number(config, "train.rounds", 1, integer=True)
  _number(config, "train.log_every", 1, integer=True)
  _number(config, "train.eval_every", 0, integer=True)
  _choice(config, "train.eval_particles", (True, False))
  _choice(config, "train.loop", LOOPS)
  _number(config, "train.max_unroll", 0, integer=True)
  _choice(config, "train.local_layout", LAYOUTS)
  _choice(config, "train.init", INITS)
  _number(config, "train.checkpoint_every", 1, integer=True)
  _number(config, "train.keep_checkpoints", 1, integer=True)
  _choice(config, "train.allow_config_change", (True, False))
  _choice(config, "sync.strategy", sync_lib.STRATEGIES)
  _number(config, "sync.period", 1, integer=True)
  for coefficient in (
    "inertia",
    "cognitive",
    "social",
    "mean_pull",
    "max_velocity_norm",
    "max_velocity_ratio",
    "memory_decay",
    "inertia_final",
    "cognitive_final",
    "social_final",
  ):
    _number(config, f"sync.pso.{coefficient}", 0.0)
  _choice(config, "sync.pso.schedule", sync_lib.SCHEDULE_CHOICES)
  _choice(config, "sync.average_opt_state", (True, False))
  _number(config, "sync.easgd.alpha", 0.0)
  _number(config, "sync.diloco.learning_rate", 0.0, strict=True)
  _number(config, "sync.diloco.momentum", 0.0)
  _choice(config, "sync.diloco.nesterov", (True, False))
  _choice(config, "sync.outer.aggregate", sync_lib.AGGREGATES)
  _choice(config, "sync.outer.optimizer", sync_lib.OUTER_OPTIMIZERS)
  _choice(config, "sync.outer.compress", sync_lib.COMPRESSORS)
  _number(config, "sync.outer.learning_rate", 0.0, strict=True)
  _number(config, "sync.outer.momentum", 0.0)
  _number(config, "sync.outer.temperature", 0.0, strict=True)
  _number(config, "sync.outer.block_size", 1, integer=True)
  _number(config, "sync.outer.fraction", 0.0, strict=True)
  if config.sync.outer.fraction > 1:
    raise ConfigError(
      f"sync.outer.fraction={config.sync.outer.fraction}: accepted values are in (0, 1] "
      "(the share of values topk_fraction sends)"
    )
  _number(config, "sync.streaming.fragments", 1, integer=True)
  _number(config, "sync.streaming.delay", 0, integer=True)
  if config.sync.streaming.delay >= config.sync.streaming.fragments:
    raise ConfigError(
      f"sync.streaming.delay={config.sync.streaming.delay}: accepted values are 0.."
      f"{config.sync.streaming.fragments - 1} (delay < sync.streaming.fragments)"
    )
  _number(config, "sync.streaming.mix", 0.0)
  if config.sync.streaming.mix > 1:
    raise ConfigError(
      f"sync.streaming.mix={config.sync.streaming.mix}: accepted values are in [0, 1]"
    )
  _choice(config, "sync.pso.fitness", sync_lib.FITNESS_CHOICES)
  _choice(config, "sync.pso.memory", sync_lib.MEMORY_CHOICES)
  _choice(config, "sync.pso.random", sync_lib.RANDOM_CHOICES)
  _number(config, "sync.pso.probe_size", 1, integer=True)
  _choice(config, "sync.pso.probe_resample", (True, False))
  _choice(config, "sync.pso.opt_state_on_move", sync_lib.OPT_STATE_CHOICES)
  _number(config, "sync.best_pull", 0.0)
  if config.sync.best_pull > 1:
    raise ConfigError(
      f"sync.best_pull={config.sync.best_pull}: accepted values are 0..1 "
      "(0 = average, 1 = jump to the best)"
    )
  if config.sync.strategy == "topk_average" and (
    not 1 <= config.sync.topk <= config.num_particles or config.sync.topk != int(config.sync.topk)
  ):
    raise ConfigError(
      f"sync.topk={config.sync.topk}: accepted values are the integers 1.."
      f"num_particles={config.num_particles}"
    )
  if config.sync.pso.memory == "reevaluate" and config.sync.pso.fitness != "probe":
    raise ConfigError(
      "sync.pso.memory='reevaluate' measures the personal bests again on the probe "
      "batch: it needs sync.pso.fitness='probe'"
    )
  if (
    config.sync.pso.opt_state_on_move == "follow"
    and config.sync.pso.random == "coordinate"
    and config.sync.strategy in ("pso", "pso_average")
  ):
    raise ConfigError(
      "sync.pso.opt_state_on_move='follow' needs sync.pso.random 'particle' or "
      "'none' (one r2 per particle moves the optimizer state)"
    )
  entry = sync_lib.registered(config.sync.strategy)
  if entry.shared_init(config.sync) and config.train.init != "shared":
    raise ConfigError(
      f"train.init={config.train.init!r} with sync.strategy={config.sync.strategy!r}: "
      "this strategy keeps one shared copy of the weights (or identical particles) and "
      "needs train.init='shared'"
    )
