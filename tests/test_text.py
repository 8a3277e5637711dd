"""Caption normalisation of every script, the word and BPE tokenizers, and the prompt checks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from config import Config, ConfigError
from data.real.folder import read_split
from data.signer import GLOSSES, make_caption, parse_caption
from data.text import (UNK, Collate, SubwordTokenizer, Tokenizer, build_tokenizer, check_prompts,
                       normalize_caption, split_words, tokenizer_from_state, usable_prompt)
from pipeline import encode_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# How2Sign-like training sentences (instructional video narration), written for these tests.
HOW2SIGN_LIKE = [
    "Hi, I'm Mark and today I'm going to show you how to tie a fishing knot.",
    "First, take the end of the line and pass it through the eye of the hook.",
    "Now wrap the line around itself about five or six times.",
    "Then bring the end back through the small loop near the eye.",
    "Pull it tight slowly so the knot doesn't slip.",
    "In this clip we're going to talk about planting tomatoes in your garden.",
    "You want to dig a hole that's about twice as deep as the root ball.",
    "Put a little compost in the bottom of the hole before planting.",
    "Water the plants every morning, especially when the weather is hot.",
    "Hello, my name is Sarah and I teach yoga in the city.",
    "Today we're going to practice a simple breathing exercise.",
    "Sit down comfortably and keep your back straight.",
    "Breathe in through your nose and count slowly to four.",
    "Hold the breath for a moment and then breathe out through your mouth.",
    "Next, I'll show you how to change a flat tire on your car.",
    "Loosen the nuts on the wheel before you lift the car with the jack.",
    "Make sure the car is parked on flat ground with the brake on.",
    "Remove the wheel and put the spare tire on the same bolts.",
    "Now let's talk about how to make a good cup of coffee at home.",
    "Grind the beans just before brewing for the best flavor.",
    "Use about two tablespoons of coffee for every cup of water.",
    "Pour the hot water slowly over the grounds in small circles.",
    "In this video I'm going to explain how to draw a simple portrait.",
    "Start with a light oval for the shape of the head.",
    "Draw a line across the middle where the eyes will go.",
    "Add the nose and the mouth below the eyes, and keep the lines soft.",
    "When you paint a wall, always start from the top and work down.",
    "Clean the brushes with warm water and soap when you are done.",
    "Stretch your arms over your head and hold for ten seconds.",
    "Thank you for watching, and I'll see you in the next clip.",
]
# Held-out sentences whose words never occur in the fixture: every letter does.
UNSEEN = "Carpenters sharpened chisels meticulously, whittling walnut spoons."


def cfg_with(**kw) -> Config:
    return Config(preset="tiny", **kw)


# --- normalisation (issue 21, row 8) -------------------------------------------------------------

@pytest.mark.parametrize("raw, normalised", [
    ("Regen und Schnee im Norden, später überall Sonne.", "regen und schnee im norden später überall sonne"),
    ("Die STRASSE ist naß; Straße!", "die strasse ist nass strasse"),  # casefold: ß == ss
    ("Déjà vu, señor café!", "déjà vu señor café"),
    ("L’été à l'Hôpital « Saint-Éloi »", "l'été à l'hôpital saint éloi"),
    ("¿Dónde está el niño? ¡Mañana, pingüino!", "dónde está el niño mañana pingüino"),
    ("Привет, как дела? Всё ХОРОШО.", "привет как дела всё хорошо"),
    ("今天天气很好。我们去公园吧！", "今天天气很好 我们去公园吧"),
    ("Cafe\u0301 ＦＵＬＬ ﬁne", "café full fine"),  # decomposed accent, full-width, ligature (NFKC)
    ("नमस्ते दुनिया", "नमस्ते दुनिया"),  # combining vowel signs stay inside the word
    ("'quoted' rock_and_roll -- don't ...", "quoted rock and roll don't"),
])
def test_normalisation_keeps_every_script(raw, normalised):
    assert normalize_caption(raw) == normalised
    assert normalize_caption(normalised) == normalised  # idempotent: records are normalised twice


def test_folder_dataset_keeps_unicode_captions(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    captions = {"de": "Morgen überall Sonne.", "fr": "Déjà vu señor café", "es": "¿Qué tal, señora?",
                "ru": "Спасибо за внимание!", "zh": "谢谢你的帮助。"}
    for name, text in captions.items():
        (train / f"{name}.txt").write_text(text, encoding="utf-8")
    records, _ = read_split(str(tmp_path), "train", cfg_with())
    got = {r.clip_id: r.caption for r in records}
    assert got == {"de": "morgen überall sonne", "fr": "déjà vu señor café", "es": "qué tal señora",
                   "ru": "спасибо за внимание", "zh": "谢谢你的帮助"}


def test_word_tokenizer_reads_each_cjk_character_as_a_word():
    assert split_words("我爱你。Ich liebe dich, カタカナ 한국어") == \
        ["我", "爱", "你", "ich", "liebe", "dich", "カ", "タ", "カ", "ナ", "한국어"]
    tok = Tokenizer.from_captions(["我爱你", "Спасибо большое"])
    assert tok.words[2:] == ["большое", "спасибо", "你", "我", "爱"]  # code-point order
    assert UNK not in tok.encode("你爱我", 24) and len(tok.encode("你爱我", 24)) == 3
    assert tok.unknown_words("我想你") == ["想"]


def test_synthetic_captions_parse_the_same_after_normalisation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        glosses = [GLOSSES[i] for i in rng.integers(0, len(GLOSSES), rng.integers(1, 5))]
        caption = make_caption(glosses, rng)
        assert parse_caption(normalize_caption(caption)) == parse_caption(caption) == glosses, caption


# --- vocabulary from truncated captions (issue 21, row 9) ---------------------------------------

def test_one_huge_caption_grows_neither_vocabulary_nor_model():
    cfg = cfg_with(max_text_len_tokens=24)
    base = ["hello friend", "good morning friend"]
    huge = " ".join(f"w{i}" for i in range(150_000))  # ~1 MB, 150k distinct words
    assert len(huge) > 1_000_000
    word = build_tokenizer(cfg, base + [huge])
    assert len(word) == len(build_tokenizer(cfg, base)) + 24
    bpe_cfg = cfg_with(max_text_len_tokens=24, tokenizer="bpe", subword_vocab_size=300)
    for giant in (huge, "a" * 1_000_000, "我" * 300_000):  # one unbroken run trains too
        assert len(build_tokenizer(bpe_cfg, base + [giant])) <= 300


def test_subword_vocabulary_never_exceeds_its_size():
    alphabet = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 500))  # 500 distinct characters
    tok = SubwordTokenizer.from_captions([alphabet, "hello world"], vocab_size=40)
    assert len(tok) <= 40
    with pytest.raises(ValueError, match="subword_vocab_size 2: needs room"):
        SubwordTokenizer.from_captions(["hello"], vocab_size=2)


# --- prompt checks (issue 21, row 16) ------------------------------------------------------------

def test_prompt_whose_read_tokens_are_all_unknown_is_rejected():
    tok = Tokenizer.from_captions(["hi there"])
    prompt = "zz " * 30 + "hi " * 3000
    with pytest.raises(ValueError, match="no word among the first 24 that the model reads"):
        encode_prompts(tok, [prompt], max_len=24)
    assert not usable_prompt(tok, prompt, 24) and usable_prompt(tok, prompt, 31)
    with pytest.warns(UserWarning) as caught:
        tokens, _ = encode_prompts(tok, [prompt], max_len=31)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and "unknown words ['zz', 'zz'" in messages[0]
    assert messages[1].endswith("... (9090 characters)' has 3030 words; only the first 31 are used")
    assert tokens[0].tolist() == [UNK] * 30 + [tok.index["hi"]]


def test_subword_prompt_checks():
    tok = SubwordTokenizer.from_captions(HOW2SIGN_LIKE, vocab_size=300)
    for prompt in ("日本語", "日本語 ñ"):  # bare word starts ("▁") read nothing either
        with pytest.raises(ValueError, match="no piece is in the training vocabulary"):
            check_prompts(tok, [prompt], 24)
    with pytest.raises(ValueError, match="empty after normalization"):
        check_prompts(tok, ["?!"], 24)
    with pytest.warns(UserWarning, match=r"unknown words \['日本語'\]"):
        check_prompts(tok, ["tie a knot 日本語"], 24)


# --- subword tokenizer (issue 18, item 5) --------------------------------------------------------

def test_unseen_words_encode_to_known_subwords():
    tok = SubwordTokenizer.from_captions(HOW2SIGN_LIKE, vocab_size=300)
    seen = {w for c in HOW2SIGN_LIKE for w in normalize_caption(c).split()}
    words = normalize_caption(UNSEEN).split()
    assert not set(words) & seen
    ids = tok.encode(UNSEEN, 64)
    assert ids and UNK not in ids and tok.unknown_words(UNSEEN) == []
    assert len(ids) < len(normalize_caption(UNSEEN).replace(" ", ""))  # pieces, not characters
    assert usable_prompt(tok, UNSEEN, 24)
    # the word tokenizer reads the same sentence as nothing but <unk>
    word = Tokenizer.from_captions(HOW2SIGN_LIKE)
    assert set(word.encode(UNSEEN, 64)) == {UNK} and not usable_prompt(word, UNSEEN, 24)
    # an unseen character is the only thing that is unknown
    assert tok.unknown_words("the knot üλ") == ["üλ"] and UNK in tok.encode("the knot üλ", 24)


def test_subword_state_round_trips_through_a_checkpoint(tmp_path):
    tok = build_tokenizer(cfg_with(tokenizer="bpe", subword_vocab_size=300), HOW2SIGN_LIKE)
    path = tmp_path / "ckpt.pt"
    torch.save({"tokenizer": tok.state()}, path)
    back = tokenizer_from_state(torch.load(path, weights_only=True)["tokenizer"])
    assert isinstance(back, SubwordTokenizer) and back.state() == tok.state() and len(back) == len(tok)
    for text in HOW2SIGN_LIKE[:5] + [UNSEEN, "日本 knot"]:
        assert back.encode(text, 24) == tok.encode(text, 24)
    batch = Collate(back, 24)([{"caption": UNSEEN}, {"caption": "tie a knot"}])
    assert batch["tokens"].shape == (2, 24) and batch["token_mask"].sum(1).tolist() == [24, 4]
    assert batch["tokens"][1, :4].tolist() == tok.encode("tie a knot", 24)


def test_word_state_round_trips_and_old_states_load(tmp_path):
    tok = build_tokenizer(cfg_with(), HOW2SIGN_LIKE)
    path = tmp_path / "ckpt.pt"
    torch.save({"tokenizer": tok.state()}, path)
    back = tokenizer_from_state(torch.load(path, weights_only=True)["tokenizer"])
    assert isinstance(back, Tokenizer) and back.words == tok.words
    for bad in ({"kind": "bpe", "json": "{not json"}, {"kind": "sentencepiece"}, ["a", "b"]):
        with pytest.raises(ValueError, match="checkpoint 'tokenizer': "):
            tokenizer_from_state(bad)


def test_subword_training_is_deterministic_across_processes():
    tok = SubwordTokenizer.from_captions(HOW2SIGN_LIKE, vocab_size=300)
    assert SubwordTokenizer.from_captions(HOW2SIGN_LIKE, vocab_size=300).state() == tok.state()
    # A fresh process has fresh hash-map seeds (Rust's and Python's) and here another thread count.
    # Training never touches torch: the child loads data/text.py alone with a stub for it, which
    # spares it the seconds of importing torch and the data package.
    code = ("import importlib.util, json, sys, types; sys.modules['torch'] = types.ModuleType('torch'); "
            "spec = importlib.util.spec_from_file_location('text', sys.argv[1]); "
            "text = importlib.util.module_from_spec(spec); spec.loader.exec_module(text); "
            "sys.stdout.write(text.SubwordTokenizer.from_captions(json.load(sys.stdin), 300).state()['json'])")
    out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "data", "text.py")],
                         input=json.dumps(HOW2SIGN_LIKE), check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "7", "RAYON_NUM_THREADS": "1"})
    assert out.stdout == tok.state()["json"]


def test_build_tokenizer_follows_the_config():
    assert isinstance(build_tokenizer(cfg_with(), HOW2SIGN_LIKE), Tokenizer)
    bpe = build_tokenizer(cfg_with(tokenizer="bpe", subword_vocab_size=250), HOW2SIGN_LIKE)
    assert isinstance(bpe, SubwordTokenizer) and len(bpe) == 250
    with pytest.raises(ConfigError, match="'tokenizer'"):
        cfg_with(tokenizer="sentencepiece")
    with pytest.raises(ConfigError, match="'subword_vocab_size'"):
        cfg_with(subword_vocab_size=0)
