"""A synthetic LLM task environment whose expected outcomes are known exactly.

Used by tests, notebooks and benchmarks as the ground truth that off-policy estimates are
checked against. Four task types want different parameters: code generation prefers a low
temperature, brainstorming a high one; long tasks are truncated when ``max_tokens`` is
small; higher temperatures write longer answers; every token costs money and latency;
latency is heavy-tailed.

The generative model, for a context x (task type, complexity c(x) in (0, 1)) and an arm
(t, p, m) = (temperature, top_p, max_tokens):

- effective temperature :math:`t_e = t (0.7 + 0.3 p)`; ideal temperature
  :math:`t^*(x) = t_0 - 0.3 (c - 1/2) - 0.1 [\\text{tier} = 1]`;
- quality mean :math:`\\mu_q = q_{max} (1 - 0.2 c) - a (t_e - t^*)^2 - 0.3 (p - p^*)^2
  - 0.05 (f^2 + r^2) - \\delta_{model}`, clipped to [0.02, 0.98] (a deterministic clip of
  the mean, not of noise);
- tokens needed :math:`Y \\sim \\text{LogNormal}(\\ln L, \\sigma^2)`,
  :math:`L = L_0 (0.6 + 1.2 c)(1 + 0.25 t_e)(m / 600)^{0.3}` (a larger budget invites
  longer answers); truncated when :math:`Y > m`; completion
  tokens :math:`\\lfloor \\min(Y, m) + U \\rfloor` with :math:`U \\sim U(0, 1)` (stochastic
  rounding keeps the mean exact);
- a draw :math:`B \\sim \\text{Beta}(\\mu_q \\kappa, (1 - \\mu_q) \\kappa)`; quality is
  :math:`B`, or :math:`0.45 B` when truncated; success is :math:`[\\neg\\text{truncated}]
  [B \\ge 0.5]`;
- latency :math:`(b_{model} + s_{model} \\cdot \\text{completion}) \\cdot N`, where the
  noise N has mean 1: a lognormal times an occasional 3x queueing spike.

Closed forms then give every expectation exactly:
:math:`P(\\text{trunc}) = 1 - \\Phi(z)`, :math:`z = (\\ln m - \\ln L) / \\sigma`;
:math:`E[\\min(Y, m)] = L e^{\\sigma^2/2} \\Phi(z - \\sigma) + m (1 - \\Phi(z))`;
:math:`E[q] = \\mu_q (1 - 0.55 P(\\text{trunc}))`;
:math:`E[\\text{success}] = (1 - P(\\text{trunc})) (1 - I_{0.5}(\\mu_q\\kappa, (1-\\mu_q)\\kappa))`.
The reward is linear in the outcome (:mod:`rtopt_lab.reward`), so the expected reward
:math:`q(x, a)` of any (context, arm) is exact, and the value of any action distribution
:math:`\\pi` on contexts :math:`x_1..x_n` is the weighted sum
:math:`\\frac{1}{n}\\sum_i \\sum_a \\pi(a \\mid x_i) q(x_i, a)`: no Monte-Carlo guess.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import special

from rtopt_lab.arms import ArmCatalog
from rtopt_lab.features import context_fingerprint_frame
from rtopt_lab.reward import RewardFunction

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PROFILES",
    "ContextPool",
    "ExpectedOutcome",
    "LLMTaskSimulator",
    "ModelProfile",
    "TaskProfile",
]

LoggingPolicy = Literal["uniform", "epsilon", "softmax"]
LOGGING_POLICIES: tuple[str, ...] = ("uniform", "epsilon", "softmax")


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """How one task type responds to parameters (see the module docstring)."""

    t0: float          # ideal temperature at average complexity
    curvature: float   # a: quality lost per squared temperature error
    top_p_opt: float   # p*
    q_max: float       # best attainable quality mean
    base_tokens: float  # L0: median completion tokens needed
    description_median: float  # typical description length of such tasks
    weight: float = 1.0  # share of traffic


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """Latency and quality of one model."""

    base_ms: float
    ms_per_token: float
    quality_penalty: float = 0.0
    share: float = 0.5


DEFAULT_PROFILES: dict[str, TaskProfile] = {
    "code_generation": TaskProfile(0.25, 0.9, 0.9, 0.88, 500.0, 1200.0),
    "summarization": TaskProfile(0.35, 0.6, 1.0, 0.90, 220.0, 3000.0),
    "brainstorming": TaskProfile(0.95, 0.5, 1.0, 0.85, 350.0, 400.0),
    "reasoning": TaskProfile(0.50, 0.8, 0.95, 0.82, 650.0, 1500.0),
}
DEFAULT_MODELS: dict[str, ModelProfile] = {
    "llm-large": ModelProfile(400.0, 18.0, 0.0, 0.7),
    "llm-small": ModelProfile(150.0, 6.0, 0.06, 0.3),
}
INDICATOR_VOCAB: tuple[str, ...] = ("api_integration", "concurrency", "database", "security",
                                    "refactor", "performance", "ui", "data_pipeline")
_TOKEN_SIGMA = 0.35
_VERBOSITY = 0.3  # a larger max_tokens budget makes the model write longer
_KAPPA = 12.0
_TRUNC_QUALITY = 0.45
_SPIKE_P, _SPIKE_X, _LAT_SIGMA = 0.03, 3.0, 0.5


@dataclass(frozen=True, slots=True)
class ExpectedOutcome:
    """Exact expectations, each of shape (n, K) or (n,)."""

    quality: np.ndarray
    success: np.ndarray
    truncated: np.ndarray
    completion_tokens: np.ndarray
    total_tokens: np.ndarray
    latency_ms: np.ndarray


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Per-context arrays the generative model needs, each of shape (n,)."""

    task: np.ndarray          # index into profiles
    tier: np.ndarray
    complexity: np.ndarray
    model: np.ndarray         # index into models
    prompt_tokens: np.ndarray

    def col(self, name: str, full: bool) -> np.ndarray:
        a = getattr(self, name)
        return a[:, None] if full else a


def _table(frame: pd.DataFrame | pa.Table, columns: tuple[str, ...]) -> pa.Table:
    if isinstance(frame, pa.Table):
        missing = [c for c in columns if c not in frame.column_names]
        if missing:
            raise ValueError(f"`contexts` is missing column(s) {missing}")
        return frame.select(list(columns))
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"`contexts` is missing column(s) {missing}")
    return pa.Table.from_pandas(frame[list(columns)], preserve_index=False)


def _np(col: pa.ChunkedArray, fill: float | int | bool, dtype: type) -> np.ndarray:
    return pc.fill_null(col, fill).to_numpy().astype(dtype, copy=False)


def _uuid4_strings(rng: np.random.Generator, n: int) -> pa.Array:
    """n random version-4 UUID strings, vectorised (no per-row Python)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    lut = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = lut[raw >> 4]
    hexed[:, 1::2] = lut[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    pos = np.r_[0:8, 9:13, 14:18, 19:23, 24:36]
    out[:, pos] = hexed
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out.tobytes()))


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMTaskSimulator:
    """Synthetic LLM tasks with exact expected outcomes and rewards.

    Parameters
    ----------
    catalog : ArmCatalog, default the 48-arm ``ArmCatalog.from_grid()``
    reward_fn : RewardFunction, default RewardFunction()
    profiles : mapping of task type to TaskProfile, default DEFAULT_PROFILES
    models : mapping of model name to ModelProfile, default DEFAULT_MODELS

    Examples
    --------
    >>> sim = LLMTaskSimulator()
    >>> log = sim.simulate_log(1_000, logging_policy="uniform", seed=7)
    >>> exact = sim.policy_value(log, sim.logging_action_dist(log, "uniform"))
    >>> bool(abs(log["reward"].mean() - exact) < 0.05)
    True
    """

    catalog: ArmCatalog = field(default_factory=ArmCatalog.from_grid)
    reward_fn: RewardFunction = field(default_factory=RewardFunction)
    profiles: Mapping[str, TaskProfile] = field(default_factory=lambda: dict(DEFAULT_PROFILES))
    models: Mapping[str, ModelProfile] = field(default_factory=lambda: dict(DEFAULT_MODELS))

    def __post_init__(self) -> None:
        if not isinstance(self.catalog, ArmCatalog):
            raise TypeError(f"`catalog` must be an ArmCatalog; got {type(self.catalog).__name__}")
        if not isinstance(self.reward_fn, RewardFunction):
            raise TypeError(f"`reward_fn` must be a RewardFunction; got {type(self.reward_fn).__name__}")
        if not self.profiles or not self.models:
            raise ValueError("`profiles` and `models` must be non-empty")

    @property
    def task_types(self) -> tuple[str, ...]:
        return tuple(self.profiles)

    # --------------------------------------------------------------- contexts
    def sample_contexts(self, n: int, *, seed: int | np.random.Generator | None = None) -> pd.DataFrame:
        """n task contexts, as a DataFrame whose columns are TaskFeatures' fields.

        ``model_name`` is the requested model; ``prompt_tokens`` and ``prior_failures``
        are missing in about 10 % of rows, as in real logs.
        """
        return self._contexts(n, np.random.default_rng(seed)).to_pandas(types_mapper=_pandas_types)

    def _contexts(self, n: int, rng: np.random.Generator) -> pa.Table:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"`n` must be an int >= 0; got {n!r}")
        names = list(self.profiles)
        prof = [self.profiles[t] for t in names]
        w = np.array([p.weight for p in prof], dtype=float)
        task = rng.choice(len(names), size=n, p=w / w.sum())
        desc_med = np.array([p.description_median for p in prof])[task]
        desc = np.minimum(rng.lognormal(np.log(desc_med), 0.8), 50_000).astype(np.int32)
        is_code = np.array([t == "code_generation" for t in names])[task]
        scope = rng.poisson(np.where(is_code, 2.0, 0.5)).astype(np.int32)
        ind = rng.random((n, len(INDICATOR_VOCAB))) < 0.12
        counts = ind.sum(axis=1)
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=offsets[1:])
        vals = pc.cast(pa.DictionaryArray.from_arrays(
            pa.array(np.nonzero(ind)[1].astype(np.int32)), pa.array(INDICATOR_VOCAB)), pa.string())
        mnames = list(self.models)
        share = np.array([self.models[m].share for m in mnames], dtype=float)
        model = rng.choice(len(mnames), size=n, p=share / share.sum())
        prompt = (150 + desc // 4 + rng.integers(0, 50, n)).astype(np.int32)
        cols = {
            "task_type": pa.DictionaryArray.from_arrays(pa.array(task.astype(np.int32)),
                                                        pa.array(names)).cast(pa.string()),
            "risk_tier": pa.array(rng.choice(np.array([1, 2, 3], dtype=np.int8), size=n, p=[0.2, 0.5, 0.3])),
            "title_length": pa.array(rng.integers(10, 120, n, dtype=np.int32)),
            "description_length": pa.array(desc),
            "acceptance_criteria_count": pa.array(rng.poisson(3.0, n).astype(np.int32)),
            "scope_files_count": pa.array(scope),
            "max_files": pa.array(scope + rng.poisson(2.0, n).astype(np.int32)),
            "max_loc": pa.array(np.minimum(rng.lognormal(np.log(400), 0.9, n), 1e6).astype(np.int32)),
            "has_external_deps": pa.array(rng.random(n) < 0.3),
            "complexity_indicators": pa.ListArray.from_arrays(pa.array(offsets), vals),
            "model_name": pa.DictionaryArray.from_arrays(pa.array(model.astype(np.int32)),
                                                         pa.array(mnames)).cast(pa.string()),
            "prompt_tokens": pa.array(prompt, mask=rng.random(n) < 0.1),
            "prior_failures": pa.array(rng.poisson(0.3, n).astype(np.int32), mask=rng.random(n) < 0.1),
        }
        return pa.table(cols)

    def _ctx(self, contexts: pd.DataFrame | pa.Table) -> _Ctx:
        model_col = "requested_model" if "requested_model" in (
            contexts.column_names if isinstance(contexts, pa.Table) else contexts.columns) else "model_name"
        t = _table(contexts, ("task_type", "risk_tier", "description_length", "max_loc",
                              "has_external_deps", "complexity_indicators", "prior_failures",
                              "prompt_tokens", model_col))
        names = list(self.profiles)
        enc = pc.dictionary_encode(t["task_type"].combine_chunks())
        lut = np.array([names.index(s) if s in names else -1 for s in enc.dictionary.to_pylist()])
        task = lut[enc.indices.to_numpy(zero_copy_only=False)]
        if (task < 0).any():
            unknown = sorted({s for s in enc.dictionary.to_pylist() if s not in names})
            raise ValueError(f"`contexts` has task types the simulator does not know: {unknown}")
        mnames = list(self.models)
        menc = pc.dictionary_encode(pc.fill_null(t[model_col].combine_chunks(), mnames[0]))
        mlut = np.array([mnames.index(s) if s in mnames else 0 for s in menc.dictionary.to_pylist()])
        model = mlut[menc.indices.to_numpy(zero_copy_only=False)]
        desc = _np(t["description_length"], 0, np.float64)
        n_ind = _np(pc.list_value_length(t["complexity_indicators"]), 0, np.float64)
        prior = np.minimum(_np(t["prior_failures"], 0, np.float64), 3.0)
        z = (0.8 * (np.log1p(desc) - 7.0) + 0.35 * n_ind + 0.5 * _np(t["has_external_deps"], False, np.float64)
             + 0.3 * prior + 0.4 * (np.log1p(_np(t["max_loc"], 0, np.float64)) - 6.0))
        prompt = _np(t["prompt_tokens"], -1, np.float64)
        prompt = np.where(prompt < 0, 150 + desc // 4, prompt)
        return _Ctx(task=task, tier=_np(t["risk_tier"], 2, np.int64), complexity=special.expit(z),
                    model=model, prompt_tokens=prompt)

    # --------------------------------------------------------------- the model
    def _model(self, ctx: _Ctx, arms: np.ndarray | None):
        """(quality mean, log L, prompt tokens, base latency, ms per token, arm max_tokens)."""
        full = arms is None
        cat = self.catalog
        sel = slice(None) if full else np.asarray(arms, dtype=np.int64)
        t = cat.temperature[sel]
        p = cat.top_p[sel]
        m = cat.max_tokens[sel].astype(np.float64)
        fp = np.array([a.frequency_penalty for a in cat.params])[sel]
        pp = np.array([a.presence_penalty for a in cat.params])[sel]
        prof = list(self.profiles.values())
        mod = list(self.models.values())
        task, c = ctx.col("task", full), ctx.col("complexity", full)
        pick = lambda attr, src, idx: np.array([getattr(s, attr) for s in src])[idx]  # noqa: E731
        t_opt = pick("t0", prof, task) - 0.3 * (c - 0.5) - 0.1 * (ctx.col("tier", full) == 1)
        t_eff = t * (0.7 + 0.3 * p)
        qm = (pick("q_max", prof, task) * (1 - 0.2 * c)
              - pick("curvature", prof, task) * (t_eff - t_opt) ** 2
              - 0.3 * (p - pick("top_p_opt", prof, task)) ** 2
              - 0.05 * (fp ** 2 + pp ** 2)
              - pick("quality_penalty", mod, ctx.col("model", full)))
        qm = np.clip(qm, 0.02, 0.98)
        log_l = (np.log(pick("base_tokens", prof, task) * (0.6 + 1.2 * c) * (1 + 0.25 * t_eff))
                 + _VERBOSITY * np.log(m / 600.0))
        model = ctx.col("model", full)
        return (qm, log_l, ctx.col("prompt_tokens", full), pick("base_ms", mod, model),
                pick("ms_per_token", mod, model), m)

    def expected_outcome(self, contexts: pd.DataFrame | pa.Table, arms: np.ndarray | None = None) -> ExpectedOutcome:
        """Exact expected outcome of every (context, arm), shape (n, K); or of the given
        arm per context, shape (n,), when ``arms`` (arm indices) is passed."""
        qm, log_l, prompt, base_ms, per_tok, m = self._model(self._ctx(contexts), arms)
        s = _TOKEN_SIGMA
        z = (np.log(m) - log_l) / s
        p_trunc = special.ndtr(-z)
        e_comp = np.exp(log_l + s * s / 2) * special.ndtr(z - s) + m * p_trunc
        a, b = qm * _KAPPA, (1 - qm) * _KAPPA
        succ = (1 - p_trunc) * (1 - special.betainc(a, b, 0.5))
        return ExpectedOutcome(
            quality=qm * (1 - (1 - _TRUNC_QUALITY) * p_trunc), success=succ, truncated=p_trunc,
            completion_tokens=e_comp, total_tokens=prompt + e_comp,
            latency_ms=base_ms + per_tok * e_comp)

    def expected_reward(self, contexts: pd.DataFrame | pa.Table, arms: np.ndarray | None = None) -> np.ndarray:
        """Exact expected reward q(x, a): shape (n, K), or (n,) for given ``arms``."""
        e = self.expected_outcome(contexts, arms)
        return self.reward_fn.reward_arrays(e.quality, e.total_tokens, e.latency_ms, e.success)

    def policy_value(self, contexts: pd.DataFrame | pa.Table, action_dist: np.ndarray) -> float:
        """Exact value of an action distribution on these contexts.

        .. math:: V(\\pi) = \\frac{1}{n} \\sum_i \\sum_a \\pi(a \\mid x_i)\\, q(x_i, a)

        Parameters
        ----------
        contexts : DataFrame or Table of n contexts
        action_dist : ndarray of shape (n, K), rows summing to 1
        """
        pi = np.asarray(action_dist, dtype=float)
        n, k = len(contexts), len(self.catalog)
        if pi.shape != (n, k):
            raise ValueError(f"`action_dist` must have shape ({n}, {k}); got {pi.shape}")
        if not np.allclose(pi.sum(axis=1), 1.0, atol=1e-6) or (pi < 0).any():
            raise ValueError("`action_dist` rows must be probabilities summing to 1")
        total = 0.0
        for lo, hi in _chunks(n, 65_536):
            part = contexts.slice(lo, hi - lo) if isinstance(contexts, pa.Table) else contexts.iloc[lo:hi]
            total += float((pi[lo:hi] * self.expected_reward(part)).sum())
        return total / max(n, 1)

    def optimal_action_dist(self, contexts: pd.DataFrame | pa.Table, allowed: np.ndarray | None = None) -> np.ndarray:
        """The deterministic optimal policy (argmax of q, within ``allowed``) as (n, K)."""
        q = self.expected_reward(contexts)
        if allowed is not None:
            q = np.where(allowed, q, -np.inf)
        out = np.zeros_like(q)
        out[np.arange(len(q)), q.argmax(axis=1)] = 1.0
        return out

    # --------------------------------------------------------------- logging
    def logging_action_dist(self, contexts: pd.DataFrame | pa.Table, policy: LoggingPolicy = "uniform", *,
                            epsilon: float = 0.2, tau: float = 0.05) -> np.ndarray:
        """Action distribution (n, K) of a built-in logging policy.

        ``uniform``: 1/K. ``epsilon``: the task type's baseline arm with probability
        1 - epsilon, else uniform. ``softmax``: :math:`\\propto \\exp(q(x, a) / \\tau)` over
        the exact expected reward (an idealised, well-informed logger).
        """
        n, k = len(contexts), len(self.catalog)
        if policy == "uniform":
            return np.full((n, k), 1.0 / k)
        if policy == "epsilon":
            if not 0 < epsilon <= 1:
                raise ValueError(f"`epsilon` must be in (0, 1]; got {epsilon!r}")
            tasks = np.asarray(contexts["task_type"].to_numpy(), dtype=object)
            dist = np.full((n, k), epsilon / k)
            dist[np.arange(n), self.catalog.baseline_arms(tasks)] += 1 - epsilon
            return dist
        if policy == "softmax":
            if not tau > 0:
                raise ValueError(f"`tau` must be > 0; got {tau!r}")
            return special.softmax(self.expected_reward(contexts) / tau, axis=1)
        raise ValueError(f"`logging_policy` must be one of {LOGGING_POLICIES}; got {policy!r}")

    def sample_outcomes(self, contexts: pd.DataFrame | pa.Table, arms: np.ndarray, *,
                        seed: int | np.random.Generator | None = None) -> pd.DataFrame:
        """Draw one outcome per (context, chosen arm); columns of TaskOutcome plus reward."""
        t = self._sample(self._ctx(contexts), np.asarray(arms, dtype=np.int64), np.random.default_rng(seed))
        return pa.table(t).to_pandas()

    def context_pool(self, contexts: pd.DataFrame | pa.Table) -> ContextPool:
        """The contexts encoded once, to draw outcomes from many times (rollout simulations)."""
        return ContextPool(self, contexts)

    def sample_reward_matrix(self, contexts: pd.DataFrame | pa.Table, *,
                             seed: int | np.random.Generator | None = None) -> np.ndarray:
        """One independent reward draw for every (context, arm), shape (n, K).

        The full-information table behind a bandit simulation: an online learner that
        plays arm a on context i observes ``R[i, a]`` and nothing else.
        """
        ctx = self._ctx(contexts)
        n, k = len(ctx.task), len(self.catalog)
        rep = _Ctx(*(np.repeat(getattr(ctx, f), k) for f in ("task", "tier", "complexity", "model",
                                                              "prompt_tokens")))
        arms = np.tile(np.arange(k), n)
        return self._sample(rep, arms, np.random.default_rng(seed))["reward"].reshape(n, k)

    def _sample(self, ctx: _Ctx, arms: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        qm, log_l, prompt, base_ms, per_tok, m = self._model(ctx, arms)
        n = len(arms)
        y = np.exp(log_l + _TOKEN_SIGMA * rng.standard_normal(n))
        truncated = y > m
        completion = np.floor(np.minimum(y, m) + rng.random(n))
        b = rng.beta(qm * _KAPPA, (1 - qm) * _KAPPA)
        quality = np.where(truncated, _TRUNC_QUALITY * b, b)
        success = ~truncated & (b >= 0.5)
        spike = np.where(rng.random(n) < _SPIKE_P, _SPIKE_X, 1.0) / (1 + _SPIKE_P * (_SPIKE_X - 1))
        noise = rng.lognormal(-_LAT_SIGMA ** 2 / 2, _LAT_SIGMA, n) * spike
        latency = (base_ms + per_tok * completion) * noise
        reward = self.reward_fn.reward_arrays(quality, prompt + completion, latency, success)
        return {"quality": quality, "latency_ms": latency,
                "outcome_prompt_tokens": prompt.astype(np.int32),
                "completion_tokens": completion.astype(np.int32),
                "success": success, "truncated": truncated, "reward": reward}

    def iter_log(self, n: int, *, logging_policy: LoggingPolicy = "uniform", seed: int = 0,
                 epsilon: float = 0.2, tau: float = 0.05, chunk_rows: int = 65_536,
                 start: datetime | None = None, span: timedelta = timedelta(days=14)) -> Iterator[pa.Table]:
        """:meth:`simulate_log` in chunks of ``chunk_rows`` (Arrow tables), for big logs.

        Chunk c draws from ``default_rng([seed, c])``, so a log is reproducible for a given
        (seed, chunk_rows); timestamps are spread evenly over ``span`` from ``start``.
        """
        if logging_policy not in LOGGING_POLICIES:
            raise ValueError(f"`logging_policy` must be one of {LOGGING_POLICIES}; got {logging_policy!r}")
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"`chunk_rows` must be an int >= 1; got {chunk_rows!r}")
        start = start or datetime(2026, 1, 5, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError(f"`start` must be timezone-aware; got {start!r}")
        t0_us = int(start.timestamp() * 1_000_000)
        step_us = span.total_seconds() * 1_000_000 / max(n, 1)
        cat = self.catalog
        arm_ids = pa.array(cat.arm_ids)
        fps = np.array([p.frequency_penalty for p in cat.params])
        pps = np.array([p.presence_penalty for p in cat.params])
        for c, (lo, hi) in enumerate(_chunks(n, chunk_rows)):
            rng = np.random.default_rng([seed, c])
            m = hi - lo
            ctx_t = self._contexts(m, rng)
            dist = self.logging_action_dist(ctx_t, logging_policy, epsilon=epsilon, tau=tau)
            cum = np.cumsum(dist, axis=1)
            u = 1.0 - rng.random(m)
            arms = np.minimum((cum < u[:, None] * cum[:, -1:]).sum(axis=1), len(cat) - 1)
            out = self._sample(self._ctx(ctx_t), arms, rng)
            ts = t0_us + ((np.arange(lo, hi) + rng.random(m)) * step_us).astype(np.int64)
            cols = {
                "request_id": _uuid4_strings(rng, m),
                "timestamp": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
                "task_type": ctx_t["task_type"],
                "model_name": pc.fill_null(ctx_t["model_name"], next(iter(self.models))),
                "policy_version": pa.array(np.full(m, f"logging-{logging_policy}")),
                "context_fingerprint": pa.array(context_fingerprint_frame(ctx_t)),
            }
            for name in ctx_t.column_names:
                if name not in ("task_type", "model_name"):
                    cols[name] = ctx_t[name]
            cols["requested_model"] = ctx_t["model_name"]
            cols.update({
                "arm_id": arm_ids.take(pa.array(arms)),
                "temperature": pa.array(cat.temperature[arms]),
                "top_p": pa.array(cat.top_p[arms]),
                "max_tokens": pa.array(cat.max_tokens[arms].astype(np.int32)),
                "frequency_penalty": pa.array(fps[arms]),
                "presence_penalty": pa.array(pps[arms]),
                "seed": pa.nulls(m, pa.int64()),
                "param_model_name": pa.nulls(m, pa.string()),
                "propensity": pa.array(dist[np.arange(m), arms]),
            })
            cols.update({k: pa.array(v) for k, v in out.items()})
            cols["context"] = pa.nulls(m, pa.string())  # the seed's context only
            yield pa.table(cols)

    def simulate_log(self, n: int, *, logging_policy: LoggingPolicy = "uniform", seed: int = 0,
                     epsilon: float = 0.2, tau: float = 0.05, chunk_rows: int = 65_536,
                     start: datetime | None = None, span: timedelta = timedelta(days=14),
                     as_arrow: bool = False) -> pd.DataFrame | pa.Table:
        """A decision log of n rows under a built-in logging policy, with exact propensities.

        Columns follow the decision-log schema (:data:`rtopt_lab.logstore.LOG_COLUMNS`);
        ``propensity`` is the probability with which the logging policy chose the arm.
        """
        tables = list(self.iter_log(n, logging_policy=logging_policy, seed=seed, epsilon=epsilon,
                                    tau=tau, chunk_rows=chunk_rows, start=start, span=span))
        table = pa.concat_tables(tables) if tables else next(
            self.iter_log(1, logging_policy=logging_policy, seed=seed)).slice(0, 0)
        return table if as_arrow else table.to_pandas(types_mapper=_pandas_types)


def _pandas_types(t: pa.DataType):
    """Keep list columns Arrow-backed when converting to pandas (zero-copy, no object lists)."""
    if pa.types.is_list(t):
        return pd.ArrowDtype(t)
    return None


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class ContextPool:
    """Contexts encoded once for repeated outcome draws by index.

    A simulated rollout draws thousands of small windows of requests from one pool of
    contexts; encoding the pool once and indexing it is what makes that fast.
    ``pool.sample(idx, arms, rng)`` equals ``sim.sample_outcomes(contexts.iloc[idx],
    arms, seed=rng)`` (as arrays) for the same generator state.
    """

    def __init__(self, sim: LLMTaskSimulator, contexts: pd.DataFrame | pa.Table):
        self._sim = sim
        self._ctx = sim._ctx(contexts)
        self.size = len(self._ctx.task)

    def sample(self, idx: np.ndarray, arms: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One outcome per (pool row ``idx[i]``, arm ``arms[i]``): TaskOutcome columns plus reward."""
        idx = np.asarray(idx, dtype=np.int64)
        ctx = _Ctx(*(getattr(self._ctx, f)[idx] for f in ("task", "tier", "complexity", "model", "prompt_tokens")))
        return self._sim._sample(ctx, np.asarray(arms, dtype=np.int64), rng)
