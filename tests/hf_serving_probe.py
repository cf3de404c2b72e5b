# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Prompt and run exported HF Llava folders with transformers alone, as a serving engine would.

Run as ``python hf_serving_probe.py request.json result.safetensors``; it never imports monai_llava_med (it
checks so at the end), so it also runs in a virtual environment with another transformers version. For each
case of the request it builds the prompt with the folder's ``AutoProcessor`` + ``apply_chat_template``,
tokenises it with the processor (images expanded), tokenises the plain prompt string with the processor's
default ``add_special_tokens`` (BOS must come from the tokenizer once), and runs
``LlavaForConditionalGeneration`` on the given pixels.
"""

import json
import sys

import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoProcessor, AutoTokenizer, LlavaForConditionalGeneration


def main(request_path: str, result_path: str) -> None:
    with open(request_path) as handle:
        request = json.load(handle)
    pixels = load_file(request["pixels"])
    out: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {"transformers": transformers.__version__}
    for i, case in enumerate(request["cases"]):
        folder = case["folder"]
        processor = AutoProcessor.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        prompt = processor.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False)
        images = [Image.open(path).convert("RGB") for path in case["images"]] or None
        chat = processor(text=prompt, images=images, add_special_tokens=False, return_tensors="pt")
        plain = processor(text=case["plain_prompt"], images=images, return_tensors="pt")
        text_ids = tokenizer.apply_chat_template(case["text_messages"], add_generation_prompt=True, tokenize=True)
        if isinstance(text_ids, dict) or hasattr(text_ids, "keys"):
            text_ids = text_ids["input_ids"]
        model = LlavaForConditionalGeneration.from_pretrained(folder).eval()  # the folder says float32
        with torch.no_grad():
            logits = model(input_ids=chat["input_ids"], pixel_values=pixels[case["pixels_key"]]).logits
        out[f"{i}.chat_ids"] = chat["input_ids"][0]
        out[f"{i}.plain_ids"] = plain["input_ids"][0]
        out[f"{i}.text_ids"] = torch.tensor(text_ids, dtype=torch.long).flatten()
        out[f"{i}.logits"] = logits[0]
        if images:
            out[f"{i}.pixel_values"] = chat["pixel_values"]
        meta[f"{i}.prompt"] = prompt
        meta[f"{i}.tokenizer_class"] = type(tokenizer).__name__
    assert "monai_llava_med" not in sys.modules, "the probe must run on transformers alone"
    save_file(out, result_path, metadata=meta)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
