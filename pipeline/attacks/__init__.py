"""Adversarial attacks for the ERA columns (issue #5): one module per attack, a shared base class and a registry.

``get_attack(name)(**params)(model, x, y, eps, generator=None) -> AttackResult``, with names ``"pgd"`` (PGD L∞,
Madry et al. 2018), ``"cw"`` (PGD on the Carlini–Wagner margin loss) and ``"interval"`` (MixTrain's interval
attack).  ``pgd_perturb`` is the bare PGD inner maximisation for adversarial training.  Threat model, re-check and
cost unit: :mod:`pipeline.attacks.base`.
"""
from pipeline.attacks.base import (ATTACKS, Attack, AttackResult, CostMeter, get_attack, project, recheck,
                                   register_attack)
from pipeline.attacks.pgd import PGD, cross_entropy_loss, pgd_loop, pgd_perturb, random_start_point
from pipeline.attacks.cw import CW, cw_margin_loss
from pipeline.attacks.interval import IntervalAttack, bound_passes

__all__ = ["ATTACKS", "Attack", "AttackResult", "CostMeter", "get_attack", "project", "recheck", "register_attack",
           "PGD", "cross_entropy_loss", "pgd_loop", "pgd_perturb", "random_start_point", "CW", "cw_margin_loss",
           "IntervalAttack", "bound_passes"]
