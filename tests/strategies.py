"""Hypothesis strategies for the domain types, shared by the property-based tests.

Well-formed values (:data:`features_st`, :data:`params_st`) and HOSTILE ones, for the
serving paths that must never raise and never leave their masks:

- :data:`hostile_strings`: empty, whitespace-only, control characters, lone surrogates,
  over-long (129+ characters);
- :data:`hostile_request_ids`: ordinary ids, the hostile strings and non-strings (ints,
  bytes, None, floats with NaN, lists, dicts);
- :data:`hostile_values`: a value of any wrong type or range for a feature field (NaN,
  inf, negative and huge ints, strings, bytes, nested objects, numpy scalars);
- :data:`hostile_feature_dicts`: a well-formed feature mapping (:data:`plain_feature_dicts`)
  with keys dropped, extra keys added and values replaced by hostile ones; :data:`hostile_features` also gives
  TaskFeatures, plain dicts and non-mappings;
- :func:`masks` (boolean masks of K arms, all-False included) and :func:`hostile_masks`
  (also wrong dtype, wrong shape and non-arrays);
- :data:`hostile_records` (one row of a serving frame) and :func:`hostile_frames`.
"""

import math

import numpy as np
from hypothesis import strategies as st

from rtopt_lab.features import DEFAULT_TASK_TYPES
from rtopt_lab.types import ParameterSet, TaskFeatures

names = st.text(alphabet=st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=30)
features_st = st.builds(
    TaskFeatures,
    task_type=names,
    risk_tier=st.integers(1, 3),
    title_length=st.integers(0, 10_000),
    description_length=st.integers(0, 2**31 - 1),
    acceptance_criteria_count=st.integers(0, 100),
    scope_files_count=st.integers(0, 1000),
    max_files=st.integers(0, 1000),
    max_loc=st.integers(0, 10**7),
    has_external_deps=st.booleans(),
    complexity_indicators=st.lists(names, max_size=10).map(tuple),
    model_name=st.none() | names,
    prompt_tokens=st.none() | st.integers(0, 10**6),
    prior_failures=st.none() | st.integers(0, 50),
)
params_st = st.builds(
    ParameterSet,
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1, exclude_min=True),
    max_tokens=st.integers(1, 10**6),
    frequency_penalty=st.floats(-2, 2),
    presence_penalty=st.floats(-2, 2),
    seed=st.none() | st.integers(0, 2**63 - 1),
    model_name=st.none() | names,
)

# ----------------------------------------------------------------------------- hostile input
FEATURE_FIELDS: tuple[str, ...] = tuple(TaskFeatures.__dataclass_fields__)

#: strings no identifier accepts (or that need normalising before a log takes them)
hostile_strings = st.one_of(
    st.just(""),
    st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003", min_size=1, max_size=20),  # whitespace only
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=20),
    st.sampled_from(["\ud800", "req-\udfff", "\x00", "a\x00b", "\x7f", "\u202e"]),
    st.text(alphabet=st.characters(categories=("Cs",)), min_size=1, max_size=5),  # lone surrogates
    st.builds(lambda s, n: (s * n)[:n], names, st.integers(129, 2_000)),  # over-long
    st.integers(129, 100_000).map(lambda n: "x" * n),
)

#: task types: the spec's, unknown ones and hostile strings
task_types = st.one_of(st.sampled_from(DEFAULT_TASK_TYPES), names, hostile_strings)

#: request ids: ordinary, hostile strings and non-strings
hostile_request_ids = st.one_of(
    st.none(),
    st.integers(0, 10**6).map(lambda i: f"req-{i}"),
    names,
    hostile_strings,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.binary(max_size=10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(names, st.integers(), max_size=2),
)

_nested = st.recursive(
    st.none() | st.integers() | names,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)

#: a value of a wrong type or out of range for any feature field
hostile_values = st.one_of(
    st.none(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 2.5]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), -1),
    st.sampled_from([2**31, 2**63, 2**64, 2**70, -(2**63), 10**30]),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    names,
    hostile_strings,
    st.binary(max_size=8),
    _nested,
    st.sampled_from([np.int64(2), np.float64("nan"), np.bool_(True), np.int32(-1)]),
    st.integers(65, 10_000).map(lambda n: [f"i{j}" for j in range(n)]),  # too many indicators
    st.lists(hostile_strings, min_size=1, max_size=3),
)


_tags = st.sampled_from(("api_integration", "concurrency", "security", "ui", "migration", "perf"))
#: well-formed feature mappings, cheap to draw (few text draws): the base hostile dicts mutate
plain_feature_dicts = st.fixed_dictionaries(
    {
        "task_type": st.sampled_from(DEFAULT_TASK_TYPES),
        "risk_tier": st.integers(1, 3),
        "title_length": st.integers(0, 10_000),
        "description_length": st.integers(0, 2**31 - 1),
        "acceptance_criteria_count": st.integers(0, 100),
        "scope_files_count": st.integers(0, 1000),
        "max_files": st.integers(0, 1000),
        "max_loc": st.integers(0, 10**7),
        "has_external_deps": st.booleans(),
        "complexity_indicators": st.lists(_tags, max_size=4),
        "model_name": st.sampled_from([None, "gpt-4o-mini", "gpt-4o"]),
        "prompt_tokens": st.none() | st.integers(0, 10**6),
        "prior_failures": st.none() | st.integers(0, 50),
    }
)


@st.composite
def hostile_feature_dicts(draw) -> dict:
    """A feature mapping: well-formed, then keys dropped, extra keys added, values replaced."""
    base = draw(plain_feature_dicts)
    base["task_type"] = draw(task_types)
    drop = draw(st.sets(st.sampled_from(FEATURE_FIELDS), max_size=4))
    out = {k: v for k, v in base.items() if k not in drop}
    bad = draw(st.sets(st.sampled_from(FEATURE_FIELDS), max_size=3))
    for k in sorted(bad):
        out[k] = draw(hostile_values)
    if draw(st.integers(0, 3)) == 0:
        out[draw(names.filter(lambda s: s not in FEATURE_FIELDS))] = draw(hostile_values)
    return out


#: every kind of ``features`` argument: TaskFeatures, good and hostile dicts, non-mappings
hostile_features = st.one_of(
    features_st,
    features_st.map(TaskFeatures.to_dict),
    hostile_feature_dicts(),
    hostile_feature_dicts(),
    hostile_values,
    st.just({}),
)


def masks(k: int) -> st.SearchStrategy:
    """Boolean arrays of shape (k,): random, all-False, all-True and one-hot."""
    one_hot = st.integers(0, k - 1).map(lambda i: np.arange(k) == i)
    rand = st.integers(0, 2**k - 1).map(lambda b: np.array([(b >> j) & 1 for j in range(k)], bool))
    sparse = st.sets(st.integers(0, k - 1), max_size=4).map(
        lambda s: np.isin(np.arange(k), list(s))
    )
    return st.one_of(
        st.just(np.zeros(k, dtype=bool)),
        st.just(np.ones(k, dtype=bool)),
        one_hot,
        rand,
        sparse,
    )


def hostile_masks(k: int) -> st.SearchStrategy:
    """:func:`masks`, None, and masks of the wrong dtype, shape or type."""
    return st.one_of(
        st.none(),
        masks(k),
        masks(k),
        masks(k).map(lambda m: m.astype(int)),
        masks(k).map(lambda m: m.astype(float)),
        masks(k).map(list),
        st.integers(0, 2 * k).map(lambda n: np.ones(n, dtype=bool)),
        st.just(np.ones((2, k), dtype=bool)),
        st.sampled_from(["all", 1, None, b"x", {"a": 1}]),
    )


_SERVING_KEYS = (*FEATURE_FIELDS, "request_id")


@st.composite
def hostile_records(draw) -> dict:
    """One row of a serving frame: a good or hostile feature dict plus a ``request_id``.

    Values are what JSON or pandas can carry: NaN for a missing number, None, lists.
    """
    if draw(st.booleans()):
        rec = draw(plain_feature_dicts)
        rec["task_type"] = draw(st.sampled_from(DEFAULT_TASK_TYPES) | names)
    else:
        rec = draw(hostile_feature_dicts())
    if draw(st.booleans()):
        rec.pop(draw(st.sampled_from(FEATURE_FIELDS)), None)
    if draw(st.booleans()):
        rec[draw(st.sampled_from(FEATURE_FIELDS[1:9]))] = math.nan  # NaN in an int column
    rid = draw(hostile_request_ids)
    if rid is not None or draw(st.booleans()):
        rec["request_id"] = rid
    return {k: v for k, v in rec.items() if k in _SERVING_KEYS or draw(st.booleans())}


def hostile_frames(min_rows: int = 1, max_rows: int = 6) -> st.SearchStrategy:
    """Lists of :func:`hostile_records` (build a DataFrame with ``pd.DataFrame(rows)``)."""
    return st.lists(hostile_records(), min_size=min_rows, max_size=max_rows)
