"""A task's headline figure (its metric), and how the reports name and compare it. No JAX in it:
studies/study.py and studies/time_report.py import it (psops_jax/tasks.py re-exports the metrics).

  classification   final_test_accuracy   "test accuracy", higher is better
  language_model   final_bits_per_byte   "validation bits per byte", lower is better

The metric's `key` is the figure in summary.json and in the metrics.jsonl lines of the rounds that
evaluate (and so in a study's rows and curves). Every report reads it, compares with
`Metric.better`/`Metric.reaches` (never a bare > or <) and names its files with `report_file`:
the classification names (accuracy_vs_time.png, time_to_accuracy.md, ...) stay as they were, a
language model's are bits_per_byte_vs_time.png, time_to_bits_per_byte.md, ...
"""

from typing import NamedTuple

TASKS = ("classification", "language_model")


class Metric(NamedTuple):
  """A task's headline figure: `key` in summary.json (and in the metrics.jsonl lines of the rounds
  that evaluate), whether higher is better, and how reports name it."""

  key: str
  higher_is_better: bool
  label: str

  def better(self, a: float, b: float) -> bool:
    """Whether figure `a` is strictly better than `b`."""
    return a > b if self.higher_is_better else a < b

  def reaches(self, value: float, target: float) -> bool:
    """Whether `value` is at least as good as `target`."""
    return value >= target if self.higher_is_better else value <= target

  @property
  def direction(self) -> str:
    """'higher is better' or 'lower is better', as the reports' captions say it."""
    return "higher is better" if self.higher_is_better else "lower is better"

  @property
  def stem(self) -> str:
    """The figure's name in file names and short titles: the key without final_ and test_
    (accuracy, bits_per_byte)."""
    return self.key.removeprefix("final_").removeprefix("test_")

  @property
  def words(self) -> str:
    """The stem in titles and axis labels: accuracy, bits per byte."""
    return self.stem.replace("_", " ")


METRICS = {
  "classification": Metric("final_test_accuracy", True, "test accuracy"),
  "language_model": Metric("final_bits_per_byte", False, "validation bits per byte"),
}


def task_of(data_name: str) -> str:
  """The task of a data set: text is language modelling, every other data set classification."""
  return "language_model" if data_name == "text" else "classification"


def metric_of(record: dict) -> Metric:
  """The metric of a summary.json or of a study's row: its "task" field, else its "metric" field's
  key; a record made before either is a classification run's (its figures and curve are
  accuracies)."""
  if record.get("task") in METRICS:
    return METRICS[record["task"]]
  key = (record.get("metric") or {}).get("key")
  return next((m for m in METRICS.values() if m.key == key), METRICS["classification"])


def stated(metric: Metric) -> str:
  """What a report's caption adds after the figure's name: " (lower is better)" where lower is
  better; nothing for an accuracy (whose reports keep the wording they were committed with)."""
  return "" if metric.higher_is_better else f" ({metric.direction})"


def report_file(metric: Metric, pattern: str) -> str:
  """A report's file name: `pattern` with {} as the metric's stem, e.g. "time_to_{}.md" ->
  time_to_accuracy.md or time_to_bits_per_byte.md."""
  return pattern.format(metric.stem)


class Gap(NamedTuple):
  """How a report states the difference of two figures (variant - reference): times `scale`, with
  `digits` decimals, in `unit`."""

  scale: float
  digits: int
  unit: str


GAPS = {  # by metric key
  "final_test_accuracy": Gap(100, 1, "points"),  # x 100: points of accuracy
  "final_bits_per_byte": Gap(1, 3, "bits per byte"),  # the raw difference
}
