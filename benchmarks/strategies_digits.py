"""Every sync strategy at several periods on digits, one command: final test accuracy and bytes.

Each cell is a normal `train_and_evaluate` run of configs/digits_pso.py with `sync.strategy` and
`sync.period` overridden and the same total number of local steps (--steps) for every cell.

  python benchmarks/strategies_digits.py                     # periods 1, 8, 32; 192 steps; seed 0
  python benchmarks/strategies_digits.py --periods 8 --strategies pso average --seeds 0 1 2

Writes benchmarks/results/strategies_digits.json and .md (override with --out, without suffix).
"""

import argparse
import json
import os
import statistics
import tempfile

import common

STRATEGIES = ("pso", "pso_average", "average", "ssgd", "easgd", "diloco", "none")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
  parser.add_argument("--periods", type=int, nargs="+", default=[1, 8, 32])
  parser.add_argument("--steps", type=int, default=192, help="local steps per particle, every cell")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "strategies_digits"))
  args = parser.parse_args()
  common.force_host_devices(args.particles)
  from configs import digits_pso
  from psops_jax import train

  rows = []
  with tempfile.TemporaryDirectory() as workroot:
    for period in args.periods:
      if args.steps % period:
        raise SystemExit(f"--steps={args.steps} is not a multiple of period {period}")
      for strategy in args.strategies:
        for seed in args.seeds:
          config = digits_pso.get_config()
          config.seed, config.num_particles = seed, args.particles
          config.sync.strategy, config.sync.period = strategy, period
          config.train.rounds, config.train.eval_every = args.steps // period, 0
          config.train.log_every = max(1, config.train.rounds // 8)
          print(f"== {strategy} period {period} seed {seed}", flush=True)
          s = train.train_and_evaluate(config, os.path.join(workroot, f"{strategy}_{period}_{seed}"))
          rows.append({k: s[k] for k in ("strategy", "period", "final_test_accuracy",
                                         "test_accuracy_best_particle", "test_accuracy_mean_particle",
                                         "test_accuracy_averaged_weights", "steps",
                                         "communicated_bytes_per_particle", "train_seconds")}
                      | {"seed": seed})

  def cell(strategy, period):
    accs = [r["final_test_accuracy"] for r in rows
            if r["strategy"] == strategy and r["period"] == period]
    if len(accs) == 1:
      return f"{accs[0]:.4f}"
    return f"{statistics.mean(accs):.4f} ± {statistics.stdev(accs):.4f}"

  lines = [f"Final test accuracy (exported model) on digits, {args.particles} particles, "
           f"{args.steps} local steps each, seeds {args.seeds}.", "",
           "| strategy | " + " | ".join(f"period {p}" for p in args.periods) +
           " | MB per particle (period " + str(args.periods[-1]) + ") |",
           "| --- |" + " --- |" * (len(args.periods) + 1)]
  for strategy in args.strategies:
    mb = next(r["communicated_bytes_per_particle"] for r in rows
              if r["strategy"] == strategy and r["period"] == args.periods[-1]) / 1e6
    lines.append(f"| {strategy} | " + " | ".join(cell(strategy, p) for p in args.periods) +
                 f" | {mb:.1f} |")
  table = "\n".join(lines)
  print(table)
  machine = common.machine()
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out + ".json", "w") as f:
    json.dump({"command": "python benchmarks/strategies_digits.py", "args": vars(args), "rows": rows,
               "machine": machine}, f, indent=2)
  with open(args.out + ".md", "w") as f:
    f.write(table + f"\n\nMachine: {machine}\n")


if __name__ == "__main__":
  main()
