"""Throughput of the project's jitted round against a plain-JAX floor and PyTorch, and the cost of
the PSO-PS sync against an all-reduce. Side by side, in one process, on the same cores.

For one model, particle count N, period T (local steps per round) and batch size B, all measured in
interleaved repetitions (the order shuffled each time; medians and spread reported):

  1. framework  the project's round (`psops_jax.swarm.make_round`): T local optax steps of all N
                particles + the PSO-PS sync, N particles on --devices devices (default N). Also a
                swarm of one particle on one device, its round run N times (the floor's resources),
                and, without --quick, the round with sync strategy "none" (the sync's share).
  2. floor      the fastest plain JAX loop for ONE particle (same Flax model, same optax SGD with
                momentum, same batch, batches sliced from a uint8 shard on the device and normalised
                inside the step): a jitted step in a Python loop, and a jitted function with the T
                steps unrolled, and (when the period exceeds --max-unroll, default train.max_unroll)
                calls of max_unroll unrolled steps as the framework's round makes; the fastest,
                run N times one after another (= one particle's time x N). No mesh, no sharding,
                no sync. Two diagnostic variants draw the batches the way the framework does
                (`swarm.round_batch_indices`: one permutation per epoch the round touches) and the
                way it did before (`swarm.batch_indices` at every step: a permutation of the shard
                per step, see benchmarks/README.md).
  3. torch      PyTorch CPU (eager), the same architecture written as a torch.nn.Module layer by
                layer (checked: given the Flax weights it gives the same logits), the same batch and
                steps, torch.optim.SGD(momentum=0.9); the N particles trained one after another,
                with torch's default thread count and with 1 thread (the faster is compared).
  4. sync       the PSO-PS sync alone (`psops_jax.sync`, built from configs/digits_pso.py's `sync`
                section, under shard_map over the particle mesh as in the round) against
                `lax.pmean` of the same weights (one all-reduce per leaf), and against the
                framework's averaging sync (`sync.pmean_floats`: the leaves raveled into one
                all-reduce, as every strategy's collectives are): time per call (one call after
                another, each waited for, buffers donated) and peak bytes per device from
                `compiled.memory_analysis()` (arguments + outputs - aliased + temporaries; XLA:CPU's
                device.memory_stats() returns None).

Samples per second = N x T x B / (seconds for the whole swarm's round). Data: random uint8 images of
the model's input shape (speed does not depend on pixel values); a particle's shard holds
train_size // N of them (--train-size; default the data set's size: digits 1,438, MNIST 60,000), as
in a real run, because the framework's batch drawing costs grow with the shard. Fitness:
`round_loss` (no extra forward pass) unless --fitness probe.

On CPU the N virtual devices (XLA_FLAGS=--xla_force_host_platform_device_count) are threads of this
one process and share its cores, exactly like the floor's and torch's threads: all three run on the
same cores. The process CPU time / wall time of each measurement (the cores it kept busy) is
reported.

  python benchmarks/throughput.py --quick --model small_cnn --particles 8
  python benchmarks/throughput.py --model lenet5 --particles 8 --period 16
  python benchmarks/throughput.py --scaling --quick          # 1, 2, 4, 8 devices; writes a PNG

Writes benchmarks/results/throughput_<model>.json (--scaling: throughput_scaling.json and .png;
override with --out). The last printed line is one JSON object (framework_vs_floor,
framework_vs_torch, pso_sync_vs_pmean, peak_bytes_pso_sync_vs_pmean, config, machine).
"""

import argparse
import functools
import json
import os
import random
import resource
import statistics
import time

from benchmarks import common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TORCH_MISSING = "torch not installed: pip install -r requirements-bench.txt"


def cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def measure(runners: dict, reps: int, seed: int = 0, slow: tuple = (), slow_reps: int = 3) -> dict:
  """Time every runner `reps` times, interleaved (a new random order each repetition); the runners
  named in `slow` only in the first `slow_reps` repetitions.

  Returns {name: {"seconds": [...], "cpu_over_wall": [...]}} (CPU seconds of the whole process over
  wall seconds, per call).
  """
  order = list(runners)
  rng = random.Random(seed)
  out = {name: {"seconds": [], "cpu_over_wall": []} for name in runners}
  for rep in range(reps):
    rng.shuffle(order)
    for name in order:
      if name in slow and rep >= slow_reps:
        continue
      c0, t0 = cpu_seconds(), time.perf_counter()
      runners[name](rep)
      t1, c1 = time.perf_counter(), cpu_seconds()
      out[name]["seconds"].append(t1 - t0)
      out[name]["cpu_over_wall"].append((c1 - c0) / (t1 - t0))
  return out


# --------------------------------------------------------------------------------------------------
# 2. The plain-JAX floor: one particle, no framework.


def build_floor(
  model, tx, images, labels, period: int, batch_size: int, mean, std, device, max_unroll: int = 0
):
  """One particle's local steps in plain JAX (also in calls of at most `max_unroll` unrolled steps).
  Returns {variant: fn(first_step)} (each fn runs one round of `period` steps, carrying params and
  optimizer state, and blocks), the compile seconds, and a check that the two batch-drawing
  functions agree."""
  import jax
  import jax.numpy as jnp
  import optax
  from jax import lax

  from psops_jax import swarm as swarm_lib

  shard_size = labels.shape[0]
  steps_per_epoch = shard_size // batch_size
  key = jax.random.key(0)

  def loss_fn(params, x, y):
    logits = model.apply({"params": params}, swarm_lib.normalize(x, mean, std))
    return swarm_lib.cross_entropy(logits, y)

  def train_step(params, opt_state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def sliced(sx, sy, step):  # the shard is already in random order: batch = the next B examples
    start = (step % steps_per_epoch) * batch_size
    return lax.dynamic_slice_in_dim(sx, start, batch_size), lax.dynamic_slice_in_dim(
      sy, start, batch_size
    )

  def one_step(params, opt_state, sx, sy, step):
    return train_step(params, opt_state, *sliced(sx, sy, step))

  def unrolled(params, opt_state, sx, sy, first_step, draw="slice", steps=period):
    if draw == "once":
      idx = swarm_lib.round_batch_indices(key, first_step, period, shard_size, batch_size)
    for t in range(steps):
      if draw == "slice":
        x, y = sliced(sx, sy, first_step + t)
      elif draw == "per_step":  # what the framework did before round_batch_indices
        i = swarm_lib.batch_indices(key, first_step + t, shard_size, batch_size)
        x, y = sx[i], sy[i]
      else:
        x, y = sx[idx[t]], sy[idx[t]]
      params, opt_state, loss = train_step(params, opt_state, x, y)
    return params, opt_state, loss

  p0 = model.init(jax.random.key(0), swarm_lib.normalize(jnp.asarray(images[:1]), mean, std))[
    "params"
  ]
  sx, sy = jax.device_put(images, device), jax.device_put(labels, device)
  step_values = [jax.device_put(jnp.int32(t), device) for t in range(4 * period)]
  jit_step = jax.jit(one_step, donate_argnums=(0, 1))
  jit_rounds = {
    draw: jax.jit(functools.partial(unrolled, draw=draw), donate_argnums=(0, 1))
    for draw in ("slice", "per_step", "once")
  }
  # The round as calls of `chunk` unrolled steps (what train.max_unroll does to the framework's
  # round).
  chunk = swarm_lib.chunk_length(period, "unroll", max_unroll)
  if chunk < period:
    jit_rounds["chunks"] = jax.jit(functools.partial(unrolled, steps=chunk), donate_argnums=(0, 1))

  compile_seconds = {}
  t0 = time.perf_counter()
  jit_step = jit_step.lower(p0, tx.init(p0), sx, sy, step_values[0]).compile()
  compile_seconds["step_loop"] = round(time.perf_counter() - t0, 2)
  for draw in jit_rounds:
    t0 = time.perf_counter()
    jit_rounds[draw] = jit_rounds[draw].lower(p0, tx.init(p0), sx, sy, step_values[0]).compile()
    compile_seconds[f"unrolled/{draw}"] = round(time.perf_counter() - t0, 2)

  def fresh_state():
    copy = lambda tree: jax.tree.map(
      lambda a: jnp.array(a, copy=True), jax.device_put(tree, device)
    )
    return [copy(p0), copy(tx.init(p0))]  # own buffers: the jitted functions donate them

  variants = {}
  state = fresh_state()

  def step_loop(first_step):
    params, opt_state = state
    for t in range(period):
      params, opt_state, loss = jit_step(params, opt_state, sx, sy, step_values[first_step + t])
    jax.block_until_ready(loss)
    state[:] = params, opt_state

  variants["step_loop"] = step_loop
  for draw, fn in jit_rounds.items():
    calls = period // chunk if draw == "chunks" else 1

    def run(first_step, fn=fn, calls=calls, state=fresh_state()):
      params, opt_state = state
      for c in range(calls):
        params, opt_state, loss = fn(params, opt_state, sx, sy, step_values[first_step + c * chunk])
      jax.block_until_ready(loss)
      state[:] = params, opt_state

    variants[f"unrolled/{draw}"] = run

  # The proposed batch drawing must give exactly the framework's batches (rounds crossing epochs
  # too).
  check_steps = [0, steps_per_epoch - 1, 3 * steps_per_epoch - period // 2]
  same = all(
    bool(
      (
        swarm_lib.round_batch_indices(key, jnp.int32(s), period, shard_size, batch_size)
        == jnp.stack(
          [
            swarm_lib.batch_indices(key, jnp.int32(s + t), shard_size, batch_size)
            for t in range(period)
          ]
        )
      ).all()
    )
    for s in check_steps
  )
  return variants, compile_seconds, same


# --------------------------------------------------------------------------------------------------
# 3. PyTorch.


def torch_modules():
  """The torch equivalents of psops_jax/models.py's SmallCNN and LeNet5 (NCHW)."""
  import torch
  from torch import nn

  class SmallCNN(nn.Module):
    """conv3x3(32, same) - conv3x3(32, same) - pool - conv3x3(64, same) - pool - 128 - logits."""

    def __init__(self, num_classes=10):
      super().__init__()
      self.conv0 = nn.Conv2d(1, 32, 3, padding=1)
      self.conv1 = nn.Conv2d(32, 32, 3, padding=1)
      self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
      self.dense0 = nn.Linear(64 * 2 * 2, 128)
      self.dense1 = nn.Linear(128, num_classes)

    def forward(self, x):
      x = torch.relu(self.conv0(x))
      x = torch.relu(self.conv1(x))
      x = nn.functional.max_pool2d(x, 2, 2)
      x = torch.relu(self.conv2(x))
      x = nn.functional.max_pool2d(x, 2, 2)
      x = torch.relu(self.dense0(x.flatten(1)))
      return self.dense1(x)

  class LeNet5(nn.Module):
    """conv5x5(6, same) - pool - conv5x5(16, valid) - pool - 120 - 84 - logits."""

    def __init__(self, num_classes=10):
      super().__init__()
      self.conv0 = nn.Conv2d(1, 6, 5, padding=2)
      self.conv1 = nn.Conv2d(6, 16, 5, padding=0)
      self.dense0 = nn.Linear(16 * 5 * 5, 120)
      self.dense1 = nn.Linear(120, 84)
      self.dense2 = nn.Linear(84, num_classes)

    def forward(self, x):
      x = nn.functional.max_pool2d(torch.relu(self.conv0(x)), 2, 2)
      x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, 2)
      x = torch.relu(self.dense0(x.flatten(1)))
      x = torch.relu(self.dense1(x))
      return self.dense2(x)

  return {"small_cnn": SmallCNN, "lenet5": LeNet5}


def load_flax_params(module, params, flat_hwc: tuple):
  """Copy Flax params into the torch module (Conv_k -> conv{k}, Dense_k -> dense{k}). Flax flattens
  the last feature map as (H, W, C), torch as (C, H, W): the first Dense kernel's rows permuted."""
  import numpy as np
  import torch

  with torch.no_grad():
    for name, leaf in params.items():
      kind, index = name.split("_")
      layer = getattr(module, f"{kind.lower()}{index}")
      kernel = np.array(leaf["kernel"])
      if kind == "Conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        weight = kernel.transpose(3, 2, 0, 1)
      elif index == "0":  # first Dense after the flatten
        h, w, c = flat_hwc
        weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)
      else:
        weight = kernel.T
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
      layer.bias.copy_(torch.from_numpy(np.array(leaf["bias"])))


def build_torch(model_name, flax_model, images, labels, particles, period, batch_size, mean, std):
  """N torch particles (each its own module and optimizer) trained one after another. Returns
  ({variant: fn(first_step)}, info), with torch's default thread count and 1 thread, or
  (None, reason)."""
  try:
    import torch
  except ImportError:
    return None, TORCH_MISSING
  import jax
  import jax.numpy as jnp
  import numpy as np

  from psops_jax import swarm as swarm_lib

  modules = torch_modules()
  if model_name not in modules:
    return None, f"no torch module for {model_name} (small_cnn, lenet5)"
  module_cls = modules[model_name]
  # Same architecture: given the Flax weights, the torch module must give the same logits.
  x = images[:64]
  params = flax_model.init(jax.random.key(0), swarm_lib.normalize(jnp.asarray(x[:1]), mean, std))[
    "params"
  ]
  flax_logits = np.asarray(
    flax_model.apply({"params": params}, swarm_lib.normalize(jnp.asarray(x), mean, std))
  )
  flat_hwc = {"small_cnn": (2, 2, 64), "lenet5": (5, 5, 16)}[model_name]
  check = module_cls()
  load_flax_params(check, params, flat_hwc)
  to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
  mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
  std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
  normalize = lambda u8: (u8.float() / 255.0 - mean_t) / std_t
  with torch.no_grad():
    torch_logits = check(normalize(to_nchw(x))).numpy()
  max_diff = float(np.abs(torch_logits - flax_logits).max())
  same_param_count = sum(p.numel() for p in check.parameters()) == sum(
    a.size for a in jax.tree.leaves(params)
  )

  torch.manual_seed(0)
  shard_x, shard_y = to_nchw(images), torch.from_numpy(labels.astype(np.int64))
  steps_per_epoch = labels.shape[0] // batch_size
  swarm = []
  for _ in range(particles):
    module = module_cls()
    swarm.append((module, torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)))

  def run(first_step):
    for module, opt in swarm:
      for t in range(period):
        start = ((first_step + t) % steps_per_epoch) * batch_size
        xb = normalize(shard_x[start : start + batch_size])
        yb = shard_y[start : start + batch_size]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(xb), yb)
        loss.backward()
        opt.step()

  threads = torch.get_num_threads()

  def with_threads(count):
    def run_with(first_step):
      torch.set_num_threads(count)
      run(first_step)

    return run_with

  runs = {f"torch/{threads}threads": with_threads(threads)}
  if threads > 1:  # on a shared machine OpenMP's threads can lose more than they gain
    runs["torch/1thread"] = with_threads(1)
  info = {
    "torch": torch.__version__,
    "threads": threads,
    "logits_max_abs_diff_vs_flax": max_diff,
    "same_parameter_count": same_param_count,
  }
  return runs, info


# --------------------------------------------------------------------------------------------------
# 4. The sync alone.


def build_syncs(model, shape, particles, mesh, mean, std):
  """The PSO-PS sync (configs/digits_pso.py's sync section) and lax.pmean of the same stacked
  params, each as the round lays it out: shard_map over the mesh axis, vmap over the device's
  particles, collectives over (mesh axis, vmap axis). Buffers donated, as in the round."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from configs import digits_pso
  from psops_jax import swarm as swarm_lib
  from psops_jax import sync as sync_lib

  AXIS, LOCAL, AXES = swarm_lib.AXIS, swarm_lib.LOCAL, swarm_lib.AXES
  sync_config = digits_pso.get_config().sync
  strategy = sync_lib.from_config(sync_config, axis_name=AXES)
  x = swarm_lib.normalize(jnp.zeros((1,) + shape, jnp.uint8), mean, std)
  sharded = NamedSharding(mesh, P(AXIS))

  def build_state():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(particles))
    params = jax.vmap(lambda k: model.init(k, x)["params"])(keys)
    fitness = jax.random.uniform(jax.random.key(1), (particles,))
    return params, jax.vmap(strategy.init)(params), fitness

  state = {}
  state["params"], state["sync"], state["fitness"] = jax.jit(build_state, out_shardings=sharded)()
  key = jax.random.key(2)

  def pso_device(params, sync_state, fitness, key):
    return jax.vmap(strategy.sync, in_axes=(0, 0, 0, None), axis_name=LOCAL)(
      params, sync_state, fitness, key
    )

  def pmean_device(params):
    return jax.vmap(lambda p: lax.pmean(p, AXES), axis_name=LOCAL)(params)

  pso_fn = jax.jit(
    jax.shard_map(
      pso_device,
      mesh=mesh,
      in_specs=(P(AXIS), P(AXIS), P(AXIS), P()),
      out_specs=(P(AXIS), P(AXIS)),
      check_vma=False,
    ),
    donate_argnums=(0, 1),
  )
  pmean_fn = jax.jit(
    jax.shard_map(pmean_device, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False),
    donate_argnums=0,
  )
  # What the framework's averaging does instead: one all-reduce of the raveled weights.
  average_device = jax.vmap(lambda p: sync_lib.pmean_floats(p, AXES), axis_name=LOCAL)
  average_fn = jax.jit(
    jax.shard_map(average_device, mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS), check_vma=False),
    donate_argnums=0,
  )
  # The PSO sync's one collective more than pmean: the all-gather of the N scalar fitnesses.
  gather_fn = jax.jit(
    jax.shard_map(
      jax.vmap(lambda f: sync_lib.all_gather_scalar(f, AXES), axis_name=LOCAL),
      mesh=mesh,
      in_specs=P(AXIS),
      out_specs=P(AXIS),
      check_vma=False,
    )
  )
  gather_c = gather_fn.lower(state["fitness"]).compile()

  # The PSO sync's two collectives with nothing else: the fitness all-gather, then a psum of the
  # weights masked to the winner (its structural floor).
  def collectives_only(params, fitness):
    winner = jnp.argmin(sync_lib.all_gather_scalar(fitness, AXES))
    mine = sync_lib.particle_index(AXES) == winner
    return sync_lib.psum_floats(jax.tree.map(lambda p: jnp.where(mine, p, 0.0), params), AXES)

  two_fn = jax.jit(
    jax.shard_map(
      jax.vmap(collectives_only, axis_name=LOCAL),
      mesh=mesh,
      in_specs=(P(AXIS), P(AXIS)),
      out_specs=P(AXIS),
      check_vma=False,
    ),
    donate_argnums=0,
  )
  pso_c = pso_fn.lower(state["params"], state["sync"], state["fitness"], key).compile()
  two_c = two_fn.lower(state["params"], state["fitness"]).compile()
  pmean_c = pmean_fn.lower(state["params"]).compile()
  average_c = average_fn.lower(state["params"]).compile()
  copy_params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sharded)

  def memory(compiled):
    m = compiled.memory_analysis()
    fields = {
      k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
    }
    fields["peak"] = fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
    return fields

  calls = {"n": 1}

  # Each call waits for the previous one: several of these collective programs queued without
  # waiting intermittently deadlocked XLA:CPU's rendezvous (abort after 40 s) with 2 devices on
  # 2 cores.
  def run_pso(rep):
    for _ in range(calls["n"]):
      state["params"], state["sync"] = pso_c(state["params"], state["sync"], state["fitness"], key)
      jax.block_until_ready((state["params"], state["sync"]))

  def runner(compiled, *extra):
    """Calls `compiled(params, *extra)` on its own copy of the weights (donated call to call)."""
    held = {"params": copy_params(state["params"])}

    def run(rep):
      for _ in range(calls["n"]):
        held["params"] = compiled(held["params"], *extra)
        jax.block_until_ready(held["params"])

    return run

  run_pmean, run_average = runner(pmean_c), runner(average_c)
  run_two = runner(two_c, state["fitness"])

  def run_gather(rep):
    for _ in range(calls["n"]):
      jax.block_until_ready(gather_c(state["fitness"]))

  # Calls per timed sample: enough for ~20 ms of the cheaper one.
  run_pso(0), run_pmean(0)
  t0 = time.perf_counter()
  calls["n"] = 10
  run_pmean(0)
  calls["n"] = max(10, int(0.02 / max((time.perf_counter() - t0) / 10, 1e-6)))
  info = {
    "strategy": "pso",
    "sync_config": sync_config.pso.to_dict(),
    "param_bytes_per_particle": sync_lib.tree_bytes(jax.tree.map(lambda a: a[0], state["params"])),
    "memory_per_device_pso": memory(pso_c),
    "memory_per_device_pmean": memory(pmean_c),
    "memory_per_device_average": memory(average_c),
    "memory_source": "compiled.memory_analysis(), per device (the SPMD program's buffers); "
    "peak = argument + output - alias + temp",
    "device_memory_stats": jax.devices()[0].memory_stats(),
    "calls_per_sample": calls["n"],
  }
  return {
    "pso_sync": run_pso,
    "pmean": run_pmean,
    "average_sync": run_average,
    "gather_fitness": run_gather,
    "gather_then_masked_psum": run_two,
  }, info


# --------------------------------------------------------------------------------------------------


def samples(particles, period, batch_size):
  return particles * period * batch_size


def main_mode(args):
  import jax
  import numpy as np

  from psops_jax import models
  from psops_jax import swarm as swarm_lib

  n, period, batch = args.particles, args.period, args.batch_size
  shape = common.INPUT_SHAPES[args.model]
  shard_size = args.train_size // n
  mean, std = (0.5,) * shape[-1], (0.25,) * shape[-1]
  loadavg_before = os.getloadavg()
  print(
    f"model {args.model}, {n} particles on {args.devices} devices, period {period}, batch "
    f"{batch}, shard {shard_size} examples per particle, fitness {args.fitness}, "
    f"{args.reps} repetitions; {os.cpu_count()} cores, load average {loadavg_before[0]:.2f}",
    flush=True,
  )

  runners, compile_seconds = {}, {}
  # The round on --devices devices; without quick, also with no sync (the sync's share of the
  # round).
  for strategy_name in ("pso",) if args.quick else ("pso", "none"):
    run, info = common.build_round(
      args.model,
      n,
      args.devices,
      period,
      batch,
      strategy_name,
      shard_size,
      fitness=args.fitness,
      max_unroll=args.max_unroll,
    )
    runners[f"framework/{strategy_name}"] = functools.partial(lambda r, run: run(r + 2), run=run)
    compile_seconds[f"framework/{strategy_name}"] = info["compile_seconds"]
  # Like for like with the floor: a swarm of ONE particle on ONE device, its round run N times.
  run, info = common.build_round(
    args.model,
    1,
    1,
    period,
    batch,
    "pso",
    shard_size,
    fitness=args.fitness,
    max_unroll=args.max_unroll,
  )
  runners["framework/1dev"] = functools.partial(
    lambda r, run: [run(r * n + i + 2 * n) for i in range(n)], run=run
  )
  compile_seconds["framework/1dev"] = info["compile_seconds"]

  rng = np.random.RandomState(1)
  images = rng.randint(0, 256, (shard_size,) + shape).astype(np.uint8)
  labels = rng.randint(0, 10, (shard_size,)).astype(np.int32)
  model = models.create(args.model)
  import optax

  tx = optax.sgd(0.01, momentum=0.9)
  floor, floor_compile, same_batches = build_floor(
    model, tx, images, labels, period, batch, mean, std, jax.devices()[0], args.max_unroll
  )
  for variant, fn in floor.items():
    if args.quick and variant == "unrolled/per_step":
      continue  # the framework's former batch drawing: measured without --quick
    # N particles one after another = one particle's round, N times (steps continue).
    runners[f"floor/{variant}"] = functools.partial(
      lambda r, fn: [fn((r * n + i) % 3 * period) for i in range(n)], fn=fn
    )
    compile_seconds[f"floor/{variant}"] = floor_compile[variant]

  torch_runs, torch_info = build_torch(
    args.model, model, images, labels, n, period, batch, mean, std
  )
  if torch_runs is None:
    print(torch_info)
    torch_info = {"skipped": torch_info}
  else:
    for name, fn in torch_runs.items():
      runners[name] = functools.partial(lambda r, fn: fn(r * period), fn=fn)

  # Warm-up (twice: first-call effects), then the interleaved measurements. A runner whose warm-up
  # round took over 5x the median runner's (torch's OpenMP threads when other processes hold the
  # cores: 10-40x) is timed in 3 repetitions only, to keep the run's length bounded.
  warm = {}
  for name, fn in runners.items():
    fn(-2)
    t0 = time.perf_counter()
    fn(-1)
    warm[name] = time.perf_counter() - t0
  slow = tuple(k for k, v in warm.items() if v > 5 * statistics.median(warm.values()))
  if slow:
    print(f"timed in 3 repetitions only (warm-up round over 5x the median): {', '.join(slow)}")
  timed = measure(runners, args.reps, slow=slow)

  mesh = swarm_lib.make_mesh(n, args.devices)
  sync_runners, sync_info = build_syncs(model, shape, n, mesh, mean, std)
  sync_timed = measure(sync_runners, args.sync_reps, seed=1)
  loadavg_after = os.getloadavg()

  # Results: samples/s per method; ratios paired repetition by repetition.
  total = samples(n, period, batch)
  rows = {}
  for name, t in timed.items():
    rows[name] = {
      "samples_per_second": common.spread([total / s for s in t["seconds"]]),
      "ms_per_round": common.spread([1000 * s for s in t["seconds"]]),
      "cpu_over_wall": round(statistics.median(t["cpu_over_wall"]), 2),
      "compile_seconds": compile_seconds.get(name),
    }
  floor_candidates = [
    k for k in ("floor/step_loop", "floor/unrolled/slice", "floor/unrolled/chunks") if k in rows
  ]
  floor_name = min(floor_candidates, key=lambda k: rows[k]["ms_per_round"]["median"])
  seconds = lambda k: timed[k]["seconds"]
  paired = lambda a, b: common.spread([y / x for x, y in zip(seconds(a), seconds(b))])
  ratios = {
    "framework_vs_floor": paired("framework/pso", floor_name),
    "framework_1dev_vs_floor": paired("framework/1dev", floor_name),
    # What the framework does differently from the floor, one thing at a time:
    "unrolled_round_vs_step_loop": paired("floor/unrolled/slice", "floor/step_loop"),
    "framework_batch_drawing_vs_slice": paired("floor/unrolled/once", "floor/unrolled/slice"),
  }
  if "floor/unrolled/per_step" in timed:
    ratios["former_per_step_permutation_vs_slice"] = paired(
      "floor/unrolled/per_step", "floor/unrolled/slice"
    )
  if "floor/unrolled/chunks" in timed:
    ratios["chunked_round_vs_whole"] = paired("floor/unrolled/chunks", "floor/unrolled/slice")
  if "framework/none" in timed:
    ratios["framework_pso_vs_none"] = paired("framework/pso", "framework/none")
  torch_name = min(
    (k for k in rows if k.startswith("torch/")),
    key=lambda k: rows[k]["ms_per_round"]["median"],
    default=None,
  )
  if torch_name:
    ratios["framework_vs_torch"] = paired("framework/pso", torch_name)
    ratios["floor_vs_torch"] = paired(floor_name, torch_name)
  per_call = {
    k: [1e6 * s / sync_info["calls_per_sample"] for s in v["seconds"]]
    for k, v in sync_timed.items()
  }
  sync_rows = {
    k: {
      "us_per_call": common.spread(v),
      "cpu_over_wall": round(statistics.median(sync_timed[k]["cpu_over_wall"]), 2),
    }
    for k, v in per_call.items()
  }
  ratios["pso_sync_vs_pmean"] = common.spread(
    [a / b for a, b in zip(per_call["pso_sync"], per_call["pmean"])]
  )
  ratios["pso_sync_vs_average_sync"] = common.spread(
    [a / b for a, b in zip(per_call["pso_sync"], per_call["average_sync"])]
  )
  peak = {k: sync_info[f"memory_per_device_{k}"]["peak"] for k in ("pso", "pmean", "average")}
  peak_ratio = round(peak["pso"] / peak["pmean"], 2)
  round_ms = rows["framework/pso"]["ms_per_round"]["median"]
  sync_share = sync_rows["pso_sync"]["us_per_call"]["median"] / 1000 / round_ms

  # The table.
  lines = [
    f"{'method':34} {'samples/s':>10} {'[min, max]':>17} {'ms/round':>9} {'cores':>5} "
    f"{'compile s':>9} {'n':>2}"
  ]
  threads = torch_info.get("threads")
  labels_ = {
    "framework/pso": f"framework round, PSO-PS ({args.devices} dev)",
    "framework/none": f"framework round, no sync ({args.devices} dev)",
    "framework/1dev": "framework, 1 particle on 1 dev, xN",
    "floor/step_loop": "floor: jitted step, Python loop",
    "floor/unrolled/slice": "floor: jitted unrolled round",
    "floor/unrolled/chunks": f"floor: unrolled, calls of {args.max_unroll} steps",
    "floor/unrolled/once": "  unrolled + framework's batches",
    "floor/unrolled/per_step": "  unrolled + former per-step perm.",
    f"torch/{threads}threads": f"torch CPU eager, {threads} threads",
    "torch/1thread": "torch CPU eager, 1 thread",
  }
  for name in labels_:
    if name not in rows:
      continue
    r = rows[name]
    sps = r["samples_per_second"]
    mark = {floor_name: " <- floor", torch_name: " <- torch"}.get(name, "")
    lines.append(
      f"{labels_[name]:34} {sps['median']:10.0f} [{sps['min']:7.0f}, {sps['max']:7.0f}] "
      f"{r['ms_per_round']['median']:9.1f} {r['cpu_over_wall']:5.2f} "
      f"{r['compile_seconds'] if r['compile_seconds'] is not None else '-':>9} "
      f"{sps['n']:2d}{mark}"
    )
  lines.append("")
  fmt = lambda s: f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"
  for key in (
    "framework_vs_floor",
    "framework_1dev_vs_floor",
    "framework_vs_torch",
    "floor_vs_torch",
    "framework_pso_vs_none",
    "unrolled_round_vs_step_loop",
    "chunked_round_vs_whole",
    "framework_batch_drawing_vs_slice",
    "one_permutation_per_round_vs_slice",
  ):
    if key in ratios:
      lines.append(f"{key + ' (samples/s)':58} {fmt(ratios[key])}")
  if not torch_name:
    lines.append(TORCH_MISSING)
  lines.append("")
  for k, mem_key, label in (
    ("pso_sync", "pso", "PSO-PS sync alone"),
    ("pmean", "pmean", "lax.pmean of the weights"),
    ("average_sync", "average", "averaging's sync (1 all-reduce)"),
  ):
    s = sync_rows[k]["us_per_call"]
    mem = sync_info[f"memory_per_device_{mem_key}"]
    lines.append(
      f"{label:28} {s['median']:9.1f} us/call [{s['min']:.1f}, {s['max']:.1f}]   peak "
      f"{mem['peak']:>9,} B/device (arg {mem['argument']:,} out {mem['output']:,} "
      f"alias {mem['alias']:,} temp {mem['temp']:,})"
    )
  g = sync_rows["gather_fitness"]["us_per_call"]
  lines.append(
    f"{'all-gather of the N fitnesses alone':28} {g['median']:9.1f} us/call "
    f"[{g['min']:.1f}, {g['max']:.1f}]   (the PSO sync = this + one all-reduce + "
    "elementwise work)"
  )
  t = sync_rows["gather_then_masked_psum"]["us_per_call"]
  floor_ratio = common.spread(
    [a / b for a, b in zip(per_call["gather_then_masked_psum"], per_call["pmean"])]
  )
  ratios["pso_collectives_only_vs_pmean"] = floor_ratio
  lines.append(
    f"{'the 2 collectives alone':28} {t['median']:9.1f} us/call [{t['min']:.1f}, "
    f"{t['max']:.1f}]   (all-gather of fitnesses + masked psum; vs pmean "
    f"{fmt(floor_ratio)})"
  )
  lines.append(f"{'pso_sync_vs_pmean (time)':58} {fmt(ratios['pso_sync_vs_pmean'])}")
  lines.append(f"{'peak_bytes_pso_sync_vs_pmean (memory_analysis)':58} {peak_ratio}")
  lines.append(f"{'pso_sync_vs_average_sync (time)':58} {fmt(ratios['pso_sync_vs_average_sync'])}")
  lines.append(
    f"PSO-PS sync alone = {100 * sync_share:.1f}% of the median round; "
    f"params {sync_info['param_bytes_per_particle']:,} B per particle"
  )
  print("\n".join(lines), flush=True)

  config = {
    "model": args.model,
    "particles": n,
    "devices": args.devices,
    "period": period,
    "batch_size": batch,
    "shard_size": shard_size,
    "fitness": args.fitness,
    "reps": args.reps,
    "quick": args.quick,
    "max_unroll": args.max_unroll,
  }
  summary = {
    "framework_vs_floor": ratios["framework_vs_floor"]["median"],
    "framework_vs_torch": ratios["framework_vs_torch"]["median"] if torch_name else None,
    "pso_sync_vs_pmean": ratios["pso_sync_vs_pmean"]["median"],
    "peak_bytes_pso_sync_vs_pmean": peak_ratio,
    "pso_sync_vs_average_sync": ratios["pso_sync_vs_average_sync"]["median"],
    "config": config,
    "machine": common.machine(),
  }
  result = {
    "command": common.command_line(),
    **summary,
    "floor_variant": floor_name,
    "torch_variant": torch_name,
    "rows": rows,
    "ratios": ratios,
    "sync": sync_rows,
    "sync_info": sync_info,
    "sync_share_of_round": round(sync_share, 4),
    "torch_info": torch_info,
    "proposed_batch_drawing_equals_framework": same_batches,
    "timed_in_3_reps_only": list(slow),
    "loadavg_before_after": [loadavg_before, loadavg_after],
    "table": lines,
  }
  out = args.out or os.path.join(RESULTS, f"throughput_{args.model}.json")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {os.path.relpath(out)}")
  print(json.dumps(summary))


def scaling_mode(args):
  import jax
  import numpy as np
  import optax

  from psops_jax import models

  period, batch, n = args.period, args.batch_size, args.particles
  shape = common.INPUT_SHAPES[args.model]
  mean, std = (0.5,) * shape[-1], (0.25,) * shape[-1]
  device_counts = [d for d in (1, 2, 4, 8) if d <= len(jax.devices())]
  loadavg_before = os.getloadavg()
  print(
    f"scaling: model {args.model}, period {period}, batch {batch}, shard = {args.train_size} "
    f"// particles, {args.reps} repetitions; {os.cpu_count()} cores, load average "
    f"{loadavg_before[0]:.2f}",
    flush=True,
  )
  cells = [(d, d) for d in device_counts] + [
    (n, d) for d in device_counts if d != n and d <= n and n % d == 0
  ]
  runners, info = {}, {}
  for particles, devices in cells:
    name = f"{particles}on{devices}"
    run, built = common.build_round(
      args.model,
      particles,
      devices,
      period,
      batch,
      "pso",
      args.train_size // particles,
      fitness=args.fitness,
      max_unroll=args.max_unroll,
    )
    runners[name] = functools.partial(lambda r, run: run(r + 2), run=run)
    info[name] = {"particles": particles, "devices": devices, **built}
    print(
      f"  compiled {particles} particles on {devices} devices: {built['compile_seconds']} s",
      flush=True,
    )
  rng = np.random.RandomState(1)
  shard = args.train_size // n
  images = rng.randint(0, 256, (shard,) + shape).astype(np.uint8)
  labels = rng.randint(0, 10, (shard,)).astype(np.int32)
  floor, _, _ = build_floor(
    models.create(args.model),
    optax.sgd(0.01, momentum=0.9),
    images,
    labels,
    period,
    batch,
    mean,
    std,
    jax.devices()[0],
  )
  runners["floor"] = lambda r: floor["unrolled/slice"]((r % 3) * period)
  for fn in runners.values():
    fn(-2), fn(-1)
  timed = measure(runners, args.reps)

  rows = []
  floor_sps = [samples(1, period, batch) / s for s in timed["floor"]["seconds"]]
  for name, t in timed.items():
    if name == "floor":
      continue
    p, d = info[name]["particles"], info[name]["devices"]
    sps = [samples(p, period, batch) / s for s in t["seconds"]]
    rows.append(
      {
        "particles": p,
        "devices": d,
        "particles_per_device": p // d,
        "samples_per_second": common.spread(sps),
        "ms_per_particle_step": common.spread([1000 * s / (p * period) for s in t["seconds"]]),
        "vs_floor": common.spread([a / b for a, b in zip(sps, floor_sps)]),
        "cpu_over_wall": round(statistics.median(t["cpu_over_wall"]), 2),
        "compile_seconds": info[name]["compile_seconds"],
      }
    )
  rows.sort(key=lambda r: (r["particles"] != r["devices"], r["devices"]))
  floor_row = {
    "samples_per_second": common.spread(floor_sps),
    "ms_per_particle_step": common.spread([1000 * s / period for s in timed["floor"]["seconds"]]),
    "cpu_over_wall": round(statistics.median(timed["floor"]["cpu_over_wall"]), 2),
  }
  lines = [
    f"{'particles':>9} {'devices':>7} {'per dev':>7} {'samples/s':>10} {'[min, max]':>17} "
    f"{'ms/particle-step':>16} {'vs floor':>8} {'cores':>5} {'compile s':>9}"
  ]
  for r in rows:
    s = r["samples_per_second"]
    lines.append(
      f"{r['particles']:9d} {r['devices']:7d} {r['particles_per_device']:7d} "
      f"{s['median']:10.0f} [{s['min']:7.0f}, {s['max']:7.0f}] "
      f"{r['ms_per_particle_step']['median']:16.3f} {r['vs_floor']['median']:8.2f} "
      f"{r['cpu_over_wall']:5.2f} {r['compile_seconds']:9.2f}"
    )
  s = floor_row["samples_per_second"]
  lines.append(
    f"{'floor: 1 particle, 1 device, plain JAX':41} {s['median']:10.0f} "
    f"[{s['min']:7.0f}, {s['max']:7.0f}] {floor_row['ms_per_particle_step']['median']:16.3f}"
    f" {1.0:8.2f} {floor_row['cpu_over_wall']:5.2f}"
  )
  print("\n".join(lines), flush=True)

  out = args.out or os.path.join(RESULTS, "throughput_scaling.json")
  png = os.path.splitext(out)[0] + ".png"
  plot_scaling(rows, floor_row, args, png)
  config = {
    "model": args.model,
    "particles": n,
    "period": period,
    "batch_size": batch,
    "train_size": args.train_size,
    "fitness": args.fitness,
    "reps": args.reps,
    "quick": args.quick,
    "max_unroll": args.max_unroll,
  }
  summary = {
    "scaling_samples_per_second": {
      f"{r['particles']}on{r['devices']}": r["samples_per_second"]["median"] for r in rows
    },
    "floor_samples_per_second": floor_row["samples_per_second"]["median"],
    "config": config,
    "machine": common.machine(),
  }
  result = {
    "command": common.command_line(),
    **summary,
    "rows": rows,
    "floor": floor_row,
    "plot": os.path.relpath(png),
    "loadavg_before_after": [loadavg_before, os.getloadavg()],
    "table": lines,
  }
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {os.path.relpath(out)} and {os.path.relpath(png)}")
  print(json.dumps(summary))


def plot_scaling(rows, floor_row, args, png):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.5))
  by_devices = lambda rs: sorted(rs, key=lambda r: r["devices"])
  series = {
    "one particle per device (N = devices)": by_devices(
      [r for r in rows if r["particles"] == r["devices"]]
    ),
    f"{args.particles} particles on the devices": by_devices(
      [r for r in rows if r["particles"] == args.particles]
    ),
  }
  for (label, rs), marker in zip(series.items(), ("o", "s")):
    xs = [r["devices"] for r in rs]
    med = [r["samples_per_second"]["median"] for r in rs]
    err = [
      [m - r["samples_per_second"]["min"] for m, r in zip(med, rs)],
      [r["samples_per_second"]["max"] - m for m, r in zip(med, rs)],
    ]
    ax.errorbar(xs, med, yerr=err, marker=marker, capsize=3, label=label)
    ax2.plot(xs, [r["cpu_over_wall"] for r in rs], marker=marker, label=label)
    ax3.plot(xs, [r["compile_seconds"] for r in rs], marker=marker, label=label)
  floor = floor_row["samples_per_second"]["median"]
  ax.axhline(floor, color="gray", ls="--", label="floor: 1 particle, plain JAX, 1 device")
  ax.axhline(2 * floor, color="gray", ls=":", label="2 x floor (both cores, perfectly used)")
  ax2.axhline(floor_row["cpu_over_wall"], color="gray", ls="--", label="floor")
  ax2.axhline(os.cpu_count(), color="black", lw=0.8, label=f"{os.cpu_count()} cores")
  for a in (ax, ax2, ax3):
    a.set_xscale("log", base=2)
    a.set_xticks([1, 2, 4, 8])
    a.set_xticklabels(["1", "2", "4", "8"])
    a.set_xlabel("virtual CPU devices (all share the machine's cores)")
    a.grid(alpha=0.3)
  ax.set_ylim(bottom=0)
  ax.set_ylabel("samples / s (median, bars: min-max)")
  ax.set_title(
    f"{args.model}: framework round (PSO-PS), period {args.period}, batch {args.batch_size}",
    fontsize=10,
  )
  ax.legend(fontsize=8, loc="lower right")
  ax2.set_ylabel("process CPU s / wall s (median)")
  ax2.set_ylim(0, os.cpu_count() + 0.5)
  ax2.set_title("cores kept busy during the round", fontsize=10)
  ax2.legend(fontsize=8, loc="lower right")
  ax3.set_ylabel("compile seconds")
  ax3.set_ylim(bottom=0)
  ax3.set_title("compile time of the round", fontsize=10)
  ax3.legend(fontsize=8)
  load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
  fig.suptitle(
    f"{os.cpu_count()} CPU cores shared by all virtual devices; {args.reps} interleaved "
    f"repetitions; load average at the end {load} (other processes on the machine)",
    fontsize=9,
  )
  fig.tight_layout()
  fig.savefig(png, dpi=110)


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--model", default="small_cnn", choices=["small_cnn", "lenet5"])
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--period", type=int, default=8, help="local steps per round (default 8)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--devices", type=int, default=0, help="mesh size (default: --particles)")
  parser.add_argument(
    "--train-size",
    type=int,
    default=0,
    help="examples of the whole training set; shard = this // particles "
    "(default: digits 1438 for small_cnn, 60000 for lenet5)",
  )
  parser.add_argument("--fitness", default="round_loss", choices=["round_loss", "probe"])
  parser.add_argument(
    "--max-unroll",
    type=int,
    default=None,
    help="the round in calls of at most this many unrolled steps (default: "
    "train.max_unroll of configs/digits_pso.py; 0: one call)",
  )
  parser.add_argument(
    "--reps", type=int, default=0, help="interleaved repetitions (default 21, --quick 7)"
  )
  parser.add_argument(
    "--quick",
    action="store_true",
    help="fewer repetitions, no no-sync round, no proposed-change variant",
  )
  parser.add_argument(
    "--scaling",
    action="store_true",
    help="framework round over 1, 2, 4, 8 devices: N = devices, and --particles "
    "on each device count",
  )
  parser.add_argument("--out", default="", help="JSON path (the PNG of --scaling beside it)")
  args = parser.parse_args()
  args.devices = args.devices or args.particles
  if args.max_unroll is None:
    from configs import digits_pso

    args.max_unroll = digits_pso.get_config().train.max_unroll
  args.train_size = args.train_size or common.TRAIN_SIZES[args.model]
  args.reps = args.reps or (7 if args.quick else 21)
  args.sync_reps = 15 if args.quick else 41
  common.force_host_devices(8 if args.scaling else args.devices)
  if args.scaling:
    scaling_mode(args)
  else:
    main_mode(args)


if __name__ == "__main__":
  main()
