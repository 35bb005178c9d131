"""Tables and plots over the robustness scenarios of configs/study_robustness.py.

Each scenario is its own study directory (studies/results/robustness_<scenario>/, written by
`studies/study.py --grid <scenario>`); this reads their results.csv and writes, for each period:

  robustness_p<period>.md    strategy x scenario: final test accuracy, mean +- std over the seeds
  that
                             finished, and how many runs diverged (every particle NaN: reported, not
                             hidden); each strategy's gap in points to `average` and to the robust
                             median, paired by seed; and the cost: bytes sent per worker, and
                             training seconds relative to `average` (median over the scenario x seed
                             pairs)
  robustness_p<period>.png   the accuracies as grouped bars (error bars: std over seeds; an x where
  every
                             run of the cell diverged)
  robustness_p<period>.json  the numbers

and with several periods, robustness_periods.md (PSO-PS's gap to both references, scenario x period)
and robustness_periods.png (one panel per scenario: each strategy's accuracy against the period).

  python studies/robustness_report.py --periods 4 16 64
"""

import argparse
import csv
import json
import os
import statistics

from configs import study_robustness
from studies import study  # paired_gap

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SCENARIOS = (*study_robustness.SCENARIOS, "lr_edge", "lr_2x")  # the study's grids
STRATEGIES = tuple(study_robustness.STRATEGIES)  # the study config's variants, in its order
REFERENCES = ("average", "robust_median")


def read_rows(results: str, scenario: str, period: int) -> list[dict]:
  path = os.path.join(results, f"robustness_{scenario}", "results.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [r for r in csv.DictReader(f) if int(r["period"]) == period]


def cell_stats(rows: list[dict]) -> dict:
  """Accuracy and training seconds per seed of the finished runs, and the seeds that diverged."""
  finished = [r for r in rows if r["diverged"] == "False"]
  accuracy = {int(r["seed"]): float(r["final_test_accuracy"]) for r in finished}
  values = list(accuracy.values())
  return {
    "accuracy_by_seed": accuracy,
    "seconds_by_seed": {int(r["seed"]): float(r["train_seconds"]) for r in finished},
    "bytes_per_worker": sorted({int(r["communicated_bytes_per_particle"]) for r in finished}),
    "diverged_seeds": sorted(int(r["seed"]) for r in rows if r["diverged"] == "True"),
    "mean": statistics.mean(values) if values else None,
    "std": statistics.stdev(values) if len(values) > 1 else None,
  }


def describe(stats: dict) -> str:
  n = len(stats["accuracy_by_seed"]) + len(stats["diverged_seeds"])
  if n == 0:
    return "not run"
  if stats["mean"] is None:
    return f"diverged ({n}/{n})"
  text = f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] is not None else "")
  extra = f"; {len(stats['diverged_seeds'])} diverged" if stats["diverged_seeds"] else ""
  return f"{text} (n={n}{extra})"


def gap(stats: dict, reference: dict) -> str:
  """Mean +- std over seeds of 100 (strategy - reference), on the seeds where both finished; with no
  such seed, which of the two diverged."""
  common = sorted(set(stats["accuracy_by_seed"]) & set(reference["accuracy_by_seed"]))
  if not common:
    if stats["diverged_seeds"] and reference["diverged_seeds"]:
      return "both diverged"
    if stats["diverged_seeds"] and reference["accuracy_by_seed"]:
      return "diverged"
    return (
      "reference diverged" if stats["accuracy_by_seed"] and reference["diverged_seeds"] else "-"
    )
  return study.paired_gap(stats["accuracy_by_seed"], reference["accuracy_by_seed"])


def seconds_ratio(cells: list[dict], reference_cells: list[dict]) -> float | None:
  """Median over (scenario, seed) pairs where both runs finished of seconds / reference seconds."""
  ratios = [
    cell["seconds_by_seed"][s] / ref["seconds_by_seed"][s]
    for cell, ref in zip(cells, reference_cells)
    for s in set(cell["seconds_by_seed"]) & set(ref["seconds_by_seed"])
  ]
  return statistics.median(ratios) if ratios else None


def table_lines(header: str, rows: dict) -> list[str]:
  """A markdown table: `rows` maps a row label to its cells, in `header`'s order."""
  columns = header.split(" | ")
  return ["| " + header + " |", "| --- |" + " --- |" * (len(columns) - 1)] + [
    f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()
  ]


def period_report(table: dict, scenarios: list, period: int) -> list[str]:
  header = "strategy | " + " | ".join(scenarios)
  lines = [
    f"Final test accuracy, period {period}, mean ± std over seeds (n = runs; diverged = "
    "every particle NaN/inf, the run stopped)",
    "",
  ]
  lines += table_lines(
    header, {st: [describe(table[st][s]) for s in scenarios] for st in STRATEGIES}
  )
  for ref in REFERENCES:
    lines += [
      "",
      f"Gap to `{ref}` in points (strategy - {ref}, x 100, paired by seed over the seeds where "
      "both finished, n = those seeds): the mean and its 95% interval, * where it excludes zero:",
      "",
    ]
    lines += table_lines(
      header,
      {st: [gap(table[st][s], table[ref][s]) for s in scenarios] for st in STRATEGIES if st != ref},
    )
  lines += [
    "",
    "Cost: bytes each worker sends per run, and training seconds relative to `average` "
    "(median over the scenario x seed pairs where both finished; the runs shared the machine, "
    "so the seconds are rough):",
    "",
  ]
  cost = {}
  for st in STRATEGIES:
    sent = sorted({b for s in scenarios for b in table[st][s]["bytes_per_worker"]})
    ratio = seconds_ratio(
      [table[st][s] for s in scenarios], [table["average"][s] for s in scenarios]
    )
    cost[st] = [
      " / ".join(f"{b / 1e6:.1f} MB" for b in sent) or "-",
      f"{ratio:.2f}x" if ratio is not None else "-",
    ]
  lines += table_lines("strategy | sent per worker | seconds vs average", cost)
  return lines


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


def plot_periods(tables: dict, png: str) -> None:
  """One panel per scenario: each strategy's final accuracy against the period, mean +- std over the
  seeds that finished; an x at the bottom where every run of the cell diverged."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D

  periods = sorted(tables)
  scenarios = [s for s in SCENARIOS if any(s in tables[p][0] for p in periods)]
  columns = min(4, len(scenarios))
  rows = -(-len(scenarios) // columns)
  fig, axes = plt.subplots(
    rows, columns, figsize=(3.4 * columns, 3.0 * rows + 0.6), squeeze=False, sharey=True
  )
  for ax, scenario in zip(axes.flat, scenarios):
    for k, strategy in enumerate(STRATEGIES):
      dodge = 2 ** (0.05 * (k - (len(STRATEGIES) - 1) / 2))  # side by side around each period
      cells = [
        (p * dodge, tables[p][1][strategy][scenario]) for p in periods if scenario in tables[p][0]
      ]
      done = [(p, c) for p, c in cells if c["mean"] is not None]
      if done:
        ax.errorbar(
          [p for p, _ in done],
          [c["mean"] for _, c in done],
          yerr=[c["std"] or 0.0 for _, c in done],
          color=f"C{k}",
          marker="o",
          markersize=3,
          capsize=2,
          linewidth=1,
        )
      dead = [p for p, c in cells if c["mean"] is None and c["diverged_seeds"]]
      ax.plot(dead, [0.03] * len(dead), "x", color=f"C{k}", markersize=6, mew=2)
    ax.set_title(scenario, fontsize=10)
    ax.set_xscale("log", base=2)
    ax.set_xticks(periods, [str(p) for p in periods])
    ax.set_ylim(0.0, 1.0)
    ax.grid(alpha=0.3)
  for ax in axes.flat[len(scenarios) :]:
    ax.set_visible(False)
  for ax in axes[:, 0]:
    ax.set_ylabel("final test accuracy")
  for ax in axes[-1]:
    ax.set_xlabel("sync period")
  handles = [
    Line2D([], [], color=f"C{k}", marker="o", markersize=3, label=st)
    for k, st in enumerate(STRATEGIES)
  ]
  fig.legend(handles=handles, ncol=len(STRATEGIES), fontsize=8, loc="lower center")
  fig.suptitle(
    "Fashion-MNIST, LeNet-5, 8 workers: accuracy against the sync period "
    "(mean ± std over seeds; x = every run diverged)",
    fontsize=10,
  )
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.savefig(png, dpi=110)
  plt.close(fig)


def period_table(results: str, period: int) -> tuple[list, dict]:
  """The scenarios that have runs at `period`, and strategy -> scenario -> cell_stats."""
  rows = {s: read_rows(results, s, period) for s in SCENARIOS}
  scenarios = [s for s in SCENARIOS if rows[s]]
  return scenarios, {
    st: {s: cell_stats([r for r in rows[s] if r["variant"] == st]) for s in scenarios}
    for st in STRATEGIES
  }


def periods_summary(tables: dict) -> list[str]:
  """PSO-PS's gap to each reference, one row per scenario, one column pair per period."""
  periods = sorted(tables)
  header = "scenario | " + " | ".join(f"p{p}: pso - {ref}" for p in periods for ref in REFERENCES)
  rows = {
    s: [
      gap(tables[p][1]["pso"][s], tables[p][1][ref][s]) if s in tables[p][0] else "not run"
      for p in periods
      for ref in REFERENCES
    ]
    for s in SCENARIOS
    if any(s in tables[p][0] for p in periods)
  }
  return [
    "PSO-PS's gap in points to `average` and to `robust_median`, per period (mean ± std over "
    "the seeds where both finished; n = those seeds)",
    "",
  ] + table_lines(header, rows)


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--periods", type=int, nargs="+", default=[16])
  parser.add_argument("--results", default=RESULTS, help="directory holding robustness_<scenario>/")
  args = parser.parse_args()
  tables = {}
  for period in args.periods:
    scenarios, table = period_table(args.results, period)
    if not scenarios:
      raise SystemExit(f"no robustness results at period {period} in {args.results}")
    tables[period] = (scenarios, table)
    lines = period_report(table, scenarios, period)
    stem = os.path.join(args.results, f"robustness_p{period}")
    with open(stem + ".md", "w") as f:
      f.write("\n".join(lines) + "\n")
    with open(stem + ".json", "w") as f:
      json.dump({"period": period, "scenarios": scenarios, "table": table}, f, indent=2)
    plot(table, scenarios, period, stem + ".png")
    print("\n".join(lines) + f"\nwrote {stem}.md, .json, .png\n")
  if len(tables) > 1:
    lines = periods_summary(tables)
    path = os.path.join(args.results, "robustness_periods.md")
    with open(path, "w") as f:
      f.write("\n".join(lines) + "\n")
    plot_periods(tables, os.path.join(args.results, "robustness_periods.png"))
    print("\n".join(lines) + f"\nwrote {path} and robustness_periods.png")


if __name__ == "__main__":
  main()
