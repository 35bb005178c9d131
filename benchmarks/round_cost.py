"""What a round of each sync strategy costs, side by side, and where PSO-PS's extra time goes.

The robustness study's setting (configs/study_robustness.py): LeNet-5, 8 particles on 8 devices,
batch 256, train.max_unroll 4, Fashion-MNIST-sized shards (random uint8 data: the cost does not
depend on the pixels). For each period (--periods), the project's jitted round
(`common.build_round`) with:

  none              the local steps alone (no sync)
  average           one all-reduce of the weights
  robust_median     an all-gather of the weights and a coordinate-wise median
  pso/round_loss    PSO-PS with the round's own training loss as fitness: no probe batch
  pso/probe<B>      PSO-PS with the probe fitness (a forward pass of B common examples per particle
  per
                    sync), for each B of --probe-sizes; the study's pso runs use 1024
  pso_average/probe<max B>

Every runner is timed --reps times, interleaved in a new random order each repetition
(throughput.measure), so a busy machine slows them alike. Written: median ms per round, and the
ratio to `average` at the same period, in results/round_cost.json (with the command and the
machine).

  python benchmarks/round_cost.py                      # periods 4 and 16, probes 1024 and 256
  python benchmarks/round_cost.py --periods 4 --reps 3
"""

import argparse
import json
import os
import statistics

from benchmarks import common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cases(probe_sizes: list[int]) -> dict:
  """name -> (strategy, fitness, probe size) of the runners of one period."""
  runs = {
    "none": ("none", "round_loss", 1),
    "average": ("average", "round_loss", 1),
    "robust_median": ("robust_average", "round_loss", 1),
    "pso/round_loss": ("pso", "round_loss", 1),
  }
  runs.update({f"pso/probe{b}": ("pso", "probe", b) for b in probe_sizes})
  runs[f"pso_average/probe{max(probe_sizes)}"] = ("pso_average", "probe", max(probe_sizes))
  return runs


def ratios(seconds: dict, periods: list[int], names: list[str]) -> dict:
  """{period: {name: {"ms_per_round": median, "vs_average": median / average's median}}}."""
  table = {}
  for period in periods:
    median = {name: statistics.median(seconds[f"p{period}/{name}"]) for name in names}
    table[period] = {
      name: {"ms_per_round": round(1000 * m, 1), "vs_average": round(m / median["average"], 2)}
      for name, m in median.items()
    }
  return table


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--model", default="lenet5", choices=sorted(common.INPUT_SHAPES))
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--batch-size", type=int, default=256)
  parser.add_argument("--periods", type=int, nargs="+", default=[4, 16])
  parser.add_argument("--probe-sizes", type=int, nargs="+", default=[1024, 256])
  parser.add_argument("--max-unroll", type=int, default=4)
  parser.add_argument("--reps", type=int, default=7)
  parser.add_argument("--out", default=os.path.join(RESULTS, "round_cost.json"))
  args = parser.parse_args()
  for name in ("particles", "batch_size", "max_unroll", "reps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
  if min(args.periods + args.probe_sizes) < 1:
    parser.error("--periods and --probe-sizes must be positive integers")
  common.force_host_devices(args.particles)
  from benchmarks import throughput  # after the XLA flags: no JAX at module level

  shard_size = common.TRAIN_SIZES[args.model] // args.particles
  runs = cases(args.probe_sizes)
  runners = {}
  for period in args.periods:
    for name, (strategy, fitness, probe) in runs.items():
      run, info = common.build_round(
        args.model,
        args.particles,
        args.particles,
        period,
        args.batch_size,
        strategy,
        shard_size,
        fitness=fitness,
        probe_size=probe,
        max_unroll=args.max_unroll,
      )
      run(0)  # warm-up
      runners[f"p{period}/{name}"] = lambda r, run=run: run(r + 1)
      print(f"compiled p{period}/{name} in {info['compile_seconds']} s", flush=True)
  load_before = os.getloadavg()[0]
  timings = throughput.measure(runners, args.reps)
  table = ratios({k: v["seconds"] for k, v in timings.items()}, args.periods, list(runs))
  for period, row in table.items():
    print(
      f"\nperiod {period} ({args.particles} particles, batch {args.batch_size}): "
      "median ms per round, and / average"
    )
    for name, cell in row.items():
      print(f"  {name:<24} {cell['ms_per_round']:>9.1f} ms  {cell['vs_average']:.2f}x")
  result = {
    "command": common.command_line(),
    "machine": common.machine(),
    "load_average_before": round(load_before, 2),
    "load_average_after": round(os.getloadavg()[0], 2),
    "settings": {k: v for k, v in vars(args).items() if k != "out"},
    "shard_size": shard_size,
    "rounds": table,
    "seconds": {k: [round(s, 4) for s in v["seconds"]] for k, v in timings.items()},
  }
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
