"""Options of `seektune data deidentify` (CLI flags and the `deidentify` pipeline step map onto these 1:1).

Kept free of Presidio so a config can be validated without importing the engine.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# what we find and the tag each becomes in `--mode tag`
ENTITY_TYPES = ("ID_CARD", "PHONE", "BANK_CARD", "EMAIL", "ADDRESS", "PERSON", "DATE_OF_BIRTH", "MRN")
ENTITY_HELP = {
    "ID_CARD": "PRC resident ID, 18 digits with a valid GB 11643 checksum and birth date (15-digit legacy IDs "
               "only after a word like 身份证)",
    "PHONE": "mainland mobile 1[3-9]xxxxxxxxx and landline 0xx(x)-xxxxxxx(x); international numbers via "
             "Presidio's PhoneRecognizer (python-phonenumbers)",
    "BANK_CARD": "16-19 digit card numbers passing Luhn (Presidio's CreditCardRecognizer too)",
    "EMAIL": "e-mail addresses whose domain ends in a public suffix (offline list)",
    "ADDRESS": "Chinese addresses: province/city dictionary or an address word (地址, 住在) then district, "
               "road, number, room ...",
    "PERSON": "Chinese names (common surname + 1-2 characters) after 患者/姓名/我叫... or before 先生/女士/医生...; "
              "English names after Mr/Mrs/Ms/Dr or 'my name is'",
    "DATE_OF_BIRTH": "dates after 出生/生日/DOB/born",
    "MRN": "medical record numbers after 病历号/住院号/门诊号/MRN",
}


class DeidentifyOptions(BaseModel):
    """Options of `data deidentify` and of the `deidentify` step of `data.pipeline`."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["tag", "pseudonym"] = Field(
        "tag", description="tag: replace by <TYPE>; pseudonym: a consistent fake value of the same shape")
    types: list[str] = Field(list(ENTITY_TYPES), description=f"entity types to replace: {', '.join(ENTITY_TYPES)}")
    seed: int = Field(0, description="pseudonym key: the same seed maps a value to the same fake in every file "
                                     "(keep it private: with the seed, a short value can be guessed back)")
    min_score: float = Field(0.5, ge=0, le=1, description="Presidio score a detection needs")
    sample: int = Field(20, ge=0, description="changed records written to the review sample")

    @field_validator("types", mode="before")
    @classmethod
    def _types(cls, v):
        items = v.split(",") if isinstance(v, str) else list(v)
        out = []
        for t in items:
            name = str(t).strip().upper().replace("-", "_")
            if not name:
                continue
            if name not in ENTITY_TYPES:
                raise ValueError(f"unknown entity type {t!r} (known: {', '.join(ENTITY_TYPES)})")
            if name not in out:
                out.append(name)
        if not out:
            raise ValueError("no entity type given")
        return out
