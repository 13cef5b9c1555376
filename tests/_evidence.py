"""Live evidence for tests that walk a version through every phase of the registry.

:data:`LIVE_OK` satisfies :func:`~rtopt_lab.rollout.phases.next_phase` beyond canary with
the default :class:`~rtopt_lab.rollout.phases.PhaseConfig` (samples, duration, SLO ok, an
online bound above 0, two improved looks; the shadow bound too); the registry's own tags
supply the rest.
"""

from rtopt_lab.rollout.phases import PhaseEvidence

#: Shadow -> canary: the shadow traffic's anytime-valid off-policy bound above 0.
SHADOW_OK = PhaseEvidence(ope_lower_bound=0.01)
LIVE_OK = PhaseEvidence(slo="ok", online_lower_bound=0.01, samples=20_000, duration_s=30 * 86_400.0,
                        improved_looks=2, ope_lower_bound=0.01)
