"""Naive symbolic interval propagation (ReluVal, Wang et al., USENIX Security 2018).

Same symbolic equations as :mod:`pipeline.bounds.symbolic`, but an unstable ReLU is concretised: its lower equation
becomes 0 and its upper equation the constant ``u`` (its concrete upper bound); only stable neurons keep their
equations.  Propagation is shared; only the relaxation differs.
"""
from __future__ import annotations

from pipeline.bounds.base import register_domain
from pipeline.bounds.relu import RelaxFn, relax_concretize
from pipeline.bounds.symbolic import SymbolicLinearDomain

__all__ = ["SymbolicIntervalDomain"]


@register_domain("symbolic_interval")
class SymbolicIntervalDomain(SymbolicLinearDomain):
    relax: RelaxFn = staticmethod(relax_concretize)
