"""Every hostile input of the corpus (hostile_corpus.py) through the real CLI, `auditor.cli.main` in-process.

Each case ends in one of three outcomes, checked with the same assertions for all:

- error: exit 2 and exactly one printed stderr line, `auditor: error: ...`, naming the file / row / option and
  the fix; the run directory is absent afterwards, or exactly as it was before (`snapshot`).
- skip: exit 0; the bad file is recorded in errors.parquet (one line naming it and the fix) and is not a sample.
- ok: exit 0 with an empty errors.parquet: the input is unusual but valid, and is read correctly.

For every case: no traceback, no printed line besides log records (none at all on success), no
DecompressionBombWarning escaping, the input folder unchanged, and no hostile payload run.

Rule of thumb for the decisions: one bad *image* never stops an audit (skip); anything that makes the *dataset*,
a manifest, a model or a rule file ambiguous or unsafe stops it before any run directory is kept (error).

| case | input | outcome | why |
|---|---|---|---|
| truncated-png | half of a valid PNG | skip | one bad image |
| corrupt-bytes | random bytes as .jpg; PNG signature + junk | skip | one bad image |
| zero-byte | empty .png | skip | one bad image |
| wrong-extension | PNG bytes named .jpg; text named .png | skip (text) | the content decides, not the name |
| cmyk-jpeg | CMYK JPEGs | ok | converted to RGB |
| rgba-png | RGBA with transparent pixels | ok | composited on white |
| 16-bit-png | I;16 PNGs | ok | scaled to 8 bits |
| palette-png-and-gif | P mode with transparency; GIF | ok | converted via RGBA |
| grayscale-mixed-with-rgb | L, RGB and 1-bit together | ok | all read as RGB |
| bomb-huge-declared-size | PNG header 100000^2, JPEG SOF 65500^2 | skip | PIL's DecompressionBombError, pre-decode |
| bomb-over-warning-limit | PNG headers 10000^2 and 8500^2 | skip | PIL's warning (made an error) and our 64 Mpx limit |
| sparse-3gib-file | 3 GiB sparse file named .png | skip | size checked before reading (no 3 GiB allocation) |
| fifo-named-png | a named pipe named .png | skip | only regular files are read (no hang) |
| symlink-folder-loop | folder links to the root and to itself | ok | folder links are not followed |
| symlink-file-loop-and-dangling | two links in a loop; a broken link | skip | named as the user sees them |
| data-path-symlink-loop | DATA is a link to itself | error | no dataset to read |
| unreadable-chmod-000 | chmod 000 file | skip | skipped as root (chmod cannot stop root) |
| unreadable-simulated | EACCES injected for one file | skip | the same per-file path, testable as root |
| non-image-files-mixed-in | README.txt, .DS_Store, Thumbs.db, ._x.png, __MACOSX/, .git/ | ok | not candidates |
| all-images-unreadable | every file broken | error | nothing left to audit |
| hostile-labels-csv | <script>, quotes+comma, non-ASCII, Hebrew, 300 chars | ok | kept verbatim, escaped in HTML |
| hostile-file-and-folder-names | HTML, quotes, newline, bidi, 244-char names, 30 deep | ok | paths are data |
| broken-file-with-newline-name | unreadable 'bad<LF>name<U+202E>.png' | skip | recorded as one escaped line |
| missing-data-path-with-newline | DATA 'no<LF>such<U+202E>data', absent | error | printed as one escaped line |
| label-with-newline | quoted label with a line break (CSV) | error | labels reach CI logs and XML |
| label-with-bidi-override | class folder starting with U+202E | error | would display as another label |
| class-folder-with-tab | class folder with a tab | error | control character in a label |
| csv-bom-crlf-backslashes | BOM, CRLF, ' FilePath , LABEL ', Windows paths | ok | normal exports |
| csv-duplicate-rows | one row twice | error | names both lines |
| csv-duplicate-sample-ids | one file spelled two ways (same sample_id) | error | names both lines |
| csv-duplicate-columns | header 'filepath,label,label' | error | pandas would silently rename one |
| csv-ragged-rows | a row with extra cells | error | names the line |
| csv-wrong-header | 'path,class' | error | names the missing columns and those present |
| csv-not-utf8 | latin-1 manifest | error | encoding is ambiguous |
| csv-empty-file | 0 bytes | error | no header |
| csv-header-only | header, no rows | error | no images |
| csv-path-traversal | '../../etc/passwd' row | error | paths stay inside the CSV's folder |
| csv-absolute-path-outside | '/etc/passwd' row | error | as above |
| csv-symlink-escape | row names a link to /etc/passwd | error | links are resolved before the check |
| csv-missing-file-and-folder-row | rows naming a missing file and a folder | skip | one bad entry |
| csv-split-blank-row | split column with one blank | error | half-given splits are ambiguous |
| csv-nan-and-mixed-types | '', NaN, nan, NA, None, null, inf, text | ok | markers are NaN, numbers stay numbers |
| metadata-without-filepath | --metadata with 'path,site' | error | names the missing column |
| metadata-unknown-files-and-labels | unknown/outside files; 'label' col., unknown class | ok | adds no samples |
| metadata-duplicate-rows | one file twice (two spellings) | error | names both lines |
| split-val-and-test-empty | train/ full; val/<class>/ and test/ empty | ok | val carved from train |
| split-without-train | only val/ and test/ | error | nothing to train on |
| single-class | one class folder | error | every score would be meaningless |
| empty-class-folders | empty c/, d/ with only a README | ok | not classes |
| zip-slip | Omniglot zip with a '../../' member | error | unsafe archive |
| out-dir-not-a-run | --out a non-empty folder, --overwrite | error | never deletes foreign files |
| weights-pickled-payload | torch.save of an object that runs a command | error | weights_only=True refuses it |
| weights-raw-pickle | plain pickle with the same payload | error | as above, no torch warning line |
| weights-garbage | text file as --weights | error | not a checkpoint |
| weights-not-a-dict | a saved list of tensors | error | not a state dict |
| rules-malformed-yaml | unclosed bracket, tab indent | error | names the line |
| rules-python-tag | '!!python/object/apply:os.system' | error | yaml.safe_load refuses the tag |
| rules-not-a-mapping | a YAML list | error | schema |
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hostile_corpus import CASES, HostileCase
from PIL import Image

from auditor.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]

# The smallest audit that still runs every stage: one epoch, one checkpoint, no cross-fitting.
FAST_ARGS = ["--epochs", "1", "--checkpoints", "1", "--folds", "0", "--batch-size", "8", "--no-fiftyone"]

# A log record as the CLI formats it; everything else on stderr is what the CLI itself printed.
LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")

Snapshot = dict[str, tuple[int, int, int, str | None]] | None


def snapshot(root: Path) -> Snapshot:
    """Every entry below `root` (links not followed, nothing read): type and mode, size, mtime, link target."""
    if not root.exists():
        return None
    entries: dict[str, tuple[int, int, int, str | None]] = {}
    for folder, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(folder) / name
            info = path.lstat()
            target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else None
            entries[str(path.relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns, target)
    return entries


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_hostile_input(
    case: HostileCase, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if case.root_skip is not None and os.geteuid() == 0:
        pytest.skip(case.root_skip)
    setup = case.build(tmp_path)
    if setup.sys_path is not None:
        monkeypatch.syspath_prepend(str(setup.sys_path))
    if setup.patch is not None:
        setup.patch(monkeypatch)
    out = setup.out or tmp_path / "run"
    data_root = setup.data if setup.data.is_dir() else setup.data.parent
    data_before, out_before = snapshot(data_root), snapshot(out)
    capsys.readouterr()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["-q", "audit", str(setup.data), "--out", str(out), *FAST_ARGS, *setup.args])
    err = capsys.readouterr().err
    for name in [m for m in sys.modules if m.startswith("hostile_usermodels")]:
        del sys.modules[name]

    assert "Traceback" not in err, err
    printed = [line for line in err.splitlines() if not LOG_RECORD.match(line)]
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert snapshot(data_root) == data_before, "the audit changed its input folder"
    if setup.marker is not None:
        assert not setup.marker.exists(), "a hostile payload ran"
    if case.outcome == "error":
        assert code == 2, err
        assert len(printed) == 1, printed
        assert printed[0].startswith("auditor: error: "), printed
        for text in case.message:
            assert text in printed[0]
        assert snapshot(out) == out_before, "a failed audit left a half-written run directory"
        return
    assert code == 0, err
    assert printed == []
    errors = pd.read_parquet(out / "errors.parquet")
    recorded = dict(zip(errors["filepath"].map(lambda p: Path(p).name), errors["error"], strict=True))
    assert set(recorded) == set(case.skipped)
    for name, text in case.skipped.items():
        assert text in recorded[name]
        assert "\n" not in recorded[name]
    assert (errors["stage"] == "ingest").all()
    samples = pd.read_parquet(out / "samples.parquet")
    assert not set(errors["sample_id"]) & set(samples["sample_id"])
    assert (out / "index.html").is_file()
    if case.check is not None:
        case.check(out, samples)


# In a real process the CLI's own logging set-up and Python's warning printer write to stderr too; these cases
# would show a stray warning or traceback line there that the in-process run cannot see.
IN_PROCESS_BLIND = (
    "weights-raw-pickle",
    "label-with-newline",
    "bomb-over-warning-limit",
    "symlink-file-loop-and-dangling",
)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in IN_PROCESS_BLIND], ids=lambda case: case.name)
def test_hostile_input_in_a_real_process(case: HostileCase, tmp_path: Path) -> None:
    setup = case.build(tmp_path)
    out = setup.out or tmp_path / "run"
    paths = [str(REPO_ROOT), *([str(setup.sys_path)] if setup.sys_path else []), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONWARNINGS": "default"}
    argv = [sys.executable, "-m", "auditor", "-q", "audit", str(setup.data), "--out", str(out), *FAST_ARGS, *setup.args]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    printed = [line for line in done.stderr.splitlines() if not LOG_RECORD.match(line)]
    assert "Traceback" not in done.stderr, done.stderr
    if case.outcome == "error":
        assert done.returncode == 2, done.stderr
        assert len(printed) == 1, done.stderr
        assert printed[0].startswith("auditor: error: "), done.stderr
        assert not out.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert printed == [], done.stderr
        assert set(pd.read_parquet(out / "errors.parquet")["filepath"].map(lambda p: Path(p).name)) == set(case.skipped)
