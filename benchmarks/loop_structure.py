"""How to compile a round's local steps: unrolled in the program, or inside `lax.scan`.

Runs the project's jitted round (PSO-PS sync) both ways, side by side in one process, for each model
and period asked, and reports compile seconds and milliseconds per local step of the swarm (median).
--max-unroll also times unrolled rounds split into calls of at most that many steps plus a sync call
(train.max_unroll), e.g. whether LeNet-5 on CPU prefers short chunks to one 16-step program.

  python benchmarks/loop_structure.py                       # small_cnn/digits and lenet5/28x28
  python benchmarks/loop_structure.py --particles 2 --periods 4 16 --rounds 5
  python benchmarks/loop_structure.py --models lenet5 --periods 16 --max-unroll 1 2 4 8

Writes benchmarks/results/loop_structure.json (override with --out). Data: random uint8 images of
the model's input size (speed does not depend on pixel values).
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
  parser.add_argument(
    "--out", default=os.path.join(os.path.dirname(__file__), "results", "loop_structure.json")
  )
  args = parser.parse_args()
  common.force_host_devices(args.particles)

  rows = []
  print(
    f"{'model':10} {'period':>6} {'loop':>7} {'max_unroll':>10} {'compile s':>10} {'ms/step':>8}"
  )
  for model_name in args.models:
    for period in args.periods:
      variants = [("unroll", 0), ("scan", 0)] + [
        ("unroll", m) for m in args.max_unroll if m < period
      ]
      for loop, max_unroll in variants:
        row = common.time_round(
          model_name,
          args.particles,
          args.particles,
          loop,
          "unroll",
          period,
          args.rounds,
          max_unroll=max_unroll,
        )
        rows.append(row)
        print(
          f"{model_name:10} {period:6d} {loop:>7} {max_unroll or '-':>10} "
          f"{row['compile_seconds']:10.2f} {row['ms_per_step']:8.2f}",
          flush=True,
        )
  ratios, chunked = {}, {}
  for model_name in args.models:
    for period in args.periods:
      cell = {
        (r["loop"], r["max_unroll"]): r
        for r in rows
        if r["model"] == model_name and r["period"] == period
      }
      whole = cell[("unroll", 0)]["ms_per_step"]
      ratios[f"{model_name}/period{period}"] = round(cell[("scan", 0)]["ms_per_step"] / whole, 2)
      for m in args.max_unroll:
        if ("unroll", m) in cell:
          chunked[f"{model_name}/period{period}/max_unroll{m}"] = round(
            cell[("unroll", m)]["ms_per_step"] / whole, 2
          )
  result = {
    "command": common.command_line(),
    "rows": rows,
    "scan_over_unroll_time_per_step": ratios,
    "chunked_over_whole_round_time_per_step": chunked,
    "machine": common.machine(),
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(
    json.dumps(
      {
        "scan_over_unroll_time_per_step": ratios,
        "chunked_over_whole_round_time_per_step": chunked,
        "machine": result["machine"],
      }
    )
  )


if __name__ == "__main__":
  main()
