"""The one train loop: every objective, model and mesh goes through `train(config, workdir)`."""

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vlmjax.config import validate
from vlmjax.data.captions import build_caption_table
from vlmjax.data.datasets import caption_vocabulary, load_split
from vlmjax.data.image_text_config import IMAGE_TEXT, image_text_iterator
from vlmjax.data.image_text_pipeline import skip_metrics
from vlmjax.data.pipeline import train_dataset, train_iterator
from vlmjax.data.prefetch import DevicePrefetcher, process_rows
from vlmjax.errors import TrainingStoppedError
from vlmjax.evaluators.context import EvalContext
from vlmjax.evaluators.registry import build_evaluators
from vlmjax.evaluators.report import print_results, write_results
from vlmjax.objectives.registry import get_objective
from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
from vlmjax.train.checkpoint import Checkpointer, checkpoint_bytes
from vlmjax.train.metrics_writer import MetricsWriter, plot_curves
from vlmjax.train.preemption import StopRequests
from vlmjax.train.skipped_updates import SkipMonitor
from vlmjax.train.state import StateLayout, model_builder, state_layout
from vlmjax.train.step import StepSpec, channel_stats, jit_train_step
from vlmjax.train.workdir import (
    check_free_disk,
    check_writable,
    is_main_process,
    save_config,
    tokenizer_for_run,
)

log = logging.getLogger(__name__)


def run_evaluators(evaluators: list, params: dict, step: int, workdir: str,
                   writer: MetricsWriter) -> dict:
    """Runs every evaluator, logs its metrics and writes workdir/results.json."""
    evals = {}
    for evaluator in evaluators:
        start = time.perf_counter()
        evals[evaluator.name] = evaluator.run(params)
        log.info("step %d %s: %s (%.1fs)", step, evaluator.name, evals[evaluator.name],
                 time.perf_counter() - start)
        writer.write(step, {f"{evaluator.name}/{k}": v for k, v in evals[evaluator.name].items()})
    results = {"step": int(step), "evals": evals}
    if is_main_process():
        write_results(workdir, results)
    return results


def _step_spec(config: Mapping, layout: StateLayout, mesh: jax.sharding.Mesh) -> StepSpec:
    objective = get_objective(config["objective"]["name"])
    return StepSpec(
        graphdef=layout.graphdef, objective=objective,
        objective_options={k: v for k, v in config["objective"].items() if k != "name"},
        tx=layout.tx, schedule=layout.schedule,
        post_update=lambda params: layout.model_spec.post_update(params, config["model"]),
        locked=layout.locked, image_mean=channel_stats(config["data"]["image_mean"]),
        image_std=channel_stats(config["data"]["image_std"]), mesh=mesh, rules=config["sharding_rules"],
        grad_accum_steps=config["train"]["grad_accum_steps"])


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in `workdir`), evaluates, returns results."""
    validate(config, jax.device_count(), jax.process_count())
    check_writable(workdir)
    cfg = config.to_dict()
    mesh = make_mesh(cfg["mesh"])
    rules = cfg["sharding_rules"]
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), jax.device_count(),
             jax.devices()[0].platform)

    tokenizer = tokenizer_for_run(cfg, workdir)
    context_length = cfg["tokenizer"]["context_length"]
    layout = state_layout(cfg, tokenizer.vocab_size, context_length, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layout.abstract["params"]))
    log.info("model %s: %.2fM parameters", cfg["model"]["name"], n_params / 1e6)
    check_free_disk(workdir, checkpoint_bytes(layout.abstract))

    train_cfg = cfg["train"]
    rows = process_rows(batch_sharding(mesh, rules), train_cfg["batch_size"])
    if cfg["data"]["name"] == IMAGE_TEXT:  # web-scale image-text shards
        iterator = image_text_iterator(cfg, tokenizer, rows.stop - rows.start,
                                       jax.process_index(), jax.process_count())
    else:
        images, labels = load_split(cfg["data"]["name"], cfg["data"]["dir"], cfg["data"]["split"])
        table = build_caption_table(*caption_vocabulary(cfg["data"]["name"]), tokenizer,
                                    context_length)
        dataset = train_dataset(
            images, labels, table, global_batch_size=train_cfg["batch_size"], seed=cfg["seed"],
            rows=rows, flip=cfg["data"]["flip"], translate=cfg["data"]["translate"])
        iterator = train_iterator(dataset, cfg["data"]["num_threads"], cfg["data"]["prefetch"])
    evaluators = build_evaluators(cfg["evals"], EvalContext(
        graphdef=layout.graphdef, tokenizer=tokenizer, context_length=context_length, mesh=mesh,
        rules=rules, config=cfg))
    step_fn = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding,
                             batch_sharding(mesh, rules), replicated(mesh))

    with StopRequests(train_cfg["time_limit_seconds"]) as stops, Checkpointer(
            os.path.join(workdir, "checkpoints"), keep=train_cfg["keep_checkpoints"]) as ckpt:
        writer = MetricsWriter(workdir, enabled=is_main_process())
        latest = ckpt.latest_step()
        if latest == 0 and not ckpt.data_state(0):
            # Imported weights (vlmjax.convert): take the parameters and start this config's
            # optimizer afresh, so fine-tuning and LiT (whose optimizer state has another
            # structure) both start from them.
            state = layout.from_params(
                ckpt.restore_params(0, layout.abstract["params"], layout.sharding["params"]))
            start = 0
            log.info("starting from the imported weights in %s", ckpt.directory)
        elif latest is not None:
            state, data_state, start = ckpt.restore(None, layout.abstract)
            iterator.set_state(data_state)
            writer.truncate_after(start)
            log.info("resumed from step %d", start)
        else:
            state, start = layout.init(cfg["seed"], model_builder(
                cfg, tokenizer.vocab_size, context_length)), 0
            writer.truncate_after(0)  # rows of a run killed before its first checkpoint
        save_config(config, workdir)  # only once the checkpoint (if any) matched the config
        try:
            results = _run_steps(cfg, workdir, state, start, iterator, step_fn, ckpt, writer,
                                 evaluators, batch_sharding(mesh, rules), stops)
        finally:
            writer.close()
    if is_main_process():
        plot_curves(writer.path, os.path.join(workdir, "curves.png"),
                    ("loss", "learning_rate", "logit_scale",
                     *(f"{e.name}/acc1" for e in evaluators)))
        if results:
            print_results(results)
    return results


def _run_steps(cfg: Mapping, workdir: str, state: dict, start: int, iterator: Any,
               step_fn: Any, ckpt: Checkpointer, writer: MetricsWriter, evaluators: list,
               sharding: jax.sharding.NamedSharding, stops: StopRequests) -> dict:
    """Steps start+1 .. num_steps with logging, checkpoints and periodic evaluation.

    A stop request (signal, time limit) ends it after the current step with a checkpoint of
    that step and TrainingStoppedError.
    """
    train_cfg = cfg["train"]
    prefetcher = DevicePrefetcher(iterator, sharding, cfg["data"]["prefetch"])
    num_steps, results = train_cfg["num_steps"], {}
    bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not is_main_process())
    window_start, window_steps = time.perf_counter(), 0
    skips = SkipMonitor(train_cfg["max_consecutive_skips"],
                        lambda: (ckpt.finish_pending(), ckpt.last_good_message())[1])
    try:
        for step in range(start + 1, num_steps + 1):
            batch, data_state = next(prefetcher)
            state, metrics = step_fn(state, batch)
            skips.push(step, metrics["update_skipped"])  # reads the previous step's flag
            window_steps += 1
            bar.update(1)
            if step % train_cfg["log_every"] == 0 or step == num_steps:
                skips.flush()
                metrics = jax.device_get(metrics)  # the only host sync in the loop
                metrics["update_skipped"] = skips.take_window()  # since the last row
                elapsed = time.perf_counter() - window_start
                metrics["images_per_second"] = window_steps * train_cfg["batch_size"] / elapsed
                metrics.update(skip_metrics(data_state))  # image_text: bad samples skipped so far
                writer.write(step, metrics)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                                img_s=f"{metrics['images_per_second']:.0f}")
                window_start, window_steps = time.perf_counter(), 0
            stop = stops.should_stop(step)  # the same step on every process
            if stop or step % train_cfg["checkpoint_every"] == 0 or step == num_steps:
                ckpt.save(step, state, data_state)
            if stop:
                raise TrainingStoppedError(f"{stops.reason}: wrote the checkpoint of step {step} "
                                           f"to {ckpt.directory}; run the same command to resume")
            eval_every = train_cfg["eval_every"]
            if evaluators and (step == num_steps or (eval_every and step % eval_every == 0)):
                results = run_evaluators(evaluators, state["params"], step, workdir, writer)
                window_start, window_steps = time.perf_counter(), 0
        if start >= num_steps and evaluators:
            results = run_evaluators(evaluators, state["params"], start, workdir, writer)
    finally:
        bar.close()
        prefetcher.close()
    return results
