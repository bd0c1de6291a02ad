"""Hugging Face Hub ids: one clear line at once when a hub id can be neither fetched nor trusted
to the cache.

Without `HF_HUB_OFFLINE=1`, diffusers and transformers ask the Hub for every file of a hub id,
and on a machine without a network huggingface_hub retries each request with back-off for half a
minute before the load fails. `check_hub_source` asks once, with a short TCP connect to the
endpoint, and refuses an unreachable Hub before any library call. Standard library only, apart
from huggingface_hub's settings (the endpoint, the cache, offline mode).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from sfd.errors import SFDConfigError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
PROBE_TIMEOUT_S = 3.0  # one TCP connect to the endpoint
PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def is_hub_id(source: str | None) -> bool:
    """Whether `source` names a Hub repository (owner/name) rather than a local folder."""
    return bool(source) and not Path(source).exists() and bool(HUB_ID.fullmatch(source))


@functools.lru_cache(maxsize=8)
def hub_reachable(endpoint: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within `timeout` seconds.

    Behind a proxy (a *_PROXY variable) the endpoint is not dialled directly: reported
    reachable, and the libraries' own requests decide.

    Args:
        endpoint: the Hub's URL (huggingface_hub's `ENDPOINT`, from HF_ENDPOINT).
        timeout: seconds to wait for the connection.

    Returns:
        True if it opened (or a proxy is configured), else False.
    """
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    url = urlsplit(endpoint)
    if not url.hostname:
        return True  # not a URL this probe understands; leave it to the libraries
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def check_hub_source(source: str | None, what: str) -> None:
    """Raise `SFDConfigError` at once for a hub id while the Hub cannot be reached.

    Local folders, offline mode (`HF_HUB_OFFLINE=1`: the cache answers at once) and a reachable
    Hub pass unchanged.

    Args:
        source: the `pretrained_model_name_or_path` about to be loaded.
        what: how the message names it, e.g. "teacher".
    """
    if not is_hub_id(source):
        return
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or hub_reachable(constants.ENDPOINT):
        return
    assert source is not None
    cached = (Path(constants.HF_HUB_CACHE) / f"models--{source.replace('/', '--')}").is_dir()
    advice = (
        "it is in the local cache: set HF_HUB_OFFLINE=1 to load it from there"
        if cached
        else f"it is not in the local cache ({constants.HF_HUB_CACHE}): download it where the Hub "
        f"is reachable (`hf download {source}`), or name a local folder"
    )
    raise SFDConfigError(
        f"{what} {source!r} is a Hugging Face Hub id and the Hub ({constants.ENDPOINT}) cannot be "
        f"reached from here; {advice}"
    )
