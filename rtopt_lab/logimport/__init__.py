"""Bring your own log: import a team's LLM call log into the decision log.

A team that has logged its LLM calls (a CSV, JSONL or Parquet export, OpenAI-style
request/response logs, Vowpal Wabbit or Open Bandit Pipeline data) imports them with::

    rtopt log schema                         # the contract below, as a table (--json)
    rtopt log validate calls.csv --mapping m.yaml   # dry run: what would be quarantined
    rtopt log import calls.csv --to data/log --mapping m.yaml [--arms arms.yaml]
    rtopt log export data/log --to log.vw    # or log.npz (OBP)

or :func:`import_log`. The import reads the source in chunks, maps each chunk to the
contract, derives the columns the decision log needs and appends it to a
:class:`~rtopt_lab.logstore.LogStore`, which validates every row and quarantines the bad
ones with their reasons. Nothing is lost: ``rows_in == rows_imported +
rows_already_present + rows_quarantined`` (:class:`ImportReport`). Re-importing the same
file is a no-op: rows whose ``request_id`` is already in the store are skipped and counted
(only the store's ``request_id`` column is read).

The log contract
----------------
:data:`CONTRACT` (``rtopt log schema``). Names are the keys of a mapping's ``columns`` and
``defaults``; "stored as" is the decision-log column when it differs.

==========================  ========  ==================================================
name                        kind      meaning (default when absent)
==========================  ========  ==================================================
request_id                  required  unique id of the call
timestamp                   required  ISO 8601 (naive = UTC) or epoch s/ms (``units``)
task_type                   required  the kind of task
temperature, top_p,         required  the parameters actually used; or ``arm_id`` of the
max_tokens                            catalog (``--arms``) instead
frequency_penalty,          optional  0.0
presence_penalty
seed                        optional  null
model                       optional  the model parameter sent (stored as
                                      ``param_model_name``; null)
arm_id                      optional  derived from the parameters by
                                      :func:`rtopt_lab.arms.arm_id` when absent
propensity                  optional  the logged probability of the chosen parameters;
                                      missing stays missing: imported as null
                                      (off-policy evaluation refuses it until estimated,
                                      :func:`rtopt_lab.ope.estimate_propensities`)
quality                     required  in [0, 1]; or a ``feedback`` file, rescaled
latency_ms                  required  ``units: {latency: s}`` for seconds
prompt_tokens,              required  tokens billed (the prompt's stored as
completion_tokens                     ``outcome_prompt_tokens``)
success                     required  true/false, 1/0, yes/no (often a default)
truncated                   optional  False
model_name                  optional  the model that served (``model``, else "unknown")
policy_version              optional  "imported"
risk_tier                   optional  the mapping's default, 2 if unset
title_length ... max_loc    optional  the seed's coding-task context: counts 0,
has_external_deps                     False, complexity_indicators [],
complexity_indicators                 requested_model and prior_failures null
requested_model,
prior_failures
context                     derived   JSON object, sorted keys, of the team's context
                                      columns (``context:``; default every column the
                                      contract does not use); null when there are none
context_fingerprint         derived   :func:`rtopt_lab.features.context_fingerprint_frame`
reward                      derived   ``RewardFunction(**reward).reward_arrays`` of the
                                      outcome; taken as given from VW (-cost), OBP, or
                                      a column the mapping names (``columns.reward``)
==========================  ========  ==================================================

The decision log's own ``prompt_tokens`` (a feature: the prompt length known before the
call) stays null. An empty cell of an optional column gets its default too; an empty cell
of a required column (without a mapping default) quarantines its row.

The mapping file
----------------
YAML, every section optional (:func:`load_mapping` validates it at load; an error names
the key, e.g. ``columns.qualty``, and suggests the nearest valid one). A complete example::

    columns:                  # contract name: the source's column
      request_id: call_id
      timestamp: created_at
      task_type: kind
      # quality: score        # a quality column, or the `feedback` file below (not both)
      latency_ms: latency
      prompt_tokens: tokens_in
      completion_tokens: tokens_out
      propensity: p_logged
      model: model_requested
    units:
      latency: s              # s | ms (default ms)
      timestamp: iso          # iso | s | ms (default iso; epoch numbers need s or ms)
    defaults:                 # when the column is absent, or a cell is empty
      success: true
      risk_tier: 2
      policy_version: prompt-v3
    context: [repo, language, user_tier]   # default: every column not used above
    feedback:                 # quality from a separate file, joined by request id
      path: ratings.jsonl     # CSV, JSONL or Parquet; relative to the mapping file
      request_id: call_id     # its id column (default request_id)
      quality: rating         # its score column (default quality)
      scale: [1, 5]           # rescaled to [0, 1]: (rating - 1) / (5 - 1)
    reward:                   # RewardFunction(**reward); these are its defaults
      quality_weight: 1.0
      success_weight: 0.2
      token_cost_per_1k: 0.05
      latency_cost_per_s: 0.02

A contract column the mapping does not name is looked up under its own name. A row whose
request id has no feedback gets a null quality (quarantined, and counted in
``problems``).

Errors
------
A source that cannot be imported as a whole raises :class:`LogContractError` (a
``ValueError``; ``rtopt`` exits 2) before anything is written: a format not recognised
(with the ``--format`` choices), a file its format's parser cannot read (its complaint), a
missing required column (each named, with its meaning, the mapping key that would map it,
the nearest source column, and the columns the source has), epoch numbers without a
timestamp unit. A bad cell quarantines only its row: the store's reason names the
decision-log column (``"column 'quality' has a value that cannot be converted to
double"``) and :attr:`ImportReport.problems` the source column, the count, and the first
bad row and value (``"column 'score' (quality): 1 value(s) not a number; first at row 3:
'high'"``).

Formats
-------
``csv``, ``jsonl``, ``parquet`` (:mod:`~rtopt_lab.logimport.tabular`, with the mapping);
``openai`` (:mod:`~rtopt_lab.logimport.openai`: chat-completion request/response JSONL,
inferred from a ``.jsonl`` whose first object has ``request`` and ``response``); ``vw``
(:mod:`~rtopt_lab.logimport.vw`) and ``obp`` (:mod:`~rtopt_lab.logimport.obp`), in and
out, whose action indices follow the arm catalog's order. VW and OBP (and a source whose
mapping names ``columns.reward``) carry the reward but maybe no outcome: absent quality,
latency and tokens are filled with 0 and success with false (listed in ``defaulted``; a
mapping default overrides them), and rows without a timestamp get the import time.
A source naming arm ids without the parameters gets them from the catalog (``--arms``,
default the 48-arm grid), and its rows are checked against it (``"unknown arm_id"``). ``mlflow`` reads the traces of an MLflow experiment (source
``mlflow:<experiment>``, :mod:`~rtopt_lab.logimport.mlflow_traces`).

Examples
--------
>>> m = load_mapping({"columns": {"quality": "score"}, "units": {"latency": "s"}})
>>> m.source_column("quality"), m.latency_unit, m.reward.quality_weight
('score', 's', 1.0)
"""

from rtopt_lab.logimport.contract import CONTRACT, ContractField, LogContractError
from rtopt_lab.logimport.mapping import Feedback, LogMapping, MappingError, load_mapping

# the importer (pandas, pyarrow) loads on first use: `rtopt log schema` needs only the contract
_RUN = ("FORMATS", "ImportReport", "import_log", "infer_format")


def __getattr__(name: str):
    if name in _RUN:
        from rtopt_lab.logimport import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CONTRACT",
    "FORMATS",
    "ContractField",
    "Feedback",
    "ImportReport",
    "LogContractError",
    "LogMapping",
    "MappingError",
    "import_log",
    "infer_format",
    "load_mapping",
]
