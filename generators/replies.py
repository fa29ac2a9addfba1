"""Reading what chat models write around the answer a generator asked for.

An instruction-tuned model seldom replies with the bare continuation a prompt sets up: it opens
with a line ("Sure! Here are some new tasks:"), numbers items its own way (`11.`, `11)`,
`Task 11:`, `### Task 11`, `**Task 11**`), wraps the answer in quotes, bold or a code fence,
and closes with a remark ("Let me know if you need more!"). The helpers here find the items
and drop that chat around them; the generators (self_instruct.py, evol.py, skillmix.py) use
them, and a reply with nothing usable left is the generator's `unparseable` drop, raw text kept.

The rules are about the *shape* of chat (what opening and closing lines say, where they sit),
not about particular replies: an opening line is only dropped before the first item, a closing
remark only after the last one's first line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_BOLD = r"(?:\*\*|__)"
# One numbered item at the start of a line, the word form: `Task 11:`, `### Task 11`,
# `**Task 11**`, `**Task 11:**`, `Task #11 -`, `- Task 11.`, `Task 11 (easy):`. Either a
# separator follows the number or the line ends there (a header with the text below it).
_WORD_ITEM = re.compile(
    rf"^\s*(?:>\s*)?(?:#{{1,6}}\s*)?(?:[-*•]\s+)?{_BOLD}?\s*(?:new\s+)?(?:task|instruction|prompt)\s*(?:no\.?\s*|#\s*)?(?P<n>\d{{1,4}})"
    rf"\s*(?:\([^()\n]{{0,30}}\))?\s*{_BOLD}?\s*(?:(?:[:.)]|\s[-–—])\s*{_BOLD}?\s*|$)",
    re.IGNORECASE)
# The bare form: `11.`, `11)`, `11:`, `**11.**`, `### 11.`; a space or the line's end must
# follow, so `3.5 cups` or `10:30` do not count.
_BARE_ITEM = re.compile(rf"^\s*(?:#{{1,6}}\s*)?{_BOLD}?\s*\(?(?P<n>\d{{1,4}})\s*(?:[.):]|\s[-–—])\s*{_BOLD}?(?=\s|$)\s*")
_FENCE = re.compile(r"^\s*(?:```|~~~)[\w+.-]*\s*$")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")

# Chat openers. An interjection needs punctuation after it ("Sure!", "Of course,"), so a task
# that starts "Great Britain ..." is no opener.
_INTERJECTION = re.compile(
    r"^\W*(?:sure(?: thing)?|certainly|of course|absolutely|okay|ok|great|alright|all right|no problem|understood|got it|"
    r"gladly|perfect|excellent|definitely|sounds good|with pleasure|happy to help|glad to help|yes|hello|hi)\s*[!,.:;\-–—]|"
    r"^\W*(?:sure|okay|ok|alright|certainly|absolutely|of course)\s+(?:here|below|these|i|i'll|let's|let me|now)\b",
    re.IGNORECASE)
_ANNOUNCE = re.compile(
    r"^\W*(?:here(?:'s|’s| is| are| you go| goes| they are| it is)|below (?:is|are)|(?:the )?following (?:is|are)|"
    r"as requested|continuing|continued|to continue|i(?:'ll|’ll| will| shall) (?:continue|add|generate|give|provide|write|list|come up|create|suggest)|"
    r"i(?:'ve|’ve| have) (?:come up|created|written|generated|made|prepared|put together|listed|rewritten|revised)|"
    r"let(?:'s|’s| me| us) (?:continue|add|generate|give|provide|write|list|come up|create|suggest|rewrite|keep)|"
    r"(?:some |a few |several |\d+ )?(?:more|new|additional|further|fresh|extra)\s+(?:\w+\s+)?(?:tasks|instructions|prompts)\b)",
    re.IGNORECASE)
_LIST_NOUN = re.compile(r"\b(?:tasks?|instructions?|prompts?|questions|ideas|examples|more)\b", re.IGNORECASE)

# Closing remarks. Strong ones are meta talk wherever they sit; weak ones only count after a
# blank line (a task's own input text could start "These are ...").
_CLOSER_STRONG = re.compile(
    r"^\W*(?:i hope (?:this|these|that|it|you)|hope (?:this|these|that|it|you)|(?:please )?let me know (?:if|whether|what|how|when)|feel free|if you(?:'d|’d| would)? (?:like|need|want|have)|"
    r"would you like|do you (?:want|need)|want me to|shall i|should i (?:continue|generate|add|provide|write)|"
    r"i can (?:also |easily |happily )?(?:generate|provide|create|write|come up|make|add|continue|give|adjust|modify)|"
    r"i(?:'d|’d| would) be (?:happy|glad)|(?:i'm|i’m|i am) (?:happy|glad) to|happy to (?:help|provide|generate|create)|"
    r"(?:i )?hope (?:this|these) help|hopefully|(?:want|need) more\b|just (?:ask|let me know)|do let me know|"
    r"is there anything|anything else (?:i can|you)|"
    r"i(?:'ve|’ve| have)? (?:tried|aimed|made sure|focused|included a|kept)|"
    r"(?:these|the|all|all of these|all the|each of these|each of the)\s+(?:\w+\s+){0,2}(?:tasks|instructions|prompts)\b(?!\s+(?:in|of|for|to|on|about|below)\b))",
    re.IGNORECASE)
_CLOSER_WEAK = re.compile(
    r"^\W*(?:these (?:\w+ ){0,3}(?:tasks|instructions|prompts|should|will|can|cover|are|span|range|offer|include|vary|were|have|provide|test|require|help)|"
    r"this (?:list|set|collection|should|will)|each (?:of these|task|one|instruction)|all (?:of )?these|the (?:above|tasks above|list above)|"
    r"notes?\s*:|\(note|in (?:total|summary)|that's all|that is all|enjoy|good luck|have fun|cheers|thanks?\b|thank you|happy (?:writing|generating|training))",
    re.IGNORECASE)

_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}


def is_opener(line: str, before_items: bool = False, last: bool = False) -> bool:
    """A chat opening line ("Sure! Here are some new tasks:"). `before_items`: numbered items
    follow, so a heading ("## New tasks", "**More tasks:**") is chat too; `last`: the line sits
    right before the first item, where a line ending in a colon introduces the list."""
    text = line.strip()
    if not text:
        return True
    if _INTERJECTION.match(text):
        return True
    if _ANNOUNCE.match(text) and (text.endswith((":", "!")) or _LIST_NOUN.search(text)):
        return True
    if before_items and (text.startswith("#") or _heading_only(text)):
        return True
    return before_items and last and text.rstrip("*_ ").endswith(":")


def is_interjection(line: str) -> bool:
    """A line that opens with a chat interjection: "Sure!", "Of course,", "Certainly."."""
    return bool(_INTERJECTION.match(line.strip()))


def is_closer(line: str, after_blank: bool) -> bool:
    """A closing remark ("Let me know if you need more!"); weak forms only after a blank line."""
    text = line.strip()
    return bool(_CLOSER_STRONG.match(text) or (after_blank and _CLOSER_WEAK.match(text)))


def _heading_only(text: str) -> bool:
    """A short line that is all bold or underlined and no sentence: a heading."""
    return bool(re.fullmatch(rf"{_BOLD}[^*_]+?[:]?{_BOLD}:?", text)) and len(text.split()) <= 6 and not text.rstrip("*_").endswith((".", "?"))


def unwrap(text: str) -> str:
    """Strip what a model wraps an answer in: whitespace, bold/italic markers, a code fence,
    matching quotes (only when the text holds no other such quote), as often as they nest."""
    previous = None
    text = text.strip()
    while text != previous:
        previous = text
        text = strip_fence(text).strip()
        for mark in ("**", "__", "*"):
            if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(mark) and mark not in text[len(mark):-len(mark)]:
                text = text[len(mark):-len(mark)].strip()
        if text.endswith(("**", "__")) and text.count(text[-2:]) % 2 == 1:  # "Write a poem**": a bold opened in the marker
            text = text[:-2].rstrip()
        if text.startswith(("**", "__")) and text.count(text[:2]) % 2 == 1:
            text = text[2:].lstrip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] and text[0] not in text[1:-1] \
                and _QUOTES[text[0]] not in text[1:-1]:
            text = text[1:-1].strip()
    return text


def strip_fence(text: str) -> str:
    """The inside of a code fence wrapping the whole text (```, ```text, ~~~); else the text."""
    lines = text.strip().splitlines()
    if len(lines) >= 2 and _FENCE.match(lines[0]) and _FENCE.match(lines[-1]):
        inner = lines[1:-1]
        if not any(_FENCE.match(line) for line in inner):
            return "\n".join(inner)
    if len(lines) == 1:
        m = re.fullmatch(r"\s*```(?:[\w+.-]+\s)?(.*?)```\s*", lines[0])
        if m:
            return m.group(1)
    return text


@dataclass
class Items:
    """A reply cut into items. `preamble`: the lines before the first item that are no chat
    (an unnumbered first item, when the prompt numbered it); `discarded`: the chat dropped."""
    items: list[list[str]] = field(default_factory=list)
    preamble: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    closed: bool = False  # a closing remark followed the last item: it was not cut off


def numbered_items(text: str, min_words: int = 4) -> Items:
    """Cut a reply into numbered items, dropping an opening line before the first and a closing
    remark after the last. The word form (`Task 11:`) wins when present, so a task's own
    numbered sub-list stays inside it; bare numbers (`11.`) count as items only when the items
    are sentences (median of `min_words` words or more) and no task line ending in a colon
    introduces them: "Sort these:\\n1. Bake\\n2. Mix" is one item with a list in it."""
    lines = ["" if _FENCE.match(line) or _RULE.match(line) else line for line in text.replace("\r\n", "\n").split("\n")]
    found = _split(lines, _WORD_ITEM)
    if not found.items:
        bare = _split(lines, _BARE_ITEM)
        lengths = sorted(len(" ".join(item).split()) for item in bare.items)
        lead = next((line.strip() for line in reversed(bare.preamble) if line.strip()), "")
        introduced = (lead.endswith(":") and not is_opener(lead, before_items=True)  # "Compare these approaches:" owns the list below it
                      and not re.search(r"\b(?:tasks|instructions|prompts)\b", lead, re.IGNORECASE))
        if bare.items and lengths[len(lengths) // 2] >= min_words and not introduced:
            found = bare
    if not found.items:
        found = Items(preamble=lines)
    return _trim(found)


def _split(lines: list[str], marker: re.Pattern) -> Items:
    out = Items()
    current = None
    for line in lines:
        m = marker.match(line)
        if m:
            current = [line[m.end():].strip()]
            out.items.append(current)
        elif current is None:
            out.preamble.append(line)
        else:
            current.append(line)
    return out


def _trim(found: Items) -> Items:
    """Drop the opening chat from the preamble and the closing chat from the last item."""
    preamble = [line for line in found.preamble]
    while preamble and not preamble[-1].strip():
        preamble.pop()
    # Opening lines: from the top, while they read as chat. The preamble's last line may end
    # with a colon that introduces the list, but only when items follow.
    kept_from = 0
    for i, line in enumerate(preamble):
        if is_opener(line, before_items=bool(found.items), last=i == len(preamble) - 1):
            kept_from = i + 1
            continue
        break
    found.discarded += [line.strip() for line in preamble[:kept_from] if line.strip()]
    found.preamble = preamble[kept_from:]
    # Closing remarks: the last block of lines (the last item's, or the preamble's when there
    # are no items), from its second line on.
    block = found.items[-1] if found.items else found.preamble
    start = _first_text(block) + (0 if not found.items and kept_from else 1)  # chat only: its last line may close it
    for i in range(start, len(block)):
        after_blank = i == 0 or not block[i - 1].strip()
        if block[i].strip() and is_closer(block[i], after_blank):
            found.discarded += [line.strip() for line in block[i:] if line.strip()]
            del block[i:]
            found.closed = True
            break
    found.items = [item for item in found.items if any(line.strip() for line in item)]
    return found


def _first_text(lines: list[str]) -> int:
    return next((i for i, line in enumerate(lines) if line.strip()), len(lines))


def trailing_remarks(lines: list[str], closer: re.Pattern) -> int:
    """Where a reply's closing remarks begin (len(lines) if none): the first paragraph, after
    the first one, whose first line matches `closer` or the general closers, with everything
    after it."""
    paragraph_start = True
    seen_text = False
    for i, line in enumerate(lines):
        text = line.strip()
        if not text or _RULE.match(text):
            paragraph_start = True
            continue
        if seen_text and (_CLOSER_STRONG.match(text) or (paragraph_start and (closer.match(text) or _CLOSER_WEAK.match(text)))):
            return i
        seen_text, paragraph_start = True, False
    return len(lines)
