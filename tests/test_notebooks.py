"""The notebooks in notebooks/: stored without outputs, and each runs top to bottom at tiny size.

Every notebook is executed with papermill in a fresh kernel (the `python3` kernel, which resolves to
the Python running pytest), with tiny parameters injected into its `parameters` cell: scikit-learn's
digits, 4 particles, 6 rounds of period 4, a test evaluation every 2 rounds. The kernel is a
separate process: it inherits XLA_FLAGS from tests/conftest.py, and the notebook sets the device
count itself anyway.
"""

import glob
import json
import os
import sys

import nbformat
import papermill
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
COMPARISONS = ("psops_mnist.ipynb", "psops_cifar10.ipynb")

TINY = {
  "DATASET": "digits",
  "DATA_SOURCE": "sklearn",
  "DATA_DIR": "",
  "MODEL": "auto",
  "NUM_PARTICLES": 4,
  "PERIOD": 4,
  "ROUNDS": 6,
  "EVAL_EVERY": 2,
}
CELL_TIMEOUT_SECONDS = 300


def test_the_three_notebooks_are_there():
  assert sorted(map(os.path.basename, NOTEBOOKS)) == sorted(COMPARISONS + ("swarm_anatomy.ipynb",))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_stored_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {i} has stored outputs: clear them before committing"
      assert cell.execution_count is None, f"cell {i} has an execution count: clear it"
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "exactly one cell tagged 'parameters' (papermill)"
  parameters = papermill.inspect_notebook(path)
  assert set(TINY) | {"WORKDIR", "REPO_URL"} <= set(parameters), "parameters the test injects"


def eval_rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == TINY["ROUNDS"]
  return [r for r in rows if "final_test_accuracy" in r]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_runs_top_to_bottom_at_tiny_size(path, tmp_path):
  workdir = str(tmp_path / "workdir")
  executed = str(tmp_path / os.path.basename(path))
  # Raises PapermillExecutionError (with the failing cell's traceback) if any cell fails.
  papermill.execute_notebook(
    path,
    executed,
    parameters={**TINY, "WORKDIR": workdir},
    kernel_name="python3",
    cwd=NOTEBOOK_DIR,
    execution_timeout=CELL_TIMEOUT_SECONDS,
    progress_bar=False,
  )

  nb = nbformat.read(executed, as_version=4)
  printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert f"({sys.executable})" in printed, "the kernel must run the Python that runs the tests"
  assert "backend cpu" in printed

  if os.path.basename(path) in COMPARISONS:
    for strategy in ("pso", "average"):
      assert len(eval_rows(os.path.join(workdir, strategy))) >= 2
      with open(os.path.join(workdir, strategy, "summary.json")) as f:
        assert json.load(f)["strategy"] == strategy
    assert os.path.getsize(os.path.join(workdir, "accuracy.png")) > 0
  else:
    assert len(eval_rows(workdir)) >= 2
    assert os.path.getsize(os.path.join(workdir, "swarm_anatomy.png")) > 0
