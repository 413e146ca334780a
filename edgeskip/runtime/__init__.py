"""Runtime: the adaptation algorithm (pure logic) and, later, executors and the serving daemon."""

from edgeskip.runtime.adaptation import AdaptiveController, Decision, FixedController, simulate

__all__ = ["AdaptiveController", "Decision", "FixedController", "simulate"]
