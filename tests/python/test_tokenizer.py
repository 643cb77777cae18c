"""minillm.Tokenizer from Python: exactness on the small hand-made tokenizer.json files of the fuzz
seeds (they use pieces the real vocabularies do not: Lowercase, Digits, Metaspace with split, the
Roberta post-processor, lstrip/rstrip/single_word added tokens) against Hugging Face `tokenizers`,
and the API's behaviour on bad input. The real vocabularies are test_tokenizer_exact.py."""
import glob
import os
import sys

import pytest

import minillm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fixtures", "tokenizer"))
import exactness  # noqa: E402
from corpus import CORPUS  # noqa: E402

SEEDS = sorted(glob.glob(os.path.join(HERE, "..", "..", "fuzz", "corpus", "tokenizer", "*.json"))) + [
    os.path.join(HERE, "..", "fixtures", "tokenizer", "bytes256", "tokenizer.json")]


BYTELEVEL = os.path.join(HERE, "..", "..", "fuzz", "corpus", "tokenizer", "bytelevel_split.json")


def test_seeds_present():
    assert len(SEEDS) >= 6 and all(os.path.isfile(p) for p in SEEDS)


@pytest.mark.parametrize("path", SEEDS, ids=[os.path.basename(p) for p in SEEDS])
def test_exact_small_files(path):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(path)
    tok = minillm.Tokenizer(path)
    for texts in CORPUS.values():
        for text in texts:
            ids = hf.encode(text).ids
            assert tok.encode(text) == ids, text
            for skip in (False, True):
                assert tok.decode(ids, skip) == hf.decode(ids, skip_special_tokens=skip), text
                assert "".join(exactness.stream(tok, ids, skip)) == tok.decode(ids, skip), text


def test_bad_input():
    tok = minillm.Tokenizer(BYTELEVEL)
    with pytest.raises(ValueError, match=r"not valid UTF-8: byte 0xFF at offset 3"):
        tok.encode(b"abc\xffdef")
    with pytest.raises(ValueError, match="lone surrogates"):
        tok.encode("a\ud800b")
    assert tok.encode(b"hello") == tok.encode("hello")
    with pytest.raises(ValueError, match="no such file or directory"):
        minillm.Tokenizer("/nonexistent/tokenizer.json")
    with pytest.raises(ValueError, match="no tokenizer.json or tokenizer.model"):
        minillm.Tokenizer(HERE)
    with pytest.raises(TypeError):
        tok.encode(123)
    assert tok.decode([10**6, -5]) == ""  # ids outside the vocabulary are skipped, as tokenizers does
    assert tok.token_to_id("no such token") is None


def test_streamer_and_batch():
    tok = minillm.Tokenizer(BYTELEVEL)
    texts = ["hello world", "x y z", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.decode_batch(tok.encode_batch(texts), skip_special_tokens=True) == texts
    s = tok.streamer(stop=["o w"])
    shown = "".join(s.push(i) for i in tok.encode("hello world hello", add_special_tokens=False))
    shown += s.finish()
    assert s.stopped and s.matched == "o w" and shown == "hell"


SP_MODEL = os.path.join(HERE, "..", "..", ".tokenizers", "mixtral-sp")  # a real tokenizer.model (scripts/setup.sh)


def _varint(b, i):
    v = s = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << s
        s += 7
        if not c & 0x80:
            return v, i


def _with_remove_extra_whitespaces(model):
    """The model's bytes with normalizer_spec.remove_extra_whitespaces (field 3.4) switched from 0 to 1:
    a model that minillm's own SentencePiece BPE does not take, so it goes through libsentencepiece."""
    i = 0
    while i < len(model):
        tag, i = _varint(model, i)
        n, i = _varint(model, i)  # every top-level field of a ModelProto is length-delimited
        if tag >> 3 == 3:
            j = i
            while j < i + n:
                t2, j = _varint(model, j)
                if t2 == (4 << 3):
                    assert model[j] == 0
                    return model[:j] + b"\x01" + model[j + 1:]
                if t2 & 7 == 0:
                    _, j = _varint(model, j)
                else:
                    ln, j = _varint(model, j)
                    j += ln
        i += n
    raise AssertionError("no normalizer_spec.remove_extra_whitespaces field")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_sentencepiece_runtime_only_for_models_it_must_read(tmp_path):
    """`import minillm` must not load libsentencepiece or a protobuf runtime: a process that has imported
    PyTorch crashes when a second protobuf runtime initialises in it. A file that is not a ModelProto is
    refused before them (sp_model_check.h); a SentencePiece BPE model (Llama, Mistral, Mixtral) is read
    in C++ (sp_bpe.h); only another kind of model brings them in, through the plugin
    libminillm_sentencepiece.so."""
    import subprocess

    (tmp_path / "tokenizer.model").write_bytes(b"\x01\x02 not a SentencePiece model")
    other = tmp_path / "other"
    if os.path.exists(SP_MODEL):
        other.mkdir()
        real = open(os.path.join(SP_MODEL, "tokenizer.model"), "rb").read()
        (other / "tokenizer.model").write_bytes(_with_remove_extra_whitespaces(real))
    code = f"""
import os
import minillm
def loaded():
    maps = open("/proc/self/maps").read()
    return [n for n in ("libprotobuf", "libsentencepiece.so", "libminillm_sentencepiece") if n in maps]
assert loaded() == [], loaded()
try:
    minillm.Tokenizer({str(tmp_path)!r})
except ValueError as e:
    assert "not a SentencePiece model: field number 0 at byte 0" in str(e), e
else:
    raise AssertionError("a broken tokenizer.model loaded")
assert loaded() == [], loaded()
if os.path.exists({SP_MODEL!r}):
    t = minillm.Tokenizer({SP_MODEL!r})
    assert "SentencePiece BPE" in repr(t) and t.encode("Hello world") == [1, 22557, 1526], t.encode("Hello world")
    assert loaded() == [], loaded()
    assert minillm.Tokenizer({str(other)!r}).encode("Hello  world") == [1, 22557, 1526]
    assert "libminillm_sentencepiece" in loaded() and "libsentencepiece.so" in loaded(), loaded()
"""
    env = dict(os.environ, PYTHONPATH=os.path.join(HERE, "..", "..", "python"))
    # faulthandler: a crash inside the plugin's libraries prints the Python stack of the child.
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr}"
