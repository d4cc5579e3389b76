"""A method config built directly is held to its declaration like a Variant section: same one-line refusal."""

import dataclasses

import pytest

from backend.methods import registry
from backend.methods.deepcache.config import DeepCacheConfig
from backend.variant import Variant


def test_a_config_built_directly_refuses_what_the_variant_refuses():
    with pytest.raises(ValueError) as direct:
        DeepCacheConfig(interval=0)
    with pytest.raises(ValueError) as parsed:
        Variant.from_dict({"model": "shapes", "deepcache": {"interval": 0}})
    assert str(direct.value) == str(parsed.value) == "deepcache.interval: 0 is out of range; allowed: 1 to 1000"
    with pytest.raises(ValueError, match="deepcache.interval"):
        dataclasses.replace(DeepCacheConfig(), interval=-1)


@pytest.mark.parametrize("method", registry.methods(), ids=lambda m: m.section)
def test_every_declared_bound_holds_for_a_directly_built_config(method):
    cls = method.config_class()
    bounded = [p for p in cls.describe() if p.get("minimum") is not None and p["type"] in ("int", "float")]
    for p in bounded:
        with pytest.raises(ValueError, match=rf"{cls.section}\.{p['name']}: .* out of range"):
            cls(**{p["name"]: p["minimum"] - 1})
