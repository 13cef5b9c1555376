"""rtopt-lab: tune LLM generation parameters with contextual bandits, and prove it offline.

Importing the package is cheap: heavy libraries (mlflow, matplotlib, pyspark) are imported
only by the edge modules that need them.
"""

from rtopt_lab.types import (
    GenerationRequest,
    LoggedDecision,
    Message,
    ParameterSet,
    SelectionResult,
    TaskFeatures,
    TaskOutcome,
)

__version__ = "0.1.0"

__all__ = [
    "GenerationRequest",
    "LoggedDecision",
    "Message",
    "ParameterSet",
    "SelectionResult",
    "TaskFeatures",
    "TaskOutcome",
    "__version__",
]
