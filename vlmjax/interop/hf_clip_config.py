"""HF CLIPConfig (config.json) <-> the vlmjax config of the same model.

Only what vlmjax's two-tower model can express converts; anything else (another architecture,
an activation other than quick_gelu/gelu, a LayerNorm epsilon other than 1e-5, different
activations per tower) is refused with the config key named.
"""

import math
from collections.abc import Mapping

import ml_collections

from vlmjax.errors import CheckpointError
from vlmjax.interop.workdir_writer import imported_config
from vlmjax.models.sizes import resolve_vit

# HF hidden_act -> vlmjax model.activation ("gelu" is the exact erf GELU in both).
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
LAYER_NORM_EPS = 1e-5


def _require(section: Mapping, key: str, where: str) -> object:
    if key not in section:
        raise CheckpointError(f"config.json has no {where}{key}; is this a CLIPModel directory?")
    return section[key]


def _activation(hf: Mapping) -> str:
    acts = {name: hf[name].get("hidden_act", "quick_gelu")
            for name in ("text_config", "vision_config")}
    for name, act in acts.items():
        if act not in ACTIVATIONS:
            raise CheckpointError(f"config.json {name}.hidden_act={act!r} is not supported; "
                                  f"vlmjax has {', '.join(ACTIVATIONS)} (exact erf GELU)")
        eps = hf[name].get("layer_norm_eps", LAYER_NORM_EPS)
        if not math.isclose(eps, LAYER_NORM_EPS):
            raise CheckpointError(f"config.json {name}.layer_norm_eps={eps} is not supported; "
                                  f"vlmjax LayerNorms use {LAYER_NORM_EPS}")
    if len(set(acts.values())) > 1:
        raise CheckpointError(f"config.json uses hidden_act {acts['vision_config']!r} in "
                              f"vision_config but {acts['text_config']!r} in text_config; "
                              "vlmjax has one model.activation for both towers")
    return ACTIVATIONS[acts["text_config"]]


def vlmjax_config(hf: Mapping, image_mean: tuple = OPENAI_MEAN, image_std: tuple = OPENAI_STD,
                  tokenizer_kind: str = "clip_bpe", tokenizer_path: str = ""
                  ) -> ml_collections.ConfigDict:
    """The vlmjax config describing the CLIPModel of `hf` (a parsed config.json)."""
    model_type = hf.get("model_type", "")
    if model_type != "clip":
        raise CheckpointError(f"config.json has model_type={model_type!r}; --from hf reads "
                              "CLIPModel directories (model_type 'clip')")
    text, vision = _require(hf, "text_config", ""), _require(hf, "vision_config", "")
    c = imported_config(tokenizer_kind, tokenizer_path,
                        int(_require(text, "max_position_embeddings", "text_config.")),
                        int(_require(text, "vocab_size", "text_config.")), image_mean, image_std)
    c.model.name = "two_tower"
    c.model.activation = _activation(hf)
    c.model.embed_dim = int(_require(hf, "projection_dim", ""))
    c.model.logit_scale_init = float(hf.get("logit_scale_init_value", math.log(1 / 0.07)))
    c.model.image.update(
        variant="", pool="cls", ln_pre=True,
        **{ours: int(_require(vision, key, "vision_config."))
           for ours, key in (("image_size", "image_size"), ("patch_size", "patch_size"),
                             ("width", "hidden_size"), ("depth", "num_hidden_layers"),
                             ("heads", "num_attention_heads"), ("mlp_dim", "intermediate_size"))},
        channels=int(vision.get("num_channels", 3)))
    c.model.text.update(**{ours: int(_require(text, key, "text_config."))
                           for ours, key in (("width", "hidden_size"),
                                             ("depth", "num_hidden_layers"),
                                             ("heads", "num_attention_heads"),
                                             ("mlp_dim", "intermediate_size"))})
    return c


def hf_config(cfg: Mapping, vocab_size: int, bos_id: int, eos_id: int) -> dict:
    """config.json of a HF CLIPModel equal to the vlmjax two-tower model of `cfg`."""
    model, image = cfg["model"], resolve_vit(cfg["model"]["image"])
    text = model["text"]
    act = model["activation"]
    return {
        "architectures": ["CLIPModel"], "model_type": "clip",
        "projection_dim": model["embed_dim"], "logit_scale_init_value": model["logit_scale_init"],
        "text_config": {
            "model_type": "clip_text_model", "vocab_size": vocab_size,
            "hidden_size": text["width"], "intermediate_size": text["mlp_dim"],
            "num_hidden_layers": text["depth"], "num_attention_heads": text["heads"],
            "max_position_embeddings": cfg["tokenizer"]["context_length"], "hidden_act": act,
            "layer_norm_eps": LAYER_NORM_EPS, "projection_dim": model["embed_dim"],
            "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": eos_id,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "image_size": image["image_size"],
            "patch_size": image["patch_size"], "num_channels": image["channels"],
            "hidden_size": image["width"], "intermediate_size": image["mlp_dim"],
            "num_hidden_layers": image["depth"], "num_attention_heads": image["heads"],
            "hidden_act": act, "layer_norm_eps": LAYER_NORM_EPS,
            "projection_dim": model["embed_dim"],
        },
    }
