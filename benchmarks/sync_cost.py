"""What the PSO-PS sync costs against an all-reduce of the same weights: time per call and peak
memory per device, and its share of the round.

For one model and N particles on --devices devices (default N), each sync laid out as in the round
(shard_map over the particle mesh, vmap over a device's particles, collectives over both):

  pso_sync                 the PSO-PS sync alone (`psops_jax.sync`, built from
                           configs/digits_pso.py's `sync` section)
  pmean                    `lax.pmean` of the same weights: one all-reduce per leaf
  average_sync             averaging's own sync (`sync.pmean_floats`: the leaves raveled into one
                           all-reduce, as every strategy's collectives are)
  gather_fitness           the PSO sync's one collective more: the all-gather of the N fitnesses
  gather_then_masked_psum  the PSO sync's two collectives with nothing else (its structural floor)
  round                    the project's whole round (PSO-PS, period --period), for the sync's share

Time: each sample is a block of calls (enough for about 20 ms of pmean), one call after another,
each waited for, buffers donated; the blocks run in interleaved repetitions (a new random order
each time; 15 with --quick, 41 without), ratios paired repetition by repetition. Memory: peak bytes
per device from `compiled.memory_analysis()` (arguments + outputs - aliased + temporaries; on
XLA:CPU `device.memory_stats()` returns None, recorded as such).

  python benchmarks/sync_cost.py --quick --model small_cnn --particles 8
  python benchmarks/sync_cost.py --model lenet5 --particles 8

Writes benchmarks/results/sync_cost_<model>.json (--out) with the command, machine and load. The
last printed line is one JSON object (pso_sync_vs_pmean, peak_bytes_pso_sync_vs_pmean,
pso_sync_vs_average_sync, config, machine).
"""

import os

from benchmarks import common, harness

# name -> (label, memory_analysis key or None)
SYNCS = {
  "pso_sync": ("PSO-PS sync alone", "pso"),
  "pmean": ("lax.pmean of the weights", "pmean"),
  "average_sync": ("averaging's sync (1 all-reduce)", "average"),
  "gather_fitness": ("all-gather of the N fitnesses", None),
  "gather_then_masked_psum": ("the 2 collectives alone", None),
}
# name -> (numerator, denominator) of the paired time ratios.
RATIOS = {
  "pso_sync_vs_pmean": ("pso_sync", "pmean"),
  "pso_sync_vs_average_sync": ("pso_sync", "average_sync"),
  "pso_collectives_only_vs_pmean": ("gather_then_masked_psum", "pmean"),
}


def peak_memory(compiled) -> dict:
  """Bytes per device of a compiled program (memory_analysis); peak = argument + output - alias +
  temp."""
  m = compiled.memory_analysis()
  fields = {
    k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")
  }
  fields["peak"] = fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
  return fields


def build_syncs(model_name: str, particles: int, devices: int) -> tuple:
  """The syncs of SYNCS on the model's stacked params, compiled. Returns ({name: one call, waited
  for}, info with the memory of each weight-sized program)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  from configs import digits_pso
  from psops_jax import models
  from psops_jax import swarm as swarm_lib
  from psops_jax import sync as sync_lib

  AXIS, LOCAL, AXES = swarm_lib.AXIS, swarm_lib.LOCAL, swarm_lib.AXES
  mesh, model = swarm_lib.make_mesh(particles, devices), models.create(model_name)
  sync_config = digits_pso.get_config().sync
  strategy = sync_lib.from_config(sync_config, axis_name=AXES)
  shape = common.INPUT_SHAPES[model_name]
  x = swarm_lib.normalize(jnp.zeros((1,) + shape, jnp.uint8), *common.normalization(shape[-1]))
  sharded = NamedSharding(mesh, P(AXIS))

  def build_state():
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(particles))
    params = jax.vmap(lambda k: model.init(k, x)["params"])(keys)
    fitness = jax.random.uniform(jax.random.key(1), (particles,))
    return params, jax.vmap(strategy.init)(params), fitness

  params, sync_state, fitness = jax.jit(build_state, out_shardings=sharded)()
  key = jax.random.key(2)

  def on_mesh(per_particle, in_specs, out_specs, donate):
    """jit(shard_map(vmap(per_particle))) as the round lays out its collectives."""
    body = jax.vmap(per_particle, axis_name=LOCAL, in_axes=in_specs[1])
    mapped = jax.shard_map(
      body, mesh=mesh, in_specs=in_specs[0], out_specs=out_specs, check_vma=False
    )
    return jax.jit(mapped, donate_argnums=donate)

  def collectives_only(
    p, f
  ):  # the fitness all-gather, then a psum of the weights masked to the winner
    mine = sync_lib.particle_index(AXES) == jnp.argmin(sync_lib.all_gather_scalar(f, AXES))
    return sync_lib.masked_fetch(p, mine, AXES)

  one = (P(AXIS), 0)
  compiled = {
    "pso_sync": on_mesh(
      strategy.sync, ((P(AXIS), P(AXIS), P(AXIS), P()), (0, 0, 0, None)), (P(AXIS), P(AXIS)), (0, 1)
    ).lower(params, sync_state, fitness, key),
    "pmean": on_mesh(lambda p: jax.lax.pmean(p, AXES), one, P(AXIS), 0).lower(params),
    "average_sync": on_mesh(lambda p: sync_lib.pmean_floats(p, AXES), one, P(AXIS), 0).lower(
      params
    ),
    "gather_fitness": on_mesh(
      lambda f: sync_lib.all_gather_scalar(f, AXES), one, P(AXIS), ()
    ).lower(fitness),
    "gather_then_masked_psum": on_mesh(
      collectives_only, ((P(AXIS), P(AXIS)), (0, 0)), P(AXIS), 0
    ).lower(params, fitness),
  }
  compiled = {name: lowered.compile() for name, lowered in compiled.items()}
  copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=sharded)
  state = {"pso": (params, sync_state)}

  # Each call waits for the previous one: several of these collective programs queued without
  # waiting intermittently deadlocked XLA:CPU's rendezvous (abort after 40 s) with 2 devices on 2
  # cores.
  def run_pso():
    state["pso"] = jax.block_until_ready(compiled["pso_sync"](*state["pso"], fitness, key))

  def carried(name, *extra):
    """Calls the program on its own copy of the weights, donated from call to call."""
    held = [copy(params)]

    def run():
      held[0] = jax.block_until_ready(compiled[name](held[0], *extra))

    return run

  calls = {
    "pso_sync": run_pso,
    "pmean": carried("pmean"),
    "average_sync": carried("average_sync"),
    "gather_fitness": lambda: jax.block_until_ready(compiled["gather_fitness"](fitness)),
    "gather_then_masked_psum": carried("gather_then_masked_psum", fitness),
  }
  info = {
    "strategy": "pso",
    "sync_config": sync_config.pso.to_dict(),
    "param_bytes_per_particle": sync_lib.tree_bytes(jax.tree.map(lambda a: a[0], params)),
    **{f"memory_per_device_{m}": peak_memory(compiled[k]) for k, (_, m) in SYNCS.items() if m},
    "memory_source": "compiled.memory_analysis(), per device (the SPMD program's buffers); "
    "peak = argument + output - alias + temp",
    "device_memory_stats": jax.devices()[0].memory_stats(),
  }
  return calls, info


def table(sync_rows: dict, ratios: dict, info: dict, share: float) -> list:
  """The printed report: time and memory of each sync, the ratios, the sync's share of the round."""
  fmt = lambda s, digits=1: (
    f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
  )
  lines = []
  for name, (label, mem_key) in SYNCS.items():
    line = f"{label:32} {fmt(sync_rows[name]['us_per_call']):>26} us/call"
    if mem_key:
      m = info[f"memory_per_device_{mem_key}"]
      line += (
        f"   peak {m['peak']:>9,} B/device (arg {m['argument']:,} out {m['output']:,} "
        f"alias {m['alias']:,} temp {m['temp']:,})"
      )
    lines.append(line)
  lines.append("")
  for key, s in ratios.items():
    lines.append(f"{key + ' (time)':58} {fmt(s, 3)}")
  lines.append(f"{'peak_bytes_pso_sync_vs_pmean (memory_analysis)':58} {peak_ratio(info):.2f}")
  lines.append(
    f"PSO-PS sync alone = {100 * share:.1f}% of the median round; "
    f"params {info['param_bytes_per_particle']:,} B per particle"
  )
  return lines


def peak_ratio(info: dict) -> float:
  """Peak bytes per device of the PSO-PS sync over lax.pmean's."""
  peak = lambda k: info[f"memory_per_device_{k}"]["peak"]
  return round(peak("pso") / peak("pmean"), 2)


def main():
  args = common.start(common.round_parser(__doc__, reps=(41, 15)), "sync cost")
  calls, info = build_syncs(args.model, args.particles, args.devices)
  info["calls_per_sample"] = harness.calls_for(calls["pmean"], 0.02, at_least=10)
  runners = {name: harness.repeat(call, info["calls_per_sample"]) for name, call in calls.items()}
  runners["round"], _ = common.build_round(
    args.model,
    args.particles,
    args.devices,
    args.period,
    args.batch_size,
    "pso",
    args.train_size // args.particles,
    fitness=args.fitness,
    max_unroll=args.max_unroll,
  )
  timed = harness.measure(runners, args.reps, warmup=1, seed=1)
  us = {name: [1e6 * s for s in t["seconds"]] for name, t in timed.items()}
  sync_rows = {
    name: {"us_per_call": harness.spread(us[name]), "cpu_over_wall": timed[name]["cpu_over_wall"]}
    for name in SYNCS
  }
  ratios = {key: harness.paired_ratio(us[a], us[b]) for key, (a, b) in RATIOS.items()}
  round_ms = timed["round"]["wall"]["median"] * 1000
  share = sync_rows["pso_sync"]["us_per_call"]["median"] / 1000 / round_ms
  lines = table(sync_rows, ratios, info, share)
  print("\n".join(lines), flush=True)
  summary = {
    "pso_sync_vs_pmean": ratios["pso_sync_vs_pmean"]["median"],
    "peak_bytes_pso_sync_vs_pmean": peak_ratio(info),
    "pso_sync_vs_average_sync": ratios["pso_sync_vs_average_sync"]["median"],
    "config": common.round_config(args),
  }
  details = {
    "sync": sync_rows,
    "ratios": ratios,
    "sync_info": info,
    "round_ms": harness.spread([1000 * s for s in timed["round"]["seconds"]]),
    "sync_share_of_round": round(share, 4),
    "table": lines,
  }
  out = args.out or os.path.join(harness.RESULTS, f"sync_cost_{args.model}.json")
  harness.publish(out, summary, details)


if __name__ == "__main__":
  main()
