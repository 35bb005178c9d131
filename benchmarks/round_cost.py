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
                    per sync), for each B of --probe-sizes; the study's pso runs use 1024
  pso_average/probe<max B>

Every runner is timed --reps times after a warm-up round, interleaved in a new random order each
repetition (harness.measure), so a busy machine slows them alike. Written: median ms per round, and
the ratio to `average` at the same period, in results/round_cost.json (with the command, the machine
and its load).

  python benchmarks/round_cost.py                      # periods 4 and 16, probes 1024 and 256
  python benchmarks/round_cost.py --periods 4 --reps 3
"""

import argparse
import os
import statistics

from benchmarks import common, harness


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


def parse_args() -> argparse.Namespace:
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
  parser.add_argument("--out", default=os.path.join(harness.RESULTS, "round_cost.json"))
  args = parser.parse_args()
  for name in ("particles", "batch_size", "max_unroll", "reps"):
    if getattr(args, name) < 1:
      parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
  if min(args.periods + args.probe_sizes) < 1:
    parser.error("--periods and --probe-sizes must be positive integers")
  return args


def build(args, shard_size: int) -> dict:
  """{"p<period>/<case>": the compiled round} for every period and case."""
  runners = {}
  for period in args.periods:
    for name, (strategy, fitness, probe) in cases(args.probe_sizes).items():
      runners[f"p{period}/{name}"], info = common.build_round(
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
      print(f"compiled p{period}/{name} in {info['compile_seconds']} s", flush=True)
  return runners


def main():
  args = parse_args()
  common.force_host_devices(args.particles)
  shard_size = common.TRAIN_SIZES[args.model] // args.particles
  timings = harness.measure(build(args, shard_size), args.reps, seed=0)
  seconds = {k: v["seconds"] for k, v in timings.items()}
  table = ratios(seconds, args.periods, list(cases(args.probe_sizes)))
  for period, row in table.items():
    print(
      f"\nperiod {period} ({args.particles} particles, batch {args.batch_size}): "
      "median ms per round, and / average"
    )
    for name, cell in row.items():
      print(f"  {name:<24} {cell['ms_per_round']:>9.1f} ms  {cell['vs_average']:.2f}x")
  result = {
    "settings": {k: v for k, v in vars(args).items() if k != "out"},
    "shard_size": shard_size,
    "rounds": table,
    "seconds": {k: [round(s, 4) for s in v] for k, v in seconds.items()},
  }
  harness.write_result(args.out, result)
  print(f"\nwrote {args.out}")


if __name__ == "__main__":
  main()
