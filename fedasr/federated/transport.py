"""Transport glue (paper §2.3 transport compression; §2.4.1 OMC download): what travels, and its exact bytes.

The codecs themselves are `fedasr.compression` (and OMC's storage format `fedasr.omc`); this module turns a
state dict into the flat arrays + JSON description a Flower ``ArrayRecord`` / ``ConfigRecord`` carries, and
back. Wire format when a direction is compressed: the ``"arrays"`` ArrayRecord holds `compression.to_arrays`
arrays (``"<var>/data"``, ``"/scale"``, ``"/offset"``) and the description travels as a string: in the TRAIN
message's ``"config"`` under `DOWNLOAD_META`, and in the reply's `TRANSPORT` ConfigRecord under `UPLOAD_META`.
Uncompressed, neither key is present and the arrays are the fp32 tensors themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedasr import compression, omc
from fedasr.compression import CodecConfig
from fedasr.federated.config import FedConfig

__all__ = ["DOWNLOAD_META", "TRANSPORT", "UPLOAD_META", "payload_bytes", "encode_arrays", "decode_arrays",
           "encode_download", "decode_download"]

DOWNLOAD_META = "transport-download"  # TRAIN message config key: the download's description
TRANSPORT = "transport"  # reply RecordDict key of the upload's ConfigRecord
UPLOAD_META = "upload"  # ... and its key holding the upload's description


def payload_bytes(arrays: Mapping[str, Any]) -> int:
    """Return the exact payload size ``Σ numel · itemsize`` of tensors/ndarrays (no framing, no keys)."""
    total = 0
    for a in arrays.values():
        if isinstance(a, torch.Tensor):
            total += a.numel() * a.element_size()
        elif isinstance(a, np.ndarray):
            total += a.size * a.itemsize
        else:  # a Flower Array: dtype string + shape
            total += int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
    return total


def encode_arrays(state: Mapping[str, torch.Tensor], codec: CodecConfig,
                  generator: torch.Generator | None = None) -> tuple[dict[str, np.ndarray], str, int]:
    """Encode ``state`` with a `compression.CodecConfig` for the wire.

    Returns ``(arrays, description, nbytes)``: the flat arrays of `compression.to_arrays` (``"<name>/data"``,
    ``"/scale"``, ``"/offset"``), its JSON description, and the exact payload bytes
    (`compression.payload_bytes`, equal to the arrays' total size).
    """
    payload = compression.compress(state, codec, generator)
    arrays, meta = compression.to_arrays(payload)
    return arrays, meta, compression.payload_bytes(payload)


def decode_arrays(arrays: Mapping[str, np.ndarray], meta: str) -> tuple[dict[str, torch.Tensor], int]:
    """Decode what `encode_arrays` produced: ``(name → tensor, exact payload bytes)``."""
    payload = compression.from_arrays(arrays, meta)
    return compression.decompress(payload), compression.payload_bytes(payload)


def encode_download(state: Mapping[str, torch.Tensor], cfg: FedConfig, omc_names: Sequence[str],
                    generator: torch.Generator | None = None) -> tuple[dict[str, np.ndarray], str, int]:
    """The round's download for the wire, as `encode_arrays` returns it: ``cfg.transport.download``, or with
    ``cfg.omc`` on the clients' OMC storage format (``omc_names`` quantized; paper §2.4.1)."""
    if not cfg.omc.enabled:
        return encode_arrays(state, cfg.transport.download, generator)
    payload = omc.encode_state(state, omc_names, cfg.omc, generator)
    arrays, meta = compression.to_arrays(payload)
    return arrays, meta, compression.payload_bytes(payload)


def decode_download(arrays: Mapping[str, np.ndarray], meta: str, cfg: FedConfig,
                    model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The global weights from `encode_download`'s arrays. OMC: ``model`` adopts the codes as its storage
    (`omc.load_payload`, no fp32 copy) and its resident tensors are returned; otherwise the decoded state."""
    if not cfg.omc.enabled:
        return decode_arrays(arrays, meta)[0]
    omc.load_payload(model, compression.from_arrays(arrays, meta))
    return omc.resident_state(model)
