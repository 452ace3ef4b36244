"""Chat templates as lists of pieces, so that labels come from structure, not from string search.

A rendering is a list of `Piece(text, content, trained, turn_end)`:
- `content=False` pieces are template text: special-token strings in them become control tokens.
- `content=True` pieces are message text: special-token strings in them are encoded as PLAIN TEXT
  (`<|im_start|>` typed by a user becomes "<|", "im", "_start", "|>"), so data cannot inject template
  structure. Non-special added tokens (e.g. `<tool_call>`) stay ordinary vocabulary, as in HF.
- `trained=True` pieces get labels (assistant reply + its end-of-turn token).
- `turn_end=True` marks where a complete assistant turn ends: the only places truncation may cut.
"""
from __future__ import annotations

from typing import NamedTuple

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class Piece(NamedTuple):
    text: str
    content: bool = False
    trained: bool = False
    turn_end: bool = False


class TemplateError(ValueError):
    """The template cannot render this conversation (skipped and counted as 'template_error')."""


class ChatML:
    """`<|im_start|>{role}\\n{text}<|im_end|>\\n`; trained: reply + `<|im_end|>` (not the "\\n" after it)."""
    name = "chatml"
    required_specials = ("<|im_start|>", "<|im_end|>")
    default_system: str | None = None

    def render(self, messages: list[tuple[str, str]]) -> list[Piece]:
        if self.default_system is not None and messages[0][0] != "system":
            messages = [("system", self.default_system)] + list(messages)
        out = []
        for role, text in messages:
            out.append(Piece(f"<|im_start|>{role}\n"))
            if role == "assistant":
                out += [Piece(text, True, True), Piece("<|im_end|>", trained=True), Piece("\n", turn_end=True)]
            else:
                out += [Piece(text, True), Piece("<|im_end|>\n")]
        return out


class Qwen(ChatML):
    """ChatML plus Qwen2.5's default system prompt when the conversation has none."""
    name = "qwen"
    default_system = QWEN_DEFAULT_SYSTEM


def split_thinking(text: str) -> tuple[str, str]:
    """(reasoning, reply) of an assistant message that may hold ``<think>...</think>``, as Qwen3's template
    splits it: reasoning = before the first ``</think>``, after the last ``<think>``, without surrounding
    newlines; reply = after the last ``</think>``, leading newlines dropped. No ``</think>``: ('', text)."""
    if "</think>" not in text:
        return "", text
    reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning.strip("\n"), text.split("</think>")[-1].lstrip("\n")


class Qwen3(ChatML):
    """Qwen3's chat template for conversations without tools. No default system prompt. Assistant turns
    after the last user message carry a think block: ``<think>\n{reasoning}\n</think>\n\n{reply}``, the
    last turn always (an empty block when it has no reasoning), earlier ones only when they have reasoning;
    turns before the last user message keep only their reply (their reasoning is dropped).

    Trained: what the model generates after the generation prompt of its mode. A thinking turn is
    generated after ``<|im_start|>assistant\n`` (``enable_thinking`` on, the default), so its whole think
    block is trained. A non-thinking turn's empty block ``<think>\n\n</think>\n\n`` is exactly what
    ``enable_thinking=False`` puts into the prompt, so it is masked and only reply + ``<|im_end|>`` are
    trained. Message text with ``<think>`` typed in stays text (content pieces)."""
    name = "qwen3"

    def render(self, messages: list[tuple[str, str]]) -> list[Piece]:
        users = [i for i, (role, _) in enumerate(messages) if role == "user"]
        last_query = users[-1] if users else len(messages) - 1
        out = []
        for i, (role, text) in enumerate(messages):
            out.append(Piece(f"<|im_start|>{role}\n"))
            if role != "assistant":
                out += [Piece(text, True), Piece("<|im_end|>\n")]
                continue
            reasoning, reply = split_thinking(text)
            if i > last_query and (i == len(messages) - 1 or reasoning):
                if reasoning:
                    out += [Piece("<think>\n", trained=True), Piece(reasoning, True, True),
                            Piece("\n</think>\n\n", trained=True)]
                else:
                    out.append(Piece("<think>\n\n</think>\n\n"))
                reply = reply.lstrip("\n")
            out += [Piece(reply, True, True), Piece("<|im_end|>", trained=True), Piece("\n", turn_end=True)]
        return [p for p in out if p.text]


class Llama3Instruct:
    """Llama 3 instruct: `<|begin_of_text|>` then `<|start_header_id|>{role}<|end_header_id|>\\n\\n{text}<|eot_id|>`;
    message text is trimmed, as Llama 3's own template does. Trained: reply + `<|eot_id|>`."""
    name = "llama-3-instruct"
    required_specials = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

    def render(self, messages: list[tuple[str, str]]) -> list[Piece]:
        out = [Piece("<|begin_of_text|>")]
        for role, text in messages:
            out.append(Piece(f"<|start_header_id|>{role}<|end_header_id|>\n\n"))
            if role == "assistant":
                out += [Piece(text.strip(), True, True), Piece("<|eot_id|>", trained=True, turn_end=True)]
            else:
                out += [Piece(text.strip(), True), Piece("<|eot_id|>")]
        return out


class HFTemplate:
    """The tokenizer's own jinja chat template. Assistant spans are found by incremental rendering:
    render(m[:k]) must be a prefix of render(m[:k], generation prompt) which must be a prefix of
    render(m[:k+1]); the reply is located inside its delta. Trained: reply up to and including the last
    special token that follows it (e.g. `<|im_end|>`); whatever follows (the "\\n") is masked."""
    name = "hf"
    required_specials = ()

    def __init__(self, tokenizer, special_tokens: list[str]):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("template 'hf': the tokenizer has no chat_template")
        self.tok = tokenizer
        self.specials = sorted(special_tokens, key=len, reverse=True)

    def _render(self, msgs, gen: bool) -> str:
        return self.tok.apply_chat_template(
            [{"role": r, "content": t} for r, t in msgs], tokenize=False, add_generation_prompt=gen)

    def _split(self, delta: str, text: str, trained: bool) -> list[Piece]:
        at = delta.rfind(text)  # rfind: a default system prompt may precede the first message
        if at < 0:
            raise TemplateError("message text not found verbatim in the template's rendering")
        before, after = delta[:at], delta[at + len(text):]
        out = [Piece(before)] if before else []
        if not trained:
            return out + [Piece(text, True)] + ([Piece(after)] if after else [])
        cut = max((after.rfind(s) + len(s) for s in self.specials if s in after), default=-1)
        if cut < 0:  # no end-of-turn token: train the reply and any non-whitespace suffix
            cut = len(after.rstrip())
        out.append(Piece(text, True, True))
        if cut:
            out.append(Piece(after[:cut], trained=True))
        if after[cut:]:
            out.append(Piece(after[cut:], turn_end=True))
        else:
            out[-1] = out[-1]._replace(turn_end=True)
        return out

    def render(self, messages: list[tuple[str, str]]) -> list[Piece]:
        try:
            out, prev = [], ""
            for k, (role, text) in enumerate(messages):
                if role == "assistant":
                    gen = self._render(messages[:k], True)
                    if not gen.startswith(prev):
                        raise TemplateError("generation prompt does not extend the rendered prefix")
                    out.append(Piece(gen[len(prev):]))
                    prev = gen
                cur = self._render(messages[:k + 1], False)
                if not cur.startswith(prev):
                    raise TemplateError("template is not incremental (a message changes earlier text)")
                out += self._split(cur[len(prev):], text, role == "assistant")
                prev = cur
            return [p for p in out if p.text]
        except TemplateError:
            raise
        except Exception as e:  # jinja raise_exception(...) and friends
            raise TemplateError(f"chat template failed: {e}") from None


BUILTIN = {"chatml": ChatML, "qwen": Qwen, "qwen3": Qwen3, "llama-3-instruct": Llama3Instruct}
KNOWN = sorted(BUILTIN) + ["hf"]


def get_template(name: str, tokenizer=None, special_tokens: list[str] | None = None):
    if name == "hf":
        return HFTemplate(tokenizer, special_tokens or [])
    if name not in BUILTIN:
        raise ValueError(f"unknown template {name!r}; known templates: {', '.join(KNOWN)}")
    tpl = BUILTIN[name]()
    if special_tokens is not None:
        missing = [s for s in tpl.required_specials if s not in special_tokens]
        if missing:
            raise ValueError(f"template {name!r} needs special tokens the tokenizer lacks: {' '.join(missing)}")
    return tpl
