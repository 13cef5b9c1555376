"""Bring-your-own-log import (docstring written below)."""

from rtopt_lab.logimport.contract import CONTRACT, ContractField, LogContractError
from rtopt_lab.logimport.mapping import Feedback, LogMapping, MappingError, load_mapping
from rtopt_lab.logimport.run import FORMATS, ImportReport, import_log, infer_format

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
