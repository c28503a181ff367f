"""big_vision SigLIP interop: a tiny random SigLIP written in big_vision's .npz layout converts
to a run whose forward matches an independent NumPy big_vision forward (fp32, 1e-4); the run's
tokenizer gives big_vision's `tokenize(eos="sticky", pad_value=1)` ids; errors name the tensor or
file; zero-shot evaluation runs on the converted run.
"""

import os
import shutil

import numpy as np
import pytest

from tests.interop_runs import run_forward
from vlmjax.errors import CheckpointError

spm = pytest.importorskip("sentencepiece")

# As the released SigLIP checkpoints: no img/head, a txt/head (with bias) to the image width,
# names under "params/"; the image encoder unscanned (encoderblock_<i>), the text encoder
# scanned (one stacked encoderblock; big_vision sets scan per tower). 28 px grey images: the
# shape of the zero-shot test dataset. (image/text: width, depth, heads, mlp_dim)
SPEC = dict(image=28, channels=1, patch=14, v=(24, 2, 3, 40), t=(16, 2, 2, 24), img_head=None,
            txt_head=24, length=10, scan=("txt/Encoder_0",), prefix="params/")
CORPUS = ["a photo of a cat", "a photo of a dog", "two dogs on the grass", "a red car",
          "zürich in winter", "the quick brown fox jumps over the lazy dog", "t-shirt", "trouser",
          "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
          "a blurry photo of a shoe", "hello world, again!", "café crème brûlée"]
TRICKY = ["", "A Photo of a CAT", "Zürich ÄÖÜ Straße İstanbul", "Hello, World!!! (test) — «q»",
          "ＦＵＬＬ width", "emoji 🐱🐶 ok", "  many   spaces  ", "x" * 300,
          " ".join(CORPUS)]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> str:
    """A tiny SentencePiece model with T5's special ids (pad 0, eos 1, unk 2), trained offline."""
    import io
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3), model_writer=writer, vocab_size=90,
        hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        num_threads=1, minloglevel=2)
    path = tmp_path_factory.mktemp("sp") / "c4_tiny.model"
    path.write_bytes(writer.getvalue())
    return str(path)


def big_vision_params(spec: dict, vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Random parameters named as big_vision's two_towers/vit/text_transformer name them."""
    rng = np.random.default_rng(seed)

    def w(*shape, scale=None):
        return (rng.normal(size=shape) * (scale or shape[0] ** -0.5)).astype(np.float32)

    def b(*shape):
        return (0.1 * rng.normal(size=shape)).astype(np.float32)

    def norm(prefix, width):
        return {f"{prefix}/scale": 1 + b(width), f"{prefix}/bias": b(width)}

    def attention(prefix, width, heads):
        hd = width // heads
        out = {f"{prefix}/out/kernel": w(heads, hd, width, scale=width ** -0.5),
               f"{prefix}/out/bias": b(width)}
        for name in ("query", "key", "value"):
            out[f"{prefix}/{name}/kernel"] = w(width, heads, hd)
            out[f"{prefix}/{name}/bias"] = b(heads, hd)
        return out

    def mlp(prefix, width, hidden):
        return {f"{prefix}/Dense_0/kernel": w(width, hidden), f"{prefix}/Dense_0/bias": b(hidden),
                f"{prefix}/Dense_1/kernel": w(hidden, width), f"{prefix}/Dense_1/bias": b(width)}

    def encoder(prefix, width, depth, heads, hidden):
        out = norm(f"{prefix}/encoder_norm", width)
        for i in range(depth):
            blk = f"{prefix}/encoderblock_{i}"
            out |= (norm(f"{blk}/LayerNorm_0", width) | norm(f"{blk}/LayerNorm_1", width)
                    | attention(f"{blk}/MultiHeadDotProductAttention_0", width, heads)
                    | mlp(f"{blk}/MlpBlock_0", width, hidden))
        return out

    (vw, vd, vh, vm), (tw, td, th, tm) = spec["v"], spec["t"]
    p, grid = spec["patch"], spec["image"] // spec["patch"]
    params = {"t": np.array([np.log(10.0) + 0.3], np.float32), "b": np.array([-3.0], np.float32),
              "img/embedding/kernel": w(p, p, spec["channels"], vw, scale=(p * p) ** -0.5),
              "img/embedding/bias": b(vw), "img/pos_embedding": w(1, grid * grid, vw, scale=0.3),
              "img/MAPHead_0/probe": w(1, 1, vw, scale=1.0),
              "txt/Embed_0/embedding": w(vocab, tw, scale=1.0),
              "txt/pos_embedding": w(1, spec["length"], tw, scale=0.3)}
    params |= encoder("img/Transformer", vw, vd, vh, vm) | encoder("txt/Encoder_0", tw, td, th, tm)
    params |= (attention("img/MAPHead_0/MultiHeadDotProductAttention_0", vw, vh)
               | norm("img/MAPHead_0/LayerNorm_0", vw) | mlp("img/MAPHead_0/MlpBlock_0", vw, vm))
    for tower, width, out in (("img", vw, spec["img_head"]), ("txt", tw, spec["txt_head"])):
        if out:
            params |= {f"{tower}/head/kernel": w(width, out), f"{tower}/head/bias": b(out)}
    return params


def scanned(params: dict[str, np.ndarray], encoders: tuple[str, ...]) -> dict[str, np.ndarray]:
    """big_vision's scan=True layout of `encoders`: one `encoderblock`, arrays stacked on axis 0."""
    out, stacks = {}, {}
    for name, value in params.items():
        head, sep, rest = name.partition("/encoderblock_")
        if not sep or head not in encoders:
            out[name] = value
            continue
        index, _, leaf = rest.partition("/")
        stacks.setdefault(f"{head}/encoderblock/{leaf}", {})[int(index)] = value
    for name, layers in stacks.items():
        out[name] = np.stack([layers[i] for i in range(len(layers))])
    return out


def write_npz(params: dict[str, np.ndarray], path: str, spec: dict) -> str:
    stored = scanned(params, spec["scan"])
    np.savez(path, **{spec["prefix"] + k: v for k, v in stored.items()})
    return path


# ---- an independent NumPy implementation of big_vision's two-tower forward ----------------------

def _ln(x, p, prefix):  # flax LayerNorm, epsilon 1e-6
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * p[f"{prefix}/scale"] + p[f"{prefix}/bias"]


def _gelu(x):  # flax nn.gelu: the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _mha(p, prefix, q_in, kv_in):  # flax MultiHeadDotProductAttention, no mask
    def proj(name, x):
        return np.einsum("bld,dnh->blnh", x, p[f"{prefix}/{name}/kernel"]) + p[f"{prefix}/{name}/bias"]
    q, k, v = proj("query", q_in), proj("key", kv_in), proj("value", kv_in)
    logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    o = np.einsum("bnts,bsnh->btnh", weights, v)
    return np.einsum("btnh,nhd->btd", o, p[f"{prefix}/out/kernel"]) + p[f"{prefix}/out/bias"]


def _mlp(p, prefix, x):
    h = _gelu(x @ p[f"{prefix}/Dense_0/kernel"] + p[f"{prefix}/Dense_0/bias"])
    return h @ p[f"{prefix}/Dense_1/kernel"] + p[f"{prefix}/Dense_1/bias"]


def _encoder(p, prefix, x):
    i = 0
    while f"{prefix}/encoderblock_{i}/LayerNorm_0/scale" in p:
        blk = f"{prefix}/encoderblock_{i}"
        x = x + _mha(p, f"{blk}/MultiHeadDotProductAttention_0", *[_ln(x, p, f"{blk}/LayerNorm_0")] * 2)
        x = x + _mlp(p, f"{blk}/MlpBlock_0", _ln(x, p, f"{blk}/LayerNorm_1"))
        i += 1
    return _ln(x, p, f"{prefix}/encoder_norm")


def _head(p, tower, x):
    if f"{tower}/head/kernel" not in p:
        return x
    return x @ p[f"{tower}/head/kernel"] + p[f"{tower}/head/bias"]


def reference_forward(p: dict, images: np.ndarray, ids: np.ndarray) -> dict:
    """images uint8 [b, H, W, c], ids [n, L] -> normalised embeddings and sigmoid logits."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    x = images.astype(np.float64) / 255 * 2 - 1  # value_range(-1, 1)
    kernel = p["img/embedding/kernel"]
    size = kernel.shape[0]
    conv = sum(x[:, i::size, j::size, :] @ kernel[i, j]  # stride-p VALID convolution
               for i in range(size) for j in range(size)) + p["img/embedding/bias"]
    x = conv.reshape(conv.shape[0], -1, conv.shape[-1]) + p["img/pos_embedding"]
    x = _encoder(p, "img/Transformer", x)
    probe = np.tile(p["img/MAPHead_0/probe"], (x.shape[0], 1, 1))
    y = _mha(p, "img/MAPHead_0/MultiHeadDotProductAttention_0", probe, x)
    y = y + _mlp(p, "img/MAPHead_0/MlpBlock_0", _ln(y, p, "img/MAPHead_0/LayerNorm_0"))
    zimg = _head(p, "img", y[:, 0])
    t = p["txt/Embed_0/embedding"][ids] + p["txt/pos_embedding"]
    ztxt = _head(p, "txt", _encoder(p, "txt/Encoder_0", t)[:, -1])  # pool_type "last"
    zimg = zimg / (np.linalg.norm(zimg, axis=1, keepdims=True) + 1e-8)
    ztxt = ztxt / (np.linalg.norm(ztxt, axis=1, keepdims=True) + 1e-8)
    return {"image": zimg, "text": ztxt,
            "logits": zimg @ ztxt.T * np.exp(p["t"][0]) + p["b"][0]}


def big_vision_tokenize(model_file: str, text: str, max_len: int) -> list[int]:
    """SigLIP's `tokenize(max_len, eos="sticky", pad_value=1)` (lower=True lowers ASCII only,
    as tf.strings.lower without an encoding), computed directly with sentencepiece."""
    sp = spm.SentencePieceProcessor(model_file=model_file)
    lowered = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    tokens = sp.EncodeAsIds(lowered) + [sp.eos_id()]
    if len(tokens) >= max_len:
        return tokens[:max_len - 1] + tokens[-1:]
    return tokens + [1] * (max_len - len(tokens))


# ---- conversion and checks -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def converted(tmp_path_factory, sp_model) -> tuple[dict, str]:
    """(big_vision params, run directory), converted through the CLI."""
    from vlmjax.convert import main
    vocab = spm.SentencePieceProcessor(model_file=sp_model).get_piece_size()
    d = tmp_path_factory.mktemp("big_vision")
    params = big_vision_params(SPEC, vocab, 0)
    npz = write_npz(params, str(d / "ckpt.npz"), SPEC)
    workdir = str(d / "run")
    assert main(["--from", "big_vision", "--source", npz, "--tokenizer", sp_model,
                 "--workdir", workdir]) == 0
    return params, workdir


def test_import_matches_numpy_big_vision(converted):
    params, workdir = converted
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, SPEC["image"], SPEC["image"], SPEC["channels"]), np.uint8)
    ours = run_forward(workdir, images, TRICKY[:4])
    ref = reference_forward(params, images, ours["ids"])
    for key in ("image", "text", "logits"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    assert np.abs(ref["logits"]).max() > 1  # the scale and bias really enter


def test_tokenizer_follows_big_vision_tokenize(converted, sp_model):
    from vlmjax.train.workdir import load_saved_config, tokenizer_for_run
    _, workdir = converted
    cfg = load_saved_config(workdir).to_dict()
    tok = tokenizer_for_run(cfg, workdir)
    with open(sp_model, "rb") as f:  # the file, copied into the run
        assert tok.sp.serialized_model_proto() == f.read()
    length = cfg["tokenizer"]["context_length"]
    ids, mask = tok.encode(TRICKY, length)
    ref = np.array([big_vision_tokenize(sp_model, t, length) for t in TRICKY])
    np.testing.assert_array_equal(ids, ref)
    # The mask marks the real tokens (sticky EOS included); the rest is padding with id 1.
    real = np.array([min(len(spm.SentencePieceProcessor(model_file=sp_model).EncodeAsIds(
        "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in t))) + 1, length)
        for t in TRICKY])
    np.testing.assert_array_equal(mask, np.arange(length)[None] < real[:, None])
    assert (ids[:, -1] == 1).all()  # "last" pooling reads an EOS in every row
    assert cfg["model"]["text"]["pool"] == "last" and not cfg["model"]["text"]["causal"]


def _failing_import(tmp_path, sp_model, params, spec, tokenizer=None):
    from vlmjax.interop.big_vision_import import import_big_vision
    npz = write_npz(params, str(tmp_path / "bad.npz"), spec)
    workdir = str(tmp_path / "bad_run")
    with pytest.raises(CheckpointError) as info:
        import_big_vision(npz, workdir, tokenizer or sp_model)
    assert not os.path.exists(workdir)  # nothing written before the checks pass
    return str(info.value)


def test_errors_name_the_tensor_or_file(converted, sp_model, tmp_path):
    params, _ = converted
    spec = SPEC
    message = _failing_import(tmp_path, sp_model, {**params, "img/Foo_0/kernel": np.ones(3)}, spec)
    assert "img/Foo_0/kernel" in message
    # In a scanned file the error names the stacked array and the block.
    extra = {**params, "txt/Encoder_0/encoderblock_0/Extra_0/bias": np.ones(3)}
    assert "txt/Encoder_0/encoderblock/Extra_0/bias[0]" in _failing_import(
        tmp_path, sp_model, extra, spec)
    bad = dict(params)
    bad["txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel"] = np.ones((16, 30), np.float32)
    message = _failing_import(tmp_path, sp_model, bad, dict(spec, scan=()))
    assert "txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel" in message
    assert "(16, 30)" in message and "(16, 24)" in message
    missing = str(tmp_path / "nowhere" / "c4_en.model")
    assert missing in _failing_import(tmp_path, sp_model, params, spec, tokenizer=missing)
    message = _failing_import(tmp_path, sp_model, {**params, "img/cls": np.zeros((1, 1, 24))}, spec)
    assert "img/cls" in message and "'tok'" in message
    no_map = {k: v for k, v in params.items() if not k.startswith("img/MAPHead_0")}
    assert "img/MAPHead_0/probe" in _failing_import(tmp_path, sp_model, no_map, spec)
    headed = {**params, "img/head/kernel": np.ones((24, 7)), "img/head/bias": np.ones(7)}
    assert "img/head/kernel" in _failing_import(tmp_path, sp_model, headed, spec)


def test_evaluate_runs_on_converted_run(converted, synthetic_data_dir, tmp_path):
    import ml_collections

    from vlmjax.evaluate import evaluate
    from vlmjax.train.workdir import load_saved_config
    workdir = str(tmp_path / "run")
    shutil.copytree(converted[1], workdir)  # 28 px grey, as the test dataset
    config = load_saved_config(workdir)
    config.data.dir = synthetic_data_dir
    config.evals = ml_collections.ConfigDict({"zeroshot": {"kind": "zeroshot", "batch_size": 200}})
    results = evaluate(config, workdir)
    assert results["step"] == 0 and 0 <= results["evals"]["zeroshot/fashion_mnist"]["acc1"] <= 1


def test_read_npz_recovers_bfloat16_and_drops_optimizer_state(tmp_path):
    """numpy stores bfloat16 as 2-byte void; a full training checkpoint nests params/ beside
    the optimizer state, which is not a parameter (big_vision's load_params)."""
    import ml_dtypes

    from vlmjax.interop.big_vision_import import read_npz
    t = np.array([1.5, -2.25], ml_dtypes.bfloat16)
    np.savez(tmp_path / "ck.npz", **{"params/t": t, "opt/0/mu/t": np.zeros(2, np.float32)})
    loaded = read_npz(str(tmp_path / "ck.npz"))
    assert list(loaded) == ["t"] and loaded["t"].dtype == np.float32
    np.testing.assert_array_equal(loaded["t"], [1.5, -2.25])


def test_config_checks_the_big_vision_options(tiny_config):
    import jax

    from vlmjax.config import validate
    from vlmjax.errors import ConfigError

    def fails(key, value, match):
        config = tiny_config.copy_and_resolve_references()
        node, *path = config, *key.split(".")
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
        with pytest.raises(ConfigError, match=match):
            validate(config, jax.device_count())

    fails("model.text.pool", "first", r"model\.text\.pool")
    fails("model.image.proj", "dense", r"model\.image\.proj")
    fails("model.norm_eps", 0.0, r"model\.norm_eps")
    tiny_config.model.embed_dim = 8  # the towers are 16 wide
    fails("model.text.proj", "none", r"model\.text\.proj.*embed_dim \(8\)")
    tiny_config.model.embed_dim = 16
    tiny_config.model.name = "coca"  # its unimodal text tower must be causal, pooled at a CLS
    fails("model.text.causal", False, r"model\.text\.pool.*CoCa")
