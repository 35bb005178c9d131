"""Where choosing might beat averaging: faulty workers, non-IID shards, unstable learning
rates.

Fashion-MNIST, LeNet-5, 8 particles, 704 local steps (configs/fashion_mnist_pso.py), periods
4/16/64, seeds 0-2. Each scenario is a named sub-grid (--grid NAME) with its own output directory:

  python studies/study.py --study configs/study_robustness.py --grid nan \
      --out studies/results/robustness_nan

Scenarios:
  nan, noise, lr       2 of the 8 workers faulty from local step 176 (a quarter of the run): weights
                       set to NaN, weights replaced by N(0, 1) noise (about 10x the weights' scale),
                       or updates 10x too large (learning rate 0.5 instead of 0.05) from then on
  dirichlet_0.1, dirichlet_1, dirichlet_100
                       label-skewed shards, each class split ~ Dirichlet(alpha) between the workers
  lr_sweep             averaging alone at learning rates 0.1 / 0.2 / 0.4 / 0.8 (period 16, seed 0):
                       finds the largest learning rate at which averaging still converges (0.1 of
                       these: 0.2 and above collapse to chance; docs/RESULTS.md at 0b3a7f5)
  lr_edge, lr_2x       every strategy at that learning rate (0.1) and at twice it (0.2)
"""

from configs import study_fashion_mnist

STRATEGIES = {
  "pso": {"sync.strategy": "pso"},
  "pso_average": {
    "sync.strategy": "pso_average",
    "sync.pso.social": 0.5,
    "sync.pso.mean_pull": 0.5,
  },
  "average": {"sync.strategy": "average"},
  "robust_median": {"sync.strategy": "robust_average", "sync.robust.method": "median"},
  "robust_trimmed": {
    "sync.strategy": "robust_average",
    "sync.robust.method": "trimmed_mean",
    "sync.robust.trim": 2,
  },
  "ssgd": {"sync.strategy": "ssgd"},
  "none": {"sync.strategy": "none"},
}
FAULT = {"faults.particles": 2, "faults.step": 176}
SCENARIOS = {
  "nan": dict(FAULT, **{"faults.kind": "nan"}),
  "noise": dict(FAULT, **{"faults.kind": "noise", "faults.scale": 1.0}),
  "lr": dict(FAULT, **{"faults.kind": "lr", "faults.scale": 10.0}),
  "dirichlet_0.1": {"data.partition": "dirichlet", "data.dirichlet_alpha": 0.1},
  "dirichlet_1": {"data.partition": "dirichlet", "data.dirichlet_alpha": 1.0},
  "dirichlet_100": {"data.partition": "dirichlet", "data.dirichlet_alpha": 100.0},
}
LEARNING_RATES = (0.1, 0.2, 0.4, 0.8)
EDGE_LEARNING_RATE = 0.1  # the largest of LEARNING_RATES at which averaging converged (lr_sweep)


def get_config() -> dict:
  # evals=1: the test split only at the end. The 3 evaluations on the way would cost 10 models x
  # 10,000 test images each (300,000 forward passes beside the run's 180,224 training samples), and
  # the scenarios are compared by final accuracy.
  base = dict(
    study_fashion_mnist.get_config(),
    variants=STRATEGIES,
    periods=[4, 16, 64],
    num_particles=[8],
    one_big_worker=False,
    evals=1,
  )
  base.pop("quick")
  study = {name: dict(base, overrides=overrides) for name, overrides in SCENARIOS.items()}
  study["lr_sweep"] = dict(
    base,
    periods=[16],
    seeds=[0],
    variants={
      f"average_lr{lr}": {"sync.strategy": "average", "optimizer.learning_rate": lr}
      for lr in LEARNING_RATES
    },
  )
  study["lr_edge"] = dict(base, overrides={"optimizer.learning_rate": EDGE_LEARNING_RATE})
  study["lr_2x"] = dict(base, overrides={"optimizer.learning_rate": 2 * EDGE_LEARNING_RATE})
  study.update(study["nan"])  # the top-level grid: the NaN-worker scenario
  return study
