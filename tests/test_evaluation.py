import pytest
import torch

from core.scoring import CausalLMScorer
from harness.evaluation import accuracy, generate_predictions, rank_predictions
from harness.prompting import PromptEncoder
from tasks.base import Example, TaskData


def make_task(labels=("very negative", "negative", "positive", "very positive")):
    train = [Example(f"text number {i} " * (1 + i % 4), labels[i % len(labels)]) for i in range(12)]
    return TaskData("t", "Classify it.", tuple(labels), train, train, {"train": 0, "test": 0},
                    {"train": 12, "test": 12})


@torch.no_grad()
def full_sequence_scores(model, prompt, candidates):
    """Reference: each prompt+candidate as its own unpadded sequence (the slow, obvious way)."""
    out = []
    for cand in candidates:
        logp = torch.log_softmax(model(torch.tensor([list(prompt) + list(cand)])).logits[0].float(), -1)
        out.append(sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(cand)))
    return out


def test_rank_matches_full_sequence_scoring_with_shared_first_tokens(tiny):
    model, tok = tiny
    enc = PromptEncoder(tok, max_input_tokens=32)
    task = make_task()
    cands = enc.candidates(task)
    # "very negative" and "very positive" share their first token: only full-label scoring separates them
    assert cands[0][0] == cands[3][0]
    examples = enc.encode(task, "test")
    preds = rank_predictions(CausalLMScorer(model), examples, cands, tok.pad_token_id, batch_size=5)
    ref = []
    for ex in examples:
        scores = full_sequence_scores(model, ex.prompt_ids, cands)
        ref.append(max(range(len(cands)), key=scores.__getitem__))
    assert preds == ref


def test_generation_matches_hf_generate(tiny):
    model, tok = tiny
    enc = PromptEncoder(tok, max_input_tokens=32)
    examples = enc.encode(make_task(), "test")[:5]
    ours = generate_predictions(CausalLMScorer(model), examples, enc.end_id, tok.pad_token_id, max_new_tokens=4,
                                batch_size=3)
    for ex, got in zip(examples, ours):
        ref = model.generate(torch.tensor([ex.prompt_ids]), max_new_tokens=4, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=enc.end_id)[0, len(ex.prompt_ids):]
        assert got == ref.tolist()[: len(got)] and len(got) == len(ref)


def test_accuracy_counts_hits(tiny):
    model, tok = tiny
    enc = PromptEncoder(tok, max_input_tokens=32)
    task = make_task()
    examples = enc.encode(task, "test")
    scorer = CausalLMScorer(model)
    preds = rank_predictions(scorer, examples, enc.candidates(task), tok.pad_token_id)
    expected = 100.0 * sum(p == ex.label_index for p, ex in zip(preds, examples)) / len(examples)
    assert accuracy(scorer, examples, enc.candidates(task), task.labels, enc, "rank") == expected


def test_prompt_has_instruction_options_input_and_answer(tokenizer):
    enc = PromptEncoder(tokenizer, max_input_tokens=4)
    task = make_task()
    text = tokenizer.decode(enc.prompt_ids(task, "one two three four five six seven eight"))
    assert "Classify it.\nOptions: very negative, negative, positive, very positive\n" in text
    assert "five six" not in text and text.rstrip().endswith("assistant")    # truncated; chat template
    assert "Answer:" in text
    assert enc.answer_ids("negative")[-1] == tokenizer.eos_token_id


def test_rank_on_the_real_model_matches_full_sequence_scoring(smollm):
    """The embedded SmolLM2 with its chat template: cached candidate scoring = one sequence per label."""
    import tasks
    model, tok = smollm
    enc = PromptEncoder(tok)
    data = tasks.load_task("bbc", None, 5, 5, seed=1)
    examples, cands = enc.encode(data, "test"), enc.candidates(data)
    preds = rank_predictions(CausalLMScorer(model), examples, cands, tok.pad_token_id, batch_size=3)
    for ex, pred in zip(examples, preds):
        scores = full_sequence_scores(model, ex.prompt_ids, cands)
        assert pred == max(range(len(cands)), key=scores.__getitem__)


@pytest.mark.parametrize("names", [("trec", "bbc", "hutto_amazon")])
def test_shared_prefix_gives_the_scores_of_full_prompts(tiny, names):
    """Rank scores and greedy generations with each task's prefix encoded once equal those of whole prompts
    (fp32, float rounding only), on real prompts of several tasks."""
    import tasks
    from harness.evaluation import SharedPrefix, candidate_logprobs
    model, tok = tiny
    enc = PromptEncoder(tok, 16)
    scorer = CausalLMScorer(model)
    for name in names:
        data = tasks.load_task(name, None, 4, 12, seed=1)
        prompts, cands = [ex.prompt_ids for ex in enc.encode(data, "test")], enc.candidates(data)
        assert SharedPrefix(scorer, prompts).length >= 20    # chat template, instruction, options
        full, full_greedy = candidate_logprobs(scorer, prompts, cands, tok.pad_token_id, 5, share_prefix=False)
        shared, shared_greedy = candidate_logprobs(scorer, prompts, cands, tok.pad_token_id, 5, share_prefix=True)
        assert torch.allclose(full, shared, atol=1e-4) and torch.equal(full_greedy, shared_greedy), name
        examples = enc.encode(data, "test")
        assert generate_predictions(scorer, examples, enc.end_id, tok.pad_token_id, 4, 5, share_prefix=False) == \
            generate_predictions(scorer, examples, enc.end_id, tok.pad_token_id, 4, 5, share_prefix=True)


def test_shared_prefix_leaves_each_prompt_the_tokens_its_scorer_edits(tiny):
    from harness.evaluation import SharedPrefix
    model, _ = tiny
    scorer = CausalLMScorer(model)
    prompts = [tuple(range(30)) + (40, 41), tuple(range(30)) + (50,)]
    assert SharedPrefix(scorer, prompts).length == 30
    scorer.min_own_tokens = 4     # CRAFT edits the last 4 prompt tokens: they must not sit in the prefix
    assert SharedPrefix(scorer, prompts).length == 27
    scorer.prefix_forward = lambda ids: None    # a scorer that cannot share a prefix encodes whole prompts
    assert SharedPrefix(scorer, prompts).past is None
