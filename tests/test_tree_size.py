"""The tree stays small enough to travel to the GPU machine beside the bitsandbytes wheel: 64 MiB
travel in all (tracked files, untracked files git does not ignore, and the carried wheels), the
wheel is ~43 MB, so the tree may hold 20 MB (benchmarks/gpu.sh)."""
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LIMIT_BYTES = 20_000_000


def test_the_tree_that_travels_is_at_most_20_mb():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.split(b"\0")
    # files git still lists but the working tree deleted (an old adapter version being dropped) do not travel
    sizes = {n.decode(): (REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file()}
    total = sum(sizes.values())
    biggest = ", ".join(f"{n} {s / 1e6:.1f} MB" for n, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:5])
    assert total <= LIMIT_BYTES, (f"the tree holds {total / 1e6:.1f} MB, over {LIMIT_BYTES / 1e6:.0f} MB "
                                  f"(biggest: {biggest}); drop an old adapter version (adapters/README.md)")
