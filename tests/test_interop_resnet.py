"""open_clip ResNet CLIPs: an RN50-shaped CLIP (blocks 3-4-6-3, small widths) imported with
`--from open_clip` matches open_clip 3.3 (embeddings, logits, dense tokens, a training-mode
forward and its running statistics) at 1e-4; RN50 / RN101 / RN50x4 build with exactly
open_clip's parameter and BatchNorm-statistic counts; bad checkpoints are refused before
anything is written; a BERT text tower joins the imported ResNet (`--from hf` with image_from).

The references come from tests/open_clip_reference.py, run once per session in the open_clip
environment (see tests/test_interop_open_clip.py), with randomised BatchNorm weights, biases and
running statistics (open_clip initialises bn3 to zero and the statistics to 0 / 1).
"""

import json
import os
import subprocess

import numpy as np
import pytest

from tests.interop_runs import forward, restore_run
from tests.test_interop_open_clip import REPO, open_clip_python
from vlmjax.errors import CheckpointError

TEXTS = ["a photo of a cat", "two dogs, on the GRASS!", "a small red car near a tree"]
VOCAB = 49408
RN = {"embed_dim": 32, "quick_gelu": True,
      "vision_cfg": {"image_size": 64, "layers": [3, 4, 6, 3], "width": 8, "head_width": 16,
                     "patch_size": None},
      "text_cfg": {"context_length": 77, "vocab_size": VOCAB, "width": 32, "heads": 4,
                   "layers": 2}}
COUNTED = ["RN50", "RN101", "RN50x4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("open_clip_rn")
    spec = {"models": {"rn": {"seed": 3, "config": RN}}, "texts": TEXTS, "tricky": TEXTS,
            "images": 4, "counts": COUNTED}
    (out / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    done = subprocess.run([open_clip_python(), os.path.join(REPO, "tests", "open_clip_reference.py"),
                           str(out), str(out / "spec.json")], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    if done.returncode:
        pytest.fail(f"tests/open_clip_reference.py failed:\n{done.stderr[-3000:]}")
    return str(out)


@pytest.fixture(scope="module")
def converted(reference, tmp_path_factory) -> str:
    from vlmjax.convert import main
    workdir = str(tmp_path_factory.mktemp("rn_run"))
    assert main(["--from", "open_clip", "--source", os.path.join(reference, "rn"),
                 "--model-config", os.path.join(reference, "rn", "rn.json"),
                 "--workdir", workdir]) == 0
    return workdir


@pytest.fixture(scope="module")
def restored(converted):
    import jax
    return restore_run(converted, jax.devices()[:1])


def _counts(reference: str) -> dict:
    with open(os.path.join(reference, "counts.json"), encoding="utf-8") as f:
        return json.load(f)


def _ref(reference: str) -> dict:
    return dict(np.load(os.path.join(reference, "rn", "reference.npz")))


def test_import_matches_open_clip(reference, restored):
    ref = _ref(reference)
    ours = forward(restored, ref["images"], TEXTS)
    np.testing.assert_array_equal(ours["ids"], ref["ids"])
    for key in ("image", "text", "logits"):
        np.testing.assert_allclose(ours[key], ref[key], atol=1e-4, rtol=0, err_msg=key)
    image = restored.cfg["model"]["image"]
    assert image["kind"] == "resnet" and tuple(image["layers"]) == (3, 4, 6, 3)
    assert image["proj"] == "none" and image["output_dim"] == 32


def test_dense_tokens_and_training_mode_match_open_clip(reference, restored):
    """Tokens: each position (+ its position embedding) through the pool's value and output
    projections, in the embedding's space. Training mode: BatchNorm by the batch's statistics
    (4 images), the running mean moved by open_clip's momentum 0.1."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlmjax.data.normalization import Normalization
    ref = _ref(reference)
    pixels = Normalization.from_config(restored.cfg["data"])(ref["images"])
    model = nnx.merge(restored.layout.graphdef, jax.tree.map(jnp.asarray, restored.params))
    tokens = np.asarray(model.image(pixels)["tokens"])
    assert tokens.shape == ref["image_tokens"].shape == (4, 4, 32)
    np.testing.assert_allclose(tokens, ref["image_tokens"], atol=1e-4, rtol=0)
    trained = np.asarray(model.encode_image(pixels, train=True))
    np.testing.assert_allclose(trained, ref["image_train"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.image.bn1.mean[...]), ref["bn1_running_mean"],
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", COUNTED)
def test_full_size_resnets_have_open_clips_parameter_counts(reference, name):
    """jax.eval_shape of the converted config of open_clip's RN50 / RN101 / RN50x4 (no memory):
    the image tower's parameters and BatchNorm statistics and the whole CLIP's parameters equal
    open_clip's counts of the same models."""
    import jax
    from flax import nnx

    from vlmjax.interop.open_clip_config import vlmjax_config
    from vlmjax.models.registry import get_family
    want = _counts(reference)[name]
    cfg = vlmjax_config(want["config"], name).config.to_dict()
    assert cfg["model"]["image"]["variant"] == "" and cfg["model"]["image"]["output_dim"]
    family = get_family(cfg["model"])
    abstract = nnx.eval_shape(lambda: family.build(cfg["model"], VOCAB, 77, rngs=nnx.Rngs(0)))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    params = nnx.state(abstract, nnx.Param)
    assert count(params["image"]) == want["visual_params"]
    assert count(nnx.state(abstract, nnx.BatchStat)) == want["visual_stats"]
    assert count(params) == want["params"]


def test_named_variants_are_open_clips_configs(reference):
    """model.image.variant=RN50 etc. resolve to the sizes open_clip's model configs give."""
    from vlmjax.interop.open_clip_config import vlmjax_config
    from vlmjax.models.resnet import resolve_resnet
    counts = _counts(reference)
    for name in COUNTED:
        imported = vlmjax_config(counts[name]["config"], name).config.model.image.to_dict()
        named = resolve_resnet({"variant": name, "layers": (), "width": 0, "output_dim": 0})
        for key in ("layers", "width", "output_dim"):
            assert tuple(np.atleast_1d(named[key])) == tuple(np.atleast_1d(imported[key])), key


def _write_checkpoint(reference: str, tmp_path, change) -> str:
    from safetensors.numpy import save_file

    from vlmjax.interop.open_clip_import import read_state_dict
    tensors = read_state_dict(os.path.join(reference, "rn", "open_clip_model.safetensors"))
    change(tensors)
    source = tmp_path / "ckpt"
    source.mkdir()
    save_file(tensors, str(source / "open_clip_model.safetensors"))
    return str(source)


@pytest.mark.parametrize("change,message", [
    (lambda t: t.pop("visual.layer2.0.bn1.running_var"),
     r"has no tensor visual\.layer2\.0\.bn1\.running_var \(for image/stages/1/blocks/0/bn1/var\)"),
    (lambda t: t.pop("visual.attnpool.k_proj.bias"), r"has no tensor visual\.attnpool\.k_proj\.bias"),
    (lambda t: t.__setitem__("visual.layer5.0.conv1.weight", np.zeros((4, 4, 1, 1), np.float32)),
     r"tensor visual\.layer5\.0\.conv1\.weight \(shape \(4, 4, 1, 1\)\) maps to no vlmjax"),
    (lambda t: t.__setitem__("visual.conv2.weight", np.zeros((4, 5, 3, 3), np.float32)),
     r"tensor visual\.conv2\.weight has shape \(4, 5, 3, 3\) but .* implies \(4, 4, 3, 3\)"),
])
def test_checkpoints_that_do_not_fit_are_refused_before_writing(reference, tmp_path, change, message):
    from vlmjax.convert import main
    source = _write_checkpoint(reference, tmp_path, change)
    workdir = tmp_path / "run"
    with pytest.raises(CheckpointError, match=message) as error:
        main(["--from", "open_clip", "--source", source, "--model-config",
              os.path.join(reference, "rn", "rn.json"), "--workdir", str(workdir)])
    assert "\n" not in str(error.value)
    assert not (workdir / "checkpoints").exists()


def test_bert_text_tower_joins_the_imported_resnet(reference, converted, tmp_path):
    """`--from hf` of a BertModel with image_from the imported RN CLIP: the image embeddings
    are open_clip's, the text embeddings transformers' BERT [CLS] pooler output through the
    new text projection, and the logits their scaled cosines (all at 1e-4)."""
    import jax

    from tests.test_bert import randomised_bert
    from vlmjax.interop.hf_import import import_hf
    from vlmjax.models.embedding import l2_normalize
    bert_dir, bert = randomised_bert(str(tmp_path / "bert"), width=32)
    workdir = str(tmp_path / "lit")
    import_hf(bert_dir, workdir, image_from=converted)
    run = restore_run(workdir, jax.devices()[:1])
    assert run.cfg["model"]["text"]["kind"] == "bert" and run.cfg["tokenizer"]["kind"] == "wordpiece"
    ref = _ref(reference)
    ours = forward(run, ref["images"], TEXTS)
    np.testing.assert_allclose(ours["image"], ref["image"], atol=1e-4, rtol=0)
    import torch
    with torch.no_grad():
        pooled = bert(input_ids=torch.tensor(ours["ids"], dtype=torch.long),
                      attention_mask=torch.tensor(ours["mask"], dtype=torch.long)).pooler_output
    kernel = np.asarray(run.params["text_proj"]["kernel"])
    text = np.asarray(l2_normalize(pooled.numpy() @ kernel))
    np.testing.assert_allclose(ours["text"], text, atol=1e-4, rtol=0)
    scale = np.exp(np.asarray(run.params["logit_scale"]))
    np.testing.assert_allclose(ours["logits"], scale * ref["image"] @ text.T, atol=1e-4 * scale,
                               rtol=0)
