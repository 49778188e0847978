"""Several outputs of one script, written atomically together."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from tissuelens.io import atomic_path


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing  # deepest first


@contextmanager
def staged(**paths: str | Path | None) -> Iterator[dict[str, Path]]:
    """Yield temporary paths by name; all are renamed onto their final paths only if the block succeeds.

    A failure anywhere in the block leaves none of the outputs behind, nor the directories created for
    them. Names given as None are skipped.
    """
    paths = {name: Path(p) for name, p in paths.items() if p is not None}
    created = sorted({d for p in paths.values() for d in _missing_parents(p)}, key=lambda d: -len(d.parts))
    try:
        with ExitStack() as stack:
            tmp = {name: stack.enter_context(atomic_path(p)) for name, p in paths.items()}
            yield tmp
    except BaseException:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                pass
        raise
