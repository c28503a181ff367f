"""CoCa's KV-cached step against full recomputation with `decode`, beam search through it, the CLI."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from tests.conftest import REPO
from tests.tolerances import ambiguous_rows
from vlmjax.config import load_config_file
from vlmjax.generation.coca_cache import coca_step, generate_captions, text_special_ids
from vlmjax.generation.decoding import beam_search, greedy
from vlmjax.models import stacked
from vlmjax.models.coca import CoCa
from vlmjax.tokenizers.clip_bpe import EOT as EOT_TOKEN
from vlmjax.tokenizers.clip_bpe import SOT as SOT_TOKEN

TINY_COCA = os.path.join(REPO, "configs", "test", "tiny_coca.py")
VOCAB, CONTEXT, SOT, EOS = 50, 12, 48, 49
MAX_LEN = CONTEXT - 1


def _build(scan: bool = False, decoder_block: str = "paper") -> tuple[nnx.GraphDef, dict]:
    """The tiny CoCa's graph and random params (biases and norms too, so logits are peaked)."""
    cfg = load_config_file(TINY_COCA).model.to_dict()
    cfg["scan_layers"] = scan
    cfg["coca"]["decoder_block"] = decoder_block
    graphdef, state = nnx.split(nnx.eval_shape(lambda: CoCa(cfg, VOCAB, CONTEXT, rngs=nnx.Rngs(0))))
    flat, tree = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))
    rng = np.random.default_rng(0)
    return graphdef, jax.tree.unflatten(tree, [  # LayerNorm scales around 1, the rest around 0
        jnp.asarray(float(path[-1].key == "scale") + rng.normal(size=x.shape) * 0.3, jnp.float32)
        for path, x in flat])


@pytest.fixture(scope="module")
def coca() -> tuple[nnx.GraphDef, dict, jax.Array]:
    graphdef, params = _build()
    images = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
    caption = jax.jit(lambda p, x: nnx.merge(graphdef, p).image_features(x)[1])(params, images)
    return graphdef, params, caption


@functools.partial(jax.jit, static_argnums=0)
def _full_logits(graphdef, params, caption, ids):
    """`decode` over whole [n, CONTEXT] sequences: logits[:, i] sees ids[:, :i + 1] only."""
    return nnx.merge(graphdef, params).decode(caption, ids, jnp.ones(ids.shape, bool))


@functools.partial(jax.jit, static_argnums=0)
def _cached_logits(graphdef, params, caption, ids):
    """The cached step fed ids[:, i] at every position i < MAX_LEN: logits [n, MAX_LEN, V]."""
    step, cache = coca_step(nnx.merge(graphdef, params), caption)
    out = []
    for i in range(MAX_LEN):
        logits, cache = step(ids[:, i], cache, jnp.int32(i))
        out.append(logits)
    return jnp.stack(out, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _search(graphdef, params, caption, use_cache, num_beams):
    """Greedy (num_beams = 0) or beam search, through the cached step or a recomputing one."""
    model = nnx.merge(graphdef, params)
    if use_cache:
        step, cache = coca_step(model, caption)
    else:
        def step(tokens, cache, position):  # the cache is the sequence itself, plus the image
            ids = jax.lax.dynamic_update_slice_in_dim(cache["ids"], tokens[:, None], position, 1)
            logits = model.decode(cache["caption"], ids, jnp.ones(ids.shape, bool))
            return jax.lax.dynamic_index_in_dim(logits, position, 1, keepdims=False), {
                "ids": ids, "caption": cache["caption"]}
        cache = {"ids": jnp.zeros((caption.shape[0], CONTEXT), jnp.int32), "caption": caption}
    first = jnp.full((caption.shape[0],), SOT, jnp.int32)
    if num_beams == 0:
        return greedy(step, cache, first, max_len=MAX_LEN, eos_id=EOS)
    return beam_search(step, cache, first, num_beams=num_beams, max_len=MAX_LEN, eos_id=EOS)


def _slow_greedy(graphdef, params, caption) -> np.ndarray:
    """Greedy decoding re-running `decode` on the whole prefix at every step: ids [n, CONTEXT]."""
    ids = np.zeros((caption.shape[0], CONTEXT), np.int32)
    ids[:, 0] = SOT
    finished = np.zeros(caption.shape[0], bool)
    for i in range(MAX_LEN):
        token = np.argmax(np.asarray(_full_logits(graphdef, params, caption, jnp.asarray(ids)))[:, i], -1)
        ids[:, i + 1] = np.where(finished, EOS, token)
        finished |= ids[:, i + 1] == EOS
    return ids


def _logprob(graphdef, params, caption, tokens, lengths) -> np.ndarray:
    """Summed log-probability of each generated row (up to its length) under `decode`."""
    ids = np.concatenate([np.full((len(tokens), 1), SOT), tokens], axis=1).astype(np.int32)
    lp = jax.nn.log_softmax(_full_logits(graphdef, params, caption, jnp.asarray(ids)), -1)
    picked = np.take_along_axis(np.asarray(lp)[:, :MAX_LEN], tokens[..., None], -1)[..., 0]
    return (picked * (np.arange(MAX_LEN) < lengths[:, None])).sum(1)


def _assert_decided(logits: np.ndarray, tokens: np.ndarray, atol: float) -> None:
    """Every greedy choice of `tokens` [n, MAX_LEN] (up to its EOS) is decided at `atol`: the
    best two logits there are further apart than two computations within `atol` of each other
    can reorder. So both pick the same token: comparing tokens exactly is sound on any host."""
    chosen = (np.cumsum(tokens == EOS, axis=1) - (tokens == EOS)) == 0  # up to the first EOS
    assert not ambiguous_rows(logits[:, :MAX_LEN][chosen], atol).any(), "near-tie in the test model"


def test_cached_step_matches_full_recomputation(coca):
    graphdef, params, caption = coca
    ids = _slow_greedy(graphdef, params, caption)
    full = np.asarray(_full_logits(graphdef, params, caption, jnp.asarray(ids))[:, :MAX_LEN])
    np.testing.assert_allclose(_cached_logits(graphdef, params, caption, jnp.asarray(ids)), full,
                               atol=1e-5, rtol=1e-5)
    _assert_decided(full, ids[:, 1:], 1e-5 + 1e-5 * np.abs(full).max())
    tokens, lengths = _search(graphdef, params, caption, True, 0)
    np.testing.assert_array_equal(tokens, ids[:, 1:])
    assert len(set(ids[:, 1:].ravel().tolist())) > 3 and (ids[0] != ids[1]).any()  # non-trivial


def test_cached_step_with_scanned_layers():
    graphdef, params = _build()
    scan_graphdef, _ = _build(scan=True)
    scan_params = stacked.stack_layer_params(params)
    caption = jax.random.normal(jax.random.key(2), (2, 4, 16))
    ids = jax.random.randint(jax.random.key(3), (2, CONTEXT), 0, VOCAB)
    np.testing.assert_allclose(_cached_logits(scan_graphdef, scan_params, caption, ids),
                               _full_logits(graphdef, params, caption, ids)[:, :MAX_LEN],
                               atol=1e-5, rtol=1e-5)


def test_cached_step_with_open_clip_decoder_blocks():
    """open_clip's decoder layout (an MLP between self- and cross-attention) in the cache too."""
    graphdef, params = _build(decoder_block="open_clip")
    assert "self_mlp" in params["decoder"]["layers"][0]
    caption = jax.random.normal(jax.random.key(4), (2, 4, 16))
    ids = jax.random.randint(jax.random.key(5), (2, CONTEXT), 0, VOCAB)
    np.testing.assert_allclose(_cached_logits(graphdef, params, caption, ids),
                               _full_logits(graphdef, params, caption, ids)[:, :MAX_LEN],
                               atol=1e-5, rtol=1e-5)


def test_beam_search_through_the_cache(coca):
    graphdef, params, caption = coca
    greedy_tokens, greedy_lengths = jax.device_get(_search(graphdef, params, caption, True, 0))
    # One beam ranks log_softmax(logits) + a per-row constant: greedy's argmax unless a near-tie.
    ids = np.concatenate([np.full((len(greedy_tokens), 1), SOT), greedy_tokens], 1)
    full = np.asarray(_full_logits(graphdef, params, caption, jnp.asarray(ids, jnp.int32)))
    _assert_decided(full, greedy_tokens, 1e-5 + 1e-5 * np.abs(full).max())
    one_tokens, one_lengths = _search(graphdef, params, caption, True, 1)
    np.testing.assert_array_equal(one_tokens, greedy_tokens)
    np.testing.assert_array_equal(one_lengths, greedy_lengths)
    tokens, lengths = jax.device_get(_search(graphdef, params, caption, True, 3))
    # The KV cache is reordered with the beams: the result of recomputing from the sequences.
    # Beam ranks compare summed log-probabilities of different sequences, which two programs
    # may order differently within rounding: a row may differ only by a tie in that score
    # (log-probabilities within the logits' 1e-5 + 1e-5 * |logit| per token, twice).
    ref_tokens, ref_lengths = jax.device_get(_search(graphdef, params, caption, False, 3))
    best = _logprob(graphdef, params, caption, tokens, lengths)
    ref_best = _logprob(graphdef, params, caption, ref_tokens, ref_lengths)
    same = (tokens == ref_tokens).all(1) & (lengths == ref_lengths)
    tie = np.abs(best - ref_best) <= MAX_LEN * 2 * (1e-5 + 1e-5 * np.abs(full).max())
    assert np.all(same | tie), (tokens, ref_tokens, best, ref_best)
    assert (tokens != greedy_tokens).any()  # the beams found something else
    baseline = _logprob(graphdef, params, caption, greedy_tokens, greedy_lengths)
    assert np.all(best >= baseline - 1e-5), (best, baseline)


def _random_run(workdir: str) -> None:
    """A workdir as vlmjax.train leaves it (config.json, tokenizer, a checkpoint), untrained."""
    from vlmjax.parallel.mesh import make_mesh
    from vlmjax.train.checkpoint import Checkpointer
    from vlmjax.train.state import model_builder, state_layout
    from vlmjax.train.workdir import save_config, tokenizer_for_run

    config = load_config_file(TINY_COCA)
    cfg = config.to_dict()
    tokenizer = tokenizer_for_run(cfg, workdir)
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    context = cfg["tokenizer"]["context_length"]
    layout = state_layout(cfg, tokenizer.vocab_size, context, mesh)
    state = layout.init(0, model_builder(cfg, tokenizer.vocab_size, context))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        ckpt.save(3, state, {})
    save_config(config, workdir)


def test_caption_cli(tmp_path, capsys):
    from vlmjax.caption import main
    from vlmjax.errors import ConfigError
    from vlmjax.tokenizers import load_tokenizer

    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    _random_run(workdir)
    paths = []
    for i, mode in enumerate(("L", "RGB")):  # any mode and size: converted to the model's input
        paths.append(str(tmp_path / f"image{i}.png"))
        Image.fromarray(np.full((40, 30, 3), 60 * i + 20, np.uint8)).convert(mode).save(paths[-1])
    argv = ["--workdir", workdir, "--method", "beam", "--num_beams", "2", "--max_len", "5"]
    assert main([*argv, *paths]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert [line.split("\t")[0] for line in lines] == paths
    tokenizer = load_tokenizer(os.path.join(workdir, "tokenizer"))
    assert text_special_ids(tokenizer) == (tokenizer.token_to_id(SOT_TOKEN), tokenizer.token_to_id(EOT_TOKEN))
    with pytest.raises(ConfigError, match="max_len"):
        generate_captions(*_build(), jnp.zeros((1, 28, 28, 1)), tokenizer, max_len=CONTEXT)
    clip_dir = tmp_path / "clip"
    os.makedirs(clip_dir)
    with open(clip_dir / "config.json", "w") as f:
        json.dump({"model": {"name": "two_tower"}}, f)
    with pytest.raises(ConfigError, match="'two_tower' model, which does not caption"):
        main(["--workdir", str(clip_dir), paths[0]])
