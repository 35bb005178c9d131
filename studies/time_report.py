"""Time to a target on a network: recorded runs on the communication clock (psops_jax/clock.py).

Every figure here is a PROJECTION: the figure (the task's metric: test accuracy, higher is better;
validation bits per byte, lower is better; psops_jax/headline.py) a run reached after so many local
steps and bytes, at the time a profile's compute and link would have taken for them. It leaves out
stragglers, contention, the real collective algorithm and topology, and the real step time of an
accelerator.

  python studies/time_report.py studies/results/study_outer          # a study: the tables
                                                # at ratios 10, 1, 0.1, 0.01 and the plot
  python studies/time_report.py studies/results/study_outer --ratio 3 0.03 \
      --profile 1b_h100_1gbit                   # other ratios, a named profile
  python studies/time_report.py RUN_DIR --profile lenet5_h100_1gbit    # one run's curve

A study directory is read from its results.json (studies/study.py writes each run's curve
there); a run directory from its summary.json and metrics.jsonl. For a study it writes
time_to_accuracy.md (per target: the mean projected time to reach it per variant and period, at
each ratio or profile, the fastest marked, and how much sooner than ssgd) and accuracy_vs_time.png
(one panel per ratio or profile); for a language model time_to_bits_per_byte.md and
bits_per_byte_vs_time.png. The ratio r = t_step / t_allreduce(full weights); under a ratio, time is
counted in all-reduces of the full float32 weights. The default targets: `default_targets`.
"""

import argparse
import collections
import json
import os
import statistics

from psops_jax import clock, headline  # no JAX in them

RATIOS = (10.0, 1.0, 0.1, 0.01)
TARGETS = {"final_test_accuracy": (0.83, 0.85, 0.87)}  # 0.83: within reach of PSO-PS, rare syncs
MARGINS = (0.10, 0.05, 0.02)  # a metric without TARGETS: this far (relative) from the best cell
FLOORS = {"final_test_accuracy": 0.75}  # where the plot's axis starts
MIN_SEEDS = 3  # the fewest seeds of a variant that may be called the fastest


class InputError(ValueError):
  """A path or option this report cannot use; the message names it."""


def evaluations(workdir: str, summary: dict) -> list:
  """[(steps, bytes sent, train seconds, figure)] of a finished run: its evaluations in
  metrics.jsonl, then the final one of its summary.json; the figure is the run's metric
  (headline.metric_of: accuracy, or bits per byte)."""
  figure = headline.metric_of(summary).key
  keys = ("communicated_bytes_per_particle", "train_seconds", figure)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  points = [(r["step"], *(r[k] for k in keys)) for r in records if figure in r]
  final = (summary["steps"], *(summary[k] for k in keys))
  return points + [final] if not points or points[-1][0] != final[0] else points


def run_curve(workdir: str):
  """(Metric, RunShape, [(steps, bytes, figure)]) of one finished run directory."""
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    raise InputError(f"{workdir}: no summary.json (not a finished run directory)")
  with open(path) as f:
    summary = json.load(f)
  if "collective" not in summary:
    raise InputError(f"{path}: made before the clock's fields (collective, model_bytes); re-run it")
  curve = [(steps, sent, figure) for steps, sent, _, figure in evaluations(workdir, summary)]
  return headline.metric_of(summary), clock.run_shape(summary), curve


def study_runs(out: str, metric: headline.Metric | None = None):
  """(Metric, {(variant, period): [(RunShape, curve)]}) of a study's results.json: the rows with a
  curve of `metric` (headline.metric_of each row), or, without one, of the one metric they have."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    raise InputError(f"{out}: no results.json (run studies/study.py first)")
  with open(path) as f:
    rows = [r for r in json.load(f) if r.get("curve") and not r["diverged"]]
  if metric is None:
    metrics = {headline.metric_of(r) for r in rows}
    if len(metrics) > 1:
      raise InputError(f"{path}: its rows have several metrics {sorted(m.key for m in metrics)}")
    metric = metrics.pop() if metrics else headline.METRICS["classification"]
  runs = collections.defaultdict(list)
  for row in rows:
    if headline.metric_of(row) == metric:
      runs[(row["variant"], row["period"])].append((clock.run_shape(row), row["curve"]))
  if not runs:
    raise InputError(
      f"{path}: no run has a recorded curve of {metric.label} (made before the clock, or before "
      "the rows recorded their task; re-run it)"
    )
  return metric, dict(runs)


def default_targets(runs: dict, metric: headline.Metric) -> tuple:
  """The targets of a study's report: the metric's fixed TARGETS where it has them (accuracy);
  otherwise derived from the best cell, the (variant, period) whose mean final figure over its
  seeds is the best (`Metric.better`): that mean made worse by each of MARGINS, relative (best x
  (1 + m) where lower is better, best x (1 - m) where higher is better), to 3 significant digits,
  the easiest first, so that the best cell reaches every one."""
  if metric.key in TARGETS:
    return TARGETS[metric.key]
  best = None
  for cell in runs.values():
    finals = [curve[-1][2] for _, curve in cell if curve[-1][2] is not None]
    if finals and (best is None or metric.better(statistics.mean(finals), best)):
      best = statistics.mean(finals)
  if best is None:
    raise InputError(f"no run has a final {metric.label}: give --target")
  sign = -1 if metric.higher_is_better else 1
  return tuple(float(f"{best * (1 + sign * m):.3g}") for m in MARGINS)


def profiles_of(ratios, names) -> dict:
  """{column title: Profile} for the ratios and named profiles asked for."""
  columns = {f"r = {r:g}": clock.ratio_profile(r) for r in ratios}
  for name in names:
    try:
      columns[name] = clock.profile_from_name(name)
    except ValueError as error:
      raise InputError(f"--profile: {error}") from None
  return columns


def unit(profile: clock.Profile) -> str:
  return "all-reduces" if profile.model_bytes == 1.0 else "s"


def mean_time(runs, target, profile, metric):
  """(mean projected time to `target` over the runs that reached it, how many did)."""
  times = [clock.time_to_target(curve, target, shape, profile, metric) for shape, curve in runs]
  reached = [t for t in times if t is not None]
  return (statistics.mean(reached) if reached else None), len(reached)


def fmt(seconds: float) -> str:
  return f"{seconds:.3g}"


def time_table(runs: dict, profiles: dict, target: float, metric) -> list:
  """Markdown lines: a row per (variant, period), a column per profile; the fastest of the rows
  with at least MIN_SEEDS seeds (or the most, where none has that many), every one of which reached
  the target, is in bold; the last rows name it and its lead on ssgd."""
  keys = sorted(runs, key=lambda k: (k[0], k[1]))
  times = {
    (key, col): mean_time(runs[key], target, p, metric)
    for key in keys
    for col, p in profiles.items()
  }
  enough = min(MIN_SEEDS, max(len(runs[key]) for key in keys))  # a mean over fewer is luck
  fastest = {}
  for col in profiles:
    complete = [
      (times[(key, col)][0], key)
      for key in keys
      if len(runs[key]) >= enough
      and times[(key, col)][1] == len(runs[key])
      and times[(key, col)][0] is not None
    ]
    fastest[col] = min(complete) if complete else None
  lines = [
    "| variant | period | " + " | ".join(profiles) + " |",
    "| --- | --- |" + " --- |" * len(profiles),
  ]
  for key in keys:
    cells = []
    for col in profiles:
      t, k = times[(key, col)]
      text = "never" if t is None else fmt(t)
      if k and k < len(runs[key]):
        text += f" ({k}/{len(runs[key])} seeds)"
      if fastest[col] and fastest[col][1] == key:
        text = f"**{text}**"
      cells.append(text)
    lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
  winners, leads = [], []
  for col in profiles:
    if fastest[col] is None:
      winners.append("none")
      leads.append("—")
      continue
    t, key = fastest[col]
    winners.append(f"{key[0]} p{key[1]}")
    ssgd = [times[(k, col)] for k in keys if k[0] == "ssgd"]
    leads.append(f"{ssgd[0][0] / t:.2g}x" if ssgd and ssgd[0][0] else "—")
  lines.append("| **fastest** | | " + " | ".join(winners) + " |")
  lines.append("| ssgd's time / fastest | | " + " | ".join(leads) + " |")
  return lines


def markdown(runs: dict, profiles: dict, targets, metric) -> str:
  side = "above" if metric.higher_is_better else "below"
  lines = [
    f"# Time to {metric.words} (a projection, psops_jax/clock.py)",
    "",
    f"Mean projected time to the first evaluation at or {side} the target"
    f"{headline.stated(metric)}, over the seeds that "
    "reached it ((k/n seeds) when not all did; never: none did). Under a ratio r = t_step / "
    "t_allreduce(full float32 weights) time is in all-reduces of the full weights; under a named "
    f"profile in seconds. In bold: the fastest of the variants with at least {MIN_SEEDS} seeds "
    "(n in results.md), all of which reached the target. "
    "Left out: stragglers, contention, the real collective on a real topology, the real step "
    "time of an accelerator; the curves are sampled at the recorded evaluations only.",
    "",
  ]
  for name, p in profiles.items():
    if p.model_bytes != 1.0:
      lines.append(f"- `{name}` (r = {clock.full_allreduce_ratio(p):.3g}): {p.note}")
  lines.append("")
  for target in targets:
    lines += [f"## Time to {target} {metric.label}", ""]
    lines += time_table(runs, profiles, target, metric) + [""]
  return "\n".join(lines)


def mean_figure(figures) -> float:
  """The mean of the figures that are numbers (None: not finite), NaN (no point) without one."""
  numbers = [f for f in figures if f is not None]
  return statistics.mean(numbers) if numbers else float("nan")


def plot(runs: dict, profiles: dict, path: str, metric):
  """The figure (mean over seeds at each evaluation) against projected time, a panel per profile;
  the axis starts at the metric's FLOORS, where it has one."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(
    1, len(profiles), figsize=(4.2 * len(profiles) + 2.0, 3.8), squeeze=False, sharey=True
  )
  for ax, (col, p) in zip(axes[0], profiles.items()):
    for key in sorted(runs):
      shape, first = runs[key][0]
      length = min(len(curve) for _, curve in runs[key])
      xs = [clock.projected_seconds(s, b, shape, p) for s, b, _ in first[:length]]
      ys = [mean_figure(curve[i][2] for _, curve in runs[key]) for i in range(length)]
      ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1, label=f"{key[0]} p{key[1]}")
    ax.set_xscale("log")
    ax.set_title(col, fontsize=9)
    ax.set_xlabel(f"projected time ({unit(p)})")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(f"{metric.label} (mean over seeds)")
  if metric.key in FLOORS:
    axes[0][0].set_ylim(FLOORS[metric.key], None)
  axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.suptitle(
    f"{metric.words}{headline.stated(metric)} against projected time (a projection: "
    "psops_jax/clock.py)",
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_study(out: str, ratios=RATIOS, names=(), targets=None, metric=None) -> str:
  """time_to_<stem>.md and <stem>_vs_time.png (headline.report_file: time_to_accuracy.md, or
  time_to_bits_per_byte.md) in a study's directory, of its rows of `metric` (default: the one the
  rows have) and at `targets` (default: default_targets); returns the markdown."""
  metric, runs = study_runs(out, metric)
  profiles = profiles_of(ratios, names)
  text = markdown(runs, profiles, targets or default_targets(runs, metric), metric)
  with open(os.path.join(out, headline.report_file(metric, "time_to_{}.md")), "w") as f:
    f.write(text + "\n")
  plot(runs, profiles, os.path.join(out, headline.report_file(metric, "{}_vs_time.png")), metric)
  return text


def run_lines(workdir: str, profiles: dict) -> str:
  """One run's evaluations with their projected times, a column per profile."""
  metric, shape, curve = run_curve(workdir)
  lines = [
    f"| step | MB sent | {metric.words} | "
    + " | ".join(f"{c} ({unit(p)})" for c, p in profiles.items())
    + " |",
    "| --- | --- | --- |" + " --- |" * len(profiles),
  ]
  for steps, sent, figure in curve:
    times = [fmt(clock.projected_seconds(steps, sent, shape, p)) for p in profiles.values()]
    value = "—" if figure is None else f"{figure:.4f}"
    lines.append(f"| {steps} | {sent / 1e6:.2f} | {value} | " + " | ".join(times) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("path", help="a study's output directory or one run's workdir")
  parser.add_argument("--ratio", type=float, nargs="+", help=f"ratios r (default {RATIOS})")
  parser.add_argument(
    "--profile",
    nargs="+",
    default=[],
    help=f"named profiles: {', '.join(clock.PROFILES)}",
  )
  parser.add_argument(
    "--target",
    type=float,
    nargs="+",
    help=f"figures to reach (default: accuracy {TARGETS['final_test_accuracy']}; other metrics "
    f"{MARGINS} relative from the best cell's, default_targets)",
  )
  args = parser.parse_args(argv)
  ratios = args.ratio if args.ratio is not None else ([] if args.profile else RATIOS)
  bad = [r for r in ratios if not r > 0]
  if bad:
    parser.error(f"--ratio {bad}: ratios must be numbers > 0")
  if not os.path.isdir(args.path):
    parser.error(f"{args.path}: no such directory (a study's --out or a run's --workdir)")
  try:
    if os.path.exists(os.path.join(args.path, "summary.json")):
      print(run_lines(args.path, profiles_of(ratios, args.profile)))
    else:
      print(write_study(args.path, ratios, args.profile, args.target))
  except InputError as error:
    parser.error(str(error))


if __name__ == "__main__":
  main()
