"""Made-up texts with planted values in the formats that are hard to mask, for the benchmark and tests.

`planted_texts(n, seed)`: sentences each holding one value (an e-mail written out, a card with dots or
an unusual length, an IBAN whose check digits fail, a passport, a MAC address, a password ...) and
the value itself, so that what is left verbatim after masking can be counted. `script_name_texts()`:
names in Hangul, kanji/kana and Arabic script, with and without a cue, and texts in those scripts
that hold no name (the Korean refusals this project's own detectors look for among them).
Deterministic for a seed; every value is random or a documented test value, none is real.
"""

from __future__ import annotations

import random
import string
from typing import Callable

from tasks.pii.formats import luhn_valid


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _card(rng: random.Random, n: int, valid: bool) -> str:
    while True:
        digits = rng.choice("3456") + _digits(rng, n - 1)
        if luhn_valid(digits) == valid:
            return digits


def _grouped(digits: str, sep: str = " ") -> str:
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _iban(rng: random.Random) -> str:
    country = rng.choice(["DE", "GB", "FR", "NL", "ES", "IT"])
    body = "".join(rng.choice(string.ascii_uppercase + string.digits) if i < 4 else rng.choice(string.digits) for i in range(18))
    return _grouped(country + _digits(rng, 2) + body)  # check digits random: fails mod-97 9 times in 10


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


_DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# kind -> (template, value maker). The template's {} is where the value goes.
_KINDS: dict[str, tuple[str, Callable[[random.Random], str]]] = {
    "email_words": ("You can reach me at {} anytime.", lambda r: f"{_word(r, 5)} at {_word(r, 7)} dot com"),
    "email_brackets": ("Send the invoice to {} please.", lambda r: f"{_word(r, 4)}[at]{_word(r, 6)}[dot]org"),
    "email_parens": ("My mail: {}", lambda r: f"{_word(r, 5)} (at) {_word(r, 5)} (dot) net"),
    "email_percent": ("Login link sent to {} yesterday.", lambda r: f"{_word(r, 6)}%40{_word(r, 6)}.com"),
    "email_zero_width": ("Write to {} for the refund.", lambda r: f"{_word(r, 3)}\u200b{_word(r, 3)}@{_word(r, 6)}.de"),
    "email_full_width": ("Contact {} today.", lambda r: "".join(chr(ord(c) + 0xFEE0) for c in f"{_word(r, 5)}@{_word(r, 5)}.com")),
    "card_dots": ("I paid with {} last week.", lambda r: _grouped(_card(r, 16, True), ".")),
    "card_12": ("The card number is {}.", lambda r: _card(r, 12, r.random() < 0.5)),
    "card_15_grouped": ("Charge {} again please.", lambda r: _grouped(_card(r, 15, False))),
    "card_19": ("Card {} was declined.", lambda r: _grouped(_card(r, 19, r.random() < 0.5))),
    "iban_bad_checksum": ("Refund to {} please.", _iban),
    "passport": ("My passport number is {}.", lambda r: r.choice(string.ascii_uppercase) + _digits(r, 8)),
    "mac": ("The router MAC is {}.", lambda r: ":".join(f"{r.randrange(256):02X}" for _ in range(6))),
    "url_credentials": ("It fails on postgres://{}@db.internal:5432/shop", lambda r: f"{_word(r, 5)}:{_word(r, 4)}{_digits(r, 3)}X!"),
    "password_value": ("password: {} is what I set", lambda r: f"{_word(r, 3).capitalize()}{_digits(r, 4)}{_word(r, 3)}"),
    "date_of_birth": ("I was born on {} in a small town.", lambda r: f"{r.randrange(1, 29):02d}/{r.randrange(1, 13):02d}/{r.randrange(1940, 2005)}"),
    "phone_spelled": ("Call me on {} tonight.", lambda r: " ".join(_DIGIT_NAMES[int(d)] for d in _digits(r, 10))),
    "ssn_redacted": ("My SSN ends like {}.", lambda r: f"XXX-XX-{_digits(r, 4)}"),
    "ssn_invalid": ("SSN {} on file.", lambda r: f"000-{_digits(r, 2)}-{_digits(r, 4)}"),
    "account_prefixed": ("Account {} is blocked.", lambda r: r.choice(["AB", "CU", "ACC"]) + _digits(r, 8)),
    "licence": ("Driver licence no. {} expired.", lambda r: r.choice(string.ascii_uppercase) + _digits(r, 7)),
    "api_key": ("Here's my key {} oops.", lambda r: "sk-" + "".join(r.choice(string.ascii_letters + string.digits) for _ in range(32))),
}
KINDS = tuple(_KINDS)


def planted_texts(n_per_kind: int = 10, seed: int = 0) -> list[tuple[str, str, str]]:
    """(text, planted value, kind) for `n_per_kind` texts of each kind."""
    rng = random.Random(seed)
    out = []
    for kind, (template, make) in _KINDS.items():
        for _ in range(n_per_kind):
            value = make(rng)
            out.append((template.format(value), value, kind))
    return out


_SCRIPT_NAMES = {
    "korean": ["김민준", "이서연", "박지훈", "최유진", "정하은", "강도윤", "조수아", "윤예준"],
    "japanese": ["山田太郎", "佐藤花子", "鈴木一郎", "高橋美咲", "田中健", "伊藤さくら", "渡辺翔", "中村愛"],
    "arabic": ["محمد الأحمد", "فاطمة الزهراء", "أحمد عبد الله", "مريم حسن", "يوسف علي", "ليلى سعيد", "عمر خالد", "نور الهدى"],
}
_SCRIPT_TEMPLATES = {
    "korean": ["제 이름은 {}입니다. 주문을 확인해 주세요.", "{} 고객님, 배송이 지연되었습니다.", "이름: {} / 주문 취소 요청",
               "{}씨에게 연락 부탁드립니다.", "My name is {} and my order is late."],
    "japanese": ["私の名前は{}です。注文を確認してください。", "{}様、お問い合わせありがとうございます。", "{}と申します。返品したいです。",
                 "担当の{}さんに伝えてください。", "My name is {}, where is my parcel?"],
    "arabic": ["اسمي {} وأريد إرجاع الطلب.", "السيد {} يسأل عن الشحنة.", "الدكتورة {} طلبت استرداد المبلغ.",
               "اسمها {} من فضلك.", "My name is {}, I need a refund."],
}
# Texts in those scripts that hold no name: the simulator's refusals and everyday shop questions.
SCRIPT_NEGATIVES = [
    "죄송합니다, 잘 모르겠습니다.", "죄송하지만 도와드릴 수 없습니다.", "고객님, 주문하신 상품은 내일 도착합니다.",
    "이 제품의 배터리 수명은 얼마나 되나요?", "저는 학생입니다. 할인이 되나요?", "선생님, 감사합니다.",
    "申し訳ありませんが、わかりません。", "お客様、ご注文ありがとうございます。", "この商品の保証期間は何年ですか？",
    "担当者様、よろしくお願いします。", "東京まで何日かかりますか？", "皆様、ありがとうございました。",
    "عذراً، لا أعرف الإجابة.", "هل يمكنني إرجاع المنتج؟", "شكراً جزيلاً على المساعدة.", "متى يصل الطلب إلى الرياض؟",
]


def script_name_texts() -> list[tuple[str, str, str]]:
    """(text, name, script) for every name in every template of its script."""
    return [
        (template.format(name), name, script)
        for script, names in _SCRIPT_NAMES.items()
        for template in _SCRIPT_TEMPLATES[script]
        for name in names
    ]
