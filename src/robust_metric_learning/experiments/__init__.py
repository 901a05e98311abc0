"""The published experiments as declarative configs, run with cached, resumable results."""

from .cache import ResultCache, fingerprint
from .runner import EXPERIMENTS, reproduce

__all__ = ["EXPERIMENTS", "ResultCache", "fingerprint", "reproduce"]
