"""Reading YAML in bounded time and memory, whatever a file holds.

A config is a few dozen keys. YAML aliases can make 1 KB expand to billions of nodes, and deep
nesting exhausts the recursion of PyYAML's composer; `check_bounded` refuses both from YAML's
event stream, before anything is built, stopping at the first event past a limit.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mt.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_NODES = 100_000


def check_bounded(text: str, path: Path) -> None:
    """Refuse, from YAML's event stream and before building anything, a file too big, too deep,
    or whose aliases expand to too many nodes; each check stops at the first event past it."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {len(text):,} characters; a config is at most {MAX_CONFIG_BYTES:,}")
    anchored: dict[str, int] = {}  # anchor -> nodes it expands to
    open_nodes: list[list] = []  # [nodes so far, anchor] per open mapping or sequence

    def add(count: int, line: int) -> None:
        if open_nodes:
            open_nodes[-1][0] += count
            if open_nodes[-1][0] > MAX_NODES:
                raise ConfigError(f"{path}:{line}: expands to more than {MAX_NODES:,} values "
                                  "(YAML aliases repeating aliases?); a config holds a few dozen")

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_nodes) >= MAX_DEPTH:
                raise ConfigError(f"{path}:{line}: nested more than {MAX_DEPTH} levels deep")
            open_nodes.append([1, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            count, anchor = open_nodes.pop()
            anchored[anchor] = count if anchor else 0
            add(count, line)
        elif isinstance(event, yaml.ScalarEvent):
            anchored[event.anchor] = 1
            add(1, line)
        elif isinstance(event, yaml.AliasEvent):
            add(anchored.get(event.anchor, 1), line)
