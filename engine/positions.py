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
"""

from __future__ import annotations

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


def check_instruction(instruction: Any, max_chars: int = MAX_INSTRUCTION_CHARS) -> str:
    """Validate user input: a non-empty string of at most ``max_chars`` characters."""
    if not isinstance(instruction, str):
        raise ValueError(f"an instruction must be a string, not {type(instruction).__name__}")
    if not instruction.strip():
        raise ValueError("the instruction is empty; type a request")
    if len(instruction) > max_chars:
        raise ValueError(f"the instruction has {len(instruction)} characters; the limit is {max_chars}")
    return instruction


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
    message = instruction if user_message is None else user_message
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
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    add_special = False
    bos = getattr(tokenizer, "bos_token", None)
    # templates that do not write BOS themselves rely on the tokenizer adding it (Llama-2 style)
    with_special = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if len(with_special) == len(ids) + 1 and bos and not prompt.startswith(bos) and with_special[1:] == ids:
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
