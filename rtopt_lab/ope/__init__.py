"""Off-policy evaluation: estimators, cross-fitted reward models, paired intervals, comparison.

=====================  ===================================================================
:mod:`.estimators`     ``dm``, ``ips``, ``snips``, ``dr``, ``sndr``, ``switch_dr``: pure
                       functions over arrays returning an :class:`Estimate`
:mod:`.reward_model`   :class:`RewardModel`: cross-fitted q_hat over joint context-arm features
:mod:`.bootstrap`      paired multinomial / Poisson bootstrap, percentile, BCa and normal intervals
:mod:`.compare`        :func:`compare`: candidates vs a baseline, simultaneous bounds, with verdicts
:mod:`.diagnostics`    ESS, weight moments, clipping, flags, support violations
:mod:`.evaluate`       :func:`evaluate`: a decision log (in memory or streamed) to a table
:mod:`.chunks`         mergeable statistics, one code path for in-memory, streamed and Spark
                       evaluation: :func:`plan_evaluation`, :func:`reward_model_rows`,
                       :func:`chunk_terms`, :class:`EvaluationSums`
:mod:`.propensity`     :func:`estimate_propensities`: cross-fitted, calibrated estimates of a
                       logger that did not log its propensities
=====================  ===================================================================
"""

from rtopt_lab.ope._hash import hash_strings, poisson_weights
from rtopt_lab.ope.chunks import (
    LOGGING,
    Candidates,
    ChunkTerms,
    EvaluationPlan,
    EvaluationSums,
    LoggedRows,
    chunk_terms,
    logged_rows,
    plan_evaluation,
    reward_model_rows,
)
from rtopt_lab.ope.compare import VERDICTS, Comparison, compare, holm
from rtopt_lab.ope.diagnostics import FLAGS, Diagnostics
from rtopt_lab.ope.estimators import ESTIMATORS, Estimate, dm, dr, ips, sndr, snips, switch_dr
from rtopt_lab.ope.evaluate import evaluate
from rtopt_lab.ope.holdout import EvidenceOverlapError, UnknownTrainingWindowWarning, held_out
from rtopt_lab.ope.propensity import (
    PropensityEstimate,
    estimate_propensities,
    with_estimated_propensities,
)
from rtopt_lab.ope.result import POOLED, Evaluation
from rtopt_lab.ope.reward_model import RewardModel, joint_features

__all__ = [
    "ESTIMATORS",
    "FLAGS",
    "LOGGING",
    "POOLED",
    "VERDICTS",
    "Candidates",
    "ChunkTerms",
    "Comparison",
    "Diagnostics",
    "Estimate",
    "Evaluation",
    "EvaluationPlan",
    "EvaluationSums",
    "EvidenceOverlapError",
    "LoggedRows",
    "PropensityEstimate",
    "RewardModel",
    "UnknownTrainingWindowWarning",
    "chunk_terms",
    "compare",
    "dm",
    "dr",
    "estimate_propensities",
    "evaluate",
    "hash_strings",
    "held_out",
    "holm",
    "ips",
    "joint_features",
    "logged_rows",
    "plan_evaluation",
    "poisson_weights",
    "reward_model_rows",
    "sndr",
    "snips",
    "switch_dr",
    "with_estimated_propensities",
]
