"""The communication clock: how long a recorded run would take on a given network (a projection).

On one machine's virtual devices communication is free, so measured seconds cannot say what a sync
method costs on a real network. A run records, at every evaluation, its local steps and the bytes
each particle sent (`communicated_bytes_per_particle`), and once its period, its strategy's
`Collective` (psops_jax/sync/) and its model's size. A `Profile` prices those:

  compute      t_step seconds per local step (one worker; the workers run in parallel)
  all_reduce   a ring over N workers, payload P: each sends and receives 2 (N - 1) / N P in
               2 (N - 1) messages:   2 (N - 1) latency + 2 (N - 1) / N P / bandwidth
  all_gather   every worker receives the other N - 1 payloads, (N - 1) / N of N P, in N - 1
               messages:             (N - 1) latency + (N - 1) P / bandwidth
  point_to_point  every worker sends its payload P to a peer and receives one (gossip; full
               duplex, all pairs at once): latency + P / bandwidth (a gossip with p peers sends
               P = p payloads, issued together: one latency)
  overlap      the fraction of every collective that runs behind compute (0: blocking)

A run is a sequence of events (a round of `period` local steps and its sync; for a per-step
collective, ssgd, one step and its all-reduce). With t_sync the collective of one event and t_c its
compute, an event lasts

  t_c + max(0, t_sync - hidden),  hidden = overlap t_sync + hidden_rounds t_c,

and at least t_sync when anything is hidden (the link carries one collective per event: a streaming
sync whose transfer outlasts a round stalls the pipeline). The payload of one event is the run's
bytes divided by its events, as a share of the run's model (`model_bytes`), priced at the
profile's model size: the run's communication pattern, transplanted onto the profile's model.

Absolute times of one machine mean nothing elsewhere, so a profile can also be one number, the
ratio r = t_step / (time to all-reduce the full float32 weights once): r = 10 is a fast datacenter
link, r = 0.01 a slow WAN for a large model. `ratio_profile(r)` measures time in those all-reduces.

Everything here is a projection: it leaves out stragglers, contention, the collective's real
algorithm on a given topology, and the real step time of an accelerator.
"""

from typing import NamedTuple

COLLECTIVE_KINDS = ("all_reduce", "all_gather", "point_to_point", "none")


class Collective(NamedTuple):
  """How a sync strategy's bytes travel (`SyncStrategy.collective`, psops_jax/sync/interface.py).

  kind:           all_reduce (a ring all-reduce of the payload), all_gather (every particle
                  receives every other's payload), point_to_point (every particle sends its
                  payload to one peer and receives one's) or none (no communication).
  per_step:       one collective per local step (ssgd's gradients) instead of one per round.
  hidden_rounds:  rounds of local steps the collective runs behind before its result is needed
                  (streaming's delay): a sync costs only what does not fit behind them.
  """

  kind: str = "all_reduce"
  per_step: bool = False
  hidden_rounds: int = 0


class Profile(NamedTuple):
  """The hardware a run is projected onto: one worker's local step, one link, N workers."""

  step_seconds: float  # t_step: compute time of one local step on one worker
  bandwidth: float  # bytes per second of one link, each direction
  latency: float  # seconds per message
  workers: int  # N, one particle per worker
  model_bytes: float  # the profile's model, float32 bytes: the runs' payloads are scaled to it
  overlap: float = 0.0  # share of every collective that runs behind compute
  # whether a collective issued beside the next round's steps (streaming's delay) runs behind them:
  # an assumption for the named profiles; measured false for CPU (studies/link_study.py)
  hides_rounds: bool = True
  note: str = ""  # what the figures are and where they come from


def collective_seconds(kind: str, payload: float, workers: int, bandwidth: float, latency: float):
  """The time of one collective of `payload` bytes per worker (formulas in the module doc)."""
  if kind == "none" or workers <= 1 or payload <= 0:
    return 0.0
  n = workers
  if kind == "all_reduce":
    return 2 * (n - 1) * latency + 2 * (n - 1) / n * payload / bandwidth
  if kind == "all_gather":
    return (n - 1) * latency + (n - 1) * payload / bandwidth
  if kind == "point_to_point":
    return latency + payload / bandwidth
  raise ValueError(f"collective {kind!r}: accepted values are {COLLECTIVE_KINDS}")


def event_seconds(compute: float, sync: float, overlap: float, hidden_rounds: int) -> float:
  """One round (t_c = `compute`) and its collective (t_sync = `sync`): t_c + max(0, t_sync -
  hidden), hidden = overlap t_sync + hidden_rounds t_c; at least t_sync when anything is hidden."""
  hidden = overlap * sync + hidden_rounds * compute
  seconds = compute + max(0.0, sync - hidden)
  return max(seconds, sync) if hidden > 0 else seconds


class RunShape(NamedTuple):
  """What the clock needs of a run besides its curve (all in its summary.json)."""

  period: int  # local steps per round
  model_bytes: float  # the run's full float32 weights (and batch statistics)
  kind: str = "all_reduce"  # the strategy's Collective
  per_step: bool = False
  hidden_rounds: int = 0


def run_shape(summary: dict) -> RunShape:
  """The RunShape of a summary.json (or a study row with the same keys)."""
  collective = summary["collective"]
  return RunShape(
    period=summary["period"],
    model_bytes=summary["model_bytes"],
    kind=collective["kind"],
    per_step=collective["per_step"],
    hidden_rounds=collective["hidden_rounds"],
  )


def projected_seconds(steps: int, sent_bytes: float, shape: RunShape, profile: Profile) -> float:
  """The time of a run's first `steps` local steps, during which each particle sent `sent_bytes`,
  on `profile` (module doc)."""
  if steps <= 0:
    return 0.0
  steps_per_event = 1 if shape.per_step else shape.period
  events = steps / steps_per_event
  payload = sent_bytes / events / shape.model_bytes * profile.model_bytes
  sync = collective_seconds(
    shape.kind, payload, profile.workers, profile.bandwidth, profile.latency
  )
  compute = steps_per_event * profile.step_seconds
  hidden_rounds = shape.hidden_rounds if profile.hides_rounds else 0
  return events * event_seconds(compute, sync, profile.overlap, hidden_rounds)


def ratio_profile(ratio: float, workers: int = 8) -> Profile:
  """r = t_step / t_allreduce(full float32 weights), bandwidth only: the unit of time is one
  all-reduce of the full weights (model_bytes 1, so a run's payload enters as its share of the
  weights)."""
  if not ratio > 0:
    raise ValueError(f"ratio={ratio}: must be a number > 0")
  wire = 2 * (workers - 1) / workers  # bytes on the wire per byte of payload, ring all-reduce
  return Profile(
    step_seconds=ratio,
    bandwidth=wire,
    latency=0.0,
    workers=workers,
    model_bytes=1.0,
    note=f"r = {ratio:g}: a local step lasts {ratio:g} all-reduces of the full weights",
  )


def _lm_step_seconds(params: float, tokens: int, flops: float, utilization: float) -> float:
  """A transformer's training step: 6 x params x tokens FLOPs at `utilization` of peak."""
  return 6 * params * tokens / (flops * utilization)


H100_BF16_FLOPS = 989e12  # dense bf16 peak of one H100 SXM
GBIT = 1e9 / 8  # bytes per second of 1 Gbit/s
LENET5_BYTES = 61_706 * 4  # psops_jax.models lenet5 on 28x28x1, float32
RESNET20_BYTES = (269_722 + 1_376) * 4  # resnet20 on 32x32x3: weights and BatchNorm statistics

LINKS = {  # name: (bandwidth in bytes/s, latency in s per message, what it is)
  "400gbit": (400 * GBIT, 5e-6, "400 Gbit/s links, 5 us per message (a datacenter)"),
  "1gbit": (1 * GBIT, 1e-3, "1 Gbit/s links, 1 ms per message (across sites)"),
}


def on_links(model: str, step_seconds: float, model_bytes: float, note: str) -> dict:
  """{model_h100_<link>: Profile} of one model on 8 workers over each of LINKS."""
  return {
    f"{model}_h100_{link}": Profile(
      step_seconds, bandwidth, latency, 8, model_bytes, note=f"{note}, 8 workers, {about}"
    )
    for link, (bandwidth, latency, about) in LINKS.items()
  }


PROFILES = {
  **on_links(
    "1b",
    _lm_step_seconds(1e9, 65_536, H100_BF16_FLOPS, 0.4),
    4e9,
    "1B-parameter transformer, 64K tokens per worker per step at 40% of an H100's 989 TFLOP/s "
    "(6 x params x tokens FLOPs)",
  ),
  **on_links(
    "lenet5",
    5e-4,
    LENET5_BYTES,
    "LeNet-5 (61,706 float32 weights), batch 32, 0.5 ms a step (launch-bound: an assumption, "
    "not a measurement)",
  ),
  **on_links(
    "resnet20",
    3e-3,
    RESNET20_BYTES,
    "ResNet-20 (269,722 float32 weights and 1,376 batch statistics), batch 128, 3 ms a step "
    "(an assumption, not a measurement)",
  ),
}


def full_allreduce_ratio(profile: Profile) -> float:
  """The profile's r: t_step over one all-reduce of its full model (latency included)."""
  sync = collective_seconds(
    "all_reduce", profile.model_bytes, profile.workers, profile.bandwidth, profile.latency
  )
  return profile.step_seconds / sync


def profile_from_name(name: str) -> Profile:
  """A named profile, or `ratio=R` (ratio_profile); ValueError naming the accepted names."""
  if name.startswith("ratio="):
    try:
      return ratio_profile(float(name.removeprefix("ratio=")))
    except ValueError:
      pass
  elif name in PROFILES:
    return PROFILES[name]
  raise ValueError(f"profile {name!r}: accepted values are {tuple(PROFILES)} or ratio=R (R > 0)")


def time_to_target(curve, target: float, shape: RunShape, profile: Profile, metric) -> float | None:
  """The projected time at the first evaluation whose figure reaches `target` (`metric.reaches`:
  >= for an accuracy, <= for bits per byte); None if none did. `curve`: [(steps, sent_bytes,
  figure)] in step order (a figure None: not measured, or diverged); `metric`: a
  psops_jax.headline.Metric."""
  for steps, sent, figure in curve:
    if figure is not None and metric.reaches(figure, target):
      return projected_seconds(steps, sent, shape, profile)
  return None
