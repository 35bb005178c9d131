"""round_vs_floor.py and scaling.py on hand-made timings: which variants are compared, and the
paired ratios. No JAX."""

import argparse

from benchmarks import round_vs_floor, scaling


def timing(seconds):
  return {"seconds": seconds, "cpu_over_wall": 1.0}


def test_the_fastest_floor_and_torch_variants_are_compared_repetition_by_repetition():
  args = argparse.Namespace(particles=2, period=4, batch_size=8)  # 64 samples per round
  timed = {
    "framework/pso": timing([1.0, 2.0, 4.0]),
    "framework/1dev": timing([2.0, 2.0, 2.0]),
    "floor/step_loop": timing([3.0, 3.0, 3.0]),
    "floor/unrolled/slice": timing([2.0, 4.0, 2.0]),  # the faster floor (median 2 s)
    "torch/2threads": timing([8.0, 8.0, 8.0]),
    "torch/1thread": timing([4.0, 4.0, 4.0]),
  }
  rows, ratios, chosen = round_vs_floor.summarize(timed, {"framework/pso": 1.5}, args)
  assert chosen == {"floor": "floor/unrolled/slice", "torch": "torch/1thread"}
  assert rows["framework/pso"]["samples_per_second"]["median"] == 32.0
  assert (
    rows["framework/pso"]["compile_seconds"] == 1.5
    and rows["floor/step_loop"]["compile_seconds"] is None
  )
  assert ratios["framework_vs_floor"]["median"] == 2.0  # pairs 2/1, 4/2, 2/4
  assert ratios["framework_vs_floor"]["min"] == 0.5
  assert ratios["framework_vs_torch"]["median"] == 2.0 and "framework_pso_vs_none" not in ratios


def test_without_torch_there_is_no_torch_ratio():
  args = argparse.Namespace(particles=1, period=1, batch_size=1)
  timed = {"framework/pso": timing([1.0]), "floor/step_loop": timing([1.0])}
  _, ratios, chosen = round_vs_floor.summarize(timed, {}, args)
  assert chosen["torch"] is None and set(ratios) == {"framework_vs_floor"}


def test_scaling_cells_and_the_ratio_to_the_floor():
  assert scaling.cells(8, [1, 2, 4, 8]) == [(1, 1), (2, 2), (4, 4), (8, 8), (8, 1), (8, 2), (8, 4)]
  assert scaling.cells(3, [1, 2]) == [(1, 1), (2, 2), (3, 1)]
  row = scaling.row(timing([2.0, 4.0]), 4, 2, 8, floor_seconds=[1.0, 1.0])
  assert row["samples_per_second"]["median"] == 24.0  # 64 samples in 2 s (32/s) and in 4 s (16/s)
  assert row["vs_floor"]["median"] == 1.5  # 4 particles' worth of floor (4 s) / 2 s, / 4 s
