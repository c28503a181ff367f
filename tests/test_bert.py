"""The BERT text tower and its imports: transformers' BertModel (randomised LayerNorms and
biases) imported with `--from hf` matches it at 1e-4 (pooler and [CLS], hidden states at the
real positions, padding masked); BERT-base has transformers' parameter count; the WordPiece
tokenizer gives transformers' ids; bad checkpoints and vocabularies are refused in one line
before anything is written.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from vlmjax.errors import CheckpointError, ConfigError
from vlmjax.tokenizers import TokenizerError

TEXTS = ["a photo of a cat", "two dogs, on the GRASS!", "a small red car near a tree",
         "Café au lait", "", "the the the the the the the the the the the the the the the the"]
WORDS = ["a", "photo", "of", "the", "cat", "dog", "##s", "two", "on", "grass", "small", "red",
         "car", "near", "tree", "cafe", "café", "au", "lait", "##e", "c", "##a", "##f"]
TINY = os.path.join(REPO, "configs", "test", "tiny_clip.py")


def write_vocab(directory: str) -> str:
    """A WordPiece vocabulary: BERT's special tokens, characters, the test words."""
    os.makedirs(directory, exist_ok=True)
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz,.!'-"]
    tokens += [w for w in WORDS if w not in tokens]
    path = os.path.join(directory, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return path


def randomised_bert(directory: str, width: int = 32, layers: int = 2, pooler: bool = True,
                    seed: int = 0) -> tuple[str, object]:
    """A BertModel directory (save_pretrained: config.json, model.safetensors, the tokenizer)
    with random weights and non-trivial LayerNorm weights and biases; (directory, model)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    tokenizer = BertTokenizer(write_vocab(directory + "_vocab"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width,
                        num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * width, max_position_embeddings=80)
    model = BertModel(config, add_pooling_layer=pooler).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> tuple[str, object]:
    return randomised_bert(str(tmp_path_factory.mktemp("bert") / "model"))


@pytest.fixture(scope="module")
def imported(bert, tmp_path_factory) -> str:
    from vlmjax.interop.hf_import import import_hf
    workdir = str(tmp_path_factory.mktemp("bert_run") / "run")
    import_hf(bert[0], workdir, config=TINY)
    return workdir


def _hf(model, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.last_hidden_state.numpy(), (None if out.pooler_output is None
                                            else out.pooler_output.numpy())


def test_import_matches_transformers_bert(bert, imported):
    from vlmjax.train.run import load_run
    run = load_run(imported, devices=jax.devices()[:1])
    text = run.config["model"]["text"]
    assert (text["kind"], text["width"], text["depth"], text["pooler"]) == ("bert", 32, 2, True)
    ids, mask = run.tokenizer.encode(TEXTS, run.config["tokenizer"]["context_length"])
    hidden, pooled = _hf(bert[1], ids, mask)
    out = run.model().text(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out["pooled"]), pooled, atol=1e-4, rtol=0)
    got = np.asarray(out["tokens"])
    np.testing.assert_allclose(got[mask], hidden[mask], atol=1e-4, rtol=0)  # real positions
    # The embeddings (after the fresh text projection) and logits against the same formula
    # applied to transformers' pooled output.
    from tests.interop_runs import forward, restore_run
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    ours = forward(restore_run(imported, jax.devices()[:1]), images, TEXTS)
    kernel = np.asarray(run.params["text_proj"]["kernel"], np.float64)
    want = pooled @ kernel
    want /= np.linalg.norm(want, axis=-1, keepdims=True)
    np.testing.assert_allclose(ours["text"], want, atol=1e-4, rtol=0)
    scale = float(np.exp(run.params["logit_scale"]))
    np.testing.assert_allclose(ours["logits"], scale * ours["image"] @ want.T, atol=1e-4 * scale)


def test_cls_without_pooler_and_padding_is_masked(tmp_path):
    """A BertModel without pooler pools the [CLS] hidden state; changing what the padding
    positions hold changes nothing at the real positions."""
    from vlmjax.interop.hf_import import import_hf
    from vlmjax.train.run import load_run
    directory, model = randomised_bert(str(tmp_path / "bert"), pooler=False, seed=3)
    import_hf(directory, str(tmp_path / "run"), config=TINY)
    run = load_run(str(tmp_path / "run"), devices=jax.devices()[:1])
    assert run.config["model"]["text"]["pooler"] is False
    ids, mask = run.tokenizer.encode(TEXTS, 12)
    hidden, _ = _hf(model, ids, mask)
    tower = run.model().text
    out = tower(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out["pooled"]), hidden[:, 0], atol=1e-4, rtol=0)
    other = np.where(mask, ids, 7)  # another token in every padding position
    again = tower(jnp.asarray(other), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(again["tokens"])[mask], np.asarray(out["tokens"])[mask],
                               atol=1e-6, rtol=0)


def test_prompt_learning_feeds_word_embeddings(imported):
    """CoOp's path: the word embeddings given as token_embeds give the tower's own output."""
    from vlmjax.train.run import load_run
    run = load_run(imported, devices=jax.devices()[:1])
    tower = run.model().text
    ids, mask = run.tokenizer.encode(TEXTS[:3], 12)
    direct = tower(jnp.asarray(ids), jnp.asarray(mask))["pooled"]
    via = tower(jnp.asarray(ids), jnp.asarray(mask),
                token_embeds=tower.embed_tokens(jnp.asarray(ids)))["pooled"]
    np.testing.assert_array_equal(np.asarray(via), np.asarray(direct))


def test_bert_base_has_transformers_parameter_count():
    """jax.eval_shape of the tower (no memory) against transformers' BertModel(BertConfig())."""
    from flax import nnx
    from transformers import BertConfig, BertModel

    from vlmjax.config import base_config, select
    from vlmjax.models.tower import TowerSettings
    from vlmjax.models.towers import build_tower
    config = base_config()
    select(config, "model.text.kind", "bert")
    config.model.text.update(width=768, depth=12, heads=12, mlp_dim=3072, pooler=True)
    hf = BertConfig()
    settings = TowerSettings.from_model(config.model.to_dict(), hf.vocab_size, 512)
    tower = nnx.eval_shape(lambda: build_tower(config.model.to_dict(), "text", settings,
                                               nnx.Rngs(0)))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(tower, nnx.Param)))
    assert ours == sum(p.numel() for p in BertModel(hf).parameters())


# ------------------------------------------------------------------ WordPiece tokenizer

@pytest.mark.parametrize("lower", [True, False])
def test_wordpiece_gives_transformers_ids(tmp_path, lower):
    """From vocab.txt (+ tokenizer_config.json's casing) and from a fast tokenizer's
    tokenizer.json: [CLS] ... [SEP], truncation keeping [SEP] last, padding masked; the saved
    run tokenizer reloads to the same ids."""
    from transformers import BertTokenizer, BertTokenizerFast

    from vlmjax.tokenizers import build_tokenizer, load_tokenizer
    vocab = write_vocab(str(tmp_path / "vocab"))
    slow_dir, fast_dir = str(tmp_path / "slow"), str(tmp_path / "fast")
    os.makedirs(slow_dir)  # the files of a BertTokenizer saved by transformers 4 (no .json)
    shutil.copy(vocab, slow_dir)
    with open(os.path.join(slow_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"do_lower_case": lower}, f)
    BertTokenizerFast(vocab, do_lower_case=lower).save_pretrained(fast_dir)
    reference = BertTokenizer(vocab, do_lower_case=lower)
    want = reference(TEXTS, max_length=10, truncation=True, padding="max_length")
    for path in (slow_dir, fast_dir, os.path.join(slow_dir, "vocab.txt")):
        tok = build_tokenizer("wordpiece", path)
        ids, mask = tok.encode(TEXTS, 10)
        np.testing.assert_array_equal(ids, want["input_ids"], err_msg=path)
        np.testing.assert_array_equal(mask, np.asarray(want["attention_mask"], bool))
        assert ids[-1, -1] == reference.sep_token_id and ids[0, 0] == reference.cls_token_id
        tok.save(str(tmp_path / "saved"))
        np.testing.assert_array_equal(load_tokenizer(str(tmp_path / "saved")).encode(TEXTS, 10)[0],
                                      ids)
        shutil.rmtree(tmp_path / "saved")


def test_wordpiece_refuses_what_is_not_bert(tmp_path):
    from vlmjax.tokenizers import build_tokenizer
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\na\n")
    with pytest.raises(TokenizerError, match=r"has no \[CLS\] token"):
        build_tokenizer("wordpiece", str(bad))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json or vocab.txt in"):
        build_tokenizer("wordpiece", str(empty))
    from vlmjax.tokenizers.trained_bpe import train_bpe
    train_bpe(["a photo of a cat"] * 4, 600).save(str(tmp_path / "bpe"))
    with pytest.raises(TokenizerError, match=r"holds a BPE tokenizer, not WordPiece"):
        build_tokenizer("wordpiece", str(tmp_path / "bpe" / "tokenizer.json"))


# ------------------------------------------------------------------ bad input

def _copy(bert, tmp_path) -> str:
    source = str(tmp_path / "src")
    shutil.copytree(bert[0], source)
    return source


def _tensors(source: str) -> dict:
    from vlmjax.interop.hf_files import load_safetensors
    return load_safetensors(os.path.join(source, "model.safetensors"))


def _save(source: str, tensors: dict) -> None:
    from vlmjax.interop.hf_files import write_tensors
    write_tensors(tensors, os.path.join(source, "model.safetensors"))


@pytest.mark.parametrize("change,message", [
    (lambda t: t.pop("encoder.layer.1.output.LayerNorm.bias"),
     r"has no tensor encoder\.layer\.1\.output\.LayerNorm\.bias \(for text/layers/1/ln_mlp/bias\)"),
    (lambda t: t.__setitem__("encoder.layer.2.output.dense.weight", np.zeros((32, 64), np.float32)),
     r"tensor encoder\.layer\.2\.output\.dense\.weight \(shape \(32, 64\)\) maps to no vlmjax"),
    (lambda t: t.__setitem__("embeddings.token_type_embeddings.weight",
                             np.zeros((3, 32), np.float32)),
     r"tensor embeddings\.token_type_embeddings\.weight has shape \(3, 32\) but"),
])
def test_checkpoints_that_do_not_fit_are_refused_before_writing(bert, tmp_path, change, message):
    from vlmjax.interop.hf_import import import_hf
    source = _copy(bert, tmp_path)
    tensors = _tensors(source)
    change(tensors)
    _save(source, tensors)
    workdir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=message) as error:
        import_hf(source, str(workdir), config=TINY)
    assert "\n" not in str(error.value)
    assert not workdir.exists()


def test_pretraining_checkpoint_layout_imports_its_encoder(bert, tmp_path):
    """BertForPreTraining-style names ("bert." + "cls." heads, as the hub's bert-base-uncased):
    the encoder imports to the same parameters, the heads are left out."""
    from vlmjax.interop.hf_import import import_hf
    from vlmjax.train.run import flat_params, load_run
    source = _copy(bert, tmp_path)
    tensors = {f"bert.{k}": v for k, v in _tensors(source).items()}
    tensors["cls.predictions.bias"] = np.zeros((len(WORDS),), np.float32)
    _save(source, tensors)
    import_hf(source, str(tmp_path / "run"), config=TINY)
    got = flat_params(load_run(str(tmp_path / "run"), devices=jax.devices()[:1]).params)
    for key, value in _tensors(bert[0]).items():
        if key == "embeddings.word_embeddings.weight":
            np.testing.assert_array_equal(got["text/token_embed"], value)


def test_vocabulary_and_context_mismatches_fail_in_one_line(bert, tmp_path):
    from vlmjax.interop.hf_import import import_hf
    source = _copy(bert, tmp_path)
    os.remove(os.path.join(source, "tokenizer.json"))  # read vocab.txt: one token more
    shutil.copy(write_vocab(str(tmp_path / "vocab")), source)
    with open(os.path.join(source, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(CheckpointError, match=r"has \d+ tokens but config\.json has vocab_size="):
        import_hf(source, str(tmp_path / "run"), config=TINY)
    with pytest.raises(CheckpointError, match=r"a BERT checkpoint is a text tower only"):
        import_hf(bert[0], str(tmp_path / "run2"))
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_bert_config_checks(tiny_config):
    """Validation: a context longer than BERT's position table; at build time, a declared
    vocabulary that is not the tokenizer's."""
    from vlmjax.config import select, validate
    from vlmjax.models.bert import BertConfig
    select(tiny_config, "model.text.kind", "bert")
    tiny_config.model.text.update(width=16, depth=1, heads=2, mlp_dim=32, max_positions=8)
    with pytest.raises(ConfigError, match=r"config\.tokenizer\.context_length \(12\) exceeds "
                                          r"model\.text\.max_positions \(8\)"):
        validate(tiny_config, 8)
    text = {**tiny_config.model.text.to_dict(), "vocab_size": 30522}
    with pytest.raises(ConfigError, match=r"config\.model\.text\.vocab_size=30522 \(BERT's word "
                                          r"embedding rows\) does not match the tokenizer's 600"):
        BertConfig.from_config(text, 600, 12)
