"""The one train loop: every objective, model and mesh goes through `train(config, workdir)`."""

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from vlmjax.config import validate
from vlmjax.config.schema import complete
from vlmjax.data.image_text_pipeline import skip_metrics
from vlmjax.data.normalization import Normalization
from vlmjax.data.prefetch import DevicePrefetcher, process_rows
from vlmjax.data.registry import get_train_source
from vlmjax.errors import TrainingStoppedError
from vlmjax.evaluators.registry import Scheduled, build_evaluators
from vlmjax.evaluators.report import print_results, write_results
from vlmjax.objectives.registry import get_objective
from vlmjax.parallel.mesh import batch_sharding, make_mesh, replicated
from vlmjax.train.checkpoint import Checkpointer, checkpoint_bytes
from vlmjax.train.distill_teacher import adopt_teacher_tokenizer, attach_teacher, resolve_teacher
from vlmjax.train.eval_context import eval_context
from vlmjax.train.metrics_writer import MetricsWriter, plot_curves
from vlmjax.train.preemption import StopRequests
from vlmjax.train.run_config import check_run_config
from vlmjax.train.skipped_updates import SkipMonitor
from vlmjax.train.state import StateLayout, model_builder, state_layout, weights
from vlmjax.train.step import StepSpec, jit_train_step
from vlmjax.train.workdir import (
    WorkdirLock,
    check_free_disk,
    check_writable,
    has_trained_steps,
    is_main_process,
    save_config,
    tokenizer_for_run,
)

log = logging.getLogger(__name__)


def run_evaluators(evaluators: list[Scheduled], params: dict, step: int, workdir: str,
                   writer: MetricsWriter) -> dict:
    """Runs the evaluators, logs their metrics (replacing rows of an earlier evaluation of the
    same step) and adds them to workdir/results.json."""
    evals = {}
    for evaluator in evaluators:
        start = time.perf_counter()
        evals[evaluator.name] = evaluator.run(params)
        log.info("step %d %s: %s (%.1fs)", step, evaluator.name, evals[evaluator.name],
                 time.perf_counter() - start)
        writer.write(step, {f"{evaluator.name}/{k}": v for k, v in evals[evaluator.name].items()},
                     replace=True)
    results = {"step": int(step), "evals": evals}
    if is_main_process() and evals:
        write_results(workdir, results)
    return results


def _step_spec(cfg: Mapping, layout: StateLayout, mesh: jax.sharding.Mesh) -> StepSpec:
    objective = get_objective(cfg["objective"]["name"])
    return StepSpec(
        graphdef=layout.graphdef, objective=objective,
        objective_options={k: v for k, v in cfg["objective"].items() if k != "name"},
        tx=layout.tx, schedule=layout.schedule,
        post_update=lambda params: layout.family.post_update(params, cfg["model"]),
        locked=layout.locked, normalization=Normalization.from_config(cfg["data"]), mesh=mesh,
        rules=cfg["sharding_rules"], grad_accum_steps=cfg["train"]["grad_accum_steps"],
        seed=cfg["seed"])


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in `workdir`), evaluates, returns results."""
    config = complete(ml_collections.ConfigDict(config.to_dict()))
    config = complete(resolve_teacher(config, workdir))  # distillation: the pinned teacher
    validate(config, jax.device_count(), jax.process_count())
    check_writable(workdir)
    with WorkdirLock(workdir, enabled=is_main_process()):
        keep_config = has_trained_steps(workdir) and os.path.isfile(
            os.path.join(workdir, "config.json"))
        if keep_config:  # before anything is built: the run's config.json must describe it
            check_run_config(config, workdir)
        return _train(config, workdir, keep_config)


def _train(config: ml_collections.ConfigDict, workdir: str, keep_config: bool) -> dict:
    cfg = config.to_dict()
    mesh = make_mesh(cfg["mesh"])
    rules = cfg["sharding_rules"]
    log.info("mesh %s over %d devices (%s)", dict(mesh.shape), jax.device_count(),
             jax.devices()[0].platform)

    adopt_teacher_tokenizer(cfg, workdir)
    tokenizer = tokenizer_for_run(cfg, workdir)
    context_length = cfg["tokenizer"]["context_length"]
    layout = state_layout(cfg, tokenizer.vocab_size, context_length, mesh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layout.abstract["params"]))
    log.info("model %s: %.2fM parameters", cfg["model"]["name"], n_params / 1e6)
    check_free_disk(workdir, checkpoint_bytes(layout.abstract))

    train_cfg = cfg["train"]
    sharding = batch_sharding(mesh, rules)
    rows = process_rows(sharding, train_cfg["batch_size"])
    iterator = get_train_source(cfg["data"]).build(cfg, tokenizer, rows, jax.process_index(),
                                                   jax.process_count())
    evaluators = build_evaluators(cfg["evals"], eval_context(cfg, layout.graphdef, tokenizer, mesh),
                                  default_every=train_cfg["eval_every"])
    step_fn = jit_train_step(_step_spec(cfg, layout, mesh), layout.sharding, sharding,
                             replicated(mesh))

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
            state = attach_teacher(cfg, state, layout)
            writer.truncate_after(0)  # rows of a run killed before its first checkpoint
        if not keep_config:  # written only once the checkpoint (if any) matched the config
            save_config(config, workdir)
        try:
            results = _run_steps(cfg, workdir, state, start, iterator, step_fn, ckpt, writer,
                                 evaluators, sharding, stops)
        finally:
            writer.close()
    if is_main_process():
        plot_curves(writer.path, os.path.join(workdir, "curves.png"),
                    ("loss", "learning_rate", "logit_scale",
                     *(f"{e.name}/acc1" for e in evaluators)))
        if results:
            print_results(results)
    return results


def _progress(num_steps: int, start: int) -> Any:
    """A tqdm bar on a terminal; elsewhere (logs, CI) none: the loop logs a line per log_every."""
    interactive = is_main_process() and sys.stderr.isatty()
    return tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
                disable=not interactive)


def _run_steps(cfg: Mapping, workdir: str, state: dict, start: int, iterator: Any,
               step_fn: Any, ckpt: Checkpointer, writer: MetricsWriter,
               evaluators: list[Scheduled], sharding: jax.sharding.NamedSharding,
               stops: StopRequests) -> dict:
    """Steps start+1 .. num_steps with logging, checkpoints and each evaluator on its schedule.

    A stop request (signal, time limit) ends it after the current step with a checkpoint of
    that step and TrainingStoppedError.
    """
    train_cfg = cfg["train"]
    prefetcher = DevicePrefetcher(iterator, sharding, cfg["data"]["prefetch"])
    num_steps, results = train_cfg["num_steps"], {}
    bar = _progress(num_steps, start)
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
                if bar.disable and is_main_process():
                    log.info("step %d/%d loss %.4f (%.0f images/s)", step, num_steps,
                             metrics["loss"], metrics["images_per_second"])
                window_start, window_steps = time.perf_counter(), 0
            stop = stops.should_stop(step)  # the same step on every process
            if stop or step % train_cfg["checkpoint_every"] == 0 or step == num_steps:
                ckpt.save(step, state, data_state)
            if stop:
                raise TrainingStoppedError(f"{stops.reason}: wrote the checkpoint of step {step} "
                                           f"to {ckpt.directory}; run the same command to resume")
            due = [e for e in evaluators if e.due(step, num_steps)]
            if due:
                results = run_evaluators(due, weights(state), step, workdir, writer)
                window_start, window_steps = time.perf_counter(), 0
        if start >= num_steps and evaluators:
            results = run_evaluators(evaluators, weights(state), start, workdir, writer)
    finally:
        bar.close()
        prefetcher.close()
    return results
