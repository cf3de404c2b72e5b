# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The bundle against MONAI's conventions: the meta schema, model-zoo's offline checks, the multi-GPU override.

``bundle_schema/meta_schema_20240725.json`` is MONAI's bundle meta schema, the file the ``schema`` URL of
``configs/metadata.json`` names (MONAI-extra-test-data release 0.8.1, also published by Project-MONAI at
``project-monai.github.io/schema/``), shipped here so that the check runs without a network.

Model-zoo's ``ci/verify_bundle.py --mode min`` performs, offline: the necessary files (``configs/metadata.json``,
``LICENSE``), the preferred files (``models/model.pt``, ``configs/inference.json``), ``version`` listed in
``changelog``, and ``monai.bundle.verify_metadata`` against the schema. The tests below run the same checks
through MONAI's public API; the full-mode checks that do not apply to this network are listed, with the
reason, in ``bundles/llava_med/docs/README.md``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import jsonschema
import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from monai_llava_med.engines.training import _check_batch_arithmetic, _resolve_training

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
CONFIGS = BUNDLE / "configs"
SCHEMA = Path(__file__).parent / "bundle_schema" / "meta_schema_20240725.json"


def _metadata() -> dict:
    return json.loads((CONFIGS / "metadata.json").read_text())


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


@pytest.mark.filterwarnings("ignore:No hash value provided")
def test_metadata_validates_against_monais_meta_schema(tmp_path):
    meta = _metadata()
    assert meta["schema"].rsplit("/", 1)[-1] == SCHEMA.name  # the schema shipped is the one the URL names
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft201909Validator.check_schema(schema)
    jsonschema.validate(meta, schema, cls=jsonschema.Draft201909Validator)
    # MONAI's own verifier, offline: it downloads only when the schema file is not there yet
    local = tmp_path / "eval" / "schema.json"
    local.parent.mkdir()
    shutil.copyfile(SCHEMA, local)
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(local))
    broken = dict(meta, network_data_format={"inputs": {"image": {**meta["network_data_format"]["inputs"]["image"],
                                                                  "value_range": ["CLIP-normalised"]}},
                                             "outputs": meta["network_data_format"]["outputs"]})
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Failed validating"):  # the schema does catch the old string range
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(local))


def test_metadata_describes_the_embedded_model_and_references_nothing_undefined():
    meta = _metadata()
    config = json.loads((BUNDLE / "models" / "llava_med_config.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    size = config["vision_config"]["image_size"]
    assert image["spatial_shape"] == [size, size] and image["num_channels"] == 3
    low = min(-m / s for m, s in zip(config["image_mean"], config["image_std"]))
    high = max((1 - m) / s for m, s in zip(config["image_mean"], config["image_std"]))
    assert image["value_range"] == [math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4]
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    for text in _strings(meta):
        if text.startswith(("@", "$")):
            assert text.lstrip("$@").split("#")[0] in parser, text
    assert meta["version"] in meta["changelog"] and meta["version"] == max(meta["changelog"], key=_version)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_model_zoo_min_checks_pass():
    for name in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (BUNDLE / name).is_file(), name
    meta = _metadata()
    assert meta["version"] in meta["changelog"]


def test_model_pt_is_the_network_def_state_dict_of_the_shipped_weights():
    from monai_llava_med.networks import load_pretrained

    network, _ = load_pretrained(BUNDLE / "models", dtype=torch.float32, device="cpu")
    state = torch.load(BUNDLE / "models" / "model.pt", weights_only=True)
    reference = network.state_dict()
    assert set(state) == set(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    network.load_state_dict(state)  # what MONAI's CheckpointLoader would do with network_def


def _multi_gpu_parser(monkeypatch, world_size: int) -> ConfigParser:
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("LOCAL_RANK", "0")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    parser["bundle_root"] = str(BUNDLE)
    return parser


def test_multi_gpu_device_resolves_with_or_without_cuda(monkeypatch):
    device = _multi_gpu_parser(monkeypatch, 2).get_parsed_content("device")
    assert device == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))


def test_multi_gpu_defaults_fit_the_shipped_sample_on_two_ranks(monkeypatch):
    parser = _multi_gpu_parser(monkeypatch, 2)
    training = parser.get_parsed_content("training")
    assert training["micro_batch_size"] * 2 <= 3 and training["global_batch_size"] == training["micro_batch_size"] * 2
    config = _resolve_training(training, {})
    schedule = _check_batch_arithmetic(config, None, parser.get_parsed_content("data_json"),
                                       parser.get_parsed_content("image_root"), 2)
    assert schedule.total_steps >= 1
