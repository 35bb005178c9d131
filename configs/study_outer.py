"""The composable outer sync and its competitors on Fashion-MNIST, LeNet-5, 8 particles, 704 local
steps, seeds 0-4, at the tuned inner learning rates of docs/RESULTS.md, evaluated at 11 points so
that studies/study.py's time-to-accuracy tables (psops_jax/clock.py) have curves to read:

  python studies/study.py --study configs/study_outer.py --out studies/results/study_outer
  python studies/study.py --study configs/study_outer.py --grid nan \
      --out studies/results/study_outer_nan          # 2 of 8 workers NaN from step 176
  python studies/study.py --study configs/study_outer.py --grid lr_2x \
      --out studies/results/study_outer_lr_2x        # every worker at learning rate 0.2
  python studies/study.py --study configs/study_outer.py --grid dirichlet \
      --out studies/results/study_outer_dirichlet    # label-skewed shards

A cell takes about 2 minutes on a 2-core CPU; `--seeds`, `--variants` and `--periods` run a slice,
and the report keeps every finished cell (committed rows included), so a grid can be filled over
several sessions.

Variants (outer: learning rate 0.7, Nesterov momentum 0.9, as `diloco`), and their periods:
  ssgd                        gradients all-reduced every step (period 16: only its rounds)
  average, diloco             the references at periods 4, 16 and 64 (diloco = outer mean +
                              Nesterov, float32)
  pso                         PSO-PS at periods 4, 16 and 64: does a rare PSO sync beat a frequent
                              average in time on any network?
  streaming                   Streaming DiLoCo: 4 fragments, one synced per round, its update
                              applied a round later, mixed 0.5; at period 4 (each fragment every
                              16 steps: the bytes of diloco at 16) and 16 (those of diloco at 64)
  diloco_<c>                  DiLoCo sending its pseudo-gradients compressed: bfloat16, int8, int4
                              (absmax per block of 256), topk_fraction 0.1 (error feedback); period
                              16, and int8 at 64
  median                      robust_average's coordinate-wise median (no outer step), at
                              averaging's rate
  median_nesterov, trimmed_nesterov
                              a robust aggregate (median; trimmed mean dropping 2 at each end) under
                              the Nesterov outer step, period 16: does it keep DiLoCo's gain and the
                              median's survival of faulty workers?
  fitness_weighted_t<T>       softmax(-fitness / T) weights under Nesterov, T = 0.01 and 0.1
  topk6_nesterov, best_pull_nesterov
                              the selection aggregates under Nesterov: does selecting by fitness
                              add anything on top of DiLoCo?
The `nan` grid runs the robust and reference variants and pso under the NaN-worker fault of
configs/study_robustness.py, at period 16; the `lr_2x` grid runs them with every worker at twice the
largest learning rate at which averaging converged there (0.2: where selecting might pay); the
`dirichlet` grid runs ssgd, average, diloco, pso and the median on label-skewed shards (Dirichlet
alpha 0.1, configs/study_robustness.py), at period 16. The gap tables are to averaging and to
DiLoCo (the main grid), to the plain median (nan), to averaging and the median (lr_2x) and to
averaging (dirichlet). The
`unroll2` grid re-runs pso, average and diloco at
period 16 with train.max_unroll 2 instead of 4, meant to change only the order of float operations
(it did on earlier code); at this code it changes nothing: seeds 3 and 4 of pso and average came
out bit-identical (docs/RESULTS.md), so the spread a reader should expect from re-running on another
machine is measured by re-running cells there (`study.py --check`, then studies/sensitivity.py
on the study and its check/ directory):

  python studies/study.py --study configs/study_outer.py --grid unroll2 \
      --out studies/results/study_outer_unroll2
  python studies/sensitivity.py studies/results/study_outer \
      studies/results/study_outer_unroll2
  python studies/study.py --study configs/study_outer.py --out studies/results/study_outer \
      --check 3 --check-seed 0 --variants pso --periods 16 --seeds 0 1 2    # (and average, diloco)
  python studies/sensitivity.py studies/results/study_outer \
      studies/results/study_outer/check
"""

from configs import study_fashion_mnist, study_robustness

TUNED = study_fashion_mnist.TUNED
INNER = TUNED["diloco"]
NESTEROV = {
  "sync.strategy": "outer",
  "sync.outer.optimizer": "nesterov",
  "optimizer.learning_rate": INNER,
}


def outer(**fields) -> dict:
  return dict(NESTEROV, **{f"sync.outer.{k}": v for k, v in fields.items()})


def tuned(strategy: str) -> dict:
  return {"sync.strategy": strategy, "optimizer.learning_rate": TUNED[strategy]}


VARIANTS = {
  "ssgd": tuned("ssgd"),
  "average": tuned("average"),
  "diloco": tuned("diloco"),
  "pso": tuned("pso"),
  "streaming": {
    "sync.strategy": "streaming",
    "sync.streaming.fragments": 4,
    "sync.streaming.delay": 1,
    "sync.streaming.mix": 0.5,
    "optimizer.learning_rate": INNER,
  },
  **{f"diloco_{c}": outer(compress=c) for c in ("bfloat16", "int8", "int4", "topk_fraction")},
  "median": tuned("average") | {"sync.strategy": "robust_average"},  # no outer step
  "median_nesterov": outer(aggregate="median"),
  "trimmed_nesterov": dict(outer(aggregate="trimmed_mean"), **{"sync.robust.trim": 2}),
  **{
    f"fitness_weighted_t{t}": outer(aggregate="fitness_weighted", temperature=t)
    for t in (0.01, 0.1)
  },
  "topk6_nesterov": dict(outer(aggregate="topk"), **{"sync.topk": 6}),
  "best_pull_nesterov": outer(aggregate="best_pull"),
}
PERIODS = {  # the periods of each variant (the others: 16)
  "average": [4, 16, 64],
  "diloco": [4, 16, 64],
  "pso": [4, 16, 64],
  "streaming": [4, 16],
  "diloco_int8": [16, 64],
}
ROBUST = ("average", "diloco", "pso", "median", "median_nesterov", "trimmed_nesterov")
SKEWED = ("ssgd", "average", "diloco", "pso", "median")
SENSITIVITY = ("pso", "average", "diloco")
SEEDS = [0, 1, 2, 3, 4]
TOO_HIGH_RATE = 2 * study_robustness.EDGE_LEARNING_RATE  # twice the largest at which averaging ran


def get_config() -> dict:
  base = study_fashion_mnist.get_config()
  study = dict(
    base,
    variants=VARIANTS,
    periods=[4, 16, 64],
    variant_periods={v: PERIODS.get(v, [16]) for v in VARIANTS},
    num_particles=[8],
    seeds=SEEDS,
    evals=11,
    overrides={"train.eval_particles": False},  # the curves need the exported model only
    one_big_worker=False,
    reference=["average", "diloco"],  # a gap table to each
  )
  for grid in ("quick", "tuning", "tuned", "tuned_periods"):
    study.pop(grid)
  study["nan"] = dict(
    study,
    reference="median",  # DiLoCo diverges under the fault: the gaps are to the plain median
    evals=1,
    overrides=dict(study_robustness.SCENARIOS["nan"]),
    variants={v: VARIANTS[v] for v in ROBUST},
    variant_periods={v: [16] for v in ROBUST},
  )
  study["lr_2x"] = dict(
    study["nan"],
    reference=["average", "median"],  # here averaging does not diverge: it collapses to chance
    overrides={},
    variants={v: dict(VARIANTS[v], **{"optimizer.learning_rate": TOO_HIGH_RATE}) for v in ROBUST},
  )
  study["dirichlet"] = dict(
    study["nan"],
    reference="average",
    overrides=dict(study_robustness.SCENARIOS["dirichlet_0.1"]),
    variants={v: VARIANTS[v] for v in SKEWED},
    variant_periods={v: [16] for v in SKEWED},
  )
  study["unroll2"] = dict(
    study,
    reference="average",
    variants={v: dict(VARIANTS[v], **{"train.max_unroll": 2}) for v in SENSITIVITY},
    variant_periods={v: [16] for v in SENSITIVITY},
  )
  return study
