"""Where streamed images come from, and the stable row id each one keeps: an ImageNet-style folder
(`<split>/<wnid>/<file>.JPEG`, rows in sorted relative-path order) or WebDataset-style tar shards
(`shard-000000.tar` holding `<key>.jpg` + `<key>.cls`, rows in shard-name then member order).

Memory stays bounded: a folder keeps its relative paths as one fixed-width bytes array (about 40 B a row, no
Python object per image); shards keep only their per-shard sample counts, and samples are read member by
member. No image is held beyond the one being decoded.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from richkd.data.decode import IMAGE_EXTENSIONS
from richkd.engine.io import write_atomic
from richkd.errors import RichKDError

SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
SHARD_SUFFIX = ".tar"


class RawSample(NamedTuple):
    row: int  # stable row id within the split
    label: int
    name: str  # relative path or shard:key, for error messages
    data: bytes  # encoded image


class FolderSource:
    """An ImageNet-style split folder: `root/<class>/.../<image>`; labels index the sorted class names.

    Pass the train split's `classes` when opening val, so a class missing from one split keeps its label.
    """

    def __init__(self, root: str | Path, classes: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise RichKDError(f"image folder {self.root} does not exist; expected <split>/<class>/<image> files")
        found = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        self.classes: tuple[str, ...] = tuple(found if classes is None else classes)
        extra = sorted(set(found) - set(self.classes))
        if extra:
            raise RichKDError(
                f"{self.root} has class folders not in the class list (e.g. {extra[0]}); pass the "
                "train split's classes or remove them"
            )
        index = {c: i for i, c in enumerate(self.classes)}
        rel: list[str] = []
        for cls in found:
            for dirpath, dirnames, filenames in os.walk(self.root / cls):
                dirnames.sort()
                prefix = os.path.relpath(dirpath, self.root)
                rel += [f"{prefix}/{f}" for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not rel:
            raise RichKDError(f"no images under {self.root}/<class>/; expected e.g. {self.root}/n01440764/x.JPEG")
        rel.sort()
        self.paths = np.array([p.encode() for p in rel], dtype=np.bytes_)  # [N] fixed width, one block
        self.labels = np.array([index[p.split("/", 1)[0]] for p in rel], dtype=np.int32)  # [N]

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, row: int) -> RawSample:
        rel = self.paths[row].decode()
        try:
            data = (self.root / rel).read_bytes()
        except OSError as err:
            raise RichKDError(f"cannot read {self.root / rel} ({err.strerror}); was the folder changed?") from None
        return RawSample(row, int(self.labels[row]), rel, data)


def _split_member(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name; the rest is the field."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower() if dot else ""


def _iter_shard_samples(path: Path, *, with_data: bool) -> Iterator[tuple[str, int, str, bytes]]:
    """(key, label, image member name, image bytes or b"") for each sample of one shard, in member order.

    Members of one sample must be adjacent (the WebDataset convention); other fields are ignored.
    """
    try:
        tar = tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError) as err:
        raise RichKDError(f"shard {path} is not a readable tar archive ({err})") from None
    with tar:
        key: str | None = None
        fields: dict[str, tarfile.TarInfo] = {}

        def finish() -> tuple[str, int, str, bytes] | None:
            if key is None:
                return None
            image = next((fields[e] for e in SHARD_IMAGE_EXTS if e in fields), None)
            if image is None or "cls" not in fields:
                raise RichKDError(
                    f"shard {path}: sample {key!r} lacks a {'.jpg' if image is None else '.cls'} member; "
                    "every sample needs <key>.jpg and <key>.cls"
                )
            label_text = _read_member(tar, fields["cls"]).decode().strip()
            if not label_text.isdigit():
                raise RichKDError(f"shard {path}: {key}.cls holds {label_text[:20]!r}, not a class index")
            return key, int(label_text), image.name, _read_member(tar, image) if with_data else b""

        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = _split_member(member.name)
            if member_key != key:
                sample = finish()
                if sample is not None:
                    yield sample
                key, fields = member_key, {}
            fields[ext] = member
        sample = finish()
        if sample is not None:
            yield sample


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    fh = tar.extractfile(member)
    if fh is None:
        raise RichKDError(f"tar member {member.name} is not a regular file")
    with fh:
        return fh.read()


class ShardSource:
    """WebDataset-style tar shards in one folder (`*.tar`, sorted by name); row ids run over shards in order.

    Opening reads every shard's headers and labels once (no image bytes) to count samples per shard.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise RichKDError(f"shard folder {self.root} does not exist; expected shard-000000.tar, ...")
        self.shards = sorted(p for p in self.root.iterdir() if p.name.endswith(SHARD_SUFFIX))
        if not self.shards:
            raise RichKDError(f"no *.tar shards in {self.root}; expected shard-000000.tar, shard-000001.tar, ...")
        counts, labels = [], []
        for shard in self.shards:
            shard_labels = [label for _, label, _, _ in _iter_shard_samples(shard, with_data=False)]
            counts.append(len(shard_labels))
            labels += shard_labels
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [S + 1] first row per shard
        self.labels = np.array(labels, dtype=np.int32)  # [N] 4 B a row: CRD draws negatives by class
        self.classes: tuple[str, ...] = _read_classes(self.root, self.labels)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def iter_shard(self, shard: int) -> Iterator[RawSample]:
        """Samples of one shard with their global row ids; raises if the shard changed since opening."""
        path = self.shards[shard]
        row = int(self.offsets[shard])
        for key, label, _, data in _iter_shard_samples(path, with_data=True):
            if row >= self.offsets[shard + 1]:
                raise RichKDError(f"shard {path} grew since it was indexed; restart to re-index")
            yield RawSample(row, label, f"{path.name}:{key}", data)
            row += 1
        if row != self.offsets[shard + 1]:
            raise RichKDError(f"shard {path} shrank since it was indexed; restart to re-index")


CLASSES_FILE = "classes.txt"


def _read_classes(root: Path, labels: np.ndarray[Any, Any]) -> tuple[str, ...]:
    """Class names of a shard set: `classes.txt` (one name a line, label order) beside the shards, written by
    `write_shards`; without it, the labels' indices as names ("0", "1", ...)."""
    path = root / CLASSES_FILE
    top = int(labels.max()) + 1 if labels.size else 0
    if not path.is_file():
        return tuple(str(i) for i in range(top))
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if len(names) < top:
        raise RichKDError(
            f"{path} lists {len(names)} classes but a .cls member holds label {top - 1}; fix the file or the shards"
        )
    return names


def write_shards(source: FolderSource, out_dir: Path, n_shards: int) -> list[Path]:
    """Pack a folder split into `n_shards` WebDataset tars of contiguous rows, so row ids are unchanged.

    Keys are the relative paths without extension (`<class>/<stem>`); `.cls` holds the label index, and
    `classes.txt` the class names in label order (so a shard set keeps its wnids).
    """
    if n_shards < 1 or n_shards > len(source):
        raise RichKDError(f"n_shards must be between 1 and the number of images ({len(source)}), got {n_shards}")
    bounds = np.linspace(0, len(source), n_shards + 1).round().astype(int)
    written = []
    for s in range(n_shards):
        path = out_dir / f"shard-{s:06d}{SHARD_SUFFIX}"

        def write(fh: IO[bytes], lo: int = int(bounds[s]), hi: int = int(bounds[s + 1])) -> None:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for row in range(lo, hi):
                    sample = source.read(row)
                    key = sample.name.rsplit(".", 1)[0]
                    _add_bytes(tar, f"{key}.jpg", sample.data)
                    _add_bytes(tar, f"{key}.cls", str(sample.label).encode())

        write_atomic(path, write)
        written.append(path)
    names = "".join(f"{c}\n" for c in source.classes).encode()
    write_atomic(out_dir / CLASSES_FILE, lambda fh: fh.write(names))
    return written


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
