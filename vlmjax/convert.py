"""`python -m vlmjax.convert --from hf --source DIR --workdir RUN`: import weights as a vlmjax run;
`--from hf --source BERT_DIR (--image-from RUN | --config FILE.py) --workdir RUN`: a BertModel
as the text tower of a LiT / CLIP run (image tower from another run, or fresh from a config);
`--from open_clip --source CKPT [--model-config MODEL.json] --workdir RUN` for open_clip
CLIP (ViT or ResNet) / CoCa;
`--from big_vision --source CKPT.npz [--tokenizer SP.model] --workdir RUN` for big_vision SigLIP;
`python -m vlmjax.convert --to hf --workdir RUN --output DIR`: export a run for transformers.
"""

import argparse

from vlmjax.cli import enable_compilation_cache, run_main


def main(argv: list[str] | None = None) -> int:
    from vlmjax.interop.sources import SOURCES
    parser = argparse.ArgumentParser(prog="python -m vlmjax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source_kind", choices=list(SOURCES),
                           help="import: the format of --source")
    direction.add_argument("--to", dest="target_kind", choices=["hf"],
                           help="export: write --workdir's latest checkpoint in this format")
    parser.add_argument("--source", help="import: the directory or file to read")
    parser.add_argument("--workdir", required=True, help="vlmjax run directory")
    parser.add_argument("--tokenizer", help="--from big_vision: the SentencePiece .model the "
                        "checkpoint was trained with (default: sentencepiece.model beside it)")
    parser.add_argument("--model-config", help="--from open_clip: open_clip's model-config "
                        "JSON (default: open_clip_config.json beside the checkpoint)")
    parser.add_argument("--image-from", help="--from hf with a BertModel: the vlmjax run whose "
                        "image tower (and image projection) the new run takes")
    parser.add_argument("--config", dest="base_config", help="--from hf with a BertModel: a vlmjax "
                        "config file (path.py[:arg]) for the rest of the run (a fresh image tower "
                        "unless --image-from)")
    parser.add_argument("--output", help="export: the directory to write")
    parser.add_argument("--step", type=int, default=None, help="export: checkpoint step (latest)")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    if args.source_kind:
        if not args.source:
            parser.error("--from needs --source PATH")
        options = {}
        if args.tokenizer:
            if args.source_kind != "big_vision":
                parser.error("--tokenizer is read by --from big_vision only")
            options["tokenizer"] = args.tokenizer
        if args.model_config:
            if args.source_kind != "open_clip":
                parser.error("--model-config is read by --from open_clip only")
            options["model_config"] = args.model_config
        if args.image_from or args.base_config:
            if args.source_kind != "hf":
                parser.error("--image-from and --config are read by --from hf (a BertModel) only")
            options.update(image_from=args.image_from or "", config=args.base_config or "")
        from vlmjax.interop.sources import get_source
        get_source(args.source_kind)(args.source, args.workdir, **options)
    else:
        if not args.output:
            parser.error("--to needs --output DIR")
        from vlmjax.interop.hf_export import export_hf
        export_hf(args.workdir, args.output, args.step)
    return 0


if __name__ == "__main__":
    run_main(main)
