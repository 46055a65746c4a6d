"""Text-generation metrics: BLEU-4, ROUGE-L, exact match, and perplexity on reference answers.

Conventions (so numbers compare across runs and with other toolkits):
- BLEU-4 is sacrebleu's corpus BLEU (0-100); Chinese text uses sacrebleu's `zh` tokeniser, which
  splits CJK characters, other text its default `13a` tokeniser.
- ROUGE-L is the LCS F1 of each pair, averaged over pairs (0-100). Chinese is compared character
  by character (word segmentation would make the number depend on a segmenter); other languages
  by lower-cased alphanumeric words, as rouge_score does.
- Exact match (0-100) compares whitespace-normalised, lower-cased strings without trailing punctuation.
- Perplexity is exp(mean NLL) over the reference's assistant tokens only (the prompt is context);
  `text_perplexity` is the other one, over every token of rendered texts (what a deployment variant
  is compared on: llama.cpp's `perplexity` measures the same).
"""

from __future__ import annotations

import math
import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
_WORD = re.compile(r"[a-z0-9]+")


def is_cjk_text(texts: list[str], share: float = 0.3) -> bool:
    """True when CJK characters are at least `share` of the non-space characters of the texts."""
    chars = sum(len(re.sub(r"\s", "", t)) for t in texts)
    cjk = sum(len(_CJK.findall(t)) for t in texts)
    return chars > 0 and cjk / chars >= share


def detect_lang(texts: list[str]) -> str:
    """'zh' for CJK-dominated text, 'en' otherwise (the two tokenisation regimes we need)."""
    return "zh" if is_cjk_text(texts) else "en"


def rouge_tokens(text: str, lang: str) -> list[str]:
    """Units ROUGE-L compares: characters for Chinese (no spaces/punctuation), words otherwise."""
    if lang == "zh":
        return [c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")]
    return _WORD.findall(text.lower())


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l_pair(hyp: str, ref: str, lang: str) -> float:
    """ROUGE-L F1 (0-1) of one hypothesis against one reference."""
    h, r = rouge_tokens(hyp, lang), rouge_tokens(ref, lang)
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rc = lcs / len(h), lcs / len(r)
    return 2 * p * rc / (p + rc)


def rouge_l(hyps: list[str], refs: list[str], lang: str | None = None) -> float:
    """Mean ROUGE-L F1 over pairs, 0-100."""
    _check(hyps, refs)
    if not refs:
        return 0.0
    lang = lang or detect_lang(refs)
    return 100.0 * sum(rouge_l_pair(h, r, lang) for h, r in zip(hyps, refs)) / len(refs)


def bleu4(hyps: list[str], refs: list[str], lang: str | None = None) -> float:
    """Corpus BLEU-4 (0-100) with sacrebleu; `zh` tokenisation for Chinese."""
    from sacrebleu.metrics import BLEU

    _check(hyps, refs)
    if not refs:
        return 0.0
    lang = lang or detect_lang(refs)
    bleu = BLEU(tokenize="zh" if lang == "zh" else "13a", max_ngram_order=4)
    return float(bleu.corpus_score(list(hyps), [list(refs)]).score)


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.rstrip("。.!！?？;；,， ")


def exact_match(hyps: list[str], refs: list[str]) -> float:
    """Share of pairs (0-100) equal after normalisation."""
    _check(hyps, refs)
    if not refs:
        return 0.0
    return 100.0 * sum(normalize_answer(h) == normalize_answer(r) for h, r in zip(hyps, refs)) / len(refs)


def text_metrics(hyps: list[str], refs: list[str], lang: str | None = None) -> dict:
    """All reference-based text metrics at once (lang detected from the references when None)."""
    lang = lang or detect_lang(refs)
    return {"rouge_l": rouge_l(hyps, refs, lang), "bleu4": bleu4(hyps, refs, lang),
            "exact_match": exact_match(hyps, refs), "lang": lang, "n": len(refs)}


def _check(hyps, refs) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def perplexity(model, tokenizer, template, conversations: list[list[dict]], max_length: int = 1024,
               batch_size: int = 8) -> float:
    """exp(total NLL / total assistant tokens) of the conversations' assistant turns.

    Summing token NLLs over the whole set (not averaging per-sample means) weights every reference
    token equally, so a set of short answers does not dominate.
    """
    import torch

    from ..data.collate import PadCollator
    from ..data import IGNORE_INDEX
    from ..data.sft import tokenize_conversation

    rows = []
    for msgs in conversations:
        ex = tokenize_conversation(msgs, template, tokenizer, max_length)
        if any(lab != IGNORE_INDEX for lab in ex["labels"]):
            rows.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    if not rows:
        return float("nan")
    collate = PadCollator(tokenizer.pad_token_id)
    total_nll, total_tok = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                batch = collate(rows[i:i + batch_size])
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = batch["labels"][:, 1:]
                nll = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum")
                total_nll += float(nll)
                total_tok += int((shift_labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return math.exp(total_nll / total_tok) if total_tok else float("nan")


def text_perplexity(model, tok, texts: list[str], max_length: int = 256) -> float:
    """exp(mean NLL) over every token of each text (one forward per text, truncated to max_length)."""
    import torch

    nll, count = 0.0, 0
    dev = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    with torch.no_grad():
        for t in texts:
            ids = tok(t, add_special_tokens=False, return_tensors="pt", truncation=True,
                      max_length=max_length)["input_ids"].to(dev)
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits[0, :-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return math.exp(nll / max(1, count))
