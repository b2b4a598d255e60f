"""URI arithmetic shared by local paths and s3:// URIs: split, join, parent, resolve, patterns.

A URI is either "s3://bucket/key" or a local path (optionally "file://..."); any other scheme
(http://, gs://, ...) is refused with a clear error. Patterns use shell-style wildcards inside
one path segment (`*`, `?`, `[...]`), `**` across segments, and brace expansion
(`part-{000000..000099}.tar`, `{a,b}`) through the `braceexpand` library.
"""

from __future__ import annotations

import os
import posixpath
import re

from braceexpand import braceexpand

S3_PREFIX = "s3://"
FILE_PREFIX = "file://"
WILDCARD_CHARS = "*?["


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_PREFIX)


def scheme_of(uri: str) -> str | None:
    """The scheme of a URI ("s3", "file", "http", ...) or None for a plain path."""
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", uri)
    return match.group(1).lower() if match else None


def check_supported(uri: str) -> None:
    """Raise ValueError for schemes restyle cannot read or write."""
    scheme = scheme_of(uri)
    if scheme not in (None, "s3", "file"):
        raise ValueError(f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path or s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """("bucket", "key/with/slashes") of an s3:// URI; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def local_path(uri: str | os.PathLike[str]) -> str:
    """The filesystem path of a local URI ("file://" stripped, "~" expanded)."""
    uri = os.fspath(uri)
    if uri.startswith(FILE_PREFIX):
        uri = uri[len(FILE_PREFIX) :]
    return os.path.expanduser(uri)


def join(base: str, *parts: str) -> str:
    """`base` + parts with exactly one "/" between them (os.path.join rules for local paths)."""
    if not is_s3(base):
        return os.path.join(base, *parts)
    out = base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out += "/" + part
    return out


def parent(uri: str) -> str:
    """The folder holding `uri` ("s3://b/a/x.parquet" -> "s3://b/a")."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        folder = posixpath.dirname(key.rstrip("/"))
        return f"{S3_PREFIX}{bucket}/{folder}".rstrip("/") if folder else f"{S3_PREFIX}{bucket}"
    if uri.startswith(FILE_PREFIX):
        return FILE_PREFIX + os.path.dirname(uri[len(FILE_PREFIX) :])
    return os.path.dirname(uri)


def resolve(ref: str, relative_to: str) -> str:
    """`ref` as a full URI: s3:// and absolute local paths stay; relative ones resolve against
    the folder of the file `relative_to` (so a manifest can name "images/a.jpg")."""
    check_supported(ref)
    if is_s3(ref) or ref.startswith(FILE_PREFIX) or os.path.isabs(ref) or ref.startswith("~"):
        return ref
    folder = parent(relative_to)
    if is_s3(folder):
        bucket, key = split_s3(folder)
        joined = posixpath.normpath(posixpath.join(key, ref)) if key else posixpath.normpath(ref)
        if joined == ".." or joined.startswith("../"):
            raise ValueError(f"relative URI {ref!r} climbs above the bucket of {relative_to!r}")
        return f"{S3_PREFIX}{bucket}/{joined}"
    scheme = FILE_PREFIX if folder.startswith(FILE_PREFIX) else ""
    return scheme + os.path.normpath(os.path.join(folder[len(scheme) :], ref))


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion: "p-{000..002}.tar" -> ["p-000.tar", "p-001.tar", "p-002.tar"]."""
    return list(braceexpand(pattern))


def has_wildcards(pattern: str) -> bool:
    return any(ch in pattern for ch in WILDCARD_CHARS)


def listing_prefix(pattern: str) -> str:
    """The literal folder part of a wildcard pattern, up to the last "/" before the first
    wildcard: the smallest listing that can contain every match."""
    first = min((i for i, ch in enumerate(pattern) if ch in WILDCARD_CHARS), default=len(pattern))
    return pattern[: pattern.rfind("/", 0, first) + 1]


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """Compile a pattern: `*`/`?`/`[...]` stay inside one segment, `**` crosses "/"."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(ch))
                i += 1
                continue
            body = pattern[i + 1 : end]
            negate = body.startswith(("!", "^"))
            body = body[1:] if negate else body
            out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(ch))
            i += 1
    return re.compile("".join(out) + r"\Z")


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@")


def without_credentials(uri: str) -> str:
    """`uri` without a `user:password@` part ("https://u:p@host/x" -> "https://host/x")."""
    return _USERINFO.sub(r"\1", uri)


def public_uri(uri: str) -> str:
    """The form of a URI that outputs record: local paths absolute (`file://` dropped), other
    URIs as given, and never credentials. Resolves against this process's current folder."""
    scheme = scheme_of(uri)
    if scheme is None or scheme == "file":
        return os.path.abspath(local_path(uri))
    return without_credentials(uri)


def canonical_uri(uri: str) -> str:
    """One spelling per object, for identity: a local path absolute with symlinks resolved
    (relative, `./`, `//` and a symlinked folder all name one file), other URIs as
    `public_uri` writes them."""
    scheme = scheme_of(uri)
    if scheme is None or scheme == "file":
        return os.path.realpath(local_path(uri))
    return public_uri(uri)
