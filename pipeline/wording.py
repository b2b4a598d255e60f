"""Counted nouns in messages people read: "1 shard", "2 shards", "0 model actors".

Every progress line, log line and summary that puts a number before a noun goes through
`counted`, so none says "1 model actors" or hedges with "shard(s)". The nouns are the
project's own short list (shard, item, actor, task, ...), all regular or given their plural
explicitly, so a full inflection library would add a dependency for nothing.
"""

from __future__ import annotations


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """`singular` when `count` is 1, else `plural_form` (default: `singular` + "s", so pass
    a noun that ends the phrase: "model actor", with "for 'uso'" appended by the caller)."""
    if count == 1:
        return singular
    return plural_form if plural_form is not None else singular + "s"


def of_total(done: int, total: int | None, singular: str, plural_form: str | None = None) -> str:
    """A count out of a total, the noun in the total's number: "0/1 shard", "1/4 shards",
    "15/? items" (total unknown)."""
    shown = "?" if total is None else str(total)
    return f"{done}/{shown} {plural(2 if total is None else total, singular, plural_form)}"


def counted(count: int, singular: str, plural_form: str | None = None) -> str:
    """`count` and its noun in the right number: counted(1, "shard") == "1 shard",
    counted(0, "item") == "0 items", counted(2, "match", "matches") == "2 matches"."""
    return f"{count} {plural(count, singular, plural_form)}"
