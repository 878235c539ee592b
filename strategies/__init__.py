"""Named forgetting remedies and their composition from a spec such as ``"ewc+replay"``."""
from .registry import REMEDIES, build_plugins, parse_strategy

__all__ = ["REMEDIES", "build_plugins", "parse_strategy"]
