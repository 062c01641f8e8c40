"""``actdict.signals.sigterm_raises``, the one SIGTERM handler of every command: the command's (cli.main,
not under torchrun) and the training's inside it (under torchrun too) nest; a handler set by anyone else is
kept. (Real commands and signals: test_resume, test_train_sigterm, test_train_sigterm_ddp.)"""

import os
import signal
import threading

import pytest

from actdict.signals import Terminated, sigterm_raises


class Training(BaseException):
    """The training's own (train.stopping.Terminated)."""


def test_the_training_s_inside_the_command_s_then_the_command_s_again():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    with pytest.raises(Terminated):
        with sigterm_raises(Terminated, torchrun=False):
            with pytest.raises(Training):
                with sigterm_raises(Training, torchrun=True):
                    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # else: pytest killed
                    os.kill(os.getpid(), signal.SIGTERM)
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert issubclass(Terminated, KeyboardInterrupt)  # every stage stops as on Ctrl-C (said: 143)


@pytest.mark.parametrize("torchrun", [False, True])
def test_under_torchrun_only_where_the_caller_says(monkeypatch, torchrun):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with sigterm_raises(Training, torchrun=torchrun):
        held = signal.getsignal(signal.SIGTERM)
    if torchrun:  # the training's
        with pytest.raises(Training):
            held()
    else:  # the command's: a harvest rank keeps Python's default
        assert held is signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_another_s_handler_is_kept_and_no_thread_but_the_main_one_installs():
    def theirs(*_):  # a program that calls cli.main, with a SIGTERM handler of its own
        pass

    for other in (theirs, signal.SIG_IGN):
        old = signal.signal(signal.SIGTERM, other)
        try:
            with sigterm_raises(Training, torchrun=True):
                assert signal.getsignal(signal.SIGTERM) is other
            assert signal.getsignal(signal.SIGTERM) is other
        finally:
            signal.signal(signal.SIGTERM, old)
    seen = []

    def in_thread() -> None:
        with sigterm_raises(Training, torchrun=True):
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [signal.SIG_DFL]


def test_the_training_s_steps_keep_another_s_handler_too():
    """train.stopping.sigterm_flag (the steps' and final saves') replaced any SIGTERM handler, SIG_IGN too: an
    ignored SIGTERM, ignored before the first step, stopped the training during its steps."""
    from actdict.train.stopping import sigterm_flag

    def theirs(*_):
        pass

    for other in (theirs, signal.SIG_IGN):
        old = signal.signal(signal.SIGTERM, other)
        try:
            with sigterm_flag() as stop:
                assert signal.getsignal(signal.SIGTERM) is other
                os.kill(os.getpid(), signal.SIGTERM)
                assert not stop.flag.is_set()
            assert signal.getsignal(signal.SIGTERM) is other
        finally:
            signal.signal(signal.SIGTERM, old)
    with sigterm_raises(Training, torchrun=True):  # the training's own (sigterm_ends): the flag replaces it
        with sigterm_flag() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.flag.wait(5)
    with sigterm_flag() as stop:  # Python's default
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.flag.wait(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


@pytest.mark.parametrize(("said", "world"), [(None, 1), ("", 1), (" ", 1), ("abc", 1), ("-2", 1), ("0", 0),
                                             ("1", 1), ("2", 2), (" 4\n", 4)])
def test_a_world_size_torchrun_never_sets_is_one_process(monkeypatch, capsys, said, world):
    """WORLD_SIZE blank (a script's ``export WORLD_SIZE=$N`` of an unset N) or not a number: int() of it
    was a ValueError traceback from every command, before its first line (sigterm_raises asks at the
    start) and from the error line meant to say why; it is one process, as unset, for the commands, the
    harvest's ranks and the training's."""
    from actdict import cli
    from actdict.harvest.dist import init_ranks
    from actdict.signals import under_torchrun, world_size
    from actdict.train.dist import from_env

    if said is None:
        monkeypatch.delenv("WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("WORLD_SIZE", said)
    monkeypatch.setenv("RANK", "")  # a leftover like it: read only under torchrun
    assert world_size() == world and under_torchrun() is (world > 1)
    if world > 1:
        return
    assert init_ranks().world == 1 and (from_env().world, from_env().rank) == (1, 0)
    assert cli.main(["store", "/nonexistent/store"]) == 2
    assert capsys.readouterr().err == ("actdict store: no activation store at /nonexistent/store (no "
                                       "<hook>/manifest.json found)\n")


@pytest.mark.parametrize("said", ["", " ", "abc", "-1"])
@pytest.mark.parametrize("name", ["RANK", "LOCAL_RANK"])
def test_a_rank_torchrun_never_sets_is_a_config_error_naming_it(monkeypatch, capsys, name, said):
    """WORLD_SIZE=2 set by hand beside a blank or non-numeric RANK / LOCAL_RANK: the training's ``from_env``
    (and the harvest's ranks) raised int()'s ValueError traceback, and ``print_error``, reading them again,
    raised it over the error line it was printing. The ranks are now a one-line ConfigError naming the
    variable, and the error line reads them as ``signals.rank`` does (0)."""
    from actdict.config import ConfigError
    from actdict.errors import ActdictError, print_error
    from actdict.harvest.dist import init_ranks
    from actdict.train.dist import from_env

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(name, said)
    want = (f"{name}={said!r} is not a rank number, with WORLD_SIZE=2: launch the command with torchrun, "
            "which sets RANK, LOCAL_RANK and WORLD_SIZE, or unset WORLD_SIZE to run it in one process")
    assert print_error("actdict", ActdictError("a rank's own")) == 2
    rank = 1 if name == "LOCAL_RANK" else 0
    assert capsys.readouterr().err == f"actdict (rank {rank} of 2): ActdictError: a rank's own\n"
    for ranks in (from_env, init_ranks):  # the harvest's: before torch's rendezvous reads them
        with pytest.raises(ConfigError) as e:
            ranks()
        assert str(e.value) == want
    assert print_error("actdict", e.value) == 2  # the first rank of the node says it
    assert capsys.readouterr().err == ("" if name == "RANK" else f"actdict: config error: {want}\n")
