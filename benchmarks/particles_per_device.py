"""Several particles per device: which layout keeps the cost per particle-step of one particle per
device?

For each device count D in --devices, side by side in one process: the baseline swarm of D
particles, one per device, and the swarm of N particles (8 by default) packed N / D per device on
the same D devices, with the per-device passes either written one after another ("unroll", the
default layout) or vmapped ("vmap": grouped convolutions on XLA:CPU). Reports milliseconds per
particle-step (median round time / period / particles) and the packed swarm's ratio to the baseline
on the same devices (1.0 = no cost for packing; the baseline and the packed swarm use the same
hardware).

  python benchmarks/particles_per_device.py
  python benchmarks/particles_per_device.py --models lenet5 --devices 2 --rounds 3

Writes benchmarks/results/particles_per_device.json (override with --out).
"""

import argparse
import json
import os

from benchmarks import common


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--particles", type=int, default=8)
  parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
  parser.add_argument(
    "--layouts", nargs="+", default=["unroll", "vmap"], choices=["unroll", "vmap"]
  )
  parser.add_argument(
    "--models", nargs="+", default=["small_cnn", "lenet5"], choices=list(common.INPUT_SHAPES)
  )
  parser.add_argument("--period", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument(
    "--out", default=os.path.join(os.path.dirname(__file__), "results", "particles_per_device.json")
  )
  args = parser.parse_args()
  common.force_host_devices(max(args.devices))

  rows = []
  print(
    f"{'model':10} {'devices':>7} {'particles':>9} {'layout':>7} {'compile s':>9} "
    f"{'ms/particle-step':>16} {'vs 1/dev':>8}"
  )
  for model_name in args.models:
    for devices in args.devices:
      cells = [(devices, "unroll")] + [(args.particles, layout) for layout in args.layouts]
      baseline = None
      for particles, layout in cells:
        row = common.time_round(
          model_name, particles, devices, "unroll", layout, args.period, args.rounds
        )
        baseline = baseline or row["ms_per_particle_step"]
        row["vs_one_per_device"] = round(row["ms_per_particle_step"] / baseline, 2)
        rows.append(row)
        print(
          f"{model_name:10} {devices:7d} {particles:9d} {layout:>7} "
          f"{row['compile_seconds']:9.2f} {row['ms_per_particle_step']:16.3f} "
          f"{row['vs_one_per_device']:8.2f}",
          flush=True,
        )
  result = {
    "command": "python benchmarks/particles_per_device.py",
    "rows": rows,
    "machine": common.machine(),
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(
    json.dumps(
      {
        "vs_one_per_device": {
          f"{r['model']}/{r['particles']}on{r['devices']}/{r['layout']}": r["vs_one_per_device"]
          for r in rows
          if r["particles"] != r["devices"]
        },
        "machine": result["machine"],
      }
    )
  )


if __name__ == "__main__":
  main()
