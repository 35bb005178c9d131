"""The swarm on a device mesh: state, one jitted round (local steps + sync), evaluation.

Particles lie along the mesh axis `AXIS` ("particles"): N particles on D devices, L = N / D per
device. Every array of the swarm carries a leading particle axis of size N, sharded over `AXIS`;
`jax.shard_map` hands each device its block of L particles. Inside the block, the cheap per-particle
work (batch drawing, optimizer update, gradient reduction, the sync) runs under `jax.vmap(...,
axis_name=LOCAL)`, and the strategies' collectives span all N particles through the axis pair `AXES
= (AXIS, LOCAL)`; particle d * L + l is local particle l of device d.

The expensive part, each particle's forward and backward pass, is laid out by `local_layout`:
"unroll" writes the L passes one after another in the program; "vmap" vmaps them, which XLA:CPU
compiles into grouped convolutions (slower on CPU: docs/DESIGN.md).
`benchmarks/particles_per_device.py` compares the layouts.

Loop structure of the local steps (`loop`): "unroll" writes the `period` steps out in the jitted
program, "scan" runs them in `lax.scan`. XLA:CPU runs steps inside `lax.scan` several times slower
(docs/DESIGN.md, `benchmarks/loop_structure.py`), so "auto" unrolls on CPU and scans on GPU/TPU,
where loop bodies run at full speed and compile time stays flat in `period`.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from psops_jax import errors, streams, tasks
from psops_jax import faults as faults_lib
from psops_jax import sync as sync_lib
from psops_jax.tasks import normalize  # noqa: F401  (swarm.normalize, as before)

AXIS = "particles"
LOCAL = "local"
AXES = (AXIS, LOCAL)
EVAL_CHUNK = 1000  # examples per unrolled chunk of an evaluation
EVAL_TARGETS = 65536  # and at most this many targets (text: a window has `context` of them)
PyTree = Any


class Swarm(NamedTuple):
  """All particles' state; every leaf has a leading particle axis of size N. `batch_stats` holds the
  models' running statistics (BatchNorm; `{}` for a model without them)."""

  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  sync_state: PyTree


class DeviceData(NamedTuple):
  """The data a round reads, on the devices: each particle's shard, and one common probe batch."""

  train_inputs: jax.Array  # uint8 (N, S, ...): images (H, W, C) or text windows (T,), sharded
  train_targets: jax.Array  # (N, S, ...): a label per image (int32), or T next bytes (uint8)
  probe_inputs: jax.Array  # uint8 (B_probe, ...), replicated
  probe_targets: jax.Array  # (B_probe, ...), replicated


class RoundConfig(NamedTuple):
  """Static settings of a round (hashable: part of the jitted function's identity)."""

  period: int
  batch_size: int
  fitness: str  # "round_loss" or "probe"
  probe_size: int  # probe examples per round: fewer than the pool -> a new subset every round
  loop: str  # "unroll" or "scan"
  local_layout: str  # "unroll" or "vmap": the forward/backward passes of a device's particles
  max_unroll: int  # unrolled rounds longer than this run in several calls (0: one call)
  augment: bool  # random crop (4-pixel pad) and horizontal flip (the "augment" key stream)
  mean: tuple
  std: tuple
  fault: faults_lib.Fault | None = None  # faulty workers injected into the run (None: none)
  task: str = "classification"  # or "language_model" (psops_jax/tasks.py)


def make_mesh(num_particles: int, num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh, axis `AXIS`, over `num_devices` devices (0: the largest divisor of `num_particles`
  that is at most the number of devices there are)."""
  available = len(jax.devices())
  if num_devices == 0:
    num_devices = max(
      d for d in range(1, min(num_particles, available) + 1) if num_particles % d == 0
    )
  if num_devices > available:
    raise errors.ConfigError(
      f"num_devices={num_devices}: this process sees {available} {jax.devices()[0].platform} "
      f"devices. Accepted: 0 (auto) or 1..{available}. On CPU, set "
      f"XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts (train.py does this)."
    )
  if num_particles % num_devices:
    raise errors.ConfigError(
      f"num_particles={num_particles} is not a multiple of num_devices={num_devices}: "
      "every device holds the same number of particles"
    )
  return jax.make_mesh(
    (num_devices,),
    (AXIS,),
    axis_types=(jax.sharding.AxisType.Auto,),
    devices=jax.devices()[:num_devices],
  )


def resolve_loop(loop: str) -> str:
  """ "auto" -> "unroll" on CPU (see the module docstring), "scan" elsewhere."""
  if loop == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "scan"
  return loop


# --------------------------------------------------------------------------------------------------
# Pure per-particle functions.


def augment_batch(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop (zero padding `pad`, crop back to size) and random horizontal flip, per image."""
  n, h, w, c = images.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, off: lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
  cropped = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
  return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


def batch_indices(key: jax.Array, step: jax.Array, shard_size: int, batch_size: int) -> jax.Array:
  """Indices of the mini-batch of global step `step`: epochs over the shard without replacement.

  Epoch e = step // (shard_size // batch_size) uses the permutation drawn from fold_in(key, e); the
  step takes its slice number step % (shard_size // batch_size). Leftover examples of an epoch are
  skipped in that epoch (a different subset each epoch).
  """
  steps_per_epoch = shard_size // batch_size
  epoch, position = step // steps_per_epoch, step % steps_per_epoch
  order = jax.random.permutation(jax.random.fold_in(key, epoch), shard_size)
  return lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def apply_model(model, params, batch_stats, inputs, train: bool):
  """(logits, new batch_stats) of a model on its inputs. `train`: BatchNorm normalises with
  the batch's statistics and updates the running ones; otherwise it uses the running ones. A model
  without batch statistics gets `{}` and returns it."""
  if not jax.tree.leaves(batch_stats):
    return model.apply({"params": params}, inputs, train=train), batch_stats
  variables = {"params": params, "batch_stats": batch_stats}
  if not train:
    return model.apply(variables, inputs, train=False), batch_stats
  logits, updates = model.apply(variables, inputs, train=True, mutable=["batch_stats"])
  return logits, updates["batch_stats"]


def epoch_order(key: jax.Array, epoch, shard_size: int) -> jax.Array:
  """One particle's order of its shard in epoch `epoch`: permutation(fold_in(key, epoch))."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), shard_size)


def epochs_touched(count: int, steps_per_epoch: int) -> int:
  """A static bound on the epochs that `count` consecutive steps touch."""
  return min(count, (count - 1) // steps_per_epoch + 2)


def indices_from_orders(orders: jax.Array, first_step, period: int, batch_size: int) -> jax.Array:
  """The indices (period, batch_size) of steps first_step ... first_step + period - 1, given the
  orders (E, S) of the epochs first_step // (S // batch_size) onwards: row t is the slice
  (t' mod steps_per_epoch) * batch_size + [0, batch_size) of its epoch's order, t' = first_step + t
  (rows of `orders` past the last epoch the steps reach are never read)."""
  steps_per_epoch = orders.shape[1] // batch_size
  steps = first_step + jnp.arange(period)
  rows = steps // steps_per_epoch - first_step // steps_per_epoch
  starts = (steps % steps_per_epoch) * batch_size
  return jax.vmap(lambda r, s: lax.dynamic_slice(orders[r], (s,), (batch_size,)))(rows, starts)


def round_batch_indices(
  key: jax.Array, first_step: jax.Array, period: int, shard_size: int, batch_size: int
) -> jax.Array:
  """The indices of a round's `period` mini-batches, shape (period, batch_size):
  row t = batch_indices(key, first_step + t, ...), computed with one permutation per epoch the round
  touches (usually one) instead of one per step (a permutation costs a sizeable part of a small
  model's step: docs/DESIGN.md)."""
  steps_per_epoch = shard_size // batch_size
  first_epoch = first_step // steps_per_epoch
  last_epoch = (first_step + period - 1) // steps_per_epoch
  orders = [epoch_order(key, first_epoch, shard_size)]
  for e in range(1, epochs_touched(period, steps_per_epoch)):
    orders.append(
      lax.cond(
        first_epoch + e <= last_epoch,  # only when the round reaches epoch e
        lambda e=e: epoch_order(key, first_epoch + e, shard_size),
        lambda: orders[0],
      )
    )
  return indices_from_orders(jnp.stack(orders), first_step, period, batch_size)


def gather_batch(augment_key, step, idx, inputs, targets, augment: bool):
  """The mini-batch of global step `step` at indices `idx` of one particle's shard, augmented if
  asked with the key fold_in(augment_key, step); `augment_key` is the particle's own augmentation
  stream, fold_in(streams.key(seed, "augment"), particle) (psops_jax/streams.py)."""
  x, y = inputs[idx], targets[idx]
  if augment:
    x = augment_batch(jax.random.fold_in(augment_key, step), x)
  return x, y


def round_probe(data: DeviceData, size: int, key: jax.Array, round_index):
  """The probe batch of a round, the same on every particle: the whole pool, or (pool larger than
  `size`) `size` examples of it drawn without replacement with fold_in(key, round_index)."""
  pool = data.probe_targets.shape[0]
  if size >= pool:
    return data.probe_inputs, data.probe_targets
  pick = jax.random.permutation(jax.random.fold_in(key, round_index), pool)[:size]
  return data.probe_inputs[pick], data.probe_targets[pick]


def per_particle(fn, layout: str):
  """fn mapped over the leading (local particle) axis of its arguments: a vmap ("vmap"), or the
  calls written one after another ("unroll"), outputs stacked."""
  if layout == "vmap":
    return jax.vmap(fn)

  def unrolled(*args):
    count = jax.tree.leaves(args)[0].shape[0]
    outs = [fn(*jax.tree.map(lambda a: a[j], args)) for j in range(count)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

  return unrolled


def chunk_length(period: int, loop: str, max_unroll: int) -> int:
  """Local steps per jitted call: the whole round, or (unrolled rounds longer than `max_unroll`) the
  largest divisor of `period` that is at most `max_unroll` (max_unroll 0: no limit)."""
  if loop != "unroll" or not max_unroll or period <= max_unroll:
    return period
  return max(d for d in range(1, max_unroll + 1) if period % d == 0)


class RoundParts(NamedTuple):
  """What a round is made of: the model, the optimizer, the strategy (built with axis_name=AXES),
  the round's settings, the number of devices of the mesh and the run's seed."""

  model: Any
  tx: optax.GradientTransformation
  strategy: sync_lib.SyncStrategy
  cfg: RoundConfig
  num_devices: int
  seed: int


def over_local(fn, in_axes=0):
  """fn mapped over the device's particles, the named axis LOCAL bound (the strategies'
  collectives span the mesh axis and this one)."""
  return jax.vmap(fn, in_axes=in_axes, axis_name=LOCAL)


def loss_fn(parts: RoundParts, params, batch_stats, inputs, targets, train=True):
  """(mean cross-entropy of one particle on a batch of its task's uint8 inputs, its new batch
  statistics)."""
  cfg = parts.cfg
  x = tasks.model_inputs(cfg.task, inputs, cfg.mean, cfg.std)
  logits, batch_stats = apply_model(parts.model, params, batch_stats, x, train)
  return tasks.cross_entropy(logits, targets), batch_stats


def local_step(parts: RoundParts, carry, step_and_idx, inputs, targets, augment_keys, faulty):
  """One optax step of every particle of the device: its batch, the gradient (reduced by the
  strategy: ssgd all-reduces it), the update (scaled for "lr" faults)."""
  cfg, fault = parts.cfg, faults_lib.active(parts.cfg.fault)
  params, batch_stats, opt_state = carry
  step, idx = step_and_idx  # idx: (L, B), this step's indices into each local particle's shard
  gather = functools.partial(gather_batch, augment=cfg.augment)
  x, y = over_local(gather, in_axes=(0, None, 0, 0, 0))(augment_keys, step, idx, inputs, targets)
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, parts), has_aux=True)
  (loss, batch_stats), grads = per_particle(grad_fn, cfg.local_layout)(params, batch_stats, x, y)
  grads = over_local(parts.strategy.reduce_grads)(grads)
  updates, opt_state = over_local(parts.tx.update)(grads, opt_state, params)
  if fault is not None:
    scale = functools.partial(faults_lib.scale_updates, fault=fault, period=cfg.period)
    updates = over_local(scale, in_axes=(0, 0, None))(updates, faulty, step)
  return (optax.apply_updates(params, updates), batch_stats, opt_state), loss


def particle_indices(local_count: int) -> jax.Array:
  """The index d * L + l of each of the device's L particles (under the mesh axis)."""
  return over_local(lambda _: lax.axis_index(AXES))(jnp.zeros(local_count))


def particle_keys(parts: RoundParts, local_count: int, stream: str) -> jax.Array:
  """The device's particles' keys of a stream: fold_in(streams.key(seed, stream), particle)."""
  index = particle_indices(local_count)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(streams.key(parts.seed, stream), index)


def device_epoch_orders(parts: RoundParts, data: DeviceData, epoch) -> jax.Array:
  """The orders (L, S) of the device's particles' shards in epoch `epoch` (`epoch_order`)."""
  local_count, shard_size = data.train_targets.shape[:2]
  keys = particle_keys(parts, local_count, "batches")
  return jax.vmap(epoch_order, in_axes=(0, None, None))(keys, epoch, shard_size)


def device_steps(
  parts: RoundParts, params, batch_stats, opt_state, data, first_step, count: int, orders=()
):
  """`count` local steps of the device's particles from global step `first_step`;
  losses (count, L). `orders`: the shards' orders (`device_epoch_orders`) of the epochs from
  first_step's on, one (L, S) array per epoch (`epochs_touched`), computed by the caller once per
  epoch; () draws them here, once per call."""
  cfg, fault = parts.cfg, faults_lib.active(parts.cfg.fault)
  local_count = data.train_targets.shape[0]
  index = particle_indices(local_count)
  augment_keys = particle_keys(parts, local_count, "augment")
  faulty = jnp.zeros(local_count, bool)
  if fault is not None:
    faulty = faults_lib.is_faulty(index, local_count * parts.num_devices, fault)
    strike = functools.partial(
      faults_lib.strike_weights,
      fault=fault,
      period=cfg.period,
      key=streams.key(parts.seed, "faults"),
    )
    params = over_local(strike, in_axes=(0, 0, 0, None))(params, index, faulty, first_step)
  steps = first_step + jnp.arange(count)
  if orders:
    from_orders = functools.partial(indices_from_orders, period=count, batch_size=cfg.batch_size)
    indices = over_local(from_orders, in_axes=(0, None))(jnp.stack(orders, 1), first_step)
  else:
    draw_indices = functools.partial(
      round_batch_indices,
      period=count,
      shard_size=data.train_targets.shape[1],
      batch_size=cfg.batch_size,
    )
    data_keys = particle_keys(parts, local_count, "batches")
    indices = over_local(draw_indices, in_axes=(0, None))(data_keys, first_step)
  indices = jnp.swapaxes(indices, 0, 1)  # (count, L, B)
  step_fn = functools.partial(
    local_step,
    parts,
    inputs=data.train_inputs,
    targets=data.train_targets,
    augment_keys=augment_keys,
    faulty=faulty,
  )
  carry = (params, batch_stats, opt_state)
  if cfg.loop == "scan":
    carry, losses = lax.scan(step_fn, carry, (steps, indices))
    return (*carry, losses)
  losses = []
  for t in range(count):
    carry, loss = step_fn(carry, (steps[t], indices[t]))
    losses.append(loss)
  return (*carry, jnp.stack(losses))


def round_fitness(parts: RoundParts, swarm: Swarm, data: DeviceData, round_index, losses):
  """(fitness (L,), sync state) at the end of a round: the probe loss (BatchNorm in evaluation
  mode), with the strategy's state refreshed on the same probe (e.g. PSO's bests measured again);
  or the mean mini-batch loss over the last half of the round."""
  cfg = parts.cfg
  if cfg.fitness != "probe":
    return losses[cfg.period // 2 :].mean(axis=0), swarm.sync_state
  probe_x, probe_y = round_probe(
    data, cfg.probe_size, streams.key(parts.seed, "probe"), round_index
  )
  probe_loss = lambda p, s: loss_fn(parts, p, s, probe_x, probe_y, train=False)[0]
  fitness = per_particle(probe_loss, cfg.local_layout)(swarm.params, swarm.batch_stats)
  sync_state = swarm.sync_state
  if jax.tree.leaves(sync_state):  # an empty state has nothing to refresh
    refresh = lambda state, stats: parts.strategy.refresh(state, lambda p: probe_loss(p, stats))
    sync_state = over_local(refresh)(sync_state, swarm.batch_stats)
  return fitness, sync_state


def sync_one(
  strategy: sync_lib.SyncStrategy, params, batch_stats, opt_state, sync_state, fitness, key
):
  """One particle's sync: its weights, statistics, optimizer and sync state after it, and the
  strategy's metrics."""
  new_params, batch_stats, sync_state = sync_lib.sync_variables(
    strategy, params, batch_stats, sync_state, fitness, key
  )
  return (
    new_params,
    batch_stats,
    strategy.reduce_opt_state(opt_state, sync_state, key),
    sync_state,
    strategy.metrics(params, new_params, sync_state),
  )


def present(parts: RoundParts, start_params, params, round_index):
  """The weights the device's particles send to the sync: their own, or a Byzantine fault's crafted
  weights for the faulty ones from the fault's round on (psops_jax/faults.py); `start_params` are
  the weights they started the round from."""
  fault = faults_lib.byzantine(parts.cfg.fault)
  local_count = jax.tree.leaves(params)[0].shape[0]
  index = particle_indices(local_count)
  faulty = faults_lib.is_faulty(index, local_count * parts.num_devices, fault)
  send = functools.partial(faults_lib.presented, fault=fault, axis_name=AXES)
  strikes = round_index >= fault.round
  return over_local(send, in_axes=(0, 0, 0, None))(start_params, params, faulty, strikes)


def device_sync(
  parts: RoundParts, swarm: Swarm, data: DeviceData, round_index, losses, start_params=None
):
  """Fitness, sync and metrics at the end of round `round_index`; losses (period, L). A Byzantine
  fault replaces its workers' weights by what they present (`present`, from `start_params`, the
  round's starting weights) first: the fitness measures, and the sync receives, those."""
  if faults_lib.byzantine(parts.cfg.fault) is not None:
    swarm = swarm._replace(params=present(parts, start_params, swarm.params, round_index))
  fitness, sync_state = round_fitness(parts, swarm, data, round_index, losses)
  sync_key = jax.random.fold_in(streams.key(parts.seed, "sync"), round_index)
  *swarm, extra = over_local(
    functools.partial(sync_one, parts.strategy), in_axes=(0, 0, 0, 0, 0, None)
  )(swarm.params, swarm.batch_stats, swarm.opt_state, sync_state, fitness, sync_key)
  metrics = {"loss": losses.mean(axis=0), "fitness": fitness, **extra}
  return Swarm(*swarm), metrics


def communicate(parts: RoundParts, sync_state):
  """The strategy's collective of the last sync's payload (`SyncStrategy.communicate`), issued in
  the same program as the round's local steps: nothing in the steps waits for it, so XLA runs it
  behind them (docs/DESIGN.md: XLA:CPU overlaps it with gloo too)."""
  if parts.strategy.communicate is None:
    return sync_state
  return over_local(parts.strategy.communicate)(sync_state)


def device_round(parts: RoundParts, swarm: Swarm, data: DeviceData, round_index):
  """A whole round on one device: the local steps (beside the last sync's collective, for a
  strategy that overlaps it), then the sync."""
  period = parts.cfg.period
  sync_state = communicate(parts, swarm.sync_state)
  *state, losses = device_steps(
    parts, swarm.params, swarm.batch_stats, swarm.opt_state, data, round_index * period, period
  )
  return device_sync(parts, Swarm(*state, sync_state), data, round_index, losses, swarm.params)


def device_chunks_sync(parts: RoundParts, swarm: Swarm, data, round_index, chunk_losses, *start):
  """device_sync of a round in several calls, given the calls' losses (chunk, L) each: joined here,
  inside the sync's program, rather than by one more call."""
  return device_sync(parts, swarm, data, round_index, jnp.concatenate(chunk_losses), *start)


def device_first_steps(
  parts, params, batch_stats, opt_state, sync_state, data, first_step, orders, count
):
  """The first call of a round in several calls: its steps, beside `communicate`."""
  sync_state = communicate(parts, sync_state)
  *state, losses = device_steps(
    parts, params, batch_stats, opt_state, data, first_step, count, orders
  )
  return (*state, sync_state, losses)


def make_round(
  model,
  tx: optax.GradientTransformation,
  strategy: sync_lib.SyncStrategy,
  cfg: RoundConfig,
  mesh: jax.sharding.Mesh,
  seed: int,
):
  """The round: `swarm, metrics = round_fn(swarm, data, round_index)`.

  Each particle runs `cfg.period` optax steps on mini-batches of its own shard, computes its
  fitness, then all particles run `strategy.sync` (and `strategy.reduce_opt_state`) together.
  `strategy` must be built with `axis_name=AXES`. metrics: per-particle "loss" (mean mini-batch loss
  of the round) and "fitness" (what the sync compared), each of shape (N,). The swarm's buffers are
  donated.

  One jitted call per round, unless the steps are unrolled and `period` exceeds `cfg.max_unroll`:
  then the local steps run in calls of `chunk_length(...)` steps and the fitness and sync in one
  more call (the compile time of an unrolled round grows with its length, and on CPU LeNet-5's steps
  ran faster in calls of 2-4 steps: benchmarks/results/max_unroll.json; the calls are queued without
  a host sync, the data stays on the devices). Both give the same numbers. A Byzantine fault's
  sync reads the round's starting weights too: the chained calls keep a copy of them for it.
  """
  parts = RoundParts(model, tx, strategy, cfg, int(mesh.devices.size), seed)
  keeps_start = faults_lib.byzantine(cfg.fault) is not None
  data_spec = DeviceData(P(AXIS), P(AXIS), P(), P())
  # check_vma=False: collectives over (mesh axis, vmap axis) need it with jax 0.10 (docs/DESIGN.md)
  on_mesh = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)
  chunk = chunk_length(cfg.period, cfg.loop, cfg.max_unroll)
  if chunk == cfg.period:
    return jax.jit(
      on_mesh(
        functools.partial(device_round, parts),
        in_specs=(P(AXIS), data_spec, P()),
        out_specs=(P(AXIS), P(AXIS)),
      ),
      donate_argnums=0,
    )
  steps_fn = jax.jit(
    on_mesh(
      lambda params, stats, opt, data, first_step, orders: device_steps(
        parts, params, stats, opt, data, first_step, chunk, orders
      ),
      in_specs=(P(AXIS), P(AXIS), P(AXIS), data_spec, P(), P(AXIS)),
      out_specs=(P(AXIS), P(AXIS), P(AXIS), P(None, AXIS)),
    ),
    donate_argnums=(0, 1, 2),
  )
  sync_fn = jax.jit(
    on_mesh(
      functools.partial(device_chunks_sync, parts),
      in_specs=(P(AXIS), data_spec, P(), P(None, AXIS)) + ((P(AXIS),) if keeps_start else ()),
      out_specs=(P(AXIS), P(AXIS)),
    ),
    donate_argnums=(0, 4) if keeps_start else 0,
  )
  orders_fn = jax.jit(
    on_mesh(
      functools.partial(device_epoch_orders, parts),
      in_specs=(data_spec, P()),
      out_specs=P(AXIS),
    )
  )
  first_fn = None
  if strategy.communicate is not None:
    first_fn = jax.jit(
      on_mesh(
        functools.partial(device_first_steps, parts, count=chunk),
        in_specs=(P(AXIS), P(AXIS), P(AXIS), P(AXIS), data_spec, P(), P(AXIS)),
        out_specs=(P(AXIS), P(AXIS), P(AXIS), P(AXIS), P(None, AXIS)),
      ),
      donate_argnums=(0, 1, 2, 3),
    )
  calls = RoundCalls(steps_fn, sync_fn, orders_fn, first_fn, cfg.period, chunk, cfg.batch_size)
  round_fn = chain_calls(calls, keeps_start)
  round_fn.chunked = calls._replace(keeps_start=keeps_start)
  return round_fn


class RoundCalls(NamedTuple):
  """The jitted calls of a round in several calls (make_round) and their static settings."""

  steps_fn: Any  # chunk local steps: (params, stats, opt, data, first_step, orders) -> ...
  sync_fn: Any  # fitness and sync
  orders_fn: Any  # (data, epoch) -> the shards' orders in that epoch (device_epoch_orders)
  first_fn: Any  # the first steps beside the strategy's collective (None: steps_fn)
  period: int
  chunk: int
  batch_size: int
  keeps_start: bool = False  # sync_fn also takes the round's starting weights


class EpochOrders:
  """The shards' orders per epoch (`RoundCalls.orders_fn`), each computed once: a round in several
  calls reads the same epoch's order in every call, and an epoch spans many rounds of a large
  shard (a permutation of the shard costs more than a small model's step on CPU)."""

  def __init__(self, orders_fn):
    self.orders_fn, self.data, self.cache = orders_fn, None, {}

  def __call__(self, data: DeviceData, first_step: int, count: int, batch_size: int) -> tuple:
    """The orders of the epochs that steps first_step ... + count - 1 may touch (device_steps'
    `orders`: epochs_touched(...) of them, those past the last step's epoch repeat the first)."""
    if data is not self.data:
      self.data, self.cache = data, {}
    steps_per_epoch = data.train_targets.shape[1] // batch_size
    first, last = first_step // steps_per_epoch, (first_step + count - 1) // steps_per_epoch
    epochs = [first + e for e in range(epochs_touched(count, steps_per_epoch))]
    epochs = [e if e <= last else first for e in epochs]
    self.cache = {e: o for e, o in self.cache.items() if e >= first}  # epochs are visited in order
    for e in epochs:
      if e not in self.cache:
        self.cache[e] = self.orders_fn(data, np.int32(e))
    return tuple(self.cache[e] for e in epochs)


def chain_calls(calls: RoundCalls, keeps_start=False):
  """A round made of period / chunk calls of `steps_fn` (the first one `first_fn`, when the
  strategy overlaps a collective with the steps) and one of `sync_fn` (see make_round), each given
  its epochs' orders from an `EpochOrders`. `keeps_start`: `sync_fn` also takes the round's
  starting weights, copied before the first call (which donates them)."""
  orders_of = EpochOrders(calls.orders_fn)

  def round_fn(swarm: Swarm, data: DeviceData, round_index):
    start = (copy_tree(swarm.params),) if keeps_start else ()
    state, sync_state, losses = (
      (swarm.params, swarm.batch_stats, swarm.opt_state),
      swarm.sync_state,
      [],
    )
    for c in range(calls.period // calls.chunk):
      step = int(round_index) * calls.period + c * calls.chunk
      orders = orders_of(data, step, calls.chunk, calls.batch_size)
      # A NumPy scalar goes to the devices with the call; jnp.int32 would be one more dispatch.
      if c == 0 and calls.first_fn is not None:
        *state, sync_state, chunk_losses = calls.first_fn(
          *state, sync_state, data, np.int32(step), orders
        )
      else:
        *state, chunk_losses = calls.steps_fn(*state, data, np.int32(step), orders)
      losses.append(chunk_losses)
    return calls.sync_fn(Swarm(*state, sync_state), data, round_index, tuple(losses), *start)

  return round_fn


@jax.jit
def copy_tree(tree: PyTree) -> PyTree:
  """A copy of `tree` in buffers of its own, on the same devices."""
  return jax.tree.map(jnp.copy, tree)


def compile_round(round_fn, swarm: Swarm, data: DeviceData):
  """`round_fn` of make_round compiled ahead of time for these arguments (same call signature)."""
  if not hasattr(round_fn, "chunked"):
    return round_fn.lower(swarm, data, jnp.int32(0)).compile()
  calls = round_fn.chunked
  num_particles = jax.tree.leaves(swarm.params)[0].shape[0]
  sharding = jax.tree.leaves(swarm.params)[0].sharding
  chunk_losses = jax.ShapeDtypeStruct(
    (calls.chunk, num_particles),
    jnp.float32,
    sharding=NamedSharding(sharding.mesh, P(None, AXIS)),
  )
  losses = (chunk_losses,) * (calls.period // calls.chunk)
  variables = (swarm.params, swarm.batch_stats, swarm.opt_state)
  orders_c = calls.orders_fn.lower(data, jnp.int32(0)).compile()
  orders = EpochOrders(orders_c)(data, 0, calls.chunk, calls.batch_size)  # arguments' shapes
  steps_c = calls.steps_fn.lower(*variables, data, jnp.int32(0), orders).compile()
  start = (swarm.params,) if calls.keeps_start else ()
  sync_c = calls.sync_fn.lower(swarm, data, jnp.int32(0), losses, *start).compile()
  first_c = None
  if calls.first_fn is not None:
    first_c = calls.first_fn.lower(*variables, swarm.sync_state, data, jnp.int32(0), orders)
    first_c = first_c.compile()
  compiled = calls._replace(steps_fn=steps_c, sync_fn=sync_c, orders_fn=orders_c, first_fn=first_c)
  return chain_calls(compiled, calls.keeps_start)


# --------------------------------------------------------------------------------------------------
# Initial state and data placement.


def init_swarm(
  model,
  tx,
  strategy,
  sample_inputs: np.ndarray,
  num_particles: int,
  seed: int,
  mesh,
  mean,
  std,
  init: str = "shared",
  task: str = "classification",
) -> Swarm:
  """The swarm on the mesh: every particle from the same initial weights ("shared"), or each from
  its own key fold_in(seed, particle index) ("independent")."""
  x = tasks.model_inputs(task, jnp.asarray(sample_inputs[:1]), mean, std)

  def init_one(key):
    variables = model.init(key, x)
    return variables["params"], variables.get("batch_stats", {})

  def build():
    if init == "shared":
      one = init_one(jax.random.key(seed))
      params, batch_stats = jax.tree.map(
        lambda a: jnp.broadcast_to(a, (num_particles,) + a.shape), one
      )
    else:
      keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(
        jnp.arange(num_particles)
      )
      params, batch_stats = jax.vmap(init_one)(keys)
    return Swarm(params, batch_stats, jax.vmap(tx.init)(params), jax.vmap(strategy.init)(params))

  # Built by jit: every leaf gets a buffer of its own (the round donates them all).
  return jax.jit(build, out_shardings=NamedSharding(mesh, P(AXIS)))()


def put_global(array: np.ndarray, sharding) -> jax.Array:
  """A global array from a host array that every process holds; each process transfers only the
  slices its own devices hold (with one process: a plain device_put)."""
  return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def put_data(train_shards: tuple, probe: tuple, mesh) -> DeviceData:
  """Each particle's shard on its own device; the probe batch on every device."""
  by_particle, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
  return DeviceData(
    put_global(train_shards[0], by_particle),
    put_global(train_shards[1], by_particle),
    put_global(probe[0], replicated),
    put_global(probe[1], replicated),
  )


# --------------------------------------------------------------------------------------------------
# Evaluation.


def accuracy_and_loss(model, params, batch_stats, inputs, targets, mean, std, task):
  """(accuracy, mean cross-entropy) of one model (BatchNorm with its running statistics) over every
  target of a whole split, in unrolled chunks of at most EVAL_CHUNK examples and EVAL_TARGETS
  targets."""
  chunk = min(EVAL_CHUNK, max(1, EVAL_TARGETS // max(1, int(np.prod(targets.shape[1:])))))
  correct, total_loss = 0.0, 0.0
  for start in range(0, targets.shape[0], chunk):
    x = tasks.model_inputs(task, inputs[start : start + chunk], mean, std)
    logits, _ = apply_model(model, params, batch_stats, x, train=False)
    chunk_correct, chunk_loss = tasks.split_sums(logits, targets[start : start + chunk])
    correct, total_loss = correct + chunk_correct, total_loss + chunk_loss
  return correct / targets.size, total_loss / targets.size


class Evaluators(NamedTuple):
  """Evaluation functions, compiled once for a run.

  particles(params, batch_stats, inputs, targets) -> (accuracies (N,), losses (N,)): every particle,
      each device evaluating its own;
  one(params, batch_stats, inputs, targets) -> (accuracy, loss): a single model on one device;
  mean(params, batch_stats) -> their means over the particles (the averaged weights);
  export(swarm, fitness) -> (params, batch_stats) of the strategy's exported model, stacked over
      the particles (equal on every particle).
  """

  particles: Any
  one: Any
  mean: Any
  export: Any


def compile_evaluators(
  model, strategy, swarm: Swarm, test: tuple, test_one: tuple, mean, std, task="classification"
) -> Evaluators:
  """Evaluators for `swarm`'s shapes, compiled ahead of time: `test` is the split replicated on the
  mesh, `test_one` the same split on one device; `strategy` (built with axis_name=AXES) exports."""
  fn = functools.partial(accuracy_and_loss, model, mean=mean, std=std, task=task)
  mesh = jax.tree.leaves(swarm.params)[0].sharding.mesh
  on_mesh = functools.partial(jax.shard_map, mesh=mesh, check_vma=False)
  export_local = jax.vmap(strategy.export, axis_name=LOCAL)
  export = jax.jit(
    on_mesh(
      lambda s, fitness: export_local(s.params, s.batch_stats, s.sync_state, fitness),
      in_specs=(P(AXIS), P(AXIS)),
      out_specs=P(AXIS),
    )
  )
  fitness = jax.ShapeDtypeStruct(
    (jax.tree.leaves(swarm.params)[0].shape[0],), jnp.float32, sharding=NamedSharding(mesh, P(AXIS))
  )

  def device_particles(params, batch_stats, inputs, targets):
    return per_particle(lambda p, s: fn(p, s, inputs, targets), "unroll")(params, batch_stats)

  particles = jax.jit(
    jax.shard_map(
      device_particles,
      mesh=mesh,
      in_specs=(P(AXIS), P(AXIS), P(), P()),
      out_specs=(P(AXIS), P(AXIS)),
    )
  )
  on_device = test_one[0].sharding
  one_model = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype, sharding=on_device),
    (swarm.params, swarm.batch_stats),
  )
  average = lambda params, batch_stats: jax.tree.map(lambda a: a.mean(0), (params, batch_stats))
  return Evaluators(
    particles=particles.lower(swarm.params, swarm.batch_stats, *test).compile(),
    one=jax.jit(fn).lower(*one_model, *test_one).compile(),
    mean=jax.jit(average).lower(swarm.params, swarm.batch_stats).compile(),
    export=export.lower(swarm, fitness).compile(),
  )
