"""Progress of long steps: a tqdm bar with rate and ETA on a terminal, periodic log lines with them otherwise."""

from __future__ import annotations

import logging
import re

from ignite.engine import Engine

from axunet_bundle.progress import Progress, ProgressHandler, format_duration, progress

# "prepare: 2/4 case (50%), 3.2 case/s, elapsed 0:01, ETA 0:01"
LINE = re.compile(
    r"^(?P<desc>.+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+) \(\d+%\), [\d.e+-]+ \w+/s, elapsed [\d:]+, ETA "
)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if LINE.match(r.getMessage())]


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"


def test_without_terminal_logs_count_rate_and_eta(caplog):
    caplog.set_level(logging.INFO)
    items = list(progress(range(4), desc="prepare", unit="case", interval_s=0, terminal=False))
    assert items == [0, 1, 2, 3]
    logged = lines(caplog)
    assert [LINE.match(m)["done"] for m in logged] == ["1", "2", "3", "4"]  # the last item is not logged twice
    assert all(LINE.match(m)["total"] == "4" and LINE.match(m)["unit"] == "case" for m in logged)
    assert logged[-1].endswith("ETA 0:00")


def test_without_terminal_logs_at_most_every_interval_and_at_the_end(caplog):
    caplog.set_level(logging.INFO)
    with Progress(100, "synth", unit="case", interval_s=3600, terminal=False) as bar:
        for _ in range(100):
            bar.update()
    assert [LINE.match(m)["done"] for m in lines(caplog)] == ["100"]


def test_on_a_terminal_draws_a_tqdm_bar_with_rate(capsys, caplog):
    caplog.set_level(logging.INFO)
    for _ in progress(range(3), desc="infer", unit="case", terminal=True, interval_s=0):
        pass
    err = capsys.readouterr().err
    assert "infer" in err and "3/3" in err and "case/s" in err
    assert not lines(caplog)


def test_disabled_shows_nothing(capsys, caplog):
    caplog.set_level(logging.INFO)
    list(progress(range(3), desc="quiet", enabled=False, terminal=False, interval_s=0))
    list(progress(range(3), desc="quiet", enabled=False, terminal=True))
    assert not lines(caplog) and "quiet" not in capsys.readouterr().err


def test_engine_handler_counts_iterations_over_all_epochs(caplog):
    caplog.set_level(logging.INFO)
    engine = Engine(lambda engine, batch: None)
    ProgressHandler(desc="training", interval_s=0).attach(engine)
    engine.run(range(3), max_epochs=2)
    logged = lines(caplog)
    assert [LINE.match(m)["done"] for m in logged] == ["1", "2", "3", "4", "5", "6"]
    assert all(LINE.match(m)["total"] == "6" and LINE.match(m)["desc"].endswith("training") for m in logged)


def test_engine_handler_counts_only_what_is_left_of_a_resumed_run(caplog):
    caplog.set_level(logging.INFO)
    engine = Engine(lambda engine, batch: None)
    ProgressHandler(desc="training", interval_s=3600).attach(engine)
    engine.load_state_dict({"epoch": 1, "epoch_length": 3, "max_epochs": 2})
    engine.run(range(3))
    assert [(LINE.match(m)["done"], LINE.match(m)["total"]) for m in lines(caplog)] == [("6", "6")]


def test_multi_process_training_keeps_rank_0_only_handlers_off_other_ranks():
    """On ranks > 0 the handlers that write (stats, TensorBoard, progress, curves, pictures) are disabled by the
    ``rank`` id that multi_gpu_train.json sets, so that only rank 0 logs and draws while every rank trains and
    validates; rank 0 keeps them all."""
    from conftest import CONFIGS
    from monai.bundle import ConfigParser

    def enabled(section: str, rank: int) -> list[str]:
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / "train.json"))
        parser["rank"] = rank
        kept = []
        for i, handler in enumerate(parser[section]):
            where = f"{section}#{i}"
            if isinstance(handler, str):  # a reference to a named handler, e.g. "@validate#best_model_saver"
                where, handler = handler[1:], parser[handler[1:]]
            if not ("_disabled_" in handler and parser.get_parsed_content(f"{where}#_disabled_")):
                kept.append(handler["_target_"].rsplit(".", 1)[-1])
        return kept

    # every rank keeps the checkpoint handlers (the random states are gathered from all, the files written by rank
    # 0) and the run's settings (each rank checks a resume; rank 0 writes the file)
    kept_everywhere = ["RunSettings", "LrScheduleHandler", "ValidationHandler", "AtomicCheckpointSaver"]
    assert enabled("train#handlers", rank=1) == kept_everywhere
    assert enabled("validate#handlers", rank=1) == ["AtomicCheckpointSaver"]
    assert enabled("train#handlers", rank=0) == kept_everywhere + [
        "StatsHandler",
        "TensorBoardStatsHandler",
        "ProgressHandler",
    ]
    assert len(enabled("validate#handlers", rank=0)) == 4
    multi = ConfigParser()
    multi.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    assert multi["rank"] == "$dist.get_rank()"


def test_synth_and_prepare_log_progress_when_not_on_a_terminal(tiny_dataset, tmp_path, caplog):
    import pytest

    from axunet_bundle.cli import main

    caplog.set_level(logging.INFO)
    main(["synth", str(tmp_path / "data"), "--n", "2", "--size", "32", "--depth", "8"])
    with pytest.raises(SystemExit) as prepared:
        main(["prepare", str(tiny_dataset), str(tmp_path / "cache"), "--workers", "1", "--roi_size", "[64,64]"])
    assert prepared.value.code == 0
    ends = {(m["desc"], m["done"], m["total"]) for m in map(LINE.match, lines(caplog))}
    assert {("synthetic BraTS", "2", "2"), ("prepare", "4", "4")} <= ends
