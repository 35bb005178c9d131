"""Synchronization strategies: what the particles do with each other's weights at the end of a
round.

Every strategy is a `SyncStrategy`, a NamedTuple of pure functions in the manner of optax:

    strategy = psops_jax.sync.pso(inertia=0.5, cognitive=0.5, social=0.5, axis_name="particles")
    state = strategy.init(params)                                   # one particle's params
    params, state = strategy.sync(params, state, fitness, key)      # runs where axis_name is bound
    grads = strategy.reduce_grads(grads)                            # every local step (ssgd
                                                                    # all-reduces)

`init`, `sync` and `reduce_grads` see ONE particle's pytree; the particle axis is the named axis
`axis_name`, bound by `jax.shard_map`, `jax.pmap` or `jax.vmap(..., axis_name=...)`: the same
functions run under all three. `axis_name` may also be a tuple of names, e.g. ("particles", "local")
for several particles per device (a mesh axis times a vmap axis): the particles are then numbered d
* L + l. `key` may be the same for every particle; strategies that need per-particle randomness fold
in `particle_index(axis_name)`. `opt_state = reduce_opt_state(opt_state, new_state, key)` is applied
to the optimizer state after every sync (identity except for `average(average_opt_state=True)` and
pso's `opt_state_on_move`).

Models with BatchNorm carry running statistics beside the weights. `sync_with_stats(params,
batch_stats, state, fitness, key) -> (params, batch_stats, state)` is the sync that also decides a
particle's batch statistics, in the same collective as the weights (a ravelled all-reduce carries
both): averaging strategies average them, selecting strategies take them from the particles they
select, `none` keeps them local, the robust average takes their median (or trimmed mean). `sync` is
that function with no statistics; every strategy's docstring says what it does with them.

`bytes_per_round(params, period, opt_state=None)` is the communication model: the bytes ONE particle
puts into collectives during one round of `period` local steps (the payload of each all-reduce,
all-gather or point-to-point exchange that particle joins, 4 bytes per float32), not counting any
algorithm-specific fan-out of the collective. Its arguments may be arrays or jax.ShapeDtypeStruct.

The package, one concept a module:

    interface        SyncStrategy, make_strategy, exports, bytes
    collectives      the collectives over the particle axis (masked fetch, float all-reduce, ...)
    baselines        none, ssgd, easgd
    pso_sync         pso, pso_average
    aggregates       the outer sync's aggregates as values: mean(), topk(k), trimmed_mean(trim), ...
    compressors      what a particle sends: none(), bfloat16(), int8(block_size), sparse_2bit, ...
    outer_sync       outer(aggregate, optimizer, compressor) and its presets: average, diloco,
                     sparseloco, ...
    streaming_sync   streaming: the outer sync one fragment per round (eager updates optional)
    gossip_sync      gossip: averaging with random peers, point to point
    registry         the config layer: from_config, REGISTRY, register
"""

from psops_jax.clock import Collective
from psops_jax.sync import aggregates, compressors
from psops_jax.sync.aggregates import Aggregate
from psops_jax.sync.baselines import CenterState, easgd, none, ssgd
from psops_jax.sync.collectives import (
  AxisName,
  all_gather_scalar,
  all_gather_stacked,
  float_count,
  map_floats,
  masked_fetch,
  particle_count,
  particle_index,
  particle_key,
  pmean_floats,
  psum_floats,
  sanitize_fitness,
  shifted_floats,
  tree_bytes,
)
from psops_jax.sync.compressors import Compressor
from psops_jax.sync.gossip_sync import gossip, gossip_shifts
from psops_jax.sync.interface import SyncStrategy, make_strategy, round_bytes, sync_variables
from psops_jax.sync.outer_sync import (
  OuterState,
  average,
  best_pull,
  diloco,
  outer,
  robust_average,
  sparseloco,
  topk_average,
)
from psops_jax.sync.pso_sync import (
  FITNESS_CHOICES,
  PSOState,
  draw_r,
  pso,
  pso_average,
)
from psops_jax.sync.registry import (
  AGGREGATES,
  COMPRESSORS,
  OUTER_OPTIMIZERS,
  REGISTRY,
  Registered,
  from_config,
  register,
  registered,
  strategy_names,
)
from psops_jax.sync.streaming_sync import StreamingState, streaming

__all__ = [
  "AGGREGATES",
  "COMPRESSORS",
  "FITNESS_CHOICES",
  "OUTER_OPTIMIZERS",
  "REGISTRY",
  "Aggregate",
  "AxisName",
  "CenterState",
  "Collective",
  "Compressor",
  "OuterState",
  "PSOState",
  "Registered",
  "StreamingState",
  "SyncStrategy",
  "aggregates",
  "all_gather_scalar",
  "all_gather_stacked",
  "average",
  "best_pull",
  "compressors",
  "diloco",
  "draw_r",
  "easgd",
  "float_count",
  "from_config",
  "gossip",
  "gossip_shifts",
  "make_strategy",
  "map_floats",
  "masked_fetch",
  "none",
  "outer",
  "particle_count",
  "particle_index",
  "particle_key",
  "pmean_floats",
  "psum_floats",
  "pso",
  "pso_average",
  "register",
  "registered",
  "robust_average",
  "round_bytes",
  "sanitize_fitness",
  "shifted_floats",
  "sparseloco",
  "ssgd",
  "streaming",
  "strategy_names",
  "sync_variables",
  "topk_average",
  "tree_bytes",
]
