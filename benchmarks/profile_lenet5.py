"""Where XLA:CPU loses to PyTorch CPU on one LeNet-5 training step (batch 32, 28x28x1, SGD momentum 0.9).

benchmarks/throughput.py found a plain jitted JAX step of LeNet-5 at about half the samples/s of torch
eager on this CPU. This script takes the step apart and times each piece alone, JAX (jax.jit, compiled
once, every call waited for) against torch (eager), side by side in one process:

  1. forward, layer by layer, with the shapes the model sees (psops_jax/models.py's LeNet5; the layers
     below are composed and checked to give LeNet5's logits): conv0 (5x5, 1->6, SAME) + bias + ReLU,
     pool0 (2x2 max), conv1 (5x5, 6->16, VALID) + bias + ReLU, pool1, dense0 (400->120) + ReLU,
     dense1 (120->84) + ReLU, dense2 (84->10). Torch runs them under torch.no_grad().
  2. each conv layer's backward alone, given the input, the weights and a cotangent of the conv output:
     "dW" = gradient w.r.t. kernel and bias, "dX" = gradient w.r.t. the input. JAX: jax.vjp of the
     Flax layer (the forward conv is dead code and removed); torch: aten.convolution_backward, the op
     autograd calls, with the same output mask. The training step needs conv0 dW, conv1 dX and conv1 dW
     (conv0 dX is the gradient w.r.t. the data: neither framework computes it in the step; shown for
     reference).
  3. the whole model: forward (torch no_grad), forward + backward (jax.value_and_grad of the mean
     cross-entropy w.r.t. the params; torch: zero_grad, loss, backward), and the training step
     (+ optax.sgd(0.01, momentum=0.9), params and optimizer state donated and carried; torch:
     torch.optim.SGD(lr=0.01, momentum=0.9)). The inputs are float32 images (already normalised).
  4. "dispatch" = one tiny op (x + 1 on 8 floats): the fixed cost of one jitted call against one torch op.

Timing: each line is a block of n calls (n chosen so a block lasts ~20 ms), after one untimed call;
us = block seconds / n. All blocks of all lines and frameworks run in interleaved repetitions (--reps,
new random order each repetition, 5 ms pause between blocks so torch's OpenMP threads stop spinning);
the table gives the median over repetitions and [min, max], and the ratio jax/torch taken repetition by
repetition (paired), median [min, max]. Torch runs with torch.set_num_threads(1) and (2) (--threads
picks one); JAX/XLA:CPU uses its own intra-op thread pool (one thread per core, here 2), which no
option of this script changes. The column "jax cores" is process CPU seconds / wall seconds during the
JAX blocks.

How to read it: ratio > 1 means JAX is slower. The conclusion takes the step's time difference
D = JAX step - torch step (the torch thread count given) and attributes it to the layers: for each
piece of the step, (JAX us - torch us) / D, and the rest (ReLU / pool / dense backward, loss, optimizer,
fusion effects) as the remainder. Pieces timed alone do not add up exactly to the step (XLA fuses bias
and ReLU into neighbours, caches are warm, each call pays its own dispatch), so the fractions are an
attribution, not an exact decomposition.

Which convolution implementation XLA:CPU uses: the optimized HLO of the compiled training step
(`jax.jit(step).lower(...).compile().as_text()`) is parsed; a `convolution` instruction left in the
entry computation runs as XLA:CPU's ConvolutionThunk, which calls Eigen's spatial convolution (a
`convolution` that Eigen cannot take would instead be emitted as a naive loop kernel); a convolution
inside a `fusion` with backend_config kind "__ynn_fusion" / "__xnn_fusion" / "__onednn_fusion" runs in
YNNPACK / XNNPACK / oneDNN; a custom-call names its target. One child process runs a training step with
TF_CPP_VMODULE=convolution_thunk=3 and records the convolutions that ConvolutionThunk logged (runtime
evidence of the Eigen path), and one torch child runs the layers with ONEDNN_VERBOSE=1 to record
torch's convolution implementation.

XLA flags: each flag of FLAG_VARIANTS exists in the installed jaxlib (its name is a string of
jaxlib/libjax_common.so: `strings libjax_common.so | grep xla_cpu_`; the script checks it and skips a
missing one). Flags are read once per process, so each variant runs in a child process (--child) that
times the conv pieces and the step; the children run in interleaved repetitions (--flag-reps, shuffled),
and each variant is compared with the default child of the same repetition (paired ratio of the child
medians, < 1 = the flag makes it faster). The child also reports what the flag changed in the HLO.

  python benchmarks/profile_lenet5.py                  # torch with 1 and 2 threads, 15 repetitions
  python benchmarks/profile_lenet5.py --reps 9 --threads 2 --flag-reps 2

Writes benchmarks/results/profile_lenet5.json (--out): machine (platform, cpus, jax, torch, load
average before and after), rows, ratios, conclusion, HLO implementation summary, flag results, table.
Keep the run short: on 2 shared cores the defaults take about 3 minutes.
"""

import argparse
import json
import math
import os
import platform
import random
import re
import resource
import statistics
import subprocess
import sys
import time

import common

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BATCH = 32
TARGET_BLOCK_SECONDS = 0.02

# XLA:CPU flags that could change how the convolutions run (each checked to be in the jaxlib binary).
FLAG_VARIANTS = {
    "default": "",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_conv_only": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
}
# The pieces a child times (a subset of the main lines: the convolutions and the step).
CHILD_LINES = ("conv0 fwd", "conv1 fwd", "conv0 bwd dW", "conv1 bwd dX", "conv1 bwd dW", "train step")

# Lines in table order: (name, section). The step needs every line but "conv0 bwd dX" and "dispatch".
LINES = [("conv0 fwd", "layer forward"), ("pool0 fwd", "layer forward"),
         ("conv1 fwd", "layer forward"), ("pool1 fwd", "layer forward"),
         ("dense0 fwd", "layer forward"), ("dense1 fwd", "layer forward"),
         ("dense2 fwd", "layer forward"),
         ("conv0 bwd dW", "conv backward"), ("conv0 bwd dX", "conv backward"),
         ("conv1 bwd dX", "conv backward"), ("conv1 bwd dW", "conv backward"),
         ("forward", "whole model"), ("forward+backward", "whole model"),
         ("train step", "whole model"), ("dispatch", "overhead")]
STEP_PIECES = ["conv0 fwd", "pool0 fwd", "conv1 fwd", "pool1 fwd", "dense0 fwd", "dense1 fwd",
               "dense2 fwd", "conv0 bwd dW", "conv1 bwd dX", "conv1 bwd dW"]

# Conv layers of models.LeNet5: name -> (Flax param key, features, padding as Flax and as torch).
CONVS = {"conv0": ("Conv_0", 6, "SAME", 2), "conv1": ("Conv_1", 16, "VALID", 0)}


def cpu_seconds() -> float:
  """CPU seconds (user + system) used by this process so far."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def random_batch(seed: int = 0):
  """A float32 batch (32, 28, 28, 1) of already-normalised images, integer labels, and a numpy RNG."""
  import numpy as np
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((BATCH, 28, 28, 1), dtype=np.float32)
  y = rng.integers(0, 10, (BATCH,)).astype(np.int32)
  return x, y, rng


# --------------------------------------------------------------------------------------------------
# JAX.


def jax_layers():
  """The layers of models.LeNet5 in order: [(name, Flax param key or None, fn(params, a))]."""
  import flax.linen as nn

  def conv(features, padding):
    module = nn.Conv(features, (5, 5), padding=padding)
    return lambda p, a: nn.relu(module.apply({"params": p}, a))

  def dense(features, relu=True):
    module = nn.Dense(features)
    return lambda p, a: (nn.relu if relu else (lambda v: v))(
        module.apply({"params": p}, a.reshape((a.shape[0], -1))))

  pool = lambda p, a: nn.max_pool(a, (2, 2), (2, 2))
  return [("conv0", "Conv_0", conv(6, "SAME")), ("pool0", None, pool),
          ("conv1", "Conv_1", conv(16, "VALID")), ("pool1", None, pool),
          ("dense0", "Dense_0", dense(120)), ("dense1", "Dense_1", dense(84)),
          ("dense2", "Dense_2", dense(10, relu=False))]


def conv_backward_fns(name: str):
  """JAX functions (p, a, g) -> gradient w.r.t. the conv layer's params (dW) / its input (dX), g being
  a cotangent of the conv output before the ReLU."""
  import flax.linen as nn
  import jax
  _, features, padding, _ = CONVS[name]
  module = nn.Conv(features, (5, 5), padding=padding)
  apply = lambda p, a: module.apply({"params": p}, a)

  def d_w(p, a, g):
    return jax.vjp(lambda q: apply(q, a), p)[1](g)[0]

  def d_x(p, a, g):
    return jax.vjp(lambda b: apply(p, b), a)[1](g)[0]

  return {"dW": d_w, "dX": d_x}


def build_jax(x_np, y_np, rng, only=None):
  """Compile the JAX lines. Returns ({line: call}, params, layer inputs, cotangents, step HLO text);
  each call runs one jitted call and waits for it. `only`: the subset of lines to build."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from psops_jax import models

  model = models.LeNet5()
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  params = model.init(jax.random.key(0), x[:1])["params"]
  layers = jax_layers()

  # The layer inputs the model sees, and a check that the layers compose to models.LeNet5.
  inputs, a = {}, x
  for name, key, fn in layers:
    inputs[name] = a
    a = fn(params[key] if key else None, a)
  max_diff = float(jnp.abs(a - model.apply({"params": params}, x)).max())
  assert max_diff < 1e-4, f"layers differ from models.LeNet5: max |logit diff| = {max_diff}"

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), yb).mean()

  tx = optax.sgd(0.01, momentum=0.9)

  def train_step(p, s, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  want = lambda line: only is None or line in only
  calls, cotangents = {}, {}

  def add(line, fn, *args):
    if want(line):
      compiled = jax.jit(fn).lower(*args).compile()
      calls[line] = lambda: jax.block_until_ready(compiled(*args))

  for name, key, fn in layers:
    add(f"{name} fwd", fn, params[key] if key else None, inputs[name])
  for name, (key, features, padding, _) in CONVS.items():
    out_hw = 28 if name == "conv0" else 10
    g = jnp.asarray(rng.standard_normal((BATCH, out_hw, out_hw, features), dtype=np.float32))
    cotangents[name] = g
    for kind, fn in conv_backward_fns(name).items():
      add(f"{name} bwd {kind}", fn, params[key], inputs[name], g)
  add("forward", lambda p, xb: model.apply({"params": p}, xb), params, x)
  add("forward+backward", jax.value_and_grad(loss_fn), params, x, y)
  tiny = jnp.zeros((8,), jnp.float32)
  add("dispatch", lambda v: v + 1.0, tiny)

  step_text = None
  if want("train step"):
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, tx.init(params), x, y).compile()
    step_text = step.as_text()
    copy = lambda tree: jax.tree.map(lambda v: jnp.array(v, copy=True), tree)
    state = [copy(params), tx.init(copy(params))]  # own buffers: the step donates them

    def run_step():
      state[0], state[1], loss = step(state[0], state[1], x, y)
      loss.block_until_ready()

    calls["train step"] = run_step
  return calls, params, inputs, cotangents, step_text


# --------------------------------------------------------------------------------------------------
# PyTorch.


def build_torch(params, inputs, cotangents, x_np, y_np):
  """The torch lines, same weights, inputs and cotangents as JAX. Returns {line: call} and the max
  |logit difference| against JAX."""
  import numpy as np
  import torch
  import torch.nn.functional as F
  from throughput import load_flax_params, torch_modules

  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))
  module_cls = torch_modules()["lenet5"]
  net = module_cls()
  load_flax_params(net, params, (5, 5, 16))
  x, y = nchw(x_np), torch.from_numpy(y_np.astype(np.int64))
  # Flattened dense inputs: torch flattens (C, H, W); load_flax_params permuted dense0's rows for it.
  flat = lambda a: nchw(a).flatten(1) if np.asarray(a).ndim == 4 else torch.from_numpy(np.array(a))
  a = {name: nchw(inputs[name]) for name in ("conv0", "pool0", "conv1", "pool1")}
  a.update({name: flat(inputs[name]) for name in ("dense0", "dense1", "dense2")})

  def no_grad(fn):
    def run():
      with torch.no_grad():
        fn()
    return run

  calls = {
      "conv0 fwd": no_grad(lambda: torch.relu(net.conv0(a["conv0"]))),
      "pool0 fwd": no_grad(lambda: F.max_pool2d(a["pool0"], 2, 2)),
      "conv1 fwd": no_grad(lambda: torch.relu(net.conv1(a["conv1"]))),
      "pool1 fwd": no_grad(lambda: F.max_pool2d(a["pool1"], 2, 2)),
      "dense0 fwd": no_grad(lambda: torch.relu(net.dense0(a["dense0"]))),
      "dense1 fwd": no_grad(lambda: torch.relu(net.dense1(a["dense1"]))),
      "dense2 fwd": no_grad(lambda: net.dense2(a["dense2"])),
  }
  for name, (_, features, _, pad) in CONVS.items():
    layer, g = getattr(net, name), nchw(cotangents[name])
    for kind, mask in (("dW", [False, True, True]), ("dX", [True, False, False])):
      calls[f"{name} bwd {kind}"] = no_grad(
          lambda layer=layer, g=g, inp=a[name], mask=mask, pad=pad, features=features:
          torch.ops.aten.convolution_backward(g, inp, layer.weight, [features], [1, 1], [pad, pad],
                                              [1, 1], False, [0, 0], 1, mask))
  calls["forward"] = no_grad(lambda: net(x))

  def forward_backward():
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()

  calls["forward+backward"] = forward_backward
  trained = module_cls()
  trained.load_state_dict(net.state_dict())
  opt = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)

  def train_step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(trained(x), y).backward()
    opt.step()

  calls["train step"] = train_step
  tiny = torch.zeros(8)
  calls["dispatch"] = no_grad(lambda: tiny + 1.0)
  with torch.no_grad():
    logits = net(x).numpy()
  return calls, logits


# --------------------------------------------------------------------------------------------------
# Timing.


def calibrate(call) -> int:
  """Calls per block so that a block lasts about TARGET_BLOCK_SECONDS (at least 2, at most 400)."""
  call()
  best = math.inf
  for _ in range(3):
    t0 = time.perf_counter()
    call()
    best = min(best, time.perf_counter() - t0)
  return max(2, min(400, math.ceil(TARGET_BLOCK_SECONDS / best)))


def measure(blocks: dict, reps: int, seed: int = 0) -> dict:
  """Time every block `reps` times, interleaved (a new random order each repetition).

  blocks: {key: (setup, call, n)}; a block runs setup(), one untimed call, then n timed calls.
  Returns {key: {"us": [per-call microseconds, one per repetition], "cores": [...]}}.
  """
  order = list(blocks)
  rng = random.Random(seed)
  out = {key: {"us": [], "cores": []} for key in blocks}
  for _ in range(reps):
    rng.shuffle(order)
    for key in order:
      setup, call, n = blocks[key]
      setup()
      call()
      c0, t0 = cpu_seconds(), time.perf_counter()
      for _ in range(n):
        call()
      t1, c1 = time.perf_counter(), cpu_seconds()
      out[key]["us"].append(1e6 * (t1 - t0) / n)
      out[key]["cores"].append((c1 - c0) / (t1 - t0))
      time.sleep(0.005)  # let torch's OpenMP workers stop spinning before the next block
  return out


def paired_ratio(a: list, b: list) -> dict:
  """Median, min, max of a[i] / b[i] (repetition by repetition)."""
  return common.spread([p / q for p, q in zip(a, b)])


# --------------------------------------------------------------------------------------------------
# What XLA compiled.


def hlo_implementations(text: str) -> dict:
  """Parse optimized HLO text: where each convolution and dot runs.

  Returns {"convolutions": [{"instruction", "runs_as", "op_name", "shape", "window"}], "dots": {runs_as:
  count}, "custom_call_targets": [...], "library_fusions": {kind: count}}.
  """
  computations, current = {}, None
  for line in text.splitlines():
    head = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
    if head:
      current = "ENTRY" if line.startswith("ENTRY") else head.group(1)
      computations[current] = []
    elif line.startswith("}"):
      current = None
    elif current:
      computations[current].append(line.strip())

  def opcode(line):
    m = re.match(r"^(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    return (m.group(1), m.group(2), m.group(3)) if m else (None, None, None)

  def describe(line, runs_as):
    name, shape, _ = opcode(line)
    op_name = re.search(r'op_name="([^"]+)"', line)
    window = re.search(r"window=\{([^}]*)\}", line)
    labels = re.search(r"dim_labels=(\S+?),", line)
    return {"instruction": name, "runs_as": runs_as, "shape": shape,
            "window": window.group(1) if window else "", "dim_labels": labels.group(1) if labels else "",
            "op_name": op_name.group(1) if op_name else ""}

  convs, dots, targets, fusions = [], {}, [], {}
  libraries = {"__ynn_fusion": "YNNPACK fusion (__ynn_fusion)",
               "__xnn_fusion": "XNNPACK fusion (__xnn_fusion)",
               "__onednn_fusion": "oneDNN fusion (__onednn_fusion)"}
  for line in computations.get("ENTRY", []):
    _, _, op = opcode(line)
    if op == "convolution":
      convs.append(describe(line, "ConvolutionThunk (Eigen spatial convolution)"))
    elif op == "dot":
      dots["DotThunk (Eigen / XLA dot emitter)"] = dots.get("DotThunk (Eigen / XLA dot emitter)", 0) + 1
    elif op == "custom-call":
      target = re.search(r'custom_call_target="([^"]+)"', line)
      targets.append(target.group(1) if target else "?")
    elif op == "fusion":
      kind = re.search(r'"kind":"([^"]+)"', line)
      called = re.search(r"calls=%([\w.\-]+)", line)
      if not (kind and called):
        continue
      runs_as = libraries.get(kind.group(1), kind.group(1))
      fusions[runs_as] = fusions.get(runs_as, 0) + 1
      for inner in computations.get(called.group(1), []):
        _, _, inner_op = opcode(inner)
        if inner_op == "convolution":
          convs.append(describe(inner, runs_as))
        elif inner_op == "dot":
          dots[runs_as] = dots.get(runs_as, 0) + 1
  return {"convolutions": convs, "dots": dots, "custom_call_targets": targets,
          "library_fusions": fusions}


def flag_in_jaxlib(flag: str) -> bool:
  """Whether the flag's name is a string of the installed jaxlib's shared library."""
  import jaxlib
  name = flag.lstrip("-").split("=")[0]
  lib = os.path.join(os.path.dirname(jaxlib.__file__), "libjax_common.so")
  if not name or not os.path.exists(lib):
    return not name
  with open(lib, "rb") as f:
    return name.encode() in f.read()


def conv_thunk_log(timeout: float = 120) -> dict:
  """Run one training step in a child with TF_CPP_VMODULE=convolution_thunk=3: the convolutions that
  XLA:CPU's ConvolutionThunk (Eigen) executed, with their sizes."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="convolution_thunk=3")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--log-step"], env=env,
                        capture_output=True, text=True, timeout=timeout)
  lines = [l.split("] ", 1)[1] for l in proc.stderr.splitlines()
           if "convolution_thunk.cc" in l and "Convolution:" in l]
  return {"distinct_convolutions": sorted(set(lines)), "logged_calls": len(lines),
          "returncode": proc.returncode}


def torch_conv_impl(timeout: float = 120) -> list:
  """Torch's convolution primitives for one training step (a child with ONEDNN_VERBOSE=1)."""
  code = ("import sys; sys.path.insert(0, %r); import torch, torch.nn.functional as F\n"
          "from throughput import torch_modules\n"
          "net = torch_modules()['lenet5'](); x = torch.randn(32, 1, 28, 28)\n"
          "for _ in range(2): F.cross_entropy(net(x), torch.zeros(32, dtype=torch.long)).backward()\n"
          % os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, ONEDNN_VERBOSE="1")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=timeout)
  prims = set()
  for line in proc.stdout.splitlines():
    parts = line.split(",")
    if len(parts) > 8 and parts[2] == "primitive" and parts[3] == "exec" and parts[5] == "convolution":
      problem = next((p for p in parts if p.startswith("mb32")), "")
      prims.add(f"oneDNN convolution {parts[6]} {parts[7]} {problem}")
  return sorted(prims)


# --------------------------------------------------------------------------------------------------
# Child process: one XLA flag variant.


def child_main(args):
  """Time the conv pieces and the step under this process's XLA_FLAGS; print one JSON line."""
  import jax
  x, y, rng = random_batch()
  only = ("train step",) if args.log_step else CHILD_LINES
  calls, _, _, _, step_text = build_jax(x, y, rng, only=only)
  if args.log_step:
    calls["train step"]()
    return
  blocks = {line: ((lambda: None), calls[line], calibrate(calls[line])) for line in CHILD_LINES}
  timed = measure(blocks, args.child_reps, seed=os.getpid())
  impl = hlo_implementations(step_text)
  print("CHILD_RESULT " + json.dumps({
      "us": {line: statistics.median(timed[line]["us"]) for line in CHILD_LINES},
      "conv_runs_as": sorted({c["runs_as"] for c in impl["convolutions"]}),
      "library_fusions": impl["library_fusions"], "dots": impl["dots"],
      "custom_call_targets": impl["custom_call_targets"], "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "jax": jax.__version__}))


def run_flag_variants(reps: int, child_reps: int, timeout: float = 120) -> dict:
  """Each flag variant in its own child process, `reps` interleaved repetitions (shuffled)."""
  variants = {}
  for name, flag in FLAG_VARIANTS.items():
    if flag_in_jaxlib(flag):
      variants[name] = flag
    else:
      print(f"  flag {flag} not in the installed jaxlib: skipped", flush=True)
  results = {name: [] for name in variants}
  order, rng = list(variants), random.Random(1)
  for rep in range(reps):
    rng.shuffle(order)
    for name in order:
      env = dict(os.environ)
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + variants[name]).strip()
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "--child-reps",
                             str(child_reps)], env=env, capture_output=True, text=True,
                            timeout=timeout)
      line = next((l for l in proc.stdout.splitlines() if l.startswith("CHILD_RESULT ")), None)
      if line is None:
        results[name].append({"error": proc.stderr[-2000:]})
      else:
        results[name].append(json.loads(line[len("CHILD_RESULT "):]))
    print(f"  flag repetition {rep + 1}/{reps} done", flush=True)

  summary = {}
  for name, runs in results.items():
    ok = [r for r in runs if "us" in r]
    base = results["default"]
    entry = {"flag": variants[name], "runs": len(ok), "errors": [r["error"] for r in runs
                                                                 if "error" in r][:1]}
    if ok:
      entry.update({k: ok[0][k] for k in ("conv_runs_as", "library_fusions", "dots",
                                          "custom_call_targets")})
      entry["us"] = {line: common.spread([r["us"][line] for r in ok]) for line in CHILD_LINES}
      pairs = [(r, b) for r, b in zip(runs, base) if "us" in r and "us" in b]
      if name != "default" and pairs:
        entry["vs_default"] = {line: common.spread([r["us"][line] / b["us"][line] for r, b in pairs])
                               for line in CHILD_LINES}
    summary[name] = entry
  return summary


# --------------------------------------------------------------------------------------------------
# Report.


def conclusion(rows: dict, torch_key: str) -> tuple:
  """Attribute the step-time difference JAX - torch (torch_key) to the pieces. Returns (dict, lines)."""
  med = lambda line, fw: rows[line][fw]["median"]
  gap = med("train step", "jax") - med("train step", torch_key)
  shares = {p: (med(p, "jax") - med(p, torch_key)) / gap for p in STEP_PIECES}
  phases = {
      "whole forward": (med("forward", "jax") - med("forward", torch_key)) / gap,
      "backward (fwd+bwd - fwd)": ((med("forward+backward", "jax") - med("forward", "jax")) -
                                   (med("forward+backward", torch_key) - med("forward", torch_key))) / gap,
      "optimizer + step overhead (step - fwd+bwd)": (
          (med("train step", "jax") - med("forward+backward", "jax")) -
          (med("train step", torch_key) - med("forward+backward", torch_key))) / gap}
  convs = sum(v for k, v in shares.items() if k.startswith("conv"))
  others = sum(v for k, v in shares.items() if not k.startswith("conv"))
  label = torch_key.replace("torch", "torch ") + " thread(s)"
  lines = [f"Conclusion vs {label}: JAX step {med('train step', 'jax'):.0f} us, torch "
           f"{med('train step', torch_key):.0f} us, gap D = {gap:.0f} us "
           f"(ratio {rows['train step'][torch_key + '_ratio']['median']:.2f})."]
  ranked = sorted(shares.items(), key=lambda kv: -kv[1])
  lines.append("  share of D, piece timed alone ((jax - torch) / D): " +
               ", ".join(f"{k} {100 * v:+.0f}%" for k, v in ranked))
  lines.append(f"  the 3 convs' forward + the 3 conv backward pieces of the step: {100 * convs:+.0f}% "
               f"of D; pools + dense layers forward: {100 * others:+.0f}%; not covered by the pieces: "
               f"{100 * (1 - convs - others):+.0f}%")
  lines.append("  by phase: " + ", ".join(f"{k} {100 * v:+.0f}%" for k, v in phases.items()))
  return {"torch": torch_key, "gap_us": gap, "piece_share": shares, "phase_share": phases,
          "conv_share": convs, "other_pieces_share": others,
          "not_covered_share": 1 - convs - others}, lines


def table(rows: dict, torch_keys: list) -> list:
  """The printed table: one line per piece; microseconds median [min, max] and paired ratios."""
  head = f"{'line':18} {'jax us':>22} {'cores':>5}"
  for k in torch_keys:
    head += f" {k + ' us':>24} {'jax/' + k:>21}"
  lines = [head]
  fmt = lambda s, d=0: f"{s['median']:.{d}f} [{s['min']:.{d}f}, {s['max']:.{d}f}]"
  section = None
  for line, sec in LINES:
    if sec != section:
      lines.append(f"-- {sec}")
      section = sec
    r = rows[line]
    text = f"{line:18} {fmt(r['jax']['us']):>22} {r['jax']['cores']:5.2f}"
    for k in torch_keys:
      text += f" {fmt(r[k]):>24} {fmt(r[k + '_ratio'], 2):>21}"
    lines.append(text)
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (default 15)")
  parser.add_argument("--threads", type=int, choices=[1, 2], default=None,
                      help="torch.set_num_threads for torch (default: both 1 and 2)")
  parser.add_argument("--flag-reps", type=int, default=3,
                      help="repetitions of the XLA-flag child processes (0: skip the flags)")
  parser.add_argument("--child-reps", type=int, default=5, help="repetitions inside a flag child")
  parser.add_argument("--out", default=os.path.join(RESULTS, "profile_lenet5.json"))
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--log-step", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child_main(args)

  t_start = time.perf_counter()
  loadavg_before = os.getloadavg()
  import jax
  import numpy as np
  import torch
  thread_counts = [args.threads] if args.threads else [1, 2]
  torch_keys = [f"torch{t}" for t in thread_counts]
  print(f"LeNet-5 profile: batch {BATCH}, {args.reps} repetitions, torch threads {thread_counts}; "
        f"{os.cpu_count()} cores, load average {loadavg_before[0]:.2f}", flush=True)

  x, y, rng = random_batch()
  t0 = time.perf_counter()
  jax_calls, params, inputs, cotangents, step_text = build_jax(x, y, rng)
  compile_seconds = time.perf_counter() - t0
  torch_calls, torch_logits = build_torch(params, inputs, cotangents, x, y)
  from psops_jax import models
  jax_logits = np.asarray(models.LeNet5().apply({"params": params}, x))
  logit_diff = float(np.abs(torch_logits - jax_logits).max())
  print(f"  compiled {len(jax_calls)} JAX functions in {compile_seconds:.1f} s; torch vs JAX logits: "
        f"max |diff| {logit_diff:.1e}", flush=True)

  blocks = {}
  for line, _ in LINES:
    blocks[(line, "jax")] = ((lambda: None), jax_calls[line], calibrate(jax_calls[line]))
    n = calibrate(torch_calls[line])
    for t, key in zip(thread_counts, torch_keys):
      blocks[(line, key)] = ((lambda t=t: torch.set_num_threads(t)), torch_calls[line], n)
  timed = measure(blocks, args.reps)
  print(f"  timed {len(blocks)} blocks x {args.reps} repetitions "
        f"({time.perf_counter() - t_start:.0f} s so far)", flush=True)

  rows = {}
  for line, section in LINES:
    j = timed[(line, "jax")]
    rows[line] = {"section": section, "n_calls_per_block": blocks[(line, "jax")][2],
                  "jax": {"us": common.spread(j["us"]), "cores": statistics.median(j["cores"])}}
    for key in torch_keys:
      rows[line][key] = common.spread(timed[(line, key)]["us"])
      rows[line][key + "_ratio"] = paired_ratio(j["us"], timed[(line, key)]["us"])
  # the table reads rows[line]["jax"]["us"]; the conclusion reads medians
  flat = {line: {"jax": r["jax"]["us"], **{k: r[k] for k in r if k.startswith("torch")}}
          for line, r in rows.items()}
  lines = table(rows, torch_keys)
  concl, concl_lines = {}, []
  for key in torch_keys:
    concl[key], text = conclusion(flat, key)
    concl_lines += text

  impl = hlo_implementations(step_text)
  print("  XLA:CPU convolution implementation (optimized HLO of the training step):", flush=True)
  thunk_log = conv_thunk_log()
  torch_impl = torch_conv_impl()
  impl_lines = [f"    {c['runs_as']:48} {c['shape']:22} {c['dim_labels']:18} window {{{c['window']}}}  "
                f"{c['op_name'].split('/', 1)[-1]}" for c in impl["convolutions"]]
  impl_lines.append(f"    dots: {impl['dots']}; custom-calls: {impl['custom_call_targets'] or 'none'}; "
                    f"library fusions: {impl['library_fusions']}")
  impl_lines.append(f"    ConvolutionThunk log (TF_CPP_VMODULE=convolution_thunk=3, one step): "
                    f"{len(thunk_log['distinct_convolutions'])} distinct convolutions")
  impl_lines += [f"      {c}" for c in thunk_log["distinct_convolutions"]]
  impl_lines.append("    torch (ONEDNN_VERBOSE=1): " + ("; ".join(torch_impl) or "no oneDNN convolution"))
  print("\n".join(impl_lines), flush=True)

  flags = {}
  if args.flag_reps:
    print(f"  XLA flag variants, {args.flag_reps} repetitions of one child process each:", flush=True)
    flags = run_flag_variants(args.flag_reps, args.child_reps)
  flag_lines = []
  for name, entry in flags.items():
    if "us" not in entry:
      flag_lines.append(f"    {name:20} {entry['flag']}: failed {entry['errors']}")
      continue
    if name == "default":
      us = entry["us"]
      flag_lines.append(f"    {'default':20} us: " + ", ".join(f"{l} {us[l]['median']:.0f}"
                                                              for l in CHILD_LINES))
      continue
    vs = entry["vs_default"]
    flag_lines.append(f"    {name:20} {entry['flag']}\n{'':25}vs default (paired, <1 = faster): " +
                      ", ".join(f"{l} {vs[l]['median']:.2f} [{vs[l]['min']:.2f}, {vs[l]['max']:.2f}]"
                                for l in CHILD_LINES) +
                      f"\n{'':25}convs run as {entry['conv_runs_as']}; library fusions "
                      f"{entry['library_fusions']}; custom-calls {entry['custom_call_targets'] or 'none'}")

  loadavg_after = os.getloadavg()
  print("\n".join([""] + lines + [""] + concl_lines), flush=True)
  if flag_lines:
    print("\nXLA flags (each in its own process):\n" + "\n".join(flag_lines), flush=True)
  print(f"\nload average before {loadavg_before[0]:.2f}, after {loadavg_after[0]:.2f}; "
        f"{time.perf_counter() - t_start:.0f} s", flush=True)

  machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
             "cpus": os.cpu_count(), "jax": jax.__version__, "torch": torch.__version__,
             "backend": jax.default_backend(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "loadavg_before": loadavg_before, "loadavg_after": loadavg_after}
  result = {"command": common.command_line(), "machine": machine,
            "config": {"batch": BATCH, "reps": args.reps, "torch_threads": thread_counts,
                       "flag_reps": args.flag_reps, "child_reps": args.child_reps,
                       "target_block_seconds": TARGET_BLOCK_SECONDS},
            "check": {"torch_vs_jax_max_logit_diff": logit_diff},
            "rows": rows, "conclusion": concl,
            "xla_implementation": {"step_hlo": impl, "convolution_thunk_log": thunk_log},
            "torch_convolution_primitives": torch_impl, "flags": flags,
            "seconds": round(time.perf_counter() - t_start, 1),
            "table": lines + [""] + concl_lines + [""] + impl_lines + [""] + flag_lines}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
  main()
