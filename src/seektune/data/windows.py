"""Sliding windows over long inputs, and merging window predictions back to one answer.

A text longer than `data.max_length` tokens is never silently truncated: the fast tokenizer's
overflow mode cuts it into windows of at most max_length tokens (special tokens included) where
consecutive windows share `data.stride` tokens. Each window trains as its own example; at
prediction time the windows' class probabilities are averaged, per text (sequence
classification) or per word (token classification), so every text gets one label and every
word gets one tag.

Word pieces: only the first sub-token of a word carries the word's label; the other pieces are
ignored by the loss (-100) and by the merge.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .io import DataError
from . import IGNORE_INDEX



def check_window(tokenizer, max_length: int, stride: int) -> int:
    """Raise a DataError naming the key when stride leaves a window no room to move forward."""
    room = max_length - tokenizer.num_special_tokens_to_add(False)
    if room < 2:
        raise DataError(f"data.max_length={max_length} leaves no room for text after special tokens")
    if stride >= room:
        raise DataError(f"data.stride={stride} must be smaller than data.max_length minus special tokens "
                        f"({room}); windows would never advance")
    return room


def text_windows(tokenizer, text: str, max_length: int, stride: int) -> list[list[int]]:
    """Token ids of each window of one text (one window when it fits)."""
    enc = tokenizer(text, truncation=True, max_length=max_length, stride=stride,
                    return_overflowing_tokens=True)
    return [list(x) for x in enc["input_ids"]]


def word_windows(tokenizer, words: list[str], word_labels: list[int] | None, max_length: int,
                 stride: int) -> list[dict]:
    """Windows over a pre-split sentence.

    Each row: input_ids, labels (word label on the word's first sub-token, -100 elsewhere) and
    word_index (the word a labelled position belongs to, -1 elsewhere) for merging predictions.
    """
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    rows = []
    for w in range(len(enc["input_ids"])):
        wids = enc.word_ids(w)
        offsets = enc["offset_mapping"][w]
        index = []
        prev = None
        for j, wid in enumerate(wids):
            first = wid is not None and wid != prev and offsets[j][0] == 0
            index.append(wid if first else -1)
            prev = wid
        labels = [word_labels[i] if (i >= 0 and word_labels is not None) else IGNORE_INDEX for i in index]
        rows.append({"input_ids": list(enc["input_ids"][w]), "labels": labels, "word_index": index})
    return rows


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def merge_text_windows(window_logits: list[np.ndarray]) -> np.ndarray:
    """Class probabilities of one text: the mean of its windows' softmax outputs."""
    return np.mean([_softmax(np.asarray(x, dtype=np.float64)) for x in window_logits], axis=0)


def merge_word_windows(n_words: int, windows: list[tuple[list[int], np.ndarray]]) -> list[int | None]:
    """One label id per word from overlapping windows: (word_index, logits[seq, C]) per window.

    A word seen by several windows gets the argmax of its mean probability; a word that produced
    no token at all (e.g. a lone space) gets None, which callers map to 'O'.
    """
    sums: dict[int, np.ndarray] = {}
    counts: dict[int, int] = {}
    for word_index, logits in windows:
        probs = _softmax(np.asarray(logits, dtype=np.float64))
        for j, wid in enumerate(word_index):
            if wid is None or wid < 0:
                continue
            sums[wid] = sums.get(wid, 0) + probs[j]
            counts[wid] = counts.get(wid, 0) + 1
    return [int(np.argmax(sums[i])) if i in sums else None for i in range(n_words)]


def build_rows(task: str, data, tok, max_length: int, stride: int):
    """Training rows and eval windows (each window remembers its eval item)."""
    lid = {lab: i for i, lab in enumerate(data.labels)}
    train_rows, eval_rows, owners = [], [], []
    if task == "sequence_classification":
        for ex in data.train:
            for ids in text_windows(tok, ex.text, max_length, stride):
                train_rows.append({"input_ids": ids, "labels": lid[ex.label]})
        for k, ex in enumerate(data.eval):
            for ids in text_windows(tok, ex.text, max_length, stride):
                eval_rows.append({"input_ids": ids, "labels": lid[ex.label]})
                owners.append(k)
    else:
        for s in data.train:
            train_rows.extend(word_windows(tok, s.tokens, [lid[t] for t in s.tags], max_length, stride))
        for k, s in enumerate(data.eval):
            wl = [lid.get(t, IGNORE_INDEX) for t in s.tags]  # tags unseen in training: no loss, still scored
            for r in word_windows(tok, s.tokens, wl, max_length, stride):
                eval_rows.append(r)
                owners.append(k)
    return train_rows, eval_rows, owners


def label_counts(task: str, train_rows: list[dict], labels: list[str]) -> dict[str, int]:
    c: Counter = Counter()
    for r in train_rows:
        if task == "sequence_classification":
            c[r["labels"]] += 1
        else:
            c.update(x for x in r["labels"] if x != IGNORE_INDEX)
    return {lab: c.get(i, 0) for i, lab in enumerate(labels)}
