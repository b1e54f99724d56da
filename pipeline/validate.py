"""Semantic validation that needs the method and attack classes: build every training method and every attack the
grid will use, so a bad hyperparameter fails with one error naming the run or attack before any job starts
(params.yaml structure is checked torch-free in :mod:`pipeline.config` / :mod:`pipeline.params.evaluation`)."""
from __future__ import annotations

from pipeline.attacks import get_attack
from pipeline.config import DATASETS, Params
from pipeline.params.evaluation import resolve_attack_params
from pipeline.errors import ConfigError
from pipeline.runconfig import train_configs
from pipeline.train import get_method, implemented_methods

__all__ = ["check_buildable"]


def check_buildable(p: Params) -> None:
    implemented = set(implemented_methods())
    for tid, cfg in train_configs(p).items():
        if cfg.method not in implemented:
            continue
        try:
            get_method(cfg.method)(cfg.method_params, cfg.dataset, cfg.seed)
        except (ValueError, TypeError, KeyError) as e:
            raise ConfigError(f"run {tid}: method {cfg.method!r} rejects its parameters "
                              f"{cfg.method_params}: {e}") from None
    for scale, sc in p.scales.items():  # every scale and dataset, not only what this scale's grid uses
        for ds in DATASETS:
            for where, overrides in (("attack_overrides", sc.attack_overrides),
                                     ("table1_attack_overrides", sc.table1_attack_overrides)):
                for name, kw in resolve_attack_params(p.attacks, overrides, ds).items():
                    try:
                        get_attack(name)(**kw)
                    except (ValueError, TypeError) as e:
                        raise ConfigError(f"attacks.{name} (dataset {ds}, with scales.{scale}.{where}): {e}") from None
