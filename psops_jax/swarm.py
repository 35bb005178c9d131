"""The swarm on a device mesh: state, one jitted round (local steps + sync), evaluation.

Particles lie along the mesh axis `AXIS` ("particles"), one particle per device. Every array of the swarm
carries a leading particle axis of size N, sharded over that mesh axis; `jax.shard_map` hands each device
its own particle (a block of size 1), which the round squeezes away, so the sync strategies see one
particle's pytree and reach the others only through collectives over `AXIS`.

Loop structure of the local steps (`loop`): "unroll" writes the `period` steps out in the jitted
program, "scan" runs them in `lax.scan`. Measured on a 2-core CPU (`benchmarks/loop_structure.py`,
numbers in `benchmarks/results/loop_structure.json`): XLA:CPU runs convolutions inside a while loop
several times slower, so "auto" unrolls on CPU and scans on GPU/TPU, where loop bodies run at full speed
and compile time stays flat in `period`.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from psops_jax import sync as sync_lib

AXIS = "particles"
EVAL_CHUNK = 1000
PyTree = Any


class Swarm(NamedTuple):
  """All particles' state; every leaf has a leading particle axis of size N."""
  params: PyTree
  opt_state: PyTree
  sync_state: PyTree


class DeviceData(NamedTuple):
  """The data a round reads, on the devices: each particle's shard, and one common probe batch."""
  train_images: jax.Array  # uint8 (N, S, H, W, C), sharded over particles
  train_labels: jax.Array  # int32 (N, S), sharded over particles
  probe_images: jax.Array  # uint8 (B_probe, H, W, C), replicated
  probe_labels: jax.Array  # int32 (B_probe,), replicated


class RoundConfig(NamedTuple):
  """Static settings of a round (hashable: part of the jitted function's identity)."""
  period: int
  batch_size: int
  fitness: str        # "round_loss" or "probe"
  loop: str           # "unroll" or "scan"
  augment: bool       # random crop (4-pixel pad) and horizontal flip, for CIFAR-10
  mean: tuple
  std: tuple


def make_mesh(num_particles: int) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_particles` devices, axis name `AXIS`."""
  devices = jax.devices()
  if num_particles > len(devices):
    raise ValueError(
        f"num_particles={num_particles} needs {num_particles} devices, this process sees "
        f"{len(devices)} ({devices[0].platform}). Accepted: 1..{len(devices)}. On CPU, set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={num_particles} before JAX starts "
        "(train.py does this itself).")
  return jax.make_mesh((num_particles,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:num_particles])


def resolve_loop(loop: str) -> str:
  """"auto" -> "unroll" on CPU (see the module docstring), "scan" elsewhere."""
  if loop == "auto":
    return "unroll" if jax.default_backend() == "cpu" else "scan"
  return loop


# --------------------------------------------------------------------------------------------------
# Pure per-particle functions.


def normalize(images: jax.Array, mean: tuple, std: tuple) -> jax.Array:
  """uint8 images -> float32 (images / 255 - mean) / std, per channel."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


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


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy over the batch."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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


def make_round(model, tx: optax.GradientTransformation, strategy: sync_lib.SyncStrategy,
               cfg: RoundConfig, mesh: jax.sharding.Mesh, seed: int):
  """The jitted round: `swarm, metrics = round_fn(swarm, data, round_index)`.

  Each particle runs `cfg.period` optax steps on mini-batches of its own shard, computes its fitness,
  then all particles run `strategy.sync` together. metrics: per-particle "loss" (mean mini-batch loss of
  the round) and "fitness" (what the sync compared), each of shape (N,).
  The swarm's buffers are donated.
  """

  def loss_fn(params, images, labels):
    return cross_entropy(model.apply({"params": params}, normalize(images, cfg.mean, cfg.std)), labels)

  grad_fn = jax.value_and_grad(loss_fn)

  def local_step(carry, step, images, labels, data_key):
    params, opt_state = carry
    idx = batch_indices(data_key, step, labels.shape[0], cfg.batch_size)
    x, y = images[idx], labels[idx]
    if cfg.augment:
      x = augment_batch(jax.random.fold_in(jax.random.fold_in(data_key, -1), step), x)
    loss, grads = grad_fn(params, x, y)
    grads = strategy.reduce_grads(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def particle_round(swarm: Swarm, data: DeviceData, round_index):
    squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)
    params, opt_state, sync_state = squeeze(swarm)
    images, labels = data.train_images[0], data.train_labels[0]
    base_key = jax.random.fold_in(jax.random.key(seed), lax.axis_index(AXIS))
    first_step = round_index * cfg.period
    steps = first_step + jnp.arange(cfg.period)
    step_fn = functools.partial(local_step, images=images, labels=labels, data_key=base_key)
    if cfg.loop == "scan":
      (params, opt_state), losses = lax.scan(step_fn, (params, opt_state), steps)
    else:
      carry, losses = (params, opt_state), []
      for t in range(cfg.period):
        carry, loss = step_fn(carry, steps[t])
        losses.append(loss)
      (params, opt_state), losses = carry, jnp.stack(losses)
    if cfg.fitness == "probe":
      fitness = loss_fn(params, data.probe_images, data.probe_labels)
    else:  # mean mini-batch loss over the last half of the round
      fitness = losses[cfg.period // 2:].mean()
    sync_key = jax.random.fold_in(jax.random.key(seed + 1), round_index)
    params, sync_state = strategy.sync(params, sync_state, fitness, sync_key)
    expand = lambda tree: jax.tree.map(lambda a: a[None], tree)
    metrics = {"loss": losses.mean(), "fitness": fitness}
    return expand(Swarm(params, opt_state, sync_state)), expand(metrics)

  sharded = jax.shard_map(
      particle_round, mesh=mesh,
      in_specs=(P(AXIS), DeviceData(P(AXIS), P(AXIS), P(), P()), P()),
      out_specs=(P(AXIS), P(AXIS)))
  return jax.jit(sharded, donate_argnums=0)


# --------------------------------------------------------------------------------------------------
# Initial state and data placement.


def init_swarm(model, tx, strategy, sample_images: np.ndarray, num_particles: int, seed: int,
               mesh, mean, std) -> Swarm:
  """N copies of one initialisation (all particles start from the same weights), on the mesh."""
  x = normalize(jnp.asarray(sample_images[:1]), mean, std)
  params = model.init(jax.random.key(seed), x)["params"]
  one = Swarm(params, tx.init(params), strategy.init(params))
  stacked = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_particles,) + jnp.shape(a)), one)
  return jax.device_put(stacked, NamedSharding(mesh, P(AXIS)))


def put_data(train_shards: tuple, probe: tuple, mesh) -> DeviceData:
  """Each particle's shard on its own device; the probe batch on every device."""
  by_particle, replicated = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
  return DeviceData(jax.device_put(train_shards[0], by_particle),
                    jax.device_put(train_shards[1], by_particle),
                    jax.device_put(probe[0], replicated), jax.device_put(probe[1], replicated))


# --------------------------------------------------------------------------------------------------
# Evaluation.


def accuracy_and_loss(model, params, images, labels, mean, std):
  """(accuracy, mean cross-entropy) of one model over a whole split, in unrolled chunks of EVAL_CHUNK."""
  correct, total_loss = 0.0, 0.0
  for start in range(0, labels.shape[0], EVAL_CHUNK):
    x, y = images[start:start + EVAL_CHUNK], labels[start:start + EVAL_CHUNK]
    logits = model.apply({"params": params}, normalize(x, mean, std))
    correct += jnp.sum(jnp.argmax(logits, -1) == y)
    total_loss += optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
  return correct / labels.shape[0], total_loss / labels.shape[0]


def make_evaluators(model, mesh, mean, std):
  """(evaluate_particles, evaluate_one): accuracy and loss of every particle (in parallel, one per
  device) and of a single model (on one device)."""
  fn = functools.partial(accuracy_and_loss, model, mean=mean, std=std)

  def per_particle(params, images, labels):
    acc, loss = fn(jax.tree.map(lambda a: a[0], params), images, labels)
    return acc[None], loss[None]

  evaluate_particles = jax.jit(jax.shard_map(per_particle, mesh=mesh, in_specs=(P(AXIS), P(), P()),
                                             out_specs=(P(AXIS), P(AXIS))))
  evaluate_one = jax.jit(fn)
  return evaluate_particles, evaluate_one
