"""The study of studies/study.py on scikit-learn's digits with the small CNN (no download).

  python studies/study.py --study configs/study_digits.py --out results/digits [--quick]

--quick: every strategy at periods 1, 8 and 32, one seed.
"""

from configs import study_fashion_mnist


def get_config() -> dict:
  study = {
    "base": "configs/digits_pso.py",
    "variants": {s: {"sync.strategy": s} for s in study_fashion_mnist.STRATEGIES},
    "periods": [1, 8, 32],
    "num_particles": [8],
    "seeds": [0, 1, 2],
    "total_steps": 192,
    "evals": 3,
    "overrides": {},
    "one_big_worker": True,
  }
  study["quick"] = dict(study, seeds=[0], one_big_worker=False)
  return study
