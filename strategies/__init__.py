"""Named forgetting remedies and their composition from a spec such as ``"ewc+replay"``."""
from .registry import REMEDIES, RemedyOptions, build_plugins, canonical, parse_strategy

__all__ = ["REMEDIES", "RemedyOptions", "build_plugins", "canonical", "parse_strategy"]
