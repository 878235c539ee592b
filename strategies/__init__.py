"""Named forgetting remedies and their composition from a spec such as ``"ewc+replay"``."""
from .registry import (
    REMEDIES,
    TEACHER,
    Remedies,
    RemedyOptions,
    build_plugins,
    build_remedies,
    canonical,
    options_of,
    parse_strategy,
)

__all__ = ["REMEDIES", "TEACHER", "Remedies", "RemedyOptions", "build_plugins", "build_remedies", "canonical",
           "options_of", "parse_strategy"]
