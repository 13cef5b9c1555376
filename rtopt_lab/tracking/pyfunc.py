"""Policies as MLflow pyfunc models: a wrapper with no logic, state in NPZ/JSON artifacts.

The model is logged as *code* (MLflow's models-from-code: :mod:`._policy_model_code` is
copied into the model and run at load time), so nothing is cloudpickled: the policy's
configuration and state travel as the ``policy.npz`` written by ``policy.save`` (a JSON
config and plain arrays, loaded with ``allow_pickle=False``) and a readable
``policy.json`` copy of the configuration. A model registered with its serving masks
also carries ``incumbent.npz`` and ``serving.json`` and answers under those masks
(:class:`~rtopt_lab.policies.constrained.Constrained`), as the replay judged it. ``predict`` delegates to
:func:`rtopt_lab.serving.select_frame`, the same conversion batch scoring uses, so a
served model answers exactly what the in-process policy answers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, Schema

from rtopt_lab.policies.base import BasePolicy, load_policy
from rtopt_lab.policies.constrained import Constrained
from rtopt_lab.serving import FEATURE_COLUMNS, select_frame

__all__ = ["CODE_PATH", "PolicyModel", "policy_signature"]

#: The models-from-code file logged with every policy model.
CODE_PATH = Path(__file__).with_name("_policy_model_code.py")

#: Every input column is typed Any: each row is validated on its own by ``select_frame``,
#: so one bad record (a missing count, NaN in an int column, a wrong type) gets its own
#: fallback instead of failing the whole request at schema enforcement.
_INPUT_COLUMNS = (*FEATURE_COLUMNS, "request_id")
_OUTPUT_TYPES = {"request_id": "string", "arm_id": "string", "temperature": "double", "top_p": "double",
                 "max_tokens": "long", "frequency_penalty": "double", "presence_penalty": "double",
                 "seed": "long", "model_name": "string", "propensity": "double",
                 "policy_version": "string", "reason": "string", "blocked": "boolean"}
_OUTPUT_OPTIONAL = frozenset({"seed", "model_name", "reason"})


def policy_signature(spec: Any = None) -> ModelSignature:
    """Input: the task-feature columns (only ``task_type`` required); output: the decision.

    For a policy on a team's own context (:class:`rtopt_lab.context.ContextSpec`) the
    inputs are ``task_type``, ``risk_tier``, ``context`` (a JSON object, or a mapping) and
    the spec's own columns (each may come top-level or inside ``context``), ``request_id``.
    """
    names = _INPUT_COLUMNS
    if spec is not None and hasattr(spec, "featurize_record"):
        names = ("task_type", "risk_tier", "context", *(f.column for f in spec.features), "request_id")
    inputs = Schema([ColSpec(AnyType(), name, required=name == "task_type") for name in names])
    outputs = Schema([ColSpec(t, name, required=name not in _OUTPUT_OPTIONAL)
                      for name, t in _OUTPUT_TYPES.items()])
    return ModelSignature(inputs=inputs, outputs=outputs)


class PolicyModel(mlflow.pyfunc.PythonModel):
    """pyfunc face of a policy: loads ``policy.npz`` and delegates ``predict`` to it."""

    policy: BasePolicy | None = None
    guard: Constrained | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.policy = load_policy(context.artifacts["policy"])
        if "incumbent" in context.artifacts:  # served under the masks the gates judged
            config = json.loads(Path(context.artifacts["serving"]).read_text())
            self.guard = Constrained.from_config(self.policy, load_policy(context.artifacts["incumbent"]), config)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if self.policy is None:
            raise RuntimeError("PolicyModel.predict before load_context: load it with mlflow.pyfunc.load_model")
        return select_frame(self.policy, pd.DataFrame(model_input), guard=self.guard)
