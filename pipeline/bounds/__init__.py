"""Sound bound engine: one module per domain, one shared interface and propagation loop.

Domains (registered by name, as used in params.yaml): ``interval`` (IBP), ``symbolic_interval`` (ReluVal),
``symbolic_linear`` (Neurify; the paper's method), ``backward`` (CROWN with symbolic intermediate bounds),
``backward_crown`` (full CROWN), ``backward_ibp`` (CROWN-IBP) and ``hybrid_zonotope`` (DiffAI's hSmooth).
Wong et al.'s dual-network bound (exact, or with random projections for training) is
:func:`~pipeline.bounds.projection.wong_domain` (not registered: the projected variant is not sound).
"""
from pipeline.bounds.base import DOMAINS, Domain, RowDomain, get_domain, register_domain
from pipeline.bounds.graph import ChannelAffine, Conv, Flatten, Linear, ReLU, Residual, fold_spec, propagate, to_ops
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.symbolic import SymbolicLinearDomain
from pipeline.bounds.symbolic_interval import SymbolicIntervalDomain
from pipeline.bounds.backward import BackwardCrownDomain, BackwardDomain, BackwardIBPDomain
from pipeline.bounds.hybrid_zonotope import (HYBRID_RELUS, HybridZonotopeDeepZ, HybridZonotopeDomain,
                                             HybridZonotopeHSwitch, relax_hsmooth, relax_hswitch)
from pipeline.bounds.projection import ProjectionDomain, WongDualDomain, cauchy_rows, median_l1, wong_domain
from pipeline.bounds.relu import Relaxation, relax_adaptive, relax_concretize, relax_parallel
from pipeline.bounds.verify import (VerifyResult, bound_margins, input_box, margin_lower_bounds, margin_spec,
                                   verified_loss, verify)
from pipeline.bounds.rounding import (gamma, margin_rounding_bound, margin_rounding_bounds, rounding_bound,
                                      rounding_bounds, unit_roundoff)

__all__ = ["DOMAINS", "Domain", "RowDomain", "get_domain", "register_domain", "ChannelAffine", "Conv", "Flatten",
           "Linear", "ReLU", "Residual", "fold_spec", "propagate", "to_ops", "IntervalDomain", "SymbolicLinearDomain",
           "SymbolicIntervalDomain", "BackwardDomain", "BackwardCrownDomain", "BackwardIBPDomain", "Relaxation", "relax_adaptive",
           "relax_concretize", "relax_parallel", "VerifyResult", "bound_margins", "margin_lower_bounds", "input_box", "margin_spec",
           "verified_loss", "verify", "HYBRID_RELUS", "HybridZonotopeDomain", "HybridZonotopeHSwitch",
           "HybridZonotopeDeepZ", "relax_hsmooth", "relax_hswitch", "ProjectionDomain", "WongDualDomain",
           "cauchy_rows", "median_l1", "wong_domain", "gamma", "margin_rounding_bound", "margin_rounding_bounds",
           "rounding_bound", "rounding_bounds", "unit_roundoff"]
