"""Sound bound engine: one module per domain, one shared interface and propagation loop.

Domains (registered by name, as used in params.yaml): ``interval`` (IBP), ``symbolic_interval`` (ReluVal),
``symbolic_linear`` (Neurify; the paper's method), ``backward`` (CROWN with symbolic intermediate bounds),
``backward_crown`` (full CROWN) and ``backward_ibp`` (CROWN-IBP).
"""
from pipeline.bounds.base import DOMAINS, Domain, RowDomain, get_domain, register_domain
from pipeline.bounds.graph import ChannelAffine, Conv, Flatten, Linear, ReLU, Residual, fold_spec, propagate, to_ops
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.symbolic import SymbolicLinearDomain
from pipeline.bounds.symbolic_interval import SymbolicIntervalDomain
from pipeline.bounds.backward import BackwardCrownDomain, BackwardDomain, BackwardIBPDomain
from pipeline.bounds.relu import Relaxation, relax_adaptive, relax_concretize, relax_parallel
from pipeline.bounds.verify import VerifyResult, bound_margins, input_box, margin_spec, verified_loss, verify

__all__ = ["DOMAINS", "Domain", "RowDomain", "get_domain", "register_domain", "ChannelAffine", "Conv", "Flatten",
           "Linear", "ReLU", "Residual", "fold_spec", "propagate", "to_ops", "IntervalDomain", "SymbolicLinearDomain",
           "SymbolicIntervalDomain", "BackwardDomain", "BackwardCrownDomain", "BackwardIBPDomain", "Relaxation", "relax_adaptive",
           "relax_concretize", "relax_parallel", "VerifyResult", "bound_margins", "input_box", "margin_spec",
           "verified_loss", "verify"]
