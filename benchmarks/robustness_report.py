"""One table and one plot over the robustness scenarios of configs/study_robustness.py (issue 9).

Each scenario is its own study directory (benchmarks/results/robustness_<scenario>/, written by
`benchmarks/study.py --grid <scenario>`); this reads their results.csv and writes, for one period:

  robustness_p<period>.md    strategy x scenario: final test accuracy, mean +- std over the seeds that
                             finished, and how many runs diverged (every particle NaN: reported, not
                             hidden); plus each strategy's gap to `average` in points, paired by seed
  robustness_p<period>.png   the same as grouped bars (error bars: std over seeds; an x where every run of
                             the cell diverged)
  robustness_p<period>.json  the numbers

  python benchmarks/robustness_report.py --period 16
"""

import argparse
import csv
import json
import os
import statistics

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCENARIOS = ("nan", "noise", "lr", "dirichlet_0.1", "dirichlet_1", "dirichlet_100", "lr_edge", "lr_2x")
STRATEGIES = ("pso", "pso_average", "average", "robust_median", "robust_trimmed", "ssgd", "none")


def read_rows(results: str, scenario: str, period: int) -> list[dict]:
  path = os.path.join(results, f"robustness_{scenario}", "results.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in csv.DictReader(f) if int(r["period"]) == period]


def cell_stats(rows: list[dict]) -> dict:
  """Accuracy per seed of the runs that finished, and the seeds whose run diverged."""
  finished = {int(r["seed"]): float(r["final_test_accuracy"]) for r in rows if r["diverged"] == "False"}
  diverged = sorted(int(r["seed"]) for r in rows if r["diverged"] == "True")
  values = list(finished.values())
  return {"accuracy_by_seed": finished, "diverged_seeds": diverged,
          "mean": statistics.mean(values) if values else None,
          "std": statistics.stdev(values) if len(values) > 1 else None}


def describe(stats: dict) -> str:
  n = len(stats["accuracy_by_seed"]) + len(stats["diverged_seeds"])
  if n == 0:
    return "not run"
  if stats["mean"] is None:
    return f"diverged ({n}/{n})"
  text = f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")
  extra = f"; {len(stats['diverged_seeds'])} diverged" if stats["diverged_seeds"] else ""
  return f"{text} (n={n}{extra})"


def gap_to_average(stats: dict, average: dict) -> str:
  """Mean over seeds of (strategy - average), on the seeds where both finished; a diverged average
  counts as a win of whatever finished."""
  common = sorted(set(stats["accuracy_by_seed"]) & set(average["accuracy_by_seed"]))
  if not common:
    if stats["accuracy_by_seed"] and average["diverged_seeds"]:
      return "average diverged"
    return "both diverged" if stats["diverged_seeds"] and average["diverged_seeds"] else "-"
  gaps = [100 * (stats["accuracy_by_seed"][s] - average["accuracy_by_seed"][s]) for s in common]
  spread = f" ± {statistics.stdev(gaps):.1f}" if len(gaps) > 1 else ""
  return f"{statistics.mean(gaps):+.1f}{spread} (n={len(gaps)})"


def plot(table: dict, scenarios: list, period: int, png: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(9, 1.6 * len(scenarios)), 5))
  width = 0.8 / len(STRATEGIES)
  for k, strategy in enumerate(STRATEGIES):
    xs = [i + (k - (len(STRATEGIES) - 1) / 2) * width for i in range(len(scenarios))]
    cells = [table[strategy][s] for s in scenarios]
    means = [c["mean"] if c["mean"] is not None else 0.0 for c in cells]
    errors = [c["std"] or 0.0 for c in cells]
    bars = ax.bar(xs, means, width, yerr=errors, label=strategy, capsize=2)
    for x, c in zip(xs, cells):
      if c["mean"] is None and c["diverged_seeds"]:
        ax.plot(x, 0.12, "x", color=bars.patches[0].get_facecolor(), markersize=7, mew=2)
  ax.set_xticks(range(len(scenarios)))
  ax.set_xticklabels(scenarios)
  ax.set_ylim(0.0, 1.0)
  ax.set_ylabel("final test accuracy")
  ax.set_title(f"Fashion-MNIST, LeNet-5, 8 workers, period {period}: x = every run diverged")
  ax.legend(ncol=len(STRATEGIES), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--period", type=int, default=16)
  parser.add_argument("--results", default=RESULTS, help="directory holding robustness_<scenario>/")
  args = parser.parse_args()
  rows = {s: read_rows(args.results, s, args.period) for s in SCENARIOS}
  scenarios = [s for s in SCENARIOS if rows[s]]
  if not scenarios:
    raise SystemExit(f"no robustness results at period {args.period} in {args.results}")
  table = {strategy: {s: cell_stats([r for r in rows[s] if r["variant"] == strategy])
                      for s in scenarios} for strategy in STRATEGIES}
  lines = [f"Final test accuracy, period {args.period}, mean ± std over seeds (n = runs; diverged = "
           "every particle NaN/inf, the run stopped)", "",
           "| strategy | " + " | ".join(scenarios) + " |", "| --- |" + " --- |" * len(scenarios)]
  lines += [f"| {strategy} | " + " | ".join(describe(table[strategy][s]) for s in scenarios) + " |"
            for strategy in STRATEGIES]
  lines += ["", "Gap to `average` in points (strategy - average, x 100, mean ± std over the seeds where "
            "both finished; n = those seeds):",
            "", "| strategy | " + " | ".join(scenarios) + " |", "| --- |" + " --- |" * len(scenarios)]
  lines += [f"| {strategy} | " + " | ".join(gap_to_average(table[strategy][s], table["average"][s])
                                           for s in scenarios) + " |"
            for strategy in STRATEGIES if strategy != "average"]
  stem = os.path.join(args.results, f"robustness_p{args.period}")
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(stem + ".json", "w") as f:
    json.dump({"period": args.period, "scenarios": scenarios, "table": table}, f, indent=2)
  plot(table, scenarios, args.period, stem + ".png")
  print("\n".join(lines))
  print(f"wrote {stem}.md, .json, .png")


if __name__ == "__main__":
  main()
