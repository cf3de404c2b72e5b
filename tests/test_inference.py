# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Question answering: item preparation, collation, the inferer, the predictor and the answer files."""

from __future__ import annotations

import csv
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import spawn_ranks
from pydicom.data import get_testdata_file

from monai_llava_med.engines import (
    ERROR_KEY,
    AllItemsFailedError,
    LlavaMedPredictor,
    PrepareVqaItem,
    VqaAnswerWriter,
    collate_vqa,
    load_datalist,
    shard_datalist,
)
from monai_llava_med.errors import ImageReadError, LlavaMedInputError, RecordError


@pytest.fixture()
def predictor(tiny_model, tiny_tokenizer):
    return LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=6)


def test_prepare_expands_one_block_per_view(tiny_model, tiny_tokenizer):
    prepare = PrepareVqaItem(tiny_tokenizer, tiny_model, raise_errors=True)
    item = prepare({"image": get_testdata_file("CT_small.dcm"), "question": "Is there a lesion?"})
    pixels, ids = item["pixel_values"], item["input_ids"]
    assert pixels.shape == (1, 3, 32, 32) and item["modality"] == "CT" and item["source"] == "CT_small.dcm"
    assert int((ids == tiny_model.config.image_token_id).sum()) == tiny_model.config.num_image_tokens
    assert ids[0] == tiny_tokenizer.bos_token_id
    assert tiny_tokenizer.decode(ids[ids != tiny_model.config.image_token_id]).startswith("<s>[INST]")


def test_prepared_item_never_carries_patient_identifiers(tiny_model, tiny_tokenizer):
    item = PrepareVqaItem(tiny_tokenizer, tiny_model)({"image": get_testdata_file("CT_small.dcm"), "question": "What?"})
    text = json.dumps({k: v for k, v in item.items() if k not in ("pixel_values", "input_ids")}, default=str)
    assert "CompressedSamples" not in text and "PatientName" not in text  # CT_small's patient name / tag


def test_ask_equals_a_hand_built_generate(predictor, tiny_model, tiny_tokenizer):
    path = get_testdata_file("CT_small.dcm")
    result = predictor.ask(path, "Is there a lesion?")
    assert set(result) >= {"answer", "views", "model", "latency_s", "modality", "source"}
    item = PrepareVqaItem(tiny_tokenizer, tiny_model, raise_errors=True)({"image": path, "question": "Is there a lesion?"})
    tokens = tiny_model.generate(item["input_ids"][None], None, item["pixel_values"], max_new_tokens=6,
                                 eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    assert result["answer"] == tiny_tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def test_batched_answers_equal_single_answers(predictor):
    path = get_testdata_file("CT_small.dcm")
    questions = ["Is there a lesion?", "What modality is this image? Answer in one word please.", "How many?"]
    items = [{"image": path, "question": q} for q in questions] + [{"image": None, "question": "Text only?"}]
    batched = predictor.ask_batch(items, batch_size=4)
    single = [predictor.ask(it["image"], it["question"])["answer"] for it in items]
    assert [b["answer"] for b in batched] == single


def test_ask_all_reads_the_image_once_and_answers_like_ask(tiny_model, tiny_tokenizer, tmp_path):
    path = get_testdata_file("CT_small.dcm")
    questions = ["Is there a lesion?", "What modality is this image? Answer in one word please.", "How many?"]
    reads = []
    base = PrepareVqaItem(tiny_tokenizer, tiny_model).preprocess

    def counted(image: str):
        reads.append(image)
        return base(image)

    predictor = LlavaMedPredictor(tiny_model, tiny_tokenizer, preprocess=counted, max_new_tokens=6)
    together = predictor.ask_all(path, questions, batch_size=2)  # two generate calls
    assert reads == [path]  # one read for the three questions
    single = [predictor.ask(path, q) for q in questions]
    assert [r["answer"] for r in together] == [r["answer"] for r in single]
    assert [r["question"] for r in together] == questions
    for got, want in zip(together, single):
        assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-4)
        assert got["image_reliance"] == pytest.approx(want["image_reliance"], abs=1e-4)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(Path(path).read_bytes()[:400])  # the header cut short
    with pytest.raises(LlavaMedInputError, match="broken.dcm"):
        predictor.ask_all(str(broken), questions)


def test_bad_items_become_error_entries(predictor, tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"DICM but not really" * 3)
    items = [
        {"id": "ok", "image": get_testdata_file("CT_small.dcm"), "question": "Is there a lesion?"},
        {"id": "missing", "image": str(tmp_path / "nowhere.dcm"), "question": "Is there a lesion?"},
        {"id": "broken", "image": str(broken), "question": "Is there a lesion?"},
        {"id": "empty", "image": None, "question": "   "},
        {"id": "huge", "image": None, "question": "x" * 5000},
    ]
    results = predictor.ask_batch(items)
    assert [r["id"] for r in results] == ["ok", "missing", "broken", "empty", "huge"]
    assert "answer" in results[0] and ERROR_KEY not in results[0]
    assert all(ERROR_KEY in r and "answer" not in r for r in results[1:])
    assert "nowhere.dcm" in results[1][ERROR_KEY] and "broken.dcm" in results[2][ERROR_KEY]
    assert results[3][ERROR_KEY].startswith("RecordError") and "5000 characters" in results[4][ERROR_KEY]
    with pytest.raises(LlavaMedInputError, match="broken.dcm"):
        predictor.ask(str(broken), "Is there a lesion?")
    with pytest.raises(RecordError):
        predictor.ask(None, "")


def _png_claiming(path, width: int, height: int):
    """A PNG file whose header claims ``width`` x ``height`` pixels, with almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _pil_pixels(path: str) -> dict:
    """A plain PIL reader as the predictor's ``preprocess`` (32 px, CLIP-normalised): no typed errors of ours."""
    from PIL import Image

    from monai_llava_med.constants import CLIP_MEAN, CLIP_STD

    with Image.open(path) as img:
        rgb = torch.from_numpy(np.asarray(img.convert("RGB").resize((32, 32)), dtype=np.float32) / 255)
    pixels = (rgb.permute(2, 0, 1) - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return {"pixel_values": pixels[None], "views": [{"kind": "image"}], "modality": None, "source": Path(path).name}


def test_any_failure_of_one_item_is_its_typed_error_and_the_others_are_answered(tiny_model, tiny_tokenizer, tmp_path):
    from monai_llava_med.data.phantom import case_rng, generate_phantom, write_dicom, write_png

    case = generate_phantom(case_rng(3, "test", 0), size=32, ndim=2, case_id="c0")
    good_dcm = write_dicom(case, tmp_path / "good.dcm")[0]
    good_png = write_png(case, tmp_path / "good.png")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(Path(good_dcm).read_bytes()[:900])
    bomb = _png_claiming(tmp_path / "bomb.png", 30000, 30000)  # PIL refuses it with its own DecompressionBombError
    q = "Is there a lesion?"
    default = LlavaMedPredictor(tiny_model, tiny_tokenizer, max_new_tokens=2)
    images = {"good": good_dcm, "cut": truncated, "below": good_dcm / "x.dcm", "bomb": bomb, "good2": good_png}
    items = [{"id": key, "image": str(path), "question": q} for key, path in images.items()]
    results = {r["id"]: r for r in default.ask_batch(items, batch_size=2)}
    assert "answer" in results["good"] and "answer" in results["good2"]
    for name, key in (("truncated.dcm", "cut"), ("x.dcm", "below"), ("bomb.png", "bomb")):
        assert "answer" not in results[key] and name in results[key][ERROR_KEY], results[key]
        assert results[key][ERROR_KEY].split(":")[0].endswith("Error") and "Traceback" not in results[key][ERROR_KEY]

    plain = LlavaMedPredictor(tiny_model, tiny_tokenizer, preprocess=_pil_pixels, max_new_tokens=2)
    results = plain.ask_batch([{"id": "bomb", "image": str(bomb), "question": q},
                               {"id": "png", "image": str(good_png), "question": q}], batch_size=2)
    assert "answer" in results[1] and "answer" not in results[0]
    error = results[0][ERROR_KEY]
    assert error.startswith(f"ImageReadError: {bomb}: unexpected DecompressionBombError raised in PIL.")
    assert "pixels" not in error  # the library's own message (it could quote file content) is withheld
    with pytest.raises(ImageReadError, match="bomb.png") as info:
        plain.ask(str(bomb), q)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_collate_left_pads_and_skips_errors(tiny_model, tiny_tokenizer):
    prepare = PrepareVqaItem(tiny_tokenizer, tiny_model)
    items = [prepare({"image": None, "question": "short?"}), {"question": "x", ERROR_KEY: "boom"},
             prepare({"image": None, "question": "a much longer question about the image?"})]
    batch = collate_vqa(items, pad_token_id=0)
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"] is None and len(batch["items"]) == 3
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][:, -1].all()
    assert collate_vqa([{ERROR_KEY: "x"}])["input_ids"] is None


def test_datalist_loading_and_sharding(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"image": "a.dcm", "question": "q1"}, {"question": "q2", "id": 7}]))
    items = load_datalist(tmp_path / "list.json")
    assert items[0]["image"] == str(tmp_path / "a.dcm") and items[0]["id"] == "0" and items[1]["id"] == "7"
    assert load_datalist(None, image="/x.png", question="Q?") == [{"id": "0", "image": "/x.png", "question": "Q?"}]
    data = [{"question": str(i)} for i in range(5)]
    assert [d["question"] for d in shard_datalist(data, 1, 2)] == ["1", "3"]
    with pytest.raises(RecordError, match="cannot read the file"):
        load_datalist(tmp_path / "absent.json")
    with pytest.raises(RecordError, match="non-empty list"):
        load_datalist([])


def test_datalist_keeps_bad_items_and_refuses_duplicate_ids(tmp_path, tiny_model, tiny_tokenizer):
    # question_id wins over id (the order the metrics use): one image, several questions
    items = load_datalist([{"id": "ct", "question_id": 1, "question": "q1"}, {"id": "ct", "qid": 2, "question": "q2"},
                           ["not", "a", "dict"], {"image": "a.dcm"}])
    assert [it["id"] for it in items[:2]] == ["1", "2"]
    assert items[2] == {"id": "2", ERROR_KEY: "RecordError: item 2 is a list, not a dict"}
    prepare = PrepareVqaItem(tiny_tokenizer, tiny_model)
    assert prepare(items[2]) == items[2]  # refused at reading: passed through untouched
    assert "'question' must be a non-empty string" in prepare(items[3])[ERROR_KEY]
    with pytest.raises(RecordError, match="items 0 and 1 share the id '7'"):
        load_datalist([{"id": 7, "question": "q"}, {"id": "7", "question": "q"}])


def test_answer_writer_files_and_all_failed(tmp_path):
    writer = VqaAnswerWriter(tmp_path)
    writer.results = [{"id": "1", "question": "q", "answer": "yes", "views": [{"kind": "image"}]}, {"id": "2", ERROR_KEY: "x"}]
    json_path, csv_path = writer.write()
    assert json.loads(json_path.read_text())[0]["answer"] == "yes"
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[1]["error"] == "x" and json.loads(rows[0]["views"]) == [{"kind": "image"}]
    writer.results = [{"id": "1", ERROR_KEY: "DicomDecodeError: /data/a.dcm: no PixelData"}]
    with pytest.raises(AllItemsFailedError, match="the first: DicomDecodeError: /data/a.dcm") as info:
        writer.write()
    assert str(json_path) in str(info.value)
    assert json.loads(json_path.read_text()) == writer.results  # written (atomically) before the verdict
    assert sorted(p.name for p in tmp_path.iterdir()) == ["answers.csv", "answers.json"]  # no temporary left


def _writer_worker(rank: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        writer = VqaAnswerWriter(out_dir)
        # rank 1's whole shard failed, rank 0 answered: the run as a whole did not fail
        writer.results = [{"id": "0", "answer": "yes"}] if rank == 0 else [{"id": "1", ERROR_KEY: "x"}]
        writer.write()
        writer.results = [{"id": str(rank), ERROR_KEY: "x"}]  # now every item of every rank failed
        try:
            writer.write()
            outcome = "no error"
        except AllItemsFailedError as err:
            outcome = str(err)
        with open(f"{out_dir}/outcome{rank}.txt", "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def test_answer_writer_judges_all_ranks_together(tmp_path):
    spawn_ranks(_writer_worker, tmp_path)
    for rank in (0, 1):
        assert (tmp_path / f"outcome{rank}.txt").read_text().startswith("all 2 item(s) failed")
        assert (tmp_path / f"answers.rank{rank}.json").exists()


def test_answer_entries_keep_dataset_and_ground_truth(predictor, tmp_path):
    items = [{"question_id": "q1", "dataset": "vqa_rad", "image": None, "question": "Is it?", "answer": "yes",
              "answer_type": "CLOSED"}]
    entry = predictor.ask_batch(items)[0]
    assert (entry["dataset"], entry["question_id"], entry["ground_truth"]) == ("vqa_rad", "q1", "yes")
    writer = VqaAnswerWriter(tmp_path)
    writer.results = [entry]
    row = next(csv.DictReader(writer.write()[1].open()))
    assert (row["dataset"], row["ground_truth"], row["answer_type"]) == ("vqa_rad", "yes", "CLOSED")


def test_image_errors_are_typed(predictor, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError):
        predictor.ask(str(empty), "What is this?")
    assert torch.is_grad_enabled()


def test_preprocess_caps_views_by_the_context(tiny_model):
    from monai_llava_med.engines import build_preprocess
    from monai_llava_med.engines.inference import TEXT_RESERVE

    series = get_testdata_file("CT_small.dcm").replace("CT_small.dcm", "dicomdirtests/98892001/CT5N")
    assert len(build_preprocess(tiny_model, max_views=4)(series)["views"]) == 4
    tiny_model.config.model_max_length = TEXT_RESERVE + 2 * tiny_model.config.num_image_tokens + 5
    out = build_preprocess(tiny_model, max_views=4)(series)
    assert len(out["views"]) == 2 and out["pixel_values"].shape == (2, 3, 32, 32)
