# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""The PACS node's cost next to the model's own, measured in one run against a real Orthanc.

* per study: Orthanc C-STOREs a study to the listener; the time from its first instance received to its SR stored
  in Orthanc (minus the configured idle timeout, a wait the operator chooses, reported apart) against the model's
  own inference time for the same study and questions, measured in the same process on the same files (baseline):
  overhead = (node time - inference) / inference, goal <= 20 %;
* 50 studies queued at once (one Orthanc store of all of them): every study answered, none lost (50 jobs, every
  instance recorded), none twice (exactly one SR per study in Orthanc), against 50 x the per-study inference time.

``--text_layers L --text_width W`` runs the same on a costlier model: the demo's config and tokenizer with its
language model made ``L`` layers of width ``W``, randomly initialised by the one factory and saved to a temporary
folder (its answers mean nothing; its cost is that of a model of its size), to show the node's overhead against a
model whose inference takes as long as a real one's.

Orthanc 1.10 listens on every interface: run inside a private network namespace (loopback only), as root:
``make bench-pacs`` or ``unshare -n bash -c 'ip link set lo up && python benchmarks/bench_pacs.py'``.
Prints ``RESULT ...`` lines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from pacs._orthanc import Orthanc  # noqa: E402

from monai_llava_med.apps.pacs import NodeConfig, PacsNode  # noqa: E402
from monai_llava_med.conversation import load_tokenizer  # noqa: E402
from monai_llava_med.data.phantom import generate_phantom, write_dicom  # noqa: E402
from monai_llava_med.engines import LlavaMedPredictor  # noqa: E402
from monai_llava_med.networks import CONFIG_NAME, LlavaMedConfig, build_llava_med, save_pretrained  # noqa: E402

MODEL_DIR = REPO / "bundles" / "llava_med" / "models"
QUESTIONS = ["Is there a lesion anywhere in the scan?", "How many lesions are there?",
             "Is there a lesion on the left side?"]


def _study(root: Path, i: int, depth: int) -> list[Path]:
    case = generate_phantom(np.random.default_rng(i), size=64, ndim=3, depth=depth, modality="CT", case_id=f"bench-{i}")
    return write_dicom(case, root / f"bench-{i}")


def _uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _wait_final(node: PacsNode, uids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = [node.queue.job_for_study(u) for u in uids]
        if all(j is not None and j.state in ("done", "no_match", "error", "failed") for j in jobs):
            return
        time.sleep(0.05)
    raise RuntimeError("timed out waiting for the jobs")


def costlier_model(out: Path, layers: int, width: int) -> Path:
    """The demo's config and tokenizer with a language model of ``layers`` x ``width``, random, saved to ``out``."""
    config = LlavaMedConfig.load(MODEL_DIR / CONFIG_NAME)
    config.text_config.update(hidden_size=width, intermediate_size=int(width * 2.75), num_hidden_layers=layers,
                              num_attention_heads=width // 64, num_key_value_heads=max(1, width // 256))
    torch.manual_seed(0)
    model = build_llava_med(config)
    return save_pretrained(model, out, load_tokenizer(MODEL_DIR, model_max_length=None))


def _spread(values: list[float]) -> str:
    return f"median={statistics.median(values):.3f} [min {min(values):.3f}, max {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6, help="studies for the per-study figure")
    parser.add_argument("--depth", type=int, default=12, help="slices per study (64x64)")
    parser.add_argument("--queued", type=int, default=50, help="studies queued at once")
    parser.add_argument("--idle_timeout_s", type=float, default=0.5)
    parser.add_argument("--text_layers", type=int, default=0, help="a costlier random model: its layers (0: demo)")
    parser.add_argument("--text_width", type=int, default=1024, help="... and its width")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
        root = Path(tmp)
        model_dir = costlier_model(root / "model", args.text_layers, args.text_width) if args.text_layers else MODEL_DIR
        predictor = LlavaMedPredictor.from_pretrained(model_dir, device="cpu")
        params = sum(p.numel() for p in predictor.model.parameters())
        print(f"model: {'random, ' if args.text_layers else 'the demo model, '}{params / 1e6:.1f}M parameters",
              flush=True)
        orthanc = Orthanc(root / "orthanc").start()
        try:
            config = NodeConfig(ae_title="LLAVA", port=0, model_dir=str(model_dir), queue=str(root / "node" / "q.db"),
                                destination=f"dimse://{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
                                questions=QUESTIONS, idle_timeout_s=args.idle_timeout_s, poll_s=0.02,
                                max_new_tokens=16)
            node = PacsNode(config, predictor).start()
            orthanc.add_modality("llava", "LLAVA", node.port)
            predictor.ask(str(MODEL_DIR.parent / "sample" / "ct_series"), QUESTIONS[0])  # warm-up
            node_s, inference_s, overhead, fixed, transfer, process, in_node = [], [], [], [], [], [], []
            for i in range(args.studies):
                files = _study(root / "studies", i, args.depth)
                uid = _uid(files)
                orthanc.send_study("llava", orthanc.upload(files))
                _wait_final(node, [uid], 120)
                job = node.queue.job_for_study(uid)
                assert job.state == "done", job.error
                folder = Path(node.queue.instances(job.id)[0].path).parent
                start = time.perf_counter()  # the baseline: the model alone, same files, same questions, same call
                predictor.ask_all(str(folder), QUESTIONS, max_new_tokens=16)
                base = time.perf_counter() - start
                spent = job.stored_at - job.first_received - args.idle_timeout_s
                node_s.append(spent)
                transfer.append(job.last_received - job.first_received)
                process.append(job.stored_at - job.claimed_at - job.inference_s)
                fixed.append(spent - job.inference_s)
                in_node.append(job.inference_s)
                inference_s.append(base)
                overhead.append(100.0 * (spent - base) / base)
            print(f"RESULT pacs_per_study node_receive_to_sr_stored_s {_spread(node_s)} "
                  f"baseline_model_inference_s {_spread(inference_s)} overhead_pct {_spread(overhead)} "
                  f"(goal <= 20) studies={args.studies} slices={args.depth}x64x64 questions={len(QUESTIONS)} "
                  f"idle_timeout_s={args.idle_timeout_s} (excluded) model_params_m={params / 1e6:.1f}", flush=True)
            print(f"RESULT pacs_per_study_breakdown node_minus_its_inference_s {_spread(fixed)} of which "
                  f"receive_transfer_s {_spread(transfer)} select_decode_sr_send_s {_spread(process)} "
                  f"(the model inside the node {_spread(in_node)})", flush=True)

            files = [_study(root / "queued", 1000 + i, 4) for i in range(args.queued)]
            uids = [_uid(f) for f in files]
            ids = [orthanc.upload(f) for f in files]
            start = time.perf_counter()
            r = orthanc.session.post(f"{orthanc.url}/modalities/llava/store",
                                     json={"Resources": ids, "Synchronous": True}, timeout=600)
            r.raise_for_status()
            _wait_final(node, uids, 1200)
            wall = time.perf_counter() - start
            jobs = [node.queue.job_for_study(u) for u in uids]
            done = sum(j.state == "done" for j in jobs)
            lost = sum(len([i for i in node.queue.instances(j.id) if i.modality == "CT"]) != 4 for j in jobs)
            srs = [len(orthanc.sr_instances(u)) for u in uids]
            twice = sum(n > 1 for n in srs)
            missing = sum(n == 0 for n in srs)
            base_each = []
            for j in jobs[:5]:
                folder = Path(node.queue.instances(j.id)[0].path).parent
                t0 = time.perf_counter()
                predictor.ask_all(str(folder), QUESTIONS, max_new_tokens=16)
                base_each.append(time.perf_counter() - t0)
            baseline = statistics.median(base_each) * args.queued
            print(f"RESULT pacs_queued_{args.queued} answered={done}/{args.queued} lost={lost} "
                  f"without_sr={missing} sr_twice={twice} jobs={len(node.queue.jobs()) - args.studies} "
                  f"wall_s={wall:.1f} baseline_model_inference_s={baseline:.1f} "
                  f"(median of 5 studies x {args.queued}) overhead_pct={100.0 * (wall - baseline) / baseline:.1f}",
                  flush=True)
            node.stop()
        finally:
            orthanc.stop()


if __name__ == "__main__":
    main()
