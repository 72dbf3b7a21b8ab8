"""Convert the musicnn TF1 checkpoints (PyPI wheel musicnn==0.1.0, ISC licence) to safetensors.

    pip download --no-deps musicnn==0.1.0 -d /tmp/mw
    python recipes/convert_musicnn.py /tmp/mw/musicnn-0.1.0-py3-none-any.whl

writes models/musicnn/{MSD_musicnn,MTT_musicnn}.safetensors (float32, torch layout, tag names in the
metadata) and models/musicnn/LICENSE. No TensorFlow needed: the checkpoint is read by the small reader
below (a TF "tensor bundle": an SSTable .index of BundleEntryProto records + a raw .data file), which
recipes/make_musicnn_reference.py cross-checks tensor by tensor against TensorFlow's own reader.

Only the model variables are converted; the Adam slots and beta powers in the checkpoint are skipped.
The reader imports numpy only, so the reference script can use it inside a TensorFlow venv.
"""

from __future__ import annotations

import ast
import hashlib
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
from zstag.errors import ZstagError

WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"  # as served by PyPI
MODELS = ("MSD_musicnn", "MTT_musicnn")
TAG_LISTS = {"MSD": "MSD_LABELS", "MTT": "MTT_LABELS"}  # names in musicnn/configuration.py
METADATA_KEY = "musicnn"  # safetensors metadata: JSON {name, tags, source, license}

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB/TF table footer magic
FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
# tensorflow/core/framework/types.proto → numpy (little-endian); strings/resources are not raw tensors
TF_DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 17: "<u2", 19: "<f2"}

ISC_NOTICE = """\
The *.safetensors files in this folder are converted from the pre-trained musicnn models (PyPI musicnn==0.1.0,
https://github.com/jordipons/musicnn) and are distributed under its ISC licence:

Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019. Code developed by Jordi Pons (www.jordipons.me).

Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is hereby granted, provided that the above copyright notice and this permission notice appear in all copies.

THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
"""


class CheckpointError(ZstagError, ValueError):
    pass


# ---------------------------------------------------------------------------------------------------
# crc32c (Castagnoli), as TF masks it; pure Python is fast enough for a few MB once.

def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# protobuf wire format, just the parts BundleEntryProto / BundleHeaderProto use

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs; varints as int, length-delimited as bytes, fixed32/64 as int."""
    fields, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def parse_bundle_entry(buf: bytes) -> dict:
    """BundleEntryProto: dtype=1, shape=2 (TensorShapeProto: dim=2 {size=1}), shard_id=3, offset=4,
    size=5, crc32c=6 (fixed32), slices=7 (partitioned variables: unsupported)."""
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
    for number, value in _proto_fields(buf):
        if number == 1:
            entry["dtype"] = value
        elif number == 2:
            for dim_number, dim in _proto_fields(value):
                if dim_number == 2:
                    size = dict(_proto_fields(dim)).get(1, 0)
                    entry["shape"].append(size - (1 << 64) if size >= 1 << 63 else size)
                elif dim_number == 3 and dim:
                    raise CheckpointError("tensor of unknown rank")
        elif number in (3, 4, 5):
            entry[{3: "shard_id", 4: "offset", 5: "size"}[number]] = value
        elif number == 6:
            entry["crc32c"] = value
        elif number == 7:
            raise CheckpointError("sliced (partitioned) tensors are not supported")
    return entry


# ---------------------------------------------------------------------------------------------------
# SSTable (.index)

def _block(data: bytes, offset: int, size: int) -> bytes:
    if offset + size + BLOCK_TRAILER_SIZE > len(data):
        raise CheckpointError("block handle past the end of the index file")
    contents = data[offset : offset + size]
    kind, stored_crc = struct.unpack_from("<BI", data, offset + size)
    if kind != 0:
        raise CheckpointError(f"compressed index block (type {kind}) is not supported")
    if masked_crc32c(contents + bytes([kind])) != stored_crc:
        raise CheckpointError("index block checksum mismatch")
    return contents


def _block_entries(block: bytes):
    """Yield (key, value) from a table block (prefix-compressed keys, restart array at the end)."""
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (1 + num_restarts)
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        value_size, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_size]
        pos += value_size


def read_table(data: bytes) -> dict[bytes, bytes]:
    """All (key, value) pairs of a LevelDB-format table, as TF writes checkpoint indexes."""
    if len(data) < FOOTER_SIZE:
        raise CheckpointError("index file too short")
    footer = data[-FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise CheckpointError("not a TF checkpoint index (bad table magic)")
    _, pos = _varint(footer, 0)  # metaindex handle (unused)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    table = {}
    for _, handle in _block_entries(_block(data, index_offset, index_size)):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
        table.update(_block_entries(_block(data, offset, size)))
    return table


def read_checkpoint(index: bytes, data: bytes, names=None, verify: bool = True) -> dict[str, np.ndarray]:
    """Tensors of a single-shard TF checkpoint from its .index and .data-00000-of-00001 bytes.

    names: a predicate on tensor names (None: all); verify: check each tensor's crc32c.
    """
    table = read_table(index)
    header = dict(_proto_fields(table.pop(b"", b"")))
    if header.get(1, 1) != 1:
        raise CheckpointError(f"checkpoint has {header.get(1)} shards; only 1 is supported")
    if header.get(2, 0) != 0:
        raise CheckpointError("big-endian checkpoint is not supported")
    tensors = {}
    for raw_name, value in sorted(table.items()):
        name = raw_name.decode()
        if names is not None and not names(name):
            continue
        entry = parse_bundle_entry(value)
        if entry["shard_id"] != 0:
            raise CheckpointError(f"{name}: shard {entry['shard_id']} missing")
        if entry["dtype"] not in TF_DTYPES:
            raise CheckpointError(f"{name}: unsupported dtype {entry['dtype']}")
        dtype = np.dtype(TF_DTYPES[entry["dtype"]])
        shape = tuple(entry["shape"])
        start, size = entry["offset"], entry["size"]
        if size != dtype.itemsize * int(np.prod(shape, dtype=np.int64)) or start + size > len(data):
            raise CheckpointError(f"{name}: size {size} does not match shape {shape} / data file")
        raw = data[start : start + size]
        if verify and entry["crc32c"] is not None and masked_crc32c(raw) != entry["crc32c"]:
            raise CheckpointError(f"{name}: data checksum mismatch")
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors


def is_model_variable(name: str) -> bool:
    """Skip optimizer state: Adam slots (…/Adam, …/Adam_1) and beta1_power / beta2_power."""
    return not (name.endswith(("/Adam", "/Adam_1")) or name in ("beta1_power", "beta2_power"))


# ---------------------------------------------------------------------------------------------------
# musicnn: TF variable names → zstag.backbones.musicnn.MusiCNN state dict

def _bn(tf_name: str, torch_name: str) -> list[tuple[str, str, str]]:
    return [
        (f"{tf_name}/gamma", f"{torch_name}.weight", "copy"),
        (f"{tf_name}/beta", f"{torch_name}.bias", "copy"),
        (f"{tf_name}/moving_mean", f"{torch_name}.running_mean", "copy"),
        (f"{tf_name}/moving_variance", f"{torch_name}.running_var", "copy"),
    ]


def _layer(tf_name: str, torch_name: str, kind: str) -> list[tuple[str, str, str]]:
    return [(f"{tf_name}/kernel", f"{torch_name}.weight", kind), (f"{tf_name}/bias", f"{torch_name}.bias", "copy")]


# Variables are numbered in creation order by tf.compat.v1.layers (see musicnn/models.py build_musicnn).
MUSICNN_MAP = (
    _bn("batch_normalization", "input_bn")
    + _layer("conv2d", "timbral.0.conv", "conv2d") + _bn("batch_normalization_1", "timbral.0.bn")  # 7×38
    + _layer("conv2d_1", "timbral.1.conv", "conv2d") + _bn("batch_normalization_2", "timbral.1.bn")  # 7×67
    + _layer("conv2d_2", "temporal.0.conv", "conv2d") + _bn("batch_normalization_3", "temporal.0.bn")  # 128×1
    + _layer("conv2d_3", "temporal.1.conv", "conv2d") + _bn("batch_normalization_4", "temporal.1.bn")  # 64×1
    + _layer("conv2d_4", "temporal.2.conv", "conv2d") + _bn("batch_normalization_5", "temporal.2.bn")  # 32×1
    + _layer("conv2d_5", "midend.0.conv", "conv1d") + _bn("batch_normalization_6", "midend.0.bn")
    + _layer("conv2d_6", "midend.1.conv", "conv1d") + _bn("batch_normalization_7", "midend.1.bn")
    + _layer("conv2d_7", "midend.2.conv", "conv1d") + _bn("batch_normalization_8", "midend.2.bn")
    + _bn("batch_normalization_9", "pool_bn")
    + _layer("dense", "dense", "dense") + _bn("batch_normalization_10", "dense_bn")
    + _layer("dense_1", "logits", "dense")
)


def to_torch_layout(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv2d":  # TF [kh, kw, in, out] → torch Conv2d [out, in, kh, kw]
        return value.transpose(3, 2, 0, 1)
    if kind == "conv1d":  # TF [7, C, 1, out] over a [T, C, 1] map → torch Conv1d [out, C, 7]
        return value[:, :, 0, :].transpose(2, 1, 0)
    if kind == "dense":  # TF [in, out] → torch Linear [out, in]
        return value.T
    return value


def musicnn_state_dict(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {tf_name for tf_name, _, _ in MUSICNN_MAP}
    missing, unused = wanted - set(tensors), set(tensors) - wanted
    if missing or unused:
        raise CheckpointError(f"unexpected musicnn variables: missing {sorted(missing)}, unused {sorted(unused)}")
    return {
        torch_name: np.ascontiguousarray(to_torch_layout(tensors[tf_name], kind), dtype=np.float32)
        for tf_name, torch_name, kind in MUSICNN_MAP
    }


# ---------------------------------------------------------------------------------------------------
# the wheel

def read_tag_lists(configuration_py: str) -> dict[str, list[str]]:
    """MSD_LABELS / MTT_LABELS from musicnn/configuration.py, parsed (not executed)."""
    lists = {}
    for node in ast.parse(configuration_py).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in TAG_LISTS.values():
                lists[node.targets[0].id] = list(ast.literal_eval(node.value))
    return lists


def read_wheel_model(wheel: zipfile.ZipFile, name: str, verify: bool = True) -> dict[str, np.ndarray]:
    """All model variables (no optimizer state) of musicnn/<name>/ in the wheel, TF layout."""
    prefix = f"musicnn/{name}/"
    try:
        index = wheel.read(prefix + ".index")
        data = wheel.read(prefix + ".data-00000-of-00001")
    except KeyError as exc:
        raise CheckpointError(f"{name}: not in the wheel ({exc})") from None
    return read_checkpoint(index, data, names=is_model_variable, verify=verify)


def out_dir_default() -> Path:
    """Where the shipped musicnn weights live (models/musicnn in a source checkout)."""
    from zstag.paths import models_dir

    return models_dir() / "musicnn"


def convert(wheel_path: Path, out_dir: Path | None = None, models=MODELS) -> dict[str, Path]:
    from safetensors.numpy import save  # only the writer needs safetensors

    from zstag.paths import atomic_write

    out_dir = out_dir_default() if out_dir is None else out_dir

    wheel_bytes = wheel_path.read_bytes()
    digest = hashlib.sha256(wheel_bytes).hexdigest()
    if digest != WHEEL_SHA256:
        raise CheckpointError(f"sha256 {digest} is not that of PyPI's {WHEEL_NAME} ({WHEEL_SHA256})")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        tags = read_tag_lists(wheel.read("musicnn/configuration.py").decode())
        for name in models:
            state = musicnn_state_dict(read_wheel_model(wheel, name))
            labels = tags[TAG_LISTS[name.split("_")[0]]]
            if len(labels) != state["logits.bias"].shape[0]:
                raise CheckpointError(f"{name}: {len(labels)} tags but {state['logits.bias'].shape[0]} outputs")
            info = {
                "name": name,
                "tags": labels,
                "source": f"{WHEEL_NAME} musicnn/{name}/ (sha256 {WHEEL_SHA256})",
                "license": "ISC, Music Technology Group, Universitat Pompeu Fabra 2019",
            }
            # One metadata key: safetensors writes several keys in hash order, which is not reproducible.
            metadata = {METADATA_KEY: json.dumps(info, sort_keys=True)}
            path = out_dir / f"{name}.safetensors"
            atomic_write(path, save(state, metadata=metadata))
            written[name] = path
    atomic_write(out_dir / "LICENSE", ISC_NOTICE.encode())
    return written
