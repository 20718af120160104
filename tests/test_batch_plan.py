"""batch_plan.py: the training batches saved at the first start and mapped at the next are exactly
those made afresh; a change of the settings or of the cache makes a new plan (the old one removed);
a damaged plan is made again, never an error."""

from __future__ import annotations

import itertools
import logging
import os

import numpy as np
import pytest

from conftest import Toy, make_toy_data, run_mt, toy_config  # noqa: F401  (the toy fixture is in conftest)
from mt import rundir
from mt.batch_plan import load_or_make_plan, plan_files, plan_key
from mt.batching import BatchStream, Position, plan_batches
from mt.idcache import load_ids, save_ids


def make_cache(run_dir, pairs: int = 400, seed: int = 0, longest: int = 40):
    """A real train id cache in `run_dir`, sentences of 0..longest ids; returns it mapped."""
    rng = np.random.default_rng(seed)
    side = lambda: [rng.integers(4, 90, size=rng.integers(0, longest + 1)).tolist() for _ in range(pairs)]  # noqa: E731
    save_ids(rundir.ids_file(run_dir, "train"), side(), side())
    return load_ids(rundir.ids_file(run_dir, "train"))


def plan_names(run_dir) -> set[str]:
    return {path.name for path in rundir.plan_dir(run_dir).iterdir()}


def same_batches(a, b) -> bool:
    return np.array_equal(a.order, b.order) and np.array_equal(a.bounds, b.bounds)


def stream_contents(ids, batches, count: int) -> list:
    stream = BatchStream(ids.src, ids.trg, batch_tokens=256, seed=3, max_len=32, batches=batches)
    return [(p.epoch, p.batches_done, b.src_ids.tolist(), b.trg_out.tolist())
            for p, b in itertools.islice(stream(Position(), prefetch=0), count)]


def test_a_second_start_maps_the_saved_plan_and_gets_exactly_the_batches_made_afresh(tmp_path):
    ids = make_cache(tmp_path)
    first = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    saved = plan_files(tmp_path, plan_key(tmp_path, 256, 32, 8))
    assert plan_names(tmp_path) == {path.name for path in saved}
    stamps = [path.stat().st_mtime_ns for path in saved]
    second = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    assert isinstance(second.order, np.memmap)  # mapped, not made again
    assert [path.stat().st_mtime_ns for path in saved] == stamps  # nor written again
    fresh = plan_batches(ids.src, ids.trg, 256, 32)
    assert same_batches(first, fresh) and same_batches(second, fresh)
    epochs = 2 * len(fresh) + 3  # the stream a run trains on, and resumes in, is the same
    assert stream_contents(ids, second, epochs) == stream_contents(ids, None, epochs)


@pytest.mark.parametrize("change", [{"batch_tokens": 512}, {"max_len": 16}])
def test_other_settings_make_a_new_plan_and_the_old_one_is_removed(tmp_path, change):
    ids = make_cache(tmp_path)
    old = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    old_names = plan_names(tmp_path)
    notes = rundir.plan_dir(tmp_path) / "notes.txt"  # not mt's: stays
    notes.write_text("mine\n")
    settings = {"batch_tokens": 256, "max_len": 32, **change}
    new = load_or_make_plan(tmp_path, ids, **settings)
    fresh = plan_batches(ids.src, ids.trg, settings["batch_tokens"], settings["max_len"])
    assert same_batches(new, fresh) and not same_batches(old, fresh)
    assert not old_names & plan_names(tmp_path)
    saved = plan_files(tmp_path, plan_key(tmp_path, **settings, pad_multiple=8))
    assert plan_names(tmp_path) == {path.name for path in saved} | {"notes.txt"}
    assert notes.read_text() == "mine\n"


def truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def garble(path):
    path.write_bytes(b"\x93NUMPY garbage, not an array header\n" * 3)


def of_another_length(path):
    np.save(path, np.arange(10, dtype=np.int32))


def bounds_falling(path):
    np.save(path, np.array([0, 300, 200, 400], dtype=np.int64))


def bounds_falling_unsigned(path):
    np.save(path, np.array([0, 300, 200, 400], dtype=np.uint64))  # np.diff wraps around: all "rising"


def an_index_out_of_range(path):
    order = np.load(path)
    order[len(order) // 2] = len(order) + 5  # before, an IndexError at the batch that took it
    np.save(path, order)


def an_index_repeated(path):
    order = np.load(path)
    order[3] = order[4]  # trained on one pair twice, another never
    np.save(path, order)


@pytest.mark.parametrize("damage, part", [(truncate, 0), (garble, 0), (of_another_length, 0), (an_index_out_of_range, 0),
                                          (an_index_repeated, 0), (truncate, 1), (garble, 1), (bounds_falling, 1),
                                          (bounds_falling_unsigned, 1)])
def test_a_damaged_plan_is_made_again_and_saved_over(tmp_path, caplog, damage, part):
    ids = make_cache(tmp_path)
    load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    path = plan_files(tmp_path, plan_key(tmp_path, 256, 32, 8))[part]
    damage(path)
    with caplog.at_level(logging.INFO, logger="mt.batch_plan"):
        again = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    assert "the saved training batches are" in caplog.text and "making them again" in caplog.text
    fresh = plan_batches(ids.src, ids.trg, 256, 32)
    assert same_batches(again, fresh)
    mapped = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)  # the file saved over is good
    assert isinstance(mapped.order, np.memmap) and same_batches(mapped, fresh)


def test_a_cache_written_again_never_meets_its_old_plan(tmp_path):
    """Same number of pairs, other lengths: the old plan would pass every shape check, and be wrong."""
    ids = make_cache(tmp_path, seed=0)
    old = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    old_names = plan_names(tmp_path)
    ids = make_cache(tmp_path, seed=1)
    new = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    fresh = plan_batches(ids.src, ids.trg, 256, 32)
    assert same_batches(new, fresh) and not same_batches(old, fresh)
    assert not old_names & plan_names(tmp_path)
    touched = rundir.ids_file(tmp_path, "train") / "src.offsets"  # even its mtime alone
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    assert plan_key(tmp_path, 256, 32, 8) not in {name.split(".")[0] for name in plan_names(tmp_path)}


def test_a_cache_prepare_encodes_again_gets_a_new_plan(toy):
    toy.prepare()
    ids = load_ids(rundir.ids_file(toy.run_dir, "train"))
    load_or_make_plan(toy.run_dir, ids, batch_tokens=256, max_len=32)
    old_names = plan_names(toy.run_dir)
    (rundir.ids_file(toy.run_dir, "train") / "src.tokens").write_bytes(b"damaged\n")
    toy.prepare()  # encodes the damaged cache again with the run's tokenizer
    ids = load_ids(rundir.ids_file(toy.run_dir, "train"))
    new = load_or_make_plan(toy.run_dir, ids, batch_tokens=256, max_len=32)
    assert not old_names & plan_names(toy.run_dir) and len(plan_names(toy.run_dir)) == 2
    assert same_batches(new, plan_batches(ids.src, ids.trg, 256, 32))


def test_a_run_dir_that_cannot_be_written_makes_its_plan_in_memory(tmp_path):
    ids = make_cache(tmp_path)
    rundir.plan_dir(tmp_path).write_text("a file where the plan folder goes\n")  # no folder can be made
    batches = load_or_make_plan(tmp_path, ids, batch_tokens=256, max_len=32)
    assert same_batches(batches, plan_batches(ids.src, ids.trg, 256, 32))


TINY = {"model__d_model": 16, "model__heads": 2, "model__encoder_layers": 1, "model__decoder_layers": 1,
        "model__ff_dim": 32, "training__validate_every": 1000, "training__save_every": 2, "training__log_every": 1}


def test_training_goes_on_over_a_damaged_plan(tmp_path):
    data = make_toy_data(tmp_path / "data", train=200, dev=10, test=5)
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=2, **TINY)
    run_mt("train", "--config", str(config))
    [order] = rundir.plan_dir(tmp_path / "run").glob("*.order.npy")
    order.write_bytes(b"not an array")
    config = toy_config(tmp_path / "a.yaml", data, tmp_path / "run", training__max_steps=4, **TINY)
    result = run_mt("train", "--config", str(config))
    assert "Traceback" not in result.stderr and "making them again" in result.stderr
    assert (tmp_path / "run/checkpoints/step_0000004.pt").is_file()
    assert np.load(order).ndim == 1  # saved over
