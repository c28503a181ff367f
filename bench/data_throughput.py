"""Image-text loading throughput: vlmjax's grain loader against open_clip's webdataset loader.

    .venv/bin/python bench/data_throughput.py [--samples 2000] [--batch 64] [--batches 12] [--reps 3]

Both read the same JPEG webdataset tars (built once into a temp dir: Fashion-MNIST images from
/usr/share/datasets/fashion-mnist, or synthetic ones, upscaled and tinted to 256-400 px RGB
photos, JPEG quality 90, captions "a photo of a <class>, number <i>."), and do the same work per
sample: JPEG decode, RGB, RandomResizedCrop(224, scale=(0.9, 1.0), bicubic), normalisation with
OpenAI's mean/std to float32, CLIP BPE tokenization to 77 ids, batches of `--batch`.
- vlmjax: `image_text_dataset` over the tars (`tar:` source), in 1 or 2 grain worker processes.
- reference: open_clip's training pipeline, `webdataset` (tarfile_to_samples, decode("pilrgb"),
  to_tuple) + open_clip's `image_transform(224, is_train=True)` + its tokenizer, batched in the
  workers of a torch DataLoader with 1 or 2 workers, run in .venv-openclip.
The loaders alternate (vlmjax, reference, per worker count, `--reps` times) so background load
hits both alike; each run times `--batches` batches after 2 warm-up batches (worker start-up
excluded). Prints a table of median samples/s, then one JSON line.
"""

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENCLIP_PYTHON = os.path.join(REPO, ".venv-openclip", "bin", "python")
FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
CLASSES = ("T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle boot")
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

REFERENCE = r"""
import sys, time, json
import torch, webdataset as wds, open_clip
from open_clip.transform import image_transform
urls, workers, batch, batches = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tokenizer = open_clip.get_tokenizer("ViT-B-32")
preprocess = image_transform(224, is_train=True)  # RandomResizedCrop(224, (0.9, 1)), bicubic, CLIP norm
pipeline = wds.DataPipeline(
    wds.SimpleShardList(urls), wds.split_by_worker, wds.tarfile_to_samples(),
    wds.decode("pilrgb"), wds.rename(image="jpg;png;jpeg;webp", text="txt"),
    wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
    wds.to_tuple("image", "text"), wds.batched(batch, partial=False))
loader = wds.WebLoader(pipeline.repeat(), batch_size=None, shuffle=False, num_workers=workers,
                       persistent_workers=True)
it = iter(loader)
for _ in range(2):
    next(it)
start = time.perf_counter()
for _ in range(batches):
    images, texts = next(it)
elapsed = time.perf_counter() - start
assert images.shape == (batch, 3, 224, 224) and texts.shape == (batch, 77)
print(json.dumps({"samples_per_s": batches * batch / elapsed}))
"""


def source_images(n: int) -> np.ndarray:
    """n grayscale 28 x 28 images: Fashion-MNIST if installed, else random blobs."""
    if os.path.isfile(FASHION):
        from vlmjax.data.idx import read_idx
        return read_idx(FASHION)[:n]
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), np.uint8)


def build_shards(directory: str, n: int, per_shard: int = 250) -> list[str]:
    """JPEG webdataset tars of n photo-like RGB images 256-400 px on a side, with captions."""
    from PIL import Image

    images, rng, paths = source_images(n), np.random.default_rng(0), []
    for s in range(0, n, per_shard):
        path = os.path.join(directory, f"{s // per_shard:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for i in range(s, min(s + per_shard, n)):
                h, w = rng.integers(256, 401, size=2)
                gray = Image.fromarray(images[i]).resize((int(w), int(h)), Image.BICUBIC)
                tint = rng.uniform(0.4, 1.0, 3)
                ramp = np.linspace(0, 60, int(w))[None, :, None]
                rgb = np.clip(np.asarray(gray)[..., None] * tint + ramp, 0, 255).astype(np.uint8)
                out = io.BytesIO()
                Image.fromarray(rgb).save(out, format="JPEG", quality=90)
                caption = f"a photo of a {CLASSES[i % 10]}, number {i}."
                for ext, data in (("jpg", out.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{i:07d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def run_vlmjax(directory: str, workers: int, batch: int, batches: int, tokenizer,
               host_normalise: bool = True) -> float:
    """vlmjax's loader; without `host_normalise` it yields uint8 images, as training uses it (the
    train step normalises on the device)."""
    from vlmjax.data.image_text_pipeline import ImageTextIterator, image_text_dataset
    from vlmjax.data.image_text_sources import SourceSpec
    from vlmjax.data.image_text_transform import ImageTextTransform

    ds = image_text_dataset([SourceSpec("tar", directory)], ImageTextTransform(224), tokenizer,
                            77, batch, seed=0, num_workers=workers,
                            normalize=(MEAN, STD) if host_normalise else None)
    it = ImageTextIterator(ds)
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        out = next(it)
    elapsed = time.perf_counter() - start
    assert out["image"].shape == (batch, 224, 224, 3)
    assert out["image"].dtype == (np.float32 if host_normalise else np.uint8)
    it.close()
    return batches * batch / elapsed


def run_reference(paths: list[str], workers: int, batch: int, batches: int) -> float:
    result = subprocess.run([OPENCLIP_PYTHON, "-c", REFERENCE, ",".join(paths), str(workers),
                             str(batch), str(batches)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"reference loader failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", default="1,2")
    args = p.parse_args()
    import absl.flags
    absl.flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags

    from vlmjax.tokenizers.clip_bpe import ClipBpeTokenizer
    vocab = os.path.join(REPO, ".venv-openclip/lib/python3.11/site-packages/open_clip",
                         "bpe_simple_vocab_16e6.txt.gz")
    tokenizer = ClipBpeTokenizer.from_path(vocab)
    worker_counts = [int(w) for w in args.workers.split(",")]
    figures = {w: {"vlmjax": [], "vlmjax_uint8": [], "reference": []} for w in worker_counts}
    loads = []
    with tempfile.TemporaryDirectory() as directory:
        paths = build_shards(directory, args.samples)
        for _ in range(args.reps):
            for w in worker_counts:
                loads.append(os.getloadavg()[0])
                figures[w]["vlmjax"].append(run_vlmjax(directory, w, args.batch, args.batches, tokenizer))
                figures[w]["reference"].append(run_reference(paths, w, args.batch, args.batches))
                figures[w]["vlmjax_uint8"].append(
                    run_vlmjax(directory, w, args.batch, args.batches, tokenizer, False))
                print(f"workers {w}: vlmjax {figures[w]['vlmjax'][-1]:.1f}/s, "
                      f"reference {figures[w]['reference'][-1]:.1f}/s, "
                      f"vlmjax uint8 {figures[w]['vlmjax_uint8'][-1]:.1f}/s", file=sys.stderr)
    summary = {}
    print(f"\nsamples/s (median of {args.reps} alternating runs of {args.batches} x {args.batch}; "
          f"load average {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores)")
    print("| workers | vlmjax, float32 normalised on the host | open_clip (webdataset + torchvision) "
          "| ratio | vlmjax as trained (uint8; the step normalises on the device) | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for w in worker_counts:
        ours, ref = statistics.median(figures[w]["vlmjax"]), statistics.median(figures[w]["reference"])
        raw = statistics.median(figures[w]["vlmjax_uint8"])
        summary[str(w)] = {"vlmjax_samples_per_s": round(ours, 1),
                           "reference_samples_per_s": round(ref, 1), "ratio": round(ours / ref, 3),
                           "vlmjax_uint8_samples_per_s": round(raw, 1),
                           "uint8_ratio": round(raw / ref, 3)}
        print(f"| {w} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f}x | {raw:.1f} | {raw / ref:.2f}x |")
    print(json.dumps({"workers": summary, "load_average": [round(min(loads), 2), round(max(loads), 2)]}))


if __name__ == "__main__":
    main()
