"""PSO-PS variants against averaging: Fashion-MNIST, LeNet-5, 8 particles, 704 steps.

  python studies/study.py --study configs/study_pso_variants.py --grid search \
      --out studies/results/study_pso_search                     # validation split, seed 0
  python studies/study.py --study configs/study_pso_variants.py \
      --out studies/results/study_pso_variants --periods 16 64 \
      --variants pso_textbook pso_jump_kept pso_jump_forgotten pso pso_average_half average none
  python studies/study.py --study configs/study_pso_variants.py \
      --out studies/results/study_pso_variants --periods 16 64 \
      --variants $(python studies/pick_finalists.py
      studies/results/study_pso_search/results.csv) average

The first variants are the rows of the founding PyTorch simulation (SGD lr 0.05 momentum 0.9,
batch 32, about 3 passes over each 7,500-example shard), rebuilt from psops_jax's options:

  pso_textbook       w = c1 = c2 = 0.5, bests kept across rounds, fitness = mean loss of the round
  pso_jump_kept      w = c1 = 0, c2 = 1 (jump toward the best), bests kept, round loss
  pso_jump_forgotten the same, bests forgotten every round
  pso                the same, fitness on a common 1,024-example probe batch (the package default)
  pso_average_half   PSO + pull to the mean, c2 = c3 = 0.5, forgotten, probe
  average, none      parameter averaging; independent particles

`search` (--grid search) is the search for a PSO-based sync that beats averaging, on a validation
split (5,000 training examples held out; the test split is not read), seed 0, periods 16 and 64:
the issue-8 options of `pso` one at a time on top of the default, and the selection-based
strategies best_pull and topk_average. The winners then run on the test split with 3 seeds.
"""

from configs import study_fashion_mnist

TEXTBOOK = {
  "sync.strategy": "pso",
  "sync.pso.inertia": 0.5,
  "sync.pso.cognitive": 0.5,
  "sync.pso.social": 0.5,
  "sync.pso.memory": "forever",
  "sync.pso.fitness": "round_loss",
}
JUMP_KEPT = {"sync.strategy": "pso", "sync.pso.memory": "forever", "sync.pso.fitness": "round_loss"}

VARIANTS = {
  "pso_textbook": TEXTBOOK,
  "pso_jump_kept": JUMP_KEPT,
  "pso_jump_forgotten": dict(JUMP_KEPT, **{"sync.pso.memory": "round"}),
  "pso": {"sync.strategy": "pso"},
  "pso_average_half": {
    "sync.strategy": "pso_average",
    "sync.pso.social": 0.5,
    "sync.pso.mean_pull": 0.5,
  },
  "average": {"sync.strategy": "average"},
  "none": {"sync.strategy": "none"},
}


PROBE = {"sync.strategy": "pso"}
SEARCH = {
  "average": {"sync.strategy": "average"},
  "pso": PROBE,
  "pso_resample": dict(PROBE, **{"sync.pso.probe_resample": True}),
  "pso_reevaluate": dict(
    PROBE, **{"sync.pso.probe_resample": True, "sync.pso.memory": "reevaluate"}
  ),
  "pso_decay": dict(PROBE, **{"sync.pso.memory": "decay", "sync.pso.memory_decay": 0.1}),
  "pso_momentum_reset": dict(PROBE, **{"sync.pso.opt_state_on_move": "reset"}),
  "pso_momentum_follow": dict(PROBE, **{"sync.pso.opt_state_on_move": "follow"}),
  "pso_ratio_clip": dict(PROBE, **{"sync.pso.max_velocity_ratio": 0.02}),
  "pso_social_schedule": dict(
    PROBE, **{"sync.pso.schedule": "linear", "sync.pso.social_final": 0.25}
  ),
  "pso_average_half": VARIANTS["pso_average_half"],
  "best_pull_0.25": {"sync.strategy": "best_pull", "sync.best_pull": 0.25},
  "best_pull_0.5": {"sync.strategy": "best_pull", "sync.best_pull": 0.5},
  "topk_average_2": {"sync.strategy": "topk_average", "sync.topk": 2},
  "topk_average_4": {"sync.strategy": "topk_average", "sync.topk": 4},
  "topk_average_6": {"sync.strategy": "topk_average", "sync.topk": 6},
}


def get_config() -> dict:
  # the test-split grid holds every variant (pick them with --variants): the simulation's rows and
  # the search's candidates
  study = dict(
    study_fashion_mnist.get_config(),
    variants=dict(VARIANTS, **SEARCH),
    periods=[1, 4, 16, 64],
    num_particles=[8],
    one_big_worker=False,
  )
  study.pop("quick")
  study["quick"] = dict(study, periods=[16], seeds=[0], total_steps=256, evals=2)
  study["search"] = dict(
    study, variants=SEARCH, periods=[16, 64], seeds=[0], overrides={"data.validation_size": 5000}
  )
  return study
