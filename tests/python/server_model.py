"""A tiny random model directory for the server tests: the chat tokenizer fixture plus weights."""
import os
import shutil

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "chat_tokenizer")


def make_chat_model(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(FIXTURE, name), out_dir)
    return out_dir
