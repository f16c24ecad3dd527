"""Export a model as a Hugging Face folder with a model card (`pmcllama export MODEL --out FOLDER`).

The folder holds config.json, the weights as safetensors in shards of at most `max_shard_size`
(with model.safetensors.index.json when there is more than one), the tokenizer files, the
generation config, and README.md: a model card built from the stage manifests (`pmcllama.card`).
Weights keep the source's dtype, so `AutoModelForCausalLM.from_pretrained(folder)` gives the
source's logits exactly. It is a stage output (`pmcllama.stage`): written to `<out>.partial/` and
renamed, a folder pmcllama did not write is refused, and `--force` adds the files beside a user's
without removing or overwriting any of them.

A LoRA adapter folder alone (adapter_config.json, no config.json) is refused here and by the GGUF
export, with the command that gives the merged model.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field, field_validator

from pmcllama.config import Config
from pmcllama.errors import UserError

SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)


class FolderExportConfig(Config):
    """EXPORT: a Hugging Face folder (safetensors shards, tokenizer, config) with a model card."""

    model: str = Field(description="model to export: stage output, HF folder, .gguf file or built-in name")
    out: str = Field(description="output folder")
    max_shard_size: str = Field("5GB", description="largest safetensors shard, e.g. 2GB, 500MB (Hugging Face's default: 5GB)")
    card: bool = Field(True, description="write README.md, the model card built from the stage manifests")
    name: str | None = Field(None, description="the model's name in the card's title (default: a stage output's "
                             "run and stage, e.g. quickstart-finetune; else the model folder's name)")

    @field_validator("max_shard_size")
    @classmethod
    def _size_ok(cls, v: str) -> str:
        if not SIZE.match(v):
            raise ValueError(f"max_shard_size must be a size like 5GB, 500MB or 2GiB, not {v!r}")
        return v.strip().upper().replace("IB", "iB")


def merge_command(adapter: Path) -> str:
    """The command that gives the merged model of a LoRA adapter folder."""
    parent = adapter.parent
    if (parent / "config.json").is_file() and any(parent.glob("*.safetensors")):
        return f"its merged model is {parent} (finetune saves both): pmcllama export {shlex.quote(str(parent))} --out ..."
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    base = config.get("base_model_name_or_path") or "BASE"
    code = (f"from peft import PeftModel; from pmcllama.models import load_model, save_model; "
            f"m, t = load_model({str(base)!r}); "
            f"save_model(PeftModel.from_pretrained(m, {str(adapter)!r}).merge_and_unload(), t, 'merged')")
    return f"merge it into its base model first: python -c {shlex.quote(code)}, then pmcllama export merged --out ..."


def refuse_adapter(model: str | Path) -> None:
    path = Path(str(model)).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise UserError(f"a LoRA adapter alone is not a model to export; {merge_command(path)}", path)


def export_folder(cfg: FolderExportConfig, force: bool = False, say: Callable[[str], None] = print) -> Path:
    """Write cfg.model as a Hugging Face folder at cfg.out (a pmcllama stage output)."""
    from pmcllama.models import resolve
    from pmcllama.stage import run_stage

    refuse_adapter(cfg.model)
    folder = resolve(cfg.model)
    if Path(cfg.out).suffix == ".gguf":
        raise UserError("a .gguf --out is one GGUF file, not a folder", cfg.out)

    def work(tmp: Path):
        return _write_folder(folder, tmp, cfg)

    out = run_stage("export", cfg, cfg.out, [folder], work, force=force, log=say)
    return out


def _write_folder(folder: Path, tmp: Path, cfg: FolderExportConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pmcllama.card import build_card, model_name
    from pmcllama.stage import StageResult

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto", local_files_only=True,
                                                 trust_remote_code=False, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    with torch.no_grad():
        model.save_pretrained(str(tmp), max_shard_size=cfg.max_shard_size, safe_serialization=True)
    tok.save_pretrained(str(tmp))
    if cfg.card:
        (tmp / "README.md").write_text(build_card(cfg.model, cfg.name or model_name(cfg.model)), encoding="utf-8")
    shards = sorted(p.name for p in tmp.glob("*.safetensors"))
    params = sum(p.numel() for p in model.state_dict().values())
    return StageResult(counts={"shards": len(shards), "parameters": params},
                       info={"model": cfg.model, "source_folder": str(folder), "dtype": str(model.dtype),
                             "shards": shards})


class RecipeExport(Config):
    """A recipe's `export:` section: the final model as GGUF files and/or a model-card folder."""

    gguf: list[Literal["f32", "f16", "bf16", "q8_0", "q4_0"]] = Field(
        default_factory=list, description="GGUF dtypes to write, each as out_dir/model-DTYPE.gguf")
    card: bool = Field(False, description="also write out_dir/card: the Hugging Face folder with its model card")
    max_shard_size: str = Field("5GB", description="folder: largest safetensors shard")


def export_run(section: RecipeExport | None, model: str, out_dir: Path, force: bool = False) -> list[Path]:
    """The recipe's exports of its final model; a GGUF newer than the model's manifest is current."""
    from pmcllama.export import export_gguf

    if section is None:
        return []
    written = []
    stamp = Path(model) / "manifest.json"
    for dtype in section.gguf:
        target = out_dir / f"model-{dtype}.gguf"
        if target.is_file() and not force and stamp.is_file() and target.stat().st_mtime >= stamp.stat().st_mtime:
            print(f"[export] {target} is up to date (newer than {stamp}); skipping. Use --force to redo.")
        else:
            export_gguf(model, target, dtype, force=True)
        written.append(target)
    if section.card:
        cfg = FolderExportConfig(model=model, out=str(out_dir / "card"), max_shard_size=section.max_shard_size)
        written.append(export_folder(cfg, force=force))
    return written
