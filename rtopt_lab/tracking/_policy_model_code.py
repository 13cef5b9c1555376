"""MLflow models-from-code entry point: copied into every logged policy model.

Loading the model runs this file; the policy itself comes from the ``policy`` artifact.
"""

from mlflow.models import set_model

from rtopt_lab.tracking.pyfunc import PolicyModel

set_model(PolicyModel())
