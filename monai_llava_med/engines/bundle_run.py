# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""What the bundle's configs call around a run: paths under the bundle root, and how a failed run ends.

``python -m monai.bundle run`` evaluates the configs' expressions through MONAI's ``ConfigExpression``, which
wraps whatever they raise in ``RuntimeError("Failed to evaluate ...")``; uncaught, that ends the process with a
long traceback in which the cause (one of this package's typed errors, naming the file) is buried.
:func:`report_errors_without_traceback`, called first by the configs' ``initialize`` list, installs a
``sys.excepthook`` that finds the typed error in the exception chain and prints that one line instead; the
process still exits non-zero (1). Any other exception (a bug) keeps its full traceback.
"""

from __future__ import annotations

import sys
from os import PathLike
from pathlib import Path
from types import TracebackType

from ..errors import BundleError, LlavaMedError

__all__ = ["bundle_path", "report_errors_without_traceback", "typed_cause"]

#: The file whose presence marks a bundle folder.
BUNDLE_MARKER = Path("configs") / "metadata.json"


def bundle_path(bundle_root: str | PathLike, *parts: str) -> str:
    """``bundle_root/parts...``, after checking that ``bundle_root`` is a bundle folder.

    The bundle's defaults (``models/``, ``sample/``, ``eval/``) hang off ``bundle_root`` (default ``.``), so a
    run started from elsewhere would otherwise look for ``./models`` and fail far from the cause.

    Args:
        bundle_root: the bundle folder (the one holding ``configs/metadata.json``).
        parts: path parts below it.

    Returns:
        the joined path, as a string (configs concatenate strings).

    Raises:
        BundleError: ``bundle_root`` holds no ``configs/metadata.json``; the message says how to pass
            ``--bundle_root`` (naming a bundle found below the current folder, if any).
    """
    root = Path(bundle_root)
    if not (root / BUNDLE_MARKER).is_file():
        found = sorted(str(p.parents[1]) for p in root.glob(f"bundles/*/{BUNDLE_MARKER.as_posix()}"))
        example = found[0] if found else "<the bundle folder>"
        raise BundleError(
            f"the bundle root is wrong: this folder has no {BUNDLE_MARKER.as_posix()}; run from the bundle folder "
            f"or pass --bundle_root {example}",
            root.resolve(),
        )
    return str(root.joinpath(*parts))


def typed_cause(err: BaseException | None) -> LlavaMedError | None:
    """The first of this package's typed errors in ``err``'s chain (``__cause__``, then ``__context__``).

    Args:
        err: an exception, typically MONAI's ``RuntimeError("Failed to evaluate ...")``.

    Returns:
        the typed error, or ``None`` when the chain holds none.
    """
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LlavaMedError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def report_errors_without_traceback() -> None:
    """Make an uncaught typed error end the process with its one-line message on stderr, no traceback.

    Installed once per process (calling it again changes nothing); other exceptions go to the hook that was
    installed before, so a bug still shows its traceback. Python exits with status 1 after the hook.
    """
    previous = sys.excepthook
    if getattr(previous, "_llava_med_hook", False):
        return

    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        cause = typed_cause(err)
        if cause is None:
            previous(kind, err, tb)
            return
        sys.stderr.write(f"ERROR {type(cause).__name__}: {cause}\n")
        sys.stderr.flush()

    hook._llava_med_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook
