"""Canary simulation: one candidate's rollout, shadow -> canary -> guarded -> general, driven
by the simulator, with the real rule (:func:`~rtopt_lab.rollout.phases.next_phase`), the
real SLO rule (:func:`~rtopt_lab.rollout.slo.evaluate_window`) and the real anytime-valid
bounds (:mod:`rtopt_lab.rollout.bounds`). The registry-backed loop is
:mod:`rtopt_lab.rollout.controller`; this harness measures the rule's behaviour fast.

The model of one trial
----------------------
Time advances in monitoring windows of ``slo_config.window_s`` seconds (one hour by
default) on an injected clock. The request rate is set so that a 5 % canary serves
``window_outcomes`` candidate requests per window (10,000 by default: the SLO module's
sample-size guidance; at one hour that is about 56 requests/s overall). Per window:

1. The phase's candidate share ``s`` gives ``served = rate x s x window_s`` candidate-served
   requests (canary 10,000, guarded 50,000 with the defaults).
2. Contexts are resampled from a pool drawn once per trial with
   :meth:`LLMTaskSimulator.sample_contexts`. The *baseline* plays the catalogue's baseline
   arm of each task type; the *candidate* plays ``candidate_arms`` (by default, per task
   type, the arm with the best expected reward among those whose expected latency is no
   higher and expected quality no lower than the baseline's: a genuinely better policy).
3. Outcomes are drawn from the simulator (vectorised, one call per arm and window); the
   candidate's are then perturbed by ``candidate_effect``: latency x ``latency_factor``,
   quality x ``quality_factor`` (clipped to [0, 1]), and the reward recomputed from the
   perturbed outcome with the simulator's reward function, plus ``reward_shift``.
4. The window is judged by :func:`evaluate_window` on every candidate-served outcome (up
   to ``max_judged``, 50,000 by default, so all of them in canary and guarded, as the
   real :class:`~rtopt_lab.rollout.slo.SLOMonitor` would) against ``baseline_outcomes``
   baseline outcomes (a subsample of the baseline's 95 % / 75 % of traffic; 2 x
   ``window_outcomes`` by default: drawing all of it would cost up to 10 x the time).
   Measured per-window false-breach rates of a healthy candidate (baseline arms on both
   sides, 1,500 windows each): 0.2 % at 10,000 / 40,000, 0.07 % at 20,000 / 20,000,
   0 at 50,000 / 20,000; all from the p99 rule. Capping guarded at 10,000 judged
   outcomes (10,000 / 40,000) instead rolled back 7 of 100 healthy 26-window rollouts.
5. The online bound is unpaired, as on real traffic: the window's candidate and judged
   incumbent requests, in a random order, are the two arms of an experiment in which a
   request is the candidate's with probability ``nc / (nc + n_base)``; their
   :func:`~rtopt_lab.rollout.bounds.online_terms` accumulate over the phase and the
   anytime-valid :func:`~rtopt_lab.rollout.bounds.lower_bound` is read at every window;
   ``improved_looks`` counts the trailing scheduled looks (every ``look_every_s``, 12
   windows by default here) at which the bound was above the margin.
6. :func:`~rtopt_lab.rollout.phases.next_phase`, the one rule, decides on a
   :class:`~rtopt_lab.rollout.phases.PhaseEvidence` with ``gates="pass"``; the state is
   a few local variables (this is a simulation: no registry), and every transition is
   appended to a provenance log in ``state_dir``.

In shadow the candidate serves nothing, so there is no SLO verdict (``insufficient``); the
off-policy lower bound that gates canary is the anytime bound over the candidate's
counterfactual rewards minus the baseline's on the same contexts, *without* the latency and quality
perturbation (``reward_shift`` is included): the effect models a serving regression
(a slower endpoint, a degraded model build) that evaluation on logged data cannot see, which
is exactly what the canary is for. A bad candidate therefore does reach canary, and the
test is whether the SLO monitor throws it out.

The trial ends when the candidate reaches general, after ``max_windows`` windows, or at the
first rollback when ``stop_on_rollback``. After a rollback to shadow the (doubled)
cool-down applies and the candidate may be promoted again.

Examples
--------
>>> from rtopt_lab.simulate import LLMTaskSimulator
>>> sim = LLMTaskSimulator()
>>> slow = Effect(latency_factor=1.3, reward_shift=0.05)   # looks better offline, serves 30 % slower
>>> res = simulate_canary(sim, slow, seed=0, candidate_arms=baseline_candidate_arms(sim),
...                       stop_on_rollback=True)
>>> res.path, res.rollback_windows, res.windows_to_rollback
(('shadow', 'canary', 'shadow'), (2,), 1)
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rtopt_lab.compliance import ProvenanceLog
from rtopt_lab.rollout.bounds import bounds_at, lower_bound, online_terms
from rtopt_lab.rollout.phases import Phase, PhaseConfig, PhaseEvidence, next_phase
from rtopt_lab.rollout.slo import SLOConfig, evaluate_window
from rtopt_lab.simulate import LLMTaskSimulator

__all__ = ["CanaryResult", "Effect", "WindowRecord", "baseline_candidate_arms", "default_candidate_arms",
           "simulate_canary"]


@dataclass(frozen=True, slots=True)
class Effect:
    """How the candidate's served outcomes differ from what its arms would give.

    Parameters
    ----------
    latency_factor : float, default 1.0
        Multiplies every candidate latency (1.30 = 30 % slower). > 0.
    quality_factor : float, default 1.0
        Multiplies every candidate quality (0.90 = 10 % worse); clipped to [0, 1]. > 0.
    reward_shift : float, default 0.0
        Added to every candidate reward (after it is recomputed from the perturbed
        outcome).
    """

    latency_factor: float = 1.0
    quality_factor: float = 1.0
    reward_shift: float = 0.0

    def __post_init__(self) -> None:
        for name in ("latency_factor", "quality_factor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"`{name}` must be a finite number > 0; got {v!r}")
        v = self.reward_shift
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"`reward_shift` must be a finite number; got {v!r}")


@dataclass(frozen=True, slots=True)
class WindowRecord:
    """One monitoring window: where the rollout was, what was seen, what was decided."""

    index: int
    phase: str
    served: int
    slo: str
    online_lower_bound: float | None
    ope_lower_bound: float | None
    transition: str
    to: str
    metrics: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CanaryResult:
    """The outcome of one simulated rollout.

    Attributes
    ----------
    path : tuple of str
        The phases visited, in order, starting with ``"shadow"`` (one entry per transition).
    rollback_windows : tuple of int
        1-based indices of the windows whose step rolled back.
    canary_entries : tuple of int
        1-based indices of the windows whose step promoted into canary (the first canary
        window is the next one).
    slo_breaches : int
        Windows judged ``breach`` (in any serving phase).
    reached_general : bool
    windows : tuple of WindowRecord
    final_phase : str
    """

    path: tuple[str, ...]
    rollback_windows: tuple[int, ...]
    canary_entries: tuple[int, ...]
    slo_breaches: int
    reached_general: bool
    windows: tuple[WindowRecord, ...]
    final_phase: str

    @property
    def rolled_back(self) -> bool:
        return bool(self.rollback_windows)

    @property
    def windows_to_rollback(self) -> int | None:
        """Canary windows served before the first rollback out of canary (1 = the first)."""
        for w in self.rollback_windows:
            entries = [e for e in self.canary_entries if e < w]
            if entries and self.windows[w - 1].phase == Phase.CANARY.value:
                return w - entries[-1]
        return None


def default_candidate_arms(sim: LLMTaskSimulator, *, n_contexts: int = 20_000, seed: int = 12_345) -> dict[str, int]:
    """Per task type, the arm with the best expected reward among those whose expected
    latency is no higher and expected quality no lower than the baseline arm's (the
    baseline arm itself when none is better)."""
    ctx = sim.sample_contexts(n_contexts, seed=seed)
    tasks = np.asarray(ctx["task_type"].to_numpy(), dtype=object)
    e = sim.expected_outcome(ctx)
    r = sim.expected_reward(ctx)
    out: dict[str, int] = {}
    for tt in sim.task_types:
        m = tasks == tt
        b = int(sim.catalog.baseline_arms(np.array([tt], dtype=object))[0])
        if not m.any():
            out[tt] = b
            continue
        lat, q, rr = e.latency_ms[m].mean(0), e.quality[m].mean(0), r[m].mean(0)
        ok = (lat <= lat[b]) & (q >= q[b])
        out[tt] = int(np.argmax(np.where(ok, rr, -np.inf)))
    return out


def baseline_candidate_arms(sim: LLMTaskSimulator) -> dict[str, int]:
    """The baseline arm of every task type: a candidate that serves exactly like the
    baseline (combine with an :class:`Effect` for a healthy or a degraded candidate)."""
    return {t: int(sim.catalog.baseline_arms(np.array([t], dtype=object))[0]) for t in sim.task_types}


# the last simulator's default arms (a reference, so an id is never reused for another one)
_ARM_CACHE: list[tuple[LLMTaskSimulator, dict[str, int]]] = []


def simulate_canary(sim: LLMTaskSimulator, candidate_effect: Effect | None = None, *, seed: int,
                    config: PhaseConfig | None = None, slo_config: SLOConfig | None = None,
                    window_outcomes: int = 10_000, baseline_outcomes: int | None = None,
                    max_judged: int = 50_000,
                    candidate_arms: dict[str, int] | None = None, max_windows: int = 48,
                    stop_on_rollback: bool = False, alpha: float = 0.05, pool_size: int = 20_000,
                    state_dir: str | Path | None = None, start_time: float = 1_700_000_000.0) -> CanaryResult:
    """Run one simulated rollout of a candidate; see the module docstring for the model.

    Parameters
    ----------
    sim : LLMTaskSimulator
    candidate_effect : Effect, optional
        The candidate's serving perturbation; ``Effect()`` (none) when None.
    seed : int
        Seeds the context pool and every draw: the same seed gives the same result.
    config : PhaseConfig, optional
        The phase rules (the defaults: canary 1 h / 2,000 samples, guarded 24 h /
        10,000, cool-down 1 h doubling per rollback, two improved looks for general),
        with looks every 12 windows.
    slo_config : SLOConfig, optional
        The SLO rule (p99 x 1.10, mean quality x 0.95 by default); ``window_s`` is the
        length of a monitoring window.
    window_outcomes : int, default 10,000
        Candidate-served requests per window in canary (sets the request rate).
    baseline_outcomes : int, optional
        Baseline outcomes judged per window; 2 x ``window_outcomes`` when None.
    max_judged : int, default 50,000
        Cap on the candidate outcomes judged per window (guarded serves 50,000).
    candidate_arms : dict of task type -> arm index, optional
        The candidate's arm per task type; :func:`default_candidate_arms` when None. Pass
        the baseline arms for a healthy candidate identical to the baseline.
    max_windows : int, default 48
        Stop after this many windows (two simulated days at one-hour windows).
    stop_on_rollback : bool, default False
        Stop at the first rollback.
    alpha : float, default 0.05
        Of the anytime-valid bounds (online and the shadow OPE stand-in).
    pool_size : int, default 20,000
        Contexts drawn once per trial and resampled with replacement per window.
    state_dir : path, optional
        Where the provenance file goes; a temporary directory, removed afterwards,
        when None.
    start_time : float
        The injected clock's start, in seconds.

    Returns
    -------
    CanaryResult
    """
    effect = candidate_effect if candidate_effect is not None else Effect()
    if not isinstance(effect, Effect):
        raise TypeError(f"`candidate_effect` must be an Effect; got {type(effect).__name__}")
    for name, v in (("window_outcomes", window_outcomes), ("max_windows", max_windows), ("pool_size", pool_size),
                    ("max_judged", max_judged)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`{name}` must be an int >= 1; got {v!r}")
    slo_config = slo_config or SLOConfig()
    config = config or PhaseConfig(look_every_s=12 * slo_config.window_s)
    n_base = 2 * window_outcomes if baseline_outcomes is None else int(baseline_outcomes)
    if n_base < 1:
        raise ValueError(f"`baseline_outcomes` must be >= 1; got {baseline_outcomes!r}")
    if candidate_arms is None:
        if _ARM_CACHE and _ARM_CACHE[0][0] is sim:
            candidate_arms = _ARM_CACHE[0][1]
        else:
            candidate_arms = default_candidate_arms(sim)
            _ARM_CACHE[:] = [(sim, candidate_arms)]

    if state_dir is None:
        with tempfile.TemporaryDirectory(prefix="rtopt-canary-") as d:
            return _run(sim, effect, seed, config, slo_config, window_outcomes, n_base, max_judged,
                        candidate_arms, max_windows, stop_on_rollback, alpha, pool_size, Path(d), start_time)
    return _run(sim, effect, seed, config, slo_config, window_outcomes, n_base, max_judged, candidate_arms,
                max_windows, stop_on_rollback, alpha, pool_size, Path(state_dir), start_time)


def _run(sim: LLMTaskSimulator, effect: Effect, seed: int, config: PhaseConfig, slo_config: SLOConfig,
         window_outcomes: int, n_base: int, max_judged: int, candidate_arms: dict[str, int], max_windows: int,
         stop_on_rollback: bool, alpha: float, pool_size: int, state_dir: Path,
         start_time: float) -> CanaryResult:
    rng = np.random.default_rng(seed)
    pool = sim.sample_contexts(pool_size, seed=rng)
    tasks = np.asarray(pool["task_type"].to_numpy(), dtype=object)
    base_arm = sim.catalog.baseline_arms(tasks)
    try:
        cand_arm = np.array([candidate_arms[t] for t in tasks], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"`candidate_arms` has no arm for task type {exc.args[0]!r}") from None
    encoded = sim.context_pool(pool)  # encoded once, then indexed window after window

    def draw(n: int, arms: np.ndarray) -> dict[str, np.ndarray]:
        idx = rng.integers(0, pool_size, n)
        return encoded.sample(idx, arms[idx], rng)

    def perturb(o: dict[str, np.ndarray], *, serving: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lat, q = o["latency_ms"], o["quality"]
        if serving and (effect.latency_factor != 1.0 or effect.quality_factor != 1.0):
            lat = lat * effect.latency_factor
            q = np.clip(q * effect.quality_factor, 0.0, 1.0)
            tokens = o["outcome_prompt_tokens"] + o["completion_tokens"]
            r = sim.reward_fn.reward_arrays(q, tokens, lat, o["success"])
        else:
            r = o["reward"]
        return lat, q, (r + effect.reward_shift) if effect.reward_shift else r

    canary_share = config.shares[Phase.CANARY]
    if canary_share <= 0:
        raise ValueError("the canary share must be > 0 to size the request rate")
    rate = window_outcomes / (canary_share * slo_config.window_s)

    now = float(start_time)
    state_dir.mkdir(parents=True, exist_ok=True)
    prov = ProvenanceLog(state_dir / "provenance.jsonl")
    prov.append(actor="canary-simulation", action="config_change", policy_version="candidate",
                reason="candidate entered shadow", evidence={"phase": "shadow", "incumbent": "baseline"})
    phase, entered, last_move, n_rollbacks, retired = Phase.SHADOW, now, now, 0, False
    path = [Phase.SHADOW.value]
    rollbacks: list[int] = []
    entries: list[int] = []
    records: list[WindowRecord] = []
    breaches = 0
    terms: list[np.ndarray] = []  # the current phase's bound terms, window by window
    term_t: list[np.ndarray] = []
    samples = 0
    for w in range(1, max_windows + 1):
        now += slo_config.window_s
        served = round(rate * config.shares[phase] * slo_config.window_s)
        online = ope = None
        metrics: dict[str, Any] = {}
        if phase is Phase.SHADOW or served == 0:
            # counterfactual on the same requests: what the candidate would have done
            m = window_outcomes
            idx = rng.integers(0, pool_size, m)
            _, _, rc = perturb(encoded.sample(idx, cand_arm[idx], rng), serving=False)
            rb = encoded.sample(idx, base_arm[idx], rng)["reward"]
            terms.append(rc - rb)
            status = "insufficient"
        else:
            nc = min(served, max_judged)
            oc, ob = draw(nc, cand_arm), draw(n_base, base_arm)
            lc, qc, rc = perturb(oc, serving=True)
            rep = evaluate_window(lc, qc, ob["latency_ms"], ob["quality"], slo_config,
                                  window=(now - slo_config.window_s, now))
            status, metrics = rep.status, rep.metrics
            breaches += status == "breach"
            # unpaired: the window's candidate and incumbent requests in a random order, each
            # a candidate one with probability nc / (nc + n_base) (online_terms)
            order = rng.permutation(nc + n_base)
            r_all = np.concatenate([rc, ob["reward"]])[order]
            a_all = (order < nc)
            terms.append(online_terms(r_all, a_all, nc / (nc + n_base)))
            samples += served
        term_t.append(np.linspace(now - slo_config.window_s, now, len(terms[-1]), endpoint=False) + 1e-6)
        z, tz = np.concatenate(terms), np.concatenate(term_t)
        bound = lower_bound(z, alpha=alpha, n_opt=config.n_opt)
        bound = bound if math.isfinite(bound) else None
        k = int((now - entered) // config.look_every_s)
        looks = bounds_at(z, tz, entered + config.look_every_s * np.arange(1, k + 1), alpha=alpha,
                          n_opt=config.n_opt) if k else np.zeros(0)
        improved = 0
        for b in looks[::-1]:
            if not b > config.margin:
                break
            improved += 1
        if phase is Phase.SHADOW or served == 0:
            ope = bound
        else:
            online = bound
        ev = PhaseEvidence(gates="pass", slo=status, ope_lower_bound=ope, online_lower_bound=online,
                           samples=samples, duration_s=now - entered, since_transition_s=now - last_move,
                           improved_looks=improved, rollbacks=n_rollbacks, retired=retired)
        t = next_phase(phase, ev, config)
        if t.kind != "hold":
            prov.append(actor="canary-simulation", action="rollback" if t.kind == "retire" else t.kind,
                        policy_version="candidate", reason="; ".join(t.reasons),
                        evidence={"from": t.frm.value, "to": None if t.to is None else t.to.value,
                                  "slo": status, "ope_lower_bound": ope, "online_lower_bound": online,
                                  "samples": samples, "at": now})
            n_rollbacks += t.kind in ("rollback", "retire")
            retired = retired or t.kind == "retire"
            to = Phase.SHADOW if t.to is None else t.to
            path.append(to.value)
            phase, entered, last_move, samples, terms, term_t = to, now, now, 0, [], []
            if t.kind in ("rollback", "retire"):
                rollbacks.append(w)
            elif to is Phase.CANARY:
                entries.append(w)
        records.append(WindowRecord(w, t.frm.value, served if t.frm is not Phase.SHADOW else 0, status,
                                    online, ope, t.kind, (t.to or Phase.SHADOW).value, metrics))
        if phase is Phase.GENERAL or retired or (stop_on_rollback and rollbacks):
            break
    return CanaryResult(path=tuple(path), rollback_windows=tuple(rollbacks), canary_entries=tuple(entries),
                        slo_breaches=breaches, reached_general=phase is Phase.GENERAL,
                        windows=tuple(records), final_phase="retired" if retired else phase.value)
