"""Where a --finetune / --resume value points, and its download.

A value is a published name (YukunZhou/<name>/<name>.pth on HuggingFace), `org/repo[/file]` on the hub, a local
.pth/.pt/.bin/.safetensors, or a .ckpt of ours.

Downloads go through huggingface_hub only, so its cache, HF_TOKEN / `huggingface-cli login`, HF_ENDPOINT and
HF_HUB_OFFLINE all apply. Errors become one line that says what to do (request access, log in, go online).
"""
import dataclasses
import logging
import os
from typing import Optional

from util_mindspore.errors import WeightError, first_line
from util_mindspore.registry import published_weights

logger = logging.getLogger("retfound.weights")

CHECKPOINT_EXTENSIONS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")

HF_ORG = "YukunZhou"  # published RETFound checkpoints: YukunZhou/<name>/<name>.pth (model_registry.published_weights)


@dataclasses.dataclass
class Source:
    name: str  # cache stem
    kind: str  # 'hub', 'local' or 'ckpt'
    path: Optional[str] = None
    repo_id: Optional[str] = None
    filename: Optional[str] = None


def resolve_source(name_or_path: str) -> Source:
    """What a --finetune / --resume value names (see the module docstring)."""
    value = str(name_or_path)
    spelled = os.path.splitext(value)[0] + ".ckpt"
    if value.lower().endswith(".pth") and not os.path.exists(value) and os.path.isfile(spelled):
        # upstream's README and demo evaluate output_dir/<task>/checkpoint-best.pth; this port writes .ckpt
        logger.warning("%s does not exist: reading %s (this port writes its checkpoints as .ckpt)", value, spelled)
        value = spelled
    if value in published_weights():
        return Source(value, "hub", repo_id=f"{HF_ORG}/{value}", filename=f"{value}.pth")
    if os.path.exists(value):
        if os.path.isdir(value):
            raise WeightError(f"{value}: is a directory, not a checkpoint file")
        stem, ext = os.path.splitext(os.path.basename(value))
        if ext.lower() == ".ckpt":
            return Source(stem, "ckpt", path=os.path.abspath(value))
        if ext.lower() not in CHECKPOINT_EXTENSIONS:
            raise WeightError(f"{value}: unknown checkpoint type '{ext}' (use {', '.join(CHECKPOINT_EXTENSIONS)})")
        return Source(stem, "local", path=os.path.abspath(value))
    parts = value.split("/")
    looks_local = value.startswith((".", "/", "~")) or os.sep != "/" and os.sep in value
    if not looks_local and len(parts) >= 2 and all(parts):
        if len(parts) == 2 and not value.lower().endswith(CHECKPOINT_EXTENSIONS):
            filename = f"{parts[1]}.pth"  # the RETFound convention: <repo>/<repo>.pth
        elif len(parts) >= 3:
            filename = "/".join(parts[2:])
        else:
            filename = None
        if filename:
            stem = os.path.splitext(filename.replace("/", "_"))[0]
            return Source(f"{parts[0]}--{parts[1]}--{stem}", "hub", repo_id="/".join(parts[:2]), filename=filename)
    if value.lower().endswith(CHECKPOINT_EXTENSIONS) or looks_local:
        raise WeightError(f"{value}: no such checkpoint file")
    raise WeightError(f"unknown checkpoint '{value}': use a file path, 'org/repo[/file]', or one of "
                      f"{', '.join(published_weights())}")


def hub_file_etag(source: Source, token: Optional[str], revision: Optional[str]) -> Optional[str]:
    """ETag of the hub file (a HEAD request, no download); None when the hub cannot be asked."""
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    if hf_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE"):
        return None
    url = hf_hub_url(source.repo_id, source.filename, revision=revision,
                     endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        return get_hf_file_metadata(url, token=token).etag
    except _hub_unreachable() as exc:
        logger.info("could not ask the hub for %s/%s (%s)", source.repo_id, source.filename, first_line(exc))
        return None


def _hub_unreachable() -> tuple:
    """What asking the hub raises when it cannot answer: its HTTP errors (HfHubHTTPError), offline mode, and the
    HTTP client's transport errors (httpx's in huggingface_hub >= 1, requests' before: both OSError there), and
    timeouts; anything else is a bug and propagates."""
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled
    try:
        from huggingface_hub.errors import HTTPError as TransportError  # the HTTP client's base error
    except ImportError:
        TransportError = OSError
    return HfHubHTTPError, OfflineModeIsEnabled, TransportError, OSError, TimeoutError


def download(source: Source, token: Optional[str], revision: Optional[str]) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    where = f"{source.repo_id}/{source.filename}"
    try:
        return hf_hub_download(source.repo_id, source.filename, revision=revision, token=token,
                               endpoint=os.environ.get("HF_ENDPOINT") or None)
    except GatedRepoError:
        raise WeightError(_gated_message(source)) from None
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is a subclass in huggingface_hub 1.x+
        raise WeightError(f"{where}: not in the HuggingFace cache and the hub cannot be reached "
                          "(offline or HF_HUB_OFFLINE=1); download it once while online") from None
    except RepositoryNotFoundError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightError(_gated_message(source)) from exc
        raise WeightError(f"{source.repo_id}: repository not found on the hub "
                          f"({os.environ.get('HF_ENDPOINT') or 'huggingface.co'})") from exc
    except RevisionNotFoundError:
        raise WeightError(f"{where}: revision '{revision}' not found") from None
    except EntryNotFoundError:
        raise WeightError(f"{where}: no such file in the repository") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            raise WeightError(_gated_message(source)) from exc
        raise WeightError(f"{where}: download failed: {first_line(exc)}") from exc


def _gated_message(source: Source) -> str:
    return (f"{source.repo_id} is gated: request access at https://huggingface.co/{source.repo_id}, then run "
            "`huggingface-cli login` or set HF_TOKEN (or pass --token)")
