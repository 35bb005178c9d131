"""The paper's study: sync methods side by side across periods, particle counts and seeds.

A study config (see configs/study_fashion_mnist.py) names a base run config and a grid of
variants x periods x particle counts x seeds. Every cell is a normal `train.py` run in its own
workdir (OUT/runs/<variant>_p<period>_n<particles>_s<seed>); a cell whose summary.json exists is not
re-run, and an interrupted cell resumes from its checkpoint, so the whole study is resumable. A cell
being run is locked with the lock of its workdir (psops_jax/workdir.py: study.py takes it and hands
it to the cell's train.py), so several study.py processes over the same grid (e.g. one per core
group) share the cells out instead of running the same cell twice. Every cell of a variant runs the
same number of local steps per particle (`total_steps`), or, with `fixed_tokens: N0`, the same
samples in all: total_steps x N0 / N steps per particle for N particles (the fixed token budget of
the language-model study).

  python studies/study.py --study configs/study_fashion_mnist.py --out results/fmnist
  python studies/study.py --study configs/study_fashion_mnist.py --out results/fmnist_q --quick
  python studies/study.py --study configs/study_fashion_mnist.py --out results/fmnist \
      --report-only                           # only the report of the finished cells
  python studies/study.py --study configs/study_fashion_mnist.py --out results/fmnist \
      --periods 16 --num-particles 8          # a slice of the grid (same cells, same directory)
  python studies/study.py ... --variants pso average   # only these variants
  python studies/study.py --study configs/study_fashion_mnist.py --grid tuned_periods \
      --base configs/mnist_pso.py --set data.source=tfds --out results/mnist   # on MNIST
  python studies/study.py ... --check 3    # re-run 3 finished cells, compare with the record

A slice limits what this process runs; the report always covers every finished cell of the grid.
Then writes, in OUT: results.csv and results.json (one row per run), results.md (mean +- std over
seeds per variant, period and particle count), accuracy_vs_{steps,bytes,seconds}_n<N>.png (one line
per variant, mean over seeds, one panel per period) and, when finished runs span several periods,
final_accuracy_vs_period.png (final accuracy against the period, mean +- std over seeds, one panel
per particle count), and studies/time_report.py's time_to_accuracy.md and accuracy_vs_time.png.

Everything is of the study's metric (`study_metric`: the task of its data set,
psops_jax/headline.py): the test accuracy (higher is better) of a classification; the validation
bits per byte (lower is better) of a language model, whose files are named after it
(headline.report_file):
bits_per_byte_vs_{steps,bytes,seconds}_n<N>.png, final_bits_per_byte_vs_period.png,
time_to_bits_per_byte.md and bits_per_byte_vs_time.png.
"""

import argparse
import collections
import csv
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time

from psops_jax import headline, host_devices  # no JAX in them
from psops_jax import workdir as workdir_lib  # no JAX in it
from studies import time_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

BIG_WORKER = "one big worker"
CELL = re.compile(r"(?P<variant>.+)_p(?P<period>\d+)_n(?P<particles>\d+)_s(?P<seed>\d+)")


def cell_name(variant: str, period: int, particles: int, seed: int) -> str:
  """A cell's workdir name under OUT/runs (and OUT/check); CELL parses it back."""
  return f"{variant}_p{period}_n{particles}_s{seed}"


ROW_KEYS = (
  "variant",
  "period",
  "num_particles",
  "seed",
  "diverged",
  "final_test_accuracy",
  "test_accuracy_best_particle",
  "test_accuracy_mean_particle",
  "test_accuracy_averaged_weights",
  "steps",
  "samples",
  "communicated_bytes_per_particle",
  "train_seconds",
  "evaluated_on",
  "model_bytes",
  "code_version",
  "params_fingerprint",
  "machine",
  "backend",
  "jax_version",
)
TASK_KEYS = {  # a task's own columns of results.csv, after ROW_KEYS
  "classification": (),
  "language_model": (
    "final_bits_per_byte",
    "final_test_loss",
    "final_perplexity",
    "unigram_bits_per_byte",
  ),
}
CLOCK_KEYS = ("collective", "curve")  # results.json only: the communication clock's inputs
# results.json has "task" too (a row without one was made before the rows recorded it: its figure
# and curve are accuracies, headline.metric_of)
ACCURACY = headline.METRICS["classification"]


class BadInput(Exception):
  """A wrong flag, path or grid name: main() prints it with the usage and exits 2."""


class Study(dict):
  """A study config (a plain dict; variant overrides have dotted keys), fields as attributes."""

  __getattr__ = dict.__getitem__


def config_module(path: str, name: str):
  """The Python file `path` (a study or run config) loaded as module `name`."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_study(path: str, grid: str = "") -> Study:
  """The study config's grid, or its named sub-grid (e.g. "quick")."""
  if not os.path.isfile(path):
    raise BadInput(f"--study {path}: no such study config file (e.g. configs/study_outer.py)")
  study = config_module(path, "study_config").get_config()
  if grid and not isinstance(study.get(grid), dict):
    named = [k for k, v in study.items() if isinstance(v, dict) and "variants" in v]
    raise BadInput(f"--grid {grid}: {path} has no such sub-grid; it has {named}")
  return Study(study[grid] if grid else study)


def round_overrides(rounds: int, evals: int) -> dict:
  """A cell's length and its logging, evaluation (`evals` points) and checkpoint intervals."""
  return {
    "train.rounds": rounds,
    "train.eval_every": max(1, rounds // evals),
    "train.log_every": max(1, rounds // 50),
    "train.checkpoint_every": max(1, rounds // 4),
  }


def study_task(study) -> str:
  """The task of the study's cells: that of the data set (headline.task_of) its overrides name
  (data.name) or, without one, its base run config's (`base`, which may end in :ARGUMENT)."""
  name = study.get("overrides", {}).get("data.name")
  if name is None:
    path, _, argument = study.base.partition(":")
    module = config_module(os.path.join(REPO, path), "base_config")
    name = (module.get_config(argument) if argument else module.get_config()).data.name
  return headline.task_of(name)


def study_metric(study) -> headline.Metric:
  """The one metric of every table, gap, plot and check of the study (study_task's)."""
  return headline.METRICS[study_task(study)]


def own_figure(row: dict, metric: headline.Metric):
  """The row's figure of `metric`: None where it diverged or its figure is not finite, and
  NOT_RECORDED where it was made before its rows recorded the task (headline.metric_of) and so
  carries no such figure."""
  if row["diverged"] or headline.metric_of(row) == metric:
    return row.get(metric.key)
  return NOT_RECORDED


NOT_RECORDED = "not recorded"


def local_steps(study, particles: int) -> int:
  """A cell's local steps per particle: `total_steps`, or with `fixed_tokens` = N0 the share of N
  particles in the budget of total_steps steps of each of N0 particles."""
  if not study.get("fixed_tokens"):
    return study.total_steps
  return study.total_steps * study.fixed_tokens // particles


def cells(study):
  """(name, variant, period, particles, seed, overrides) of every run of the grid."""
  for variant, variant_overrides in study.variants.items():
    own = study.get("variant_periods", {}).get(variant, study.periods)
    for period in [p for p in own if p in study.periods]:  # --periods slices those too
      for particles in study.num_particles:
        for seed in study.seeds:
          overrides = dict(study.overrides)
          overrides.update(variant_overrides)
          overrides.update(
            {
              "seed": seed,
              "num_particles": particles,
              "sync.period": period,
              **round_overrides(local_steps(study, particles) // period, study.evals),
            }
          )
          yield (
            cell_name(variant, period, particles, seed),
            variant,
            period,
            particles,
            seed,
            overrides,
          )
  if study.one_big_worker:  # one particle, the same total samples as N particles: N x the steps
    period = max(study.periods)
    for particles in study.num_particles:
      for seed in study.seeds:
        rounds = study.total_steps * particles // period
        overrides = dict(study.overrides)
        overrides.update(
          {
            "seed": seed,
            "num_particles": 1,
            "sync.strategy": "none",
            "sync.period": period,
            **round_overrides(rounds, study.evals),
          }
        )
        yield (
          f"one_big_worker_n{particles}_s{seed}",
          BIG_WORKER,
          period,
          particles,
          seed,
          overrides,
        )


def steps_line(study) -> str:
  """The report's sentence on the cells' length."""
  if not study.get("fixed_tokens"):
    return f"{study.total_steps} local steps per particle in every cell."
  steps = ", ".join(f"{local_steps(study, n)} at N = {n}" for n in sorted(study.num_particles))
  return f"The same samples in every cell: local steps per particle {steps}."


def command(study, workdir, overrides):
  args = [
    sys.executable,
    os.path.join(REPO, "train.py"),
    "--config",
    os.path.join(REPO, study.base),
    "--workdir",
    workdir,
  ]
  return args + [f"--config.{k}={v}" for k, v in overrides.items()]


def is_finished(workdir: str) -> bool:
  """A cell with a summary.json, or a diverged.json (a diverged run is a result too)."""
  return any(os.path.exists(os.path.join(workdir, f)) for f in ("summary.json", "diverged.json"))


def take_cell(workdir: str):
  """The lock of the cell's workdir, or None when a live run holds it (another study.py process, or
  a train.py run on that workdir), so that study.py processes over the same grid share the cells
  out. A lock whose holder is gone is taken over (the cell resumes from its checkpoint)."""
  try:
    return workdir_lib.Lock.acquire(workdir)
  except workdir_lib.WorkdirBusy:
    return None


def run_grid(study, out):
  todo = list(cells(study))
  for i, (name, _, _, _, _, overrides) in enumerate(todo):
    workdir = os.path.join(out, "runs", name)
    if is_finished(workdir):
      continue
    lock = take_cell(workdir)
    if lock is None:
      print(f"[{i + 1}/{len(todo)}] {name}: running in another process, skipped", flush=True)
      continue
    with lock:
      if is_finished(workdir):  # finished between the check and the lock
        continue
      print(f"[{i + 1}/{len(todo)}] {name}", flush=True)
      t0 = time.time()
      env = host_devices.child_environment()  # train.py sets the devices
      result = subprocess.run(
        command(study, workdir, overrides),
        cwd=REPO,
        env=env | lock.child_env(),
        pass_fds=(lock.fd,),  # train.py adopts it
        capture_output=True,
        text=True,
      )
    if result.returncode != 0:
      print(
        f"  failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}", flush=True
      )
      continue
    print(f"  {result.stdout.strip().splitlines()[-1]} [{time.time() - t0:.0f}s wall]", flush=True)


def recorded_rows(out) -> dict:
  """The rows of OUT/results.json by (variant, period, particles, seed), or {} without one."""
  path = os.path.join(out, "results.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {(r["variant"], r["period"], r["num_particles"], r["seed"]): r for r in json.load(f)}


def collect(study, out, task: str = "classification"):
  """One row per finished run (ROW_KEYS, the task's TASK_KEYS and "task"), and the evaluation
  curve of each run (its metric's figure). A cell without a workdir keeps its row from
  OUT/results.json (with its code_version): runs/ is not committed, so a study grows over several
  machines and sessions without re-running what a commit already holds (a row made before the rows
  recorded their task gives its curve only to a study of accuracy)."""
  rows, curves = [], {}
  keys, metric = ROW_KEYS + TASK_KEYS[task], headline.METRICS[task]
  recorded = recorded_rows(out)
  for name, variant, period, particles, seed, _ in cells(study):
    workdir = os.path.join(out, "runs", name)
    path = os.path.join(workdir, "summary.json")
    diverged = os.path.join(workdir, "diverged.json")
    key = (variant, period, particles, seed)
    if not os.path.exists(workdir) and key in recorded:
      row = recorded[key]
      rows.append(row)
      if row.get("curve") and headline.metric_of(row) == metric:
        curves[key] = [(s, b, None, a) for s, b, a, *_ in row["curve"]]
      continue
    if not os.path.exists(path):
      if os.path.exists(diverged):  # every particle NaN/inf: a result, reported as such
        with open(diverged) as f:
          record = json.load(f)
        rows.append(
          {k: record.get(k) for k in keys}  # its steps and provenance (older records lack it)
          | {
            "task": task,
            "variant": variant,
            "period": period,
            "num_particles": particles,
            "seed": seed,
            "diverged": True,
          }
        )
      continue
    with open(path) as f:
      summary = json.load(f)
    row = {k: summary.get(k) for k in keys} | {
      "task": task,
      "variant": variant,
      "seed": seed,
      "num_particles": particles,
      "diverged": False,
    }
    points = time_report.evaluations(workdir, summary)
    curves[(variant, period, particles, seed)] = points
    if "collective" in summary:  # the clock's inputs (runs made before it have none)
      row |= {"collective": summary["collective"], "curve": [[s, b, a] for s, b, _, a in points]}
    rows.append(row)
  return rows, curves


def mean_std(values):
  """mean ± std of the finite runs' values; diverged runs (None) are counted, not averaged."""
  finite = [v for v in values if v is not None]
  note = (
    f" ({len(values) - len(finite)}/{len(values)} diverged)" if len(finite) < len(values) else ""
  )
  if not finite:
    return f"diverged ({len(values)}/{len(values)})"
  if len(finite) == 1:
    return f"{finite[0]:.4f}{note}"
  return f"{statistics.mean(finite):.4f} ± {statistics.stdev(finite):.4f}{note}"


def figures_text(group, metric: headline.Metric) -> str:
  """mean ± std (n=...) of the rows' figures of `metric` (mean_std), and how many rows have none
  recorded (own_figure)."""
  figures = [own_figure(r, metric) for r in group]
  own = [f for f in figures if f != NOT_RECORDED]
  text = f"{mean_std(own)} (n={len(own)})" if own else ""
  missing = len(figures) - len(own)
  if missing:
    text += f"{', ' if text else ''}{NOT_RECORDED} ({missing}/{len(figures)})"
  return text


def paired_gap(figure: dict, reference: dict, gap=headline.GAPS[ACCURACY.key]) -> str:
  """gap.scale (figure - reference) over the seeds both have ({seed: figure} each; for an accuracy
  100 (accuracy - reference), in points): the mean and, from 2 seeds on, its 95% interval
  (Student's t over the paired differences), marked * where the interval excludes zero (the only
  case in which the two are called different); gap.digits decimals."""
  gaps = [gap.scale * (figure[s] - reference[s]) for s in sorted(figure.keys() & reference.keys())]
  if not gaps:
    return "—"
  mean, d = statistics.mean(gaps), gap.digits
  if len(gaps) == 1:
    return f"{mean:+.{d}f} (n=1)"
  from scipy import stats  # only here: the rest of the report needs no SciPy

  half = stats.t.ppf(0.975, len(gaps) - 1) * statistics.stdev(gaps) / len(gaps) ** 0.5
  mark = "*" if mean - half > 0 or mean + half < 0 else ""
  return f"{mean:+.{d}f} [{mean - half:+.{d}f}, {mean + half:+.{d}f}]{mark} (n={len(gaps)})"


def finished_runs(groups, variant, period, particles) -> list:
  """The runs of one cell (groups: {(variant, period, particles): [row]}) that did not diverge."""
  return [r for r in groups.get((variant, period, particles), []) if not r["diverged"]]


def period_table(study, variants, cell) -> list:
  """A markdown table: a row per variant, a column per period of the study, cell(variant, period)
  giving each text."""
  rows = [f"| {v} | " + " | ".join(cell(v, p) for p in study.periods) + " |" for v in variants]
  return [
    "| variant | " + " | ".join(f"period {p}" for p in study.periods) + " |",
    "| --- |" + " --- |" * len(study.periods),
    *rows,
  ]


def references(study) -> list:
  """The variants the gap tables compare with: `study.reference`, one name or a list of them."""
  named = study.get("reference") or []
  return [v for v in ([named] if isinstance(named, str) else named) if v in study.variants]


def gap_lines(study, groups, particles, reference, metric=ACCURACY) -> list:
  """The table of each variant's gap to `reference` in the metric's Gap (headline.GAPS: points of
  accuracy, or bits per byte), paired by seed."""

  def finished(variant, period):
    runs = finished_runs(groups, variant, period, particles)
    figures = {r["seed"]: own_figure(r, metric) for r in runs}
    return {s: f for s, f in figures.items() if f not in (None, NOT_RECORDED)}

  unit = headline.GAPS[metric.key]
  gap = lambda v, p: paired_gap(finished(v, p), finished(reference, p), unit)
  how = "variant - reference" + (f", x {unit.scale:g}" if unit.scale != 1 else "")
  if not metric.higher_is_better:
    how += f", {metric.direction}: below zero the variant is better"
  head = [
    f"Gap to `{reference}` in {unit.unit} ({how}, paired by seed over the "
    "seeds where both finished, n = those seeds): the mean and its 95% interval; * marks an "
    "interval that excludes zero, the only gaps called a difference:",
    "",
  ]
  variants = [v for v in study.variants if v != reference]
  return head + period_table(study, variants, gap) + [""]


def cost_lines(study, groups, particles) -> list:
  """The table of MB each particle sends per run and the median training seconds over seeds."""

  def cost(variant, period):
    done = finished_runs(groups, variant, period, particles)
    if not done:
      return "—"
    seconds = statistics.median(r["train_seconds"] for r in done)
    return f"{done[0]['communicated_bytes_per_particle'] / 1e6:.1f} MB, {seconds:.0f} s"

  head = [
    "MB sent per particle per run, and median training seconds over the seeds (the seconds are "
    "rough when cells shared the machine):",
    "",
  ]
  return head + period_table(study, study.variants, cost) + [""]


def caption_name(metric, rows) -> str:
  """The figure's name in the caption: the metric's label, where it names the test split with the
  split the rows were evaluated on (their evaluated_on: test, or validation where the runs held out
  part of the training split)."""
  split = next((r["evaluated_on"] for r in rows if r.get("evaluated_on")), "test")
  label = metric.label
  return split + label.removeprefix("test") if label.startswith("test ") else label


def markdown(study, rows, metric=ACCURACY) -> str:
  groups = collections.defaultdict(list)
  for r in rows:
    groups[(r["variant"], r["period"], r["num_particles"])].append(r)
  lines = []
  for particles in study.num_particles:

    def figure(variant, period, particles=particles):
      group = groups.get((variant, period, particles), [])
      return figures_text(group, metric) if group else "—"

    lines += [f"### {particles} particles", ""] + period_table(study, study.variants, figure)
    big = [r for r in rows if r["variant"] == BIG_WORKER and r["num_particles"] == particles]
    lines.append("")
    if big:  # no sync: the period does not apply
      lines += [
        f"The one big worker (1 particle, {particles}x the steps: the same samples, no sync): "
        f"{figures_text(big, metric)}.",
        "",
      ]
    for reference in references(study):
      lines += gap_lines(study, groups, particles, reference, metric)
    lines += cost_lines(study, groups, particles)
  lines.append(
    f"Final {caption_name(metric, rows)} of the exported model{headline.stated(metric)}, "
    "mean ± std over seeds (n = number of seeds); "
    f"{steps_line(study)} {code_line(rows)} "
    f"{machine_line(rows)}"
  )
  return "\n".join(lines)


def code_line(rows) -> str:
  """Which code made the runs: each commit (code_version) and its number of runs, and, for several
  commits, whether their training code (workdir.training_code) is one and the same. (A diverged
  run made before diverged.json recorded its commit is "not recorded".)"""
  versions = collections.Counter(r.get("code_version") or "not recorded" for r in rows)
  listed = ", ".join(f"{v} ({n} runs)" for v, n in versions.most_common())
  recorded = [v for v in versions if v != "not recorded"]
  if len(recorded) <= 1:
    return f"Made by commit {listed}."
  codes = {workdir_lib.training_code(v) for v in recorded}
  same = (
    "the same training code (psops_jax/ and train.py but the clock and workdir modules)"
    if len(codes) == 1 and None not in codes
    else "training code that differs or is not known"
  )
  return f"Made by commits {listed}, with {same}."


def machine_line(rows) -> str:
  """The machines (workdir.machine_kind) that ran the study and the number of runs on each: bit
  identity is promised only between runs of one training code on one kind of machine."""
  machines = collections.Counter(r.get("machine") or "not recorded" for r in rows)
  return "Run on " + ", ".join(f"{m} ({n} runs)" for m, n in machines.most_common()) + "."


def plot(study, curves, out, metric=ACCURACY):
  """<stem>_vs_{steps,bytes,seconds}_n<N>.png (headline.report_file): the figure of each variant
  against local steps, MB sent and seconds, mean over seeds, a panel per period."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  axes_names = {
    "steps": (0, "local steps per particle"),
    "bytes": (1, "MB sent per particle"),
    "seconds": (2, "training seconds"),
  }
  for particles in study.num_particles:
    for key, (column, label) in axes_names.items():
      fig, axes = plt.subplots(
        1, len(study.periods), figsize=(4.2 * len(study.periods), 3.6), squeeze=False, sharey=True
      )
      for ax, period in zip(axes[0], study.periods):
        for variant in study.variants:
          runs = [curves[k] for k in curves if k[:3] == (variant, period, particles)]
          runs = [r for r in runs if r[0][column] is not None]  # carried rows have no seconds
          if not runs:
            continue
          length = min(len(r) for r in runs)
          xs = [runs[0][i][column] / (1e6 if key == "bytes" else 1) for i in range(length)]
          ys = [time_report.mean_figure(r[i][3] for r in runs) for i in range(length)]
          ax.plot(xs, ys, marker="o", markersize=3, label=variant)
        ax.set_title(f"period {period}")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        if key == "bytes":
          ax.set_xscale("symlog", linthresh=1.0)
      axes[0][0].set_ylabel(f"{metric.words} (exported model){headline.stated(metric)}")
      if axes[0][-1].get_legend_handles_labels()[0]:  # a particle count with no finished run yet
        axes[0][-1].legend(
          fontsize=7, loc="lower right" if metric.higher_is_better else "upper right"
        )
      fig.suptitle(f"{particles} particles, mean over seeds")
      fig.tight_layout()
      name = headline.report_file(metric, f"{{}}_vs_{key}_n{particles}.png")
      fig.savefig(os.path.join(out, name), dpi=110)
      plt.close(fig)


def period_means(rows, metric=ACCURACY) -> dict:
  """{(variant, particles): [(period, mean, std, n)]}: the final figure of the finished runs over
  seeds (std 0 for one run), periods ascending; diverged runs and runs without the figure are left
  out (results.md counts them)."""
  runs = collections.defaultdict(list)
  for r in rows:
    figure = own_figure(r, metric)
    if figure not in (None, NOT_RECORDED) and r["variant"] != BIG_WORKER:
      runs[(r["variant"], r["num_particles"], r["period"])].append(figure)
  means = collections.defaultdict(list)
  for (variant, particles, period), values in sorted(runs.items(), key=lambda kv: kv[0][2]):
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    means[(variant, particles)].append((period, statistics.mean(values), std, len(values)))
  return dict(means)


ZOOMS = {  # final_<stem>_vs_period.png shows this much of the figure worse than the best cell
  "final_test_accuracy": 0.1,
  "final_bits_per_byte": 1.6,  # the LM study spans 3.25 (ssgd) to 4.7 (streaming at period 64)
}
PAD = 0.005  # the axis's room beyond the best cell's edge


def zoom_limits(means: dict, metric=ACCURACY) -> tuple[float, float, float] | None:
  """(low, high, edge) of final_<stem>_vs_period.png's axis from period_means's cells (None
  without one): from the best cell's outer error bar (+ std where higher is better, - std where
  lower is better; PAD beyond it) to ZOOMS[metric] worse than it, or the worst cell's outer bar
  where that is nearer; `edge` is the worse end, where the cells beyond it are marked."""
  points = [(m, sd) for cells in means.values() for _, m, sd, _ in cells]
  if not points:
    return None
  zoom = ZOOMS[metric.key]
  if metric.higher_is_better:
    best = max(m + sd for m, sd in points)
    low = max(min(m - sd for m, sd in points), best - zoom)
    return low, best + PAD, low
  best = min(m - sd for m, sd in points)
  high = min(max(m + sd for m, sd in points), best + zoom)
  return best - PAD, high, high


def plot_periods(study, rows, out, metric=ACCURACY):
  """final_<stem>_vs_period.png (headline.report_file: final_accuracy_vs_period.png): one panel
  per particle count, one line per variant (error bars: std over seeds), the one big worker as a
  horizontal line; cells worse than the zoom (zoom_limits) are marked at its edge with their
  value."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  means = period_means(rows, metric)
  fig, axes = plt.subplots(
    1,
    len(study.num_particles),
    figsize=(5.5 * len(study.num_particles) + 2.2, 4.2),
    squeeze=False,
    sharey=True,
  )
  limits = zoom_limits(means, metric)
  for ax, particles in zip(axes[0], study.num_particles):
    for variant in study.variants:
      points = means.get((variant, particles), [])
      if points:
        periods, mean, std, _ = zip(*points)
        line = ax.errorbar(
          periods, mean, yerr=std, marker="o", markersize=4, capsize=3, label=variant
        )
        for (
          period,
          m,
          _,
          _,
        ) in points:  # a collapsed cell would squash the others: marked at the edge
          if limits and metric.better(limits[2], m):
            ax.annotate(
              f"{m:.2f}",
              (period, limits[2]),
              textcoords="offset points",
              xytext=(0, 4 if metric.higher_is_better else -12),
              ha="center",
              fontsize=7,
              color=line[0].get_color(),
              arrowprops={"arrowstyle": "->", "color": line[0].get_color()},
            )
    if limits:
      ax.set_ylim(limits[0], limits[1])
    big = [
      own_figure(r, metric)
      for r in rows
      if r["variant"] == BIG_WORKER and r["num_particles"] == particles
    ]
    big = [f for f in big if f not in (None, NOT_RECORDED)]
    if big:
      ax.axhline(
        statistics.mean(big),
        color="black",
        linestyle="--",
        linewidth=1,
        label="one big worker (same samples)",
      )
    ax.set_xscale("log", base=2)
    ax.set_xticks(study.periods, [str(p) for p in study.periods])
    ax.set_xlabel("sync period (local steps between syncs)")
    ax.set_title(f"{particles} particles")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel(
    f"final {metric.words} (exported model){headline.stated(metric)}, mean ± std over seeds"
  )
  axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  fig.tight_layout()
  fig.savefig(os.path.join(out, headline.report_file(metric, "final_{}_vs_period.png")), dpi=110)
  plt.close(fig)


def report(study, out):
  task = study_task(study)
  metric = headline.METRICS[task]
  rows, curves = collect(study, out, task)
  if not rows:
    raise BadInput(f"--out {out}: no finished runs in its runs/ or results.json")
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=ROW_KEYS + TASK_KEYS[task], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
  table = markdown(study, rows, metric)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(table + "\n")
  plot(study, curves, out, metric)
  if len({r["period"] for r in rows}) > 1:  # finished runs at several periods
    plot_periods(study, rows, out, metric)
  print(table)
  if any("curve" in r and headline.metric_of(r) == metric for r in rows):
    time_report.write_study(out, metric=metric)


# by metric key: the final figure's gap allowed where the code or machine differs
CHECK_TOLERANCES = {
  "final_test_accuracy": 0.015,  # the re-run spread across code versions (docs/RESULTS.md)
  "final_bits_per_byte": 0.02,  # not measured yet: an allowance, under 1% of the tiny LM's ~3
}


def check_cells(study, out, count: int, seed: int, tolerance: float | None = None) -> bool:
  """Re-run `count` finished cells chosen at random (random.Random(seed)) into OUT/check/<cell>
  and compare with the recorded run. A cell passes when the study makes the same config for it and
  the re-run's weights are bit-identical (`params_fingerprint`), or, where determinism is not
  promised, its final figure (study_metric) is within `tolerance` (default: CHECK_TOLERANCES).
  Determinism is promised where the training code (workdir.training_code) at the recorded run's
  commit (`code_version`, unmodified) is this checkout's, on the same kind of machine, backend and
  JAX version. True if all pass."""
  metric = study_metric(study)
  if tolerance is None:
    tolerance = CHECK_TOLERANCES[metric.key]
  rows = recorded_rows(out)
  finished = []
  for name, variant, period, particles, seed_, overrides in cells(study):
    path = os.path.join(out, "runs", name, "summary.json")
    if os.path.exists(path):
      with open(path) as f:
        finished.append((name, overrides, json.load(f)))
    elif rows.get((variant, period, particles, seed_), {}).get("params_fingerprint"):
      finished.append((name, overrides, rows[(variant, period, particles, seed_)]))
  if not finished:
    raise BadInput(f"--check: no finished cell in {out}/runs or {out}/results.json")
  chosen = random.Random(seed).sample(finished, min(count, len(finished)))
  code, machine = workdir_lib.training_code(), workdir_lib.machine_kind()
  print(f"--check {count} --check-seed {seed}: {[c[0] for c in chosen]}", flush=True)
  print(f"this checkout's training code: {code}, on {machine}", flush=True)
  passed = True
  for name, overrides, recorded in chosen:  # a summary.json, or a row of results.json
    workdir = os.path.join(out, "check", name)
    shutil.rmtree(workdir, ignore_errors=True)
    env = host_devices.child_environment()
    result = subprocess.run(
      command(study, workdir, overrides), cwd=REPO, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
      print(f"  {name}: FAIL, the re-run failed: {result.stderr.strip()[-300:]}", flush=True)
      passed = False
      continue
    with open(os.path.join(workdir, "summary.json")) as f:
      again = json.load(f)
    keys = ("machine", "backend", "jax_version")
    exact = (
      code is not None
      and workdir_lib.training_code(recorded.get("code_version")) == code
      and all(recorded.get(k) == again.get(k) for k in keys)
    )
    was, now = own_figure(recorded | {"diverged": False}, metric), again.get(metric.key)
    numbers = all(isinstance(f, (int, float)) for f in (was, now))
    gap = now - was if numbers else None
    if "config" in recorded and workdir_lib.config_differences(recorded["config"], again["config"]):
      verdict, ok = "FAIL: the study now makes another config for this cell", False
    elif again["params_fingerprint"] == recorded["params_fingerprint"]:
      verdict, ok = "PASS: bit-identical", True
    elif exact:
      verdict, ok = "FAIL: same code and machine, other weights", False
    elif gap is None:
      verdict, ok = f"FAIL: other weights, and no {metric.label} to compare on both", False
    else:
      ok = abs(gap) <= tolerance
      verdict = f"{'PASS' if ok else 'FAIL'}: other code or machine, |gap| <= {tolerance}?"
    passed &= ok
    show = lambda f: f"{f:.4f}" if isinstance(f, (int, float)) else str(f)
    print(
      f"  {name}: recorded {show(was)} ({recorded.get('code_version')}), re-run {show(now)}, "
      f"gap {'—' if gap is None else f'{gap:+.4f}'}: {verdict}",
      flush=True,
    )
  return passed


def with_base(study, base, settings) -> Study:
  """The grid on another base run config and with KEY=VALUE overrides for every cell (a copy): the
  same study on MNIST or CIFAR-10 (`--base configs/mnist_pso.py --set data.source=tfds`)."""
  study = Study(study, overrides=dict(study.overrides))
  if base:
    if not os.path.exists(base):
      raise BadInput(f"--base {base}: no such run config")
    study["base"] = os.path.relpath(os.path.abspath(base), REPO)
  for setting in settings:
    key, sep, value = setting.partition("=")
    if not sep or not key:
      raise BadInput(f"--set {setting!r}: expected KEY=VALUE, e.g. data.source=tfds")
    study["overrides"][key] = value
  return study


def sliced(study, args):
  """The part of the grid that --periods/--num-particles/--seeds/--variants select (a copy)."""
  study, longest = Study(study), max(study.periods)
  for field in ("periods", "num_particles", "seeds"):
    wanted = getattr(args, field)
    if wanted:
      unknown = set(wanted) - set(study[field])
      if unknown:
        raise BadInput(
          f"--{field.replace('_', '-')} {sorted(unknown)}: not in the study's "
          f"{field} {list(study[field])}"
        )
      study[field] = [v for v in study[field] if v in wanted]
  if args.variants:
    unknown = set(args.variants) - set(study.variants)
    if unknown:
      raise BadInput(
        f"--variants {sorted(unknown)}: not in the study's variants {list(study.variants)}"
      )
    study["variants"] = {k: v for k, v in study.variants.items() if k in args.variants}
    study["one_big_worker"] = False
  if longest not in study.periods:  # the big worker's cell belongs to the grid's longest period
    study["one_big_worker"] = False
  return study


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--study", required=True, help="study config file (get_config())")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument(
    "--quick", action="store_true", help="the study's small grid (= --grid quick)"
  )
  parser.add_argument(
    "--grid", default="", help="a named sub-grid of the study config (e.g. tuning)"
  )
  parser.add_argument("--report-only", action="store_true", help="only collect finished runs")
  parser.add_argument(
    "--check",
    type=int,
    metavar="N",
    help="re-run N randomly chosen finished cells and compare (exit 1 on a mismatch)",
  )
  parser.add_argument(
    "--check-seed", type=int, help="the random choice of --check (default: from the clock)"
  )
  parser.add_argument(
    "--tolerance",
    type=float,
    help="--check: the final figure's gap allowed where the code or machine differs from the "
    f"recorded run's (default by metric: {CHECK_TOLERANCES})",
  )
  parser.add_argument("--periods", type=int, nargs="+", help="run only these periods of the grid")
  parser.add_argument("--num-particles", type=int, nargs="+", help="run only these particle counts")
  parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds")
  parser.add_argument("--variants", nargs="+", help="run only these variants")
  parser.add_argument(
    "--base", help="another base run config for the grid, e.g. configs/mnist_pso.py"
  )
  parser.add_argument(
    "--set",
    nargs="+",
    default=[],
    metavar="KEY=VALUE",
    help="overrides for every cell, e.g. data.source=tfds",
  )
  args = parser.parse_args()
  try:
    study = with_base(
      load_study(args.study, "quick" if args.quick else args.grid), args.base, args.set
    )
    part = sliced(study, args)  # checks the slice's values even with --report-only
    if args.check is not None:
      if args.check < 1:
        parser.error(f"--check {args.check}: must be a number of cells >= 1")
      seed = args.check_seed if args.check_seed is not None else int(time.time())
      sys.exit(0 if check_cells(part, args.out, args.check, seed, args.tolerance) else 1)
    try:
      os.makedirs(args.out, exist_ok=True)
    except OSError as error:
      raise BadInput(f"--out {args.out}: cannot make this directory ({error.strerror})") from None
    if not args.report_only:
      run_grid(part, args.out)
    report(study, args.out)  # every finished cell of the grid, whatever slice this process ran
  except BadInput as error:
    parser.error(str(error))


if __name__ == "__main__":
  main()
