"""The composable outer sync on Fashion-MNIST, LeNet-5, 8 particles, 704 local steps, periods 16 and
64, seeds 0-2, at the tuned inner learning rates of docs/RESULTS.md (DiLoCo and the outer variants
0.0125, averaging 0.025):

  python benchmarks/study.py --study configs/study_outer.py --out benchmarks/results/study_outer
  python benchmarks/study.py --study configs/study_outer.py --grid nan \
      --out benchmarks/results/study_outer_nan          # 2 of 8 workers NaN from step 176

Variants (outer: learning rate 0.7, Nesterov momentum 0.9, as `diloco`):
  average, diloco             the references (diloco = outer mean + Nesterov, float32)
  diloco_<c>                  DiLoCo sending its pseudo-gradients compressed: bfloat16, int8, int4
                              (absmax per block of 256), topk_fraction 0.1 (error feedback)
  median_nesterov, trimmed_nesterov
                              a robust aggregate (median; trimmed mean dropping 2 at each end) under
                              the Nesterov outer step: does it keep DiLoCo's gain and the median's
                              survival of faulty workers?
  fitness_weighted_t<T>       softmax(-fitness / T) weights under Nesterov, T = 0.01 and 0.1
  topk6_nesterov, best_pull_nesterov
                              the selection aggregates under Nesterov: does selecting by fitness
                              add anything on top of DiLoCo?
The `nan` grid runs the robust and reference variants under the NaN-worker fault of
configs/study_robustness.py.
"""

from configs import study_fashion_mnist, study_robustness

INNER = study_fashion_mnist.TUNED["diloco"]
NESTEROV = {
  "sync.strategy": "outer",
  "sync.outer.optimizer": "nesterov",
  "optimizer.learning_rate": INNER,
}


def outer(**fields) -> dict:
  return dict(NESTEROV, **{f"sync.outer.{k}": v for k, v in fields.items()})


VARIANTS = {
  "average": {
    "sync.strategy": "average",
    "optimizer.learning_rate": study_fashion_mnist.TUNED["average"],
  },
  "diloco": {"sync.strategy": "diloco", "optimizer.learning_rate": INNER},
  **{f"diloco_{c}": outer(compress=c) for c in ("bfloat16", "int8", "int4", "topk_fraction")},
  "median_nesterov": outer(aggregate="median"),
  "trimmed_nesterov": dict(outer(aggregate="trimmed_mean"), **{"sync.robust.trim": 2}),
  **{
    f"fitness_weighted_t{t}": outer(aggregate="fitness_weighted", temperature=t)
    for t in (0.01, 0.1)
  },
  "topk6_nesterov": dict(outer(aggregate="topk"), **{"sync.topk": 6}),
  "best_pull_nesterov": outer(aggregate="best_pull"),
}
ROBUST = ("average", "diloco", "median_nesterov", "trimmed_nesterov")


def get_config() -> dict:
  base = study_fashion_mnist.get_config()
  study = dict(
    base,
    variants=VARIANTS,
    periods=[16, 64],
    num_particles=[8],
    evals=4,
    one_big_worker=False,
    reference="diloco",
  )
  for grid in ("quick", "tuning", "tuned", "tuned_periods"):
    study.pop(grid)
  study["nan"] = dict(
    study,
    evals=1,
    overrides=study_robustness.SCENARIOS["nan"],
    variants={v: VARIANTS[v] for v in ROBUST},
  )
  return study
