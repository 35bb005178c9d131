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

Writes benchmarks/results/particles_per_device.json (override with --out) with the command, machine
and load.
"""

import argparse
import itertools
import os

from benchmarks import common, harness


def parse_args() -> argparse.Namespace:
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
  parser.add_argument("--out", default=os.path.join(harness.RESULTS, "particles_per_device.json"))
  return parser.parse_args()


def measure(args) -> list:
  """Per model and device count: the baseline (one particle per device), then the packed swarm in
  each layout, with its ratio to the baseline; printed as they come."""
  rows = []
  print(
    f"{'model':10} {'devices':>7} {'particles':>9} {'layout':>7} {'compile s':>9} "
    f"{'ms/particle-step':>16} {'vs 1/dev':>8}"
  )
  for model, devices in itertools.product(args.models, args.devices):
    baseline = None
    for particles, layout in [(devices, "unroll")] + [(args.particles, l) for l in args.layouts]:
      row = common.time_round(
        model, args.rounds, particles=particles, devices=devices, layout=layout, period=args.period
      )
      baseline = baseline or row["ms_per_particle_step"]
      row["vs_one_per_device"] = round(row["ms_per_particle_step"] / baseline, 2)
      rows.append(row)
      print(
        f"{model:10} {devices:7d} {particles:9d} {layout:>7} {row['compile_seconds']:9.2f} "
        f"{row['ms_per_particle_step']:16.3f} {row['vs_one_per_device']:8.2f}",
        flush=True,
      )
  return rows


def main():
  args = parse_args()
  common.force_host_devices(max(args.devices))
  rows = measure(args)
  packed = {
    f"{r['model']}/{r['particles']}on{r['devices']}/{r['layout']}": r["vs_one_per_device"]
    for r in rows
    if r["particles"] != r["devices"]
  }
  harness.publish(args.out, {"vs_one_per_device": packed}, {"rows": rows})


if __name__ == "__main__":
  main()
