"""The Presidio analyzer and anonymizer, set up to run offline on Chinese and English text.

AnalyzerEngine normally loads a spaCy model (en_core_web_lg, a download). Here it gets a minimal
NlpEngine instead: no NER, only tokens from a regex (runs of Chinese characters, words, numbers,
single symbols), which is all the pattern recognizers and Presidio's context enhancer need (the
enhancer matches cue words as substrings of the tokens before a match). Overlapping detections of
different types are resolved here, before the anonymizer, so the anonymizer only replaces disjoint
spans and every other character is left exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex

from ._presidio import (AnalyzerEngine, AnonymizerEngine, AnonymizerSpan, CreditCardRecognizer, NlpArtifacts,
                        NlpEngine, OperatorConfig, PhoneRecognizer, RecognizerRegistry)
from .options import ENTITY_TYPES, DeidentifyOptions
from .zh_recognizers import LANG, chinese_recognizers

_TOKEN = regex.compile(r"[\u4e00-\u9fff]+|[A-Za-z]+|\d+|\S")
_PUNCT = regex.compile(r"\p{P}+|\p{S}+")
# when two detections overlap: the longer wins, then this order (a Luhn-valid 18-digit ID stays an ID)
_PRIORITY = {t: i for i, t in enumerate(("ID_CARD", "BANK_CARD", "EMAIL", "MRN", "DATE_OF_BIRTH", "PHONE",
                                          "PERSON", "ADDRESS"))}


class RegexNlpEngine(NlpEngine):
    """Tokens and lowercase "lemmas" from a regex, no entities: nothing to download or load."""

    def __init__(self, languages=(LANG,)):
        from spacy.tokens import Doc  # spaCy comes with presidio; a blank Vocab needs no model
        from spacy.vocab import Vocab

        self._doc, self._vocab, self.languages = Doc, Vocab(), list(languages)

    def load(self) -> None:
        pass

    def is_loaded(self) -> bool:
        return True

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        toks = list(_TOKEN.finditer(text))
        words = [m.group(0) for m in toks]
        doc = self._doc(self._vocab, words=words, spaces=[False] * len(words))
        return NlpArtifacts(entities=[], tokens=doc, tokens_indices=[m.start() for m in toks],
                            lemmas=[w.lower() for w in words], nlp_engine=self, language=language)

    def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
        for t in texts:
            yield t, self.process_text(t, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return False

    def is_punct(self, word: str, language: str) -> bool:
        return bool(_PUNCT.fullmatch(word))

    def get_supported_entities(self):
        return []

    def get_supported_languages(self):
        return self.languages


class _QuickPhoneRecognizer(PhoneRecognizer):
    """Presidio's PhoneRecognizer (python-phonenumbers, international formats), skipped on text with no
    run of 7+ digits: it is by far the slowest recognizer and most text has no number at all."""

    _HINT = regex.compile(r"\d(?:[\d\s().\-]{5,})\d")

    def analyze(self, text, entities, nlp_artifacts=None):
        return super().analyze(text, entities, nlp_artifacts) if self._HINT.search(text) else []


def build_analyzer(min_score: float = 0.5) -> AnalyzerEngine:
    """Our Chinese recognizers plus Presidio's phone and credit-card recognizers, one language `zh`."""
    recognizers = chinese_recognizers() + [
        _QuickPhoneRecognizer(supported_language=LANG, supported_entity="PHONE", supported_regions=("US", "GB")),
        CreditCardRecognizer(supported_language=LANG, supported_entity="BANK_CARD"),
    ]
    registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANG])
    return AnalyzerEngine(registry=registry, nlp_engine=RegexNlpEngine(), supported_languages=[LANG],
                          default_score_threshold=min_score)


@dataclass(frozen=True)
class Span:
    """One detection: [start, end) in the original string, its type, the text found and what replaced it."""

    start: int
    end: int
    type: str
    text: str
    score: float
    new: str = ""


def resolve(results) -> list:
    """Disjoint spans: longest first, then by type priority, then score; the rest are dropped."""
    order = sorted(results, key=lambda r: (-(r.end - r.start), _PRIORITY.get(r.entity_type, 99), -r.score, r.start))
    kept = []
    for r in order:
        if all(r.end <= k.start or r.start >= k.end for k in kept):
            kept.append(r)
    return sorted(kept, key=lambda r: r.start)


class Deidentifier:
    """Finds personal data in a string with Presidio and replaces it (tags or pseudonyms).

    `__call__(text)` returns the new text and the spans replaced; text with no detection comes back as
    the same object."""

    def __init__(self, opts: DeidentifyOptions | None = None, analyzer: AnalyzerEngine | None = None):
        from .replace import Replacer

        self.opts = opts or DeidentifyOptions()
        self.analyzer = analyzer or build_analyzer(self.opts.min_score)
        self.anonymizer = AnonymizerEngine()
        self.replacer = Replacer(self.opts.mode, self.opts.seed)
        self.types = [t for t in ENTITY_TYPES if t in self.opts.types]

    def find(self, text: str) -> list:
        """Presidio's detections, overlaps resolved."""
        if not text or not text.strip():
            return []
        return resolve(self.analyzer.analyze(text, language=LANG, entities=self.types))

    def __call__(self, text: str) -> tuple[str, list[Span]]:
        found = self.find(text)
        if not found:
            return text, []
        operators = {t: OperatorConfig("custom", {"lambda": lambda value, t=t: self.replacer(t, value)})
                     for t in {r.entity_type for r in found}}
        res = self.anonymizer.anonymize(text, [AnonymizerSpan(r.entity_type, r.start, r.end, r.score) for r in found],
                                        operators=operators, merge_entities_with_spaces=False)
        items = sorted(res.items, key=lambda it: it.start)  # disjoint spans: one item each, in the same order
        spans = [Span(r.start, r.end, r.entity_type, text[r.start:r.end], round(r.score, 2), it.text)
                 for r, it in zip(found, items)]
        return res.text, spans
