"""How far a run moves under a change that only reorders float operations: the cells of two
studies paired by (variant, period, particles, seed), e.g. a grid and its re-run with
train.max_unroll 2 instead of 4 (configs/study_outer.py, grid `unroll2`):

  python studies/sensitivity.py studies/results/study_outer \
      studies/results/study_outer_unroll2

or a study and the re-runs of its cells on another machine (`study.py --check` writes them to
OUT/check, a directory of run directories named as the cells are):

  python studies/sensitivity.py studies/results/study_outer \
      studies/results/study_outer/check

Prints, per variant, period and pair of machines (workdir.machine_kind: "same" where both runs of
every pair ran on one kind of machine): both final figures of the study's metric (mean over the
paired seeds: accuracies, or a language model's bits per byte; psops_jax/headline.py), the paired
difference (second - first) as mean ± std and its largest magnitude (in points of accuracy, x 100,
or in bits per byte: headline.GAPS), and how many pairs came out with bit-identical weights. This
is the spread to expect from re-running a cell on other code or another machine (studies/study.py
--check's tolerance).
"""

import argparse
import collections
import json
import os
import statistics

from psops_jax import headline
from studies import study


def rows_of(out: str) -> dict:
  """{(variant, period, particles, seed): row} of the finished runs of a study's results.json or,
  without one, of the run directories in `out` named as study.py names its cells."""
  path = os.path.join(out, "results.json")
  if os.path.exists(path):
    with open(path) as f:
      rows = [r for r in json.load(f) if not r["diverged"]]
    return {(r["variant"], r["period"], r["num_particles"], r["seed"]): r for r in rows}
  runs = {}
  for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
    cell, summary = study.CELL.fullmatch(name), os.path.join(out, name, "summary.json")
    if cell and os.path.exists(summary):
      with open(summary) as f:
        key = (cell["variant"], int(cell["period"]), int(cell["particles"]), int(cell["seed"]))
        runs[key] = json.load(f)
  if not runs:
    raise FileNotFoundError(
      f"{out}: no results.json (run studies/study.py first) and no finished run directories"
    )
  return runs


def machines(runs: list) -> str:
  """'same' where each pair ran on one kind of machine, else the pairs' 'first -> second' kinds."""
  kinds = {(a.get("machine"), b.get("machine")) for a, b in runs}
  if all(a == b for a, b in kinds):
    return "same"
  return ", ".join(sorted(f"{a} -> {b}" for a, b in kinds))


def table(first: dict, second: dict) -> str:
  """The table of the paired cells (module doc), of the metric of the first study's rows."""
  metric = headline.metric_of(next(iter(first.values()), {}))
  gap = headline.GAPS[metric.key]
  d = gap.digits + 1
  pairs = collections.defaultdict(list)
  for key in sorted(first.keys() & second.keys()):
    pair = (first[key], second[key])
    pairs[(*key[:3], first[key].get("machine") == second[key].get("machine"))].append(pair)
  lines = [
    f"| variant | period | machines | n | first | second | second - first ({gap.unit}) | "
    f"max abs ({gap.unit}) | bit-identical |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for (variant, period, _, _), runs in pairs.items():
    a = [r[metric.key] for r, _ in runs]
    b = [r[metric.key] for _, r in runs]
    gaps = [gap.scale * (y - x) for x, y in zip(a, b)]
    spread = f" ± {statistics.stdev(gaps):.{d}f}" if len(gaps) > 1 else ""
    same = sum(x.get("params_fingerprint") == y.get("params_fingerprint") for x, y in runs)
    lines.append(
      f"| {variant} | {period} | {machines(runs)} | {len(runs)} | {statistics.mean(a):.4f} | "
      f"{statistics.mean(b):.4f} "
      f"| {statistics.mean(gaps):+.{d}f}{spread} | {max(abs(g) for g in gaps):.{d}f} | "
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
