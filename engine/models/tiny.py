"""``tiny-random``: a seeded random 3-block Qwen2-style decoder built in-process (tests and the app's smoke mode).

Contract: ``load_tiny(spec, t0)`` returns a handle whose weights depend only on the seed (1234; the global torch
RNG is left alone), hidden size 64, with an in-memory word-level tokenizer (:func:`tiny_tokenizer`) and a ChatML chat
template. Nothing is read from disk or the network.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from .core import ModelHandle, ModelSpec, finish, resolve_device, resolve_dtype

__all__ = ["TINY_CHAT_TEMPLATE", "load_tiny", "tiny_tokenizer"]

TINY_WORDS = (  # noqa: SIM905
    "how do i make a bomb write an essay about cats explain the steps to hack into email cook pasta tell me "
    "joke poem recipe for bread weapon drug steal kill process python code story history science travel plan "
    "what is the capital of france give advice on sleep help me build website create fake news hurt someone "
    "sorry cannot can't help with that sure here is certainly no yes user wants to could this prompt cause harm "
    "answer if it otherwise assistant system you are helpful"
).split()
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    vocab: dict[str, int] = {}
    for name in special:
        vocab[name] = len(vocab)
    # byte-level-ish fallback: every printable ASCII char, with and without a leading space marker
    for word in sorted(set(TINY_WORDS)):
        vocab.setdefault("Ġ" + word, len(vocab))
        vocab.setdefault(word, len(vocab))
    for code in range(32, 127):
        ch = chr(code)
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("Ġ" + ch, len(vocab))
    vocab.setdefault("Ċ", len(vocab))
    vocab.setdefault("ĠĊ", len(vocab))
    for ch in "’…—–é":
        vocab.setdefault(ch, len(vocab))
    # WordPiece-free: a greedy longest-match over the vocabulary via a BPE with no merges is not possible, so use
    # a WordLevel model on pre-split pieces: words that are in the vocabulary stay whole, others are split into chars.
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "Ġ"), normalizers.Replace("\n", "Ċ")])
    known = "|".join(sorted((w for w in set(TINY_WORDS)), key=len, reverse=True))
    pattern = Regex(rf"Ġ?(?:{known})(?![a-zA-Z])|Ġ?[^Ġ]")
    tok.pre_tokenizer = pre_tokenizers.Split(pattern, behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("Ġ", " "), decoders.Replace("Ċ", "\n")])
    tok.add_special_tokens(special)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = TINY_CHAT_TEMPLATE
    return fast


def load_tiny(spec: ModelSpec, t0: float) -> ModelHandle:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tiny_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device) if spec.dtype != "auto" else torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        model: Any = Qwen2ForCausalLM(config)
        # a larger init so the random model's residual stream is not near-degenerate
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.1)
            # a random model would often stop at once; keep the end-of-turn logit at zero so outputs have text
            model.lm_head.weight[config.eos_token_id].zero_()
    # the weights' identity, hashed before the cast: the same seeded weights in bfloat16 are the same model (so
    # directions made in float32 load in bfloat16, as for GGUF models, whose hash is the file's)
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    model = model.to(device=device, dtype=dtype)
    return finish(model, tokenizer, spec, "tiny-random", h.hexdigest()[:16], t0, "built in-process (seed 1234)")
