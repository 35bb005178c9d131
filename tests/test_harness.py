"""benchmarks/harness.py on hand-made callables and a fake clock: the interleaving, per-operation
seconds, slow callables, the record written with every result and the atomic write. No JAX."""

import ast
import json
import os
import subprocess
import sys

import pytest

from benchmarks import harness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clock(monkeypatch):
  """A fake wall clock that only the callables move (`clock.advance(seconds)`); CPU time moves
  half as fast."""

  class Clock:
    now = 0.0

    def advance(self, seconds):
      self.now += seconds

  fake = Clock()
  monkeypatch.setattr(harness, "wall_seconds", lambda: fake.now)
  monkeypatch.setattr(harness, "cpu_seconds", lambda: fake.now / 2)
  return fake


def recorder(calls, clock, seconds):
  """{name: callable} that log their name and take `seconds[name]` on the fake clock."""

  def make(name):
    def fn():
      calls.append(name)
      clock.advance(seconds[name])

    return fn

  return {name: make(name) for name in seconds}


def test_callables_run_interleaved_after_the_warmup(clock):
  calls = []
  timed = harness.measure(recorder(calls, clock, {"a": 1.0, "b": 2.0, "c": 3.0}), 3, warmup=2)
  assert calls == ["a", "b", "c"] * 5  # 2 warm-up rounds, then A B C three times
  assert timed["b"]["seconds"] == [2.0, 2.0, 2.0]
  assert timed["c"]["wall"] == {
    "median": 3.0,
    "p25": 3.0,
    "p75": 3.0,
    "min": 3.0,
    "max": 3.0,
    "n": 3,
  }
  assert timed["a"]["cpu_seconds"] == [0.5] * 3 and timed["a"]["cpu_over_wall"] == 0.5
  assert timed["a"]["warmup_seconds"] == 1.0 and not timed["a"]["slow"]


def test_a_seed_shuffles_each_repetition_and_still_runs_every_callable_once_in_it(clock):
  calls = []
  harness.measure(recorder(calls, clock, dict.fromkeys("abcd", 1.0)), 6, warmup=0, seed=3)
  reps = [calls[i : i + 4] for i in range(0, 24, 4)]
  assert all(sorted(rep) == list("abcd") for rep in reps)
  assert len({tuple(rep) for rep in reps}) > 1
  assert list(harness.interleaved(list("ab"), 2)) == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]


def test_seconds_are_per_operation_when_a_callable_returns_a_count(clock):
  block = harness.repeat(lambda: clock.advance(0.5), 4)
  timed = harness.measure({"block": block}, 2, warmup=0)
  assert timed["block"]["seconds"] == [0.5, 0.5]  # 2 s per block of 4 calls


def test_a_block_stops_after_its_time_budget_but_runs_at_least_twice(clock):
  count = []
  block = harness.repeat(lambda: (count.append(1), clock.advance(1.0)), 100, max_seconds=2.5)
  assert block() == 3 and len(count) == 3  # at 3 s the budget of 2.5 s is spent
  assert harness.repeat(lambda: clock.advance(10.0), 100, max_seconds=1.0)() == 2


def test_calls_for_aims_at_the_target_duration(clock):
  assert harness.calls_for(lambda: clock.advance(0.25), 1.0) == 4  # binary fractions: exact
  assert harness.calls_for(lambda: clock.advance(1.0), 0.02, at_least=10) == 10


def test_a_callable_whose_warmup_is_slow_is_timed_in_the_first_repetitions_only(clock):
  calls = []
  timed = harness.measure(
    recorder(calls, clock, {"a": 1.0, "b": 1.0, "slow": 50.0}), 5, slow_factor=5, slow_repetitions=2
  )
  assert timed["slow"]["slow"] and timed["slow"]["wall"]["n"] == 2
  assert timed["a"]["wall"]["n"] == 5 and calls.count("slow") == 3  # warm-up + 2


def test_setup_runs_untimed_before_every_call_of_its_callable(clock):
  calls = []
  fns = recorder(calls, clock, {"a": 1.0})
  setup = {"a": lambda: (calls.append("setup"), clock.advance(100.0))}
  timed = harness.measure(fns, 2, warmup=1, setup=setup)
  assert calls == ["setup", "a"] * 3 and timed["a"]["seconds"] == [1.0, 1.0]


def test_paired_ratio_and_spread():
  assert harness.paired_ratio([2.0, 6.0, 9.0], [1.0, 2.0, 3.0])["median"] == 3.0
  s = harness.spread([5, 1, 4, 2, 3])
  assert (s["min"], s["p25"], s["median"], s["p75"], s["max"], s["n"]) == (1, 2, 3, 4, 5, 5)
  with pytest.raises(ValueError, match="repetitions must be at least 1"):
    harness.measure({"a": lambda: None}, 0)


def test_the_result_holds_the_command_the_commit_the_machine_and_the_load(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", [os.path.join(REPO, "benchmarks", "x.py"), "--quick"])
  path = tmp_path / "deeper" / "result.json"
  harness.write_result(str(path), {"ratio": 1.5})
  result = json.loads(path.read_text())
  assert result["command"] == "python benchmarks/x.py --quick"
  head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
  assert result["code_version"].split("+")[0] == head.stdout.strip()
  assert {"platform", "processor", "cpus", "xla_flags"} <= set(result["machine"])
  assert len(result["load_average"]["start"]) == len(result["load_average"]["end"]) == 3
  assert result["ratio"] == 1.5
  with pytest.raises(ValueError, match="machine"):
    harness.write_result(str(path), {"machine": "mine"})


def test_the_measured_code_is_the_package_and_the_scripts_not_their_results():
  """MEASURED_CODE, as git reads the pathspecs: a result's "+modified" says that the package or a
  benchmark script differs from the commit, never that a result or a note does."""
  listed = subprocess.run(
    ["git", "ls-files", "--", *harness.MEASURED_CODE], cwd=REPO, capture_output=True, text=True
  )
  if listed.returncode != 0:
    pytest.skip("needs this package's git checkout")
  files = set(listed.stdout.split())
  assert {"train.py", "psops_jax/sync/__init__.py", "psops_jax/clock.py"} <= files
  assert {"benchmarks/harness.py", "benchmarks/round_vs_floor.py"} <= files
  everything = subprocess.run(
    ["git", "ls-files", "--", "benchmarks"], cwd=REPO, capture_output=True, text=True
  ).stdout.split()
  left_out = {f for f in everything if f.startswith("benchmarks/results/") or f.endswith(".md")}
  assert "benchmarks/README.md" in left_out and len(left_out) > 10  # there to leave out
  assert not left_out & files


def test_a_failed_write_leaves_the_previous_result_whole_and_no_temporary_file(tmp_path):
  path = tmp_path / "result.json"
  harness.write_result(str(path), {"run": 1})
  with pytest.raises(TypeError):
    harness.write_result(str(path), {"run": 2, "bad": object()})  # not JSON: fails mid-write
  assert json.loads(path.read_text())["run"] == 1
  assert os.listdir(tmp_path) == ["result.json"]


def test_publish_prints_the_summary_with_the_machine_last(tmp_path, capsys):
  harness.publish(str(tmp_path / "r.json"), {"ratio": 2.0}, {"rows": [1, 2]})
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert last["ratio"] == 2.0 and "cpus" in last["machine"] and "rows" not in last
  assert json.loads((tmp_path / "r.json").read_text())["rows"] == [1, 2]


def test_the_harness_imports_no_framework():
  code = (
    "import sys; from benchmarks import harness; harness.record(); "
    "print(sorted({'jax', 'torch'} & set(sys.modules)))"
  )
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
  )
  assert done.stdout.strip() == "[]", done.stderr


def benchmark_imports(source: str) -> set:
  """The modules of the benchmarks package that a source file imports."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.module == "benchmarks":
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("benchmarks."):
      found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("benchmarks.")}
  return found


def test_no_benchmark_imports_another():
  """Benchmarks share code only through the modules that are not benchmarks, and the study tools
  in studies/ take nothing else from benchmarks/ either."""
  shared = {"common", "harness", "torch_models"}
  for folder in ("benchmarks", "studies"):
    for name in sorted(n for n in os.listdir(os.path.join(REPO, folder)) if n.endswith(".py")):
      with open(os.path.join(REPO, folder, name)) as f:
        source = f.read()
      assert benchmark_imports(source) <= shared, f"{folder}/{name}"
  assert benchmark_imports("from benchmarks import common, round_cost") == {"common", "round_cost"}
