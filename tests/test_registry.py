"""The one registry type behind domains, methods and attacks: register once, look up with a clear error."""
import pytest

from pipeline.attacks import ATTACKS
from pipeline.bounds import DOMAINS
from pipeline.train import METHODS
from pipeline.utils.registry import Registry


def test_register_lookup_and_errors():
    r = Registry("widget")

    @r.register("a")
    class A:
        pass
    assert r.get("a") is A and A.name == "a" and "a" in r and sorted(r) == ["a"]
    with pytest.raises(ValueError, match=r"widget 'a' registered twice"):
        r.register("a")(type("B", (), {}))
    with pytest.raises(ValueError, match=r"unknown widget 'z'; expected one of \['a'\]"):
        r.get("z")


def test_the_three_registries_hold_what_params_yaml_names():
    assert {"interval", "symbolic_linear", "backward", "hybrid_zonotope"} <= set(DOMAINS)
    assert {"natural", "mixtrain", "mixtrain_plus", "madry", "sinha", "wong", "diffai"} == set(METHODS)
    assert {"pgd", "cw", "interval"} == set(ATTACKS)
    for reg in (DOMAINS, METHODS, ATTACKS):
        assert all(cls.name == name for name, cls in reg.items())
