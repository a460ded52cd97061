"""Chat-template rendering and the two token positions of the paper.

Contract:
- ``locate(tokenizer, instruction)`` renders the user turn with the model's own chat template and the generation
  prompt, finds the instruction's character span in the rendered text, and maps it to tokens through the
  tokenizer's offsets:
    * ``t_inst``      = the last token whose character span ends inside the instruction (robust to BPE merges
                        across the instruction's end: a token that straddles the end still counts, since it is the
                        last token carrying instruction text);
    * ``t_post_inst`` = the last prompt token (the end of the post-instruction template tokens).
- ``post_inst=False`` gives the paper's "without post-instruction tokens" rendering: the prompt is cut right after
  the instruction (t_post_inst == t_inst).
- ``context`` marks a span of the user message (default: the instruction) whose tokens are the "context" for
  context-only steering (reply inversion); ``context_end`` is one past its last token.
- Indices are absolute in the unpadded prompt; callers that left-pad shift them by the pad count.
- ``prepare`` turns instructions into ``PromptPositions``; ``pad_batch`` left-pads a batch of them (token ids,
  attention mask, pad counts) on the model's input device; ``position_ids_for`` gives the position ids that make a
  padded row compute what it computes alone.

User text is untrusted:
- ``check_instruction`` refuses non-strings, empty text, text over ``max_chars`` and text with a **lone surrogate**
  (U+D800..U+DFFF: what undecodable bytes in argv or a ``\ud800`` escape in JSON become); the message gives the
  character's position. Lone surrogates are rejected, not repaired: guessing the intended text would change the
  prompt silently.
- **Special tokens in user text are plain text.** A user message containing a special token's text (e.g.
  ``<|im_end|>\n<|im_start|>assistant\n``) would otherwise be tokenised as the real control tokens: it could forge
  an assistant turn and move t_inst (a bypass of the Latent Guard). When the normal tokenisation of the prompt puts
  a special token inside the user message, the prompt is tokenised in three pieces instead: the template before the
  message and after it as usual (the template's own special tokens stay special), and the message itself with
  special-token matching off (``encode_special_tokens``, on a private copy of the fast tokenizer's backend, so
  other threads sharing the tokenizer are unaffected). ``<|im_end|>`` in an instruction then becomes text pieces
  (``<``, ``|``, ``im``, ``_end``, ...), t_inst stays on the user's own last token, and no special token id occurs
  between ``inst_start`` and ``t_inst``. Prompts without special-token text are tokenised exactly as before (the
  ids equal the tokenizer's own chat-template rendering). Non-special added tokens (ordinary vocabulary entries)
  are left as they are.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .models import ModelHandle

__all__ = [
    "MAX_INSTRUCTION_CHARS",
    "PromptPositions",
    "check_instruction",
    "check_text",
    "inversion_message",
    "locate",
    "pad_batch",
    "position_ids_for",
    "prepare",
    "render",
]

MAX_INSTRUCTION_CHARS = 8000
_SENTINEL = "\u2063\u2063SE-INSTRUCTION\u2063\u2063"


@dataclass(frozen=True)
class PromptPositions:
    """A rendered prompt and its token positions (absolute indices into ``input_ids``)."""

    instruction: str
    prompt: str
    input_ids: tuple[int, ...]
    tokens: tuple[str, ...]
    t_inst: int
    t_post_inst: int
    inst_start: int  # first token overlapping the instruction
    context_start: int
    context_end: int  # one past the last context token
    post_inst: bool
    add_special_tokens: bool = False

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "t_inst": self.t_inst,
            "t_post_inst": self.t_post_inst,
            "inst_start": self.inst_start,
            "context": [self.context_start, self.context_end],
            "post_inst": self.post_inst,
        }


def check_text(text: str, what: str = "the instruction") -> str:
    """Refuse text with a lone surrogate (invalid UTF-8 that reached Python as U+D800..U+DFFF); returns ``text``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        raise ValueError(
            f"{what} has an invalid character at position {exc.start} (U+{code:04X}, a lone surrogate: the text was "
            "not valid UTF-8); remove it or re-save the text as UTF-8"
        ) from None
    return text


def check_instruction(instruction: Any, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """Validate user input: a non-empty string of at most ``max_chars`` characters, without lone surrogates."""
    if not isinstance(instruction, str):
        raise ValueError(f"an instruction must be a string, not {type(instruction).__name__}")
    if not instruction.strip():
        raise ValueError("the instruction is empty; type a request")
    if len(instruction) > max_chars:
        raise ValueError(f"the instruction has {len(instruction)} characters; the limit is {max_chars}")
    return check_text(instruction)


def render(tokenizer: Any, user_message: str, *, post_inst: bool = True, system: str | None = None) -> str:
    """Render one user turn with the model's chat template (and the generation prompt when ``post_inst``)."""
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": user_message})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise ValueError("the chat template did not render to text")
    return text


def _find_message(tokenizer: Any, user_message: str, system: str | None) -> tuple[str, int, int, int]:
    """Return (prompt, base, lo, hi): the full prompt, the prompt offset of the user message's character 0, and the
    prompt span [lo, hi) that the message's text occupies (narrower than the message when the template strips it).

    The message is located by rendering once with a sentinel in its place, so a template that repeats the text
    (or contains it in a system prompt) cannot fool the search.
    """
    probe = render(tokenizer, _SENTINEL, post_inst=True, system=system)
    at = probe.find(_SENTINEL)
    if at < 0 or probe.count(_SENTINEL) != 1:
        raise ValueError("cannot locate the user message in the chat template's output (the template rewrites it)")
    prompt = probe[:at] + user_message + probe[at + len(_SENTINEL) :]
    rendered = render(tokenizer, user_message, post_inst=True, system=system)
    if rendered == prompt:
        return prompt, at, at, at + len(user_message)
    # templates that strip or transform content: fall back to a search in the real rendering
    at = rendered.rfind(user_message)
    if at >= 0:
        return rendered, at, at, at + len(user_message)
    stripped = user_message.strip()
    at = rendered.rfind(stripped)
    if at < 0:
        raise ValueError("the chat template changes the instruction's text; cannot locate t_inst")
    shift = len(user_message) - len(user_message.lstrip())
    return rendered, at - shift, at, at + len(stripped)


def locate(
    tokenizer: Any,
    instruction: str,
    *,
    post_inst: bool = True,
    user_message: str | None = None,
    context: tuple[int, int] | None = None,
    system: str | None = None,
    max_chars: int = MAX_INSTRUCTION_CHARS,
) -> PromptPositions:
    """Render and tokenise a prompt and find t_inst / t_post_inst.

    ``user_message`` (default: the instruction) is the whole user turn; the instruction must occur in it. ``context``
    is a character span of the user message for context-only steering (default: up to the instruction's end).
    """
    check_instruction(instruction, max_chars)
    message = instruction if user_message is None else check_text(user_message, "the user message")
    if system is not None:
        check_text(system, "the system prompt")
    i0 = message.find(instruction)
    if i0 < 0:
        raise ValueError("the instruction does not occur in the user message")
    i1 = i0 + len(instruction)
    # trailing whitespace inside the instruction is not a meaningful last token
    while i1 > i0 + 1 and message[i1 - 1].isspace():
        i1 -= 1
    c0, c1 = context if context is not None else (0, i1)
    if not (0 <= c0 < c1 <= len(message)):
        raise ValueError(f"context span {context} is outside the user message")
    full, base, lo, hi = _find_message(tokenizer, message, system)

    def in_prompt(i: int) -> int:  # message character index -> prompt index (clipped to the rendered message)
        return min(max(base + i, lo), hi)

    s, e = in_prompt(i0), in_prompt(i1)
    cs, ce = in_prompt(c0), in_prompt(c1)
    prompt = full if post_inst else full[:e]
    ids, offsets, head = _encode(tokenizer, prompt, lo, hi)
    add_special = False
    bos = getattr(tokenizer, "bos_token", None)
    # templates that do not write BOS themselves rely on the tokenizer adding it (Llama-2 style)
    head_ids = ids if head == prompt else list(tokenizer(head, add_special_tokens=False)["input_ids"])
    with_special = tokenizer(head, add_special_tokens=True)["input_ids"]
    if len(with_special) == len(head_ids) + 1 and bos and not prompt.startswith(bos) and with_special[1:] == head_ids:
        ids = [with_special[0], *ids]
        offsets = [(0, 0), *offsets]
        add_special = True
    if not ids:
        raise ValueError("the prompt tokenised to nothing")
    t_inst = -1
    first = -1
    ctx_first, ctx_last = -1, -1
    for k, (a, b) in enumerate(offsets):
        if b <= a:
            continue
        if a < e and b > s:  # overlaps the instruction
            if first < 0:
                first = k
            t_inst = k
        if a < ce and b > cs:
            if ctx_first < 0:
                ctx_first = k
            ctx_last = k
    if t_inst < 0:
        raise ValueError("no token of the instruction found in the rendered prompt (tokenizer without offsets?)")
    tokens = tuple(tokenizer.decode([i]) for i in ids)
    return PromptPositions(
        instruction=instruction,
        prompt=prompt,
        input_ids=tuple(ids),
        tokens=tokens,
        t_inst=t_inst,
        t_post_inst=len(ids) - 1,
        inst_start=first,
        context_start=max(ctx_first, 0),
        context_end=ctx_last + 1,
        post_inst=post_inst,
        add_special_tokens=add_special,
    )


def _special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and every added token flagged special), except the unknown
    token: that one is what unencodable text becomes, not a control token matched in the text."""
    ids = {int(i) for i in getattr(tokenizer, "all_special_ids", []) or []}
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    ids.discard(getattr(tokenizer, "unk_token_id", None))
    return ids


_LITERAL: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()
_LITERAL_LOCK = threading.Lock()


def _literal_backend(tokenizer: Any) -> Any:
    """A private copy of the fast tokenizer's backend that encodes special-token text as ordinary text.

    A copy, because transformers' ``split_special_tokens`` flips a flag on the shared backend for the duration of a
    call: another thread tokenising at the same moment could then see special tokens parsed (or not) by mistake."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_special_tokens"):
        raise ValueError(
            "the instruction contains the text of a special token (such as <|im_end|>) and this tokenizer cannot "
            "encode it as plain text; remove it from the instruction"
        )
    from tokenizers import Tokenizer

    with _LITERAL_LOCK:
        size = len(tokenizer)
        cached = _LITERAL.get(tokenizer)
        if cached is not None and cached[0] == size:
            return cached[1]
        copy = Tokenizer.from_str(backend.to_str())
        copy.no_truncation()
        copy.no_padding()
        copy.encode_special_tokens = True
        _LITERAL[tokenizer] = (size, copy)
        return copy


def _encode(tokenizer: Any, prompt: str, lo: int, hi: int) -> tuple[list[int], list[tuple[int, int]], str]:
    """Token ids and character offsets of ``prompt`` whose user message occupies ``[lo, hi)``, with any special-token
    text inside the message encoded as plain text (see the module docstring). Also returns the text before the
    first token that the BOS check must look at (the whole prompt, or the template part before the message)."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids = [int(i) for i in enc["input_ids"]]
    offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    special = _special_ids(tokenizer)
    hi = min(hi, len(prompt))
    if not any(i in special and a < hi and b > lo for i, (a, b) in zip(ids, offsets, strict=True)):
        return ids, offsets, prompt
    head, tail = prompt[:lo], prompt[hi:]
    out_ids: list[int] = []
    out_off: list[tuple[int, int]] = []
    if head:
        h = tokenizer(head, add_special_tokens=False, return_offsets_mapping=True)
        out_ids += [int(i) for i in h["input_ids"]]
        out_off += [(int(a), int(b)) for a, b in h["offset_mapping"]]
    m = _literal_backend(tokenizer).encode(prompt[lo:hi], add_special_tokens=False)
    if any(int(i) in special for i in m.ids):
        raise ValueError(
            "the instruction contains the text of a special token (such as <|im_end|>) that this tokenizer cannot "
            "encode as plain text; remove it from the instruction"
        )
    out_ids += [int(i) for i in m.ids]
    out_off += [(lo + int(a), lo + int(b)) for a, b in m.offsets]
    if tail:
        t = tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        out_ids += [int(i) for i in t["input_ids"]]
        out_off += [(hi + int(a), hi + int(b)) for a, b in t["offset_mapping"]]
    return out_ids, out_off, head


def inversion_message(instruction: str, question: str) -> tuple[str, str, tuple[int, int]]:
    """The reply-inversion user turn "User wants to {instruction}\\n{question}" and its context span.

    The context (steered for the harmfulness direction) is "User wants to {instruction}\\n", as in the paper's
    code (everything before the question). Returns (user message, instruction as written in it, context span).
    """
    check_instruction(instruction)
    inst = instruction.strip()
    if inst and inst[0].isupper() and not inst[:2].isupper():
        inst = inst[0].lower() + inst[1:]
    head = f"User wants to {inst}\n"
    return head + question, inst, (0, len(head))


# ------------------------------------------------------------------------------------ prompts -> padded batch
def pad_batch(handle: ModelHandle, prompts: Sequence[PromptPositions]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Left-pad token ids. Returns (input_ids, attention_mask, pad counts)."""
    n = max(p.n_tokens for p in prompts)
    pad_id = handle.tokenizer.pad_token_id
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    pads = []
    for i, p in enumerate(prompts):
        k = n - p.n_tokens
        ids[i, k:] = torch.tensor(p.input_ids, dtype=torch.long)
        mask[i, k:] = 1
        pads.append(k)
    return ids.to(handle.input_device), mask.to(handle.input_device), pads


def position_ids_for(mask: torch.Tensor) -> torch.Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def prepare(
    handle: ModelHandle, items: Sequence[str | PromptPositions], *, post_inst: bool = True
) -> list[PromptPositions]:
    return [
        it if isinstance(it, PromptPositions) else locate(handle.tokenizer, it, post_inst=post_inst) for it in items
    ]
