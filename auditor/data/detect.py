"""`--format auto`: decide a dataset's layout from its path and first levels of files, without decoding images."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from auditor.data.imagefolder import list_image_relpaths
from auditor.data.images import IMAGE_EXTENSIONS, is_image_file
from auditor.data.mini_imagenet import looks_like_mini_imagenet
from auditor.data.omniglot import looks_like_omniglot
from auditor.data.paths import is_hidden, to_posix
from auditor.errors import DataError

logger = logging.getLogger(__name__)

LAYOUTS_HELP = (
    "an Omniglot zip or folder (<Alphabet>/characterNN/*.png), a mini-ImageNet folder (images/ + train.csv), "
    "a CSV manifest (.csv with filepath,label), or an image folder (<class>/* or {train,val,test}/<class>/*)"
)


def _zip_image_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = [to_posix(n) for n in archive.namelist()]
    except zipfile.BadZipFile as exc:
        raise DataError(f"{path} is not a valid zip archive ({exc}); re-download or re-create it") from None
    return [n for n in names if not is_hidden(n) and is_image_file(Path(n))]


def detect_format(path: Path) -> str:
    """The layout of `path`: 'omniglot', 'mini-imagenet', 'csv' or 'imagefolder'; DataError if none fits.

    Checked in this order: .zip or a folder with `[top/]<Alphabet>/characterNN/*.png` -> omniglot;
    images/ + train.csv -> mini-imagenet; a .csv file -> csv; class subfolders holding images -> imagefolder.
    """
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".zip":
            names = _zip_image_names(path)
            if looks_like_omniglot(names):
                return "omniglot"
            raise DataError(
                f"{path}: zip archives are read only in the Omniglot layout (<Alphabet>/characterNN/*.png) and none "
                "was found inside; extract it and pass the folder (or pass --format)"
            )
        if suffix == ".csv":
            return "csv"
        raise DataError(f"{path} is a file but not a .csv manifest or .zip; auditor reads {LAYOUTS_HELP}")
    relpaths = list_image_relpaths(path)
    if looks_like_omniglot(relpaths):
        return "omniglot"
    if looks_like_mini_imagenet(path):
        return "mini-imagenet"
    if not relpaths:
        raise DataError(
            f"{path}: no image files found (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            f"point DATA at {LAYOUTS_HELP}"
        )
    if any("/" in relpath for relpath in relpaths):
        return "imagefolder"
    raise DataError(f"{path}: cannot tell the dataset layout; expected {LAYOUTS_HELP}. Pass --format to choose one")
