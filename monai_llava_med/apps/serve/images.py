# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""Images of a request as paths for the product's one pixel pipeline.

* ``data:`` URLs (base64) of PNG, JPEG, DICOM or NIfTI (``.nii``, gzip ``.nii.gz``): the type is read from the
  content (the declared media type is not trusted), the bytes are written to a private temporary folder with the
  matching suffix, and that file goes through :class:`~monai_llava_med.engines.PrepareVqaItem` like any other.
* ``file://`` URLs of a DICOM file, a NIfTI file or a DICOM series folder strictly inside ``allowed_root``: a path
  with a ``..`` component, a symlink leading out, another host, or any path outside the root is refused (403);
  without ``allowed_root`` every ``file://`` URL is refused.
* anything else (``http(s)://``...) is refused: the server fetches nothing.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from ..file_signatures import sniff_suffix
from .api_errors import ApiError
from .image_cache import image_fingerprint

__all__ = ["FILE_SUFFIXES", "decode_data_url", "resolve_file_url", "ImageSource"]

#: Files a ``file://`` URL may name (a folder is read as a DICOM series).
FILE_SUFFIXES = (".dcm", ".dicom", ".nii", ".nii.gz")


def decode_data_url(url: str, max_bytes: int, param: str) -> tuple[bytes, str]:
    """Decode a base64 ``data:`` URL and find its type from the content.

    Args:
        url: ``data:<media type>;base64,<payload>``.
        max_bytes: largest decoded size.
        param: the request field, named in errors.

    Returns:
        ``(bytes, suffix)``.

    Raises:
        ApiError: 400 for a malformed URL, 413 for an image over ``max_bytes``, 415 for another type.
    """
    head, sep, payload = url.partition(",")
    if not sep or not head.lower().endswith(";base64"):
        raise ApiError(400, "a data: URL must be base64 encoded (data:<type>;base64,<data>)", param, "invalid_image_url")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise ApiError(413, f"the image is larger than the limit of {max_bytes} bytes", param, "image_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "the data: URL is not valid base64", param, "invalid_image_url") from None
    if not data:
        raise ApiError(400, "the image is empty", param, "invalid_image_url")
    if len(data) > max_bytes:
        raise ApiError(413, f"the image is larger than the limit of {max_bytes} bytes", param, "image_too_large")
    suffix = sniff_suffix(data)
    if suffix is None:
        raise ApiError(415, "unsupported image content: PNG, JPEG, DICOM or NIfTI expected", param, "unsupported_image")
    return data, suffix


def _folder_files(folder: Path, max_files: int, param: str) -> list[tuple[str, int, int]]:
    """``(name, size, mtime_ns)`` of a series folder's files; links and too many files refused."""
    files: list[tuple[str, int, int]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_symlink():
                raise ApiError(403, "a series folder must not contain symbolic links", param, "path_not_allowed")
            if entry.is_file():
                if len(files) == max_files:
                    raise ApiError(413, f"the series folder has more than {max_files} files", param, "image_too_large")
                stat = entry.stat()
                files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    return files


def resolve_file_url(url: str, allowed_root: Path | None, max_bytes: int, max_files: int,
                     param: str) -> tuple[Path, str]:
    """The checked local path a ``file://`` URL names, and its fingerprint (:func:`.image_cache.image_fingerprint`,
    from the same reading of the files' stat as the size check).

    Args:
        url: ``file:///abs/path`` (or ``file://localhost/abs/path``), percent-encoding allowed.
        allowed_root: the only folder images may come from (resolved); ``None`` refuses all.
        max_bytes: largest file, or sum of a folder's files.
        max_files: most files in a series folder.
        param: the request field, named in errors.

    Raises:
        ApiError: 403 outside the root, with traversal or when disabled; 404 when missing; 413 too large;
            415 for a file type other than DICOM/NIfTI.
    """
    if allowed_root is None:
        raise ApiError(403, "file:// images are disabled (start the server with --allowed_root)", param, "path_not_allowed")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise ApiError(403, "a file:// URL must name a local path (no host, query or fragment)", param, "path_not_allowed")
    raw = unquote(parts.path)
    pure = PurePosixPath(raw)
    if not pure.is_absolute() or ".." in pure.parts or "\x00" in raw:
        raise ApiError(403, "a file:// path must be absolute, without '..'", param, "path_not_allowed")
    path = Path(raw)
    resolved = path.resolve()
    if resolved != allowed_root and allowed_root not in resolved.parents:
        raise ApiError(403, "the path lies outside the allowed root folder", param, "path_not_allowed")
    if not resolved.exists():
        raise ApiError(404, "no such file or folder under the allowed root", param, "image_not_found")
    if resolved.is_dir():
        files = _folder_files(resolved, max_files, param)
    else:
        if not resolved.name.lower().endswith(FILE_SUFFIXES):
            raise ApiError(415, "file:// images must be DICOM (.dcm), NIfTI (.nii, .nii.gz) or a series folder",
                           param, "unsupported_image")
        stat = resolved.stat()
        files = [(resolved.name, stat.st_size, stat.st_mtime_ns)]
    if sum(size for _, size, _ in files) > max_bytes:
        raise ApiError(413, f"the image is larger than the limit of {max_bytes} bytes", param, "image_too_large")
    return resolved, image_fingerprint(resolved, files=files)


class ImageSource:
    """One request's image as a path: a checked ``file://`` path, or a ``data:`` URL written to a private file.

    Use as a context manager: the temporary file is removed on exit.

    Args:
        url: the ``image_url`` of the request.
        allowed_root: see :func:`resolve_file_url`.
        max_bytes: largest image.
        max_files: most files in a series folder.
        param: the request field, named in errors.
    """

    def __init__(self, url: str, allowed_root: Path | None, max_bytes: int, max_files: int, param: str) -> None:
        self.url, self.allowed_root, self.max_bytes, self.max_files, self.param = url, allowed_root, max_bytes, max_files, param
        self._tmp: str | None = None
        self.path: Path | None = None
        self.fingerprint: str | None = None  # what the image is (:func:`.image_cache.image_fingerprint`), once entered

    def __enter__(self) -> Path:
        scheme = self.url.split(":", 1)[0].lower() if ":" in self.url else ""
        if scheme == "data":
            data, suffix = decode_data_url(self.url, self.max_bytes, self.param)
            import tempfile

            self._tmp = tempfile.mkdtemp(prefix="llava_med_serve_")
            self.path = Path(self._tmp) / f"image{suffix}"
            with open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(data)
            self.fingerprint = image_fingerprint(self.path, data)
        elif scheme == "file":
            self.path, self.fingerprint = resolve_file_url(self.url, self.allowed_root, self.max_bytes, self.max_files,
                                                           self.param)
        else:
            raise ApiError(400, "image_url must be a data: URL or a file:// path (the server fetches nothing)",
                           self.param, "invalid_image_url")
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    @property
    def display_name(self) -> str:
        """How the image is named in answers: the file name of a ``file://`` path, ``"upload"`` for a data URL."""
        if self._tmp is not None or self.path is None:
            return "upload"
        return self.path.name
