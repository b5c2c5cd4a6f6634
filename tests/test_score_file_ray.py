"""score_file(engine="ray"): the same job on a local Ray (this machine's 2 cores) gives the local engine's bytes.

Slow: starting Ray and its actors (each loading a Hub) takes ~20-30 s here."""
import pytest
import torch

from conftest import publish_random
from test_score_file import make_rows, read_out, write_jsonl

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local engine runs as each of the two 1-thread actors does
    yield
    torch.set_num_threads(threads)
    ray.shutdown()


def test_ray_engine_gives_the_local_engines_output(hub, tmp_path, local_ray):
    """A few hundred mixed rows (two bad ones) on a pool of two actors: the same parts, bytes and bad rows,
    and a job killed under the local engine resumes under Ray to the same output."""
    from adapterhub.batch import parts
    publish_random(hub, "news", seed=0)
    publish_random(hub, "music", seed=1)
    rows = make_rows(300, seed=5)
    rows[40] = {"user": "u40", "history": [], "candidates": [], "adapter": "news"}
    rows[250] = {"user": "u250", "history": [], "candidates": ["x"], "adapter": "podcasts"}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    opts = dict(k=5, part_rows=40, skip_bad=True)
    local = hub.score_file(src, tmp_path / "local", **opts)
    remote = hub.score_file(src, tmp_path / "ray", engine="ray", actors=2, threads=1, **opts)
    assert (remote["scored"], remote["bad"], remote["parts"]) == (local["scored"], local["bad"], 8) == (298, 2, 8)
    for name in [p.name for p in sorted((tmp_path / "local").glob("part-*"))] + ["_bad_rows.jsonl"]:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert len(read_out(tmp_path / "ray")) == 298

    real, n = parts.Output.commit, []

    def dying(self, index, *a):
        if len(n) == 3:
            raise KeyboardInterrupt
        n.append(index)
        return real(self, index, *a)

    parts.Output.commit = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            hub.score_file(src, tmp_path / "mixed", **opts)
    finally:
        parts.Output.commit = real
    resumed = hub.score_file(src, tmp_path / "mixed", engine="ray", actors=2, threads=1, **opts)
    assert resumed["resumed_parts"] == 3 and read_out(tmp_path / "mixed") == read_out(tmp_path / "local")
