"""The study of benchmarks/study.py on scikit-learn's digits with the small CNN (no download).

  python benchmarks/study.py --study configs/study_digits.py --out results/digits [--quick]
"""

import ml_collections

from configs import study_fashion_mnist


def get_config():
  study = ml_collections.ConfigDict()
  study.base = "configs/digits_pso.py"
  study.variants = {s: {"sync.strategy": s} for s in study_fashion_mnist.STRATEGIES}
  study.periods = [1, 8, 32]
  study.num_particles = [8]
  study.seeds = [0, 1, 2]
  study.total_steps = 192
  study.evals = 3
  study.overrides = {}
  study.one_big_worker = True

  quick = ml_collections.ConfigDict(study.to_dict())  # every strategy at periods 1, 8, 32, one seed
  quick.seeds = [0]
  quick.one_big_worker = False
  study.quick = quick
  return study
