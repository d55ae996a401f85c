"""The hostile-input corpus: one builder per case, each writing its input into a fresh tmp folder at test time.

A case says what the audit must do with it (`error`, `skip` or `ok`, see test_hostile_inputs.py) and what the
one-line error or the errors.parquet record must say. Nothing here runs the audit.
"""

from __future__ import annotations

import codecs
import errno
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

Outcome = Literal["error", "skip", "ok"]

USER_MODULE = """
from torch import nn

def tiny(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, num_classes))
"""


@dataclass
class Setup:
    """What a builder made: DATA, extra CLI arguments, and what the test must arrange or may check."""

    data: Path
    args: list[str] = field(default_factory=list)
    out: Path | None = None  # None: the test picks a fresh tmp path
    sys_path: Path | None = None  # a folder to put on sys.path (a user model module lives there)
    patch: Callable[[pytest.MonkeyPatch], None] | None = None  # an OS condition root cannot make for real
    marker: Path | None = None  # a file a hostile payload would create if it ran


@dataclass(frozen=True)
class HostileCase:
    """One hostile input and the behaviour it must get."""

    name: str
    build: Callable[[Path], Setup]
    outcome: Outcome
    message: tuple[str, ...] = ()  # substrings of the one stderr line (error)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> substring of its errors.parquet record
    check: Callable[[Path, pd.DataFrame], None] | None = None  # more assertions on a finished run's samples
    root_skip: str | None = None  # reason to skip when running as root


# -- small writers --------------------------------------------------------------------------------------------


def _pixels(seed: int, size: int = 8) -> np.ndarray:
    """A deterministic 8x8 pattern; distinct seeds give distinct bytes (no accidental duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def write_png(path: Path, seed: int, mode: str = "L", fmt: str | None = None) -> Path:
    """An 8x8 image in PIL `mode`, saved in the format of `fmt` (default: from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed), mode="L").convert(mode).save(path, format=fmt)
    return path


def write_classes(root: Path, classes: tuple[str, ...] = ("a", "b"), n: int = 4, start: int = 0) -> Path:
    """`n` readable 8x8 grayscale PNGs per class under root/<class>/."""
    for ci, label in enumerate(classes):
        for i in range(n):
            write_png(root / label / f"{i}.png", seed=start + 100 * ci + i)
    return root


def png_with_size(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares `width` x `height` grayscale pixels (a bomb header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF0 header is patched to declare `width` x `height` pixels."""
    buffer = BytesIO()
    Image.fromarray(_pixels(7), mode="L").save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def write_manifest(root: Path, rows: list[str], *, header: str = "filepath,label", name: str = "manifest.csv") -> Path:
    """A CSV manifest in `root` with `header` and raw `rows` (written verbatim, so hostile text stays hostile)."""
    path = root / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def manifest_dataset(tmp: Path) -> tuple[Path, list[str]]:
    """img/a/0-3.png and img/b/0-3.png below tmp/data, and their manifest rows `img/<c>/<i>.png,<c>`."""
    root = write_classes(tmp / "data" / "img").parent
    return root, [f"img/{c}/{i}.png,{c}" for c in "ab" for i in range(4)]


# -- image files ----------------------------------------------------------------------------------------------


def build_truncated(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), mode="RGB")
    big.save(tmp / "big.png")
    good = (tmp / "big.png").read_bytes()
    (root / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    return Setup(root)


def build_corrupt_bytes(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "a" / "garbage.jpg").write_bytes(np.random.default_rng(3).bytes(2048))
    (root / "b" / "fake-header.png").write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(4).bytes(512))
    return Setup(root)


def build_zero_byte(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "b" / "empty.png").write_bytes(b"")
    return Setup(root)


def build_wrong_extension(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    write_png(root / "a" / "really-a-png.jpg", seed=50, fmt="PNG")
    (root / "b" / "notes.png").write_text("these are not pixels\n", encoding="utf-8")
    return Setup(root)


def build_cmyk_jpeg(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    for i in range(2):
        write_png(root / "a" / f"cmyk{i}.jpg", seed=60 + i, mode="CMYK")
    return Setup(root)


def build_rgba_png(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    for i in range(2):
        path = root / "b" / f"rgba{i}.png"
        rgba = np.dstack([_pixels(70 + i)] * 3 + [np.where(_pixels(80 + i) > 128, 255, 0).astype(np.uint8)])
        Image.fromarray(rgba, mode="RGBA").save(path)
    return Setup(root)


def build_16bit_png(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    for i in range(2):
        deep = np.random.default_rng(90 + i).integers(0, 65536, (8, 8), dtype=np.uint16)
        Image.fromarray(deep).save(root / "a" / f"deep{i}.png")
    return Setup(root)


def build_palette_png(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    for i in range(2):
        image = Image.fromarray(np.dstack([_pixels(110 + i)] * 3), mode="RGB").quantize(colors=8)
        image.save(root / "b" / f"palette{i}.png", transparency=0)
        image.save(root / "b" / f"anim{i}.gif")  # GIF: palette again, read as its first frame
    return Setup(root)


def build_gray_mixed_rgb(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    for i in range(2):
        write_png(root / "a" / f"colour{i}.png", seed=120 + i, mode="RGB")
        write_png(root / "b" / f"one-bit{i}.png", seed=130 + i, mode="1")
    return Setup(root)


def build_bomb_header(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "a" / "bomb-10gpx.png").write_bytes(png_with_size(100_000, 100_000))  # PIL raises DecompressionBombError
    (root / "a" / "bomb-4gpx.jpg").write_bytes(jpeg_with_size(65_500, 65_500))
    return Setup(root)


def build_bomb_warning(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "b" / "bomb-100mpx.png").write_bytes(png_with_size(10_000, 10_000))  # PIL only warns at this size
    (root / "b" / "bomb-72mpx.png").write_bytes(png_with_size(8_500, 8_500))  # under PIL's limit, over ours
    return Setup(root)


def build_sparse_huge_file(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    with (root / "a" / "huge.png").open("wb") as handle:
        handle.truncate(3 * 1024**3)  # sparse: no disk used, but read_bytes would allocate 3 GiB
    return Setup(root)


def build_fifo(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    os.mkfifo(root / "b" / "pipe.png")  # reading it would block forever: no writer ever comes
    return Setup(root)


def build_symlink_dir_loop(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    (root / "b" / "self").symlink_to(root / "b", target_is_directory=True)
    return Setup(root)


def build_symlink_file_loop(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "a" / "ping.png").symlink_to(root / "a" / "pong.png")
    (root / "a" / "pong.png").symlink_to(root / "a" / "ping.png")
    (root / "b" / "dangling.png").symlink_to(root / "b" / "gone.png")
    return Setup(root)


def build_data_path_symlink_loop(tmp: Path) -> Setup:
    data = tmp / "in" / "data"
    data.parent.mkdir()
    data.symlink_to(data)
    return Setup(data)


def build_unreadable_chmod(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    write_png(root / "a" / "secret.png", seed=140).chmod(0)
    return Setup(root)


def build_unreadable_simulated(tmp: Path) -> Setup:
    """chmod cannot stop root, so the kernel's EACCES is injected for one file (the decode path is the same)."""
    root = write_classes(tmp / "data")
    secret = write_png(root / "a" / "secret.png", seed=141)
    original = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == secret:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self)

    return Setup(root, patch=lambda mp: mp.setattr(Path, "read_bytes", read_bytes))


def build_non_image_files(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "README.txt").write_text("about this data\n", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(64))
    (root / "a" / "Thumbs.db").write_bytes(bytes(32))
    (root / "a" / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")  # macOS resource fork beside a real image
    (root / "b" / "labels.json").write_text("{}", encoding="utf-8")
    write_png(root / "__MACOSX" / "a" / "9.png", seed=150)
    write_png(root / ".git" / "x" / "9.png", seed=151)
    return Setup(root)


def build_all_unreadable(tmp: Path) -> Setup:
    root = tmp / "data"
    for name in ("a/1.png", "a/2.png", "b/1.png", "b/2.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"nope")
    return Setup(root)


# -- names and labels -------------------------------------------------------------------------------------------

HOSTILE_LABELS = (
    "<script>alert(1)</script>",
    '"quoted", label',
    "Ünïcødé 猫",
    "חתול",  # right-to-left letters (no override characters): a real Hebrew label
    "x" * 300,
)


def build_hostile_labels_csv(tmp: Path) -> Setup:
    root = tmp / "data"
    rows = []
    for ci, label in enumerate(HOSTILE_LABELS):
        for i in range(2):
            write_png(root / "img" / f"{ci}_{i}.png", seed=200 + 10 * ci + i)
            quoted = '"' + label.replace('"', '""') + '"'
            rows.append(f"img/{ci}_{i}.png,{quoted}")
    return Setup(write_manifest(root, rows))


def check_hostile_labels(run: Path, samples: pd.DataFrame) -> None:
    assert set(samples["label"]) == set(HOSTILE_LABELS)
    html = (run / "index.html").read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html  # autoescaped, never injected


HOSTILE_FILE_NAMES = (
    "<img src=x onerror=alert(1)>.png",
    'it\'s "quoted".png',
    "line\nbreak.png",
    "猫 Ünï.png",
    "\u202egnp.exe.png",
    "y" * 240 + ".png",
)


def build_hostile_paths(tmp: Path) -> Setup:
    root = write_classes(tmp / "data", classes=("a", "<b onmouseover=alert(1)>"), n=2)
    for i, name in enumerate(HOSTILE_FILE_NAMES):
        write_png(root / "a" / name, seed=300 + i)
    deep = root / "a" / "/".join(["deeper"] * 30)
    write_png(deep / "deep.png", seed=320)
    return Setup(root)


def check_hostile_paths(run: Path, samples: pd.DataFrame) -> None:
    names = {Path(p).name for p in samples["filepath"]}
    assert set(HOSTILE_FILE_NAMES) <= names
    assert "deep.png" in names
    assert set(samples["label"]) == {"a", "<b onmouseover=alert(1)>"}
    assert "<b onmouseover=alert(1)>" not in (run / "index.html").read_text(encoding="utf-8")


def build_broken_file_with_newline_name(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "a" / "bad\nname\u202e.png").write_bytes(b"not an image")
    return Setup(root)


def build_missing_data_path_with_newline(tmp: Path) -> Setup:
    return Setup(tmp / "in" / "no\nsuch\u202edata")


def build_label_newline_csv(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    rows[5] = 'img/b/1.png,"b\nsneaky"'
    return Setup(write_manifest(root, rows))


def build_label_bidi_override(tmp: Path) -> Setup:
    root = write_classes(tmp / "data", classes=("a", "\u202eb"))
    return Setup(root)


def build_class_folder_control_char(tmp: Path) -> Setup:
    root = write_classes(tmp / "data", classes=("a", "b\tc"))
    return Setup(root)


# -- CSV manifests --------------------------------------------------------------------------------------------


def build_csv_bom_crlf_backslash(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    rows = [row.replace("/", "\\") for row in rows]
    text = "\r\n".join([" FilePath , LABEL ", *rows]) + "\r\n"
    (root / "manifest.csv").write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    return Setup(root / "manifest.csv")


def build_csv_duplicate_rows(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, [*rows, rows[2]]))


def build_csv_duplicate_ids(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, [*rows, "./img//a/1.png,b"]))  # a second spelling of line 3's file


def build_csv_duplicate_columns(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(
        write_manifest(root, [f"{row},{row.rsplit(',', 1)[1]}" for row in rows], header="filepath,label,label")
    )


def build_csv_ragged(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    rows[3] += ",extra,cells"
    return Setup(write_manifest(root, rows))


def build_csv_wrong_header(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, rows, header="path,class"))


def build_csv_not_utf8(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    text = "\n".join(["filepath,label", *[r.replace(",a", ",café").replace(",b", ",crème") for r in rows]])
    (root / "manifest.csv").write_bytes(text.encode("latin-1"))
    return Setup(root / "manifest.csv")


def build_csv_empty(tmp: Path) -> Setup:
    root, _ = manifest_dataset(tmp)
    (root / "manifest.csv").write_bytes(b"")
    return Setup(root / "manifest.csv")


def build_csv_header_only(tmp: Path) -> Setup:
    root, _ = manifest_dataset(tmp)
    return Setup(write_manifest(root, []))


def build_csv_path_traversal(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, [*rows[:4], "../../etc/passwd,a", *rows[4:]]))


def build_csv_absolute_outside(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, [*rows, "/etc/passwd,b"]))


def build_csv_symlink_escape(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    (root / "img" / "a" / "link.png").symlink_to("/etc/passwd")
    return Setup(write_manifest(root, [*rows, "img/a/link.png,a"]))


def build_csv_missing_file_and_folder_row(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    return Setup(write_manifest(root, [*rows, "img/a/never-made.png,a", "img/b,b"]))


def build_csv_split_blank_row(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    splits = ["train", "val", "train", "train", "train", "val", "", "train"]
    return Setup(
        write_manifest(root, [f"{r},{s}" for r, s in zip(rows, splits, strict=True)], header="filepath,label,split")
    )


def build_csv_nan_mixed_columns(tmp: Path) -> Setup:
    root, rows = manifest_dataset(tmp)
    number = ["1", "2.5", "", "NaN", "nan", "inf", "-1e3", "NA"]
    mixed = ["1", "two", "", "3.0", "<b>4</b>", "None", "null", "5"]
    body = [f"{r},{n},{m},," for r, n, m in zip(rows, number, mixed, strict=True)]
    return Setup(write_manifest(root, body, header="filepath,label,score,mixed,blank,Blank Too"))


def check_nan_mixed(run: Path, samples: pd.DataFrame) -> None:
    assert samples["meta_score"].dtype == "float64"
    assert int(samples["meta_score"].isna().sum()) == 4  # '', 'NaN', 'nan' and 'NA' are all missing
    assert np.isinf(samples["meta_score"]).sum() == 1
    mixed = samples["meta_mixed"]
    assert sorted(mixed.dropna()) == ["1", "3.0", "5", "<b>4</b>", "two"]  # 'None' and 'null' are missing too
    assert samples["meta_blank"].isna().all()
    assert samples["meta_blank_too"].isna().all()


# -- metadata joins -------------------------------------------------------------------------------------------


def build_metadata_without_filepath(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (tmp / "meta.csv").write_text("path,site\na/0.png,x\n", encoding="utf-8")
    return Setup(root, ["--metadata", str(tmp / "meta.csv")])


def build_metadata_unknown_rows_and_labels(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    lines = ["filepath,label,site", "a/0.png,zebra,x", "b/1.png,a,y", "c/9.png,zebra,z", "../../etc/passwd,a,w"]
    lines += ["/etc/shadow,b,v", "a/missing.png,a,u"]
    (tmp / "meta.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Setup(root, ["--metadata", str(tmp / "meta.csv")])


def check_metadata_unknown(run: Path, samples: pd.DataFrame) -> None:
    assert len(samples) == 8
    assert set(samples["label"]) == {"a", "b"}
    by_path = dict(zip(samples["relpath"], samples["meta_label"], strict=True))
    assert by_path["a/0.png"] == "zebra"
    assert by_path["b/1.png"] == "a"
    assert samples["meta_site"].isna().sum() == 6


def build_metadata_duplicate_rows(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (tmp / "meta.csv").write_text("filepath,site\na/0.png,x\nb/0.png,y\na//0.png,z\n", encoding="utf-8")
    return Setup(root, ["--metadata", str(tmp / "meta.csv")])


# -- layouts, splits, classes ---------------------------------------------------------------------------------


def build_split_val_empty(tmp: Path) -> Setup:
    root = tmp / "data"
    write_classes(root / "train")
    for folder in ("val/a", "val/b", "test"):
        (root / folder).mkdir(parents=True)
    return Setup(root)


def check_split_carved(run: Path, samples: pd.DataFrame) -> None:
    assert set(samples["split"]) == {"train", "val"}
    assert samples.groupby("label")["split"].nunique().eq(2).all()  # val carved from train, per class


def build_split_no_train(tmp: Path) -> Setup:
    root = tmp / "data"
    write_classes(root / "val")
    write_classes(root / "test", start=50)
    return Setup(root)


def build_single_class(tmp: Path) -> Setup:
    root = tmp / "data"
    write_classes(root, classes=("only",), n=6)
    return Setup(root)


def build_empty_class_folders(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    (root / "c").mkdir()
    (root / "d").mkdir()
    (root / "d" / "README.txt").write_text("nothing here yet\n", encoding="utf-8")
    return Setup(root)


def check_two_classes(run: Path, samples: pd.DataFrame) -> None:
    assert set(samples["label"]) == {"a", "b"}
    assert len(samples) == 8


def build_zip_slip(tmp: Path) -> Setup:
    path = tmp / "data" / "omniglot.zip"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet in ("Latin", "Greek"):
            for drawer in (1, 2):
                buffer = BytesIO()
                Image.fromarray(_pixels(400 + drawer + len(alphabet))).save(buffer, format="PNG")
                archive.writestr(f"images/{alphabet}/character01/0101_{drawer:02d}.png", buffer.getvalue())
        archive.writestr("../../escaped.png", b"payload")
    return Setup(path)


def build_out_dir_not_a_run(tmp: Path) -> Setup:
    root = write_classes(tmp / "data")
    out = tmp / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete\n", encoding="utf-8")
    return Setup(root, ["--overwrite"], out=out)


# -- model weights and rule packs -----------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create the marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _user_model(tmp: Path) -> Path:
    package = tmp / "pymods" / "hostile_usermodels"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODULE)
    return tmp / "pymods"


def _weights_setup(tmp: Path, weights: Path, marker: Path | None = None) -> Setup:
    root = write_classes(tmp / "data")
    args = ["--model", "hostile_usermodels.nets:tiny", "--weights", str(weights)]
    return Setup(root, args, sys_path=_user_model(tmp), marker=marker)


def build_weights_pickled_payload(tmp: Path) -> Setup:
    marker = tmp / "pwned"
    weights = tmp / "evil.pt"
    torch.save({"0.weight": torch.zeros(8, 64), "hook": _Payload(marker)}, weights)
    return _weights_setup(tmp, weights, marker)


def build_weights_raw_pickle(tmp: Path) -> Setup:
    marker = tmp / "pwned"
    weights = tmp / "evil.pkl"
    weights.write_bytes(pickle.dumps(_Payload(marker)))
    return _weights_setup(tmp, weights, marker)


def build_weights_garbage(tmp: Path) -> Setup:
    weights = tmp / "weights.pt"
    weights.write_text("not a checkpoint\n", encoding="utf-8")
    return _weights_setup(tmp, weights)


def build_weights_not_a_dict(tmp: Path) -> Setup:
    weights = tmp / "weights.pt"
    torch.save([torch.zeros(2)], weights)
    return _weights_setup(tmp, weights)


def _rules_setup(tmp: Path, text: str) -> Setup:
    root = write_classes(tmp / "data")
    rules = tmp / "rules.yaml"
    rules.write_text(text, encoding="utf-8")
    return Setup(root, ["--rules", str(rules)], marker=tmp / "pwned")


def build_rules_malformed_yaml(tmp: Path) -> Setup:
    return _rules_setup(tmp, "rules:\n  - id: x\n    metric: [unclosed\n\tseverity: critical\n")


def build_rules_python_tag(tmp: Path) -> Setup:
    return _rules_setup(tmp, f"rules: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n")


def build_rules_not_a_mapping(tmp: Path) -> Setup:
    return _rules_setup(tmp, "- just\n- a list\n")


# -- the corpus -----------------------------------------------------------------------------------------------

CASES: tuple[HostileCase, ...] = (
    HostileCase("truncated-png", build_truncated, "skip", skipped={"truncated.png": "not a readable image"}),
    HostileCase(
        "corrupt-bytes",
        build_corrupt_bytes,
        "skip",
        skipped={"garbage.jpg": "re-export it", "fake-header.png": "not a readable image"},
    ),
    HostileCase("zero-byte", build_zero_byte, "skip", skipped={"empty.png": "empty (0 bytes)"}),
    HostileCase("wrong-extension", build_wrong_extension, "skip", skipped={"notes.png": "not a readable image"}),
    HostileCase("cmyk-jpeg", build_cmyk_jpeg, "ok"),
    HostileCase("rgba-png", build_rgba_png, "ok"),
    HostileCase("16-bit-png", build_16bit_png, "ok"),
    HostileCase("palette-png-and-gif", build_palette_png, "ok"),
    HostileCase("grayscale-mixed-with-rgb", build_gray_mixed_rgb, "ok"),
    HostileCase(
        "bomb-huge-declared-size",
        build_bomb_header,
        "skip",
        skipped={"bomb-10gpx.png": "decompression-bomb", "bomb-4gpx.jpg": "decompression-bomb"},
    ),
    HostileCase(
        "bomb-over-warning-limit",
        build_bomb_warning,
        "skip",
        skipped={"bomb-100mpx.png": "decompression-bomb", "bomb-72mpx.png": "decompression-bomb"},
    ),
    HostileCase("sparse-3gib-file", build_sparse_huge_file, "skip", skipped={"huge.png": "over the"}),
    HostileCase("fifo-named-png", build_fifo, "skip", skipped={"pipe.png": "not a regular file"}),
    HostileCase("symlink-folder-loop", build_symlink_dir_loop, "ok", check=check_two_classes),
    HostileCase(
        "symlink-file-loop-and-dangling",
        build_symlink_file_loop,
        "skip",
        skipped={"ping.png": "symbolic link loop", "pong.png": "symbolic link loop", "dangling.png": "broken link"},
    ),
    HostileCase("data-path-symlink-loop", build_data_path_symlink_loop, "error", ("in/data", "does not exist")),
    HostileCase(
        "unreadable-chmod-000",
        build_unreadable_chmod,
        "skip",
        skipped={"secret.png": "permission denied"},
        root_skip="running as root: chmod 000 does not stop root reading (unreadable-simulated covers the path)",
    ),
    HostileCase(
        "unreadable-simulated", build_unreadable_simulated, "skip", skipped={"secret.png": "permission denied"}
    ),
    HostileCase("non-image-files-mixed-in", build_non_image_files, "ok", check=check_two_classes),
    HostileCase("all-images-unreadable", build_all_unreadable, "error", ("none of the 4 image(s) could be read",)),
    HostileCase("hostile-labels-csv", build_hostile_labels_csv, "ok", check=check_hostile_labels),
    HostileCase("hostile-file-and-folder-names", build_hostile_paths, "ok", check=check_hostile_paths),
    HostileCase(
        "broken-file-with-newline-name",
        build_broken_file_with_newline_name,
        "skip",
        skipped={"bad\nname\u202e.png": "bad\\nname\\u202e.png: not a readable image"},
    ),
    HostileCase(
        "missing-data-path-with-newline",
        build_missing_data_path_with_newline,
        "error",
        ("no\\nsuch\\u202edata", "does not exist"),
    ),
    HostileCase("label-with-newline", build_label_newline_csv, "error", ("'b\\nsneaky'", "img/b/1.png", "rename")),
    HostileCase("label-with-bidi-override", build_label_bidi_override, "error", ("'\\u202eb'", "0.png", "rename")),
    HostileCase("class-folder-with-tab", build_class_folder_control_char, "error", ("'b\\tc'", "rename")),
    HostileCase("csv-bom-crlf-backslashes", build_csv_bom_crlf_backslash, "ok", check=check_two_classes),
    HostileCase(
        "csv-duplicate-rows", build_csv_duplicate_rows, "error", ("manifest.csv", "lines 4 and 10", "keep one")
    ),
    HostileCase("csv-duplicate-sample-ids", build_csv_duplicate_ids, "error", ("lines 3 and 10", "img/a/1.png")),
    HostileCase("csv-duplicate-columns", build_csv_duplicate_columns, "error", ("manifest.csv", "'label'", "rename")),
    HostileCase("csv-ragged-rows", build_csv_ragged, "error", ("manifest.csv", "line 5", "column count")),
    HostileCase("csv-wrong-header", build_csv_wrong_header, "error", ("manifest.csv", "'filepath'", "path, class")),
    HostileCase("csv-not-utf8", build_csv_not_utf8, "error", ("manifest.csv", "UTF-8")),
    HostileCase("csv-empty-file", build_csv_empty, "error", ("manifest.csv", "is empty", "header row")),
    HostileCase("csv-header-only", build_csv_header_only, "error", ("manifest.csv", "no images")),
    HostileCase("csv-path-traversal", build_csv_path_traversal, "error", ("line 6", "../../etc/passwd", "relative")),
    HostileCase("csv-absolute-path-outside", build_csv_absolute_outside, "error", ("line 10", "/etc/passwd")),
    HostileCase("csv-symlink-escape", build_csv_symlink_escape, "error", ("line 10", "img/a/link.png", "link")),
    HostileCase(
        "csv-missing-file-and-folder-row",
        build_csv_missing_file_and_folder_row,
        "skip",
        skipped={"never-made.png": "file not found", "b": "a folder"},
    ),
    HostileCase("csv-split-blank-row", build_csv_split_blank_row, "error", ("line 8", "img/b/2.png", "train, val")),
    HostileCase("csv-nan-and-mixed-types", build_csv_nan_mixed_columns, "ok", check=check_nan_mixed),
    HostileCase(
        "metadata-without-filepath", build_metadata_without_filepath, "error", ("meta.csv", "'filepath'", "path, site")
    ),
    HostileCase(
        "metadata-unknown-files-and-labels",
        build_metadata_unknown_rows_and_labels,
        "ok",
        check=check_metadata_unknown,
    ),
    HostileCase("metadata-duplicate-rows", build_metadata_duplicate_rows, "error", ("meta.csv", "lines 2 and 4")),
    HostileCase("split-val-and-test-empty", build_split_val_empty, "ok", check=check_split_carved),
    HostileCase("split-without-train", build_split_no_train, "error", ("no 'train' rows", "add training images")),
    HostileCase("single-class", build_single_class, "error", ("'only'", "least two classes")),
    HostileCase("empty-class-folders", build_empty_class_folders, "ok", check=check_two_classes),
    HostileCase("zip-slip", build_zip_slip, "error", ("omniglot.zip", "../../escaped.png", "zip-slip")),
    HostileCase("out-dir-not-a-run", build_out_dir_not_a_run, "error", ("precious", "not an auditor run")),
    HostileCase(
        "weights-pickled-payload", build_weights_pickled_payload, "error", ("evil.pt", "not a safe state dict")
    ),
    HostileCase("weights-raw-pickle", build_weights_raw_pickle, "error", ("evil.pkl", "not a safe state dict")),
    HostileCase("weights-garbage", build_weights_garbage, "error", ("weights.pt", "model.state_dict()")),
    HostileCase("weights-not-a-dict", build_weights_not_a_dict, "error", ("weights.pt", "expected a state dict")),
    HostileCase("rules-malformed-yaml", build_rules_malformed_yaml, "error", ("rules.yaml", "malformed YAML", "line")),
    HostileCase("rules-python-tag", build_rules_python_tag, "error", ("rules.yaml", "python/object")),
    HostileCase("rules-not-a-mapping", build_rules_not_a_mapping, "error", ("rules.yaml",)),
)
