# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Training throughput and model FLOPs utilisation (MFU) of the real stage-2 workflow on one device.

The workflow is ``build_trainer`` (DeepSpeed ZeRO-2, bf16 on GPUs that have it, the MONAI trainer), stage 2:
CLIP frozen, projector + language model trained. ``--size 1b`` is a ~1.1B-parameter language model
(TinyLlama-shaped Llama: hidden 2048, 22 layers, 32 heads / 4 KV heads, FFN 5632, vocab 32000) behind the
real vision tower shape (CLIP ViT-L/14 at 336 px, 576 image tokens) and an ``mlp2x_gelu`` projector, random
weights; ``--size tiny`` is a CPU smoke run of the same path. Every sample is ``--seq-len`` tokens: BOS, 576
image tokens, random text (supervised).

MFU = 6 x trainable parameters x tokens/s / peak dense bf16 FLOP/s (the usual LLM convention; the frozen
vision tower's forward, 2 x vision parameters per patch token, is reported separately as ``mfu_incl_vision``).
Baseline named in the same run: the device's peak (H100/H200 SXM: 989 TFLOP/s dense bf16). Timing skips
``--warmup`` optimizer steps and stops before the final checkpoint. Last line ``RESULT key=value ...``.

Run: ``python benchmarks/bench_throughput.py [--size 1b|tiny] [--steps N] [--micro-batch B] [--seq-len L]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.data import Dataset

from monai_llava_med.conversation import IGNORE_INDEX, build_bpe_tokenizer
from monai_llava_med.networks import LlavaMedConfig

#: Dense bf16 peak FLOP/s by device name fragment.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def model_config(size: str, image_token_id: int) -> LlavaMedConfig:
    """The ``1b`` benchmark shape, or the ``tiny`` test preset."""
    if size == "tiny":
        return LlavaMedConfig.tiny(image_token_id=image_token_id)
    return LlavaMedConfig(
        vision_config={
            "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096,
            "num_hidden_layers": 24, "num_attention_heads": 16, "image_size": 336, "patch_size": 14,
            "hidden_act": "quick_gelu", "projection_dim": 768,
        },
        text_config={
            "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
            "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
            "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False,
        },
        projector_type="mlp2x_gelu",
        image_token_id=image_token_id,
        model_max_length=4096,
        name="throughput-1b",
    )


class RandomVqaSamples(Dataset):
    """Fixed-length samples: BOS, one image's tokens, random text ids; the text is supervised."""

    def __init__(self, config: LlavaMedConfig, seq_len: int, count: int, seed: int = 0) -> None:
        text_len = seq_len - 1 - config.num_image_tokens
        if text_len < 2:
            raise ValueError(f"--seq-len {seq_len} leaves no text after {config.num_image_tokens} image tokens")
        gen = torch.Generator().manual_seed(seed)
        vocab = int(config.text_config["vocab_size"])
        self.config, self.count = config, count
        text = torch.randint(3, vocab, (count, text_len), generator=gen)
        self.text = text.masked_fill(text == config.image_token_id, 3)  # image positions only where placed
        self.pixels = torch.randn(count, 3, config.image_size, config.image_size, generator=gen)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        n = self.config.num_image_tokens
        ids = torch.cat([torch.tensor([1]), torch.full((n,), self.config.image_token_id), self.text[index]])
        labels = ids.clone()
        labels[: 1 + n] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "pixel_values": self.pixels[index : index + 1], "num_images": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("1b", "tiny"), default="1b" if torch.cuda.is_available() else "tiny")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--deepspeed", default="zero2")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step compiles and allocates)")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from ignite.engine import Events

    from monai_llava_med.engines import build_trainer

    tokenizer = build_bpe_tokenizer(["a throughput benchmark"] * 4, vocab_size=300)
    config = model_config(args.size, tokenizer.convert_tokens_to_ids("<image>"))
    seq_len = args.seq_len if args.size == "1b" else min(args.seq_len, config.num_image_tokens + 48)
    total = args.warmup + args.steps
    data = RandomVqaSamples(config, seq_len, total * args.micro_batch)
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(
            "stage2", train_data=data, model_config=config, tokenizer=tokenizer, output_dir=out,
            micro_batch_size=args.micro_batch, global_batch_size=args.micro_batch, max_steps=total, num_epochs=1,
            deepspeed=args.deepspeed, gradient_checkpointing=args.gradient_checkpointing, group_by_length=False,
            learning_rate=2e-5, save_every_n_steps=0, export=False, resume=False, log_every_n_steps=10**9,
            max_length=seq_len,
        )
        trainer.remove_event_handler(trainer.checkpointer.save, Events.COMPLETED)  # throughput only
        marks: list[tuple[float, int]] = []

        def mark(engine) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), int(engine.state.output["tokens"])))

        trainer.add_event_handler(Events.ITERATION_COMPLETED, mark)
        trainer.run()
        model = trainer.ds_engine.module
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        vision = sum(p.numel() for p in model.vision_tower.parameters())
    start, timed = marks[args.warmup - 1][0], marks[args.warmup :]
    seconds = timed[-1][0] - start
    tokens_per_s = sum(t for _, t in timed) / seconds
    image_tokens_per_s = tokens_per_s * config.num_image_tokens / seq_len
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))
    mfu = 6 * trainable * tokens_per_s / peak
    mfu_vision = (6 * trainable * tokens_per_s + 2 * vision * image_tokens_per_s) / peak
    dtype = next(model.parameters()).dtype
    print(f"{name}: {args.size} trainable {trainable / 1e9:.3f}B, frozen vision {vision / 1e6:.0f}M, {dtype}, "
          f"{args.deepspeed}, micro-batch {args.micro_batch} x {seq_len} tokens")
    print(f"{args.steps} timed steps in {seconds:.2f} s: {tokens_per_s:,.0f} tokens/s; peak {peak / 1e12:.0f} TFLOP/s")
    print(f"RESULT device={name.replace(' ', '_')} size={args.size} tokens_per_s={tokens_per_s:.0f} "
          f"step_s={seconds / len(timed):.3f} mfu={mfu:.3f} "
          f"mfu_incl_vision={mfu_vision:.3f} trainable_params={trainable}")


if __name__ == "__main__":
    main()
