"""Run a study over shaped network links, and set each run's measured time to accuracy beside the
communication clock's projection of the same run at the measured link.

  python studies/link_study.py --study configs/study_link.py --out studies/results/study_link
  python studies/link_study.py --study configs/study_link.py --out DIR --report-only

Every cell (link rate x variant x seed) is one multi-process run started by
scripts/launch_shaped.py in OUT/runs/<variant>_<rate>_s<seed>; a finished cell (summary.json or
diverged.json) is not run again, so an interrupted study resumes. The report (OUT/report.md,
OUT/results.json, OUT/measured_vs_projected.png) gives per cell:

  measured r        t_step / t_allreduce: t_step the seconds per local step of the link's
                    calibration cell (no communication), t_allreduce the all-reduce of the weights
                    the cell measured before its first round (psops_jax/link.py)
  measured          train seconds at the first evaluation at or above each target
  projected         psops_jax/clock.py's time of the same steps and bytes on a Profile calibrated
                    to the cell's link (latency and bandwidth that reproduce its measured fixed cost
                    and all-reduce) and t_step
  ratio             measured / projected

Needs root (scripts/launch_shaped.py); exits 2 with a message without it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from psops_jax import clock, headline, host_devices
from studies import study as study_lib
from studies import time_report

REPO = study_lib.REPO
LAUNCH = os.path.join(REPO, "scripts", "launch_shaped.py")
DISAGREE = 0.2  # |ratio - 1| above this is a disagreement to explain


def cells(study):
  """(name, rate, variant, seed, overrides) of every run."""
  for rate in study.rates:
    for variant, fields in study.variants.items():
      for seed in study.seeds:
        overrides = {**study.overrides, **fields, "seed": seed}
        yield f"{variant}_{rate}_s{seed}", rate, variant, seed, overrides


def command(study, rate: str, workdir: str, overrides: dict) -> list:
  """launch_shaped.py at `rate`, study.processes x study.devices_per_process, train.py after."""
  return [
    sys.executable,
    LAUNCH,
    "--rate",
    rate,
    "--",
    "--processes",
    str(study.processes),
    "--devices-per-process",
    str(study.devices_per_process),
    "--",
    "--config",
    os.path.join(REPO, study.base),
    "--workdir",
    workdir,
    *(f"--config.{k}={v}" for k, v in overrides.items()),
  ]


def run_cells(study, out: str) -> None:
  todo = list(cells(study))
  for i, (name, rate, _, _, overrides) in enumerate(todo):
    workdir = os.path.join(out, "runs", name)
    if study_lib.is_finished(workdir):
      continue
    print(f"[{i + 1}/{len(todo)}] {name}", flush=True)
    t0, load_at_start = time.time(), os.getloadavg()[0]
    env = host_devices.child_environment()
    done = subprocess.run(
      command(study, rate, workdir, overrides), cwd=REPO, env=env, capture_output=True, text=True
    )
    if done.returncode == 2 and "launch_shaped.py:" in done.stderr:
      raise study_lib.BadInput(done.stderr.strip().splitlines()[-1])
    load = {"start": load_at_start, "end": os.getloadavg()[0]}  # the 1-minute load average
    with open(os.path.join(workdir, "load.json"), "w") as f:
      json.dump(load, f)
    last = (done.stdout.strip().splitlines() or [""])[-1]
    print(f"  exit {done.returncode}: {last[:120]} [{time.time() - t0:.0f}s wall]", flush=True)


def load_summary(workdir: str) -> dict | None:
  path = os.path.join(workdir, "summary.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


CLASSIFICATION = headline.METRICS["classification"]


def measured_profile(
  link: dict, step_seconds: float, workers: int, hides_rounds: bool = False
) -> clock.Profile:
  """The clock's Profile whose all-reduce of P bytes takes t_fixed + (t(P_model) - t_fixed)
  P / P_model, as the link measured: latency t_fixed / (2 (N - 1)), bandwidth 2 (N - 1) / N
  P_model / (t(P_model) - t_fixed). `hides_rounds`: whether a collective issued beside the next
  round's steps runs behind them; on CPU it mostly does not (docs/RESULTS.md), so not by default."""
  n = workers
  spread = link["allreduce_seconds"] - link["fixed_seconds"]
  return clock.Profile(
    step_seconds=step_seconds,
    bandwidth=2 * (n - 1) / n * link["payload_bytes"] / spread,
    latency=link["fixed_seconds"] / (2 * (n - 1)),
    workers=n,
    model_bytes=link["payload_bytes"],
    hides_rounds=hides_rounds,
    note="calibrated to the cell's measured link",
  )


def seconds_to(points, target: float, metric=CLASSIFICATION) -> tuple[int, float] | None:
  """(steps, train seconds) at the first evaluation whose figure reaches the target
  (`metric.reaches`: accuracy >= target), or None."""
  for steps, _, seconds, figure in points:
    if figure is not None and metric.reaches(figure, target):
      return steps, seconds
  return None


def cell_row(study, out, name, rate, variant, seed, step_seconds) -> dict:
  """One cell's measured and projected times (module doc)."""
  workdir = os.path.join(out, "runs", name)
  summary = load_summary(workdir)
  row = {"cell": name, "rate": rate, "variant": variant, "seed": seed, "finished": bool(summary)}
  if not summary:
    return row
  load_path = os.path.join(workdir, "load.json")
  if os.path.exists(load_path):
    with open(load_path) as f:
      row["load"] = json.load(f)
  link = summary["link"]
  profile = measured_profile(link, step_seconds, summary["num_particles"], study.hides_rounds)
  points = time_report.evaluations(workdir, summary)
  curve = [(steps, sent, figure) for steps, sent, _, figure in points]
  metric = headline.metric_of(summary)
  shape = clock.run_shape(summary)
  row.update(
    measured_r=step_seconds / link["allreduce_seconds"],
    allreduce_seconds=link["allreduce_seconds"],
    fixed_seconds=link["fixed_seconds"],
    train_seconds=summary["train_seconds"],
    final_test_accuracy=summary["final_test_accuracy"],
    projected_total=clock.projected_seconds(
      summary["steps"], summary["communicated_bytes_per_particle"], shape, profile
    ),
    collective=summary["collective"],
  )
  for target in study.targets:
    reached = seconds_to(points, target, metric)
    projected = clock.time_to_target(curve, target, shape, profile, metric)
    row[f"measured_{target}"] = reached[1] if reached else None
    row[f"projected_{target}"] = projected
  return row


def rows_of(study, out) -> list:
  """Every cell's row; t_step per rate from its calibration cell (seed by seed, their median)."""
  step = {}
  for rate in study.rates:
    calibration = [
      load_summary(os.path.join(out, "runs", f"{study.calibration}_{rate}_s{seed}"))
      for seed in study.seeds
    ]
    seconds = [s["train_seconds"] / s["steps"] for s in calibration if s]
    step[rate] = statistics.median(seconds) if seconds else None
  return [
    cell_row(study, out, name, rate, variant, seed, step[rate])
    for name, rate, variant, seed, _ in cells(study)
    if step[rate] is not None
  ]


def fmt(x) -> str:
  return "—" if x is None else f"{x:.3g}"


def ratio_text(measured, projected) -> str:
  if measured is None or not projected:
    return "—"
  ratio = measured / projected
  return f"**{ratio:.2f}**" if abs(ratio - 1) > DISAGREE else f"{ratio:.2f}"


def markdown(study, rows) -> str:
  target = study.targets[-1]
  lines = [
    "# Measured against projected time (studies/link_study.py)",
    "",
    f"2 processes x 2 devices over a shaped loopback, {len(study.seeds)} seed(s). Seconds of "
    "training (evaluations excluded) to the first evaluation at or above the target; projected: "
    "psops_jax/clock.py on the cell's measured link and the link's measured t_step. In bold: "
    f"measured / projected off by more than {DISAGREE:.0%}. load: the machine's 1-minute load "
    "average at the cell's start and end (2 cores: above 2, other work shared them).",
    "",
    "| rate | variant | measured r | t_allreduce (ms) | final acc. | train s | projected s "
    f"| ratio | to {study.targets[0]}: measured | projected | ratio | to {target}: measured "
    "| projected | ratio | load |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    if not r["finished"]:
      lines.append(f"| {r['rate']} | {r['variant']} | not finished |" + " |" * 12)
      continue
    cells = [r["rate"], r["variant"], fmt(r["measured_r"]), fmt(1e3 * r["allreduce_seconds"])]
    cells += [f"{r['final_test_accuracy']:.4f}", fmt(r["train_seconds"])]
    cells += [fmt(r["projected_total"]), ratio_text(r["train_seconds"], r["projected_total"])]
    for t in study.targets:
      measured, projected = r[f"measured_{t}"], r[f"projected_{t}"]
      cells += [fmt(measured), fmt(projected), ratio_text(measured, projected)]
    load = r.get("load")
    cells.append(f"{load['start']:.1f}-{load['end']:.1f}" if load else "—")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot(rows, path: str) -> None:
  """Measured against projected total train seconds, log-log, one colour per rate."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 5))
  done = [r for r in rows if r["finished"]]
  for rate in sorted({r["rate"] for r in done}):
    mine = [r for r in done if r["rate"] == rate]
    ax.scatter([r["projected_total"] for r in mine], [r["train_seconds"] for r in mine], label=rate)
    for r in mine:
      ax.annotate(r["variant"], (r["projected_total"], r["train_seconds"]), fontsize=7)
  values = [v for r in done for v in (r["projected_total"], r["train_seconds"])]
  if values:
    low, high = min(values) / 1.5, max(values) * 1.5
    ax.plot([low, high], [low, high], "k--", linewidth=0.8, label="measured = projected")
    ax.set_xscale("log")
    ax.set_yscale("log")
  ax.set_xlabel("projected train seconds (psops_jax/clock.py, measured link)")
  ax.set_ylabel("measured train seconds")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(study, out: str) -> str:
  rows = rows_of(study, out)
  text = markdown(study, rows)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(text)
  plot(rows, os.path.join(out, "measured_vs_projected.png"))
  return text


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--study", required=True, help="a study config, e.g. configs/study_link.py")
  parser.add_argument("--out", required=True, help="the study's directory")
  parser.add_argument("--report-only", action="store_true", help="no runs, only the report")
  args = parser.parse_args(argv)
  try:
    study = study_lib.load_study(args.study)
    os.makedirs(args.out, exist_ok=True)
    if not args.report_only:
      run_cells(study, args.out)
    print(report(study, args.out))
  except study_lib.BadInput as e:
    print(f"link_study.py: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
