"""Runtime: adaptation policies and admission (pure logic), executors and the serving daemon."""

from edgeskip.runtime.api import Inference, Runtime, open
from edgeskip.runtime.policies import AdaptiveController, Decision, FixedController, MixPolicy, RatePolicy, make_policy

__all__ = [
    "AdaptiveController",
    "Decision",
    "FixedController",
    "Inference",
    "MixPolicy",
    "RatePolicy",
    "Runtime",
    "make_policy",
    "open",
]
