"""Bandit policies that always know their propensities.

Every policy returns a full action distribution over the arm catalog, samples from it
reproducibly, and logs the exact probability of what it chose (see :mod:`.base`).
"""

from rtopt_lab.policies.base import BasePolicy, Policy, load_policy
from rtopt_lab.policies.baselines import EpsilonGreedy, FixedPolicy, Softmax, UniformRandom
from rtopt_lab.policies.constrained import Constrained
from rtopt_lab.policies.learning import fit_from_log, run_online
from rtopt_lab.policies.linucb import LinUCB
from rtopt_lab.policies.thompson import ThompsonGaussian

#: every policy class, by kind (the contract suite runs over these)
POLICIES: dict[str, type[BasePolicy]] = {
    cls.kind: cls
    for cls in (FixedPolicy, UniformRandom, EpsilonGreedy, Softmax, LinUCB, ThompsonGaussian)
}

__all__ = [
    "POLICIES",
    "BasePolicy",
    "Constrained",
    "EpsilonGreedy",
    "FixedPolicy",
    "LinUCB",
    "Policy",
    "Softmax",
    "ThompsonGaussian",
    "UniformRandom",
    "fit_from_log",
    "load_policy",
    "run_online",
]
