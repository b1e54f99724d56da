"""The parsers of params.yaml's sections, each to typed, validated dataclasses; torch-free.

:mod:`pipeline.config` reads the file and assembles their results into :class:`~pipeline.config.Params`
(:func:`~pipeline.config.load_params`); the per-run configs are built from that in :mod:`pipeline.runconfig`.

- :mod:`.schema`: the strict YAML reader (duplicate keys refused) and the validators every parser shares;
- :mod:`.training`: ``scales`` (schedules and their per-method/per-run overrides), ``optim``, ``verify``;
- :mod:`.evaluation`: ``attacks``, ``table1``, ``figures``;
- :mod:`.cluster`: ``cluster`` (what each rule's job asks a SLURM cluster for).
"""
from pipeline.params.cluster import ClusterConfig, JobResources, parse_cluster
from pipeline.params.evaluation import (AttackSettings, FigureSettings, Table1Settings, parse_attacks, parse_figures,
                                        parse_table1, resolve_attack_params)
from pipeline.params.schema import read_yaml
from pipeline.params.training import OptimConfig, ScaleConfig, VerifyConfig, parse_scales

__all__ = ["ClusterConfig", "JobResources", "parse_cluster", "AttackSettings", "FigureSettings", "Table1Settings",
           "parse_attacks", "parse_figures", "parse_table1", "resolve_attack_params", "read_yaml", "OptimConfig",
           "ScaleConfig", "VerifyConfig", "parse_scales"]
