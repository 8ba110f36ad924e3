"""The demo extractors' weights as the `demo` preset ships them: each role's best.pt (vprlib.demo.extractors.loop
`weights_record`) -> `<role>.safetensors` (float tensors in float16: a few MB in all) and `architectures.json`
(role -> family, architecture by name and in full, input side, file; and how they were trained). The folder is a
`--models` for the extraction job as it is, and `install` copies it into the package (vprlib/models/demo/)."""

from __future__ import annotations

import json
import posixpath
import shutil
from pathlib import Path

import torch

from vprlib.models import zoo
from vprlib.train.loop import BEST, _load

DTYPE = torch.float16


def export_weights(runs: dict[str, str], folder: str, provenance: dict | None = None) -> Path:
    """Write `<role>.safetensors` and architectures.json into `folder` from the best.pt of each role's training
    output (`runs`: role -> output folder; `provenance`: role -> how it was trained); return the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    roles = {}
    for role, output in runs.items():
        record = _load(output, BEST)
        if record is None:
            raise FileNotFoundError(f"no {posixpath.join(output, BEST)}: train the demo {role} first")
        state = {k: (v.to(DTYPE) if v.is_floating_point() else v).contiguous().clone()
                 for k, v in record["state_dict"].items()}
        name = f"{role}.safetensors"
        save_file(state, str(folder / name), metadata={"role": role, "arch": record["arch"]})
        (folder / name).chmod(0o644)  # safetensors writes 0600; package data is read by every user
        roles[role] = zoo.small_entry(role, record["family"], record["arch"], int(record.get("input_size", 0)), name)
    _write(folder, roles, {role: (provenance or {}).get(role, {}) for role in roles})
    return folder


def _write(folder: Path, roles: dict, trained: dict) -> None:
    text = json.dumps({"roles": roles, "trained": trained}, indent=1, sort_keys=True)
    (folder / zoo.SMALL_FILE).write_text(text + "\n")


def install(folder: str, target: Path = zoo.DEMO_DIR) -> list[Path]:
    """Copy an export folder's weights into the package's demo preset (vprlib/models/demo/), its roles' entries
    merged into the preset's architectures.json; return the files written."""
    folder = Path(folder)
    entries = zoo.small_entries(folder)
    if not entries:
        raise FileNotFoundError(f"{folder} holds no {zoo.SMALL_FILE}: export the demo weights first")
    target.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(folder / e["weights"], target / e["weights"])) for e in entries.values()]
    old = json.loads((target / zoo.SMALL_FILE).read_text()) if (target / zoo.SMALL_FILE).is_file() else {}
    new = json.loads((folder / zoo.SMALL_FILE).read_text())
    _write(target, {**old.get("roles", {}), **new["roles"]}, {**old.get("trained", {}), **new.get("trained", {})})
    return [*written, target / zoo.SMALL_FILE]
