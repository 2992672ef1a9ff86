"""The one layer-selection grammar: exact, dot-boundary prefix, glob, regex, errors, specificity."""
import pytest

from omni_npu_quant.integrations.selection import (SelectionError, compile_pattern, leading_blocks, match_patterns,
                                                   resolve_layer_choice)

NAMES = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
         "model.layers.01.mlp.up_proj", "model.layers.1.mlp.down_proj", "model.layers.10.mlp.down_proj", "lm_head"]


def test_exact_and_dot_boundary_prefix():
    p = compile_pattern("model.layers.0")
    assert [n for n in NAMES if p.matches(n)] == NAMES[:3]  # not model.layers.01 / .10
    assert compile_pattern("lm_head").matches("lm_head")
    assert not compile_pattern("lm_hea").matches("lm_head")
    assert not compile_pattern("model.layers.1").matches("model.layers.10.mlp.down_proj")


def test_glob_and_regex():
    assert [n for n in NAMES if compile_pattern("*.down_proj").matches(n)] == [NAMES[2], NAMES[4], NAMES[5]]
    rx = compile_pattern(r"re:model\.layers\.1\d*\.mlp\..*")
    assert [n for n in NAMES if rx.matches(n)] == [NAMES[4], NAMES[5]]
    assert not compile_pattern("re:layers").matches("model.layers.0.mlp.up_proj")  # fullmatch, not search


def test_unmatched_and_malformed_entries_raise():
    with pytest.raises(SelectionError, match="'model.layers.2' matches no layer"):
        match_patterns(["lm_head", "model.layers.2"], NAMES)
    with pytest.raises(SelectionError, match="invalid regular expression"):
        compile_pattern("re:(")
    with pytest.raises(SelectionError, match="ends with"):
        compile_pattern("model.layers.")
    assert match_patterns(["nothing"], NAMES, allow_unmatched=True) == {"nothing": []}


def test_most_specific_entry_wins():
    compiled = [(compile_pattern(p), v) for p, v in
                [("*.down_proj", "g"), ("model.layers", "short"), ("model.layers.0", "long"),
                 ("model.layers.0.mlp.down_proj", "exact")]]
    pick = lambda n: resolve_layer_choice(n, compiled)[1]
    assert pick("model.layers.0.mlp.down_proj") == "exact"
    assert pick("model.layers.0.mlp.up_proj") == "long"
    assert pick("model.layers.1.mlp.down_proj") == "short"
    assert resolve_layer_choice("lm_head", compiled) is None
    globs = [(compile_pattern("*.mlp.*"), "first"), (compile_pattern("*.down_proj"), "second")]
    assert resolve_layer_choice("model.layers.1.mlp.down_proj", globs)[1] == "first"


def test_leading_blocks():
    assert leading_blocks(NAMES, 1) == set(NAMES[:3])
    assert leading_blocks(NAMES, 2) == set(NAMES[:3]) | {"model.layers.01.mlp.up_proj", NAMES[4]}
    assert leading_blocks(NAMES, 0) == set()
    with pytest.raises(SelectionError, match="numbered block"):
        leading_blocks(["lm_head", "proj_in"], 1)
