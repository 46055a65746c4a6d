"""Presidio recognizers for Chinese personal data, where Presidio has none (plus an offline e-mail one).

Presidio's built-in patterns use `\\b`, which never fires between a Chinese character and a digit
(both are `\\w`), so every pattern here bounds numbers with look-arounds instead: a number inside a
longer digit run is not a phone. Numbers with a check digit are validated (resident ID, Luhn); the
rest need a cue word right before them (病历号, 出生, 患者, 地址 ...), matched by a variable-length
look-behind (Presidio compiles patterns with the `regex` module, which allows it), so the span is the
value alone and everything around it stays as it was.
"""

from __future__ import annotations

import datetime as _dt

import regex

from . import lexicon as L
from ._presidio import EmailRecognizer, Pattern, PatternRecognizer
from .checksums import looks_like_resident_id, luhn_valid, valid_legacy_id, valid_resident_id

LANG = "zh"  # one analyzer language for mixed Chinese/English text
FLAGS = regex.DOTALL | regex.MULTILINE  # case matters for names; no IGNORECASE (Presidio's default)
HAN = r"\u4e00-\u9fff"


def _alt(words) -> str:
    return "|".join(regex.escape(w) for w in sorted(set(words), key=len, reverse=True))


class _Recognizer(PatternRecognizer):
    """A PatternRecognizer for language `zh` with case-sensitive flags."""

    ENTITY = ""
    PATTERNS: list[Pattern] = []

    def __init__(self):
        super().__init__(supported_entity=self.ENTITY, name=type(self).__name__, supported_language=LANG,
                         patterns=[Pattern(p.name, p.regex, p.score) for p in self.PATTERNS],
                         context=L.CONTEXT.get(self.ENTITY), global_regex_flags=FLAGS)


# ------------------------------------------------------------------------------------------- numbers

class ResidentIdRecognizer(_Recognizer):
    """18-digit resident IDs (checksum, province, birth date); 15-digit legacy IDs only after 身份证/证件."""

    ENTITY = "ID_CARD"
    PATTERNS = [
        Pattern("resident id 18", r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])"
                                  r"(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![0-9A-Za-z])", 0.5),
        Pattern("resident id 15", r"(?<=(?:身份证|证件|身份号)[^\d\n]{0,8})(?<![0-9])[1-9]\d{14}(?![0-9A-Za-z])", 0.5),
    ]

    def validate_result(self, text):
        return valid_resident_id(text) if len(text) == 18 else valid_legacy_id(text)


class CnMobileRecognizer(_Recognizer):
    """Mainland mobiles 1[3-9]x xxxx xxxx, optionally +86 / 0086, never inside a longer digit run."""

    ENTITY = "PHONE"
    PATTERNS = [Pattern("cn mobile", r"(?<![\d])(?:(?:\+|00)86[ -]?|\(\+?86\)\s?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)", 0.85)]


class CnLandlineRecognizer(_Recognizer):
    """Landlines 0xx-xxxxxxxx / 0xxx-xxxxxxx (area code 010, 02x or 0[3-9]xx); without a separator only
    next to a phone word (电话, 座机 ...), since a bare 11-12 digit number starting with 0 may be anything."""

    ENTITY = "PHONE"
    _AREA = r"0(?:10|2\d|[3-9]\d{2})"
    PATTERNS = [
        Pattern("cn landline", rf"(?<![\d-])(?:\+86[ -]?)?(?:\({_AREA}\)\s?|{_AREA}[ -])[1-9]\d{{6,7}}(?:-\d{{1,4}})?(?!\d)", 0.7),
        Pattern("cn landline bare", r"(?<!\d)(?:0(?:10|2\d)[2-8]\d{7}|0[3-9]\d{2}[2-8]\d{6,7})(?!\d)", 0.3),
    ]


class BankCardRecognizer(_Recognizer):
    """Card numbers of 16-19 digits, contiguous or in groups of four; Luhn-valid and not one repeated digit.
    An 18-digit number shaped like a resident ID (province, birth date) whose ID check fails is neither:
    one in ten such numbers passes Luhn by chance."""

    ENTITY = "BANK_CARD"
    PATTERNS = [
        Pattern("card contiguous", r"(?<![\dA-Za-z])[1-9]\d{15,18}(?![\dA-Za-z])", 0.3),
        Pattern("card grouped", r"(?<![\d])[1-9]\d{3}([ -])\d{4}\1\d{4}\1\d{4}(?:\1?\d{1,3})?(?![\d])", 0.3),
    ]

    def validate_result(self, text):
        digits = "".join(c for c in text if c.isdigit())
        if len(digits) == 18 and looks_like_resident_id(digits):
            return False
        return 16 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits)


class OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's e-mail recognizer with an ASCII pattern (its `\\w` swallows the Chinese before an
    address) and the public-suffix check against tldextract's bundled snapshot: no list is fetched."""

    PATTERNS = [Pattern("email", r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9])?@"
                                 r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
                                 r"(?![A-Za-z0-9\-])", 0.5)]
    _extract = None

    def __init__(self):
        super().__init__(patterns=self.PATTERNS, context=L.CONTEXT["EMAIL"], supported_language=LANG,
                         supported_entity="EMAIL", name="OfflineEmailRecognizer")

    @classmethod
    def extractor(cls):
        if cls._extract is None:
            import tldextract

            # no cache dir, no URLs: the suffix list bundled with tldextract, never a download
            cls._extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
        return cls._extract

    def validate_result(self, text):
        return self.extractor()(text.rsplit("@", 1)[-1]).suffix != ""


# ----------------------------------------------------------------------------- cued by a word before

_DATE_ZH = r"(?:19|20)\d{2}\s?(?:年|[-/.])\s?(?:1[0-2]|0?[1-9])(?!\d)\s?(?:月|[-/.])\s?(?:[12]\d|3[01]|0?[1-9])(?!\d)(?:日|号)?"
_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_DATE_EN = (rf"(?:(?:{_MONTHS})\.?\s(?:0?[1-9]|[12]\d|3[01])(?:st|nd|rd|th)?,?\s(?:19|20)\d{{2}}"
            rf"|(?:0?[1-9]|[12]\d|3[01])\s(?:{_MONTHS})\.?,?\s(?:19|20)\d{{2}}"
            rf"|(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])/(?:19|20)\d{{2}})")
_DOB_CUE = (r"(?:出生日期|出生年月日|出生年月|出生于|出生在|出生|生于|生日|DOB|D\.O\.B\.?|[Dd]ate of [Bb]irth|"
            r"[Bb]orn on|[Bb]orn|[Bb]irthday|[Bb]irth date)")


class DateOfBirthRecognizer(_Recognizer):
    """A date right after 出生/生日/DOB/born, or right before 出生; other dates (visits, tests) are not
    personal data here."""

    ENTITY = "DATE_OF_BIRTH"
    PATTERNS = [
        Pattern("dob", rf"(?<={_DOB_CUE}[:：\s是为在于]{{0,3}})(?:{_DATE_ZH}|{_DATE_EN}|(?:19|20)\d{{2}}年(?:1[0-2]|0?[1-9])月)", 0.8),
        Pattern("dob before 出生", rf"(?<!\d)(?:{_DATE_ZH}|(?:19|20)\d{{2}}年(?:1[0-2]|0?[1-9])月)(?=\s?(?:出生|生人))", 0.8),
    ]

    def validate_result(self, text):
        nums = [int(n) for n in regex.findall(r"\d+", text)]
        year = next((n for n in nums if n >= 1900), None)
        return year is not None and 1900 <= year <= _dt.date.today().year


class MedicalRecordRecognizer(_Recognizer):
    """Medical record / admission / outpatient numbers after 病历号, 住院号, 门诊号, MRN ..."""

    ENTITY = "MRN"
    _CUE = (r"(?:病历号|病历号码|病历编号|病案号|住院号|住院编号|门诊号|就诊号|就诊卡号|诊疗卡号|医保卡号|检查号|"
            r"MRN|[Mm]edical [Rr]ecord (?:[Nn]umber|[Nn]o\.?)|[Pp]atient ID)")
    PATTERNS = [Pattern("mrn", rf"(?<={_CUE}[:：\s是为#]{{0,3}})[A-Za-z]{{0,3}}-?\d{{4,12}}(?![\dA-Za-z])", 0.85)]


# --------------------------------------------------------------------------------------------- names

_SURNAME = rf"(?:{_alt(L.SURNAMES_DOUBLE)}|[{''.join(dict.fromkeys(L.SURNAMES_SINGLE))}])"
_TITLES = _alt(L.NAME_TITLES_AFTER)
_NOT_DOUBLED = r"(?!(?<=(\p{Han}))\1)"  # 谢谢李医生: the second 谢 of 谢谢 does not start a name
_GIVEN = rf"(?:(?![{L.NAME_EXCLUDED_GIVEN}]|{_TITLES})[{HAN}])"
_STOP = rf"(?!{_alt(L.NAME_STOPWORDS)})"
_FOLLOW = rf"(?=[^{HAN}A-Za-z]|$|{_alt(L.NAME_FOLLOW)})"


class ChineseNameRecognizer(_Recognizer):
    """A common surname + 1-2 characters, after 患者/姓名/我叫 ... (then punctuation or a word like 男, 今年,
    出现 must follow), or a surname (+ given name) before 先生/女士/医生 .... Favours precision: a name with
    no cue word is missed."""

    ENTITY = "PERSON"
    PATTERNS = [
        Pattern("zh name after cue", rf"(?<=(?:{_alt(L.NAME_CUES_BEFORE)})[:：\s]{{0,2}}){_STOP}{_SURNAME}{_GIVEN}{{1,2}}?{_FOLLOW}", 0.8),
        Pattern("zh name before title", rf"(?<=^|[^{HAN}]|[{L.NAME_TITLE_LEAD}]|{_alt(L.NAME_CUES_BEFORE)}){_STOP}{_NOT_DOUBLED}{_SURNAME}{_GIVEN}{{0,2}}?(?={_TITLES})", 0.7),
    ]


# capitalised words that start a sentence after "Dr." / "Name:" and are not names
_NOT_NAMES = ("(?:The|This|That|These|Those|It|Its|I|You|Your|We|He|She|They|My|Our|Yes|No|Not|Okay|Ok|Thanks|Thank|"
              "Hello|Hi|Dear|Please|Since|As|If|In|On|At|For|And|But|So|Also|Email|Phone|Call|Because|When|What|How|"
              "Why|Is|Are|Can|Could|Should|Would|Will|Do|Does|Did|Have|Has|Take|Try|After|Before|Then|There|Here|"
              "Dr|Mr|Mrs|Ms|Miss|Prof|Patient|Doctor|Medical|Hospital|Order|Reference)")


class EnglishNameRecognizer(_Recognizer):
    """Capitalised names after Mr/Mrs/Ms/Dr/Prof, "my name is", "Name:" (no NER model: no cue, no detection).
    Not after a bare "Patient:": dialogue transcripts (ChatDoctor) use it as the speaker label."""

    ENTITY = "PERSON"
    _NAME = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
    PATTERNS = [Pattern("en name", rf"(?<=\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s|\b[Mm]y name is\s|\b(?:[Pp]atient [Nn]ame|[Nn]ame):\s?)(?!{_NOT_NAMES}\b)"
                                   rf"{_NAME}(?:\s{_NAME})?\b", 0.7)]


# ------------------------------------------------------------------------------------------ addresses

# a place name may not start with a function word (我住在中山路 -> 中山路) and holds none of the
# commonest ones (的, 是, 在 ...); 家 and 自 may follow its first character (张家口, 李家村)
_NC0 = rf"(?:(?![某何哪什么这那其该各每多有我你他她它们在的是到于从住家去来了与及或向往为就要想请把被给对说自很也还看])[{HAN}])"
_NCX = rf"(?:(?![某何哪什么这那其该各每有我你他她它们在的是到于从住去来了与及或向往为就要想请把被给对说很也还看])[{HAN}])"


def _name(lo: int, hi: int) -> str:
    """lo..hi characters of a place name (lazy)."""
    return rf"{_NC0}{_NCX}{{{lo - 1},{hi - 1}}}?"


_PROV = rf"(?:{_alt(L.PROVINCES)})(?:省|市|壮族自治区|回族自治区|维吾尔自治区|自治区|特别行政区)?"
_CITY = rf"(?:(?:{_alt(L.CITIES)})市?|{_name(2, 4)}(?:市|自治州|盟))"
# district, village ... names have 2+ characters: 地区, 军区, 农村 are not places
_LOW = (rf"(?:{_name(2, 5)}(?:新区|区|县|旗|镇|乡|街道)|{_name(2, 6)}(?:村|社区)"
        rf"|(?:{_NC0}|\d)(?:{_NCX}|\d){{0,7}}?(?:大道|大街|路|街|巷|弄|胡同)|{_name(2, 8)}(?:小区|花园|公寓|大厦|家园|新村|苑)"
        rf"|\d{{1,5}}(?:号院|号楼|号|栋|幢|座|单元|室|组)|[一二三四五六七八九十]{{1,3}}(?:号楼|号|栋|单元|组))")
_ROADNUM = rf"{_name(2, 6)}(?:大道|大街|路|街|巷|弄)\d{{1,5}}号"


class ChineseAddressRecognizer(_Recognizer):
    """Chinese addresses: a known province or city, then at least one finer part (district, road,
    number, room ...); or after 地址/住在/家住 two such parts; or a road with a house number."""

    ENTITY = "ADDRESS"
    PATTERNS = [
        Pattern("address from province/city", rf"(?:{_PROV}(?:{_CITY})?|{_CITY})(?:-?{_LOW}){{1,8}}", 0.7),
        Pattern("address after cue", rf"(?<=(?:{_alt(L.ADDRESS_CUES)})[:：\s是为在]{{0,3}})(?:{_PROV})?(?:{_CITY})?(?:-?{_LOW}){{2,8}}", 0.7),
        Pattern("road and number", rf"{_ROADNUM}(?:-?{_LOW}){{0,4}}", 0.6),
    ]


def chinese_recognizers() -> list[PatternRecognizer]:
    """One fresh instance of every recognizer above."""
    return [ResidentIdRecognizer(), CnMobileRecognizer(), CnLandlineRecognizer(), BankCardRecognizer(),
            OfflineEmailRecognizer(), DateOfBirthRecognizer(), MedicalRecordRecognizer(), ChineseNameRecognizer(),
            EnglishNameRecognizer(), ChineseAddressRecognizer()]
