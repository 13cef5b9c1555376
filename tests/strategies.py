"""Hypothesis strategies for the domain types, shared by the property-based tests."""

from hypothesis import strategies as st

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


