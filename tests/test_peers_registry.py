"""Every peer is a registered method whose knobs are declared with help text and bounds or choices, in the schema."""

from __future__ import annotations

from backend.methods import registry
from backend.methods.diffusers_cache import DIT_ONLY
from backend.variant import Variant

PEERS = ("tome", "diffusers_cache", "peer_int8", "schedule", "compile")


def test_every_peer_declares_its_knobs_with_help_and_bounds():
    schema = Variant.schema()["sections"]
    for section in PEERS:
        assert section in registry.sections()
        params = schema[section]["params"]
        assert params
        for p in params:
            assert p["help"], (section, p["name"])
            if p["type"] in ("int", "float"):
                assert p["choices"] or (p["minimum"] is not None and p["maximum"] is not None), (section, p["name"])
            if p["type"] == "str":
                assert p["choices"], (section, p["name"])


def test_the_schema_says_which_caches_are_dit_only():
    cache = Variant.schema()["sections"]["diffusers_cache"]
    assert "DiT only" in cache["title"]
    kind = next(p for p in cache["params"] if p["name"] == "kind")
    assert all(k in kind["choices"] for k in DIT_ONLY) and "DiT only" in kind["help"]
