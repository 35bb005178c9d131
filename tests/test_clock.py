"""The communication clock (psops_jax/clock.py) on hand-computed cases."""

import pytest

from psops_jax import clock, headline

W = 1e6  # bytes of a run's full weights


def profile(step, bandwidth=1e9, latency=0.0, workers=8, overlap=0.0):
  return clock.Profile(step, bandwidth, latency, workers, W, overlap)


def test_collectives_by_hand():
  # ring all-reduce, 8 workers: 2 * 7 messages, 2 * 7/8 of the payload each way
  got = clock.collective_seconds("all_reduce", 1e6, 8, 1e9, 1e-5)
  assert got == pytest.approx(14 * 1e-5 + 1.75e-3)
  # all-gather: 7 messages, 7 payloads received
  assert clock.collective_seconds("all_gather", 1e6, 8, 1e9, 1e-5) == pytest.approx(7e-5 + 7e-3)
  assert clock.collective_seconds("none", 1e6, 8, 1e9, 1e-5) == 0.0
  assert clock.collective_seconds("all_reduce", 1e6, 1, 1e9, 1e-5) == 0.0  # one worker
  with pytest.raises(ValueError, match="all_to_all"):
    clock.collective_seconds("all_to_all", 1.0, 8, 1.0, 0.0)


def test_a_periodic_run_by_hand():
  """704 steps at period 16: 44 rounds of 16 x 10 ms and one all-reduce of the weights."""
  shape = clock.RunShape(period=16, model_bytes=W)
  sync = 2 * 7 / 8 * W / 1e9  # 1.75 ms
  got = clock.projected_seconds(704, 44 * W, shape, profile(0.01))
  assert got == pytest.approx(44 * (0.16 + sync))
  # at the first evaluation: 11 rounds
  assert clock.projected_seconds(176, 11 * W, shape, profile(0.01)) == pytest.approx(got / 4)
  # a compressed payload (a quarter of the weights) costs a quarter of the transfer
  assert clock.projected_seconds(704, 11 * W, shape, profile(0.01)) == pytest.approx(
    44 * (0.16 + sync / 4)
  )


def test_overlap_hides_what_it_should_and_no_more():
  shape = clock.RunShape(period=16, model_bytes=W)
  sync = 2 * 7 / 8 * W / 1e9
  half = clock.projected_seconds(704, 44 * W, shape, profile(0.01, overlap=0.5))
  assert half == pytest.approx(44 * (0.16 + sync / 2))
  # a streaming delay of one round hides a sync shorter than the round entirely ...
  hidden = shape._replace(hidden_rounds=1)
  assert clock.projected_seconds(704, 44 * W, hidden, profile(0.01)) == pytest.approx(44 * 0.16)
  # ... and a longer one only up to the round: the link carries one sync per round
  slow = profile(0.01, bandwidth=1e6)  # a sync of 1.75 s against a round of 0.16 s
  assert clock.projected_seconds(704, 44 * W, hidden, slow) == pytest.approx(44 * 1.75)
  two = shape._replace(hidden_rounds=2)
  assert clock.projected_seconds(704, 44 * W, two, slow) == pytest.approx(44 * 1.75)
  assert clock.event_seconds(1.0, 0.5, 0.0, 0) == 1.5
  assert clock.event_seconds(1.0, 2.5, 0.0, 2) == 2.5  # 1 + (2.5 - 2) = 1.5, but the link: 2.5
  # a profile whose backend does not run the collective behind the next round credits nothing
  blocking = profile(0.01)._replace(hides_rounds=False)
  assert clock.projected_seconds(704, 44 * W, hidden, blocking) == pytest.approx(44 * (0.16 + sync))


def test_ssgd_pays_one_all_reduce_per_step():
  shape = clock.RunShape(period=16, model_bytes=W, per_step=True)
  sync = 2 * 7 / 8 * W / 1e9
  assert clock.projected_seconds(704, 704 * W, shape, profile(0.01)) == pytest.approx(
    704 * (0.01 + sync)
  )


def test_ratio_profile_counts_time_in_full_all_reduces():
  """At ratio r a step lasts r all-reduces of the weights: DiLoCo at period 16 over 704 steps
  costs 704 r + 44, ssgd 704 r + 704, an all-gather of the weights (N / 2) = 4 all-reduces."""
  r = clock.ratio_profile(0.1)
  periodic = clock.RunShape(period=16, model_bytes=W)
  assert clock.projected_seconds(704, 44 * W, periodic, r) == pytest.approx(70.4 + 44)
  ssgd = periodic._replace(per_step=True)
  assert clock.projected_seconds(704, 704 * W, ssgd, r) == pytest.approx(70.4 + 704)
  gathered = periodic._replace(kind="all_gather")
  assert clock.projected_seconds(704, 44 * W, gathered, r) == pytest.approx(70.4 + 44 * 4)
  assert clock.full_allreduce_ratio(r) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="ratio=0"):
    clock.ratio_profile(0.0)


def test_named_profiles_span_fast_and_slow_links():
  fast, slow = clock.PROFILES["1b_h100_400gbit"], clock.PROFILES["1b_h100_1gbit"]
  # 6 x 1e9 x 65,536 FLOPs at 0.4 x 989 TFLOP/s = 0.994 s; 4 GB over a ring of 8 at 50 GB/s
  assert fast.step_seconds == pytest.approx(0.994, rel=1e-3)
  assert clock.full_allreduce_ratio(fast) == pytest.approx(
    0.994 / (14 * 5e-6 + 1.75 * 4e9 / 50e9), rel=1e-3
  )
  assert clock.full_allreduce_ratio(slow) < 0.02 < 5 < clock.full_allreduce_ratio(fast)
  for name, p in clock.PROFILES.items():
    assert p.note and clock.profile_from_name(name) is p
  assert clock.profile_from_name("ratio=0.5").step_seconds == 0.5
  for bad in ("ratio=x", "ratio=-1", "h100"):
    with pytest.raises(ValueError, match="accepted values"):
      clock.profile_from_name(bad)


def test_time_to_target_is_the_first_evaluation_that_reaches_it():
  shape = clock.RunShape(period=16, model_bytes=W)
  curve = [(176, 11 * W, 0.80), (352, 22 * W, 0.86), (528, 33 * W, 0.85), (704, 44 * W, 0.87)]
  r, accuracy = clock.ratio_profile(1.0), headline.METRICS["classification"]
  assert clock.time_to_target(curve, 0.85, shape, r, accuracy) == pytest.approx(352 + 22)
  assert clock.time_to_target(curve, 0.87, shape, r, accuracy) == pytest.approx(704 + 44)
  assert clock.time_to_target(curve, 0.9, shape, r, accuracy) is None
