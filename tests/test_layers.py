# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The package's layers (docs/architecture.md): what an import loads, and the import-linter contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def _loaded(imports: str, modules: list[str]) -> dict[str, bool]:
    code = f"import sys\n{imports}\nprint(','.join(str(m in sys.modules) for m in {modules!r}))"
    out = _run(code)
    assert out.returncode == 0, out.stderr
    return dict(zip(modules, (v == "True" for v in out.stdout.strip().split(","))))


def test_transforms_and_metrics_do_not_load_networks():
    """The issue's done-when check, run in a fresh interpreter."""
    code = (
        "import sys, monai_llava_med.transforms, monai_llava_med.metrics\n"
        "assert 'monai_llava_med.networks' not in sys.modules"
    )
    out = _run(code)
    assert out.returncode == 0, out.stderr


def test_using_transforms_and_metrics_still_does_not_load_networks():
    loaded = _loaded(
        "from monai_llava_med.transforms import MedicalImageToPixels, ImageToClipPixels\n"
        "from monai_llava_med.metrics import VQAMetric, evaluate_prediction_files\n"
        "from monai_llava_med.data import PILImageToPixels",
        ["monai_llava_med.networks", "monai_llava_med.engines", "monai_llava_med.transforms.pipelines"],
    )
    assert loaded == {
        "monai_llava_med.networks": False,
        "monai_llava_med.engines": False,
        "monai_llava_med.transforms.pipelines": True,
    }


def test_package_imports_are_lazy():
    heavy = ["torch", "monai", "transformers", "tokenizers", "deepspeed", "monai_llava_med.networks.llava_med"]
    # importing the packages loads none of their heavy modules; metrics scoring is plain Python
    loaded = _loaded(
        "import monai_llava_med, monai_llava_med.engines, monai_llava_med.networks, monai_llava_med.data\n"
        "from monai_llava_med.metrics import evaluate_vqa, score_question",
        heavy,
    )
    assert loaded == dict.fromkeys(heavy, False)


def test_lazy_names_resolve_and_unknown_names_fail():
    from monai_llava_med import conversation, metrics, networks, transforms

    assert networks.CLIP_MEAN == transforms.CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert conversation.IGNORE_INDEX == -100
    assert "VQAMetric" in dir(metrics) and "IGNORE_INDEX" in dir(conversation)
    with pytest.raises(AttributeError):
        getattr(metrics, "no_such_name")


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (dev extra)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([exe, "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
