"""One training step's gradient (forward + backward) of a model, its convolutions computed five
ways, side by side in one process: `lax` (XLA's convolution, nn.Conv's own), `im2col` (model.conv
im2col: slices of the padded input side by side in the channels, then one matrix product,
psops_jax/conv.py), `im2col_input` (model.conv im2col_input: im2col for the first convolution, the
one that reads the model's input and needs no input gradient, lax for the others), `patches_op`
(the same matrix product on the patches of `lax.conv_general_dilated_patches`, which XLA computes
as a convolution with an identity kernel: the alternative im2col measured against the slices, not
offered as a model.conv value), and `shifted_sum` (a convolution with one input channel as a sum
of shifted inputs times kernel rows, no matrix product; the others stay lax's: also not offered).
And, for the models' max pooling, `lax/nn_max_pool` and `im2col/nn_max_pool`: the same two
convolutions with flax's nn.max_pool (reduce-window, select-and-scatter) in place of
psops_jax/pool.py's, which gives the same values and gradients bit for bit (tests/test_pool.py).

Each method is a jitted value_and_grad of the model's mean cross-entropy on a batch of random
inputs, called in blocks of about 0.2 s, in interleaved repetitions (a new random order each time);
the ratios are paired repetition by repetition (benchmarks/harness.py).

  python benchmarks/conv_cpu.py                       # lenet5, batch 32
  python benchmarks/conv_cpu.py --model small_cnn --batch-size 32 --reps 15

Writes benchmarks/results/conv_cpu_<model>.json (--out) with the command, machine and load.
"""

import argparse
import contextlib
import os

from benchmarks import common, harness


def patches_op_conv(lhs, rhs, window_strides, padding, dimension_numbers=None, **options):
  """nn.Conv's convolution as lax.conv_general_dilated_patches (features ordered channel, kernel
  row, kernel column) times the kernel reshaped to match."""
  from jax import lax

  kh, kw, cin, cout = rhs.shape
  cols = lax.conv_general_dilated_patches(
    lhs, (kh, kw), window_strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  kernel = rhs.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)
  return lax.dot_general(cols, kernel, (((3,), (0,)), ((), ())), precision=options.get("precision"))


def shifted_sum_conv(lhs, rhs, window_strides, padding, dimension_numbers=None, **options):
  """A convolution with one input channel (LeNet-5's first) as the sum over the kernel positions
  (i, j) of the input shifted by (i, j) times the kernel's row w[i, j, 0, :] (elementwise, no
  matrix product: im2col's product has K = kh kw = 25 and N = 6 there); other convolutions stay
  lax's. The alternative measured against im2col (slower: benchmarks/README.md), not offered as a
  model.conv value."""
  from jax import lax

  from psops_jax import conv

  kh, kw, cin, cout = rhs.shape
  if cin != 1:
    return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, dimension_numbers=dimension_numbers, **options
    )
  pads = conv._pads(padding, lhs.shape[1:3], (kh, kw), tuple(window_strides))
  views = conv.shifted_inputs(lhs, (kh, kw), tuple(window_strides), pads)
  return sum(view * row for view, row in zip(views, rhs.reshape(kh * kw, cout)))


def nn_max_pool(x, window):
  """flax's nn.max_pool over non-overlapping windows: what pool.max_pool replaces."""
  import flax.linen as nn

  return nn.max_pool(x, window, window)


@contextlib.contextmanager
def pooling(function):
  """While inside: the models' max pooling calls `function` (pool.max_pool patched)."""
  from psops_jax import pool

  original = pool.max_pool
  pool.max_pool = function
  try:
    yield
  finally:
    pool.max_pool = original


@contextlib.contextmanager
def convolutions(function):
  """While inside: the models' `lax` convolutions call `function` (conv.function patched)."""
  from psops_jax import conv

  original = conv.function
  conv.function = lambda name, reads_input=False: (
    function if conv.resolve(name) == "lax" else original(name, reads_input)
  )
  try:
    yield
  finally:
    conv.function = original


def gradient_step(model_name: str, conv: str, batch_size: int, function=None, max_pool=None):
  """A callable that computes the gradient of the model's loss on one batch and blocks, compiled
  ahead of time with model.conv `conv` (its `lax` convolutions calling `function` and its pooling
  `max_pool`, if given)."""
  import jax
  import optax

  from psops_jax import models

  model = models.create(model_name, conv=conv)
  x = jax.random.normal(jax.random.key(1), (batch_size,) + common.INPUT_SHAPES[model_name])
  y = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
  params = model.init(jax.random.key(0), x)["params"]

  def loss(p):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  with (
    convolutions(function) if function else contextlib.nullcontext(),
    pooling(max_pool) if max_pool else contextlib.nullcontext(),
  ):
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params).compile()
  return lambda: jax.block_until_ready(compiled(params))


# name: (model.conv, its lax convolution's replacement, the max pooling's replacement)
METHODS = {
  "lax": ("lax", None, None),
  "im2col": ("im2col", None, None),
  "im2col_input": ("im2col_input", None, None),
  "patches_op": ("lax", patches_op_conv, None),
  "shifted_sum": ("lax", shifted_sum_conv, None),
  "lax/nn_max_pool": ("lax", None, nn_max_pool),
  "im2col/nn_max_pool": ("im2col", None, nn_max_pool),
}
RATIOS = {
  "im2col_vs_lax": ("im2col", "lax"),
  "im2col_input_vs_lax": ("im2col_input", "lax"),
  "patches_op_vs_lax": ("patches_op", "lax"),
  "shifted_sum_vs_lax": ("shifted_sum", "lax"),
  "max_pool_vs_nn_with_lax": ("lax", "lax/nn_max_pool"),
  "max_pool_vs_nn_with_im2col": ("im2col", "im2col/nn_max_pool"),
}


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--model", default="lenet5", choices=["lenet5", "small_cnn"])
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--reps", type=int, default=11)
  parser.add_argument("--out", default="")
  args = parser.parse_args()
  print(
    f"conv cpu: {args.model}, batch {args.batch_size}, {args.reps} reps; {os.cpu_count()} cores, "
    f"load average {harness.load_average()[0]:.2f}",
    flush=True,
  )
  runners = {}
  for name, (conv, function, max_pool) in METHODS.items():
    step = gradient_step(args.model, conv, args.batch_size, function, max_pool)
    runners[name] = harness.repeat(step, harness.calls_for(step, 0.2), max_seconds=1.0)
  timed = harness.measure(runners, args.reps, warmup=1, seed=0)
  rows = {name: harness.spread([1000 * s for s in t["seconds"]]) for name, t in timed.items()}
  ratios = {  # speed of a over b = seconds of b over a
    key: harness.paired_ratio(timed[b]["seconds"], timed[a]["seconds"])
    for key, (a, b) in RATIOS.items()
  }
  lines = [f"{'method':20} {'ms/step':>8} {'[min, max]':>17}"]
  for name, r in rows.items():
    lines.append(f"{name:20} {r['median']:8.3f} [{r['min']:7.3f}, {r['max']:7.3f}]")
  for key, r in ratios.items():
    lines.append(f"{key + ' (speed)':36} {r['median']:.3f} [{r['min']:.3f}, {r['max']:.3f}]")
  print("\n".join(lines), flush=True)
  summary = {key: r["median"] for key, r in ratios.items()}
  summary["config"] = {"model": args.model, "batch_size": args.batch_size, "reps": args.reps}
  out = args.out or os.path.join(harness.RESULTS, f"conv_cpu_{args.model}.json")
  harness.publish(out, summary, {"ms_per_step": rows, "ratios": ratios, "table": lines})


if __name__ == "__main__":
  main()
