# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The MONAI bundle, run the model-zoo way: ConfigWorkflow initialise -> check_properties -> run -> finalize."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow
from pydicom.data import get_testdata_file

from monai_llava_med.engines import AllItemsFailedError
from monai_llava_med.networks import save_pretrained

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "llava_med"
CONFIGS = BUNDLE / "configs"


@pytest.fixture()
def model_dir(tiny_model, tiny_tokenizer, tmp_path):
    return save_pretrained(tiny_model, tmp_path / "model", tiny_tokenizer)


def _workflow(config_files, **overrides) -> ConfigWorkflow:
    files = [str(CONFIGS / name) for name in config_files]
    return ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        **overrides,
    )


def _run(workflow: ConfigWorkflow):
    workflow.initialize()
    assert workflow.check_properties() == []
    try:
        return workflow.run()
    finally:
        workflow.finalize()


def test_metadata_is_complete():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    assert "not for diagnosis" in meta["intended_use"].lower()
    assert {"image", "question"} <= set(meta["network_data_format"]["inputs"])
    assert (BUNDLE / "LICENSE").is_file() and (BUNDLE / "docs" / "README.md").is_file()


def test_inference_on_shipped_sample(model_dir, tmp_path):
    out = tmp_path / "eval"
    _run(_workflow(["inference.json"], model_dir=str(model_dir), output_dir=str(out), max_new_tokens=3))
    answers = json.loads((out / "answers.json").read_text())
    datalist = json.loads((BUNDLE / "sample" / "datalist.json").read_text())
    assert [a["id"] for a in answers] == [d["id"] for d in datalist]
    assert all("answer" in a and "error" not in a for a in answers)
    series = next(a for a in answers if a["image"].endswith("ct_series"))
    assert series["modality"] == "CT" and len(series["views"]) >= 2
    assert all(v.get("plane") == "axial" for v in series["views"])
    assert (out / "answers.csv").read_text().count("\n") == len(answers) + 1


def test_inference_single_query_overrides_and_broken_item(model_dir, tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\x00" * 200)
    items = [
        {"id": "good", "image": get_testdata_file("CT_small.dcm"), "question": "Is there a lesion?"},
        {"id": "bad", "image": str(broken), "question": "Is there a lesion?"},
    ]
    (tmp_path / "list.json").write_text(json.dumps(items))
    out = tmp_path / "eval"
    _run(_workflow(["inference.json"], model_dir=str(model_dir), datalist=str(tmp_path / "list.json"), output_dir=str(out)))
    answers = {a["id"]: a for a in json.loads((out / "answers.json").read_text())}
    assert "answer" in answers["good"] and "broken.dcm" in answers["bad"]["error"]

    out1 = tmp_path / "one"
    _run(_workflow(["inference.json"], model_dir=str(model_dir), output_dir=str(out1),
                   image=get_testdata_file("MR_small.dcm"), question="What modality is this?"))
    (single,) = json.loads((out1 / "answers.json").read_text())
    assert single["modality"] == "MR" and single["question"] == "What modality is this?"

    (tmp_path / "all_bad.json").write_text(json.dumps(items[1:]))
    with pytest.raises(RuntimeError) as info:  # the config layer wraps the handler's error
        _run(_workflow(["inference.json"], model_dir=str(model_dir), datalist=str(tmp_path / "all_bad.json"),
                       output_dir=str(tmp_path / "bad")))
    causes = []
    err: BaseException | None = info.value
    while err is not None:
        causes.append(err)
        err = err.__cause__
    assert any(isinstance(c, AllItemsFailedError) for c in causes)


def test_inference_view_overrides_reach_the_model_and_the_pipeline(model_dir, tmp_path):
    series = str(BUNDLE / "sample" / "ct_series")
    out = tmp_path / "eval"
    workflow = _workflow(["inference.json"], model_dir=str(model_dir), output_dir=str(out), max_new_tokens=2,
                         image=series, question="Is there a lesion?", token_pool=2, view_mode="content", max_views=2)
    _run(workflow)
    config = workflow.parser.get_parsed_content("network_def").config
    assert (config.token_pool, config.num_image_tokens, config.view_mode, config.max_views) == (2, 4, "content", 2)
    (answer,) = json.loads((out / "answers.json").read_text())
    assert len(answer["views"]) == 2 and "error" not in answer
    default = _workflow(["inference.json"], model_dir=str(model_dir))
    default.initialize()
    assert default.parser.get_parsed_content("network_def").config.token_pool == 1  # null: the model's own
    default.finalize()


def test_evaluate_writes_report(model_dir, tmp_path):
    out = tmp_path / "eval"
    _run(_workflow(["inference.json", "evaluate.json"], model_dir=str(model_dir), output_dir=str(out), max_new_tokens=3))
    report = json.loads((out / "vqa_metrics.json").read_text())
    datalist = json.loads((BUNDLE / "sample" / "datalist.json").read_text())
    assert sum(1 for q in report["per_question"]) == len(datalist) == 23
    table = (out / "vqa_metrics.md").read_text()
    assert "phantom" in table and "closed acc" in table


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], capture_output=True, text=True,
                          env=env, cwd=cwd)


def test_cli_exit_code_non_zero_only_when_everything_failed(model_dir, tmp_path):
    missing = tmp_path / "none.png"
    (tmp_path / "bad.json").write_text(json.dumps([{"image": str(missing), "question": "Q?"}]))
    cmd = ["--config_file", str(CONFIGS / "inference.json"), "--bundle_root", str(BUNDLE),
           "--model_dir", str(model_dir), "--output_dir", str(tmp_path / "o")]
    failed = _cli(*cmd, "--datalist", str(tmp_path / "bad.json"))
    assert failed.returncode != 0 and "Traceback" not in failed.stderr + failed.stdout
    (last,) = failed.stderr.strip().splitlines()[-1:]
    assert last.startswith("ERROR AllItemsFailedError: all 1 item(s) failed") and str(missing) in last, last
    assert str(tmp_path / "o" / "answers.json") in last
    ok = _cli(*cmd, "--max_new_tokens", "2")  # the 23 questions of the sample: a progress bar, no line per answer
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "batches answered" in ok.stderr and "100%" in ok.stderr
    assert " -> " not in ok.stderr + ok.stdout and "wrote 23 answers (0 failed)" in ok.stderr + ok.stdout


@pytest.mark.parametrize("case", ["repository_root", "missing_datalist", "missing_model_dir"])
def test_failing_cli_runs_end_on_one_line_naming_the_file(case, tmp_path):
    repo = BUNDLE.parents[1]
    if case == "repository_root":  # the configs' default bundle_root "." is the repository, not the bundle
        args, named, error = [], f"{repo}: the bundle root is wrong", "BundleError"
    elif case == "missing_datalist":
        args, named, error = ["--datalist", str(tmp_path / "nolist.json")], str(tmp_path / "nolist.json"), "RecordError"
    else:
        args, named, error = ["--model_dir", str(tmp_path / "nomodel")], str(tmp_path / "nomodel"), "CheckpointError"
    if case != "repository_root":
        args += ["--bundle_root", str(BUNDLE), "--output_dir", str(tmp_path / "out")]
    run = _cli("--config_file", "bundles/llava_med/configs/inference.json", *args, cwd=repo)
    assert run.returncode != 0 and "Traceback" not in run.stderr + run.stdout
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ERROR {error}: {named}"), last
    if case == "repository_root":
        assert "pass --bundle_root bundles/llava_med" in last and "hub" not in last


@pytest.mark.deepspeed
def test_train_config_finetunes_and_exports(model_dir, tmp_path, monkeypatch):
    from monai_llava_med.networks import load_pretrained

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    out = tmp_path / "run"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        init_from=str(model_dir),
        output_dir=str(out),
        max_epochs=3,
        learning_rate=1e-3,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert len(workflow.train_dataset) == 3 and workflow.max_epochs == 3  # the three sample images of sample/train.json
    workflow.run()
    workflow.finalize()
    model, _ = load_pretrained(out / "model")
    before, _ = load_pretrained(model_dir)
    assert not all(
        (a == b).all() for a, b in zip(model.language_model.parameters(), before.language_model.parameters())
    ), "fine-tuning must change the language model"
    assert (out / "checkpoints").is_dir()
