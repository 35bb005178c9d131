"""The PSO-based variants of a search study that did best on the validation split.

  python studies/pick_finalists.py studies/results/study_pso_search/results.csv --top 2

Ranks every variant except `average` (or, with --prefix, the variants whose names start with it) by
its mean final accuracy over the periods searched and prints the names of the best `--top`
(space-separated), for `study.py --variants`.
"""

import argparse
import collections
import csv
import statistics


def finalists(rows, top: int, baseline: str = "average", prefix: str = "") -> list:
  scores = collections.defaultdict(list)
  for r in rows:
    if r["variant"] != baseline and r["variant"].startswith(prefix):
      accuracy = r["final_test_accuracy"]
      scores[r["variant"]].append(float(accuracy) if accuracy not in ("", None) else 0.0)
  ranked = sorted(scores, key=lambda v: -statistics.mean(scores[v]))
  return ranked[:top]


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("results_csv")
  parser.add_argument("--top", type=int, default=2)
  parser.add_argument("--prefix", default="", help="only variants whose names start with this")
  args = parser.parse_args()
  with open(args.results_csv) as f:
    print(" ".join(finalists(list(csv.DictReader(f)), args.top, prefix=args.prefix)))


if __name__ == "__main__":
  main()
