"""Runtime: adaptation policies and admission (pure logic), executors and the serving daemon."""

from edgeskip.runtime.policies import AdaptiveController, Decision, FixedController, MixPolicy, RatePolicy, make_policy

__all__ = ["AdaptiveController", "Decision", "FixedController", "MixPolicy", "RatePolicy", "make_policy"]
