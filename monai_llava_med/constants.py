# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Constants shared across layers; a leaf module (it imports nothing), at the bottom with ``errors``.

The preprocessing (``transforms``), the data sets (``data``) and the model config (``networks``) all need the
CLIP normalisation the released LLaVA-Med vision tower was trained with; keeping it here lets each of them
use it without importing the others (see ``docs/architecture.md``). The DICOM modality vocabulary is here for the same
reason: the readers (``transforms``) and the server (``apps``) both report a modality only from it, and the view
modes, which the model config (``networks``) names and the view transform (``transforms``) implements.
"""

from __future__ import annotations

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "IGNORE_INDEX", "MODALITY_CODES", "REASON_CONTRADICTION", "REASON_IMAGE_INDEPENDENT",
    "REASON_LOW_CONFIDENCE", "REASON_OUT_OF_DOMAIN", "VIEW_MODES",
]

#: per-channel mean of OpenAI CLIP's image normalisation (RGB, on [0, 1] pixels); also LLaVA's "pad" colour.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
#: per-channel standard deviation of OpenAI CLIP's image normalisation.
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: label of a token that is not supervised (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100
#: DICOM Modality (0008,0060) defined terms, current and retired (PS3.3 C.7.3.1.1.1), plus the library's own
#: ``PATHOLOGY`` (whole-slide images). Anything else a header says is reported as ``"unknown"``.
MODALITY_CODES = frozenset(
    "AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT IVUS "
    "KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF RG "
    "RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US "
    "VA XA XAPROTOCOL XC "
    "AS CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF "
    "PATHOLOGY".split()
)
#: How a volume becomes 2D views (``transforms.VolumeToViews``); also the values ``LlavaMedConfig.view_mode`` takes.
VIEW_MODES = ("axial", "central", "content", "triplanar", "montage")

# The reasons an answer abstains (``trust`` sets them, ``metrics`` counts them; docs/trust.md).
#: the calibrated confidence lies below the abstention threshold chosen for the target error.
REASON_LOW_CONFIDENCE = "low confidence"
#: the answer's probability barely moves when the image is replaced by the neutral image.
REASON_IMAGE_INDEPENDENT = "answer does not depend on the image"
#: the image's vision-tower features lie beyond the input gate's refusal distance.
REASON_OUT_OF_DOMAIN = "input unlike the model's training data"
#: a closed question and its negated form got answers that contradict each other (paired probes).
REASON_CONTRADICTION = "contradicts its paired question"
