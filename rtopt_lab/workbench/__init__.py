"""The workbench: experiments (YAML) run as parameterised notebooks, and what they compute.

- :mod:`.experiments`: experiment files, validated against the notebook's parameters;
- :mod:`.kernel`: the project's Jupyter kernel;
- :mod:`.runner`: papermill runs, one or a batch in parallel, tracked in MLflow;
- :mod:`.replay`: fit candidates, replay them on held-out logs, gate them;
- :mod:`.views`: the dashboard's panels (Pareto points, attribution, drift);
- :mod:`.demo`: the end-to-end flow behind ``make demo``.
"""
