# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A MONAI Label ``LocalDatastore`` that checks every id, tag and upload before touching the disk.

Stock ``LocalDatastore`` joins client ids into paths (``PUT /datastore/image?image=../x`` writes outside the
studies folder). :class:`LlavaMedDatastore` validates ids and tags against
:data:`~.request_checks.ID_PATTERN`, accepts only the image types the library reads (checked by content too),
caps the upload size, and confirms that every destination resolves inside the studies folder. Refusals are
``fastapi.HTTPException`` 4xx, so the stock endpoints answer them properly.

Symlinks: stock ``LocalDatastore`` lists any file whose name matches an extension and serves
``os.path.realpath`` of it, so ``studies/x.png -> /etc/passwd`` is downloaded, inferred, zipped into the dataset
archive, and deleted by ``DELETE /datastore/image``. Here every path is resolved (``os.path.realpath``; for a
folder, every entry in it) and anything that resolves outside the resolved studies folder is left out of the
datastore when it is scanned and refused with 403 when it is asked for (it may have become a link since the
scan): downloads, infer, listings, the dataset archive, deletes and upload destinations. Needs ``monailabel``.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import IO, Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.utils.others.generic import remove_file

from ...errors import LlavaMedInputError
from ...transforms import detect_input_kind
from .http_errors import as_http_error, unexpected_http_error
from .request_checks import (
    IMAGE_EXTENSIONS,
    RequestError,
    RequestLimits,
    check_file_content,
    image_extension,
    validate_id,
)

__all__ = ["LlavaMedDatastore", "checked_id", "image_not_found", "label_not_found", "outside_studies"]

logger = logging.getLogger(__name__)


def checked_id(value: Any, what: str) -> str:
    """``value`` validated as a datastore id (see :func:`~.request_checks.validate_id`), or a 400."""
    try:
        return validate_id(value, what)
    except RequestError as err:
        raise as_http_error(err) from err


def image_not_found(image_id: str) -> HTTPException:
    """The 404 for an image id the datastore does not hold."""
    return HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")


def outside_studies(what: str) -> HTTPException:
    """The 403 for a datastore entry (or upload destination) that resolves outside the studies folder."""
    return HTTPException(status_code=403, detail=f"{what} resolves outside the studies folder (a symbolic link?)")


def label_not_found(label_id: str, label_tag: str) -> HTTPException:
    """The 404 for a label (image id and tag) the datastore does not hold."""
    return HTTPException(status_code=404, detail=f"no label {label_tag!r} for image {label_id!r} in the datastore")


class LlavaMedDatastore(LocalDatastore):
    """Local studies folder with validated ids and uploads.

    Args:
        datastore_path: the studies folder.
        limits: ``max_upload_bytes`` bounds an uploaded image or label.
        auto_reload: watch the folder for files added outside the server.
        read_only: never write the datastore JSON.
    """

    def __init__(
        self,
        datastore_path: str,
        limits: RequestLimits | None = None,
        auto_reload: bool = False,
        read_only: bool = False,
    ) -> None:
        self.limits = limits or RequestLimits()
        self._root = Path(os.path.realpath(datastore_path))  # before super(): its first scan uses _list_files
        self._ignored: set[str] = set()  # entries already reported as resolving outside (logged once each)
        super().__init__(
            datastore_path,
            extensions=tuple("*" + ext for ext in IMAGE_EXTENSIONS),
            auto_reload=auto_reload,
            read_only=read_only,
        )

    def _contains(self, path: str | os.PathLike) -> bool:
        real = Path(os.path.realpath(path))
        return real == self._root or self._root in real.parents

    def resolved_inside(self, path: str | os.PathLike) -> Path | None:
        """``path`` resolved (symbolic links followed), or ``None`` when it or, for a folder, any entry in it
        resolves outside the studies folder."""
        real = Path(os.path.realpath(path))
        if not self._contains(real):
            return None
        if real.is_dir():
            for folder, dirs, files in os.walk(real):  # links are not followed, but each one is resolved
                if not all(self._contains(os.path.join(folder, entry)) for entry in (*dirs, *files)):
                    return None
        return real

    def _inside(self, dest: str | os.PathLike, name: str) -> None:
        if not self._contains(dest):
            raise outside_studies(f"the destination of {name!r}")

    def _list_files(self, path: str, patterns: Any) -> dict[str, str]:
        """The stock scan of a datastore folder without the entries that resolve outside the studies folder."""
        found = super()._list_files(path, patterns)
        kept = {name: file for name, file in found.items() if self.resolved_inside(os.path.join(path, file))}
        for name in sorted(set(found) - set(kept)):
            entry = os.path.relpath(os.path.join(path, found[name]), self._datastore_path)
            if entry not in self._ignored:
                logger.warning("ignoring %r in the studies folder: it resolves outside it", entry)
                self._ignored.add(entry)
        return kept

    def _remove_non_existing(self) -> int:
        """The stock clean-up, plus dropping images and labels that now resolve outside the studies folder."""
        invalidate = super()._remove_non_existing()
        for image_id, obj in list(self._datastore.objects.items()):
            image = os.path.join(self._datastore.image_path(), self._filename(image_id, obj.image.ext))
            if not self.resolved_inside(image):
                del self._datastore.objects[image_id]
                invalidate += 1
                continue
            for tag, label in list(obj.labels.items()):
                if not self.resolved_inside(os.path.join(self._datastore.label_path(tag),
                                                         self._filename(image_id, label.ext))):
                    del obj.labels[tag]
                    invalidate += 1
        return invalidate

    def _check_upload(self, filename: str, name: str, check_content: bool) -> str:
        """The accepted extension of an uploaded file; size and (for images) content checked."""
        try:
            ext = image_extension(os.path.basename(filename))
            size = os.path.getsize(filename)
            if size > self.limits.max_upload_bytes:
                raise RequestError(
                    f"upload of {size} bytes exceeds the limit of {self.limits.max_upload_bytes} bytes", name, 413
                )
            check_file_content(filename, ext)
            if check_content:
                detect_input_kind(filename)
        except LlavaMedInputError as err:
            raise as_http_error(err, name) from err
        except Exception as err:  # noqa: BLE001 - an untyped reader failure is this upload's error, not a bare 500
            raise unexpected_http_error(err, name) from None
        return ext

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store an uploaded image under a validated id (default: the file name without extension).

        Raises:
            HTTPException: 400 for a bad id, 413 for an oversized file, 415 for a file type the library does not
                read, 422 for content that is not what the extension says.
        """
        try:
            ext = self._check_upload(image_filename, str(image_id or "upload"), check_content=True)
            image_id = checked_id(image_id or os.path.basename(image_filename)[: -len(ext)], "image")
            self._inside(os.path.join(self._datastore.image_path(), image_id + ext), image_id)
        except HTTPException:
            remove_file(image_filename)  # the endpoint's temporary copy; its clean-up task only runs on success
            raise
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label for an existing image under a validated tag.

        Raises:
            HTTPException: 400 for a bad id or tag, 404 for an image the datastore does not hold, 413/415 as for
                images. The uploaded file is removed on every refusal.
        """
        try:
            image_id, label_tag = checked_id(image_id, "image"), checked_id(label_tag, "tag")
            ext = self._check_upload(label_filename, image_id, check_content=False)
            self._inside(os.path.join(self._datastore.label_path(label_tag), image_id + ext), image_id)
            try:
                return super().save_label(image_id, label_filename, label_tag, label_info)
            except ImageNotFoundException as err:
                raise image_not_found(image_id) from err
        except HTTPException:
            remove_file(label_filename)
            raise

    def get_image_uri(self, image_id: str) -> str:
        """The resolved image file of a validated id ("" when unknown).

        Raises:
            HTTPException: 400 for a bad id; 403 when the file resolves outside the studies folder.
        """
        image_id = checked_id(image_id, "image")
        uri = super().get_image_uri(image_id)
        if uri and not self.resolved_inside(uri):
            raise outside_studies(f"image {image_id!r}")
        return uri

    def get_image_info(self, image_id: str) -> dict[str, Any]:
        """The stored info of a validated id, without the server path ({} when unknown)."""
        info = super().get_image_info(checked_id(image_id, "image"))
        info.pop("path", None)
        return info

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Update the info of a validated id.

        Raises:
            HTTPException: 400 for a bad id, 404 for an image the datastore does not hold.
        """
        image_id = checked_id(image_id, "image")
        try:
            super().update_image_info(image_id, info)
        except ImageNotFoundException as err:
            raise image_not_found(image_id) from err

    def remove_image(self, image_id: str) -> None:
        """Remove a validated id and its labels.

        Raises:
            HTTPException: 400 for a bad id, 404 for an image the datastore does not hold, 403 when the image or one
                of its labels resolves outside the studies folder (stock 0.8.5 deletes the link's target).
        """
        image_id = checked_id(image_id, "image")
        self.get_image_uri(image_id)
        for tag in self.get_labels_by_image_id(image_id):
            self.get_label_uri(image_id, tag)
        try:
            super().remove_image(image_id)
        except ImageNotFoundException as err:
            raise image_not_found(image_id) from err

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The resolved label file of a validated id and tag ("" when unknown).

        Raises:
            HTTPException: 400 for a bad id or tag; 403 when the file resolves outside the studies folder.
        """
        label_id, label_tag = checked_id(label_id, "label"), checked_id(label_tag, "tag")
        uri = super().get_label_uri(label_id, label_tag)
        if uri and not self.resolved_inside(uri):
            raise outside_studies(f"label {label_tag!r} of {label_id!r}")
        return uri

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """The stock (image, final label) pairs without those that resolve outside the studies folder."""
        pairs = super().datalist(full_path=True)
        pairs = [p for p in pairs if all(self.resolved_inside(path) for path in p.values())]
        if not full_path:
            base = str(self._root) + os.sep
            pairs = [{k: v.removeprefix(base) for k, v in p.items()} for p in pairs]
        return pairs

    def write_dataset_archive(self, out: IO[bytes], limit_cases: int | None = None) -> int:
        """Write the (image, final label) pairs and the datastore record as a ZIP archive into ``out``.

        Same layout as the stock ``get_dataset_archive`` (``image/<name>``, ``label/<name>``, ``metadata.json``),
        but into a stream the caller owns instead of a named temporary file that is never removed, and only
        from files that resolve inside the studies folder (opened by their resolved path).

        Args:
            out: a writable binary stream (e.g. an anonymous ``tempfile.TemporaryFile``).
            limit_cases: include only the first ``limit_cases`` pairs (all when ``None``).

        Returns:
            the number of pairs written.

        Raises:
            HTTPException: 400 for a ``limit_cases`` below 1; 404 when no image has a final label.
        """
        if limit_cases is not None and limit_cases < 1:
            raise as_http_error(RequestError("limit_cases must be at least 1", "limit_cases"))
        pairs = self.datalist()[:limit_cases]
        if not pairs:
            raise HTTPException(status_code=404, detail="no image has a final label: the dataset archive is empty")
        with zipfile.ZipFile(out, mode="w") as archive:
            for pair in pairs:
                for key, path in pair.items():
                    real = self.resolved_inside(path)
                    if real is None:
                        raise outside_studies(f"{key} {Path(path).name!r}")
                    archive.write(real, arcname=f"{key}/{real.name}")
            archive.writestr("metadata.json", self._datastore.model_dump_json(exclude={"base_path"}))
        return len(pairs)

    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        """The stored info of a validated label ({} when unknown)."""
        return super().get_label_info(checked_id(label_id, "label"), checked_id(label_tag, "tag"))

    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        """Update the info of a validated label.

        Raises:
            HTTPException: 400 for a bad id or tag, 404 for a label the datastore does not hold.
        """
        label_id, label_tag = checked_id(label_id, "label"), checked_id(label_tag, "tag")
        try:
            super().update_label_info(label_id, label_tag, info)
        except LabelNotFoundException as err:
            raise label_not_found(label_id, label_tag) from err

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a validated label.

        Raises:
            HTTPException: 400 for a bad id or tag, 404 for a label the datastore does not hold, 403 when it resolves
                outside the studies folder.
        """
        label_id, label_tag = checked_id(label_id, "label"), checked_id(label_tag, "tag")
        if self._datastore.label(label_id, label_tag) is None:
            raise label_not_found(label_id, label_tag)
        self.get_label_uri(label_id, label_tag)
        super().remove_label(label_id, label_tag)
