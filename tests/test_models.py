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
