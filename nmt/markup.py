"""Markup kept through translation (``decode.markup: keep``): XML-like tags and placeholders.

A line's tags (``<b>``, ``</b>``, ``<x id="1"/>``) and placeholders (``{1}``, ``%s``, ``%1$d``,
URLs) are taken out, the plain text translated with attention, and each item put back where the
attention aligns what it touched: a pair around the words aligned to those it enclosed, a lone
item before the word aligned to the one after it. Pairs nest in their parents and follow their
siblings, so balanced tags stay balanced; no item is lost, duplicated or invented (search may
not write ``<>{}``: Vocab.markup_ids). A stray ``<``, ``>``, ``{`` or ``}`` is a lone item too;
``%`` not followed by a conversion (``100%ige``) is text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from itertools import accumulate

import torch

MARKUP = re.compile(r"""
    <(?P<close>/)?(?P<name>[A-Za-z_][\w.:-]*)
        (?:\s+[\w.:-]+(?:\s*=\s*(?:"[^"]*"|'[^']*'|[^\s"'=<>`]+))?)*\s*(?P<empty>/)?>
  | <!--.*?-->
  | \{[\w.:$-]*\}
  | %(?:\d+\$|\(\w+\))?[-+\#0]*\d*(?:\.\d+)?[sdifuxXeEgGc](?!\w)
  | (?:https?|ftp)://[^\s<>"']*[^\s<>"'.,;:!?)]
  | [<>{}]
""", re.VERBOSE)


@dataclass
class Item:
    """One piece of markup: a tag pair (``close`` set) or a lone tag or placeholder."""
    text: str  # as written: the opening tag of a pair, or the lone item
    start: int  # offset in the plain text: where the pair's content (or the lone item) begins
    end: int = -1  # a pair: where its content ends in the plain text
    close: str = ""  # a pair: its closing tag
    space_before: bool = False  # whitespace before it in the source
    space_after: bool = False  # ... after it (a pair: after its closing tag)
    glued_before: bool = False  # a letter or digit right before it in the source
    glued_after: bool = False
    children: list[Item] = field(default_factory=list)


def strip(line: str) -> tuple[str, list[Item]]:
    """``line`` -> (its plain text, its markup as a tree of items in source order). A closing tag
    pairs with the open tag on top if it has its name; else it, and a tag never closed, are lone."""
    root: list[Item] = []
    stack: list[tuple[Item, list[Item]]] = []  # open tags and the list they were added to
    removed = 0  # markup characters before the match
    for match in MARKUP.finditer(line):
        text = match.group()
        at = match.start() - removed  # where it is in the plain text
        removed += len(text)
        siblings = stack[-1][0].children if stack else root
        spacing = _spacing(line, match.start(), match.end())
        if match.group("name") and not match.group("close") and not match.group("empty"):
            item = Item(text, at, **spacing)
            siblings.append(item)
            stack.append((item, siblings))
        elif match.group("close") and stack and _name(stack[-1][0].text) == match.group("name"):
            item, _ = stack.pop()
            item.end, item.close = at, text
            item.space_after, item.glued_after = spacing["space_after"], spacing["glued_after"]
        else:
            siblings.append(Item(text, at, **spacing))
    while stack:  # never closed: a lone item, its children its siblings after it
        item, siblings = stack.pop()
        after = siblings.index(item) + 1
        siblings[after:after] = item.children
        item.children = []
    return MARKUP.sub("", line), root


def balanced(line: str) -> bool:
    """Whether every tag pair of ``line`` closes, in order (lone tags and placeholders aside)."""
    stack = []
    for match in MARKUP.finditer(line):
        if match.group("name") and not match.group("empty"):
            if not match.group("close"):
                stack.append(match.group("name"))
            elif not stack or stack.pop() != match.group("name"):
                return False
    return not stack


def _spacing(line: str, start: int, end: int) -> dict:
    before = line[start - 1] if start else " "
    after = line[end] if end < len(line) else " "
    return dict(space_before=before.isspace(), space_after=after.isspace(),
                glued_before=before.isalnum(), glued_after=after.isalnum())


def _name(tag: str) -> str:
    return MARKUP.match(tag).group("name")


def items_of(line: str) -> list[str]:
    """Every tag and placeholder of ``line``, in order (to check that none is lost)."""
    return [match.group() for match in MARKUP.finditer(line)]


def restore(items: list[Item], source_spans: list[tuple[int, int]], words: list[str],
            attention: torch.Tensor | None) -> str:
    """``items`` put back into a translation. source_spans: [S] each source piece's (start, end)
    in the plain text, without leading whitespace; words: the translation's pieces; attention:
    [len(words), >= S] over the source pieces (None or empty: every item at the end)."""
    restorer = _Restorer(source_spans, words, attention)
    wanted = sorted(items_of(_source_of(items)))
    text = restorer.render(items, spaced=False)
    # Text glued to a placeholder can change it (a URL runs on into a word): then space them.
    return text if sorted(items_of(text)) == wanted else restorer.render(items, spaced=True)


class _Restorer:
    """One translation's words, their alignment to the source pieces, and the output built."""

    def __init__(self, source_spans: list[tuple[int, int]], words: list[str],
                 attention: torch.Tensor | None):
        self.spans, self.words, self.target = source_spans, words, len(words)
        if attention is None or not words or not source_spans:
            self.aligned = [len(source_spans)] * len(words)
        else:
            self.aligned = attention[:len(words), :len(source_spans)].argmax(1).tolist()
        def starts_word(t: int) -> bool:  # a new word, or punctuation: a tag may stand before it
            return words[t][:1].isspace() or not _wordy(words[t]) or not _wordy(words[t - 1])
        self.starts = [0] + [t for t in range(1, len(words)) if starts_word(t)] + [len(words)]
        self.full = "".join(words)
        # offsets[t]: where word t begins in full (before its whitespace)
        self.offsets = [0, *accumulate(len(word) for word in words)]

    def word_start(self, t: int) -> int:
        return max(s for s in self.starts if s <= t)

    def word_end(self, t: int) -> int:
        return min(s for s in self.starts if s >= t)

    def after_space(self, t: int) -> int:
        word = self.words[t] if t < self.target else ""
        return self.offsets[t] + len(word) - len(word.lstrip())

    def point(self, offset: int) -> int:
        """Before the word aligned to the first source piece from ``offset`` (else after the words
        of the piece before it)."""
        for j, (start, _) in enumerate(self.spans):
            if start >= offset:
                hits = [t for t, a in enumerate(self.aligned) if a == j]
                if hits:
                    return self.word_start(min(hits))
                back = [t for t, a in enumerate(self.aligned) if j and a == j - 1]
                if back:
                    return self.word_end(max(back) + 1)
        return self.target

    def span(self, item: Item) -> tuple[int, int]:
        """The words [a, b) a pair goes around: those aligned to the pieces it enclosed."""
        inside = {j for j, (a, b) in enumerate(self.spans) if a < item.end and b > item.start}
        hits = [t for t, a in enumerate(self.aligned) if a in inside]
        return ((self.word_start(min(hits)), self.word_end(max(hits) + 1)) if hits
                else (self.point(item.start),) * 2)

    def place(self, nodes: list[Item], low: int, high: int) -> list[tuple[Item, int, int]]:
        """Siblings in their parent's words [low, high): a pair that would cross starts where the
        one before ends; a lone item inside a pair moves to its nearer end."""
        placed = []
        for order, item in enumerate(nodes):
            a, b = self.span(item) if item.close else (self.point(item.start),) * 2
            a = min(max(a, low), high)
            placed.append([a, min(max(b, a), high), order, item])
        floor = low
        pairs = sorted((p for p in placed if p[3].close), key=lambda p: (p[0], p[2]))
        for pair in pairs:
            pair[0] = max(pair[0], floor)
            pair[1] = floor = max(pair[1], pair[0])
        for lone in (p for p in placed if not p[3].close):
            for a, b, *_ in pairs:
                if a < lone[0] < b:
                    lone[0] = lone[1] = a if lone[0] - a < b - lone[0] else b
        return [(item, a, b) for a, b, _, item in sorted(placed, key=lambda p: (p[0], p[2]))]

    def render(self, items: list[Item], spaced: bool) -> str:
        self.out: list[str] = []
        self.owed: Item | None = None  # the item just written, whose spacing after is owed
        self.spaced = spaced
        self.write(self.full[self.nodes(items, 0, self.target, 0):])
        return "".join(self.out)

    def write(self, text: str) -> None:
        """Translation text, a space first where the item before had one after it in the source
        (or was not glued to the word after it)."""
        if text and self.owed is not None:
            item, self.owed = self.owed, None
            if not text[0].isspace() and (item.space_after or self.spaced or
                                          not item.glued_after and text[0].isalnum()):
                self.out.append(" ")
        self.out.append(text)

    def write_item(self, item: Item) -> None:
        """A tag or placeholder, a space first where it or the item before had one between them in
        the source, or (a lone item) where it was not glued to the word before it."""
        last, lone = "".join(self.out)[-1:], not item.close
        owed, self.owed = self.owed, None
        wanted = (item.space_before or self.spaced and lone
                  or owed is not None and (owed.space_after or self.spaced)
                  or lone and not item.glued_before and last.isalnum())
        if last and not last.isspace() and wanted:
            self.out.append(" ")
        self.out.append(item.text)
        self.owed = item

    def nodes(self, nodes: list[Item], low: int, high: int, cursor: int) -> int:
        """Write ``nodes`` and the text between them from ``cursor``; returns where it stopped."""
        for item, a, b in self.place(nodes, low, high):
            attached_left = not item.close and not item.space_before and item.space_after
            at = max(cursor, self.offsets[a] if attached_left else self.after_space(a))
            self.write(self.full[cursor:at])
            cursor = at
            if item.close:
                self.write_item(replace(item, space_after=False, glued_after=True))
                cursor = self.nodes(item.children, a, b, cursor)
                end = max(cursor, self.offsets[b])
                self.write(self.full[cursor:end])
                self.out.append(item.close)
                self.owed = item
                cursor = end
            else:
                self.write_item(item)
        return cursor


def _wordy(text: str) -> bool:
    """Whether ``text`` holds a letter or digit (else it is punctuation or space)."""
    return any(c.isalnum() for c in text)


def _source_of(items: list[Item]) -> str:
    """The markup of ``items`` alone, in tree order (what a faithful output holds)."""
    return " ".join(item.text + (" " + _source_of(item.children) + " " + item.close
                                 if item.close else "")
                    for item in items)
