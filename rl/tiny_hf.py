"""A tiny Hugging Face Llama to try ``rl.train --model hf:PATH`` offline: a config and a character tokenizer.

    python -m rl.tiny_hf runs/tiny-llama            # writes config.json and the tokenizer files
    python -m rl.train --model hf:runs/tiny-llama/config.json --task add1 --steps 2 --batch 2 --group 2

No weights are written: ``hf:`` a config (or a directory without weights) draws a random-init
model from the run's seed, by default with weights 25x the usual std (0.5, not 0.02) so that
attention and positions change the log-probs in every precision. The tokenizer has one token
per printable ASCII character and a newline, after ``<|endoftext|>`` (0), ``<|im_start|>`` (1)
and ``<|im_end|>`` (2, EOS and pad, as in SmolLM2), and a ChatML chat template; it is built
here, with no download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
CHAT_TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
                 "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer():
    """The character tokenizer as a ``PreTrainedTokenizerFast`` (module doc)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + tuple(CHARS))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=SPECIALS[0]))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(list(SPECIALS))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token=SPECIALS[0], eos_token=SPECIALS[2],
                                  pad_token=SPECIALS[2])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_tiny_llama(directory: str | Path, *, hidden: int = 32, layers: int = 2, heads: int = 4,
                     kv_heads: int = 2, tokenizer: bool = True, vocab_size: int | None = None,
                     init_std: float = 0.5) -> Path:
    """Write a tiny Llama config (and the tokenizer) to ``directory``; returns the config's path.

    ``vocab_size``: the tokenizer's size (the default); without a tokenizer any size that holds the
    task's ids (16 for the synthetic tasks: a random policy then hits a digit now and then).
    ``init_std``: the config's ``initializer_range`` (module doc); 0.02, HF's usual, keeps the policy
    near uniform, so its samples vary and earn varied rewards.
    """
    import transformers as tf

    chars = len(SPECIALS) + len(CHARS)
    vocab_size = chars if vocab_size is None else vocab_size
    if tokenizer and vocab_size != chars:
        raise ValueError(f"vocab_size must be the tokenizer's {chars} when the tokenizer is written, got {vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                            max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                            tie_word_embeddings=True, initializer_range=init_std)
    config.save_pretrained(directory)
    if tokenizer:
        char_tokenizer().save_pretrained(directory)
    return directory / "config.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl.tiny_hf", description=__doc__.splitlines()[0])
    p.add_argument("out", help="directory to write config.json and the tokenizer to")
    p.add_argument("--no-tokenizer", action="store_true",
                   help="the config only, vocab 16, init std 0.02 (the model reads the synthetic tasks' ids)")
    args = p.parse_args(argv)
    ids = args.no_tokenizer
    print(write_tiny_llama(args.out, tokenizer=not ids, vocab_size=16 if ids else None, init_std=0.02 if ids else 0.5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
