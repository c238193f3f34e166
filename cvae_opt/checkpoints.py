"""Checkpoints bundle the full config (plain data) with the weights, so a model can be sampled or
retrained without the study database, and loads with `torch.load(weights_only=True)`. A checkpoint is a
file, so its config picks no code: its problem and latent type load when built in, and by import path
only when the caller gives the same spec (`problem=`, `latent_type=`: --problem, --latent-type)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .config import Config
from .errors import UserError
from .files import atomic_write
from .models import CVAE, build_model
from .latents import check_stored_latent
from .problems import check_stored_problem, resolve_problem

FORMAT = "cvae-opt-checkpoint/1"


def save_checkpoint(path: Path | str, model: CVAE, cfg: Config, metrics: dict[str, Any] | None = None) -> Path:
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
    }
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: Path | str, device: torch.device | str = "cpu", *, problem: str | None = None,
                    latent_type: str | None = None) -> tuple[CVAE, Config, dict[str, Any]]:
    """The model, its config and the raw payload. `problem`, `latent_type`: the user's spec of an import
    path the config names (it must be the stored one); without them only built-in names load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"{path}: refused to load: it holds code or objects that are not tensors or plain data") from None
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a cvae-opt checkpoint (expected format {FORMAT!r})")
    cfg = Config.from_dict(payload.get("config"), where=f"{path}:config")
    where = f"checkpoint {path}"
    check_stored_problem(cfg.data.problem, problem, where)  # both checked before anything is imported
    check_stored_latent(cfg.model.latent_type, latent_type, where)
    model = build_model(cfg.model, resolve_problem(cfg.data.problem))
    try:
        model.load_state_dict(payload.get("state_dict", {}))
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not match its config ({str(exc).splitlines()[0]})") from None
    model.to(device).eval()
    return model, cfg, payload
