"""The KV block pool: which cache pages are free, who holds each one, and which hold a known prefix.

Plain Python over page ids, no arrays. Pages are reference-counted: a sequence holds its own
pages, and with prefix caching a full page whose tokens (and every token before them) match
another sequence's is shared instead of recomputed. A full page is keyed by a chain hash of
(the previous page's key, its own tokens), so equal keys mean equal whole prefixes (as vLLM's
block hashing). Pages nobody holds keep their contents and key until they are needed again:
they are evicted least-recently-released first. Prefix reuse is a property of the pool;
callers only ask for a sequence's pages.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int, *, prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks ({num_blocks}) and block_size ({block_size}) must be >= 1")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.refs = [0] * num_blocks
        self.free_ids = collections.deque(range(num_blocks))  # hold nothing worth keeping
        self.evictable: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unreferenced
        self.key_of: dict[int, int] = {}
        self.block_of: dict[int, int] = {}
        self.queried_tokens = 0
        self.hit_tokens = 0

    @property
    def num_free(self) -> int:
        """Pages that can be handed out now (free, or cached and unreferenced)."""
        return len(self.free_ids) + len(self.evictable)

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` fresh pages (reference 1), or None when fewer than ``n`` can be had (nothing taken)."""
        if n > self.num_free:
            return None
        out = []
        for _ in range(n):
            if self.free_ids:
                block = self.free_ids.popleft()
            else:
                block, _ = self.evictable.popitem(last=False)
                del self.block_of[self.key_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: Sequence[int]) -> None:
        """Drop one reference to each page; a page nobody holds is free again (kept if it has a key)."""
        for block in blocks:
            if self.refs[block] <= 0:
                raise ValueError(f"page {block} released more often than it was taken")
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.key_of:
                    self.evictable[block] = None
                else:
                    self.free_ids.append(block)

    def _keys(self, tokens: Sequence[int]):
        key = 0
        for start in range(0, len(tokens) - self.block_size + 1, self.block_size):
            key = hash((key, tuple(tokens[start: start + self.block_size])))
            yield key

    def match_prefix(self, tokens: Sequence[int]) -> list[int]:
        """Pages already holding the longest run of ``tokens``' full blocks, each now referenced once more.

        At least the last token is always left out, so the caller has one token to compute logits from.
        """
        if not self.prefix_caching:
            return []
        usable = tokens[: max(len(tokens) - 1, 0)]
        found = []
        for key in self._keys(usable):
            block = self.block_of.get(key)
            if block is None:
                break
            found.append(block)
        for block in found:
            if self.refs[block] == 0:
                del self.evictable[block]
            self.refs[block] += 1
        self.queried_tokens += len(usable)
        self.hit_tokens += len(found) * self.block_size
        return found

    def register(self, blocks: Sequence[int], tokens: Sequence[int]) -> None:
        """Record the keys of a sequence's full pages (``blocks[i]`` holds block ``i`` of ``tokens``)."""
        if not self.prefix_caching:
            return
        for block, key in zip(blocks, self._keys(tokens)):
            if block in self.key_of:
                continue
            if key in self.block_of:  # another page holds the same prefix already; keep one of them
                continue
            self.key_of[block] = key
            self.block_of[key] = block
