"""The PSO-based variants of a search study that did best on the validation split.

  python studies/pick_finalists.py studies/results/study_pso_search/results.csv --top 2

Ranks every variant except `average` (or, with --prefix, the variants whose names start with it) by
its mean final figure over the periods searched (the study's metric, `metric_of_columns`: the
accuracy, higher is better, or a language model's bits per byte, lower is better; a run without
one counts as the worst: accuracy 0, bits per byte infinite) and prints the names of the best
`--top` (space-separated), for `study.py --variants`.
"""

import argparse
import collections
import csv
import math
import statistics

from psops_jax import headline


def metric_of_columns(columns) -> headline.Metric:
  """The metric of a results.csv: a language model's where it has the bits per byte column
  (studies/study.py's TASK_KEYS), else the accuracy."""
  lm = headline.METRICS["language_model"]
  return lm if lm.key in columns else headline.METRICS["classification"]


def finalists(rows, top: int, baseline="average", prefix="", metric=None) -> list:
  """The `top` variants by their mean final figure of `metric` (default: metric_of_columns),
  best first (`Metric.better`'s direction)."""
  metric = metric or metric_of_columns(rows[0] if rows else ())
  worst = 0.0 if metric.higher_is_better else math.inf
  scores = collections.defaultdict(list)
  for r in rows:
    if r["variant"] != baseline and r["variant"].startswith(prefix):
      figure = r.get(metric.key)
      scores[r["variant"]].append(float(figure) if figure not in ("", None) else worst)
  mean = {v: statistics.mean(s) for v, s in scores.items()}
  return sorted(scores, key=mean.get, reverse=metric.higher_is_better)[:top]


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
