"""Models of other families than the embedded one, through the normal `--model <folder>` path: a Llama with
ChatML, a Gemma with Gemma's turn markup and a Mistral base model without a chat template, each a tiny random
model saved with save_pretrained beside the embedded tokenizer. seq_lora's LoRA (q_proj, v_proj) and CRAFT's
layers must fit each; the prompt follows each model's template and config.json says which it used."""
import copy
import json
import os

import pytest
from transformers import GemmaConfig, GemmaForCausalLM, MistralConfig, MistralForCausalLM

from harness.cli import main
from harness.models import tiny_model
from harness.prompting import PromptEncoder

# Gemma's template (google/gemma-2b-it), its turn markers added to the tokenizer as special tokens
GEMMA_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' "
                  "else message['role'] %}<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def small(cls_config, tok, **extra):
    return cls_config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_attention_heads=4,
                      max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **extra)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("models")
    llama_tok = copy.deepcopy(tokenizer)
    gemma_tok = copy.deepcopy(tokenizer)
    gemma_tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    gemma_tok.chat_template = GEMMA_TEMPLATE
    base_tok = copy.deepcopy(tokenizer)
    base_tok.chat_template = None
    models = {
        "llama": (tiny_model(llama_tok, layers=2), llama_tok),
        "gemma": (GemmaForCausalLM(small(GemmaConfig, gemma_tok, num_hidden_layers=3, num_key_value_heads=1,
                                         head_dim=16)), gemma_tok),
        "mistral": (MistralForCausalLM(small(MistralConfig, base_tok, num_hidden_layers=5, num_key_value_heads=2,
                                             sliding_window=None)), base_tok),
    }
    dirs = {}
    for name, (model, tok) in models.items():
        dirs[name] = str(root / name)
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    return dirs


def test_each_template_gives_its_prompt_and_end_of_answer(model_dirs):
    from harness.models import load_tokenizer
    from tasks import load_task
    task = load_task("bbc", None, 2, 2, 1)
    seen = {}
    for name, folder in model_dirs.items():
        encoder = PromptEncoder(load_tokenizer(folder), 12)
        ex = encoder.encode(task, "test")[0]
        seen[name] = (encoder.tok.decode(ex.prompt_ids), encoder.tok.convert_ids_to_tokens(ex.answer_ids[-1]),
                      encoder.describe())
    assert "<|im_start|>assistant" in seen["llama"][0] and seen["llama"][1] == "<|im_end|>"
    assert seen["gemma"][0].rstrip().endswith("<start_of_turn>model") and seen["gemma"][1] == "<end_of_turn>"
    assert "<start_of_turn>" not in seen["mistral"][0] and seen["mistral"][0].rstrip().endswith("Answer:")
    assert seen["mistral"][1] == encoder.tok.eos_token
    assert [seen[n][2]["format"] for n in ("llama", "gemma", "mistral")] == ["chat", "chat", "plain"]
    assert seen["llama"][2]["chat_template_sha1"] != seen["gemma"][2]["chat_template_sha1"]


@pytest.mark.parametrize("family,layers", [("llama", 2), ("gemma", 3), ("mistral", 5)])
@pytest.mark.parametrize("method", ["seq_lora", "craft"])
def test_a_bench_runs_on_each_family(model_dirs, tmp_path, family, layers, method):
    out = str(tmp_path / "run")
    code = main(["bench", "--method", method, "--order", "bbc,hutto_amazon", "--model", model_dirs[family],
                 "--train-per-task", "4", "--test-per-task", "4", "--max-input-tokens", "12", "--quiet",
                 "--out", out, "--method-arg", "batch_size=2"])
    assert code == 0
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(out, "method.json")) as f:
        card = json.load(f)
    assert config["model"] == model_dirs[family]
    assert config["prompt"]["format"] == ("plain" if family == "mistral" else "chat")
    assert config["prompt"]["end_of_answer"] == {"llama": "<|im_end|>", "gemma": "<end_of_turn>",
                                                 "mistral": "<|im_end|>"}[family]   # the embedded tokenizer's eos
    if method == "craft":   # auto: 4 evenly spaced layers of the model's own depth, all of them when it has <= 4
        expected = list(range(layers)) if layers <= 4 else [0, 1, 2, 3]
        assert card["diagnostics"]["layers"] == expected
        assert card["trainable_parameters"] > 0
    else:   # a rank-8 LoRA on q_proj and v_proj of every layer, sized by the family's own projections
        kv = {"llama": 2, "gemma": 1, "mistral": 2}[family]
        head = 16
        per_layer = 8 * (64 + 64) + 8 * (64 + kv * head)
        assert card["trainable_parameters"] == per_layer * layers


def test_a_template_that_writes_the_date_gets_a_fixed_one(tokenizer):
    # Llama 3's template puts today's date into the system turn unless it is given one: prompts (and scores)
    # would then change from one day to the next
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% if not date_string is defined %}{% set date_string = strftime_now('%d %b %Y') %}"
                         "{% endif %}Today Date: {{ date_string }}\n{{ messages[0]['content'] }}")
    from tasks import load_task
    task = load_task("bbc", None, 2, 2, 1)
    assert PromptEncoder(tok, 12).prompt_string(task, "text").startswith("Today Date: 26 Jul 2024\n")
