import pytest
import torch

from core.scoring import CausalLMScorer
from harness.evaluation import accuracy, generate_predictions, rank_predictions
from harness.models import tiny_model
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


# ---- every candidate on one copy of the prompt cache (packed under a 4-D mask) ----------------------------------
PREFIX_LABELS = ("negative", "negative or neutral", "very positive", "positive")   # a label that is a prefix of another


def packed_and_padded(scorer, prompts, cands, pad_id, share_prefix=True):
    """candidate_logprobs with the candidates packed on one cache, then with one cache copy per candidate."""
    from harness.evaluation import candidate_logprobs
    assert scorer.packs_candidates
    packed = candidate_logprobs(scorer, prompts, cands, pad_id, 5, share_prefix=share_prefix)
    scorer.packs_candidates = False
    padded = candidate_logprobs(scorer, prompts, cands, pad_id, 5, share_prefix=share_prefix)
    return packed, padded


def assert_same_scores(packed, padded, atol=1e-4, rtol=1e-5):
    (scores, greedy), (ref, ref_greedy) = packed, padded
    assert torch.allclose(scores, ref, atol=atol, rtol=rtol)
    assert torch.equal(greedy, ref_greedy) and torch.equal(scores.argmax(-1), ref.argmax(-1))


def ragged_prompts_and_labels(tok):
    enc = PromptEncoder(tok, max_input_tokens=32)
    task = make_task(PREFIX_LABELS)
    cands = enc.candidates(task)
    assert cands[1][:len(cands[0]) - 1] == cands[0][:-1] and len({len(c) for c in cands}) > 1
    prompts = [ex.prompt_ids for ex in enc.encode(task, "test")]
    assert len({len(p) for p in prompts}) > 2    # batches of 5 are left-padded
    return prompts, cands


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_candidates_score_as_one_cache_copy_per_candidate(tokenizer, attention):
    """Packed and per-candidate scoring agree (fp32, float rounding only) on a plain model and through a peft
    LoRA, on prompts of several lengths and labels of several lengths, one a prefix of another; and they are
    the scores of each prompt+label as its own sequence."""
    from methods import get_method
    prompts, cands = ragged_prompts_and_labels(tokenizer)
    pad = tokenizer.pad_token_id
    model = tiny_model(tokenizer, seed=0)
    model.config._attn_implementation = attention
    packed, padded = packed_and_padded(CausalLMScorer(model), prompts, cands, pad)
    assert_same_scores(packed, padded)
    for p, row in zip(prompts[:4], packed[0]):
        assert torch.allclose(row, torch.tensor(full_sequence_scores(model, p, cands)), atol=1e-4)
    lora = get_method("seq_lora")(model, tokenizer, {}, seed=0)
    lora.setup()
    with torch.no_grad():   # LoRA's B starts at zero: give the adapter an effect
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2, generator=torch.Generator().manual_seed(1))
    packed_lora, padded_lora = packed_and_padded(lora.scorer("t"), prompts, cands, pad)
    assert_same_scores(packed_lora, padded_lora)
    assert not torch.allclose(packed_lora[0], packed[0], atol=1e-3)


@pytest.mark.parametrize("cache_mb,attention", [(0, "sdpa"), (64, "sdpa"), (64, "eager")])
def test_packed_candidates_through_the_craft_scorer(tokenizer, cache_mb, attention):
    """CRAFT edits prompt positions only: packed and per-candidate scoring agree with its edits active, on
    shared-prefix prompts (cache_mb=0) and on its frozen-backbone cache (cache_mb>0), where the packed
    candidates share one forward with the prompts' edited tails (encode_with_continuation), before any
    group exists (the base row) and after one."""
    import tasks
    from core.data import TaskContext
    from harness.training import fit
    from methods.craft import CRAFT
    model = tiny_model(tokenizer, seed=0)
    model.config._attn_implementation = attention
    m = CRAFT(model, tokenizer, {"probe_size": "4", "anchors_per_task": "4", "routing": "single"}, seed=1,
              cache_mb=cache_mb)
    m.setup()
    enc = PromptEncoder(tokenizer, 16)
    data = tasks.load_task("bbc", None, 8, 10, 1)
    train = enc.encode(data, "train")
    prompts, cands = ragged_prompts_and_labels(tokenizer)   # prompts and labels of several lengths
    # and prompts no longer than the edited tail (4): left-padded tails, empty heads
    prompts = prompts + [prompts[0][-k:] for k in (1, 3, 4)]

    def both(scorer):
        joint = []
        if cache_mb:
            one_forward = scorer.encode_with_continuation
            scorer.encode_with_continuation = lambda *a: joint.append(1) or one_forward(*a)
        packed, padded = packed_and_padded(scorer, prompts, cands, tokenizer.pad_token_id)
        assert bool(joint) == bool(cache_mb)   # the cache's path took the candidates with the tails
        return packed, padded

    # tight: a candidate token at a wrong position moves scores by about 4e-4 on this tiny model (float
    # rounding: 2e-6), which the default tolerance, relative to scores of about -40, would let through
    base = both(m.scorer("bbc"))
    assert_same_scores(*base, atol=2e-5, rtol=0)
    ctx = TaskContext(0, "bbc", ["bbc"])
    m.before_task(ctx, train)
    fit(m, ctx, train[:4], seed=0, pad_id=tokenizer.pad_token_id, progress=False)
    m.after_task(ctx, train)
    scorer = m.scorer("bbc")
    assert scorer.own_encoding == bool(cache_mb)
    edited = both(scorer)
    assert_same_scores(*edited, atol=2e-5, rtol=0)
    assert not torch.allclose(edited[0][0], base[0][0], atol=1e-3)   # the edit acts on the joint path too
    m.hooks.remove()


def test_cache_off_and_models_that_cannot_pack_score_one_copy_per_candidate(tiny):
    from harness.evaluation import candidate_logprobs
    model, tok = tiny
    prompts, cands = ragged_prompts_and_labels(tok)
    scorer = CausalLMScorer(model)
    masks = []
    forward = scorer.continue_forward
    scorer.continue_forward = lambda ids, mask, pos, past: masks.append(mask.dim()) or forward(ids, mask, pos, past)
    candidate_logprobs(scorer, prompts, cands, tok.pad_token_id, 5, share_prefix=True)
    assert set(masks) == {4}
    masks.clear()
    candidate_logprobs(scorer, prompts, cands, tok.pad_token_id, 5, share_prefix=False)
    assert set(masks) == {2}    # --cache off: every cache off, packing too
    model.config.sliding_window = 4   # a custom mask would override the window
    assert not CausalLMScorer(model).packs_candidates


def _ntokens(tokenizer, text):
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def test_fields_truncation_keeps_every_line_where_head_drops_the_question(tokenizer):
    """MultiRC's shape: a long paragraph, then the question and the candidate answer. A head cut loses both; the
    fields cut keeps each line's start within the same budget, and leaves short inputs alone."""
    paragraph = "paragraph: " + " ".join(f"Sentence {i} says the ball rolled {i} metres." for i in range(40))
    text = f"{paragraph}\nquestion: How far did the ball roll in sentence 3?\ncandidate answer: 3 metres"
    head, fields = PromptEncoder(tokenizer, 40, "head"), PromptEncoder(tokenizer, 40, "fields")
    cut_head, cut_fields = head._truncate(text), fields._truncate(text)
    assert "question:" not in cut_head and "candidate answer" not in cut_head
    lines = cut_fields.split("\n")
    assert lines[0].startswith("paragraph: Sentence 0") and lines[0].endswith(" ...")
    assert lines[1:] == text.split("\n")[1:]    # the short lines whole
    assert _ntokens(tokenizer, cut_fields) <= _ntokens(tokenizer, cut_head) + 1
    short = "sentence 1: a cat sat.\nsentence 2: a cat is sitting."
    assert fields._truncate(short) == head._truncate(short) == short


def test_fields_truncation_is_the_head_cut_where_that_keeps_every_line(tokenizer):
    """dbpedia's shape (a title, then the long text, which the head cut ends inside): the two modes give the same
    prompt, so the tasks whose last line is the long one keep their prompts; several long lines share the budget."""
    text = "Title: The Ball\nText: " + " ".join(f"It rolled {i} metres on day {i}." for i in range(50)) + "\n"
    head, fields = PromptEncoder(tokenizer, 24, "head"), PromptEncoder(tokenizer, 24, "fields")
    assert fields._truncate(text) == head._truncate(text)
    two = "sentence 1: " + "one two three " * 30 + "\nsentence 2: " + "four five six " * 30
    lines = fields._truncate(two).split("\n")
    assert [line.split(":")[0] for line in lines] == ["sentence 1", "sentence 2"]
    assert all(line.endswith(" ...") for line in lines)
    assert abs(_ntokens(tokenizer, lines[0]) - _ntokens(tokenizer, lines[1])) <= 2   # a common length
    with pytest.raises(ValueError, match="unknown truncation"):
        PromptEncoder(tokenizer, 24, "tail")


def test_fields_truncation_falls_back_to_the_head_cut_where_the_lines_outnumber_the_budget(tokenizer):
    text = "\n".join(f"line {i}: " + "word " * 30 for i in range(12))
    head, fields = PromptEncoder(tokenizer, 8, "head"), PromptEncoder(tokenizer, 8, "fields")
    assert fields._truncate(text) == head._truncate(text)


def test_inputs_that_lose_a_line_are_counted_under_each_cut(tokenizer):
    long_first = "paragraph: " + "the ball rolled far. " * 30 + "\nquestion: did it roll?"
    long_last = "question: did it roll?\nparagraph: " + "the ball rolled far. " * 30
    rows = [Example(t, "yes") for t in (long_first, long_last, "question: did it roll?")]
    task = TaskData("t", "Answer it.", ("yes", "no"), rows, rows[:1], {}, {})
    assert PromptEncoder(tokenizer, 32, "head").fields_dropped(task) == {"train": [1, 3], "test": [1, 1]}
    assert PromptEncoder(tokenizer, 32, "fields").fields_dropped(task) == {"train": [0, 3], "test": [0, 1]}


def test_a_line_cut_right_after_its_label_counts_as_lost(tokenizer):
    """RTE's shape where the head cut ends inside `sentence 2:`: the label alone says nothing of the hypothesis."""
    first = "sentence 1: " + "the ball rolled far " * 4
    budget = len(tokenizer(first + "\nsentence", add_special_tokens=False).input_ids)
    text = first + "\nsentence 2: the ball stopped."
    head, fields = PromptEncoder(tokenizer, budget, "head"), PromptEncoder(tokenizer, budget, "fields")
    assert head._truncate(text).split("\n")[1].startswith("sentence") and "stopped" not in head._truncate(text)
    assert head.drops_a_field(text) and not fields.drops_a_field(text)
    assert fields._truncate(text).split("\n")[1].startswith("sentence 2: the")


def test_a_colon_in_a_sentence_is_no_field_label(tokenizer):
    """Only a `field:` label at a line's start is discounted: a one-line input keeps its start under any cut, and a
    last line cut inside a sentence that merely holds a colon still counts as kept."""
    enc = PromptEncoder(tokenizer, 6, "head")
    assert not enc.drops_a_field("Note: " + "this film was long and slow " * 10)
    first = "sentence 1: " + "the ball rolled far " * 4
    budget = len(tokenizer(first + "\nI liked", add_special_tokens=False).input_ids)
    text = first + "\nI liked it a lot. Note: the end was weak."
    assert not PromptEncoder(tokenizer, budget, "head").drops_a_field(text)
    fields, head = PromptEncoder(tokenizer, budget, "fields"), PromptEncoder(tokenizer, budget)
    assert fields._truncate(text) == head._truncate(text)
