"""The pruned tower: exact at keep 1.0, static budgets, and each scorer doing what it says."""

import pytest
import torch

from prtk.core.errors import PrtkInputError
from prtk.models import load_clip
from prtk.pruning.tower import PrunedVisionTower, keep_count
from prtk.pruning.scorers import ClsAttentionScorer, IndexScorer, RandomScorer, ScorerInput


@pytest.fixture(scope="module")
def tiny():
    return load_clip("prtk-tiny", random_weights=True, seed=3)


def images_for(clip, batch=3, seed=0):
    size = clip.spec.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["prtk-tiny", "prtk-tiny-avgpool",
                                  pytest.param("ViT-B-32", marks=pytest.mark.slow),
                                  pytest.param("ViT-B-16", marks=pytest.mark.slow),
                                  pytest.param("ViT-L-14", marks=pytest.mark.slow)])
def test_keep_one_reproduces_open_clip(name):
    clip = load_clip(name, random_weights=True, seed=0)
    images = images_for(clip, batch=2)
    with torch.inference_mode():
        reference = clip.model.encode_image(images)
        for scorer in (ClsAttentionScorer(), RandomScorer(0)):
            tower = PrunedVisionTower(clip.visual, keep=1.0, layer=clip.spec.layers // 4 or 1, scorer=scorer)
            embedding, kept = tower(images, return_indices=True)
            assert embedding.shape == reference.shape
            assert (embedding - reference).abs().max().item() <= 1e-5
            assert torch.equal(kept, torch.arange(clip.spec.num_patches).expand(2, -1))


def test_keep_count_rounds_and_keeps_at_least_one():
    assert keep_count(0.6, 196) == 118
    assert keep_count(0.5, 49) == 25
    assert keep_count(0.001, 64) == 1
    assert keep_count(1.0, 64) == 64
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(PrtkInputError, match="keep ratio must be in"):
            keep_count(bad, 64)


def test_static_budget_and_sorted_unique_indices(tiny):
    tower = PrunedVisionTower(tiny.visual, keep=0.3, layer=2)
    with torch.inference_mode():
        embedding, kept = tower(images_for(tiny, batch=5), return_indices=True)
    assert embedding.shape == (5, tiny.spec.output_dim)
    assert kept.shape == (5, keep_count(0.3, 64))
    assert torch.all(kept[:, 1:] > kept[:, :-1])
    assert kept.min() >= 0 and kept.max() < 64


def test_pruning_changes_the_embedding_and_depends_on_which_tokens(tiny):
    images = images_for(tiny)
    with torch.inference_mode():
        full = tiny.model.encode_image(images)
        by_attention = PrunedVisionTower(tiny.visual, 0.5, 2, ClsAttentionScorer())(images)
        by_random = PrunedVisionTower(tiny.visual, 0.5, 2, RandomScorer(0))(images)
    assert not torch.allclose(by_attention, full, atol=1e-4)
    assert not torch.allclose(by_attention, by_random, atol=1e-4)


def test_cls_attention_matches_the_blocks_own_attention_weights(tiny):
    tower = PrunedVisionTower(tiny.visual, keep=0.5, layer=3)
    images = images_for(tiny)
    with torch.inference_mode():
        inputs = tower.prefix(images)
        scores = ClsAttentionScorer()(inputs)
        block = inputs.previous_block
        hidden = block.ln_1(inputs.previous_tokens)
        _, weights = block.attn(hidden, hidden, hidden, need_weights=True, average_attn_weights=True)
        # the scorer must not change the unpruned flow: block l-1 applied to its input gives the tokens at l
        assert torch.allclose(block(inputs.previous_tokens), inputs.tokens, atol=1e-6)
    torch.testing.assert_close(scores, weights[:, 0, 1:], atol=1e-6, rtol=1e-5)


def test_random_scorer_is_seeded(tiny):
    images = images_for(tiny)
    tower = PrunedVisionTower(tiny.visual, 0.5, 2, RandomScorer(7))
    with torch.inference_mode():
        _, first = tower(images, return_indices=True)
        _, second = tower(images, return_indices=True)
        tower.scorer.reset()
        _, again = tower(images, return_indices=True)
        _, other = PrunedVisionTower(tiny.visual, 0.5, 2, RandomScorer(8))(images, return_indices=True)
    assert torch.equal(first, again)
    assert not torch.equal(first, second)
    assert not torch.equal(first, other)


def test_indices_scorer_keeps_the_head_of_each_ranking(tiny):
    generator = torch.Generator().manual_seed(0)
    rankings = torch.stack([torch.randperm(64, generator=generator) for _ in range(3)])
    tower = PrunedVisionTower(tiny.visual, 0.25, 2, IndexScorer())
    with torch.inference_mode():
        embedding, kept = tower(images_for(tiny), rankings=rankings, return_indices=True)
        direct = tower.suffix(tower.select(tower.prefix(images_for(tiny)).tokens, rankings[:, :16].sort(1).values))
    assert torch.equal(kept, rankings[:, :16].sort(dim=1).values)
    torch.testing.assert_close(embedding, direct)


def test_fused_and_learnable_token_slots(tiny):
    images = images_for(tiny)
    plain = PrunedVisionTower(tiny.visual, 0.5, 2)
    fused = PrunedVisionTower(tiny.visual, 0.5, 2, fuse_dropped=True)
    prompted = PrunedVisionTower(tiny.visual, 0.5, 2, num_learnable_tokens=4)
    with torch.no_grad():
        prompted.learnable_tokens.normal_(generator=torch.Generator().manual_seed(0))
        inputs = plain.prefix(images)
        kept = plain.scorer(inputs).topk(32, dim=1).indices.sort(1).values
        selected = fused.select(inputs.tokens, kept)
        dropped = torch.ones(3, 64, dtype=torch.bool).scatter(1, kept, False)
        expected_fused = torch.stack([inputs.tokens[b, 1:][dropped[b]].mean(0) for b in range(3)])
        outputs = [tower(images) for tower in (plain, fused, prompted)]
    assert selected.shape == (3, 1 + 32 + 1, tiny.spec.width)
    torch.testing.assert_close(selected[:, -1], expected_fused)
    assert all(o.shape == (3, tiny.spec.output_dim) for o in outputs)
    assert not torch.allclose(outputs[0], outputs[1]) and not torch.allclose(outputs[0], outputs[2])
    assert prompted.num_learnable_tokens == 4
    with pytest.raises(PrtkInputError, match="fused token needs dropped tokens"):
        PrunedVisionTower(tiny.visual, 1.0, 2, fuse_dropped=True)


def test_batch_is_dynamic_under_torch_export(tiny):
    tower = PrunedVisionTower(tiny.visual, 0.5, 2).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(tower, (images_for(tiny, batch=2),), dynamic_shapes=({0: batch},))
    images = images_for(tiny, batch=5, seed=1)
    with torch.inference_mode():
        torch.testing.assert_close(exported.module()(images), tower(images), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layer", [0, 6, -1])
def test_layer_outside_range_is_refused(tiny, layer):
    with pytest.raises(PrtkInputError, match=r"layer must be in \[1, 5\]"):
        PrunedVisionTower(tiny.visual, 0.5, layer)


def test_a_later_stage_keeps_the_patches_cls_attends_to_most(tiny):
    images = images_for(tiny, batch=4)
    one = PrunedVisionTower(tiny.visual, 0.5, 2)
    unchanged = PrunedVisionTower(tiny.visual, 0.5, 2, later_stages=((4, 1.0),))
    two = PrunedVisionTower(tiny.visual, 0.5, 2, later_stages=((3, 0.5),))
    three = PrunedVisionTower(tiny.visual, 0.5, 2, later_stages=((3, 0.5), (5, 0.5)))
    with torch.inference_mode():
        embedding, first = one(images, return_indices=True)
        same, same_kept = unchanged(images, return_indices=True)
        _, second = two(images, return_indices=True)
        final, last = three(images, return_indices=True)
        entering = one.select(one.prefix(images).tokens, first)  # [B, 1+32, D] entering block 2
        after = one._run_blocks(entering, 2, 3)
        scores = ClsAttentionScorer()(ScorerInput(after, entering, tiny.visual.transformer.resblocks[2]))
        expected = first.gather(1, scores.topk(16, dim=1).indices.sort(dim=1).values)
    torch.testing.assert_close(same, embedding, atol=1e-6, rtol=0)
    assert torch.equal(same_kept, first)
    assert torch.equal(second, expected)
    assert three.stage_counts == (32, 16, 8) and three.kept_count == 8 and last.shape == (4, 8)
    assert torch.all(last[:, 1:] > last[:, :-1])
    assert all(set(row.tolist()) <= set(kept.tolist()) for row, kept in zip(last, second))
    assert final.shape == embedding.shape and not torch.allclose(final, embedding, atol=1e-4)


def test_stages_keep_the_fused_and_learnable_tokens(tiny):
    images = images_for(tiny)
    tower = PrunedVisionTower(tiny.visual, 0.5, 2, fuse_dropped=True, num_learnable_tokens=2,
                              later_stages=((4, 0.5),))
    plain = PrunedVisionTower(tiny.visual, 0.5, 2, num_learnable_tokens=2, later_stages=((4, 0.5),))
    with torch.no_grad():
        for module in (tower, plain):
            module.learnable_tokens.normal_(generator=torch.Generator().manual_seed(0))
        fused, plain_embedding = tower(images), plain(images)
    assert fused.shape == (3, tiny.spec.output_dim) and not torch.allclose(fused, plain_embedding, atol=1e-4)


@pytest.mark.parametrize("stages, message", [
    (((6, 0.5),), r"stage block 6 is outside \[1, 5\]"),
    (((2, 0.5),), "stage block 2 appears twice"),
    (((1, 0.5),), "stage blocks must ascend: block 1 comes after block 2"),
    (((4, 1.5),), r"keep ratio must be in \(0, 1\], got 1.5"),
])
def test_bad_stages_are_refused(tiny, stages, message):
    with pytest.raises(PrtkInputError, match=message):
        PrunedVisionTower(tiny.visual, 0.5, 2, later_stages=stages)
