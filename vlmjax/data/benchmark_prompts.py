"""A benchmark's class names and prompt templates: the registry's, TFDS's label names cleaned,
CoOp's (with a split file), or the user's CLIP_benchmark-format files, checked against the
label space they must name."""

from vlmjax.data.benchmarks import Benchmark, clean_name, get_benchmark
from vlmjax.data.coop_split_files import coop_classnames
from vlmjax.data.datasets import read_keyed_json
from vlmjax.data.tfds_images import num_classes, tfds_label_names
from vlmjax.errors import DataError


def require_labels(benchmark: Benchmark) -> None:
    """DataError unless the benchmark's examples carry class labels."""
    if not benchmark.labelled:
        raise DataError(f"benchmark {benchmark.name} has no class labels (its images come with "
                        "captions); evaluate it with kind 'retrieval' or 'captioning'")


def class_count(name: str, split_file: str = "") -> int:
    """Number of classes of a benchmark, or of its CoOp split file (whose label space may
    differ from TFDS's); no user class names needed."""
    benchmark = get_benchmark(name)
    require_labels(benchmark)
    if split_file:
        return len(coop_classnames(benchmark, split_file))
    return num_classes(benchmark)


def benchmark_prompts(name: str, classnames_file: str = "", templates_file: str = "",
                      split_file: str = "") -> tuple[list[str], list[str]]:
    """Class names (in label order) and templates of a benchmark, user files taking precedence;
    with a CoOp `split_file`, labels are CoOp's and so are the default names."""
    benchmark = get_benchmark(name)
    require_labels(benchmark)
    keys = (name, benchmark.clip_benchmark_key)
    source = benchmark.classnames
    if split_file:
        coop_names = coop_classnames(benchmark, split_file)
        expected, space = len(coop_names), f"CoOp split file ({split_file}) has"
    else:
        expected, space = num_classes(benchmark), f"TFDS labels ({benchmark.tfds}) have"
    if classnames_file:
        classnames = read_keyed_json(classnames_file, keys, "classnames")
    elif split_file:
        classnames = coop_names
    elif isinstance(source, dict):
        raise DataError(f"benchmark {name} needs evals.<name>.classnames_file: "
                        f"{source['file_required']}")
    elif source == "tfds":
        classnames = [clean_name(n, benchmark.clean) for n in tfds_label_names(benchmark)]
    else:
        classnames = [clean_name(n, benchmark.clean) for n in source]
    if len(classnames) != expected:
        raise DataError(f"{len(classnames)} class names for {name}, whose {space} "
                        f"{expected} classes" + (f" (from {classnames_file})" if classnames_file else ""))
    templates = (read_keyed_json(templates_file, keys, "templates") if templates_file
                 else list(benchmark.templates))
    if not templates or any("{c}" not in t for t in templates):
        raise DataError(f"every template for {name} must contain the placeholder {{c}}")
    return classnames, templates
