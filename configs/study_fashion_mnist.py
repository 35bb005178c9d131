"""The study of benchmarks/study.py on Fashion-MNIST with LeNet-5 (configs/fashion_mnist_pso.py).

  python benchmarks/study.py --study configs/study_fashion_mnist.py --out results/fmnist [--quick]

Every cell: 704 local steps of batch 32 per particle (3 passes over 7,500 examples with 8 particles),
SGD lr 0.05 momentum 0.9, evaluated on the test split at 4 points. `variants` maps a name to the config
overrides that make it; the sync methods run with their defaults (configs/digits_pso.py).
"""

import ml_collections

STRATEGIES = ("pso", "pso_average", "average", "easgd", "diloco", "ssgd", "none")


def get_config():
  study = ml_collections.ConfigDict()
  study.base = "configs/fashion_mnist_pso.py"
  study.variants = {s: {"sync.strategy": s} for s in STRATEGIES}
  study.periods = [1, 4, 16, 64]
  study.num_particles = [4, 8]
  study.seeds = [0, 1, 2]
  study.total_steps = 704
  study.evals = 4
  study.overrides = {}
  study.one_big_worker = True

  quick = ml_collections.ConfigDict(study.to_dict())
  quick.periods = [4, 16]
  quick.num_particles = [8]
  quick.seeds = [0]
  quick.total_steps = 256
  quick.evals = 2
  quick.one_big_worker = False
  study.quick = quick
  return study
