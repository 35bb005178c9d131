"""How to compile a round's local steps: unrolled in the program, or inside `lax.scan`.

Runs the project's jitted round (PSO-PS sync) both ways, side by side in one process, for each model
and period asked, and reports compile seconds and milliseconds per local step of the swarm (median).
--max-unroll also times unrolled rounds split into calls of at most that many steps plus a sync call
(train.max_unroll), e.g. whether LeNet-5 on CPU prefers short chunks to one 16-step program.

  python benchmarks/loop_structure.py                       # small_cnn/digits and lenet5/28x28
  python benchmarks/loop_structure.py --particles 2 --periods 4 16 --rounds 5
  python benchmarks/loop_structure.py --models lenet5 --periods 16 --max-unroll 1 2 4 8

Writes benchmarks/results/loop_structure.json (override with --out) with the command, machine and
load. Data: random uint8 images of the model's input size (speed does not depend on pixel values).
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
  parser.add_argument(
    "--models", nargs="+", default=["small_cnn", "lenet5"], choices=list(common.INPUT_SHAPES)
  )
  parser.add_argument("--periods", type=int, nargs="+", default=[4, 16])
  parser.add_argument(
    "--rounds", type=int, default=5, help="timed rounds per cell (after a warm-up)"
  )
  parser.add_argument(
    "--max-unroll",
    type=int,
    nargs="*",
    default=[],
    help="also unrolled rounds chunked into calls of at most this many steps",
  )
  parser.add_argument("--out", default=os.path.join(harness.RESULTS, "loop_structure.json"))
  return parser.parse_args()


def measure(args) -> list:
  """One row per model, period and loop (`common.time_round`), printed as it comes."""
  rows = []
  print(
    f"{'model':10} {'period':>6} {'loop':>7} {'max_unroll':>10} {'compile s':>10} {'ms/step':>8}"
  )
  for model, period in itertools.product(args.models, args.periods):
    chunked = [("unroll", m) for m in args.max_unroll if m < period]
    for loop, max_unroll in [("unroll", 0), ("scan", 0)] + chunked:
      devices = {"particles": args.particles, "devices": args.particles}
      row = common.time_round(
        model, args.rounds, **devices, loop=loop, period=period, max_unroll=max_unroll
      )
      rows.append(row)
      print(
        f"{model:10} {period:6d} {loop:>7} {max_unroll or '-':>10} "
        f"{row['compile_seconds']:10.2f} {row['ms_per_step']:8.2f}",
        flush=True,
      )
  return rows


def ratios(rows: list, max_unrolls: list) -> dict:
  """Time per step of scan, and of each chunked round, over the whole unrolled round's, per model
  and period."""
  cells = {}
  for r in rows:
    cells.setdefault((r["model"], r["period"]), {})[(r["loop"], r["max_unroll"])] = r["ms_per_step"]
  scan, chunked = {}, {}
  for (model, period), cell in cells.items():
    whole = cell[("unroll", 0)]
    scan[f"{model}/period{period}"] = round(cell[("scan", 0)] / whole, 2)
    for m in (m for m in max_unrolls if ("unroll", m) in cell):
      chunked[f"{model}/period{period}/max_unroll{m}"] = round(cell[("unroll", m)] / whole, 2)
  return {
    "scan_over_unroll_time_per_step": scan,
    "chunked_over_whole_round_time_per_step": chunked,
  }


def main():
  args = parse_args()
  common.force_host_devices(args.particles)
  rows = measure(args)
  harness.publish(args.out, ratios(rows, args.max_unroll), {"rows": rows})


if __name__ == "__main__":
  main()
