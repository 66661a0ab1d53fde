"""The cost model of docs/design.md, pinned on ViT-B/16."""

import pytest

from prtk.pruning.cost import block_cost_ratio, block_macs, gflops, vision_macs
from prtk.models.vit import ViTSpec

VIT_B16 = ViTSpec(layers=12, width=768, heads=12, mlp_width=3072, head_width=64, patch_size=16, image_size=224,
                  output_dim=512)


def test_vit_b16_is_17_56_gmacs():
    assert vision_macs(VIT_B16) / 1e9 == pytest.approx(17.56, rel=0.005)
    assert gflops(vision_macs(VIT_B16)) == pytest.approx(35.13, rel=0.005)


def test_block_formula_at_mlp_ratio_4():
    n, d = 197, 768
    assert block_macs(n, d) == 12 * n * d ** 2 + 2 * n ** 2 * d


def test_pruned_ratio_follows_the_design_formula():
    k = round(0.6 * 196)  # 118 kept patches
    cost = lambda n: 12 * n * 768 ** 2 + 2 * n ** 2 * 768  # noqa: E731
    expected = (3 * cost(197) + 9 * cost(1 + k)) / (12 * cost(197))
    assert block_cost_ratio(VIT_B16, 0.6, 3) == pytest.approx(expected, rel=1e-12)
    assert block_cost_ratio(VIT_B16, 0.6, 3) == pytest.approx(0.70, abs=0.005)
    with_tokens = (3 * cost(197) + 9 * cost(1 + k + 8)) / (12 * cost(197))
    assert block_cost_ratio(VIT_B16, 0.6, 3, learnable_tokens=8) == pytest.approx(with_tokens, rel=1e-12)
    assert block_cost_ratio(VIT_B16, 1.0, 3) == pytest.approx(1.0)


def test_pruned_tower_cost_is_less_and_grows_with_keep():
    costs = [vision_macs(VIT_B16, keep, 3) for keep in (0.3, 0.5, 0.7, 1.0)]
    assert costs == sorted(costs) and costs[-1] == pytest.approx(vision_macs(VIT_B16))


def test_stages_cost_each_segment_at_its_token_count():
    cost = lambda n: 12 * n * 768 ** 2 + 2 * n ** 2 * 768  # noqa: E731
    k = [137, 96, 67]  # 0.7 of 196 (137.2), of 137 (95.9), of 96 (67.2)
    expected = (3 * cost(197) + 3 * cost(1 + k[0]) + 3 * cost(1 + k[1]) + 3 * cost(1 + k[2])) / (12 * cost(197))
    stages = ((6, 0.7), (9, 0.7))
    assert block_cost_ratio(VIT_B16, 0.7, 3, later_stages=stages) == pytest.approx(expected, rel=1e-12)
    assert block_cost_ratio(VIT_B16, 0.7, 3, later_stages=((6, 1.0),)) == block_cost_ratio(VIT_B16, 0.7, 3)
    with_fused = (3 * cost(197) + 3 * cost(2 + k[0]) + 3 * cost(2 + k[1]) + 3 * cost(2 + k[2])) / (12 * cost(197))
    assert block_cost_ratio(VIT_B16, 0.7, 3, fused=True, later_stages=stages) == pytest.approx(with_fused, rel=1e-12)
