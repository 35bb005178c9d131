"""Where XLA:CPU loses to PyTorch CPU on one LeNet-5 training step (batch 32, 28x28x1, SGD momentum
0.9).

benchmarks/round_vs_floor.py found a plain jitted JAX step of LeNet-5 at about half the samples/s of
torch eager on this CPU. This script takes the step apart and times each piece alone, JAX (jax.jit,
compiled once, every call waited for) against torch (eager), side by side in one process:

  1. forward, layer by layer, with the shapes the model sees (psops_jax/models.py's LeNet5; the
     layers below are composed and checked to give LeNet5's logits): conv0 (5x5, 1->6, SAME) + bias
     + ReLU, pool0 (2x2 max), conv1 (5x5, 6->16, VALID) + bias + ReLU, pool1, dense0 (400->120) +
     ReLU, dense1 (120->84) + ReLU, dense2 (84->10). Torch runs them under torch.no_grad().
  2. each conv layer's backward alone, given the input, the weights and a cotangent of the conv
     output: "dW" = gradient w.r.t. kernel and bias, "dX" = gradient w.r.t. the input. JAX: jax.vjp
     of the Flax layer (the forward conv is dead code and removed); torch:
     aten.convolution_backward, the op autograd calls, with the same output mask. The training step
     needs conv0 dW, conv1 dX and conv1 dW (conv0 dX is the gradient w.r.t. the data: neither
     framework computes it in the step; shown for reference).
  3. the whole model: forward (torch no_grad), forward + backward (jax.value_and_grad of the mean
     cross-entropy w.r.t. the params; torch: zero_grad, loss, backward), and the training step (+
     optax.sgd(0.01, momentum=0.9), params and optimizer state donated and carried; torch:
     torch.optim.SGD(lr=0.01, momentum=0.9)). The inputs are float32 images (already normalised).
  4. "dispatch" = one tiny op (x + 1 on 8 floats): the fixed cost of one jitted call against one
     torch op.

Torch's LeNet-5 is benchmarks/torch_models.py's copy, loaded with the Flax weights (checked: the
same logits). Without torch the script stops with a note (pip install -e ".[bench]").

Timing (benchmarks/harness.py): each line is a block of n calls (n chosen so a block lasts ~20 ms; a
block slowed down by the machine's load stops after 50 ms and at least 2 calls), after one untimed
call; us = block seconds / calls. All blocks of all lines and frameworks run in interleaved
repetitions (--reps, new random order each repetition, 5 ms pause between blocks so torch's OpenMP
threads stop spinning); the table gives the median over repetitions and [min, max], and the ratio
jax/torch taken repetition by repetition (paired), median [min, max]. Torch runs with
torch.set_num_threads(1) and (2) (--threads picks one); JAX/XLA:CPU uses its own intra-op thread
pool (one thread per core, here 2), which no option of this script changes. The column "cores" is
process CPU seconds / wall seconds during the JAX blocks. On a machine whose cores are busy with
other processes, torch's OpenMP threads wait for each other at every parallel region and 2 threads
can be far slower than 1; the report says so when it happens (torch 2-thread step > 3x the 1-thread
step).

How to read it: ratio > 1 means JAX is slower. The conclusion takes the step's time difference D =
JAX step - torch step (for each torch thread count, the faster first; skipped when JAX is not
slower) and attributes it to the layers: for each piece of the step, (JAX us - torch us) / D, and
the rest (ReLU / pool / dense backward, loss, optimizer, fusion effects) as the remainder. Pieces
timed alone do not add up exactly to the step (XLA fuses bias and ReLU into neighbours, caches are
warm, each call pays its own dispatch), so the fractions are an attribution, not an exact
decomposition.

Which convolution implementation XLA:CPU uses: the optimized HLO of the compiled training step
(`jax.jit(step).lower(...).compile().as_text()`) is parsed. A `convolution` left in the entry
computation runs as XLA:CPU's ConvolutionThunk, which calls Eigen's spatial convolution (XLA emits a
naive loop kernel instead only for convolutions Eigen cannot take); a convolution inside a `fusion`
whose backend_config kind is "__ynn_fusion" / "__xnn_fusion" / "__onednn_fusion" runs in YNNPACK /
XNNPACK / oneDNN; a custom-call names its target. Runtime evidence: a child process runs one
training step with TF_CPP_VMODULE=convolution_thunk=3 and lists the convolutions ConvolutionThunk
executed (the ones missing from that list ran elsewhere); a torch child runs one step with
ONEDNN_VERBOSE=1 and lists torch's convolution primitives.

XLA flags: the flags of FLAG_VARIANTS exist in the installed jaxlib (each name is checked to be a
string of jaxlib/libjax_common.so, as `strings libjax_common.so | grep xla_cpu_` shows; a missing
one is skipped). Each variant compiles the conv lines and the training step again with the flag
passed as a compiler option (`.compile(compiler_options)` sets the same DebugOptions field as
XLA_FLAGS, per compilation), so the variants are timed in the same process, in the same interleaved
repetitions as everything else, and compared with the default build of the same line (paired ratio,
< 1 = the flag makes it faster). The report also says whether the flag changed the optimized HLO.
For ynn_off, the ConvolutionThunk child is run a second time with the flag in XLA_FLAGS, as a
cross-check of the compiler-option route.

  python benchmarks/profile_lenet5.py                  # torch with 1 and 2 threads, 15 repetitions
  python benchmarks/profile_lenet5.py --reps 9 --threads 2 --no-flags

Writes benchmarks/results/profile_lenet5.json (--out): the command, the machine (platform, cpus, jax
and torch versions, XLA_FLAGS) and the load average at the start and the end, rows, conclusion, the
implementation evidence, the flag variants and the printed report. On 2 shared cores the defaults
take about 2 minutes.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

from benchmarks import harness, torch_models

BATCH = 32
TARGET_BLOCK_SECONDS = 0.02

# XLA:CPU flags that could change how the convolutions run: name -> (the XLA_FLAGS form, the same
# DebugOptions field as a per-compilation compiler option). Each is checked to be in the jaxlib
# binary.
YNN_TYPES = "xla_cpu_experimental_ynn_fusion_type"
FLAG_VARIANTS = {
  "ynn_off": (f"--{YNN_TYPES}=", {YNN_TYPES: ""}),
  "ynn_conv_only": (
    f"--{YNN_TYPES}=individual_convolution",
    {YNN_TYPES: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
  ),
  "onednn": ("--xla_cpu_use_onednn=true", {"xla_cpu_use_onednn": True}),
  "onednn_custom_call": (
    "--xla_cpu_experimental_onednn_custom_call=true",
    {"xla_cpu_experimental_onednn_custom_call": True},
  ),
  "xnnpack": ("--xla_cpu_use_xnnpack=true", {"xla_cpu_use_xnnpack": True}),
  "eigen_single_thread": (
    "--xla_cpu_multi_thread_eigen=false",
    {"xla_cpu_multi_thread_eigen": False},
  ),
}
# Found in the binary but not measured: its help string says it is no longer supported.
THUNK_RUNTIME_FLAG = "xla_cpu_use_thunk_runtime"
# The JAX lines compiled again under each flag variant: the convolutions and the step.
FLAG_LINES = (
  "conv0 fwd",
  "conv1 fwd",
  "conv0 bwd dW",
  "conv1 bwd dX",
  "conv1 bwd dW",
  "train step",
)

# Lines in table order: (name, section). The step needs every line but "conv0 bwd dX" and
# "dispatch".
LINES = [
  ("conv0 fwd", "layer forward"),
  ("pool0 fwd", "layer forward"),
  ("conv1 fwd", "layer forward"),
  ("pool1 fwd", "layer forward"),
  ("dense0 fwd", "layer forward"),
  ("dense1 fwd", "layer forward"),
  ("dense2 fwd", "layer forward"),
  ("conv0 bwd dW", "conv backward"),
  ("conv0 bwd dX", "conv backward"),
  ("conv1 bwd dX", "conv backward"),
  ("conv1 bwd dW", "conv backward"),
  ("forward", "whole model"),
  ("forward+backward", "whole model"),
  ("train step", "whole model"),
  ("dispatch", "overhead"),
]
STEP_PIECES = [
  "conv0 fwd",
  "pool0 fwd",
  "conv1 fwd",
  "pool1 fwd",
  "dense0 fwd",
  "dense1 fwd",
  "dense2 fwd",
  "conv0 bwd dW",
  "conv1 bwd dX",
  "conv1 bwd dW",
]

# Conv layers of models.LeNet5: name -> (Flax param key, features, padding as Flax and as torch).
CONVS = {"conv0": ("Conv_0", 6, "SAME", 2), "conv1": ("Conv_1", 16, "VALID", 0)}


def random_batch(seed: int = 0):
  """A float32 batch (32, 28, 28, 1) of normalised images, integer labels, and a numpy RNG."""
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
      module.apply({"params": p}, a.reshape((a.shape[0], -1)))
    )

  pool = lambda p, a: nn.max_pool(a, (2, 2), (2, 2))
  return [
    ("conv0", "Conv_0", conv(6, "SAME")),
    ("pool0", None, pool),
    ("conv1", "Conv_1", conv(16, "VALID")),
    ("pool1", None, pool),
    ("dense0", "Dense_0", dense(120)),
    ("dense1", "Dense_1", dense(84)),
    ("dense2", "Dense_2", dense(10, relu=False)),
  ]


def conv_backward_fns(name: str):
  """JAX functions (p, a, g) -> gradient w.r.t. the conv layer's params (dW) / its input (dX), g
  being a cotangent of the conv output before the ReLU."""
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


def prepare_jax(x_np, y_np, rng) -> dict:
  """Params, the input each layer sees, conv cotangents, loss and step functions; checks that the
  layers of `jax_layers` compose to models.LeNet5."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from psops_jax import models

  model = models.LeNet5()
  x, y = jnp.asarray(x_np), jnp.asarray(y_np)
  params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]
  layers = jax_layers()

  def chain(p, a):
    seen = {}
    for name, key, fn in layers:
      seen[name] = a
      a = fn(p[key] if key else None, a)
    return seen, a

  inputs, logits = jax.jit(chain)(params, x)
  max_diff = float(jnp.abs(logits - jax.jit(model.apply)({"params": params}, x)).max())
  assert max_diff < 1e-4, f"layers differ from models.LeNet5: max |logit diff| = {max_diff}"
  cotangents = {}
  for name, (_, features, _, _) in CONVS.items():
    out_hw = 28 if name == "conv0" else 10
    cotangents[name] = jnp.asarray(
      rng.standard_normal((BATCH, out_hw, out_hw, features), dtype=np.float32)
    )

  def loss_fn(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(
      model.apply({"params": p}, xb), yb
    ).mean()

  tx = optax.sgd(0.01, momentum=0.9)

  def train_step(p, s, xb, yb):
    loss, grads = jax.value_and_grad(loss_fn)(p, xb, yb)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  return {
    "model": model,
    "layers": layers,
    "x": x,
    "y": y,
    "params": params,
    "inputs": inputs,
    "cotangents": cotangents,
    "loss_fn": loss_fn,
    "train_step": train_step,
    "tx": tx,
  }


def compile_jax(prep: dict, only=None, compiler_options=None):
  """Compile the JAX lines (`only`: a subset) with XLA `compiler_options` (DebugOptions fields, the
  same names as the XLA_FLAGS flags). Returns ({line: call}, optimized HLO text of the train step);
  each call runs one jitted call and waits for it."""
  import jax
  import jax.numpy as jnp

  params, x, y, inputs = prep["params"], prep["x"], prep["y"], prep["inputs"]
  calls = {}

  def add(line, fn, *args):
    if only is None or line in only:
      compiled = jax.jit(fn).lower(*args).compile(compiler_options)
      calls[line] = lambda: jax.block_until_ready(compiled(*args))

  for name, key, fn in prep["layers"]:
    add(f"{name} fwd", fn, params[key] if key else None, inputs[name])
  for name, (key, _, _, _) in CONVS.items():
    for kind, fn in conv_backward_fns(name).items():
      add(f"{name} bwd {kind}", fn, params[key], inputs[name], prep["cotangents"][name])
  add("forward", lambda p, xb: prep["model"].apply({"params": p}, xb), params, x)
  add("forward+backward", jax.value_and_grad(prep["loss_fn"]), params, x, y)
  add("dispatch", lambda v: v + 1.0, jnp.zeros((8,), jnp.float32))

  step_text = None
  if only is None or "train step" in only:
    tx = prep["tx"]
    step = (
      jax.jit(prep["train_step"], donate_argnums=(0, 1))
      .lower(params, tx.init(params), x, y)
      .compile(compiler_options)
    )
    step_text = step.as_text()
    copy = lambda tree: jax.tree.map(lambda v: jnp.array(v, copy=True), tree)
    state = [copy(params), tx.init(copy(params))]  # own buffers: the step donates them

    def run_step():
      state[0], state[1], loss = step(state[0], state[1], x, y)
      loss.block_until_ready()

    calls["train step"] = run_step
  return calls, step_text


# --------------------------------------------------------------------------------------------------
# PyTorch.


def build_torch(prep: dict) -> tuple:
  """The torch lines, with the weights, inputs and cotangents of `prepare_jax`. Returns ({line:
  call}, the largest absolute difference of torch's logits of the batch to JAX's)."""
  import jax
  import numpy as np
  import torch
  import torch.nn.functional as F

  params, inputs, cotangents = prep["params"], prep["inputs"], prep["cotangents"]
  nchw = torch_models.to_nchw
  net = torch_models.from_flax("lenet5", params)
  x, y = nchw(prep["x"]), torch.from_numpy(np.asarray(prep["y"]).astype(np.int64))
  # Flattened dense inputs: torch flattens (C, H, W); load_flax_params permuted dense0's rows
  # for it.
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
        lambda layer=layer, g=g, inp=a[name], mask=mask, pad=pad, features=features: (
          torch.ops.aten.convolution_backward(
            g, inp, layer.weight, [features], [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask
          )
        )
      )
  calls["forward"] = no_grad(lambda: net(x))

  def forward_backward():
    net.zero_grad(set_to_none=True)
    F.cross_entropy(net(x), y).backward()

  calls["forward+backward"] = forward_backward
  trained = torch_models.from_flax("lenet5", params)
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
  jax_logits = np.asarray(jax.jit(prep["model"].apply)({"params": params}, prep["x"]))
  return calls, float(np.abs(logits - jax_logits).max())


# --------------------------------------------------------------------------------------------------
# What XLA compiled.


def hlo_implementations(text: str) -> dict:
  """Parse optimized HLO text: where each convolution and dot runs.

  Returns {"convolutions": [{"instruction", "runs_as", "op_name", "shape", "window"}],
  "dots": {runs_as: count}, "custom_call_targets": [...], "library_fusions": {kind: count}}.
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
    return {
      "instruction": name,
      "runs_as": runs_as,
      "shape": shape,
      "window": window.group(1) if window else "",
      "dim_labels": labels.group(1) if labels else "",
      "op_name": op_name.group(1) if op_name else "",
    }

  convs, dots, targets, fusions = [], {}, [], {}
  libraries = {
    "__ynn_fusion": "YNNPACK fusion (__ynn_fusion)",
    "__xnn_fusion": "XNNPACK fusion (__xnn_fusion)",
    "__onednn_fusion": "oneDNN fusion (__onednn_fusion)",
  }
  for line in computations.get("ENTRY", []):
    _, _, op = opcode(line)
    if op == "convolution":
      convs.append(describe(line, "ConvolutionThunk (Eigen spatial convolution)"))
    elif op == "dot":
      dots["DotThunk (Eigen / XLA dot emitter)"] = (
        dots.get("DotThunk (Eigen / XLA dot emitter)", 0) + 1
      )
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
  return {
    "convolutions": convs,
    "dots": dots,
    "custom_call_targets": targets,
    "library_fusions": fusions,
  }


def flags_in_jaxlib(names) -> dict:
  """{flag name: whether it is a string in the installed jaxlib's library} (like `strings`)."""
  import jaxlib

  lib = os.path.join(os.path.dirname(jaxlib.__file__), "libjax_common.so")
  with open(lib, "rb") as f:
    blob = f.read()
  return {name: name.encode() + b"\0" in blob for name in names}


def hlo_signature(text: str) -> str:
  """Optimized HLO without the module name and metadata: equal strings = the same program."""
  text = re.sub(r", metadata=\{[^}]*\}", "", text.split("\n", 1)[1])
  return re.sub(r"\s+", " ", text)


def child_main():
  """Child process: compile and run one training step (under this process's XLA_FLAGS and TF_CPP
  logging), printing a marker on stderr just before the step and the HLO summary on stdout."""
  x, y, rng = random_batch()
  calls, step_text = compile_jax(prepare_jax(x, y, rng), only=("train step",))
  sys.stderr.flush()
  print("STEP_STARTS", file=sys.stderr, flush=True)
  calls["train step"]()
  print("CHILD_RESULT " + json.dumps(hlo_implementations(step_text)), flush=True)


def conv_thunk_log(xla_flags: str = "", timeout: float = 120) -> dict:
  """One training step in a child with TF_CPP_VMODULE=convolution_thunk=3 (and XLA_FLAGS +
  `xla_flags`): the convolutions XLA:CPU's ConvolutionThunk (Eigen) ran during the step, and the HLO
  summary."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", TF_CPP_VMODULE="convolution_thunk=3")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + xla_flags).strip()
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), "--child"],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  after = proc.stderr.split("STEP_STARTS", 1)[-1] if "STEP_STARTS" in proc.stderr else ""
  logged = [
    l.split("] ", 1)[1]
    for l in after.splitlines()
    if "convolution_thunk.cc" in l and "Convolution:" in l
  ]
  short = lambda s: re.sub(
    r" (strides|base_dilation|window_dilation|feature_group_count)=\S+",
    "",
    s.replace("Convolution: convolution_rank=2 ", ""),
  )
  result = next(
    (
      json.loads(l[len("CHILD_RESULT ") :])
      for l in proc.stdout.splitlines()
      if l.startswith("CHILD_RESULT ")
    ),
    None,
  )
  return {
    "xla_flags": env["XLA_FLAGS"],
    "returncode": proc.returncode,
    "convolution_thunk_calls": [short(l) for l in logged],
    "library_fusions": result["library_fusions"] if result else None,
    "conv_runs_as": [c["runs_as"] for c in result["convolutions"]] if result else None,
  }


def torch_conv_impl(timeout: float = 120) -> list:
  """Torch's convolution primitives in a training step (a child with ONEDNN_VERBOSE=1)."""
  code = (
    "import torch, torch.nn.functional as F\n"
    "from benchmarks.torch_models import modules\n"
    "net = modules()['lenet5'](); x = torch.randn(32, 1, 28, 28)\n"
    "F.cross_entropy(net(x), torch.zeros(32, dtype=torch.long)).backward()\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code],
    env=dict(os.environ, ONEDNN_VERBOSE="1"),
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  prims = []
  for line in proc.stdout.splitlines():
    parts = line.split(",")
    if len(parts) > 8 and parts[3] == "exec" and parts[5] == "convolution":
      problem = next((p for p in parts if p.startswith("mb32")), "")
      prims.append(f"oneDNN {parts[6]} {parts[7]} {problem.split('_ih')[0]}")
  return prims


# --------------------------------------------------------------------------------------------------
# Report.


def conclusion(rows: dict, torch_key: str) -> tuple:
  """Attribute the step-time difference D = JAX - torch (torch_key) to the pieces of the step, each
  timed alone. Returns (dict, printed lines)."""
  med = lambda line, fw: rows[line][fw]["median"]
  gap = med("train step", "jax") - med("train step", torch_key)
  label = f"torch {torch_key[-1]} thread(s)"
  head = (
    f"vs {label}: JAX step {med('train step', 'jax'):.0f} us, torch "
    f"{med('train step', torch_key):.0f} us, D = {gap:+.0f} us (paired ratio "
    f"{rows['train step'][torch_key + '_ratio']['median']:.2f})"
  )
  if gap <= 0:
    return {"torch": torch_key, "gap_us": gap}, [
      head + ": JAX is not slower, nothing to attribute."
    ]
  diff = {p: med(p, "jax") - med(p, torch_key) for p in STEP_PIECES}
  conv = sum(v for k, v in diff.items() if k.startswith("conv"))
  other = sum(v for k, v in diff.items() if not k.startswith("conv"))
  jax_bwd = med("forward+backward", "jax") - med("forward", "jax")
  torch_bwd = med("forward+backward", torch_key) - med("forward", torch_key)
  phases = {
    "forward": med("forward", "jax") - med("forward", torch_key),
    "backward (fwd+bwd - fwd)": jax_bwd - torch_bwd,
    "optimizer (step - fwd+bwd)": (med("train step", "jax") - med("forward+backward", "jax"))
    - (med("train step", torch_key) - med("forward+backward", torch_key)),
  }
  pct = lambda v: f"{100 * v / gap:+.0f}%"
  lines = [
    head + ".",
    "  (jax - torch) us of each step piece timed alone, and its share of D: "
    + ", ".join(f"{k} {v:+.0f} ({pct(v)})" for k, v in sorted(diff.items(), key=lambda kv: -kv[1])),
    f"  the conv pieces (conv0/conv1 fwd, conv0 dW, conv1 dX, conv1 dW): "
    f"{conv:+.0f} us = {pct(conv)}"
    f" of D; pools + dense forward: {other:+.0f} us = {pct(other)}; rest of D (ReLU/pool/dense"
    f" backward, loss, optimizer, fusion and dispatch effects): {gap - conv - other:+.0f} us = "
    f"{pct(gap - conv - other)}",
    "  by phase (whole-model lines): "
    + ", ".join(f"{k} {v:+.0f} us ({pct(v)})" for k, v in phases.items()),
  ]
  return {
    "torch": torch_key,
    "gap_us": gap,
    "piece_diff_us": diff,
    "piece_share": {k: v / gap for k, v in diff.items()},
    "conv_share": conv / gap,
    "pools_dense_forward_share": other / gap,
    "rest_share": (gap - conv - other) / gap,
    "phase_diff_us": phases,
    "phase_share": {k: v / gap for k, v in phases.items()},
  }, lines


def fmt(s: dict, digits: int = 0) -> str:
  return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def table(rows: dict, torch_keys: list) -> list:
  """One line per piece: microseconds per call, median [min, max], and the paired ratios."""
  head = f"{'line':17} {'jax us':>22} {'cores':>5}"
  for k in torch_keys:
    head += f" {'torch ' + k[-1] + 'thr us':>22} {'jax/torch' + k[-1]:>18}"
  lines, section = [head], None
  for line, sec in LINES:
    if sec != section:
      lines.append(f"-- {sec}")
      section = sec
    r = rows[line]
    text = f"{line:17} {fmt(r['jax']):>22} {r['jax_cores']:5.2f}"
    for k in torch_keys:
      text += f" {fmt(r[k]):>22} {fmt(r[k + '_ratio'], 2):>18}"
    lines.append(text)
  return lines


def flag_table(flags: dict) -> list:
  """One line per flag variant: paired ratio variant / default of each JAX line (< 1 = faster)."""
  lines = [f"{'variant (time / default)':26} " + " ".join(f"{l:>19}" for l in FLAG_LINES)]
  for name, entry in flags.items():
    if "ratio" not in entry:
      lines.append(f"{name:26} skipped: {entry.get('skipped')}")
      continue
    lines.append(f"{name:26} " + " ".join(f"{fmt(entry['ratio'][l], 2):>19}" for l in FLAG_LINES))
    lines.append(
      f"  {entry['xla_flags']}: HLO "
      f"{'identical to default' if entry['hlo_identical_to_default'] else 'changed'}; "
      f"library fusions {entry['library_fusions'] or 'none'}; convs run as "
      f"{sorted(set(entry['conv_runs_as']))}"
    )
  return lines


def implementation_lines(impl: dict, logs: list, torch_impl: list) -> list:
  """What runs the convolutions: XLA's optimized HLO, ConvolutionThunk's log, torch's oneDNN log."""
  lines = ["XLA:CPU, optimized HLO of the training step (one line per convolution):"]
  for c in impl["convolutions"]:
    lines.append(
      f"  {c['runs_as']:45} {c['shape'].split('{')[0]:18} {c['dim_labels']:17} "
      f"window {{{c['window']}}}  {c['op_name'].split('/', 1)[-1]}"
    )
  lines.append(
    f"  dots: {impl['dots']}; custom-calls: {impl['custom_call_targets'] or 'none'}; "
    f"library fusions: {impl['library_fusions'] or 'none'}"
  )
  for log in logs:
    lines.append(
      f"ConvolutionThunk calls logged in one step (TF_CPP_VMODULE=convolution_thunk=3, "
      f"XLA_FLAGS='{log['xla_flags']}'): {len(log['convolution_thunk_calls'])}; "
      f"library fusions {log['library_fusions'] or 'none'}"
    )
    lines += [f"  {c}" for c in log["convolution_thunk_calls"]]
  lines.append("torch (ONEDNN_VERBOSE=1), one step: " + ("; ".join(torch_impl) or "no oneDNN conv"))
  return lines


# --------------------------------------------------------------------------------------------------


def flag_variants(prep: dict, step_text: str, skip: bool) -> tuple:
  """The conv lines and the step compiled again under each flag of FLAG_VARIANTS found in the
  jaxlib (as compiler options). Returns ({variant: what it changed}, {variant: {line: call}},
  {flag name: found in the jaxlib})."""
  names = [f.lstrip("-").split("=")[0] for f, _ in FLAG_VARIANTS.values()]
  present = flags_in_jaxlib(names + [THUNK_RUNTIME_FLAG])
  flags, variant_calls = {}, {}
  for name, (xla_flags, options) in ({} if skip else FLAG_VARIANTS).items():
    if not present[xla_flags.lstrip("-").split("=")[0]]:
      flags[name] = {"xla_flags": xla_flags, "skipped": "flag not in the installed jaxlib"}
      continue
    variant_calls[name], text = compile_jax(prep, only=FLAG_LINES, compiler_options=options)
    impl = hlo_implementations(text)
    flags[name] = {
      "xla_flags": xla_flags,
      "compiler_options": options,
      "hlo_identical_to_default": hlo_signature(text) == hlo_signature(step_text),
      "library_fusions": impl["library_fusions"],
      "conv_runs_as": [c["runs_as"] for c in impl["convolutions"]],
    }
  return flags, variant_calls, present


def blocks(jax_calls: dict, torch_calls: dict, variant_calls: dict, thread_counts: list) -> tuple:
  """What `harness.measure` times: {(line, "jax" | "torch<threads>" | variant): a block of calls of
  about TARGET_BLOCK_SECONDS}, and {same key: set torch's threads, then one untimed call}. A flag
  variant's block has as many calls as the default JAX line's."""
  import torch

  fns, setup, calls_per_block = {}, {}, {}
  untimed = lambda call, threads=None: (
    lambda: (
      torch.set_num_threads(threads) if threads else None,
      call(),
    )
  )

  def add(key, call, n, threads=None):
    fns[key] = harness.repeat(call, n, max_seconds=2.5 * TARGET_BLOCK_SECONDS)
    setup[key], calls_per_block[key] = untimed(call, threads), n

  for line, _ in LINES:
    add(
      (line, "jax"),
      jax_calls[line],
      harness.calls_for(jax_calls[line], TARGET_BLOCK_SECONDS, 2, 400),
    )
    torch.set_num_threads(thread_counts[0])
    n = harness.calls_for(torch_calls[line], TARGET_BLOCK_SECONDS, 2, 400)
    for threads in thread_counts:
      add((line, f"torch{threads}"), torch_calls[line], n, threads)
  for name, calls in variant_calls.items():
    for line in FLAG_LINES:
      add((line, name), calls[line], calls_per_block[(line, "jax")])
  return fns, setup, calls_per_block


def tabulate(timed: dict, calls_per_block: dict, torch_keys: list, flags: dict) -> dict:
  """Rows per line: microseconds per call of JAX and each torch (spread), the cores JAX kept
  busy, and the paired ratios JAX / torch; each measured flag variant gets its microseconds and
  its paired ratio to the default build."""
  us = {key: [1e6 * s for s in t["seconds"]] for key, t in timed.items()}
  rows = {}
  for line, section in LINES:
    rows[line] = {
      "section": section,
      "calls_per_block": calls_per_block[(line, "jax")],
      "jax": harness.spread(us[(line, "jax")]),
      "jax_cores": timed[(line, "jax")]["cpu_over_wall"],
    }
    for key in torch_keys:
      rows[line][key] = harness.spread(us[(line, key)])
      rows[line][key + "_ratio"] = harness.paired_ratio(us[(line, "jax")], us[(line, key)])
  for name, entry in flags.items():
    if "skipped" not in entry and (FLAG_LINES[0], name) in us:
      entry["us"] = {l: harness.spread(us[(l, name)]) for l in FLAG_LINES}
      entry["ratio"] = {l: harness.paired_ratio(us[(l, name)], us[(l, "jax")]) for l in FLAG_LINES}
  return rows


def conclusions(rows: dict, torch_keys: list) -> tuple:
  """`conclusion` for each torch thread count (the faster first), and a note when 2 threads ran
  over 3x slower than 1 (other processes held the cores)."""
  concl, lines = {}, []
  for key in sorted(torch_keys, key=lambda k: rows["train step"][k]["median"]):
    concl[key], text = conclusion(rows, key)
    lines += text
  if {"torch1", "torch2"} <= set(torch_keys):
    slowdown = rows["train step"]["torch2"]["median"] / rows["train step"]["torch1"]["median"]
    concl["torch2_over_torch1_step"] = slowdown
    if slowdown > 3:
      lines.append(
        f"Note: torch with 2 threads took {slowdown:.0f}x the 1-thread step: the cores are "
        "busy with other processes and torch's 2 OpenMP threads wait for each other "
        "(load average above); the 1-thread comparison is the meaningful one here."
      )
  return concl, lines


def parse_args():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--reps", type=int, default=15, help="interleaved repetitions (default 15)")
  parser.add_argument(
    "--threads",
    type=int,
    choices=[1, 2],
    default=None,
    help="torch.set_num_threads for torch (default: both 1 and 2)",
  )
  parser.add_argument("--no-flags", action="store_true", help="skip the XLA flag variants")
  parser.add_argument("--out", default=os.path.join(harness.RESULTS, "profile_lenet5.json"))
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.reps < 1:
    parser.error(f"--reps must be at least 1, got {args.reps}")
  return args


def main():
  args = parse_args()
  if args.child:
    return child_main()
  if not torch_models.available():
    sys.exit(f"{torch_models.MISSING}: this script compares JAX with torch, it stops here")
  t_start = time.perf_counter()
  thread_counts = [args.threads] if args.threads else [1, 2]
  torch_keys = [f"torch{t}" for t in thread_counts]
  print(
    f"LeNet-5 profile: batch {BATCH}, {args.reps} repetitions, torch threads {thread_counts}; "
    f"{os.cpu_count()} cores, load average {harness.load_average()[0]:.2f}",
    flush=True,
  )
  prep = prepare_jax(*random_batch())
  jax_calls, step_text = compile_jax(prep)
  torch_calls, logit_diff = build_torch(prep)
  flags, variant_calls, present = flag_variants(prep, step_text, args.no_flags)
  print(
    f"  compiled {len(jax_calls)} JAX lines and {len(variant_calls)} flag variants in "
    f"{time.perf_counter() - t_start:.0f} s; torch vs JAX logits: max |diff| {logit_diff:.1e}",
    flush=True,
  )
  fns, setup, calls_per_block = blocks(jax_calls, torch_calls, variant_calls, thread_counts)
  timed = harness.measure(fns, args.reps, warmup=0, seed=0, setup=setup, pause=0.005)
  rows = tabulate(timed, calls_per_block, torch_keys, flags)
  concl, concl_lines = conclusions(rows, torch_keys)
  impl = hlo_implementations(step_text)
  logs = [conv_thunk_log()]
  if "ynn_off" in variant_calls:  # the compiler-option route cross-checked through XLA_FLAGS
    logs.append(conv_thunk_log(FLAG_VARIANTS["ynn_off"][0]))
  torch_impl = torch_conv_impl()
  report = [
    "",
    *table(rows, torch_keys),
    "",
    "Conclusion (step-time gap D attributed to the pieces timed alone):",
    *concl_lines,
    "",
    *implementation_lines(impl, logs, torch_impl),
    "",
    "XLA flag variants (compiled with the flag as a "
    "compiler option; paired ratio variant / default, median [min, max]):",
    *(flag_table(flags) if flags else []),
    f"{THUNK_RUNTIME_FLAG}: in the jaxlib binary: {present[THUNK_RUNTIME_FLAG]}; not measured (its "
    "message in the binary: no longer supported, the thunk runtime is the only one)",
    "",
    f"{os.cpu_count()} cores; {time.perf_counter() - t_start:.0f} s",
  ]
  print("\n".join(report), flush=True)
  result = {
    "config": {
      "batch": BATCH,
      "reps": args.reps,
      "torch_threads": thread_counts,
      "target_block_seconds": TARGET_BLOCK_SECONDS,
    },
    "check": {"torch_vs_jax_max_logit_diff": logit_diff},
    "rows": rows,
    "conclusion": concl,
    "xla_implementation": {"train_step_hlo": impl, "convolution_thunk_logs": logs},
    "torch_convolution_primitives": torch_impl,
    "flags": flags,
    "flags_in_jaxlib": present,
    "seconds": round(time.perf_counter() - t_start, 1),
    "report": report,
  }
  harness.write_result(args.out, result)
  print(f"wrote {os.path.relpath(args.out)}")


if __name__ == "__main__":
  main()
