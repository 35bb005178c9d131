"""What each attack costs each defence: a defence's final test accuracy under an attack less its
accuracy on clean runs of the same seed on the same kind of machine, over the grids of
configs/study_byzantine.py (each its own study directory, studies/results/byzantine_<grid>/,
written by `studies/study.py --study configs/study_byzantine.py --grid <grid>`).

  python studies/attack_cost.py --clean studies/results/byzantine_none_xeon \\
      studies/results/byzantine_none --out studies/results/byzantine_attack_cost

writes OUT/attack_cost.md, a defence x attack table of the cost in points, 100 (attacked - clean),
paired by (machine, seed) over the runs where both finished, with its 95% interval (* where it
excludes zero) and n = the pairs; "diverged (k/n)" where every attacked run diverged, "; k
diverged" beside a cost where some did; the clean accuracies per machine; and OUT/attack_cost.png
(the costs as grouped bars, an x where every attacked run diverged). Several clean directories
may be given: each attacked run is paired only with a clean run of its own kind of machine, since
XLA:CPU's last bits differ between CPU kinds.
"""

import argparse
import csv
import os
import statistics
import sys

from configs import study_byzantine
from studies import robustness_report, study

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ATTACKS = [s for s in study_byzantine.SCENARIOS if s != "none"]  # the study config's grids
DEFENCES = list(study_byzantine.VARIANTS)


def read_runs(directory: str) -> list[dict]:
  """The rows of a study directory's results.csv ([] where it has none)."""
  path = os.path.join(directory, "results.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return list(csv.DictReader(f))


def finished_figures(runs: list[dict], variant: str) -> dict:
  """{(machine, seed): final test accuracy} of `variant`'s runs that finished."""
  return {
    (r["machine"], int(r["seed"])): float(r["final_test_accuracy"])
    for r in runs
    if r["variant"] == variant and r["diverged"] == "False"
  }


def diverged_of(runs: list[dict], variant: str) -> tuple[int, int]:
  """How many of `variant`'s runs diverged, and how many it has."""
  own = [r for r in runs if r["variant"] == variant]
  return sum(r["diverged"] == "True" for r in own), len(own)


def cost_text(attacked: list[dict], clean: dict, variant: str) -> str:
  """The attack's cost to `variant` (study.paired_gap of attacked over clean, keyed by machine
  and seed), or how many attacked runs diverged."""
  diverged, runs = diverged_of(attacked, variant)
  if not runs:
    return "not run"
  if diverged == runs:
    return f"diverged ({diverged}/{runs})"
  figures = finished_figures(attacked, variant)
  if not figures.keys() & clean.keys():
    return "no clean run of its machine and seed"
  text = study.paired_gap(figures, clean)
  return text + (f"; {diverged} diverged" if diverged else "")


def cost_values(attacked: list[dict], clean: dict, variant: str) -> tuple[float, float] | None:
  """The mean cost in points and the std of the paired differences (the plot's bar and error),
  None where no pair finished."""
  figures = finished_figures(attacked, variant)
  gaps = [100 * (figures[k] - clean[k]) for k in figures.keys() & clean.keys()]
  if not gaps:
    return None
  return statistics.mean(gaps), statistics.stdev(gaps) if len(gaps) > 1 else 0.0


def clean_lines(clean_runs: list[dict]) -> list[str]:
  """Each defence's clean accuracy per machine: mean ± std (n)."""
  machines = sorted({r["machine"] for r in clean_runs})
  rows = {}
  for variant in DEFENCES:
    cells = []
    for machine in machines:
      figures = [v for (m, _), v in finished_figures(clean_runs, variant).items() if m == machine]
      cells.append(f"{study.mean_std(figures)} (n={len(figures)})" if figures else "-")
    rows[variant] = cells
  return robustness_report.table_lines("defence | " + " | ".join(machines), rows)


def report(attacked: dict, clean_runs: list[dict]) -> list[str]:
  """The markdown of attack_cost.md: the cost table, the machines of each attack, the clean
  accuracies."""
  attacks = list(attacked)
  clean = {v: finished_figures(clean_runs, v) for v in DEFENCES}
  lines = [
    "Cost of each attack to each defence in points: 100 (accuracy under the attack - clean "
    "accuracy), paired by machine and seed over the runs where both finished, n = those pairs; "
    "the mean and its 95% interval, * where it excludes zero:",
    "",
  ]
  lines += robustness_report.table_lines(
    "defence | " + " | ".join(attacks),
    {v: [cost_text(attacked[a], clean[v], v) for a in attacks] for v in DEFENCES},
  )
  lines += ["", "The attacked runs' machines:", ""]
  lines += [f"- {a}: {study.machine_line(attacked[a])}" for a in attacks]
  lines += ["", "Clean final test accuracy per machine, mean ± std (n = seeds):", ""]
  return lines + clean_lines(clean_runs)


def plot(attacked: dict, clean_runs: list[dict], png: str) -> None:
  """The costs as bars grouped by defence, one colour per attack; error bars: the std of the
  paired differences; an x where every attacked run diverged."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  attacks = list(attacked)
  fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(DEFENCES)), 5))
  width = 0.8 / len(attacks)
  for k, attack in enumerate(attacks):
    xs = [i + (k - (len(attacks) - 1) / 2) * width for i in range(len(DEFENCES))]
    values = [cost_values(attacked[attack], finished_figures(clean_runs, v), v) for v in DEFENCES]
    means = [v[0] if v else 0.0 for v in values]
    errors = [v[1] if v else 0.0 for v in values]
    bars = ax.bar(xs, means, width, yerr=errors, label=attack, capsize=2)
    for x, variant, value in zip(xs, DEFENCES, values):
      diverged, runs = diverged_of(attacked[attack], variant)
      if runs and diverged == runs:
        ax.plot(x, 0.3, "x", color=bars.patches[0].get_facecolor(), markersize=7, mew=2)
  ax.axhline(0.0, color="black", linewidth=0.8)
  ax.set_xticks(range(len(DEFENCES)))
  ax.set_xticklabels(DEFENCES, rotation=30, ha="right")
  ax.set_ylabel("attacked - clean accuracy (points)")
  ax.set_title("Cost of each attack, 8 workers, period 16: x = every attacked run diverged")
  ax.legend(ncol=len(attacks), fontsize=8, loc="lower left")
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(png, dpi=110)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--clean", nargs="+", required=True, help="study directories of grid none")
  parser.add_argument("--results", default=RESULTS, help="the folder of byzantine_<attack>/")
  parser.add_argument("--out", required=True, help="where attack_cost.md and .png go")
  args = parser.parse_args()
  clean_runs = []
  for directory in args.clean:
    runs = read_runs(directory)
    if not runs:
      print(
        f"--clean {directory}: no results.csv there (a study directory of grid none)",
        file=sys.stderr,
      )
      sys.exit(2)
    clean_runs += runs
  attacked = {a: read_runs(os.path.join(args.results, f"byzantine_{a}")) for a in ATTACKS}
  attacked = {a: runs for a, runs in attacked.items() if runs}
  if not attacked:
    print(
      f"--results {args.results}: no byzantine_<attack>/results.csv, for attacks {ATTACKS}",
      file=sys.stderr,
    )
    sys.exit(2)
  lines = report(attacked, clean_runs)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "attack_cost.md")
  with open(path + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(path + ".tmp", path)
  plot(attacked, clean_runs, os.path.join(args.out, "attack_cost.png"))
  print("\n".join(lines) + f"\nwrote {path} and attack_cost.png")


if __name__ == "__main__":
  main()
