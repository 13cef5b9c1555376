"""A log in a foreign format with a known truth: the worked example of "bring your own log".

A team that calls an OpenAI-style chat-completion API keeps one JSON object per call
(the request body, the response's ``usage`` and ``finish_reason``, the latency) and,
separately, the users' ratings (1-5) by request id. :func:`write_foreign_log` writes such a
pair of files from a small synthetic world that is *not* the seed's: four task types of a
support desk (three of them unknown to the built-in spec), its own context (prompt
length, language, customer tier, tags, turns), its own 24-arm grid, and an exploring
logger (the production arm of each task type with probability 0.5, else an arm of its trust
region, ``|Δtemperature| <= 0.2`` and ``|Δmax_tokens| <= 200``, uniformly) whose propensity
the team logged in the request's ``metadata``. About 2 % of the calls
have no rating (they are quarantined on import, with that reason).

:func:`expected_quality` is the world's exact mean quality of an arm in a context, so a
replay on the imported log can be checked against the truth (``tests/test_own_log.py``).

Every file of ``data/sample/`` (calls, feedback, the import mapping and the context spec)
was written by ``python -m rtopt_lab.foreign_log data/sample`` (seed 1, 8,000 calls); the
``own_log`` notebook writes the same files where its ``sample_dir`` has none.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

__all__ = ["ARM_GRID", "CONTEXT_YAML", "MAPPING_YAML", "PRODUCTION", "SAMPLE_FILES", "TASK_TYPES",
           "expected_quality", "grid_yaml", "write_foreign_log"]

TASK_TYPES: tuple[str, ...] = ("support_reply", "extraction", "summarization", "sql_generation")
LANGUAGES = ("en", "de", "fr", "ja")
TIERS = ("free", "pro", "enterprise")
TAGS = ("pii", "long_context", "tables", "code", "multi_turn")
ARM_GRID = {"temperature": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "top_p": [1.0], "max_tokens": [300, 500, 700, 900]}
#: The hand-picked production parameters per task type (temperature, top_p, max_tokens).
PRODUCTION = {"support_reply": (0.8, 1.0, 500), "extraction": (0.4, 1.0, 500),
              "summarization": (0.6, 1.0, 700), "sql_generation": (0.4, 1.0, 300)}
_T_OPT = {"support_reply": 0.4, "extraction": 0.0, "summarization": 0.4, "sql_generation": 0.0}
_NEED = {"support_reply": 260.0, "extraction": 150.0, "summarization": 420.0, "sql_generation": 240.0}
_EXPLORE = 0.5


def _arms() -> list[tuple[float, float, int]]:
    g = ARM_GRID
    return [(t, p, m) for t in g["temperature"] for p in g["top_p"] for m in g["max_tokens"]]


def needed_tokens(task: Sequence[str], prompt_chars: np.ndarray, tags: Sequence[Sequence[str]]) -> np.ndarray:
    """Completion tokens the answer needs (before ``max_tokens`` cuts it)."""
    base = np.array([_NEED[t] for t in task])
    longer = np.array([1.35 if "long_context" in g else 1.0 for g in tags])
    return base * longer * (1.0 + 0.25 * np.log1p(np.asarray(prompt_chars) / 2_000.0))


def expected_quality(task: Sequence[str], prompt_chars: np.ndarray, language: Sequence[str],
                     tags: Sequence[Sequence[str]], temperature: np.ndarray, top_p: np.ndarray,
                     max_tokens: np.ndarray) -> np.ndarray:
    """Exact mean quality in [0, 1] of each row's parameters in its context.

    A task-specific best temperature (sharper when the prompt holds ``code`` or
    ``tables``), a penalty for cutting the answer (``max_tokens`` below the tokens needed),
    a small one for top_p < 1 on creative tasks, and a language offset.
    """
    task = list(task)
    t_opt = np.array([_T_OPT[t] for t in task])
    sharp = np.array([2.0 if ("code" in g or "tables" in g) else 1.0 for g in tags])
    need = needed_tokens(task, prompt_chars, tags)
    cut = np.clip((need - np.asarray(max_tokens)) / need, 0.0, 1.0)
    lang = np.array([{"en": 0.0, "de": -0.02, "fr": -0.02, "ja": -0.05}[x] for x in language])
    creative = np.array([t in ("support_reply", "summarization") for t in task])
    q = (0.82 - 0.9 * sharp * (np.asarray(temperature) - t_opt) ** 2 - 0.55 * cut
         - 0.04 * creative * (np.asarray(top_p) < 1.0) + lang)
    return np.clip(q, 0.0, 1.0)


def _contexts(n: int, rng: np.random.Generator) -> dict:
    task = rng.choice(TASK_TYPES, size=n, p=[0.4, 0.25, 0.2, 0.15])
    tags = [sorted(set(rng.choice(TAGS, size=rng.integers(0, 3), replace=False).tolist())) for _ in range(n)]
    return {"task_type": task, "prompt_chars": np.round(rng.lognormal(7.5, 0.8, n)).astype(int),
            "language": rng.choice(LANGUAGES, size=n, p=[0.55, 0.2, 0.15, 0.1]),
            "customer_tier": rng.choice(TIERS, size=n, p=[0.5, 0.35, 0.15]),
            "turns": rng.integers(1, 8, n), "tags": tags}


#: The import mapping of the sample (``mapping.yaml``): see :mod:`rtopt_lab.logimport`.
MAPPING_YAML = """# How calls.jsonl (OpenAI-style request/response log) maps to the log contract:
#   rtopt log import data/sample/calls.jsonl --format openai --mapping data/sample/mapping.yaml --to data/own_log
defaults:
  risk_tier: 2          # the team has no risk tiers: every call is tier 2
  success: true         # no acceptance check: the reward below gives it no weight
context: [prompt_chars, language, customer_tier, turns, tags]   # kept in the log's `context` column
feedback:               # quality is a 1-5 rating in a separate file, joined by request id
  path: feedback.jsonl
  request_id: request_id
  quality: rating
  scale: [1, 5]         # rescaled to [0, 1]
reward:                 # reward = quality - token cost - latency cost (no success bonus)
  quality_weight: 1.0
  success_weight: 0.0
  token_cost_per_1k: 0.05
  latency_cost_per_s: 0.02
"""
#: The team's context spec of the sample (``context.yaml``): see :mod:`rtopt_lab.context`.
CONTEXT_YAML = """# The team's own context: how each key of the log's `context` column becomes features.
task_types: [support_reply, extraction, summarization, sql_generation]
features:
  - {column: prompt_chars, kind: numeric, transform: log1p, ref: 20000}
  - {column: language, kind: categorical, levels: [en, de, fr, ja]}
  - {column: customer_tier, kind: categorical, levels: [free, pro, enterprise]}
  - {column: turns, kind: numeric, transform: standardize, mean: 4.0, sd: 2.0}
  - {column: tags, kind: tags, hash_buckets: 8}
"""
SAMPLE_FILES = ("calls.jsonl", "feedback.jsonl", "mapping.yaml", "context.yaml", "arms.yaml")


def grid_yaml(model: str = "gpt-4o-mini") -> str:
    """The team's parameter grid (``arms.yaml``): :data:`ARM_GRID`, baselines :data:`PRODUCTION`."""
    g = ARM_GRID
    lines = ["# The team's parameter grid: every arm a candidate may propose; baselines = production.",
             f"temperature: {g['temperature']}", f"top_p: {g['top_p']}", f"max_tokens: {g['max_tokens']}",
             f"model_name: [{model}]", "baseline:"]
    for i, (task, (t, p, m)) in enumerate(PRODUCTION.items()):
        arm = f"t{t:.2f}-p{p:.2f}-m{m}@{model}"
        if i == 0:
            lines.append(f"  default: {arm}")
        lines.append(f"  {task}: {arm}")
    return "\n".join(lines) + "\n"


def write_foreign_log(out: str | Path, n: int = 8_000, *, seed: int = 1, model: str = "gpt-4o-mini",
                      start: int = 1_767_225_600, explore: float = _EXPLORE) -> tuple[Path, ...]:
    """Write the sample into ``out``: ``calls.jsonl`` and ``feedback.jsonl`` of ``n`` calls,
    the import ``mapping.yaml``, the ``context.yaml`` spec and the team's ``arms.yaml`` grid
    (:data:`SAMPLE_FILES`).

    ``explore`` is the logger's exploring share (0.5: the production arm with probability
    0.5, else a uniform arm of its trust region); ``explore=0`` is a log of hand-picked
    parameters only: one arm per task type, every propensity 1.

    Refuses to overwrite any of them (remove them first). Returns the paths.
    """
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"`explore` must be in [0, 1]; got {explore!r}")
    out = Path(out)
    paths = tuple(out / name for name in SAMPLE_FILES)
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{str(p)!r} exists; remove it to write a new sample")
    calls, feedback = paths[:2]
    out.mkdir(parents=True, exist_ok=True)
    with paths[2].open("x") as f:
        f.write(MAPPING_YAML)
    with paths[3].open("x") as f:
        f.write(CONTEXT_YAML)
    with paths[4].open("x") as f:
        f.write(grid_yaml(model))
    rng = np.random.default_rng(seed)
    ctx = _contexts(n, rng)
    arms = _arms()
    k = len(arms)
    prod = np.array([arms.index(PRODUCTION[t]) for t in ctx["task_type"]])
    near = [np.flatnonzero([abs(a[0] - arms[j][0]) <= 0.2 + 1e-9 and abs(a[2] - arms[j][2]) <= 200
                            for a in arms]) for j in range(k)]  # each arm's trust region
    explore_row = rng.random(n) < explore
    pick = np.array([near[j][rng.integers(len(near[j]))] for j in prod])
    chosen = np.where(explore_row, pick, prod)
    size = np.array([len(near[j]) for j in prod])
    pscore = np.where(chosen == prod, 1 - explore + explore / size, explore / size)
    temp = np.array([arms[a][0] for a in chosen])
    top_p = np.array([arms[a][1] for a in chosen])
    max_tok = np.array([arms[a][2] for a in chosen])
    q = expected_quality(ctx["task_type"], ctx["prompt_chars"], ctx["language"], ctx["tags"], temp, top_p, max_tok)
    need = needed_tokens(ctx["task_type"], ctx["prompt_chars"], ctx["tags"])
    completion = np.minimum(np.round(need * rng.lognormal(0.0, 0.15, n)), max_tok).astype(int)
    truncated = completion >= max_tok
    prompt = (ctx["prompt_chars"] // 4 + 40).astype(int)
    latency = np.round(250 + 18.0 * completion * rng.lognormal(0.0, 0.2, n) + 0.02 * prompt, 1)
    # a 1-5 rating whose mean is 1 + 4 q (so quality = (rating - 1) / 4 is unbiased)
    rating = np.clip(np.round(1 + 4 * q + rng.normal(0, 0.6, n)), 1, 5).astype(int)
    rated = rng.random(n) >= 0.02
    ts = start + np.sort(rng.uniform(0, 14 * 86_400, n))
    with calls.open("x") as fc, feedback.open("x") as ff:
        for i in range(n):
            rid = f"chatcmpl-{seed:02d}{i:06d}"
            meta = {"task_type": str(ctx["task_type"][i]), "prompt_chars": int(ctx["prompt_chars"][i]),
                    "language": str(ctx["language"][i]), "customer_tier": str(ctx["customer_tier"][i]),
                    "turns": int(ctx["turns"][i]), "tags": ctx["tags"][i],
                    "propensity": round(float(pscore[i]), 12)}
            body = {"model": model, "temperature": float(temp[i]), "top_p": float(top_p[i]),
                    "max_tokens": int(max_tok[i]), "metadata": meta}  # (messages not kept)
            resp = {"model": model, "choices": [{"finish_reason": "length" if truncated[i] else "stop"}],
                    "usage": {"prompt_tokens": int(prompt[i]), "completion_tokens": int(completion[i])}}
            when = datetime.fromtimestamp(float(ts[i]), UTC).isoformat(timespec="milliseconds")
            fc.write(json.dumps({"id": rid, "timestamp": when, "request": body, "response": resp,
                                 "latency_ms": float(latency[i])}, separators=(",", ":")) + "\n")
            if rated[i]:
                ff.write(json.dumps({"request_id": rid, "rating": int(rating[i]), "resolved": bool(q[i] > 0.6)},
                                    separators=(",", ":")) + "\n")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtopt_lab.foreign_log",
                                 description="Write the worked example's foreign log: calls and feedback "
                                             "JSONL, the import mapping and the context spec.")
    ap.add_argument("out", type=Path, help="folder for calls.jsonl, feedback.jsonl, mapping.yaml, "
                                           "context.yaml and arms.yaml (must hold none of them yet)")
    ap.add_argument("--n", type=int, default=8_000, help="number of calls (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    ap.add_argument("--explore", type=float, default=_EXPLORE,
                    help="the logger's exploring share; 0: hand-picked parameters only, every propensity 1 "
                         "(default: %(default)s)")
    args = ap.parse_args(argv)
    for p in write_foreign_log(args.out, args.n, seed=args.seed, explore=args.explore):
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
