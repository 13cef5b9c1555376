"""Learning curves: how fast each policy's greedy choice approaches the optimum, exactly.

Each policy learns online on the simulator (a context arrives, the policy chooses,
observes the reward of that arm only, updates; :func:`rtopt_lab.policies.learning.run_online`).
After every checkpoint the *greedy* policy (argmax of what it has learned) is valued
under the simulator's exact expected reward :math:`q(x, a)` on held-out contexts,

.. math:: V_t = \\frac{1}{m} \\sum_{j=1}^{m} q\\big(x_j, \\arg\\max_a \\hat q_t(x_j, a)\\big),

so the curve has no Monte-Carlo error from the evaluation, only from the seeds (the
contexts and rewards each run learns from). The references are exact too: the optimal
policy :math:`\\frac{1}{m}\\sum_j \\max_a q(x_j, a)` and uniform random
:math:`\\frac{1}{m}\\sum_j \\frac{1}{K}\\sum_a q(x_j, a)`, on the same held-out contexts.
Evaluations are counted per task type (rounds divided by the number of task types), the
unit of ``gap_closed_at_200`` in ``benchmarks/policies.py``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from rtopt_lab.policies.base import BasePolicy
    from rtopt_lab.simulate import LLMTaskSimulator

__all__ = ["CURVE_COLUMNS", "LearningCurve", "default_learners", "learning_curve"]

CURVE_COLUMNS: tuple[str, ...] = ("policy", "evaluations", "rounds", "value_mean", "value_se", "gap_closed",
                                  "n_seeds")
"""Columns of :attr:`LearningCurve.table`."""

PolicyFactory = Callable[[int], "BasePolicy"]


@dataclass(frozen=True, slots=True)
class LearningCurve:
    """Exact value of each policy's greedy choice after t evaluations per task type.

    Attributes
    ----------
    table : DataFrame
        One row per (policy, checkpoint), columns :data:`CURVE_COLUMNS`: ``evaluations``
        per task type, ``rounds`` (all task types), ``value_mean`` and ``value_se`` over
        the seeds (reward units per decision; se is the standard deviation over seeds
        divided by :math:`\\sqrt{S}`, 0 for one seed), ``gap_closed`` (mean share of the
        uniform-to-optimal gap closed).
    optimal_value, uniform_value : float
        Exact values of the optimal and the uniform-random policy (mean over the seeds'
        evaluation contexts).
    optimal_se, uniform_se : float
        Their standard errors over the seeds (the evaluation contexts differ per seed).
    seeds : tuple of int
    n_task_types : int
    n_eval : int
        Held-out contexts per seed the greedy policy is valued on.
    """

    table: pd.DataFrame
    optimal_value: float
    uniform_value: float
    optimal_se: float
    uniform_se: float
    seeds: tuple[int, ...]
    n_task_types: int
    n_eval: int

    @property
    def policies(self) -> tuple[str, ...]:
        """Policy names, in the order given."""
        return tuple(dict.fromkeys(self.table["policy"]))

    def final(self) -> pd.DataFrame:
        """The last checkpoint's row per policy, indexed by policy."""
        return self.table.groupby("policy", sort=False).tail(1).set_index("policy")


def default_learners(sim: LLMTaskSimulator) -> dict[str, PolicyFactory]:
    """LinUCB and Thompson sampling (64 posterior samples) on the simulator's catalog, seeded."""
    from rtopt_lab.policies import LinUCB, ThompsonGaussian

    catalog = sim.catalog
    return {"linucb": _Seeded(LinUCB, catalog, {}),
            "thompson": _Seeded(ThompsonGaussian, catalog, {"n_samples": 64})}


@dataclass(frozen=True, slots=True)
class _Seeded:
    """``cls(catalog, seed=seed, **kwargs)``: a picklable policy factory."""

    cls: type
    catalog: Any
    kwargs: Mapping[str, Any]

    def __call__(self, seed: int) -> BasePolicy:
        return self.cls(self.catalog, seed=seed, **self.kwargs)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1; got {value!r}")
    return int(value)


def _checkpoints(evaluations: int, n_points: int) -> list[int]:
    """Evaluations per task type to value the greedy policy at: 1 to ``evaluations``, geometrically."""
    pts = np.unique(np.round(np.geomspace(1, evaluations, min(n_points, evaluations))).astype(int))
    return [int(p) for p in pts]


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return tuple(range(_positive_int("seeds", seeds)))
    out = tuple(int(s) for s in seeds)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"`seeds` must be an int >= 1 or distinct ints; got {seeds!r}")
    return out


def _factory(name: str, spec: Any) -> PolicyFactory:
    from rtopt_lab.policies.base import BasePolicy

    if isinstance(spec, BasePolicy):
        return lambda seed: copy.deepcopy(spec)
    if callable(spec):
        return spec
    raise TypeError(f"`policies[{name!r}]` must be a policy or a callable seed -> policy; "
                    f"got {type(spec).__name__}")


def _fresh(name: str, make: PolicyFactory, seed: int) -> BasePolicy:
    from rtopt_lab.policies.base import BasePolicy

    policy = make(seed)
    if not isinstance(policy, BasePolicy):
        raise TypeError(f"`policies[{name!r}]` made a {type(policy).__name__}, not a policy")
    if not hasattr(policy, "expected_reward"):
        raise TypeError(f"`policies[{name!r}]` ({type(policy).__name__}) learns no reward model: its "
                        "greedy choice has no learning curve")
    return policy


def _se(values: np.ndarray) -> float:
    """Standard error of the mean over seeds (0 for one seed)."""
    n = len(values)
    return float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def learning_curve(
    sim: LLMTaskSimulator,
    policies: Mapping[str, Any] | None = None,
    *,
    evaluations: int = 100,
    seeds: int | Sequence[int] = 3,
    n_points: int = 10,
    n_eval: int = 1_000,
) -> LearningCurve:
    """Run each policy online on the simulator and value its greedy choice exactly.

    Parameters
    ----------
    sim : LLMTaskSimulator
        The ground truth (its exact :meth:`~rtopt_lab.simulate.LLMTaskSimulator.expected_reward`).
    policies : mapping of name to policy or callable, optional
        A policy (deep-copied fresh for every seed) or a callable ``seed -> policy``; each
        must learn a reward model (``expected_reward``: LinUCB, ThompsonGaussian,
        EpsilonGreedy, Softmax). Default :func:`default_learners` (LinUCB, Thompson).
    evaluations : int, default 100
        T, the evaluations per task type each run learns from (``T x task types`` rounds).
    seeds : int or sequence of int, default 3
        How many seeds (0, 1, ...) or which; each seed draws its own contexts, rewards and
        held-out evaluation contexts, shared by every policy (paired).
    n_points : int, default 10
        Checkpoints, geometrically spaced from 1 to T evaluations per task type.
    n_eval : int, default 1000
        Held-out contexts the greedy policy and the references are valued on.

    Returns
    -------
    LearningCurve

    Raises
    ------
    ValueError
        A count below 1, no policy, repeated seeds.
    TypeError
        A policy that is not one or learns no reward model.

    Examples
    --------
    >>> from rtopt_lab.policies import LinUCB
    >>> from rtopt_lab.simulate import LLMTaskSimulator
    >>> sim = LLMTaskSimulator()
    >>> c = learning_curve(sim, {"linucb": LinUCB(sim.catalog)}, evaluations=20, seeds=2, n_eval=500)
    >>> bool(c.uniform_value < c.final().loc["linucb", "value_mean"] <= c.optimal_value)
    True
    """
    from rtopt_lab.policies.learning import run_online

    evaluations = _positive_int("evaluations", evaluations)
    n_points = _positive_int("n_points", n_points)
    n_eval = _positive_int("n_eval", n_eval)
    seed_list = _seeds(seeds)
    specs = default_learners(sim) if policies is None else policies
    if not isinstance(specs, Mapping) or not specs:
        raise ValueError(f"`policies` must be a non-empty mapping of name to policy; got {policies!r}")
    makers = {str(k): _factory(str(k), v) for k, v in specs.items()}
    n_tasks = len(sim.task_types)
    marks = _checkpoints(evaluations, n_points)
    rounds = [m * n_tasks for m in marks]
    values = {name: np.empty((len(seed_list), len(marks))) for name in makers}
    opt = np.empty(len(seed_list))
    unif = np.empty(len(seed_list))
    for i, seed in enumerate(seed_list):
        for name, make in makers.items():
            res = run_online(_fresh(name, make, seed), sim, rounds[-1], seed=seed, checkpoints=tuple(rounds),
                             n_eval=n_eval)
            values[name][i] = res.greedy_values
            opt[i], unif[i] = res.optimal_value, res.uniform_value   # the seed's contexts: same for every policy
    gap = opt - unif
    rows = []
    for name, v in values.items():
        closed = ((v - unif[:, None]) / gap[:, None]).mean(axis=0)
        for j, (m, r) in enumerate(zip(marks, rounds, strict=True)):
            rows.append((name, m, r, float(v[:, j].mean()), _se(v[:, j]), float(closed[j]), len(seed_list)))
    table = pd.DataFrame(rows, columns=list(CURVE_COLUMNS))
    return LearningCurve(table=table, optimal_value=float(opt.mean()), uniform_value=float(unif.mean()),
                         optimal_se=_se(opt), uniform_se=_se(unif), seeds=seed_list,
                         n_task_types=n_tasks, n_eval=n_eval)
