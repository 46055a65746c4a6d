"""What `seektune data preview` shows: a training sample as rendered, with the spans that carry loss.

The text is decoded from the token ids the trainer will see (truncation included) and the spans
are the characters whose tokens have a label, so a user can check a template, a system prompt or
a reasoning field before spending hours on a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import IGNORE_INDEX


@dataclass
class PreviewSample:
    where: str
    text: str
    spans: list[tuple[int, int]]  # character ranges of `text` that carry loss

    @property
    def trained(self) -> str:
        return "".join(self.text[a:b] for a, b in self.spans)

    def as_json(self) -> dict:
        return {"where": self.where, "text": self.text, "trained": self.trained, "spans": self.spans}


def token_preview(tok, ids: list[int], labels: list[int], where: str = "") -> PreviewSample:
    """Decode ids into text and mark the character runs whose tokens carry a label."""
    spans: list[tuple[int, int]] = []
    prev, done = "", 0  # text decoded so far, tokens it covers
    for k in range(1, len(ids) + 1):
        cur = tok.decode(ids[:k], skip_special_tokens=False)
        if cur.endswith("\ufffd") and k < len(ids):
            continue  # a multi-byte character split over tokens: wait for the rest
        start, end = len(prev), len(cur)
        if end > start and any(lab != IGNORE_INDEX for lab in labels[done:k]):
            if spans and spans[-1][1] == start:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        prev, done = cur, k
    return PreviewSample(where, prev, spans)
