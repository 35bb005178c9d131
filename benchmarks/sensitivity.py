"""How far a run moves under a change that only reorders float operations: the cells of two
studies paired by (variant, period, particles, seed), e.g. a grid and its re-run with
train.max_unroll 2 instead of 4 (configs/study_outer.py, grid `unroll2`):

  python benchmarks/sensitivity.py benchmarks/results/study_outer \
      benchmarks/results/study_outer_unroll2

Prints, per variant and period: both final accuracies (mean over the paired seeds), the paired
difference (second - first) as mean ± std and its largest magnitude, in points, and how many pairs
came out with bit-identical weights. This is the spread to expect from re-running a cell on other
code or another machine (benchmarks/study.py --check's tolerance).
"""

import argparse
import collections
import json
import os
import statistics


def rows_of(out: str) -> dict:
  """{(variant, period, particles, seed): row} of a study's results.json (finished runs only)."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file (run benchmarks/study.py first)")
  with open(path) as f:
    return {
      (r["variant"], r["period"], r["num_particles"], r["seed"]): r
      for r in json.load(f)
      if not r["diverged"]
    }


def table(first: dict, second: dict) -> str:
  pairs = collections.defaultdict(list)
  for key in sorted(first.keys() & second.keys()):
    pairs[key[:3]].append((first[key], second[key]))
  lines = [
    "| variant | period | n | first | second | second - first (points) | max abs (points) | "
    "bit-identical |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for (variant, period, _), runs in pairs.items():
    a = [r["final_test_accuracy"] for r, _ in runs]
    b = [r["final_test_accuracy"] for _, r in runs]
    gaps = [100 * (y - x) for x, y in zip(a, b)]
    spread = f" ± {statistics.stdev(gaps):.2f}" if len(gaps) > 1 else ""
    same = sum(x.get("params_fingerprint") == y.get("params_fingerprint") for x, y in runs)
    lines.append(
      f"| {variant} | {period} | {len(runs)} | {statistics.mean(a):.4f} | {statistics.mean(b):.4f} "
      f"| {statistics.mean(gaps):+.2f}{spread} | {max(abs(g) for g in gaps):.2f} | "
      f"{same}/{len(runs)} |"
    )
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("first", help="a study's output directory")
  parser.add_argument("second", help="the same cells re-run with a change")
  args = parser.parse_args(argv)
  try:
    first, second = rows_of(args.first), rows_of(args.second)
  except FileNotFoundError as error:
    parser.error(str(error))
  if not first.keys() & second.keys():
    parser.error(f"{args.first} and {args.second} have no cell in common")
  print(table(first, second))


if __name__ == "__main__":
  main()
