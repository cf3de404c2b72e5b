# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Checkpoint I/O: the released LLaVA-Med v1.5 layout, the HF Llava layout, and our own.

Three folder layouts are read by :func:`load_pretrained`:

* ``llava_med`` (ours): ``llava_med_config.json`` + ``model.safetensors`` (or shards + index) + tokenizer.
* ``llava_med_v15`` (the released ``microsoft/llava-med-v1.5-mistral-7b``): ``config.json`` with
  ``model_type: llava_mistral``, sharded safetensors with ``model.mm_projector.*`` and the CLIP weights under
  ``model.vision_tower.vision_tower.*``, a sentencepiece tokenizer.
* ``hf_llava`` (``LlavaForConditionalGeneration``): 4.x names (``language_model.model.*``,
  ``multi_modal_projector.*``, ``vision_tower.*``) or 5.x names (``model.language_model.*``...).

:func:`export_hf_llava` writes the HF Llava layout (4.x key names, which transformers 5, vLLM and SGLang
all read). Weights are only read with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from monai.utils import optional_import

from ..errors import CheckpointError
from .config import CONFIG_NAME, LlavaMedConfig, clip_vit_l14_336_config
from .llava_med import LlavaMedNet, build_llava_med, default_dtype

safetensors_torch, _ = optional_import("safetensors.torch")
init_empty_weights, has_accelerate = optional_import("accelerate", name="init_empty_weights")

__all__ = [
    "detect_layout",
    "read_state_dict",
    "convert_state_dict",
    "config_from_folder",
    "load_state_dict_strict",
    "load_pretrained",
    "save_pretrained",
    "export_hf_llava",
    "assemble_from_parts",
]

logger = logging.getLogger(__name__)

_KNOWN_VISION_TOWERS: dict[str, Callable[[], dict[str, Any]]] = {
    "openai/clip-vit-large-patch14-336": clip_vit_l14_336_config,
    "openai/clip-vit-large-patch14": lambda: {**clip_vit_l14_336_config(), "image_size": 224},
}
# Buffers some writers store but that are recomputed at construction.
_IGNORED_KEYS = re.compile(r"(rotary_emb\.inv_freq|embeddings\.position_ids)$")
_TEXT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "sliding_window",
    "attention_bias",
    "mlp_bias",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


# ---------------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read JSON: {err}", path) from err


def detect_layout(folder: str | PathLike) -> str:
    """Name the layout of a checkpoint folder: ``llava_med``, ``llava_med_v15`` or ``hf_llava``.

    Raises:
        CheckpointError: for a missing folder or an unrecognised config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError("checkpoint folder does not exist", folder)
    if (folder / CONFIG_NAME).is_file():
        return "llava_med"
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"neither {CONFIG_NAME} nor config.json found: not a model folder", folder)
    raw = _read_json(folder / "config.json")
    model_type = str(raw.get("model_type", ""))
    if model_type in ("llava_mistral", "llava_llama", "llava_med"):
        return "llava_med_v15"
    if model_type == "llava":
        # original-LLaVA folders (LlavaLlamaForCausalLM) also say "llava" but keep the native key layout
        architecture = _architecture(raw)
        if "mm_vision_tower" in raw or "mm_projector_type" in raw or architecture.endswith("ForCausalLM"):
            return "llava_med_v15"
        if architecture == "LlavaForConditionalGeneration" or "vision_config" in raw or "text_config" in raw:
            return "hf_llava"
        raise CheckpointError(
            "config.json has model_type 'llava' but neither mm_vision_tower (native LLaVA layout) nor "
            "vision_config/text_config (HF Llava layout)",
            folder,
        )
    raise CheckpointError(f"config.json has model_type {model_type!r}; expected llava_mistral or llava", folder)


def _architecture(raw: Mapping[str, Any]) -> str:
    architectures = raw.get("architectures") or [""]
    return str(architectures[0]) if isinstance(architectures, list) else str(architectures)


def _weight_files(folder: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = folder / index_name
        if index_path.is_file():
            weight_map = _read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError("index has no weight_map", index_path)
            files = [folder / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"shards listed in the index are missing: {missing}", index_path)
            return files
    for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError("no weights found (model.safetensors, shards + index, or pytorch_model.bin)", folder)


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return safetensors_torch.load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError / OSError
            raise CheckpointError(f"cannot read safetensors file: {err}", path) from err
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) torch.save files cannot be memory-mapped; still weights_only
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            "refused: this pickle needs arbitrary code to load (torch.load(weights_only=True) failed); "
            "convert it to safetensors with a trusted tool",
            path,
        ) from err
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"cannot read weights: {err}", path) from err
    if isinstance(loaded, Mapping) and "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError("file does not hold a state dict of tensors", path)
    return dict(loaded)


def read_state_dict(folder: str | PathLike) -> dict[str, torch.Tensor]:
    """Read every weight of a checkpoint folder (single file, or shards listed in an index)."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(Path(folder)):
        state.update(_read_file(path))
    return state


# --------------------------------------------------------------------------------------------------- key maps
_KEY_RULES: dict[str, list[tuple[str, str]]] = {
    "llava_med": [],
    "llava_med_v15": [
        ("model.mm_projector.", "projector."),
        ("model.vision_tower.vision_tower.", "vision_tower."),
        ("lm_head.", "language_model.lm_head."),
        ("model.", "language_model.model."),
    ],
    "hf_llava": [
        # transformers 5.x names
        ("model.multi_modal_projector.linear_", "projector.#"),
        ("model.vision_tower.", "vision_tower."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        # transformers 4.x names
        ("multi_modal_projector.linear_", "projector.#"),
        ("vision_tower.", "vision_tower."),
        ("language_model.", "language_model."),
    ],
}


def _rename(key: str, layout: str) -> str:
    for old, new in _KEY_RULES[layout]:
        if key.startswith(old):
            rest = key[len(old) :]
            if new.endswith("#"):  # linear_{1,2}.weight -> {0,2}.weight
                index, _, tail = rest.partition(".")
                return f"{new[:-1]}{2 * (int(index) - 1)}.{tail}"
            return new + rest
    return key


def convert_state_dict(
    state: Mapping[str, torch.Tensor], layout: str, expected_keys: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Rename a state dict of ``layout`` to :class:`LlavaMedNet` names.

    Args:
        state: weights as read from the folder.
        layout: one of the names returned by :func:`detect_layout`.
        expected_keys: the target model's keys; used to reconcile CLIP's optional ``vision_model.`` prefix,
            which transformers versions name differently.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _IGNORED_KEYS.search(key):
            continue
        new = _rename(key, layout)
        if expected_keys is not None and new.startswith("vision_tower.") and new not in expected_keys:
            alternative = (
                new.replace("vision_tower.vision_model.", "vision_tower.", 1)
                if new.startswith("vision_tower.vision_model.")
                else new.replace("vision_tower.", "vision_tower.vision_model.", 1)
            )
            new = alternative if alternative in expected_keys else new
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------------- configs
def _vision_config_from_weights(state: Mapping[str, torch.Tensor], folder: Path) -> dict[str, Any]:
    prefix = next((k.split("embeddings.patch_embedding.weight")[0] for k in state if "patch_embedding.weight" in k), None)
    if prefix is None:
        raise CheckpointError("no vision tower weights in the checkpoint and its mm_vision_tower is unknown", folder)
    patch = state[prefix + "embeddings.patch_embedding.weight"]
    positions = state[prefix + "embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.search(r"encoder\.layers\.(\d+)\.", k)))
    hidden = int(patch.shape[0])
    grid = int(round((positions - 1) ** 0.5))
    return {
        "model_type": "clip_vision_model",
        "hidden_size": hidden,
        "intermediate_size": int(state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),  # CLIP ViTs use 64-wide heads
        "image_size": grid * int(patch.shape[-1]),
        "patch_size": int(patch.shape[-1]),
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }


def _reference_vision_config(
    raw: dict[str, Any], state: Mapping[str, torch.Tensor] | None, folder: Path
) -> dict[str, Any]:
    tower = str(raw.get("mm_vision_tower", ""))
    if tower in _KNOWN_VISION_TOWERS:
        return _KNOWN_VISION_TOWERS[tower]()
    tower_path = Path(tower) if tower else None
    if tower_path is not None and not tower_path.is_absolute():
        tower_path = folder / tower_path
    if tower_path is not None and (tower_path / "config.json").is_file():
        from transformers import CLIPVisionConfig

        return {"model_type": "clip_vision_model", **CLIPVisionConfig.from_pretrained(str(tower_path)).to_diff_dict()}
    logger.info("vision tower %r is not a known id: inferring its shape from the checkpoint weights", tower)
    return _vision_config_from_weights(read_state_dict(folder) if state is None else state, folder)


def _model_name(folder: Path) -> str:
    """The folder's name; the repo name for a hub-cache snapshot ``models--{org}--{name}/snapshots/{sha}``."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return folder.parent.parent.name.split("--", 2)[-1]
    return folder.name


def _hf_preprocessing(folder: Path) -> dict[str, Any]:
    """Config fields recorded by an HF Llava folder's ``preprocessor_config.json`` / ``tokenizer_config.json``."""
    out: dict[str, Any] = {}
    if (folder / "preprocessor_config.json").is_file():
        processor = _read_json(folder / "preprocessor_config.json")
        if "do_pad" in processor:
            out["image_aspect_ratio"] = "pad" if processor["do_pad"] else "resize"
        for key in ("image_mean", "image_std"):
            values = processor.get(key)
            if isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values):
                out[key] = tuple(float(v) for v in values)
    if (folder / "tokenizer_config.json").is_file():
        max_length = _read_json(folder / "tokenizer_config.json").get("model_max_length")
        if isinstance(max_length, int) and 0 < max_length < 1_000_000_000:  # transformers writes 1e30 for "unset"
            out["model_max_length"] = max_length
    return out


def config_from_folder(folder: str | PathLike, state: Mapping[str, torch.Tensor] | None = None) -> LlavaMedConfig:
    """Build a :class:`LlavaMedConfig` from a checkpoint folder of any supported layout.

    Args:
        folder: the checkpoint folder.
        state: its weights if already read; used when the vision tower must be inferred from shapes (the
            weights are read on demand otherwise).
    """
    folder = Path(folder)
    layout = detect_layout(folder)
    if layout == "llava_med":
        return LlavaMedConfig.load(folder)
    raw = _read_json(folder / "config.json")
    if layout == "llava_med_v15":
        if raw.get("mm_use_im_start_end") or raw.get("mm_use_im_patch_token"):
            raise CheckpointError(
                "LLaVA-Med v1.0 layouts with <im_start>/<im_patch> tokens are not supported; use v1.5 weights",
                folder,
            )
        text = {k: raw[k] for k in _TEXT_FIELDS if k in raw}
        mistral = raw["model_type"] == "llava_mistral" or "Mistral" in _architecture(raw)
        text["model_type"] = "mistral" if mistral else "llama"
        return LlavaMedConfig(
            vision_config=_reference_vision_config(raw, state, folder),
            text_config=text,
            vision_feature_layer=int(raw.get("mm_vision_select_layer", -2)),
            vision_feature_select_strategy=str(raw.get("mm_vision_select_feature", "patch")),
            projector_type=str(raw.get("mm_projector_type", "linear")),
            image_token_id=int(raw.get("vocab_size", 32000)),  # replaced by the tokenizer's <image> id
            image_aspect_ratio="pad" if raw.get("image_aspect_ratio", "pad") == "pad" else "resize",
            model_max_length=int(raw.get("tokenizer_model_max_length", 2048)),
            name=_model_name(folder),
        )
    from transformers import LlavaConfig

    try:
        hf = LlavaConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"cannot parse the Llava config.json: {err}", folder) from err
    if hf.vision_config.model_type not in ("clip_vision_model", "clip"):
        raise CheckpointError(f"vision tower {hf.vision_config.model_type!r} is not CLIP; unsupported", folder)
    if not isinstance(hf.vision_feature_layer, int):
        raise CheckpointError("multi-layer vision_feature_layer is not supported", folder)
    if hf.projector_hidden_act != "gelu" or not hf.multimodal_projector_bias:
        raise CheckpointError("only a 2-layer GELU projector with bias (mlp2x_gelu) is supported", folder)
    text = {"model_type": hf.text_config.model_type}
    text.update({k: getattr(hf.text_config, k) for k in _TEXT_FIELDS if getattr(hf.text_config, k, None) is not None})
    vision = {"model_type": "clip_vision_model", **hf.vision_config.to_diff_dict()}
    vision.pop("transformers_version", None)
    return LlavaMedConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=hf.vision_feature_layer,
        vision_feature_select_strategy="patch" if hf.vision_feature_select_strategy == "default" else "cls_patch",
        projector_type="mlp2x_gelu",
        image_token_id=int(hf.image_token_id),
        name=_model_name(folder),
        **_hf_preprocessing(folder),
    )


# ------------------------------------------------------------------------------------------------ loading
def load_state_dict_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | PathLike) -> None:
    """Load weights, refusing missing keys, unexpected keys and shape mismatches with a full list.

    Args:
        model: target module (may hold meta tensors; they are replaced).
        state: weights with the module's names.
        source: the folder, named in errors.

    Raises:
        CheckpointError: listing every missing / unexpected key and every mismatched shape (both shapes).
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_preview(mismatched)}")
    if problems:
        raise CheckpointError("; ".join(problems), source)
    model.load_state_dict(state, strict=True, assign=True)


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def _resolve_folder(path: str | PathLike) -> Path:
    folder = Path(path)
    if folder.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        return folder
    from huggingface_hub import snapshot_download  # hub ids only; honours HF_HUB_OFFLINE

    try:
        return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja"]))
    except Exception as err:  # network / offline / auth errors of the hub client
        raise CheckpointError(f"not a local folder and the hub download failed: {err}", path) from err


def load_pretrained(
    path: str | PathLike,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    load_tokenizer: bool = True,
) -> tuple[LlavaMedNet, Any]:
    """Load a LLaVA-Med network (and its tokenizer) from a local folder of any supported layout.

    Args:
        path: a folder in our layout, the released LLaVA-Med v1.5 layout or the HF Llava layout; a hub id
            (``org/name``) is downloaded unless ``HF_HUB_OFFLINE=1``.
        dtype: parameter dtype; default :func:`~monai_llava_med.networks.default_dtype` (fp32 CPU, bf16 GPU).
        device: target device (default CPU).
        load_tokenizer: also load the tokenizer (``<image>`` and a pad token added when absent).

    Returns:
        ``(model, tokenizer)``; ``tokenizer`` is ``None`` when ``load_tokenizer`` is false. The model is in
        eval mode; ``model.config.image_token_id`` matches the tokenizer's ``<image>`` id.

    Raises:
        CheckpointError: for an unreadable folder, config or weights, or weights that do not fit.
    """
    folder = _resolve_folder(path)
    layout = detect_layout(folder)
    config = config_from_folder(folder)
    tokenizer = None
    if load_tokenizer:
        from ..conversation import load_tokenizer as _load_tokenizer

        tokenizer = _load_tokenizer(folder, model_max_length=config.model_max_length)
        image_id = tokenizer.convert_tokens_to_ids(config.image_token)
        if layout == "llava_med" and image_id != config.image_token_id:
            raise CheckpointError(
                f"tokenizer maps {config.image_token} to {image_id} but the config says {config.image_token_id}", folder
            )
        config.image_token_id = int(image_id)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or default_dtype(device)
    if has_accelerate:
        with init_empty_weights(include_buffers=False):
            model = LlavaMedNet(config)
    else:
        model = build_llava_med(config, dtype=torch.float32)
    state = convert_state_dict(read_state_dict(folder), layout, set(model.state_dict()))
    load_state_dict_strict(model, state, folder)
    model = model.to(dtype=dtype, device=device).eval()
    logger.info("loaded %s (%s layout) from %s", config.name, layout, folder.name)
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ writing
def _save_weights(state: dict[str, torch.Tensor], out_dir: Path, max_shard_size: int | str) -> None:
    from huggingface_hub import save_torch_state_dict

    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_torch_state_dict(state, out_dir, max_shard_size=max_shard_size, metadata={"format": "pt"})


def save_pretrained(
    model: LlavaMedNet, out_dir: str | PathLike, tokenizer: Any = None, max_shard_size: int | str = "5GB"
) -> Path:
    """Write the network in our layout: ``llava_med_config.json``, safetensors weights and the tokenizer.

    Args:
        model: the network.
        out_dir: destination folder (created).
        tokenizer: optional tokenizer saved beside the weights (``load_pretrained`` needs one).
        max_shard_size: shard the weights above this size (``"5GB"``, or bytes).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.config.save(out / CONFIG_NAME)
    _save_weights(dict(model.state_dict()), out, max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out


def _hf_llava_state(model: LlavaMedNet, vocab: int) -> dict[str, torch.Tensor]:
    """Our weights under the transformers 4.x Llava names (embeddings grown to ``vocab`` rows)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("projector."):
            index, _, tail = key[len("projector.") :].partition(".")
            new = f"multi_modal_projector.linear_{int(index) // 2 + 1}.{tail}"
        elif key.startswith("vision_tower."):
            rest = key[len("vision_tower.") :]
            new = "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
        else:
            new = key
        if key in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight") and value.shape[0] < vocab:
            extra = value.float().mean(0, keepdim=True).expand(vocab - value.shape[0], -1).to(value.dtype)
            value = torch.cat([value, extra], 0)
        out[new] = value
    return out


def export_hf_llava(model: LlavaMedNet, tokenizer: Any, out_dir: str | PathLike, max_shard_size: int | str = "5GB") -> Path:
    """Export to the HF Llava layout that ``LlavaForConditionalGeneration.from_pretrained``, vLLM and SGLang load.

    The image token must be inside the vocabulary there, so when ``image_token_id`` (or the tokenizer) lies
    beyond the embedding matrix, the embeddings and LM head grow to a multiple of 64 rows; the new rows are
    the mean of the old ones (as transformers' resize does). The LLaVA "pad" preprocessing is recorded as a
    ``LlavaImageProcessor`` with ``do_pad`` so servers pad images to a square like the model saw.

    Args:
        model: the network (its projector must be ``mlp2x_gelu``).
        tokenizer: its tokenizer (holding ``<image>``).
        out_dir: destination folder (created).
        max_shard_size: shard the weights above this size.

    Raises:
        ValueError: when the projector or vision tower cannot be expressed as HF Llava.
    """
    from transformers import GenerationConfig, LlavaConfig

    config = model.config
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(f"HF Llava only has a 2-layer GELU projector; this model uses {config.projector_type!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = model.language_model.get_input_embeddings().num_embeddings
    needed = max(rows, len(tokenizer), config.image_token_id + 1)
    vocab = rows if needed == rows else -(-needed // 64) * 64
    text = model.language_model.config.to_diff_dict()
    for key in ("transformers_version", "architectures", "dtype", "torch_dtype", "_name_or_path"):
        text.pop(key, None)
    text["vocab_size"] = vocab
    text["model_type"] = model.language_model.config.model_type
    vision = {k: v for k, v in config.vision_config.items() if k != "transformers_version"}
    hf_config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=config.image_token_id,
        image_seq_length=config.num_image_tokens,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy="default" if config.vision_feature_select_strategy == "patch" else "full",
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )
    hf_config.architectures = ["LlavaForConditionalGeneration"]
    hf_config.dtype = str(model.dtype).removeprefix("torch.")
    if tokenizer.pad_token_id is not None:
        hf_config.pad_token_id = tokenizer.pad_token_id
    hf_config.save_pretrained(str(out))
    lm_config = model.language_model.config
    GenerationConfig(bos_token_id=lm_config.bos_token_id, eos_token_id=lm_config.eos_token_id).save_pretrained(str(out))
    _save_weights(_hf_llava_state(model, vocab), out, max_shard_size)
    tokenizer.save_pretrained(str(out))
    processor = {
        "image_processor_type": "LlavaImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_pad": config.image_aspect_ratio == "pad",
        "do_resize": True,
        "size": {"shortest_edge": config.image_size},
        "do_center_crop": True,
        "crop_size": {"height": config.image_size, "width": config.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.image_mean),
        "image_std": list(config.image_std),
        "do_convert_rgb": True,
        "resample": 3,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    (out / "processor_config.json").write_text(
        json.dumps(
            {"processor_class": "LlavaProcessor", "image_token": config.image_token, "patch_size": config.patch_size,
             "vision_feature_select_strategy": hf_config.vision_feature_select_strategy, "num_additional_image_tokens": 1},
            indent=2,
        )
        + "\n"
    )
    return out


def assemble_from_parts(
    vision_dir: str | PathLike,
    language_dir: str | PathLike,
    out_dir: str | PathLike | None = None,
    projector_type: str = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "patch",
    name: str = "llava-med-init",
    seed: int = 0,
) -> tuple[LlavaMedNet, Any]:
    """Build the starting point of stage 1: a pretrained CLIP tower + a pretrained LLM + a fresh projector.

    Args:
        vision_dir: a local CLIP folder (``CLIPModel`` or ``CLIPVisionModel`` weights, e.g.
            ``openai/clip-vit-large-patch14-336``); only the vision half is kept.
        language_dir: a local causal-LM folder (Mistral or Llama, e.g. ``Mistral-7B-Instruct-v0.2``) with its
            tokenizer; ``<image>`` and a pad token are added to the tokenizer when absent. When the added pad
            token (or any other token but ``<image>``) lies beyond the LLM's embedding rows, the embeddings and
            LM head are resized to cover it (new rows = mean of the old ones).
        out_dir: when given, the result is written there with :func:`save_pretrained` (the ``init_from`` of
            stage 1).
        projector_type: ``linear`` or ``mlp{N}x_gelu``.
        vision_feature_layer: hidden state fed to the projector.
        vision_feature_select_strategy: ``patch`` or ``cls_patch``.
        name: ``config.name`` of the result.
        seed: seed of the projector's random initialisation.

    Returns:
        ``(model, tokenizer)`` in fp32.

    Raises:
        CheckpointError: when a folder is missing or is not a CLIP / supported causal LM.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel

    from ..conversation import IMAGE_TOKEN
    from ..conversation import load_tokenizer as _load_tokenizer

    vision_dir, language_dir = Path(vision_dir), Path(language_dir)
    for folder in (vision_dir, language_dir):
        if not (folder / "config.json").is_file():
            raise CheckpointError("not a model folder (no config.json)", folder)
    try:
        vision_config = CLIPVisionConfig.from_pretrained(str(vision_dir))
        text_config = AutoConfig.from_pretrained(str(language_dir))
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"cannot read the component configs: {err}", vision_dir) from err
    tokenizer = _load_tokenizer(language_dir)
    text = {"model_type": text_config.model_type}
    text.update({k: getattr(text_config, k) for k in _TEXT_FIELDS if getattr(text_config, k, None) is not None})
    vision = {"model_type": "clip_vision_model", **vision_config.to_diff_dict()}
    for values in (vision, text):
        values.pop("transformers_version", None)
    config = LlavaMedConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        projector_type=projector_type,
        image_token_id=int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)),
        model_max_length=int(min(tokenizer.model_max_length, 2048)),
        name=name,
    )
    torch.manual_seed(seed)
    model = build_llava_med(config, dtype=torch.float32)
    try:
        model.vision_tower = CLIPVisionModel.from_pretrained(str(vision_dir), dtype=torch.float32)
        model.language_model = AutoModelForCausalLM.from_pretrained(str(language_dir), dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the component weights: {err}", language_dir) from err
    # a tokenizer without <unk> got a new <pad> (after <image>): every id it can emit except <image> (remapped by
    # LlavaMedNet.embed) must have an embedding row, so grow the embeddings / LM head (new rows = mean of the old)
    rows = model.language_model.get_input_embeddings().num_embeddings
    needed = 1 + max(i for i in tokenizer.get_vocab().values() if i != config.image_token_id)
    if needed > rows:
        model.language_model.resize_token_embeddings(needed)
        config.text_config["vocab_size"] = needed
        logger.info("grew the language model's embeddings from %d to %d rows for the added tokens", rows, needed)
    model.eval()
    if out_dir is not None:
        save_pretrained(model, out_dir, tokenizer)
    return model, tokenizer
