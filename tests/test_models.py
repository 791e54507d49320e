"""The cached copy of the embedded model is the GGUF model, tensor for tensor and token for token."""
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.models import embedded_cache, embedded_file


def test_cached_copy_equals_the_gguf_load(smollm):
    model, tok = smollm                       # loaded through the cache
    folder, filename = embedded_file("smollm2-135m")
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32).eval()
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    ours, theirs = model.state_dict(), gguf.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    text = tok.apply_chat_template([{"role": "user", "content": "Is this spam? Win a prize now"}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == gguf_tok.apply_chat_template([{"role": "user", "content": "Is this spam? Win a prize now"}],
                                                add_generation_prompt=True, tokenize=False)
    assert tok(text).input_ids == gguf_tok(text).input_ids and tok.eos_token_id == gguf_tok.eos_token_id
    path = embedded_cache("smollm2-135m")
    assert os.path.isfile(os.path.join(path, ".complete")) and embedded_cache("smollm2-135m") == path


def test_building_an_adapter_prints_no_library_deprecation_noise():
    # peft asks the model for `is_gradient_checkpointing`, which transformers deprecates with a FutureWarning
    # on every adapter built: between the progress bars of a sweep it reads like a problem with the run.
    import warnings

    from harness.models import load_model
    from methods import get_method
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, tok = load_model("tiny-llama")
        get_method("seq_lora")(model, tok, {}, seed=0).setup()
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
