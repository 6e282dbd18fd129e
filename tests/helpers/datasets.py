"""Tiny copies of the real dataset files, built at test time, and a loopback HTTP server.

The archives have exactly the layout of the published files (CUB-200-2011:
``CUB_200_2011.tgz``; Cars-196: ``car_ims.tgz`` + ``cars_annos.mat``) with
a few 12x12 JPEGs per class, so the real download/extract/prepare code runs
against them. The server (stdlib ``http.server`` on 127.0.0.1) supports
``Range`` and can misbehave on purpose: ignore ``Range``, cut the body
short, or answer 416.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

ATTRIBUTE_NAMES = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_wing_color::brown", "has_size::small"]


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def jpeg(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0  # byte-identical archives on every build
    info.type = kind
    info.linkname = link
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
        tar.addfile(info)
    elif data is not None:
        info.size = len(data)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def tar_bytes(entries: list[tuple], mode: str = "w:gz") -> bytes:
    """``entries``: (name, data) for files, (name, None, kind[, link]) for folders, links and devices."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for entry in entries:
            _add(tar, *entry)
    return buffer.getvalue()


def expected_counts(classes: int, per_class: int) -> dict[str, int]:
    """The counts a fixture dataset must pass: classes split in half, per_class images each."""
    half = classes // 2
    return {
        "images": classes * per_class,
        "classes": classes,
        "train_images": half * per_class,
        "test_images": (classes - half) * per_class,
    }


@dataclass
class CubFixture:
    archive: bytes
    classes: int
    per_class: int
    class_folders: list[str]
    attributes: np.ndarray  # classes x attributes, continuous values

    @property
    def md5(self) -> str:
        return md5_of(self.archive)

    @property
    def expected(self) -> dict[str, int]:
        return expected_counts(self.classes, self.per_class)


def cub_entries(classes: int = 4, per_class: int = 3, bad_image: bool = False) -> tuple[list[tuple], list[str], np.ndarray]:
    folders = [f"{c:03d}.Species_number_{c}" for c in range(1, classes + 1)]
    entries: list[tuple] = [("CUB_200_2011", None, tarfile.DIRTYPE), ("CUB_200_2011/images", None, tarfile.DIRTYPE)]
    images_txt, labels_txt = [], []
    image_id = 0
    for c, folder in enumerate(folders, start=1):
        entries.append((f"CUB_200_2011/images/{folder}", None, tarfile.DIRTYPE))
        for j in range(per_class):
            image_id += 1
            name = f"{folder}/{folder.split('.', 1)[1]}_{j:04d}_{image_id}.jpg"
            data = jpeg(image_id)
            if bad_image and image_id == 2:
                data = data[: len(data) * 2 // 3]  # a JPEG cut short: opens, fails to decode
            entries.append((f"CUB_200_2011/images/{name}", data))
            images_txt.append(f"{image_id} {name}")
            labels_txt.append(f"{image_id} {c}")
    attributes = np.round(np.random.default_rng(0).uniform(0, 100, (classes, len(ATTRIBUTE_NAMES))), 6)
    entries += [
        ("CUB_200_2011/images.txt", ("\n".join(images_txt) + "\n").encode()),
        ("CUB_200_2011/image_class_labels.txt", ("\n".join(labels_txt) + "\n").encode()),
        ("CUB_200_2011/classes.txt", "".join(f"{c} {f}\n" for c, f in enumerate(folders, start=1)).encode()),
        # a classification split the DML protocol must ignore
        ("CUB_200_2011/train_test_split.txt", "".join(f"{i} {i % 2}\n" for i in range(1, image_id + 1)).encode()),
        ("CUB_200_2011/attributes", None, tarfile.DIRTYPE),
        (
            "CUB_200_2011/attributes/class_attribute_labels_continuous.txt",
            "".join(" ".join(f"{v:.6f}" for v in row) + "\n" for row in attributes).encode(),
        ),
        ("attributes.txt", "".join(f"{i} {n}\n" for i, n in enumerate(ATTRIBUTE_NAMES, start=1)).encode()),
    ]
    return entries, folders, attributes


def cub_fixture(classes: int = 4, per_class: int = 3, bad_image: bool = False, extra: list[tuple] = ()) -> CubFixture:
    entries, folders, attributes = cub_entries(classes, per_class, bad_image)
    return CubFixture(tar_bytes(entries + list(extra)), classes, per_class, folders, attributes)


@dataclass
class CarsFixture:
    images: bytes  # car_ims.tgz
    annotations: bytes  # cars_annos.mat
    classes: int
    per_class: int
    class_names: list[str]
    labels: list[int]  # class id of image i+1 (interleaved, as in the real file)

    @property
    def md5(self) -> dict[str, str]:
        return {"images": md5_of(self.images), "annotations": md5_of(self.annotations)}

    @property
    def expected(self) -> dict[str, int]:
        return expected_counts(self.classes, self.per_class)


def cars_fixture(classes: int = 4, per_class: int = 3) -> CarsFixture:
    names = [f"Make{c} Model{c} Sedan 20{10 + c}" for c in range(1, classes + 1)]
    labels = [c for _ in range(per_class) for c in range(1, classes + 1)]
    entries: list[tuple] = [("car_ims", None, tarfile.DIRTYPE)]
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    annotations = np.zeros((1, len(labels)), dtype=[(f, "O") for f in fields])
    for i, label in enumerate(labels, start=1):
        path = f"car_ims/{i:06d}.jpg"
        entries.append((path, jpeg(1000 + i)))
        annotations[0, i - 1] = (path, np.uint8(1), np.uint8(2), np.uint16(11), np.uint16(10), np.uint8(label), np.uint8(i % 2))
    class_names = np.empty((1, classes), dtype=object)
    class_names[0, :] = names
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"annotations": annotations, "class_names": class_names})
    return CarsFixture(tar_bytes(entries), buffer.getvalue(), classes, per_class, names, labels)


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    body_bytes: int


@dataclass
class FileServer:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1; ``mode`` picks the behaviour.

    modes: ``range`` (honours Range with 206), ``ignore_range`` (always 200 with
    the whole file), ``truncate`` (honours Range, every body cut in half), ``truncate_once``
    (the first body cut in half, then ``range``).
    """

    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "range"
    redirects: dict[str, str] = field(default_factory=dict)  # URL path -> path it redirects to (302)
    requests: list[Request] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bytes_sent(self) -> int:
        return sum(r.body_bytes for r in self.requests)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            # Logged in the order the requests arrive, before the answer: a client that sends its next request as
            # soon as it has this answer must not find that one logged first (each request has its own thread).
            first = not server.requests
            request = Request(self.path, self.headers.get("Range"), 0, 0)
            server.requests.append(request)
            header = request.range
            if self.path in server.redirects:  # like the Caltech data record's ?download=1 link
                request.status = 302
                self.send_response(302)
                self.send_header("Location", server.redirects[self.path])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = server.files.get(self.path.split("?")[0])
            if data is None:
                request.status = 404
                self.send_error(404)
                return
            start = 0
            status = 200
            if header and server.mode in ("range", "truncate", "truncate_once"):
                start = int(header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    request.status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            cut = server.mode == "truncate" or (server.mode == "truncate_once" and first)
            request.status, request.body_bytes = status, len(body) // 2 if cut else len(body)
            self.send_response(status)
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if cut:
                body = body[: len(body) // 2]
                self.close_connection = True
            self.wfile.write(body)
            self.wfile.flush()

    return Handler


class _JoiningServer(ThreadingHTTPServer):
    # Closing waits for every request thread, so a request is logged before the test reads the log.
    daemon_threads = False
    block_on_close = True


class serve:
    """Context manager: ``with serve(files) as server: fetch(server.url('/x'), ...)``."""

    def __init__(self, files: dict[str, bytes], mode: str = "range", redirects: dict[str, str] | None = None):
        self.state = FileServer(dict(files), mode, dict(redirects or {}))

    def __enter__(self) -> FileServer:
        self.httpd = _JoiningServer(("127.0.0.1", 0), _handler(self.state))
        self.state.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self.state

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def place(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def zip_bytes(entries: list[tuple], symlinks: tuple[str, ...] = ()) -> bytes:
    """A zip archive of ``entries`` ((name, data) files; (name, None) folders); ``symlinks``: names stored as
    symbolic links (their data is the link target), as a zip made on Unix records them."""
    import stat
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name + ("/" if data is None and not name.endswith("/") else ""), date_time=(2016, 1, 1, 0, 0, 0))
            if name in symlinks:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            elif data is None:
                info.external_attr = (stat.S_IFDIR | 0o755) << 16
            else:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, b"" if data is None else data)
    return buffer.getvalue()


@dataclass
class SopFixture:
    archive: bytes  # Stanford_Online_Products.zip
    train_classes: int
    test_classes: int
    per_class: int

    @property
    def md5(self) -> str:
        return md5_of(self.archive)

    @property
    def expected(self) -> dict[str, int]:
        return {
            "images": (self.train_classes + self.test_classes) * self.per_class,
            "classes": self.train_classes + self.test_classes,
            "train_images": self.train_classes * self.per_class,
            "test_images": self.test_classes * self.per_class,
            "train_classes": self.train_classes,
        }


def sop_entries(train_classes: int = 3, test_classes: int = 2, per_class: int = 2) -> list[tuple]:
    """Stanford_Online_Products/ with Ebay_train.txt / Ebay_test.txt and JPEGs under <super class>_final/ (uneven
    split, as the real one: 11,318 train and 11,316 test classes)."""
    root = "Stanford_Online_Products"
    supers = ["bicycle", "chair"]
    entries: list[tuple] = [(root, None)] + [(f"{root}/{s}_final", None) for s in supers]
    lines = {"train": ["image_id class_id super_class_id path"], "test": ["image_id class_id super_class_id path"]}
    image_id = 0
    for class_id in range(1, train_classes + test_classes + 1):
        split = "train" if class_id <= train_classes else "test"
        super_id = class_id % len(supers)
        for j in range(per_class):
            image_id += 1
            path = f"{supers[super_id]}_final/{111085122870 + class_id}_{j}.JPG"
            entries.append((f"{root}/{path}", jpeg(2000 + image_id)))
            lines[split].append(f"{image_id} {class_id} {super_id + 1} {path}")
    entries += [(f"{root}/Ebay_{split}.txt", ("\n".join(rows) + "\n").encode()) for split, rows in lines.items()]
    entries.append((f"{root}/Ebay_info.txt", b"image_id class_id super_class_id path\n"))
    return entries


def sop_fixture(train_classes: int = 3, test_classes: int = 2, per_class: int = 2, extra: list[tuple] = (), symlinks=()) -> SopFixture:
    return SopFixture(zip_bytes(sop_entries(train_classes, test_classes, per_class) + list(extra), symlinks), train_classes, test_classes, per_class)


@dataclass
class InShopFixture:
    images: bytes  # img.zip
    partition: bytes  # list_eval_partition.txt
    rows: list[tuple[str, str, str]]  # (image, item, status)

    @property
    def md5(self) -> dict[str, str]:
        return {"images": md5_of(self.images), "partition": md5_of(self.partition)}

    @property
    def expected(self) -> dict[str, int]:
        statuses = [status for _, _, status in self.rows]
        items = {item for _, item, _ in self.rows}
        train_items = {item for _, item, status in self.rows if status == "train"}
        return {
            "images": len(self.rows), "classes": len(items), "train_images": statuses.count("train"),
            "test_images": len(self.rows) - statuses.count("train"), "train_classes": len(train_items),
            "query_images": statuses.count("query"), "gallery_images": statuses.count("gallery"),
        }  # fmt: skip


def inshop_fixture(train_items: int = 3, test_items: int = 3) -> InShopFixture:
    """img/<MEN|WOMEN>/<category>/id_<n>/... and the partition file: training items with 3 images, test items
    with 2 queries and 1 gallery image; the last test item has no gallery image (its queries count for nothing)."""
    rows: list[tuple[str, str, str]] = []
    entries: list[tuple] = [("img", None)]
    for n in range(1, train_items + test_items + 1):
        item = f"id_{n:08d}"
        folder = f"img/{'WOMEN' if n % 2 else 'MEN'}/{'Dresses' if n % 2 else 'Denim'}/{item}"
        if n <= train_items:
            statuses = ["train"] * 3
        elif n < train_items + test_items:
            statuses = ["query", "query", "gallery"]
        else:
            statuses = ["query", "query"]
        for j, status in enumerate(statuses):
            path = f"{folder}/{j + 1:02d}_1_front.jpg"
            entries.append((path, jpeg(3000 + 10 * n + j)))
            rows.append((path, item, status))
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "".join(f"{p} {i} {s}\n" for p, i, s in rows)
    return InShopFixture(zip_bytes(entries), text.encode(), rows)
