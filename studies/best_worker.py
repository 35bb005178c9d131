"""How often each worker was PSO-PS's global best: over the logged rounds of a study's runs of one
variant (runs/<variant>_p*_s*/metrics.jsonl, `global_best_particle`), the number of rounds in which
each worker index held the global best. Under the Byzantine grids the attackers are the last f
workers, so this says whether an attacker ever became the swarm's best.

  python studies/best_worker.py studies/results/byzantine_scale_f1 \
      studies/results/byzantine_none_xeon

prints, per study directory, a line per worker index: the rounds it was the best, of all logged
rounds, and in how many of the runs. The run directories (runs/) are not committed: this reads the
machine's own.
"""

import argparse
import collections
import glob
import json
import os
import sys


def metrics_files(directory: str, variant: str) -> list[str]:
  """The metrics.jsonl of each of `directory`'s runs of `variant`."""
  return sorted(glob.glob(os.path.join(directory, "runs", f"{variant}_p*_s*", "metrics.jsonl")))


def best_counts(directory: str, variant: str = "pso") -> tuple[collections.Counter, dict, int, int]:
  """(rounds each worker was the best, {worker: runs in which it ever was}, logged rounds, workers)
  over `directory`'s runs of `variant` (workers: the most particles a logged round lists)."""
  rounds, runs, total, workers = collections.Counter(), collections.Counter(), 0, 0
  for path in metrics_files(directory, variant):
    seen = set()
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if "global_best_particle" in record:
          total += 1
          workers = max(workers, len(record["train_loss_particles"]))
          rounds[record["global_best_particle"]] += 1
          seen.add(record["global_best_particle"])
    runs.update(seen)
  return rounds, runs, total, workers


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("directories", nargs="+", help="study directories (with runs/)")
  parser.add_argument("--variant", default="pso", help="the PSO variant's name in the study")
  args = parser.parse_args()
  for directory in args.directories:
    rounds, runs, total, workers = best_counts(directory, args.variant)
    if not total:
      print(
        f"{directory}: no runs/{args.variant}_p*_s*/metrics.jsonl with global_best_particle",
        file=sys.stderr,
      )
      sys.exit(2)
    files = len(metrics_files(directory, args.variant))
    print(f"{directory}: {total} logged rounds over {files} runs of {args.variant}")
    for worker in range(workers):
      print(f"  worker {worker}: the best in {rounds[worker]} rounds, in {runs[worker]} runs")


if __name__ == "__main__":
  main()
