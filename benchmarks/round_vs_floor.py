"""Samples (and, for the transformer, tokens) per second of the project's jitted round against a
plain-JAX floor and PyTorch, side by side in one process, on the same cores.

For one model, particle count N, period T (local steps per round) and batch size B:

  framework  the project's round (`psops_jax.swarm.make_round`, built by `psops_jax.run.build_run`):
             T local optax steps of all N particles + the PSO-PS sync, N particles on --devices
             devices (default N). Also a swarm of one particle on one device, its round run N times
             (the floor's resources), and, without --quick, the round with sync strategy "none"
             (the sync's share).
  floor      the fastest plain JAX loop for ONE particle (`common.build_floor`: same Flax model,
             same optax optimizer, same batches sliced from a uint8 shard on the device and turned
             into the model's inputs inside the step): a jitted step in a Python loop, and a jitted
             function of the T steps as the framework's round compiles them (--loop): unrolled
             (also in calls of max_unroll steps when the period exceeds --max-unroll, as the
             framework does) or in a `lax.scan`; the fastest, run N times one after another.
             Diagnostic variants draw the batches the way the framework does
             (`swarm.round_batch_indices`) and, unrolled without --quick, the way it did before
             (`swarm.batch_indices` at every step).
  torch      PyTorch CPU (eager), the same architecture (benchmarks/torch_models.py, checked: given
             the Flax weights it gives the same logits), starting from the floor's weights, the same
             batches and steps, the same optimizer (torch.optim.SGD or AdamW, gradients clipped by
             clip_grad_norm_ where the config clips); the N particles trained one after another,
             with torch's default thread count and with 1 thread (the faster is compared). Skipped,
             with a note, when torch is not installed (pip install -e ".[bench]").

The optimizer is every benchmark's (`common.OPTIMIZERS`): SGD 0.01 with momentum 0.9 for the image
models, configs/text_lm.py's for the transformer (AdamW, warmup and cosine, clipping to norm 1;
torch leaves the schedule out). The transformer's size, context, batch size, period and loop (scan)
default to configs/text_lm.py's default run (the tiny transformer, 64-byte windows, 8 windows per
step, 16 steps per round); --size picks another size. The sync is PSO-PS for every model (not
text_lm's DiLoCo): framework_pso_vs_none gives its share.

Samples per second = N x T x B / (seconds for the whole swarm's round); for the transformer a sample
is a window of `context` bytes, each a predicted token: tokens per second = samples per second x
context (the ratios are the same for both). Data: random uint8 images of the model's input shape,
or random bytes cut into windows and their next bytes (`common.random_dataset`); a particle's shard
holds train_size // N of them (--train-size; default the data set's size: digits 1,437, MNIST
60,000, the windows of configs/text_lm.py's text, Debian's fortunes), as in a real run, because the
framework's batch drawing costs grow with the shard. Fitness: `round_loss` unless --fitness probe
(framework only). All methods are timed in interleaved repetitions (a new random order each time; 7
with --quick, 21 without) after two warm-up rounds; ratios are paired repetition by repetition. A
method whose warm-up round took over 5x the median method's is timed in 3 repetitions only. On CPU
the N virtual devices are threads of this process and share its cores with the floor's and torch's
threads; the `cores` column is the process CPU time / wall time of each method.

--conv picks how the JAX models compute their convolutions (model.conv: lax, XLA's convolution, the
default; im2col, patches and one matrix product, psops_jax/conv.py; auto): the framework and the
floor use the same one, torch its own.

  python benchmarks/round_vs_floor.py --quick --model small_cnn --particles 8
  python benchmarks/round_vs_floor.py --model lenet5 --particles 8 --period 16
  python benchmarks/round_vs_floor.py --model transformer --particles 8     # text_lm's tiny LM
  python benchmarks/round_vs_floor.py --quick --model lenet5 --particles 8 --conv im2col

Writes benchmarks/results/round_vs_floor_<model>.json (round_vs_floor_<model>_<conv>.json with
--conv other than lax; --out) with the command, machine and load. The last printed line is one
JSON object (framework_vs_floor, framework_1dev_vs_floor, framework_vs_torch, floor_vs_torch, for
the transformer tokens_per_second of the framework, the floor and torch, config, machine).
"""

import itertools
import os

from benchmarks import common, harness, torch_models

FLOOR_VARIANTS = (
  "floor/step_loop",
  "floor/unrolled/slice",
  "floor/unrolled/chunks",
  "floor/scan/slice",
)
LABELS = {
  "framework/pso": "framework round, PSO-PS ({devices} dev)",
  "framework/none": "framework round, no sync ({devices} dev)",
  "framework/1dev": "framework, 1 particle on 1 dev, xN",
  "floor/step_loop": "floor: jitted step, Python loop",
  "floor/unrolled/slice": "floor: jitted unrolled round",
  "floor/unrolled/chunks": "floor: unrolled, calls of {max_unroll} steps",
  "floor/unrolled/once": "  unrolled + framework's batches",
  "floor/unrolled/per_step": "  unrolled + former per-step perm.",
  "floor/scan/slice": "floor: jitted scanned round",
  "floor/scan/once": "  scanned + framework's batches",
}
# name -> (a, b): samples/s of a over b, paired repetition by repetition ("floor" and "torch":
# their fastest variant).
RATIOS = {
  "framework_vs_floor": ("framework/pso", "floor"),
  "framework_1dev_vs_floor": ("framework/1dev", "floor"),
  "framework_vs_torch": ("framework/pso", "torch"),
  "floor_vs_torch": ("floor", "torch"),
  "framework_pso_vs_none": ("framework/pso", "framework/none"),
  # What the framework does differently from the floor, one thing at a time:
  "unrolled_round_vs_step_loop": ("floor/unrolled/slice", "floor/step_loop"),
  "scanned_round_vs_step_loop": ("floor/scan/slice", "floor/step_loop"),
  "chunked_round_vs_whole": ("floor/unrolled/chunks", "floor/unrolled/slice"),
  "framework_batch_drawing_vs_slice": ("floor/unrolled/once", "floor/unrolled/slice"),
  "framework_batch_drawing_vs_slice_scanned": ("floor/scan/once", "floor/scan/slice"),
  "former_per_step_permutation_vs_slice": ("floor/unrolled/per_step", "floor/unrolled/slice"),
}


def times(run, count: int):
  """A callable that runs `run` `count` times: N particles one after another."""
  return lambda: [run() for _ in range(count)]


def run_settings(args) -> dict:
  """The settings of `common.run_config` every method's run shares (the shard of one particle)."""
  return {
    "shard_size": args.train_size // args.particles,
    "fitness": args.fitness,
    "max_unroll": args.max_unroll,
    "loop": args.loop,
    "size": args.size if common.is_text(args.model) else "",
    "conv": args.conv,
  }


def framework_runners(args) -> tuple:
  """The framework's rounds: N particles on --devices devices (also without sync unless --quick)
  and one particle on one device, run N times. Returns (runners, compile seconds)."""
  build = lambda particles, devices, strategy: common.build_round(
    args.model, particles, devices, args.period, args.batch_size, strategy, **run_settings(args)
  )
  runners, compile_seconds = {}, {}
  for strategy in ("pso",) if args.quick else ("pso", "none"):
    runners[f"framework/{strategy}"], info = build(args.particles, args.devices, strategy)
    compile_seconds[f"framework/{strategy}"] = info["compile_seconds"]
  # Like for like with the floor: a swarm of ONE particle on ONE device, its round run N times.
  run, info = build(1, 1, "pso")
  runners["framework/1dev"] = times(run, args.particles)
  compile_seconds["framework/1dev"] = info["compile_seconds"]
  return runners, compile_seconds


def torch_runners(args, config, flax_model, shard) -> tuple:
  """N torch particles (each its own module, loaded with the floor's initial Flax params, and its
  optimizer: config.optimizer's, `torch_models.optimizer`, gradients clipped to its clip_norm)
  trained one after another on the floor's shard, with torch's default thread count and (if more)
  1 thread. Returns (runners, {name: set the thread count}, info)."""
  import jax
  import torch

  from psops_jax import tasks

  task = tasks.task_of(config.data.name)
  inputs, targets, mean, std = shard.train_inputs, shard.train_targets, shard.mean, shard.std
  x = tasks.model_inputs(task, jax.numpy.asarray(inputs[:1]), mean, std)
  params = flax_model.init(jax.random.key(0), x)["params"]
  check = torch_models.check_against_flax(args.model, flax_model, params, inputs[:64], mean, std)
  to_torch, per_batch = torch_models.model_inputs(args.model, mean, std)
  shard_x, shard_y = to_torch(inputs), torch.from_numpy(targets.astype("int64"))
  steps_per_epoch, batch = targets.shape[0] // args.batch_size, args.batch_size
  settings = config.optimizer.to_dict()
  swarm = []
  for _ in range(args.particles):
    module = torch_models.from_flax(args.model, flax_model, params)
    swarm.append((module, torch_models.optimizer(module.parameters(), **settings)))
  rounds = itertools.count()

  def step(module, opt, xb, yb):
    opt.zero_grad(set_to_none=True)
    logits = module(per_batch(xb))  # (B, classes) or, text, (B, T, 256): every target counts
    torch.nn.functional.cross_entropy(logits.flatten(0, -2), yb.flatten()).backward()
    if settings["clip_norm"] > 0:
      torch.nn.utils.clip_grad_norm_(module.parameters(), settings["clip_norm"])
    opt.step()

  def run():
    first = next(rounds) * args.period
    for module, opt in swarm:
      for t in range(args.period):
        start = ((first + t) % steps_per_epoch) * batch
        step(module, opt, shard_x[start : start + batch], shard_y[start : start + batch])

  threads = torch.get_num_threads()
  counts = {f"torch/{threads}threads": threads}
  if threads > 1:  # on a shared machine OpenMP's threads can lose more than they gain
    counts["torch/1thread"] = 1
  setup = {name: (lambda c=c: torch.set_num_threads(c)) for name, c in counts.items()}
  info = {"torch": torch.__version__, "threads": threads, **check}
  return {name: run for name in counts}, setup, info


def build(args) -> tuple:
  """Every method's runner. Returns (runners, setup, compile seconds, extra results)."""
  runners, compile_seconds = framework_runners(args)
  # The floor (and torch): the one-particle run's model, optimizer and shard.
  config = common.run_config(args.model, 1, 1, args.period, args.batch_size, **run_settings(args))
  model, tx, task, shard = common.floor_parts(config)
  floor, floor_compile, same = common.build_floor(
    model, tx, task, shard, args.period, args.batch_size, args.max_unroll, args.loop
  )
  for variant, run in floor.items():
    if not (args.quick and variant == "unrolled/per_step"):  # the former drawing: without --quick
      runners[f"floor/{variant}"] = times(run, args.particles)
      compile_seconds[f"floor/{variant}"] = floor_compile[variant]
  extra = {"proposed_batch_drawing_equals_framework": same}
  setup = {}
  if torch_models.available():
    torch_runs, setup, extra["torch_info"] = torch_runners(args, config, model, shard)
    runners.update(torch_runs)
  else:
    print(f"{torch_models.MISSING}; the torch rows are skipped")
    extra["torch_info"] = {"skipped": torch_models.MISSING}
  return runners, setup, compile_seconds, extra


def summarize(timed: dict, compile_seconds: dict, args) -> tuple:
  """Rows per method, the paired ratios, and the floor and torch variant compared (the fastest)."""
  total = common.samples(args.particles, args.period, args.batch_size)
  rows = {
    name: {
      "samples_per_second": harness.spread([total / s for s in t["seconds"]]),
      "ms_per_round": harness.spread([1000 * s for s in t["seconds"]]),
      "cpu_over_wall": t["cpu_over_wall"],
      "compile_seconds": compile_seconds.get(name),
    }
    for name, t in timed.items()
  }
  context = getattr(args, "context", None)
  for name, t in timed.items() if context else ():  # a text model: tokens = samples x context
    rows[name]["tokens_per_second"] = harness.spread([total * context / s for s in t["seconds"]])
  fastest = lambda names: min(names, key=lambda k: rows[k]["ms_per_round"]["median"], default=None)
  chosen = {
    "floor": fastest([k for k in FLOOR_VARIANTS if k in rows]),
    "torch": fastest([k for k in rows if k.startswith("torch/")]),
  }
  seconds = lambda k: timed[chosen.get(k, k)]["seconds"]
  measured = lambda k: chosen.get(k, k) in timed
  ratios = {  # samples/s of a over b = seconds of b over a
    key: harness.paired_ratio(seconds(b), seconds(a))
    for key, (a, b) in RATIOS.items()
    if measured(a) and measured(b)
  }
  return rows, ratios, chosen


def table(rows: dict, ratios: dict, chosen: dict, args) -> list:
  """The printed report: one line per method, then the ratios."""
  labels = {
    k: v.format(devices=args.devices, max_unroll=args.max_unroll) for k, v in LABELS.items()
  }
  for name in (k for k in rows if k.startswith("torch/")):  # torch/2threads -> "2 threads"
    labels[name] = "torch CPU eager, " + name.split("/")[1].replace("thread", " thread")
  tokens = any("tokens_per_second" in r for r in rows.values())
  lines = [
    f"{'method':34} {'samples/s':>10} {'[min, max]':>17}{' tokens/s' if tokens else ''} "
    f"{'ms/round':>9} {'cores':>5} {'compile s':>9} {'n':>2}"
  ]
  marks = {chosen["floor"]: " <- floor", chosen["torch"]: " <- torch"}
  for name in [k for k in labels if k in rows]:
    r, sps = rows[name], rows[name]["samples_per_second"]
    compiled = r["compile_seconds"] if r["compile_seconds"] is not None else "-"
    tps = f" {r['tokens_per_second']['median']:8.0f}" if tokens else ""
    lines.append(
      f"{labels[name]:34} {sps['median']:10.0f} [{sps['min']:7.0f}, {sps['max']:7.0f}]{tps} "
      f"{r['ms_per_round']['median']:9.1f} {r['cpu_over_wall']:5.2f} {compiled:>9} "
      f"{sps['n']:2d}{marks.get(name, '')}"
    )
  lines.append("")
  unit = "samples/s = tokens/s" if tokens else "samples/s"
  for key, s in ratios.items():
    lines.append(f"{f'{key} ({unit})':66} {s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]")
  if not chosen["torch"]:
    lines.append(f"{torch_models.MISSING}; the torch rows are skipped")
  return lines


HEADLINE_RATIOS = ("framework_vs_floor", "framework_1dev_vs_floor", "framework_vs_torch")
HEADLINE_RATIOS += ("floor_vs_torch",)


def headline(rows: dict, ratios: dict, chosen: dict) -> dict:
  """The summary's figures: the medians of the main paired ratios (None where torch is missing)
  and, for a text model, the median tokens/s of the framework, the floor and torch."""
  summary = {key: ratios.get(key, {}).get("median") for key in HEADLINE_RATIOS}
  if "tokens_per_second" in rows.get("framework/pso", {}):
    methods = {"framework": "framework/pso", **chosen}
    summary["tokens_per_second"] = {
      method: rows[name]["tokens_per_second"]["median"] if name else None
      for method, name in methods.items()
    }
  return summary


def main():
  parser = common.round_parser(__doc__, reps=(21, 7), text_models=True, conv=True)
  args = common.start(parser, "round vs floor")
  runners, setup, compile_seconds, extra = build(args)
  timed = harness.measure(runners, args.reps, warmup=2, seed=0, setup=setup, slow_factor=5)
  rows, ratios, chosen = summarize(timed, compile_seconds, args)
  lines = table(rows, ratios, chosen, args)
  print("\n".join(lines), flush=True)
  summary = {**headline(rows, ratios, chosen), "config": common.round_config(args)}
  details = {
    "floor_variant": chosen["floor"],
    "torch_variant": chosen["torch"],
    "rows": rows,
    "ratios": ratios,
    **extra,
    "timed_in_3_reps_only": [k for k, t in timed.items() if t["slow"]],
    "table": lines,
  }
  conv = "" if args.conv == "lax" else f"_{args.conv}"
  out = args.out or os.path.join(harness.RESULTS, f"round_vs_floor_{args.model}{conv}.json")
  harness.publish(out, summary, details)


if __name__ == "__main__":
  main()
