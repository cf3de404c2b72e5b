# Copyright (c) monai-llava-med contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
"""A MONAI Label ``LocalDatastore`` that checks every id, tag and upload before touching the disk.

Stock ``LocalDatastore`` joins client ids into paths (``PUT /datastore/image?image=../x`` writes outside the
studies folder). :class:`LlavaMedDatastore` validates ids and tags against
:data:`~.request_checks.ID_PATTERN`, accepts only the image types the library reads (checked by content too),
caps the upload size, and confirms that every destination resolves inside the studies folder. Refusals are
``fastapi.HTTPException`` 4xx, so the stock endpoints answer them properly. Needs ``monailabel``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException
from monailabel.utils.others.generic import remove_file

from ...errors import LlavaMedInputError
from ...transforms import detect_input_kind
from .http_errors import as_http_error
from .request_checks import (
    IMAGE_EXTENSIONS,
    RequestError,
    RequestLimits,
    check_file_content,
    image_extension,
    validate_id,
)

__all__ = ["LlavaMedDatastore", "checked_id", "image_not_found", "label_not_found"]


def checked_id(value: Any, what: str) -> str:
    """``value`` validated as a datastore id (see :func:`~.request_checks.validate_id`), or a 400."""
    try:
        return validate_id(value, what)
    except RequestError as err:
        raise as_http_error(err) from err


def image_not_found(image_id: str) -> HTTPException:
    """The 404 for an image id the datastore does not hold."""
    return HTTPException(status_code=404, detail=f"image {image_id!r} is not in the datastore")


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
        super().__init__(
            datastore_path,
            extensions=tuple("*" + ext for ext in IMAGE_EXTENSIONS),
            auto_reload=auto_reload,
            read_only=read_only,
        )
        self._root = Path(self._datastore.image_path()).resolve()

    def _inside(self, dest: str | os.PathLike, name: str) -> None:
        path = Path(dest).resolve()
        if path != self._root and self._root not in path.parents:
            raise as_http_error(RequestError("destination is outside the studies folder", name))

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
        """The image file of a validated id ("" when unknown)."""
        return super().get_image_uri(checked_id(image_id, "image"))

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
            HTTPException: 400 for a bad id, 404 for an image the datastore does not hold.
        """
        image_id = checked_id(image_id, "image")
        try:
            super().remove_image(image_id)
        except ImageNotFoundException as err:
            raise image_not_found(image_id) from err

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label file of a validated id and tag ("" when unknown)."""
        return super().get_label_uri(checked_id(label_id, "label"), checked_id(label_tag, "tag"))

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
            HTTPException: 400 for a bad id or tag, 404 for a label the datastore does not hold.
        """
        label_id, label_tag = checked_id(label_id, "label"), checked_id(label_tag, "tag")
        if self._datastore.label(label_id, label_tag) is None:
            raise label_not_found(label_id, label_tag)
        super().remove_label(label_id, label_tag)
