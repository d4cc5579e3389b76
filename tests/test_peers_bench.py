"""`bench peers` on a transformer: which configurations run on which family comes from the registry, and the DiT
caches sit beside Speedlab's block caching under the same timing and closeness protocol."""

import argparse

import pytest

from backend.bench import peers


def _args(**over) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    peers.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in over.items()])


def test_which_configurations_run_on_which_family_is_the_registrys():
    assert peers.applies("tiny-arch", "diffusers-pab-2") and not peers.applies("tiny-arch", "diffusers-fbc")
    assert peers.applies("tiny-arch", "deepcache-package-n3") and peers.applies("tiny-arch", "tome-0.3")
    assert not peers.applies("tiny-arch", "speedlab-rg-lcm-4")  # no student shipped for it
    assert peers.shipped_student("shapes") == "assets/rg-lcm-lora"  # each model's own shipped student
    assert peers.shipped_student("shapes-dit") == "assets/rg-lcm-lora-dit"
    assert peers.applies("shapes-dit", "speedlab-rg-lcm-4")
    assert not peers.applies("shapes-dit", "tcd-4")  # TCD's scheduler is refused on PixArt
    assert peers.applies("tiny-pixart", "diffusers-fbc") and peers.applies("tiny-pixart", "diffusers-faster-2")
    assert not peers.applies("tiny-pixart", "deepcache-package-n3") and not peers.applies("tiny-pixart", "tome-0.3")
    assert not peers.applies("tiny-pixart", "ays-10")


def test_dit_caches_beside_block_caching_on_tiny_pixart():
    names = "speedlab-deepcache-n3,diffusers-fbc,diffusers-faster-2,diffusers-taylorseer-3,tome-0.3"
    rows = peers.run(_args(models="tiny-pixart", configs=names, repeats=3, sd15_steps=3, sd15_n=1))
    by = {r["config"]: r for r in rows}
    assert set(by) == {"baseline", *names.split(",")} - {"tome-0.3"}  # ToMe does not apply to PixArt
    assert by["speedlab-deepcache-n3"]["verdict"] == "reference"
    for name in ("diffusers-fbc", "diffusers-faster-2", "diffusers-taylorseer-3"):
        row = by[name]
        assert row["vs_ref"] == "speedlab-deepcache-n3" and row["speedup"] > 0 and row["latency_ci"] is not None
        assert "closeness to baseline" in row["verdict"] and row["variant"]["height"] == 64
    assert by["baseline"]["psnr_vs_baseline"] >= 90  # the baseline against itself


def test_a_model_outside_the_list_is_one_line():
    with pytest.raises(ValueError, match="allowed: shapes, sd15-arch, shapes-dit, tiny-pixart, pixart-arch"):
        peers.run(_args(models="tiny-flux"))
