"""Import Presidio without the parts we do not use.

presidio_analyzer imports torch (to probe for a GPU) and transformers (for its optional HF NER
engine) when it is imported. De-identification uses neither, and on a busy CPU box those imports
cost tens of seconds, so when they are not loaded yet they are hidden for the duration of the
import (Presidio falls back to "not installed"). Nothing is downloaded: no spaCy model is loaded.
"""

from __future__ import annotations

import sys

_HIDDEN = ("torch", "transformers")
_hide = [m for m in _HIDDEN if m not in sys.modules]
for _m in _hide:
    sys.modules[_m] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
try:
    import presidio_analyzer
    import presidio_anonymizer
    from presidio_analyzer import (AnalyzerEngine, EntityRecognizer, Pattern, PatternRecognizer,
                                   RecognizerRegistry, RecognizerResult)
    from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,
                                                          PhoneRecognizer)
    from presidio_anonymizer import AnonymizerEngine
    from presidio_anonymizer.entities import OperatorConfig
    from presidio_anonymizer.entities import RecognizerResult as AnonymizerSpan
finally:
    for _m in _hide:
        if sys.modules.get(_m, 0) is None:
            del sys.modules[_m]

__all__ = ["AnalyzerEngine", "AnonymizerEngine", "AnonymizerSpan", "CreditCardRecognizer", "EmailRecognizer",
           "EntityRecognizer", "NlpArtifacts", "NlpEngine", "OperatorConfig", "Pattern", "PatternRecognizer",
           "PhoneRecognizer", "RecognizerRegistry", "RecognizerResult", "presidio_analyzer", "presidio_anonymizer"]
