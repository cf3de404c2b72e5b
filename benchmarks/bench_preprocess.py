# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Preprocessing benchmark: ours vs the named baselines, measured in the same run.

* 2D: ``ImageToClipPixels`` vs LLaVA's ``expand2square`` + transformers ``CLIPImageProcessorPil`` on the same 64
  images of mixed sizes (goal: >= 3x images/s).
* 3D: a generated 512x512x300 CT DICOM series -> CLIP pixels, the same output on both sides, two tasks:

  - ``views``: the K = 4 evenly spaced axial slices the model sees (``MedicalImageToPixels`` defaults) vs the
    baseline "SimpleITK+PIL": GDCM's position-sorted file list, SimpleITK reads of those K files only, window
    L40/W400, PIL bicubic resize, CLIP normalisation;
  - ``volume``: every slice to model input (``max_views`` = number of slices) vs the baseline SimpleITK series
    read of the whole volume + the same per-slice window / resize / normalisation.

  Both sides produce ``(K, 3, 336, 336)`` float32; the largest difference between them is printed (in 8-bit
  levels). Each contender runs in its own process; peak memory is the process's VmHWM growth after imports.
  Our side runs torch single-threaded (PIL is single-threaded; SimpleITK keeps its default threads).

Run: ``python benchmarks/bench_preprocess.py [--slices 300] [--views 4] [--keep DIR]``. The last line is ``RESULT ...``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]

IMAGE_SIZE = 336


def _images(n: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = int(rng.integers(96, 1400)), int(rng.integers(96, 1400))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = 127 + 100 * np.sin(xx / rng.uniform(5, 40)) * np.cos(yy / rng.uniform(5, 40))
        img = np.stack([base, base[::-1] if h == w else base * 0.8, 255 - base], -1)
        img += rng.normal(0, 8, img.shape)
        out.append(img.clip(0, 255).astype(np.uint8))
    return out


def bench_2d(repeats: int = 3) -> dict[str, float]:
    import torch
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    from monai_llava_med.transforms import CLIP_MEAN, ImageToClipPixels

    images = _images()
    ours = ImageToClipPixels(IMAGE_SIZE)
    proc = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                 crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    bg = tuple(int(m * 255) for m in CLIP_MEAN)

    def expand2square(img: Image.Image) -> Image.Image:
        w, h = img.size
        if w == h:
            return img
        side = max(w, h)
        canvas = Image.new(img.mode, (side, side), bg)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas

    def run_ours() -> torch.Tensor:
        return torch.stack([ours(torch.from_numpy(a).permute(2, 0, 1)) for a in images])

    def run_ref() -> torch.Tensor:
        return proc([expand2square(Image.fromarray(a)) for a in images], return_tensors="pt")["pixel_values"]

    torch.set_num_threads(1)  # PIL is single-threaded; compare one core with one core
    a, b = run_ours(), run_ref()  # warm-up, and a correctness check on the same images
    max_diff = float((a - b).abs().max() * min(0.26130258, 0.26862954) * 255)
    t_ours = min(_timed(run_ours) for _ in range(repeats))
    t_ref = min(_timed(run_ref) for _ in range(repeats))
    return {"ours_ips": len(images) / t_ours, "ref_ips": len(images) / t_ref, "speedup": t_ref / t_ours,
            "max_diff_levels": max_diff}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def write_series(folder: Path, slices: int, size: int = 512) -> int:
    """Write a CT phantom series (body, lungs, spine) quickly: one template dataset, per-slice fields only."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    body = (xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1
    lungs = (((xx - 0.18) / 0.13) ** 2 + (yy / 0.22) ** 2 < 1) | (((xx + 0.18) / 0.13) ** 2 + (yy / 0.22) ** 2 < 1)
    spine = (xx / 0.05) ** 2 + ((yy - 0.25) / 0.05) ** 2 < 1
    base = np.full((size, size), -1000, np.int16)
    base[body] = 40
    base[lungs] = -820
    base[spine] = 700
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Modality = "CT"
    ds.SeriesInstanceUID = generate_uid()
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
    ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    rng = np.random.default_rng(0)
    for k in range(slices):
        hu = base + rng.integers(-20, 20, base.shape, dtype=np.int16) + np.int16(k % 7)
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-179.0, -179.0, float(k)]
        ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
        path = str(folder / f"IM{k:04d}.dcm")
        try:
            ds.save_as(path, enforce_file_format=True)
        except TypeError:  # pydicom 2.x
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(path, write_like_original=False)
    del pydicom
    return slices * size * size * 2


def _rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return 0


def _baseline_pixels(slices: list[np.ndarray]) -> np.ndarray:
    """Window L40/W400 (as the file says), PIL bicubic resize, CLIP normalisation: ``(K, 3, S, S)`` float32."""
    from PIL import Image

    from monai_llava_med.constants import CLIP_MEAN, CLIP_STD

    mean = np.asarray(CLIP_MEAN, np.float32).reshape(3, 1, 1)
    std = np.asarray(CLIP_STD, np.float32).reshape(3, 1, 1)
    out = np.empty((len(slices), 3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for k, sl in enumerate(slices):
        disp = np.floor(np.clip((sl.astype(np.float32) - (40 - 200)) / 400 * 255, 0, 255) + 0.5).astype(np.uint8)
        small = np.asarray(Image.fromarray(disp).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC), np.float32)
        out[k] = (small[None] / 255.0 - mean) / std
    return out


def child(kind: str, task: str, folder: str, indices: str, out_file: str) -> None:
    """Run one 3D contender in this process, print its time and peak memory growth as JSON, save its views."""
    chosen = [int(i) for i in indices.split(",")]
    if kind == "ours":
        import torch

        from monai_llava_med.transforms import MedicalImageToPixels

        torch.set_num_threads(1)  # one core for our side; SimpleITK keeps its default threading
        views = len(chosen) if task == "views" else len(list(Path(folder).iterdir()))
        pre = MedicalImageToPixels(image_size=IMAGE_SIZE, max_views=views)

        def run() -> np.ndarray:
            return pre(folder)["pixel_values"].numpy()
    else:
        import SimpleITK as sitk

        def run() -> np.ndarray:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)  # sorted along the slice normal
            if task == "views":
                return _baseline_pixels([sitk.GetArrayFromImage(sitk.ReadImage(files[i]))[0] for i in chosen])
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            return _baseline_pixels(list(sitk.GetArrayFromImage(reader.Execute())))  # (z, y, x) HU

    import gc

    gc.collect()
    base = _status("VmRSS")
    _rss_reset()
    t0 = time.perf_counter()
    pixels = run()
    t = time.perf_counter() - t0
    peak = max(_status("VmHWM") - base, 0)
    np.save(out_file, pixels if task == "views" else pixels[chosen])  # the K views, to compare the two sides
    print(json.dumps({"seconds": t, "peak_bytes": peak}))


def bench_3d(slices: int, keep: str | None, views: int = 4) -> dict[str, float]:
    from monai_llava_med.transforms.views import VolumeToViews

    tmp = tempfile.mkdtemp(prefix="bench_series_") if keep is None else keep
    folder = Path(tmp) / "series"
    t0 = time.perf_counter()
    if not folder.exists() or len(list(folder.iterdir())) != slices:
        volume_bytes = write_series(folder, slices)
    else:
        volume_bytes = slices * 512 * 512 * 2
    print(f"generated {slices} slices in {time.perf_counter() - t0:.1f}s at {folder}", flush=True)
    chosen = VolumeToViews(views).select(slices)
    out: dict[str, float] = {"volume_mb": volume_bytes / 2**20}
    for task, picked in (("views", chosen), ("volume", chosen)):
        results: dict[str, dict] = {}
        pixels: dict[str, np.ndarray] = {}
        for kind in ("baseline", "ours", "baseline", "ours"):  # two rounds: page cache warm for both; keep the best
            npy = Path(tmp) / f"{task}_{kind}.npy"
            args = [sys.executable, __file__, "--child", kind, task, str(folder), ",".join(map(str, picked)), str(npy)]
            res = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            prev = results.get(kind)
            results[kind] = res if prev is None or res["seconds"] < prev["seconds"] else prev
            pixels[kind] = np.load(npy)
        from monai_llava_med.constants import CLIP_STD

        levels = np.abs(pixels["ours"] - pixels["baseline"]) * np.asarray(CLIP_STD).reshape(1, 3, 1, 1) * 255
        out.update({
            f"{task}_ours_s": results["ours"]["seconds"],
            f"{task}_baseline_s": results["baseline"]["seconds"],
            f"{task}_speedup": results["baseline"]["seconds"] / results["ours"]["seconds"],
            f"{task}_ours_peak_mb": results["ours"]["peak_bytes"] / 2**20,
            f"{task}_baseline_peak_mb": results["baseline"]["peak_bytes"] / 2**20,
            f"{task}_ours_peak_over_volume": results["ours"]["peak_bytes"] / volume_bytes,
            f"{task}_max_diff_levels": float(levels.max()),
        })
    if keep is None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    """Parse arguments, run both benchmarks, print ratios and the RESULT line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--keep", default=None, help="folder to keep/reuse the generated series in")
    parser.add_argument("--views", type=int, default=4, help="K, the views of the 'views' task")
    parser.add_argument("--child", nargs=5, metavar=("KIND", "TASK", "FOLDER", "INDICES", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    r2 = bench_2d()
    print(f"2D: ours {r2['ours_ips']:.1f} img/s, CLIPImageProcessorPil+pad {r2['ref_ips']:.1f} img/s, "
          f"speedup {r2['speedup']:.2f}x (goal >= 3x), max pixel difference {r2['max_diff_levels']:.2f}/255")
    r3 = bench_3d(args.slices, args.keep, args.views)
    for task, what in (("views", f"{args.views} views"), ("volume", f"all {args.slices} slices")):
        print(f"3D {what}: ours {r3[f'{task}_ours_s']:.2f}s, SimpleITK+PIL {r3[f'{task}_baseline_s']:.2f}s, "
              f"speedup {r3[f'{task}_speedup']:.2f}x; peak memory ours {r3[f'{task}_ours_peak_mb']:.0f} MB, "
              f"SimpleITK+PIL {r3[f'{task}_baseline_peak_mb']:.0f} MB (volume {r3['volume_mb']:.0f} MB); "
              f"max difference {r3[f'{task}_max_diff_levels']:.2f}/255")
    print(
        f"RESULT baseline_2d=CLIPImageProcessorPil+expand2square speedup_2d={r2['speedup']:.2f} "
        f"ours_2d_ips={r2['ours_ips']:.1f} ref_2d_ips={r2['ref_ips']:.1f} baseline_3d=SimpleITK+PIL "
        + " ".join(
            f"{task}_speedup={r3[f'{task}_speedup']:.2f} {task}_ours_s={r3[f'{task}_ours_s']:.3f} "
            f"{task}_baseline_s={r3[f'{task}_baseline_s']:.3f} {task}_ours_peak_mb={r3[f'{task}_ours_peak_mb']:.0f} "
            f"{task}_baseline_peak_mb={r3[f'{task}_baseline_peak_mb']:.0f} "
            f"{task}_max_diff_levels={r3[f'{task}_max_diff_levels']:.2f}"
            for task in ("views", "volume")
        )
        + f" slices={args.slices} views={args.views}"
    )

if __name__ == "__main__":
    main()
