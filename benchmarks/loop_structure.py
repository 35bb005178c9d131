"""How to compile a round's local steps: unrolled in the program, or inside `lax.scan`.

Runs the project's jitted round (PSO-PS sync) both ways, side by side in one process, for each model and
period asked, and reports compile seconds and milliseconds per local step (median over rounds).

  python benchmarks/loop_structure.py                       # small_cnn/digits and lenet5/28x28
  python benchmarks/loop_structure.py --particles 2 --periods 4 16 --rounds 5

Writes benchmarks/results/loop_structure.json (override with --out). Data: random uint8 images of the
model's input size (speed does not depend on pixel values).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CASES = {"small_cnn": (8, 8, 1), "lenet5": (28, 28, 1)}


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
  parser.add_argument("--periods", type=int, nargs="+", default=[4, 16])
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds per cell (after one warm-up)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                    "loop_structure.json"))
  return parser.parse_args()


def time_cell(model_name, shape, loop, period, args):
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from psops_jax import models, swarm as swarm_lib, sync as sync_lib

  n = args.particles
  mesh = swarm_lib.make_mesh(n)
  rng = np.random.RandomState(0)
  shard_size = 1024
  images = rng.randint(0, 256, (n, shard_size) + shape).astype(np.uint8)
  labels = rng.randint(0, 10, (n, shard_size)).astype(np.int32)
  probe = (images[0, :256], labels[0, :256])
  model = models.create(model_name)
  tx = optax.sgd(0.01, momentum=0.9)
  strategy = sync_lib.pso(axis_name=swarm_lib.AXES)
  cfg = swarm_lib.RoundConfig(period=period, batch_size=args.batch_size, fitness="round_loss",
                              loop=loop, local_layout="unroll", augment=False, mean=(0.5,),
                              std=(0.25,))
  swarm = swarm_lib.init_swarm(model, tx, strategy, images[0], n, 0, mesh, cfg.mean, cfg.std)
  data = swarm_lib.put_data((images, labels), probe, mesh)
  t0 = time.perf_counter()
  round_fn = swarm_lib.make_round(model, tx, strategy, cfg, mesh, 0).lower(
      swarm, data, jnp.int32(0)).compile()
  compile_seconds = time.perf_counter() - t0
  swarm, _ = round_fn(swarm, data, jnp.int32(0))
  jax.block_until_ready(swarm)
  times = []
  for r in range(1, args.rounds + 1):
    t0 = time.perf_counter()
    swarm, metrics = round_fn(swarm, data, jnp.int32(r))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t0)
  ms_per_step = 1000 * statistics.median(times) / period
  return {"model": model_name, "loop": loop, "period": period, "particles": n,
          "compile_seconds": round(compile_seconds, 2), "ms_per_step": round(ms_per_step, 2)}


def main():
  args = parse_args()
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={args.particles}")
  import jax
  rows = []
  print(f"{'model':10} {'period':>6} {'loop':>7} {'compile s':>10} {'ms/step':>8}")
  for model_name in args.models:
    for period in args.periods:
      for loop in ("unroll", "scan"):
        row = time_cell(model_name, CASES[model_name], loop, period, args)
        rows.append(row)
        print(f"{model_name:10} {period:6d} {loop:>7} {row['compile_seconds']:10.2f} "
              f"{row['ms_per_step']:8.2f}", flush=True)
  ratios = {}
  for model_name in args.models:
    for period in args.periods:
      cell = {r["loop"]: r for r in rows if r["model"] == model_name and r["period"] == period}
      ratios[f"{model_name}/period{period}"] = round(
          cell["scan"]["ms_per_step"] / cell["unroll"]["ms_per_step"], 2)
  result = {"rows": rows, "scan_over_unroll_time_per_step": ratios,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "backend": jax.default_backend(), "jax": jax.__version__}}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps({"scan_over_unroll_time_per_step": ratios, "machine": result["machine"]}))


if __name__ == "__main__":
  main()
