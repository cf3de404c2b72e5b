# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Assemble and run a LLaVA-Med training stage: model -> stage freezing (+ LoRA) -> DeepSpeed -> MONAI trainer.

:func:`build_trainer` returns a ready :class:`~monai_llava_med.engines.DeepSpeedTrainer` (a bundle config can
instantiate it with ``_target_`` and call ``$@trainer.run()``); :func:`run_training` builds, runs and returns a
summary. Both work without a launcher (rank variables are defaulted), under ``torchrun`` and under the
``deepspeed`` launcher.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from ..data import LengthGroupedBatchSampler, LlavaMedCollator
from ..errors import CheckpointError
from ..networks import (
    LlavaMedConfig,
    LlavaMedNet,
    build_llava_med,
    configure_stage,
    load_pretrained,
    load_vision_weights,
)
from .checkpointing import parameter_checksum
from .deepspeed_setup import (
    build_lr_scheduler,
    build_optimizer,
    dist_info,
    init_distributed_env,
    resolve_deepspeed_config,
)
from .lora import apply_lora
from .rank_logging import quiet_ranks, rank_zero_handlers
from .schedule import ResumableBatchSampler, TrainingPlanError, TrainingSchedule
from .train_config import TrainingConfig, stage_preset
from .trainer import ConsolidatedExport, DeepSpeedCheckpointer, DeepSpeedTrainer, LossLogger

__all__ = ["seed_everything", "make_train_loader", "build_trainer", "run_training", "load_run_config"]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_train_loader(
    dataset: Dataset,
    collate_fn: Callable,
    config: TrainingConfig,
    rank: int,
    world_size: int,
) -> DataLoader:
    """A loader whose batch order depends only on ``(seed, epoch)``, split across ranks, resumable.

    Length-grouped batches when ``config.group_by_length`` and the dataset has ``lengths``; else a
    ``DistributedSampler`` (shuffled by ``seed + epoch``) cut into batches.
    """
    lengths = getattr(dataset, "lengths", None) if config.group_by_length else None
    if lengths is not None:
        batches: Any = LengthGroupedBatchSampler(
            lengths, config.micro_batch_size, num_replicas=world_size, rank=rank, seed=config.seed, drop_last=True
        )
    else:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True)
        batches = BatchSampler(sampler, config.micro_batch_size, drop_last=True)
    if len(batches) == 0:
        raise ValueError(f"{len(dataset)} samples do not fill one batch of {config.micro_batch_size} x {world_size} ranks")
    return DataLoader(
        dataset,
        batch_sampler=ResumableBatchSampler(batches),
        collate_fn=collate_fn,
        num_workers=config.num_workers,
        persistent_workers=False,
    )


def _resolve_training(training: TrainingConfig | Mapping[str, Any] | str | None, overrides: Mapping[str, Any]) -> TrainingConfig:
    if isinstance(training, TrainingConfig):
        values = training.to_dict()
        values.update(overrides)
        return TrainingConfig.from_dict(values)
    if isinstance(training, str):
        return stage_preset(training, **overrides)
    values = dict(training or {})
    values.update(overrides)
    preset = values.pop("preset", None)
    return stage_preset(preset, **values) if preset is not None else TrainingConfig(**values)


def _build_model(
    model: LlavaMedNet | None,
    model_config: LlavaMedConfig | Mapping[str, Any] | str | None,
    init_from: str | PathLike | None,
    tokenizer: Any,
    view_options: Mapping[str, Any] | None = None,
) -> tuple[LlavaMedNet, Any]:
    if model is not None:
        if view_options:
            model.config = model.config.with_view_options(**view_options)
        return model, tokenizer
    if init_from is not None:
        loaded, loaded_tok = load_pretrained(init_from, dtype=torch.float32, load_tokenizer=tokenizer is None,
                                             view_options=view_options)
        return loaded, tokenizer if tokenizer is not None else loaded_tok
    if model_config is None:
        raise ValueError("give one of model, init_from (a pretrained folder) or model_config")
    if isinstance(model_config, Mapping):
        model_config = LlavaMedConfig.from_dict(dict(model_config))
    if view_options:
        model_config = model_config.with_view_options(**view_options)
    built = build_llava_med(model_config, dtype=torch.float32)
    if tokenizer is not None:
        image_id = tokenizer.convert_tokens_to_ids(built.config.image_token)
        if image_id != built.config.image_token_id:
            raise ValueError(f"the tokenizer maps <image> to {image_id}, the model config to {built.config.image_token_id}")
    return built, tokenizer


def _dataset_from_json(
    data_json: str | PathLike, image_root: str | PathLike | None, tokenizer: Any, model: LlavaMedNet,
    config: TrainingConfig, image_loader: Callable | None, max_views: int | None = 1,
) -> Dataset:
    from ..data import LlavaMedDataset, load_llava_med_json

    if image_loader is None:
        from ..transforms import pixels_from_config

        image_loader = pixels_from_config(model.config, max_views=max_views)
    records = load_llava_med_json(data_json, image_root)
    return LlavaMedDataset(
        records,
        tokenizer,
        template=config.template,
        num_image_tokens=model.config.num_image_tokens,
        image_token_id=model.config.image_token_id,
        image_loader=image_loader,
        max_length=config.max_length,
    )


def _check_batch_arithmetic(
    config: TrainingConfig, train_data: Dataset | None, data_json: str | PathLike | None,
    image_root: str | PathLike | None, world_size: int,
) -> TrainingSchedule:
    """Refuse batch sizes the data cannot fill (micro batch x ranks x accumulation > samples) before any model.

    Raises:
        TrainingPlanError: with the numbers, the data file and what to change.
        ValueError: a global batch that is not a multiple of micro batch x ranks.
    """
    from ..data import load_llava_med_json

    if train_data is not None:
        num_samples, source = len(train_data), None  # type: ignore[arg-type]
    else:
        num_samples, source = len(load_llava_med_json(data_json, image_root)), data_json  # type: ignore[arg-type]
    try:
        ds = resolve_deepspeed_config(config.deepspeed, config, world_size)  # an explicit DeepSpeed value wins
    except ValueError as err:
        raise TrainingPlanError(str(err), source) from err
    return TrainingSchedule.for_samples(
        num_samples, int(ds["train_micro_batch_size_per_gpu"]), world_size, int(ds["gradient_accumulation_steps"]),
        config.num_epochs, config.max_steps, source,
    )


def build_trainer(
    training: TrainingConfig | Mapping[str, Any] | str | None = None,
    *,
    train_data: Dataset | None = None,
    data_json: str | PathLike | None = None,
    image_root: str | PathLike | None = None,
    image_loader: Callable | None = None,
    max_views: int | None = 1,
    model: LlavaMedNet | None = None,
    model_config: LlavaMedConfig | Mapping[str, Any] | str | None = None,
    init_from: str | PathLike | None = None,
    tokenizer: Any = None,
    handlers: Sequence | None = None,
    export_name: str | None = None,
    max_epochs: int | None = None,
    view_options: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DeepSpeedTrainer:
    """Build a DeepSpeed-backed MONAI trainer for one stage of the recipe.

    Args:
        training: a :class:`TrainingConfig`, its dict (``"preset": "stage1"`` picks the stage defaults), or a
            stage name (``"stage1"``, ``"stage2"``, ``"finetune"``).
        train_data: a dataset of tokenised samples (``LlavaMedDataset``, ``PhantomVQADataset``...).
        data_json: instead of ``train_data``: a LLaVA-Med JSON (alignment / instruct format).
        image_root: folder of the JSON's images (default: the JSON's folder).
        image_loader: ``path -> pixels`` for ``data_json`` (default ``pixels_from_config(model.config)``, the
            pipeline inference uses).
        max_views: views per image file (slices of a volume, tiles of a slide) of the default ``image_loader``
            (``None``: the model config's ``max_views``).
        model: a network to train (else built from ``init_from`` or ``model_config``).
        model_config: config, dict or preset name, for a network initialised at random (read a config file
            with ``LlavaMedConfig.load(path)``).
        init_from: a pretrained folder (any layout ``load_pretrained`` reads), e.g. the stage-1 export.
        tokenizer: the tokenizer (default: the one in ``init_from``).
        handlers: extra MONAI/Ignite handlers (``StatsHandler``, ``TensorBoardStatsHandler``, ``ValidationHandler``...).
        export_name: ``config.name`` written into the exported model.
        max_epochs: MONAI's name for ``num_epochs`` (what bundle configs set); overrides it when given.
        view_options: ``token_pool`` / ``max_views`` / ``view_mode`` set on the model's config before training
            (``None`` values keep it; :meth:`~monai_llava_med.networks.LlavaMedConfig.with_view_options`), e.g.
            ``{"token_pool": 2}`` to train the projector of v1.5 weights on pooled features; the export keeps them.
        overrides: :class:`TrainingConfig` fields overriding ``training``.

    Returns:
        The trainer; call ``run()``. ``trainer.exporter.exported`` is the exported folder afterwards (rank 0).
    """
    import deepspeed

    if max_epochs is not None:
        overrides = {**overrides, "num_epochs": int(max_epochs)}
    config = _resolve_training(training, overrides)
    init_distributed_env()
    quiet_ranks(int(os.environ["RANK"]))
    # everything that can be refused without a model, before the model is loaded
    DeepSpeedCheckpointer(Path(config.output_dir) / "checkpoints", resume=config.resume, restart=config.restart).check()
    if train_data is None and data_json is None:
        raise ValueError("give train_data (a dataset) or data_json (a LLaVA-Med JSON file)")
    _check_batch_arithmetic(config, train_data, data_json, image_root, int(os.environ["WORLD_SIZE"]))
    if config.vision_weights is not None and not Path(config.vision_weights).is_file():
        raise CheckpointError("vision_weights: no such file", config.vision_weights)
    seed_everything(config.seed)
    model, tokenizer = _build_model(model, model_config, init_from, tokenizer, view_options)
    if tokenizer is None:
        raise ValueError("a tokenizer is needed (pass tokenizer=, or init_from a folder that holds one)")
    if config.vision_weights is not None:
        load_vision_weights(model.vision_tower, config.vision_weights)
    configure_stage(model, config.stage, train_vision=config.train_vision)
    if config.lora is not None:
        apply_lora(model, config.lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if train_data is None:
        train_data = _dataset_from_json(data_json, image_root, tokenizer, model, config, image_loader, max_views)

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, local_rank, world_size = dist_info()
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ds_config = resolve_deepspeed_config(config.deepspeed, config, world_size, trainable)
    collator = LlavaMedCollator(
        tokenizer.pad_token_id,
        "right",
        image_token_id=model.config.image_token_id,
        num_image_tokens=model.config.num_image_tokens,
    )
    loader = make_train_loader(train_data, collator, config, rank, world_size)
    accumulation = ds_config["gradient_accumulation_steps"]
    schedule = TrainingSchedule(len(loader), accumulation, config.num_epochs, config.max_steps)
    total_steps, epoch_length = schedule.total_steps, schedule.epoch_length
    optimizer = build_optimizer(model, config, ds_config)
    scheduler = build_lr_scheduler(optimizer, config, total_steps)
    ds_engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)

    out_dir = Path(config.output_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        config.save(out_dir / "training_config.json")
        (out_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2) + "\n")
    checkpointer = DeepSpeedCheckpointer(
        out_dir / "checkpoints", config.save_every_n_steps, config.keep_last_checkpoints, resume=config.resume,
        restart=config.restart,
    )
    all_handlers: list[Any] = [LossLogger(out_dir / "loss_log.jsonl", config.log_every_n_steps)]
    exporter = ConsolidatedExport(out_dir / "model", tokenizer, config.lora, export_name) if config.export else None
    if exporter is not None:
        all_handlers.append(exporter)
    all_handlers.extend(rank_zero_handlers(handlers, rank))
    trainer = DeepSpeedTrainer(
        ds_engine,
        max_epochs=config.num_epochs,
        train_data_loader=loader,
        checkpointer=checkpointer,
        handlers=all_handlers,
        schedule=schedule,
    )
    trainer.training_config = config
    trainer.tokenizer = tokenizer
    trainer.exporter = exporter
    logger.info(
        "%s: %d rank(s), %d micro-batches/epoch, accumulation %d, %d optimizer steps, ZeRO-%s",
        config.stage, world_size, epoch_length, accumulation, total_steps,
        ds_config.get("zero_optimization", {}).get("stage", 0),
    )
    return trainer


def load_run_config(path: str | PathLike, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read a run description (JSON or YAML) for :func:`run_training`, resolved by MONAI's ``ConfigParser``.

    Components written as ``{"_target_": ...}``, ``@references`` and ``$expressions`` are instantiated, so a
    run file can build its tokenizer and dataset like a bundle config does.

    Args:
        path: the JSON/YAML file.
        overrides: ``{"training#max_steps": 10, ...}`` set before parsing (ConfigParser ids).
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(path))
    for key, value in (overrides or {}).items():
        head = key.split("#")[0]
        if "#" in key and head not in parser.config:
            parser[head] = {}
        parser[key] = value
    values = parser.get_parsed_content("", instantiate=True)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a run config must be a mapping")
    return {k: v for k, v in values.items() if k != "_meta_"}  # ConfigParser adds an empty _meta_ section


def run_training(run: Mapping[str, Any] | str | PathLike | None = None, **kwargs: Any) -> dict[str, Any]:
    """Build and run one training stage; the entry point for Python, the CLI and bundle configs.

    Args:
        run: a mapping (or JSON/YAML path) of :func:`build_trainer` keyword arguments, e.g.
            ``{"training": {"preset": "stage1", "output_dir": "runs/s1"}, "data_json": "align.json",
            "init_from": "base_model"}``.
        kwargs: more :func:`build_trainer` arguments (override ``run``; unknown ones are training overrides).

    Returns:
        ``{"output_dir", "exported", "iterations", "optimizer_steps", "final_loss", "resumed_from",
        "weights_checksum", "rank"}`` (the checksum is computed on every rank from the full weights).
    """
    values: dict[str, Any] = {}
    if run is not None:
        values.update(load_run_config(run) if isinstance(run, (str, PathLike)) else dict(run))
    values.update(kwargs)
    trainer = build_trainer(**values)
    trainer.run()
    output = trainer.state.output or {}
    exported = trainer.exporter.exported if trainer.exporter is not None else None
    return {
        "output_dir": trainer.training_config.output_dir,
        "exported": str(exported) if exported is not None else None,
        "iterations": trainer.state.iteration,
        "optimizer_steps": trainer.optimizer_steps,
        "final_loss": float(output["loss"]) if "loss" in output else None,
        "resumed_from": trainer.resumed_from,
        "weights_checksum": parameter_checksum(trainer.ds_engine),
        "rank": int(os.environ.get("RANK", 0)),
    }
