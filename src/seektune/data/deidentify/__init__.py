"""De-identification as a data step: find personal data in text fields and replace it before training.

Microsoft Presidio is the engine (AnalyzerEngine + AnonymizerEngine); Presidio has no recognizers for
Chinese identifiers, so zh_recognizers.py adds them (resident IDs with their checksum, mobiles and
landlines, Luhn-valid bank cards, e-mails, addresses, names, dates of birth, medical record numbers).

- options.py: DeidentifyOptions (no Presidio import, so configs validate fast)
- checksums.py: GB 11643 and Luhn
- lexicon.py: surnames, places, cue words, pseudonym material
- zh_recognizers.py: the recognizers
- engine.py: the offline analyzer/anonymizer setup, overlap resolution, `Deidentifier`
- replace.py: tags and consistent, format-preserving pseudonyms
- report.py / files.py: the report, the review sample, `deidentify_file`

Only options are imported here: Presidio loads when a Deidentifier is built.
"""

from __future__ import annotations

from .options import ENTITY_HELP, ENTITY_TYPES, DeidentifyOptions


def deidentify_file(*a, **kw):
    """See files.deidentify_file (imported lazily: it needs Presidio)."""
    from .files import deidentify_file as run

    return run(*a, **kw)


def Deidentifier(*a, **kw):  # noqa: N802 - a factory that reads like the class it builds
    """See engine.Deidentifier (imported lazily: it needs Presidio)."""
    from .engine import Deidentifier as cls

    return cls(*a, **kw)


__all__ = ["DeidentifyOptions", "Deidentifier", "ENTITY_HELP", "ENTITY_TYPES", "deidentify_file"]
