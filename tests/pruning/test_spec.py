"""``TowerSpec`` + ``build_tower``: one factory for every command, one rule for a pack's layer, and a one-line
refusal of towers whose blocks are not the kind prtk wraps."""

import copy

import pytest
import torch
import torch.nn as nn

from prtk.core.errors import PrtkInputError
from prtk.models import load_clip
from prtk.pruning import TowerSpec, build_tower
from prtk.pruning.scorers import ClsAttentionScorer, FixedRandomScorer, IndexScorer, RandomScorer


@pytest.fixture(scope="module")
def tiny():
    return load_clip("prtk-tiny", random_weights=True, seed=3)


@pytest.mark.parametrize("scorer, kind", [("cls-attention", ClsAttentionScorer), ("random", RandomScorer),
                                          ("fixed-random", FixedRandomScorer), ("golden", IndexScorer)])
def test_every_baseline_scorer_is_built_by_name(tiny, scorer, kind):
    tower = build_tower(tiny, TowerSpec(keep=0.5, scorer=scorer, layer=2))
    assert isinstance(tower.scorer, kind) and tower.layer == 2 and tower.keep_count == 32


def test_fixed_random_is_one_seeded_subset_for_every_image(tiny):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        _, kept = build_tower(tiny, TowerSpec(keep=0.5, scorer="fixed-random", seed=4))(images, return_indices=True)
        _, again = build_tower(tiny, TowerSpec(keep=0.5, scorer="fixed-random", seed=4))(images, return_indices=True)
    assert (kept == kept[:1]).all() and torch.equal(kept, again)


def test_the_tower_shares_the_models_image_tower_and_leaves_it_trainable(tiny):
    tower = build_tower(tiny, TowerSpec(keep=0.5))
    assert tower.visual is tiny.visual and all(p.requires_grad for p in tiny.visual.parameters())


@pytest.mark.parametrize("spec, message", [
    (TowerSpec(keep=0.0), "keep ratio must be in (0, 1], got 0.0"),
    (TowerSpec(keep=0.5, scorer="tome"), "unknown scorer 'tome'"),
    (TowerSpec(keep=0.5, scorer="predictor"), "the predictor scorer needs --pack FILE"),
    (TowerSpec(keep=0.5, scorer="predictor", fuse_dropped=True), "--fuse-dropped does not go with --scorer predictor"),
])
def test_impossible_specs_are_refused_in_one_line(tiny, spec, message):
    with pytest.raises(PrtkInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_tower(tiny, spec)


def test_a_layer_given_with_a_pack_or_ranking_must_be_its_own():
    assert TowerSpec(keep=0.5).at_layer_of(3, "pack").layer == 3
    assert TowerSpec(keep=0.5, layer=3).at_layer_of(3, "pack").layer == 3
    with pytest.raises(PrtkInputError, match="--layer 2 differs from the ranking's layer 3"):
        TowerSpec(keep=0.5, layer=2).at_layer_of(3, "ranking")


class PlainAttention(nn.Module):
    """An attention module that is not nn.MultiheadAttention (as open_clip's development branch moves to)."""

    def forward(self, x, *args, **kwargs):
        return x


def test_blocks_prtk_cannot_wrap_are_refused_in_one_line(tiny):
    clip = copy.copy(tiny)
    clip.model = copy.deepcopy(tiny.model)
    clip.model.visual.transformer.resblocks[4].attn = PlainAttention()
    with pytest.raises(PrtkInputError, match=r"unsupported transformer block 4 \(ResidualAttentionBlock, attends "
                                             r"with PlainAttention\): prtk wraps open_clip's ResidualAttentionBlock"):
        build_tower(clip, TowerSpec(keep=0.5))
    del clip.model.visual.transformer.resblocks[2].ls_1
    with pytest.raises(PrtkInputError, match=r"unsupported transformer block 2 \(ResidualAttentionBlock, lacks ls_1\)"):
        build_tower(clip, TowerSpec(keep=0.5))


def test_stage_schedules_parse_and_bad_ones_are_refused():
    from prtk.core.errors import PrtkInputError
    from prtk.pruning.spec import parse_stages

    assert parse_stages("3:0.7,6:0.7,9:0.7") == (3, 0.7, ((6, 0.7), (9, 0.7)))
    assert parse_stages("2:0.5") == (2, 0.5, ())
    for text, message in (("3:0.7,3:0.5", "stage block 3 appears twice"),
                          ("6:0.7,3:0.7", "stage blocks must ascend: block 3 comes after block 6"),
                          ("3:0.7,6:0", "keep ratio must be in (0, 1], got 0.0"),
                          ("3:1.2", "keep ratio must be in (0, 1], got 1.2"),
                          ("3-0.7", "--stages must be BLOCK:KEEP"), ("3:0.7,", "--stages must be BLOCK:KEEP")):
        with pytest.raises(PrtkInputError) as error:
            parse_stages(text)
        assert message in str(error.value)


def test_elip_ranks_by_the_cls_mixed_with_the_predicted_class_text():
    from prtk.core.errors import PrtkInputError
    from prtk.models.zeroshot import class_embeddings
    from prtk.pruning.scorers import LanguageGuidedScorer, cls_attention

    clip = load_clip("prtk-testbed-shapes")
    classifier = class_embeddings(clip.model, clip.tokenizer, ["red circle", "blue square", "green triangle"])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    staged = TowerSpec(0.6, "elip", 2, later_stages=((4, 0.5),), stage_scorer="elip", fuse_dropped=True)
    tower = build_tower(clip, staged, None, classifier)
    assert isinstance(tower.scorer, LanguageGuidedScorer) and tower.stage_scorer is tower.scorer
    with torch.inference_mode():
        inputs = tower.prefix(images)
        scores = tower.scorer(inputs)
        visual = clip.visual
        estimate = torch.nn.functional.normalize(visual._pool(inputs.tokens)[0] @ visual.proj, dim=-1)
        text = ((clip.model.logit_scale.exp() * estimate @ classifier.T).softmax(-1) @ classifier) @ visual.proj.T
        cls = inputs.previous_tokens[:, 0]
        query = 0.8 * cls + 0.2 * text * cls.norm(dim=-1, keepdim=True) / text.norm(dim=-1, keepdim=True)
        expected = cls_attention(inputs.previous_block, torch.cat([query[:, None], inputs.previous_tokens[:, 1:]], 1))
        plain = cls_attention(inputs.previous_block, inputs.previous_tokens)
        embedding, kept = tower(images, return_indices=True)
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, plain) and kept.shape == (2, 19) and embedding.shape == (2, 128)
    assert tower.scorer.name == "elip"
    for spec in (TowerSpec(0.6, "elip"), TowerSpec(0.6, later_stages=((4, 0.5),), stage_scorer="elip")):
        with pytest.raises(PrtkInputError, match="the elip scorer needs a language side"):
            build_tower(clip, spec)
    assert build_tower(clip, TowerSpec(0.6, stage_scorer="elip")).stage_scorer.name == "cls-attention"
