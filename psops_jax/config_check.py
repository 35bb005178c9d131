"""Up-front validation of a run's config: every bad field is named with its value and what is
accepted.

The fields of the sync strategy are checked by what reads them: `validate` builds the strategy the
config names (psops_jax.sync.registry.from_config), whose constructors check their own arguments
and whose registry entry names the config field behind each. What is checked here is the rest:
the run's own fields, and the types of the fields no constructor reads.
"""

import math

from psops_jax import conv, errors, faults, models, optimizers, tasks, text
from psops_jax import data as data_lib
from psops_jax import sync as sync_lib

LOOPS = ("auto", "unroll", "scan")
LAYOUTS = ("unroll", "vmap")
INITS = ("shared", "independent")


ConfigError = errors.ConfigError


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
  """A finite number (an integer) >= minimum (> minimum if strict); minimum None: any."""
  value = _get(config, field)
  kind = "an integer" if integer else "a number"
  ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
  if isinstance(value, bool) or not ok_type:
    raise ConfigError(f"{field}={value!r}: must be {kind}")
  bound = "" if minimum is None else f" > {minimum}" if strict else f" >= {minimum}"
  if not math.isfinite(value):  # NaN would pass the comparisons below
    raise ConfigError(f"{field}={value!r}: must be a finite number{bound}")
  if minimum is not None and (value < minimum or (strict and value == minimum)):
    raise ConfigError(f"{field}={value!r}: must be {kind}{bound}")


def _faults(config) -> None:
  """The faults block: its kind, numbers, and what each kind needs of them."""
  f = config.faults
  _choice(config, "faults.kind", faults.FAULT_KINDS)
  _number(config, "faults.step", 0, integer=True)
  _number(config, "faults.scale", None if f.kind == "scale" else 0.0)  # "scale": any sign
  _number(config, "faults.particles", 0, integer=True)
  _number(config, "faults.z", 0.0)
  _choice(config, "faults.z_rule", faults.Z_RULES)
  # alie's statistics are the honest workers': at least one must be left
  honest = 1 if f.kind == "alie" else 0
  if f.particles > config.num_particles - honest:
    raise ConfigError(
      f"faults.particles={f.particles}: accepted values are "
      f"0..{config.num_particles - honest} (num_particles={config.num_particles}"
      + (", one honest worker for alie's statistics)" if honest else ")")
    )
  if f.kind == "alie":
    try:
      faults.alie_z(f.z_rule, f.z, config.num_particles, f.particles)
    except errors.BadArgument as e:
      raise ConfigError(
        f"faults.{e.argument}={e.value!r} with faults.z_rule={f.z_rule!r}: {e.accepted}"
      ) from None


def check_task(config) -> None:
  """The data source, model and partition fit the data set's task: text is read by its own
  sources into a transformer; images by theirs into the classifiers; Dirichlet label mixes need
  labels."""
  if tasks.task_of(config.data.name) == "language_model":
    _choice(config, "data.source", text.SOURCES)
    _choice(config, "model.name", models.LANGUAGE_MODELS)
    _choice(config, "model.size", models.TRANSFORMER_SIZES)
    _choice(config, "model.tie_embeddings", (True, False))
    _choice(config, "data.partition", ("iid", "contiguous"))
    text.check_text_fields(
      _get(config, "data.context"),
      _get(config, "data.validation_fraction"),
      _get(config, "data.eval_windows"),
    )
    return
  _choice(config, "data.source", data_lib.SOURCES)
  _choice(config, "model.name", models.CLASSIFIERS)


def validate(config) -> None:
  """Raise ConfigError naming the first field whose value cannot be used."""
  _number(config, "seed", 0, integer=True)
  _number(config, "num_particles", 1, integer=True)
  _number(config, "num_devices", 0, integer=True)
  _choice(config, "data.name", data_lib.NAMES)
  _choice(config, "data.partition", data_lib.PARTITIONS)
  check_task(config)
  _number(config, "data.synthetic_size", 0, integer=True)
  _number(config, "data.dirichlet_alpha", 0.0, strict=True)
  _faults(config)
  _number(config, "data.validation_size", 0, integer=True)
  _choice(config, "model.dtype", models.DTYPES)
  _choice(config, "model.conv", conv.CONVS)
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
  _number(config, "sync.period", 1, integer=True)
  optimizers.from_config(config)  # checks every optimizer.* field (the schedule needs the above)
  for coefficient in ("inertia", "cognitive", "social"):  # schedules' ends: pso checks the rest
    _number(config, f"sync.pso.{coefficient}", 0.0)
    _number(config, f"sync.pso.{coefficient}_final", 0.0)
  _number(config, "sync.outer.learning_rate", 0.0, strict=True)
  _number(config, "sync.outer.momentum", 0.0)
  _choice(config, "sync.pso.fitness", sync_lib.FITNESS_CHOICES)
  _number(config, "sync.pso.probe_size", 1, integer=True)
  _choice(config, "sync.pso.probe_resample", (True, False))
  if config.sync.pso.memory == "reevaluate" and config.sync.pso.fitness != "probe":
    raise ConfigError(
      "sync.pso.memory='reevaluate' measures the personal bests again on the probe "
      "batch: it needs sync.pso.fitness='probe'"
    )
  strategy = sync_lib.from_config(
    config.sync, config.train.rounds, num_particles=config.num_particles
  )
  check_opt_state_on_move(config)
  if strategy.shared_init and config.train.init != "shared":
    raise ConfigError(
      f"train.init={config.train.init!r} with sync.strategy={config.sync.strategy!r}: "
      "this strategy keeps one shared copy of the weights (or identical particles) and "
      "needs train.init='shared'"
    )


def check_opt_state_on_move(config) -> None:
  """muon keeps its Newton-Schulz coefficients in its optimizer state, as floats: pso's
  opt_state_on_move=reset, which zeroes the state's floats, would zero them (updates of 0)."""
  reads = "sync.pso.opt_state_on_move" in sync_lib.registered(config.sync.strategy).fields.values()
  if reads and config.optimizer.name == "muon" and config.sync.pso.opt_state_on_move == "reset":
    raise ConfigError(
      "sync.pso.opt_state_on_move='reset' with optimizer.name='muon': reset zeroes every float "
      "of the optimizer state, muon's Newton-Schulz coefficients among them; accepted values "
      "with muon are 'keep' and 'follow'"
    )
