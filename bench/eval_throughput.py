"""Zero-shot evaluation throughput of a ViT-B/32 CLIP: vlmjax against transformers' CLIPModel.

    .venv/bin/python bench/eval_throughput.py [--batch 64] [--batches 5] [--classes 1000]

Both sides get the same work on the same fp32 uint8 batch at 224 px: normalise, image tower
(ViT-B/32: width 768, 12 layers, 12 heads, patch 32, QuickGELU), projection to 512, L2
normalisation, scores against a [classes, 512] classifier, top-5. Both are randomly
initialised (the time does not depend on the weights). vlmjax runs its zero-shot evaluator's
jitted image path on all CPU devices; the reference is a plain PyTorch loop under
`torch.inference_mode()` with PyTorch's default threads. Data loading is excluded from both.
Reports images/s (median batch time after a warm-up batch) and the ratio; prints a table, then
one JSON line.
"""

import argparse
import json
import statistics
import time

import numpy as np

WIDTH, DEPTH, HEADS, PATCH, SIZE, EMBED = 768, 12, 12, 32, 224, 512
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def time_batches(fn, images: np.ndarray, batches: int) -> float:
    """Median seconds of `fn(images)` over `batches` runs after one warm-up."""
    fn(images)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        fn(images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def vlmjax_fn(batch: int, classes: int):
    """The zero-shot evaluator's image path: jitted, batch sharded over the CPU devices."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from vlmjax.config import base_config
    from vlmjax.evaluators.scoring import EmbeddingScoring
    from vlmjax.models.two_tower import TwoTower
    from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated

    c = base_config()
    c.model.activation = "quick_gelu"
    c.model.embed_dim = EMBED
    c.model.image.update(variant=f"B/{PATCH}", image_size=SIZE, channels=3, ln_pre=True)
    c.model.text.update(width=512, depth=1, heads=8, mlp_dim=2048)  # unused by image scoring
    cfg = c.to_dict()
    model = TwoTower(cfg["model"], 49408, 77, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = cfg["sharding_rules"]
    scoring = EmbeddingScoring()
    classifier = jax.device_put(np.random.default_rng(0).normal(size=(classes, EMBED)).astype(
        np.float32), replicated(mesh))
    mean, std = jnp.asarray(MEAN), jnp.asarray(STD)

    @jax.jit
    def top5(params, images, classifier):
        x = (images.astype(jnp.float32) / 255.0 - mean) / std
        features = scoring.image_features(nnx.merge(graphdef, params), x)
        return jax.lax.top_k(scoring.class_scores(features, classifier), 5)[1]

    params = jax.device_put(params, replicated(mesh))
    sharding = batch_sharding(mesh, rules)

    def run(images: np.ndarray) -> None:
        jax.block_until_ready(top5(params, jax.device_put(images, sharding), classifier))

    return run, len(jax.devices())


def torch_fn(classes: int):
    """transformers' CLIPModel image path of the same sizes, in a plain inference loop."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        vision_config=dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                           intermediate_size=4 * WIDTH, patch_size=PATCH, image_size=SIZE,
                           hidden_act="quick_gelu"),
        text_config=dict(hidden_size=512, num_hidden_layers=1, num_attention_heads=8,
                         intermediate_size=2048, hidden_act="quick_gelu"),
        projection_dim=EMBED)
    model = CLIPModel(config).eval()
    classifier = torch.from_numpy(np.random.default_rng(0).normal(size=(classes, EMBED)).astype(
        np.float32))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def run(images: np.ndarray) -> None:
        with torch.inference_mode():
            x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
            pooled = model.vision_model(pixel_values=(x - mean) / std).pooler_output
            features = model.visual_projection(pooled)  # what get_image_features computes
            features = features / features.norm(dim=-1, keepdim=True)
            (features @ classifier.T).topk(5, dim=-1)

    return run, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.batch, SIZE, SIZE, 3)).astype(np.uint8)
    ours, devices = vlmjax_fn(args.batch, args.classes)
    ours_s = time_batches(ours, images, args.batches)
    ref, threads = torch_fn(args.classes)
    ref_s = time_batches(ref, images, args.batches)
    rows = {"vlmjax": (ours_s, f"jit, {devices} CPU devices"),
            "transformers CLIPModel": (ref_s, f"torch eager, {threads} threads")}
    print(f"zero-shot image path, ViT-B/{PATCH} fp32, batch {args.batch}, {args.classes} classes")
    print(f"{'implementation':<24} {'batch s':>8} {'images/s':>9}  setting")
    for name, (seconds, setting) in rows.items():
        print(f"{name:<24} {seconds:>8.3f} {args.batch / seconds:>9.1f}  {setting}")
    ratio = ref_s / ours_s
    print(f"vlmjax / transformers throughput: {ratio:.2f}x")
    print(json.dumps({"batch": args.batch, "vlmjax_images_s": round(args.batch / ours_s, 2),
                      "transformers_images_s": round(args.batch / ref_s, 2),
                      "ratio": round(ratio, 3)}))


if __name__ == "__main__":
    main()
