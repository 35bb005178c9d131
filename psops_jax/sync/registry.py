"""The config layer: every strategy by its config name, built from a `config.sync` section.

A registry entry says how to build the strategy from the config (`build`), which config field
feeds each argument of its constructors (`fields`: a constructor's `errors.BadArgument` is
reported as a `ConfigError` naming the field), and which constructors those are (`constructors`:
their defaults are the config's defaults, a test checks it). A new strategy is one function and
one `register(name, Registered(...))`; `from_config` then builds and checks it like the others:

    sync.register("toy", sync.Registered(
      build=lambda c, rounds, axis_name: toy(c.toy.scale, axis_name),
      fields={"scale": "sync.toy.scale"}, constructors=(toy,)))

The outer sync's parts are built here too, each from its config name (`AGGREGATES`,
`COMPRESSORS`, `OUTER_OPTIMIZERS`: the one list of the names the config accepts).
"""

import contextlib
from typing import Any, Callable, Mapping, NamedTuple

import optax

from psops_jax import errors
from psops_jax.sync import (
  aggregates,
  baselines,
  compressors,
  gossip_sync,
  outer_sync,
  pso_sync,
  streaming_sync,
)
from psops_jax.sync.collectives import AxisName
from psops_jax.sync.interface import SyncStrategy

ConfigSection = Any  # an ml_collections.ConfigDict: config.sync

AGGREGATES: dict[str, Callable[[ConfigSection], aggregates.Aggregate]] = {
  "mean": lambda c: aggregates.mean(),
  "median": lambda c: aggregates.median(),
  "trimmed_mean": lambda c: aggregates.trimmed_mean(c.robust.trim),
  "topk": lambda c: aggregates.topk(c.topk),
  "fitness_weighted": lambda c: aggregates.fitness_weighted(c.outer.temperature),
  "best_pull": lambda c: aggregates.best_pull(c.best_pull),
  "centered_clip": lambda c: aggregates.centered_clip(c.outer.clip_tau, c.outer.clip_iterations),
}
COMPRESSORS: dict[str, Callable[[ConfigSection], compressors.Compressor]] = {
  "none": lambda c: compressors.none(),
  "bfloat16": lambda c: compressors.bfloat16(),
  "int8": lambda c: compressors.int8(c.outer.block_size),
  "int4": lambda c: compressors.int4(c.outer.block_size),
  "int2": lambda c: compressors.int2(c.outer.block_size, c.outer.feedback_decay),
  "topk_fraction": lambda c: compressors.topk_fraction(c.outer.fraction, c.outer.feedback_decay),
  "sparse_2bit": lambda c: compressors.sparse_2bit(
    c.outer.fraction, c.outer.block_size, c.outer.bits, c.outer.feedback_decay
  ),
}
OUTER_OPTIMIZERS: dict[str, Callable[[ConfigSection], optax.GradientTransformation | None]] = {
  "none": lambda c: None,
  "sgd": lambda c: optax.sgd(c.outer.learning_rate, momentum=c.outer.momentum or None),
  "nesterov": lambda c: optax.sgd(
    c.outer.learning_rate, momentum=c.outer.momentum or None, nesterov=True
  ),
  "adam": lambda c: optax.adam(c.outer.learning_rate),
}


def choose(table: Mapping[str, Callable], field: str, name: str) -> Callable:
  """table[name]; a ConfigError naming `field` and the accepted names otherwise."""
  if name not in table:
    raise errors.ConfigError(f"{field}={name!r}: accepted values are {tuple(table)}")
  return table[name]


def outer_parts(c: ConfigSection) -> dict:
  """The aggregate, outer optimizer and compressor that config.sync.outer names, as values."""
  return dict(
    aggregate=choose(AGGREGATES, "sync.outer.aggregate", c.outer.aggregate)(c),
    optimizer=choose(OUTER_OPTIMIZERS, "sync.outer.optimizer", c.outer.optimizer)(c),
    compressor=choose(COMPRESSORS, "sync.outer.compress", c.outer.compress)(c),
  )


def pso_from_config(c: ConfigSection, rounds: int, axis_name: AxisName, **kwargs) -> SyncStrategy:
  """`pso` with the options of config.sync.pso (`rounds`: length of the coefficients' schedules);
  `kwargs` go to `pso` as they are (pso_average's mean pull)."""
  p = c.pso
  final = lambda k: p[k + "_final"] if p.schedule == "linear" else p[k]
  w, c1, c2 = (
    pso_sync.coefficient_schedule(p[k], final(k), p.schedule, rounds)
    for k in ("inertia", "cognitive", "social")
  )
  return pso_sync.pso(
    inertia=w,
    cognitive=c1,
    social=c2,
    memory=p.memory,
    memory_decay=p.memory_decay,
    random=p.random,
    max_velocity_norm=p.max_velocity_norm,
    max_velocity_ratio=p.max_velocity_ratio,
    opt_state_on_move=p.opt_state_on_move,
    axis_name=axis_name,
    **kwargs,
  )


class Registered(NamedTuple):
  """A strategy as the config names it.

  build(config.sync, rounds, axis_name) -> SyncStrategy (`rounds`: the run's number of syncs).
  fields: constructor argument -> the config field that feeds it (dotted from the config's root).
  constructors: the functions whose arguments `fields` names (their defaults are the config's).
  """

  build: Callable[[ConfigSection, int, AxisName], SyncStrategy]
  fields: Mapping[str, str] = {}
  constructors: tuple[Callable, ...] = ()


PSO_FIELDS = {
  name: f"sync.pso.{name}"
  for name in (
    ("inertia", "cognitive", "social", "memory", "memory_decay", "random")
    + ("max_velocity_norm", "max_velocity_ratio", "opt_state_on_move", "schedule")
  )
}
PARTS_FIELDS = {
  "trim": "sync.robust.trim",
  "k": "sync.topk",
  "temperature": "sync.outer.temperature",
  "pull": "sync.best_pull",
  "block_size": "sync.outer.block_size",
  "fraction": "sync.outer.fraction",
  "bits": "sync.outer.bits",
  "feedback_decay": "sync.outer.feedback_decay",
  "tau": "sync.outer.clip_tau",
  "iterations": "sync.outer.clip_iterations",
}
PARTS = (
  aggregates.trimmed_mean,
  aggregates.topk,
  aggregates.fitness_weighted,
  aggregates.best_pull,
  aggregates.centered_clip,
  compressors.int8,
  compressors.int2,
  compressors.topk_fraction,
  compressors.sparse_2bit,
)
STREAMING_FIELDS = {
  name: f"sync.streaming.{name}" for name in ("fragments", "delay", "mix", "eager")
}
SPARSELOCO_FIELDS = {
  name: f"sync.sparseloco.{name}"
  for name in ("learning_rate", "fraction", "block_size", "bits", "feedback_decay")
}

REGISTRY: dict[str, Registered] = {
  "pso": Registered(pso_from_config, PSO_FIELDS, (pso_sync.pso, pso_sync.coefficient_schedule)),
  "pso_average": Registered(
    lambda c, rounds, axis: pso_from_config(c, rounds, axis, mean_pull=c.pso.mean_pull),
    {**PSO_FIELDS, "mean_pull": "sync.pso.mean_pull"},
    (pso_sync.pso_average, pso_sync.pso, pso_sync.coefficient_schedule),
  ),
  "average": Registered(
    lambda c, rounds, axis: outer_sync.average(axis, c.average_opt_state),
    {"average_opt_state": "sync.average_opt_state"},
    (outer_sync.average,),
  ),
  "ssgd": Registered(lambda c, rounds, axis: baselines.ssgd(axis)),
  "easgd": Registered(
    lambda c, rounds, axis: baselines.easgd(c.easgd.alpha, axis),
    {"alpha": "sync.easgd.alpha"},
    (baselines.easgd,),
  ),
  "diloco": Registered(
    lambda c, rounds, axis: outer_sync.diloco(
      c.diloco.learning_rate, c.diloco.momentum, c.diloco.nesterov, axis
    ),
    {k: f"sync.diloco.{k}" for k in ("learning_rate", "momentum", "nesterov")},
    (outer_sync.diloco,),
  ),
  "none": Registered(lambda c, rounds, axis: baselines.none(axis)),
  "best_pull": Registered(
    lambda c, rounds, axis: outer_sync.best_pull(c.best_pull, axis),
    {"pull": "sync.best_pull"},
    (outer_sync.best_pull,),
  ),
  "topk_average": Registered(
    lambda c, rounds, axis: outer_sync.topk_average(c.topk, axis),
    {"k": "sync.topk"},
    (outer_sync.topk_average,),
  ),
  "robust_average": Registered(
    lambda c, rounds, axis: outer_sync.robust_average(c.robust.method, c.robust.trim, axis),
    {"method": "sync.robust.method", "trim": "sync.robust.trim"},
    (outer_sync.robust_average,),
  ),
  "outer": Registered(
    lambda c, rounds, axis: outer_sync.outer(axis_name=axis, **outer_parts(c)), PARTS_FIELDS, PARTS
  ),
  "streaming": Registered(
    lambda c, rounds, axis: streaming_sync.streaming(
      c.streaming.fragments,
      c.streaming.delay,
      c.streaming.mix,
      axis_name=axis,
      eager=c.streaming.eager,
      **outer_parts(c),
    ),
    {**PARTS_FIELDS, **STREAMING_FIELDS},
    PARTS + (streaming_sync.streaming,),
  ),
  "sparseloco": Registered(
    lambda c, rounds, axis: outer_sync.sparseloco(
      **{name: getattr(c.sparseloco, name) for name in SPARSELOCO_FIELDS}, axis_name=axis
    ),
    SPARSELOCO_FIELDS,
    (outer_sync.sparseloco,),
  ),
  "gossip": Registered(
    lambda c, rounds, axis: gossip_sync.gossip(c.gossip.peers, axis),
    {"peers": "sync.gossip.peers"},
    (gossip_sync.gossip,),
  ),
}


def register(name: str, entry: Registered) -> None:
  """Make strategy `name` available to configs (`sync.strategy=name`)."""
  if name in REGISTRY:
    raise ValueError(f"a sync strategy named {name!r} is registered already")
  REGISTRY[name] = entry


def strategy_names() -> tuple[str, ...]:
  """The names `sync.strategy` accepts."""
  return tuple(REGISTRY)


def registered(name: str) -> Registered:
  """The registry entry of `name`; ConfigError naming the accepted names."""
  return choose(REGISTRY, "sync.strategy", name)


@contextlib.contextmanager
def naming_fields(fields: Mapping[str, str]):
  """Inside: a BadArgument of an argument in `fields` becomes a ConfigError naming its field."""
  try:
    yield
  except errors.BadArgument as e:
    if e.argument not in fields:
      raise
    raise errors.ConfigError(f"{fields[e.argument]}={e.value!r}: {e.accepted}") from None


def from_config(
  sync_config: ConfigSection,
  rounds: int = 1,
  axis_name: AxisName = "particles",
  num_particles: int | None = None,
) -> SyncStrategy:
  """The strategy a `config.sync` section names (`rounds`: length of the schedules), checked
  against `num_particles` when given; a bad field raises ConfigError naming it."""
  entry = registered(sync_config.strategy)
  try:
    with naming_fields(entry.fields):
      strategy = entry.build(sync_config, rounds, axis_name)
      if num_particles is not None:
        strategy.check(num_particles)
  except AttributeError as e:  # ml_collections: a field the config lacks (AttributeError(KeyError))
    if not (e.args and isinstance(e.args[0], KeyError)):
      raise
    missing = str(e.args[0].args[0]).strip("'")
    raise errors.ConfigError(
      f"sync.strategy={sync_config.strategy!r} reads config field {missing!r}, which the config "
      f"lacks; its fields: {sorted(set(entry.fields.values()))}"
    ) from None
  return strategy
