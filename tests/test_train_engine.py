"""The shared training loop on a toy method: determinism, resume, checkpoints, signals, NaN guard."""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from vidbooth.config.subject import IdentityConfig
from vidbooth.config.train import TrainConfig
from vidbooth.engine import train as engine
from vidbooth.errors import Interrupted, UserError


class ToyRegression:
    """Fit y = x W + noise; implements the `Method` protocol with one frozen and one trainable layer."""

    def __init__(self, poison_at_call: int | None = None, on_call=None):
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.head = nn.Linear(4, 2)
        self.calls = 0
        self.poison_at_call = poison_at_call
        self.on_call = on_call

    def trainable_parameters(self):
        return list(self.head.parameters())

    def loss(self, batch, generator):
        self.calls += 1
        if self.on_call is not None:
            self.on_call(self.calls)
        noise = torch.randn(batch["x"].shape[0], 2, generator=generator) * 0.1
        pred = self.head(self.frozen(batch["x"]))
        loss = nn.functional.mse_loss(pred, batch["y"] + noise)
        return loss * float("nan") if self.calls == self.poison_at_call else loss

    def state_dict(self):
        return self.head.state_dict()

    def load_state_dict(self, state):
        self.head.load_state_dict(state)


def toy_data(n: int = 7) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    xs = torch.randn(n, 4, generator=g)
    ys = xs[:, :2] * 2.0
    return [{"x": x, "y": y} for x, y in zip(xs, ys, strict=True)]


def full_loss(method: ToyRegression) -> float:
    batch = torch.utils.data.default_collate(toy_data())
    with torch.no_grad():
        return float(nn.functional.mse_loss(method.head(method.frozen(batch["x"])), batch["y"]))


def make_method(**kw) -> ToyRegression:
    engine.seed_everything(0)
    return ToyRegression(**kw)


def scrambled_method() -> ToyRegression:
    """Same frozen layer, other trainable weights: what it ends with must come from the checkpoint."""
    method = make_method()
    with torch.no_grad():
        for p in method.trainable_parameters():
            p.add_(1.0)
    return method


def config(**kw) -> TrainConfig:
    base = dict(steps=12, lr=0.05, batch_size=3, grad_accumulation=2, checkpoint_every=4, lr_schedule="cosine")
    return TrainConfig(**(base | kw))


@pytest.fixture
def accelerator():
    """One per test: a test that resets accelerate's shared state (fresh_accelerate_state) leaves an earlier
    Accelerator unusable, whatever order the tests run in."""
    return engine.make_accelerator("auto", device="cpu")


def test_loss_decreases_and_is_deterministic(tmp_path, accelerator):
    a, b = make_method(), make_method()
    before = full_loss(a)
    ra = engine.train(a, toy_data(), config(), tmp_path / "a", accelerator)
    rb = engine.train(b, toy_data(), config(), tmp_path / "b", accelerator)
    assert ra.step == 12 and len(ra.losses) == 12
    assert ra.losses == rb.losses
    assert full_loss(a) < 0.9 * before
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not any(p.requires_grad for p in a.frozen.parameters())


def test_resume_gives_bit_identical_weights(tmp_path, accelerator):
    whole = make_method()
    uninterrupted = engine.train(whole, toy_data(), config(), tmp_path / "whole", accelerator)

    run = tmp_path / "split"
    first = make_method()
    cfg = config(checkpoint_every=5, keep_checkpoints=3)
    engine.train(first, toy_data(), cfg, run, accelerator, signature={"k": 1})
    # pretend the run died after step 5: keep only that checkpoint
    for folder in engine.list_checkpoints(run)[1:]:
        shutil.rmtree(folder)
    assert [p.name for p in engine.list_checkpoints(run)] == ["step-0000005"]

    second = scrambled_method()
    cfg = config(checkpoint_every=5)
    result = engine.train(second, toy_data(), cfg, run, accelerator, resume=True, signature={"k": 1})
    assert result.start_step == 5 and len(result.losses) == 7
    for key, value in whole.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    # the loss the manifest records: of the last ten steps, three of them before the resume (had been the last 7)
    assert result.recent_losses == uninterrupted.losses[-10:] and result.loss == uninterrupted.loss
    assert result.loss != sum(result.losses) / 7


def test_checkpoints_are_safetensors_and_json(tmp_path, accelerator):
    engine.train(make_method(), toy_data(), config(keep_checkpoints=2), tmp_path, accelerator)
    names = [p.name for p in engine.list_checkpoints(tmp_path)]
    assert names == ["step-0000008", "step-0000012"]  # every 4 steps and the last, pruned to 2
    files = sorted(p.name for p in engine.list_checkpoints(tmp_path)[-1].iterdir())
    assert files == sorted([engine.OPTIMIZER_FILE, engine.STATE_FILE, engine.TRAINABLE_FILE])
    state = json.loads((engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE).read_text())
    assert state["step"] == 12 and state["signature"]["train"]["lr"] == 0.05


def test_resuming_a_finished_run_runs_no_step(tmp_path, accelerator):
    done = make_method()
    finished = engine.train(done, toy_data(), config(), tmp_path, accelerator)
    again = scrambled_method()
    result = engine.train(again, toy_data(), config(), tmp_path, accelerator, resume=True)
    assert result.start_step == result.step == 12 and result.losses == []
    assert all(torch.equal(done.state_dict()[k], v) for k, v in again.state_dict().items())
    last = json.loads((engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE).read_text())
    assert last["recent_losses"] == finished.losses[-10:]
    assert result.loss == finished.loss > 0  # the finished run's, not NaN (the manifests record it)


def test_a_checkpoint_without_recent_losses_resumes_with_its_own_loss_and_a_damaged_list_is_refused(tmp_path,
                                                                                                    accelerator):
    """Checkpoints saved before the 51st session hold no recent_losses: their resumed run goes on as it did."""
    engine.train(make_method(), toy_data(), config(), tmp_path, accelerator)
    state_file = engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE
    state = json.loads(state_file.read_text())
    del state["recent_losses"]
    state_file.write_text(json.dumps(state))
    result = engine.train(scrambled_method(), toy_data(), config(), tmp_path, accelerator, resume=True)
    assert result.losses == [] and result.loss == state["loss"] > 0
    for damaged in (["0.5"], "0.5", {"0": 0.5}, [True], [0.5, None]):
        state_file.write_text(json.dumps(state | {"recent_losses": damaged}))
        with pytest.raises(UserError, match="its recent_losses in state.json is of another kind"):
            engine.train(scrambled_method(), toy_data(), config(), tmp_path, accelerator, resume=True)


@pytest.mark.parametrize("written", ["NaN", "Infinity", "-Infinity"])
def test_a_recent_loss_that_is_not_finite_is_refused_as_unreadable(tmp_path, accelerator, written):
    """A step whose loss is not finite stops the run before it is kept, so no save writes one: an edited
    state.json's had been taken, and the manifest's final_loss written as NaN, which strict JSON readers refuse."""
    engine.train(make_method(), toy_data(), config(), tmp_path, accelerator)
    state_file = engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(state | {"recent_losses": [0.5, "X"]}).replace('"X"', written))
    with pytest.raises(UserError, match=r"cannot be read \(damaged or cut short: its recent_losses in state\.json "
                                        r"is of another kind\)"):
        engine.train(scrambled_method(), toy_data(), config(), tmp_path, accelerator, resume=True)


@pytest.mark.parametrize("written", ["NaN", "Infinity", "-Infinity", "true"])
def test_a_checkpoint_s_loss_that_is_not_a_finite_number_is_refused_as_unreadable(tmp_path, accelerator, written):
    """As a recent loss: no save writes one (true is an int to Python), and an edited state.json's had been taken."""
    engine.train(make_method(), toy_data(), config(), tmp_path, accelerator)
    state_file = engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(state | {"loss": "X"}).replace('"X"', written))
    with pytest.raises(UserError, match=r"cannot be read \(damaged or cut short: its loss in state\.json is missing "
                                        r"or of another kind\)"):
        engine.train(scrambled_method(), toy_data(), config(), tmp_path, accelerator, resume=True)


def test_a_checkpoint_s_recent_losses_past_ten_count_their_last_ten(tmp_path, accelerator):
    """An edited list of more than ten losses: the loss is of the last ten, as the engine keeps them."""
    finished = engine.train(make_method(), toy_data(), config(), tmp_path, accelerator)
    state_file = engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps(state | {"recent_losses": [100.0, 100.0] + state["recent_losses"]}))
    result = engine.train(scrambled_method(), toy_data(), config(), tmp_path, accelerator, resume=True)
    assert result.losses == [] and result.recent_losses == finished.losses[-10:] and result.loss == finished.loss
    assert result.earlier_losses == finished.losses[-10:]  # up to ten, as documented


def test_resume_refuses_other_settings(tmp_path, accelerator):
    engine.train(make_method(), toy_data(), config(steps=4, checkpoint_every=2), tmp_path, accelerator)
    with pytest.raises(UserError, match=r"other settings \(train\.lr was 0\.05, now 0\.1\)"):
        engine.train(make_method(), toy_data(), config(steps=4, lr=0.1), tmp_path, accelerator, resume=True)


def test_other_settings_are_refused_before_the_model_loads_from_what_is_known_without_it(tmp_path, accelerator):
    """refuse_other_settings compares the training settings and the given keys only (the base's fingerprint needs
    the model); it passes what it cannot judge on to resuming."""
    engine.train(make_method(), toy_data(), config(steps=4, checkpoint_every=2), tmp_path, accelerator,
                 signature={"base": "abc", "photos": ["a"]})
    engine.refuse_other_settings(tmp_path, True, config(steps=4), {"photos": ["a"]}, accelerator)  # the same
    engine.refuse_other_settings(tmp_path, False, config(steps=4, lr=0.1), {"photos": ["b"]}, accelerator)
    engine.refuse_other_settings(tmp_path / "none", True, config(steps=4, lr=0.1), {}, accelerator)
    with pytest.raises(UserError, match=r"step-0000004: it was trained with other settings \(photos was \[a\], "
                       r"now \[b\]; train\.lr was 0\.05, now 0\.1\); use the same settings"):
        engine.refuse_other_settings(tmp_path, True, config(steps=4, lr=0.1), {"photos": ["b"]}, accelerator)
    with pytest.raises(UserError, match=r"other settings \(data"):  # a key the checkpoint lacks differs too
        engine.refuse_other_settings(tmp_path, True, config(steps=4), {"data": 1}, accelerator)
    (engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE).write_text("{")
    engine.refuse_other_settings(tmp_path, True, config(steps=4, lr=0.1), {}, accelerator)  # resuming says so


def test_a_resume_refusal_names_the_stage_and_the_flag_the_user_passes(tmp_path, accelerator):
    """It had said only 'train.lr', whatever the stage ('identity.train' in a subject) and whatever its flag."""
    flags = {"identity.train.lr": "--lr", "identity.train.steps": "--identity-steps", "data.num_frames": "--frames"}
    first = config(steps=4, checkpoint_every=2)
    first.locate("identity.train", flags)
    engine.train(make_method(), toy_data(), first, tmp_path, accelerator, signature={"data": {"num_frames": 8}})
    second = config(steps=4, lr=0.1)
    second.locate("identity.train", flags)
    with pytest.raises(UserError) as refused:
        engine.train(make_method(), toy_data(), second, tmp_path, accelerator, resume=True,
                     signature={"data": {"num_frames": 4}, "photos": ["a" * 64]})
    assert (
        "it was trained with other settings (data.num_frames (--frames) was 8, now 4; photos; identity.train.lr (--lr) "
        "was 0.05, now 0.1); use the same settings, or rerun with --overwrite instead of --resume to start over"
    ) in str(refused.value)


def test_a_resume_refusal_shows_an_unset_value_a_short_list_and_what_changed_in_an_adapter_spec(tmp_path, accelerator):
    """train-motion --resume with --stride on a run that had none, another --caption, or another adapter.hidden_ratio
    had been named without values ('data.stride (--stride)', 'captions', 'adapter': the spec is JSON text)."""
    from vidbooth.cli.motion import FLAGS

    def spec(hidden_ratio):
        return json.dumps({"cond_dim": 16, "hidden_ratio": hidden_ratio, "targets": ["ff"]}, sort_keys=True)

    def located():
        cfg = config(steps=2)
        cfg.locate("train", FLAGS)
        return cfg

    then = {"data": {"stride": None}, "captions": [""], "adapter": spec(0.5), "clips": ["a" * 64]}
    engine.train(make_method(), toy_data(), located(), tmp_path, accelerator, signature=then)
    now = {"data": {"stride": 2}, "captions": ["a dog"], "adapter": spec(0.25), "clips": ["b" * 64]}
    with pytest.raises(UserError) as refused:
        engine.train(make_method(), toy_data(), located(), tmp_path, accelerator, resume=True, signature=now)
    assert ("other settings (adapter.hidden_ratio was 0.5, now 0.25; captions (--caption) was [''], now [a dog]; "
            "clips; data.stride (--stride) was none, now 2)") in str(refused.value)


def test_resume_signature_holds_process_count_and_precision_beyond_the_defaults():
    """Another process count changes the batch per step and the data order, another precision the numbers: a
    run continued under them is refused. The single-process full-precision signature keeps its old form, so
    runs checkpointed before these keys existed stay resumable."""
    from types import SimpleNamespace

    def signature(processes, mixed_precision, dtype=torch.float32):
        launch = SimpleNamespace(num_processes=processes, mixed_precision=mixed_precision)
        return engine._full_signature(config(), {"k": 1} | engine.dtype_signature(dtype), launch)

    plain = signature(1, "no")
    assert set(plain) == {"train", "k"} and not {"processes", "resolved_mixed_precision"} & set(plain["train"])
    assert signature(2, "no")["train"]["processes"] == 2
    assert signature(1, "bf16")["train"]["resolved_mixed_precision"] == "bf16"
    assert signature(1, "no", torch.float16)["base_dtype"] == "torch.float16"
    assert len({json.dumps(s, sort_keys=True) for s in (plain, signature(2, "no"), signature(1, "bf16"))}) == 3


def test_resume_without_checkpoint_starts_over(tmp_path, accelerator):
    result = engine.train(make_method(), toy_data(), config(steps=2), tmp_path, accelerator, resume=True)
    assert result.start_step == 0 and result.step == 2


def test_a_run_without_resume_says_it_discards_an_earlier_checkpoint(tmp_path, accelerator, monkeypatch):
    import badinputs

    warned = badinputs.capture_warnings(monkeypatch)
    engine.train(make_method(), toy_data(), config(steps=2, checkpoint_every=1), tmp_path, accelerator)
    assert warned == []
    result = engine.train(make_method(), toy_data(), config(steps=2), tmp_path, accelerator)
    assert result.start_step == 0 and warned == [
        "starting over: the checkpoint of an earlier, stopped run (step-0000002) is discarded; --resume continues "
        "a stopped run instead"
    ]


def test_signal_saves_checkpoint_and_resumes(tmp_path, accelerator):
    def send_sigterm(call):
        if call == 7:  # during step 4 (2 micro-batches per step)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Interrupted) as info:
        engine.train(make_method(on_call=send_sigterm), toy_data(), config(checkpoint_every=0), tmp_path, accelerator)
    assert info.value.exit_code == 143 and "--resume" in str(info.value)
    assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000004"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    killed_save = tmp_path / engine.CHECKPOINTS / ".tmp-step-0000006-x1y2z3"  # SIGKILL while saving leaves this
    (killed_save / "trainable.safetensors").parent.mkdir()
    (killed_save / "trainable.safetensors").write_bytes(b"half")

    whole = make_method()
    uninterrupted = engine.train(whole, toy_data(), config(), tmp_path / "whole", accelerator)
    resumed = scrambled_method()
    result = engine.train(resumed, toy_data(), config(checkpoint_every=0), tmp_path, accelerator, resume=True)
    assert all(torch.equal(whole.state_dict()[k], v) for k, v in resumed.state_dict().items())
    assert not killed_save.exists()  # the resume removed it: it had stayed until the run was saved
    # the stop's checkpoint kept steps 1-4: the loss is of steps 3-12, as the uninterrupted run's
    assert result.recent_losses == uninterrupted.losses[-10:] and result.loss == uninterrupted.loss


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_stops_at_once_and_names_the_checkpoint_to_resume_from(tmp_path, accelerator, second):
    """A second Ctrl-C (or the SIGTERM a launcher sends on one) stops within the step, with no checkpoint of it: the
    line says so and which checkpoint --resume continues from (it had said 'interrupted' alone)."""
    def signals(call):
        if call == 7:  # during step 4 (2 micro-batches per step)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), second)

    with pytest.raises(Interrupted) as info:
        engine.train(make_method(on_call=signals), toy_data(), config(checkpoint_every=2), tmp_path, accelerator)
    assert info.value.exit_code == 128 + second
    assert str(info.value) == (
        f"stopped at once by a second {signal.Signals(second).name} at step 3/12; the last checkpoint is "
        f"{tmp_path / engine.CHECKPOINTS / 'step-0000002'}: rerun the same command with --resume to continue")
    with pytest.raises(Interrupted, match="at step 0/12; no checkpoint was saved yet: rerun the same command "
                                                r"\(it starts over\)$"):
        engine.train(make_method(on_call=lambda call: call == 1 and signals(7)), toy_data(), config(),
                     tmp_path / "none", accelerator)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_machine_that_does_not_see_the_checkpoint_is_told_where_it_is(tmp_path, accelerator, monkeypatch):
    """A second machine whose library is not shared: a second signal had said that no checkpoint was saved and to
    start over, and its library's own older checkpoint (an earlier run's, left by --overwrite) was taken for the
    first process's."""
    def signals(call):
        if call == 7:  # during step 4 (2 micro-batches per step)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patched, pytest.raises(Interrupted) as info:
        patched.setattr(engine, "sees_checkpoint", lambda run_dir, step: False)
        engine.train(make_method(on_call=signals), toy_data(), config(checkpoint_every=2), tmp_path, accelerator)
    assert str(info.value) == (
        "stopped at once by a second SIGTERM at step 3/12; the first process saved the checkpoint of step 2 in a "
        "library that this machine does not see: rerun the same command with --resume once every machine sees it "
        f"(one VIDBOOTH_HOME on a file system they share, or {tmp_path} copied from the first machine)")
    assert engine.sees_checkpoint(tmp_path, 2) and not engine.sees_checkpoint(tmp_path, 4)
    another = SimpleNamespace(is_main_process=False)  # stopped together after step 4, of which it sees no checkpoint
    assert str(engine._stopped(signal.SIGTERM, 4, config(), tmp_path, another)).startswith(
        "stopped by SIGTERM at step 4/12; the first process saved the checkpoint of step 4 in a library that this "
        "machine does not see")
    assert str(engine._stopped(signal.SIGTERM, 2, config(), tmp_path, another)) == (
        f"stopped by SIGTERM at step 2/12; checkpoint saved in {tmp_path}: rerun the same command with --resume to "
        "continue")


def test_a_cpu_time_limit_stops_after_the_step_and_its_reminders_do_not_stop_at_once(tmp_path, accelerator):
    """Past a soft CPU-time limit (`ulimit -St`, a batch scheduler's) the kernel sends SIGXCPU, then again each second:
    its default had dumped core with no checkpoint. The first stops the run after its step, as SIGTERM does; the
    reminders are not a second signal (which stops at once)."""
    from vidbooth.cli.app import _stop_signals
    from vidbooth.errors import clear_stops

    def limits(call):
        if call == 7:  # during step 4 (2 micro-batches per step)
            for _ in range(3):
                os.kill(os.getpid(), signal.SIGXCPU)

    clear_stops()
    try:
        with _stop_signals(), pytest.raises(Interrupted) as info:
            engine.train(make_method(on_call=limits), toy_data(), config(checkpoint_every=0), tmp_path, accelerator)
        assert info.value.exit_code == 128 + signal.SIGXCPU
        assert str(info.value).startswith("stopped by SIGXCPU at step 4/12; checkpoint saved")
        assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000004"]
        with _stop_signals():
            os.kill(os.getpid(), signal.SIGXCPU)  # a reminder while the command tells how it stopped: not raised
        assert signal.getsignal(signal.SIGXCPU) == signal.SIG_DFL
        clear_stops()  # as each command begins: its first SIGXCPU stops it
        with _stop_signals(), pytest.raises(Interrupted, match="^stopped by SIGXCPU$"):
            os.kill(os.getpid(), signal.SIGXCPU)
    finally:
        clear_stops()


def test_every_process_stops_on_the_same_signal():
    from vidbooth.engine.train import _signal_agreed, _signal_votes

    def agreed(*got):
        return _signal_agreed([sum(votes) for votes in zip(*(_signal_votes(signum) for signum in got))])

    assert agreed(None, None) is None and agreed(signal.SIGINT, None) == signal.SIGINT
    assert agreed(signal.SIGINT, signal.SIGXCPU) == signal.SIGXCPU
    assert agreed(signal.SIGXCPU, signal.SIGTERM, signal.SIGINT) == signal.SIGTERM


def test_a_signal_the_process_was_started_ignoring_stays_ignored(tmp_path, accelerator):
    """A script's background job (`vidbooth train-motion ... &`) starts with SIGINT ignored, so that Ctrl-C in the
    script's terminal leaves it running; vidbooth's handlers (the command line's, training's, a save's) had taken
    SIGINT back and stopped the job. SIGTERM still stops it after its step."""
    from vidbooth.cli.app import _stop_signals
    from vidbooth.errors import held_stops

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        def signals(call):
            if call == 3:
                os.kill(os.getpid(), signal.SIGINT)  # ignored: training goes on
            if call == 7:
                assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)

        with _stop_signals(), pytest.raises(Interrupted, match="stopped by SIGTERM at step 4/12") as info:
            engine.train(make_method(on_call=signals), toy_data(), config(checkpoint_every=0), tmp_path, accelerator)
        assert info.value.exit_code == 143
        with _stop_signals(), held_stops("saved"):
            os.kill(os.getpid(), signal.SIGINT)  # neither held nor raised afterwards
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_last_step_after_the_check_still_stops(tmp_path, accelerator, monkeypatch, signum):
    """Ctrl-C during the last step's optimizer step or checkpoint, after the loop had checked for a signal: the run
    had ended as if nothing happened, and the command went on to save (and render a preview) and exit 0."""
    real_step, steps = engine._optimizer_step, []

    def step_then_signal(*args):
        real_step(*args)
        steps.append(1)
        if len(steps) == 3:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(engine, "_optimizer_step", step_then_signal)
    with pytest.raises(Interrupted, match="at step 3/3; checkpoint saved") as info:
        engine.train(make_method(), toy_data(), config(steps=3), tmp_path, accelerator)
    assert info.value.exit_code == 128 + signum
    assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000003"]  # --resume saves at once


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, accelerator):
    method = make_method(poison_at_call=11)  # step 6
    cfg = config()
    cfg.locate("identity.train", {"identity.train.lr": "--lr"})  # as load_config does: the message names them so
    with pytest.raises(UserError, match=r"loss became nan at step 6.*step-0000004; lower the learning rate "
                                        r"identity.train.lr \(--lr\) and run again with --overwrite"):
        engine.train(method, toy_data(), cfg, tmp_path, accelerator)
    assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000004"]
    assert all(torch.isfinite(v).all() for v in method.state_dict().values())
    cfg.locate("identity.train", {})  # train-subject: no --lr flag of its own
    with pytest.raises(UserError, match=r"lower the learning rate identity.train.lr \(--set identity.train.lr=N\)"):
        engine.train(make_method(poison_at_call=11), toy_data(), cfg, tmp_path / "again", accelerator)
    # a frozen base in half precision without autocast (nano's recipes with --precision bf16): fp32 is offered too
    with pytest.raises(engine.LossNotFinite, match=r"\(or train in fp32: --precision fp32 --set "
                                                   r"identity.train.mixed_precision=no\)") as diverged:
        engine.train(make_method(poison_at_call=11), toy_data(), cfg, tmp_path / "half", accelerator,
                     signature={"base_dtype": "torch.bfloat16"})
    assert diverged.value.half and diverged.value.step == 6


def test_weights_made_non_finite_by_the_last_step_are_not_kept(tmp_path, accelerator, monkeypatch):
    """The loss is checked before each update; an update that overflows a weight (fp16 without a loss scaler) is
    found by the next step's loss, but the last step's had been saved, checkpoint and artifact."""
    real_step = engine._optimizer_step

    def overflowing_last_step(optimizer, params, cfg, step, accelerator):
        real_step(optimizer, params, cfg, step, accelerator)
        if step + 1 == cfg.steps:
            with torch.no_grad():
                params[0][0, 0] = float("inf")

    monkeypatch.setattr(engine, "_optimizer_step", overflowing_last_step)
    cfg = config(steps=6)
    cfg.locate("train", {"train.lr": "--lr"})
    with pytest.raises(engine.LossNotFinite, match=r"^the trained weights became NaN or infinite at step 6: training "
                                                   r"stopped and the last good checkpoint is .*step-0000004; lower"):
        engine.train(make_method(), toy_data(), cfg, tmp_path, accelerator)
    assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000004"]


def test_an_io_error_saving_a_checkpoint_is_not_told_as_a_full_disk_and_keeps_the_one_before(tmp_path, accelerator,
                                                                                               monkeypatch):
    save = engine.save_checkpoint

    def failing_at_step_4(run_dir, step, *args):
        if step == 4:
            raise OSError(errno.EIO, "Input/output error", str(run_dir))
        return save(run_dir, step, *args)

    monkeypatch.setattr(engine, "save_checkpoint", failing_at_step_4)
    with pytest.raises(OSError) as caught:
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path, accelerator)
    assert caught.value.errno == errno.EIO and not isinstance(caught.value, engine.CheckpointDiskFull)
    assert caught.value.kept_checkpoint.endswith("step-0000002")
    assert [p.name for p in engine.list_checkpoints(tmp_path)] == ["step-0000002"]


def test_a_run_resumes_with_gradient_checkpointing_switched_on_or_off(accelerator):
    """It changes memory and time, not the weights (tests/test_recompute.py): not part of what a resume checks."""
    on, off = config(gradient_checkpointing=True), config(gradient_checkpointing=False)
    assert engine._full_signature(on, {}, accelerator) == engine._full_signature(off, {}, accelerator)
    assert engine._full_signature(config(lr=0.1), {}, accelerator) != engine._full_signature(off, {}, accelerator)


def test_lr_schedule():
    cfg = TrainConfig(steps=10, lr=1.0, lr_warmup_steps=2, lr_schedule="linear")
    assert [engine.lr_at(s, cfg) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert engine.lr_at(9, cfg) == pytest.approx(1 / 8)


def test_batches_cover_every_item_each_epoch():
    first_epoch = engine.batch_indices(5, 5, seed=3, first_position=0)
    assert sorted(first_epoch) == list(range(5))
    assert engine.batch_indices(5, 2, seed=3, first_position=5) == engine.batch_indices(5, 5, 3, 5)[:2]


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0.0), dict(lr_schedule="step"), dict(mixed_precision="fp8"),
                                 dict(lr=1e39), dict(lr=1e37, adam_beta1=0.99999)])
def test_config_validation(bad):
    with pytest.raises(UserError, match="^train\\."):
        TrainConfig(**bad).check()
    with pytest.raises(UserError, match="^identity\\.train\\."):  # named where it sits in a subject's config
        IdentityConfig(train=TrainConfig(**bad))


def test_a_warm_up_longer_than_the_training_is_warned_of(tmp_path, accelerator, monkeypatch):
    """lr_warmup_steps 1000 with 3 steps trained at a thousandth of the learning rate without a word."""
    from tests.badinputs import capture_warnings

    warnings = capture_warnings(monkeypatch)
    for warmup, run in ((3, "fits"), (4, "longer")):  # 3 of 3: the last step trains at the full rate
        engine.train(make_method(), toy_data(), config(steps=3, lr_warmup_steps=warmup), tmp_path / run, accelerator)
    assert warnings == ["train.lr_warmup_steps 4 is more than train.steps 3: the learning rate never reaches "
                        "train.lr; shorten the warm-up"]


def test_the_largest_accepted_lr_trains_without_overflowing_float32(tmp_path, accelerator):
    """1e39 used to reach AdamW and end in a traceback ('value cannot be converted to type float without
    overflow'); now the check refuses it, and the largest rate it accepts runs (to a NaN loss, caught as usual)."""
    with pytest.raises(UserError, match=r"^train\.lr must be at most 3\.4e\+37, got 1e\+38: .*overflows float32"):
        config(lr=1e38).check()
    largest = config(lr=3.4e37, steps=3)
    largest.check()
    with pytest.raises(UserError, match="loss became"):
        engine.train(make_method(), toy_data(), largest, tmp_path / "run", accelerator)


def test_a_cuda_index_picks_the_gpu_of_a_single_process(monkeypatch):
    """`--device cuda:1` trains on GPU 1: accelerate gives one process the current GPU, so vidbooth makes that
    GPU current, and loads the base there. Under a launcher the launcher's GPU stands. (CUDA faked: no GPU here.)"""
    import accelerate

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[-1] if current else 0)

    class OneGpuAccelerator:  # what accelerate sets up for one process on a GPU
        num_processes, device = 1, torch.device("cuda")

        def __init__(self, cpu, mixed_precision, kwargs_handlers):
            assert not cpu

    monkeypatch.setattr(accelerate, "Accelerator", OneGpuAccelerator)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert engine.backbone_device(engine.make_accelerator("no", "cuda:1")) == "cuda:1" and current == [1]
    with pytest.raises(UserError, match=r"--device cuda:2: this machine has 2 GPUs, cuda:0 to cuda:1"):
        engine.make_accelerator("no", "cuda:2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    engine.make_accelerator("no", "cuda:0")
    assert current == [1]


def test_a_resumed_run_gives_each_gpu_its_own_random_state_back_with_more_than_ten_gpus():
    """Sorted as text, rng.cuda.10 came before rng.cuda.2: on 11 or more GPUs the states went to other devices."""
    from vidbooth.engine.train import _cuda_rng_states

    saved = {f"rng.cuda.{index}": torch.tensor([index]) for index in range(12)} | {"rng.torch": torch.tensor([99])}
    assert [int(state) for state in _cuda_rng_states(dict(sorted(saved.items())))] == list(range(12))


def test_a_parameter_no_process_gave_a_gradient_keeps_none_across_processes(monkeypatch):
    """As on one process, where AdamW skips it: a zero gradient moved it by its momentum and weight decay."""
    from types import SimpleNamespace

    from vidbooth.engine.train import _average_gradients

    monkeypatch.setattr("accelerate.utils.reduce", lambda tensor, reduction: tensor)  # every process the same
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    used.grad = torch.tensor([1.0, 2.0, 3.0])
    _average_gradients([used, unused], SimpleNamespace(num_processes=2))
    assert torch.equal(used.grad, torch.tensor([1.0, 2.0, 3.0])) and unused.grad is None


def test_a_resume_that_finds_no_stopped_run_is_warned_of_once_for_the_command(tmp_path, accelerator, monkeypatch):
    """Said once, before the model loads, for all the command's stages: a second stage that had not begun (the
    first resumed) had been warned of as 'nothing to resume' too."""
    from tests.badinputs import capture_warnings

    warnings = capture_warnings(monkeypatch)
    first, second = tmp_path / "runs" / "first", tmp_path / "runs" / "second"
    engine.refuse_to_discard([first, second], resume=True, overwrite=False)
    assert warnings == [f"nothing to resume in {tmp_path / 'runs'}: starting from step 0"]
    warnings.clear()
    engine.train(make_method(), toy_data(), config(steps=2, checkpoint_every=1), first, accelerator)  # stage 1 left
    assert engine.list_checkpoints(first)  # the engine's train() leaves them; the commands remove them when saved
    engine.refuse_to_discard([first, second], resume=True, overwrite=False)
    engine.train(make_method(), toy_data(), config(steps=2), second, accelerator, resume=True)  # not begun: starts
    assert warnings == []


def test_a_steps_loss_is_the_mean_over_every_processs_batches(monkeypatch):
    """The loss shown and saved had been the first process's alone: a 2-process run read as its half of the batch.
    A SIGTERM to one process (a scheduler's stop) stops every process on SIGTERM: the others had named SIGINT, the
    signal they had not got, and exited 130."""
    from types import SimpleNamespace

    from vidbooth.engine.train import _STOPS_FIRST_TO_LAST, _step_outcome

    other = torch.zeros(len(_STOPS_FIRST_TO_LAST) + 2, dtype=torch.float64)  # votes, a bad loss, the loss:
    other[-1] = 3.0  # the other process got no stop, and a loss of 3
    monkeypatch.setattr("accelerate.utils.reduce", lambda tensor, reduction: tensor + other)
    assert _step_outcome(SimpleNamespace(num_processes=2, device="cpu"), None, 1.0) == (None, False, 2.0)
    assert _step_outcome(SimpleNamespace(num_processes=2, device="cpu"), 2, float("nan"))[:2] == (signal.SIGINT, True)
    assert _step_outcome(SimpleNamespace(num_processes=1), None, 0.25) == (None, False, 0.25)  # one process: as is
    other[0] = 1.0  # the other process got SIGTERM (a scheduler's stop): both stop on it, whatever this one got
    assert _step_outcome(SimpleNamespace(num_processes=2, device="cpu"), 2, 1.0)[0] == signal.SIGTERM
    assert _step_outcome(SimpleNamespace(num_processes=2, device="cpu"), None, 1.0)[0] == signal.SIGTERM


def test_a_loss_not_finite_on_another_process_is_named_as_such_on_every_process(tmp_path, accelerator, monkeypatch):
    """Each process had named its own loss: under a 2-process launch whose second process's loss became NaN, the first
    (whose error is read first) said 'loss became 0.635' (measured): the step's loss over every process's batches."""
    agree = engine._agree

    def with_a_nan_on_another_process(acc, values):
        values = agree(acc, values)
        if len(values) == len(engine._STOPS_FIRST_TO_LAST) + 2:  # a step's outcome: votes, a bad loss, the loss
            values = [*values[:-2], values[-2] + 1.0, values[-1] + float("nan")]
        return values

    monkeypatch.setattr(engine, "_agree", with_a_nan_on_another_process)
    with pytest.raises(engine.LossNotFinite, match=r"^loss became nan at step 1: "):
        engine.train(make_method(), toy_data(), config(steps=2), tmp_path / "run", accelerator)
    monkeypatch.setattr(engine, "_agree", agree)
    other = torch.tensor([0.0] * len(engine._STOPS_FIRST_TO_LAST) + [0.0, 3.0])  # the other's loss: 3
    monkeypatch.setattr("accelerate.utils.reduce", lambda tensor, reduction: tensor + other)
    two = SimpleNamespace(num_processes=2, device="cpu")
    assert engine._step_outcome(two, None, math.inf) == (None, True, math.inf)  # this one's: not taken as 0


def test_seconds_per_step_leave_the_checkpoint_writes_out():
    """train-motion's 's/step' had divided the run's wall time, checkpoint writes included, by its steps."""
    result = engine.TrainResult(step=2, start_step=0, losses=[0.5, 0.4], seconds=10.0, step_times=[1.0, 3.0])
    assert result.step_seconds == 2.0
    assert math.isnan(engine.TrainResult(step=4, start_step=4, seconds=0.5).step_seconds)  # no step ran now


def test_a_stop_while_a_checkpoint_is_read_is_a_stop_not_a_damaged_checkpoint(tmp_path, monkeypatch):
    """The reader turns any Exception into 'unreadable: delete it and rerun': a SIGTERM there had told the user to
    delete a good checkpoint, and lose the run it resumes."""
    import safetensors.torch

    from vidbooth.engine import train as train_module

    def stopped_while_reading(*args, **kwargs):
        raise Interrupted("stopped by SIGTERM", 143)

    (tmp_path / train_module.STATE_FILE).write_text("{}")
    monkeypatch.setattr(safetensors.torch, "load_file", stopped_while_reading)
    with pytest.raises(Interrupted, match="stopped by SIGTERM"):
        train_module._read_checkpoint(tmp_path)


def test_a_checkpoint_holding_nan_is_named_when_resumed(tmp_path):
    import types

    weight = torch.nn.Parameter(torch.tensor([1.0, float("nan")]))
    method = types.SimpleNamespace(state_dict=lambda: {"rows": weight.detach()})
    folder = engine.save_checkpoint(tmp_path, 10, method, torch.optim.AdamW([weight]), None, {"run": "a"}, 0.5)
    with pytest.raises(UserError, match=f"checkpoint {folder} holds NaN or infinite values \\(rows; damaged"):
        engine._read_checkpoint(folder)


def test_cosine_lr_schedule_after_its_warmup():
    """(mutation testing: 1 - cos in place of 1 + cos had passed)"""
    cfg = TrainConfig(steps=10, lr=1.0, lr_warmup_steps=2, lr_schedule="cosine")
    assert engine.lr_at(2, cfg) == pytest.approx(1.0)
    assert engine.lr_at(6, cfg) == pytest.approx(0.5)
    assert engine.lr_at(9, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))


class _Recorder:
    """loss = w.sum(): each micro-batch gives w a gradient of exactly 1; records items and noise."""

    def __init__(self):
        self.w = nn.Parameter(torch.zeros(3))
        self.items, self.noise = [], []

    def trainable_parameters(self):
        return [self.w]

    def loss(self, batch, generator):
        self.items += batch["i"].tolist()
        self.noise.append(torch.rand(1, generator=generator).item())
        return self.w.sum()

    def state_dict(self):
        return {"w": self.w.detach()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


def test_grad_accumulation_averages_the_micro_batches_gradients():
    """Each micro-batch of a step is its own item with its own noise, and the step's gradient is their mean
    (mutation testing: the sum, one item four times, or one noise draw had passed)."""
    accelerator = engine.make_accelerator("auto", device="cpu")
    method = _Recorder()
    cfg = TrainConfig(steps=2, batch_size=1, grad_accumulation=4)
    data = [{"i": i} for i in range(4)]
    engine._accumulate(method, data, cfg, 0, accelerator)
    assert torch.equal(method.w.grad, torch.ones(3))  # mean over the 4 micro-batches, not their sum
    assert sorted(method.items) == [0, 1, 2, 3]  # the 4 micro-batches of a step are 4 different items
    assert len(set(method.noise)) == 4  # and each draws its own noise


def test_resume_refuses_another_seed(tmp_path):
    """(mutation testing: a seed left out of the resume signature had passed)"""
    from vidbooth.errors import UserError

    accelerator = engine.make_accelerator("auto", device="cpu")
    data = [{"i": i} for i in range(4)]
    engine.train(_Recorder(), data, TrainConfig(steps=2, seed=0), tmp_path / "run", accelerator)
    with pytest.raises(UserError, match=r"cannot resume from .*: it was trained with other settings \(.*seed"):
        engine.train(_Recorder(), data, TrainConfig(steps=2, seed=1), tmp_path / "run", accelerator, resume=True)


def test_an_optimizer_step_clips_the_gradient_norm():
    """(mutation testing: skipping the clip had passed)"""
    accelerator = engine.make_accelerator("auto", device="cpu")
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.full((4,), 100.0)
    optimizer = torch.optim.SGD([p], lr=1.0)
    engine._optimizer_step(optimizer, [p], TrainConfig(steps=1, lr=1.0, max_grad_norm=1.0), 0, accelerator)
    assert torch.allclose(p.detach(), torch.full((4,), -0.5))  # the gradient clipped to norm 1


def test_resume_restores_the_global_torch_rng(tmp_path):
    """A method drawing from torch's global generator (dropout would) resumes exactly too (mutation testing)."""
    class GlobalRandom(_Recorder):
        def loss(self, batch, generator):
            return (self.w * torch.rand(3)).sum()  # global RNG, as dropout would use

    accelerator = engine.make_accelerator("auto", device="cpu")
    data = [{"i": i} for i in range(4)]
    cfg = dict(steps=4, lr=0.1, checkpoint_every=2)
    torch.manual_seed(0)
    whole = GlobalRandom()
    engine.train(whole, data, TrainConfig(**cfg), tmp_path / "a", accelerator)
    torch.manual_seed(0)
    engine.train(GlobalRandom(), data, TrainConfig(**cfg), tmp_path / "b", accelerator)
    # stop after step 2: drop the last checkpoint, resume from step 2 with another global RNG state
    shutil.rmtree(engine.list_checkpoints(tmp_path / "b")[-1])
    torch.manual_seed(99)
    resumed = GlobalRandom()
    engine.train(resumed, data, TrainConfig(**cfg), tmp_path / "b", accelerator, resume=True)
    assert torch.equal(resumed.w, whole.w)


def test_fp16_without_cuda_names_the_setting_of_the_command(tmp_path, isolated_home, capsys):
    """It had said 'train.mixed_precision' to every command, a key subjects and image-prompt models do not have."""
    from badinputs import write_clip, write_photos

    from vidbooth.cli.app import main

    if torch.cuda.is_available():
        pytest.skip("fp16 is refused only without CUDA")
    photos = str(write_photos(tmp_path / "photos"))
    keys = ("textual_inversion.train.mixed_precision", "identity.train.mixed_precision")
    subject = ["train-subject", photos, "--name", "S*", "--class-noun", "dog", "--recipe", "tiny/subject",
               *[arg for key in keys for arg in ("--set", f"{key}=fp16")]]
    motion = ["train-motion", str(write_clip(tmp_path / "c.mp4")), "--name", "M", "--recipe", "tiny/motion", "--set",
              "train.mixed_precision=fp16"]
    for argv, setting in ((subject, " and ".join(keys)), (motion, "train.mixed_precision")):
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"error: mixed precision fp16 ({setting}) needs CUDA: train on a GPU, or "
                                           f"set {setting} to no or bf16 on this machine\n")


def test_a_damaged_checkpoint_says_to_delete_it_and_resume_from_the_one_before(tmp_path, accelerator):
    """What the message says to do works: with the damaged checkpoint deleted, --resume continues from the one
    before it, to the weights of an uninterrupted run."""
    whole = make_method()
    uninterrupted = engine.train(whole, toy_data(), config(), tmp_path / "whole", accelerator)
    run = tmp_path / "run"
    engine.train(make_method(), toy_data(), config(), run, accelerator)  # checkpoints at steps 8 and 12 kept
    last = engine.list_checkpoints(run)[-1]
    (last / engine.TRAINABLE_FILE).write_bytes(b"cut short")
    with pytest.raises(UserError, match=rf"^checkpoint {last} cannot be read \(damaged or cut short: .*\): delete it "
                                        r"and rerun with --resume, which continues from the checkpoint before it"):
        engine.train(scrambled_method(), toy_data(), config(), run, accelerator, resume=True)
    shutil.rmtree(last)
    resumed = scrambled_method()
    result = engine.train(resumed, toy_data(), config(), run, accelerator, resume=True)
    assert result.start_step == 8
    for key, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    assert result.losses == uninterrupted.losses[8:] and result.loss == uninterrupted.loss  # steps 3-8 kept at 8


def _state_without(key):
    return lambda state: {k: v for k, v in state.items() if k != key}


@pytest.mark.parametrize("damage, what", [
    (_state_without("step"), "its step in state.json is missing"),  # each had been a traceback (KeyError, ...)
    (_state_without("param_groups"), "its param_groups in state.json is missing"),
    (lambda state: state | {"loss": "low"}, "its loss in state.json is missing or of another kind"),
    (lambda state: [state], "state.json holds no settings"),
    (lambda state: state | {"step": 999}, "state.json says step 999"),  # had saved 12 steps' weights as 999
    (lambda state: state | {"param_groups": []}, "ValueError restoring it"),
    (lambda state: state | {"param_groups": [1]}, "TypeError restoring it"),
    (lambda state: state | {"step": 4.0}, "its step in state.json is missing or of another kind"),
    ("optimizer", "KeyError restoring it"),  # its RNG state and moments lost
    ("no moments", "KeyError restoring it"),  # had restarted AdamW's moments without a word
    ("trainable", "RuntimeError restoring it"),  # a tensor of another shape
    ("flipped", "trainable.safetensors is not the file saved"),  # bits flipped in a weight: had resumed from it
    ("flipped moments", "optimizer.safetensors is not the file saved"),
    ("nested", "RecursionError"),  # JSON nested past Python's stack
])
def test_a_checkpoint_that_reads_but_is_damaged_is_refused_in_one_line(tmp_path, accelerator, damage, what):
    from vidbooth.fileio import write_safetensors

    engine.train(make_method(), toy_data(), config(steps=4), tmp_path, accelerator)
    last = engine.list_checkpoints(tmp_path)[-1]
    state_file = last / engine.STATE_FILE
    if damage in ("optimizer", "no moments", "trainable"):  # as a checkpoint from before files' digests were kept
        state_file.write_text(json.dumps(_state_without("sha256")(json.loads(state_file.read_text()))))
    if damage in ("flipped", "flipped moments"):
        flipped = last / (engine.TRAINABLE_FILE if damage == "flipped" else engine.OPTIMIZER_FILE)
        data = bytearray(flipped.read_bytes())
        data[-1] ^= 0x01  # the last bit of the last tensor: a file that reads, a value that differs
        flipped.write_bytes(bytes(data))
    elif damage == "optimizer":
        write_safetensors(last / engine.OPTIMIZER_FILE, {"optimizer.0.exp_avg": torch.zeros(1)}, {"format": "pt"})
    elif damage == "no moments":
        write_safetensors(last / engine.OPTIMIZER_FILE, {"rng.torch": torch.get_rng_state()}, {"format": "pt"})
    elif damage == "trainable":
        from safetensors.torch import load_file

        tensors = load_file(str(last / engine.TRAINABLE_FILE))
        write_safetensors(last / engine.TRAINABLE_FILE, {k: torch.zeros(2, *v.shape) for k, v in tensors.items()},
                          {"format": "pt"})
    elif damage == "nested":
        state_file.write_text("[" * 100_000 + "]" * 100_000)
    else:
        state_file.write_text(json.dumps(damage(json.loads(state_file.read_text()))))
    with pytest.raises(UserError, match=rf"^checkpoint {last} cannot be read \(damaged or cut short: .*{what}.*\): "
                                        "delete it and rerun with --resume"):
        engine.train(scrambled_method(), toy_data(), config(steps=4), tmp_path, accelerator, resume=True)


def test_a_checkpoint_whose_step_is_true_is_refused_not_resumed_as_step_one(tmp_path, accelerator):
    """JSON's true is Python's 1 (bool is an int): in a folder named step-0000001 it had passed both the step's kind
    check and its folder's, as no save writes it (its loss of true is refused the same way)."""
    engine.train(make_method(), toy_data(), config(steps=1, checkpoint_every=1), tmp_path, accelerator)
    last = engine.list_checkpoints(tmp_path)[-1]
    assert last.name == "step-0000001"
    state_file = last / engine.STATE_FILE
    state_file.write_text(json.dumps(json.loads(state_file.read_text()) | {"step": True}))
    with pytest.raises(UserError, match=rf"^checkpoint {last} cannot be read \(damaged or cut short: its step in "
                                        r"state\.json is missing or of another kind\)"):
        engine.train(scrambled_method(), toy_data(), config(steps=1, checkpoint_every=1), tmp_path, accelerator,
                     resume=True)


def test_a_checkpoint_of_another_format_is_refused_with_the_way_to_start_over(tmp_path, accelerator):
    """One written by a vidbooth whose checkpoints hold other things: not read as this one's."""
    engine.train(make_method(), toy_data(), config(steps=4), tmp_path, accelerator)
    state_file = engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE
    state_file.write_text(json.dumps(json.loads(state_file.read_text()) | {"format": engine.CHECKPOINT_FORMAT + 1}))
    with pytest.raises(UserError, match=rf"^checkpoint {state_file.parent} has format {engine.CHECKPOINT_FORMAT + 1}: "
                                        "rerun with --overwrite to start over$"):
        engine.train(scrambled_method(), toy_data(), config(steps=4), tmp_path, accelerator, resume=True)


def test_json_nested_past_pythons_stack_is_left_to_the_resume_to_refuse(tmp_path, accelerator):
    """The settings check before the model loads, and the stage's clock, had let a RecursionError out (a
    traceback): the first leaves the checkpoint to the resume, which refuses it; the clock starts from 0."""
    engine.train(make_method(), toy_data(), config(steps=4), tmp_path, accelerator)
    nested = "[" * 100_000 + "]" * 100_000
    (engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE).write_text(nested)
    (tmp_path / engine.SECONDS_FILE).write_text(nested)
    assert engine.refuse_other_settings(tmp_path, True, config(steps=4), {}, accelerator) is None
    with engine._stage_clock(tmp_path, True, True) as clock:
        assert clock.earlier == 0.0


def test_the_stages_time_is_recorded_with_each_checkpoint(tmp_path, accelerator, monkeypatch):
    """It had been written only as the run ended: a run killed outright (SIGKILL skips every clean-up) lost its
    time from the artifact's training seconds."""
    accumulate, seen = engine._accumulate, []

    def accumulate_and_look(method, data, cfg, step, accelerator):
        record = tmp_path / engine.SECONDS_FILE
        seen.append(json.loads(record.read_text())["seconds"] if record.is_file() else None)
        return accumulate(method, data, cfg, step, accelerator)

    monkeypatch.setattr(engine, "_accumulate", accumulate_and_look)
    result = engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path, accelerator)
    assert seen[:2] == [None, None] and 0 < seen[2] <= seen[3] < seen[4] <= seen[5] < result.total_seconds
    # a run that fails after its last checkpoint: the time it spent since is recorded as it ends
    record = tmp_path / "again" / engine.SECONDS_FILE
    at_checkpoint = []

    def fails_at_step_3(method, data, cfg, step, accelerator):
        if step == 2:
            at_checkpoint.append(json.loads(record.read_text())["seconds"])
            time.sleep(0.3)
            raise RuntimeError("a bug")
        return accumulate(method, data, cfg, step, accelerator)

    monkeypatch.setattr(engine, "_accumulate", fails_at_step_3)
    with pytest.raises(RuntimeError, match="a bug"):
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / "again", accelerator)
    assert json.loads(record.read_text())["seconds"] >= at_checkpoint[0] + 0.3


def test_only_the_main_process_records_the_stages_time(tmp_path, accelerator):
    """Every process runs the stage's clock; only the main one writes seconds.json beside its checkpoints, which
    the others would race (mutation testing: the guard had been untested)."""
    engine.train(make_method(), toy_data(), config(steps=2), tmp_path, accelerator)
    (tmp_path / engine.SECONDS_FILE).unlink()
    with engine._stage_clock(tmp_path, True, False):
        pass
    assert not (tmp_path / engine.SECONDS_FILE).exists()
    with engine._stage_clock(tmp_path, True, True):
        pass
    assert json.loads((tmp_path / engine.SECONDS_FILE).read_text())["seconds"] >= 0


def test_a_file_where_the_run_keeps_its_checkpoints_is_replaced_on_starting_over(tmp_path, accelerator):
    """A run folder or its checkpoints folder damaged into a file: even --overwrite had failed (FileExistsError)."""
    (tmp_path / "run").write_text("not a folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / engine.CHECKPOINTS).write_text("not a folder")
    for run in (tmp_path / "run", tmp_path / "other"):
        assert engine.train(make_method(), toy_data(), config(steps=4), run, accelerator).step == 4
        assert [p.name for p in engine.list_checkpoints(run)] == ["step-0000004"]


def test_an_mpi_launchers_processes_with_nowhere_to_meet_are_told_what_to_set(monkeypatch, fresh_accelerate_state):
    """srun or mpirun without MASTER_ADDR: accelerate's refusal had come with advice on --device and the precision."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(name, "")  # accelerate sets some of them before it refuses: monkeypatch puts back each
        monkeypatch.delenv(name)  # it set, not one it only deleted
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    with pytest.raises(UserError, match=r"^cannot set up training: .*`MASTER_ADDR` env was not set.* \(PMI_SIZE=2 is "
                                        r"set\): export MASTER_ADDR \(the first process's host\) and MASTER_PORT for "
                                        r"every process, or start them with torchrun or accelerate launch$"):
        engine.make_accelerator(device="cpu", quiet=True)


def test_processes_a_launcher_started_that_do_not_meet_are_refused(monkeypatch, fresh_accelerate_state):
    """mpirun or srun alone on GPUs: accelerate takes processes from torchrun only, so each trained alone, the same
    run (its lines silenced but the first's), and all but one lost theirs saving it."""
    monkeypatch.setattr(engine.reporting, "process_count", lambda: 2)  # (mpirun's variables: on the CPU accelerate
    # meets the processes they name)
    with pytest.raises(UserError, match=r"^cannot set up training: the launcher started 2 processes, but they did not "
                                        r"meet \(this one would train alone\): start them with torchrun or accelerate "
                                        r"launch \(under Slurm: srun torchrun \.\.\.\)$"):
        engine.make_accelerator(device="cpu", quiet=True)
    monkeypatch.setattr(engine.reporting, "process_count", lambda: 1)
    assert engine.make_accelerator(device="cpu", quiet=True).num_processes == 1


def test_vidbooths_precision_is_not_the_launchers(monkeypatch, fresh_accelerate_state):
    """`accelerate launch --mixed_precision bf16` (or a saved accelerate config) sets ACCELERATE_MIXED_PRECISION;
    vidbooth's own setting (train.mixed_precision, nano's 'no') is what trains."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert str(engine.make_accelerator("no", "cpu").mixed_precision) == "no"
    fresh_accelerate_state()
    assert str(engine.make_accelerator("bf16", "cpu").mixed_precision) == "bf16"


def test_the_micro_batches_of_consecutive_steps_walk_on_through_the_epoch():
    """Step 1's micro-batches take the items after step 0's, not step 0's again shifted by one: two steps of 4
    micro-batches of 1 see each of 8 items once (mutation testing: `step + micro` had passed)."""
    accelerator = engine.make_accelerator("auto", device="cpu")
    method = _Recorder()
    cfg = TrainConfig(steps=2, batch_size=1, grad_accumulation=4)
    data = [{"i": i} for i in range(8)]
    engine._accumulate(method, data, cfg, 0, accelerator)
    engine._accumulate(method, data, cfg, 1, accelerator)
    assert sorted(method.items) == list(range(8))


def test_each_epoch_is_a_fresh_permutation():
    """(mutation testing: every epoch in the first epoch's order had passed)"""
    epochs = [engine.batch_indices(5, 5, seed=3, first_position=5 * epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(5)) for order in epochs)
    assert epochs[0] != epochs[1] and len({tuple(order) for order in epochs}) == 3


def test_a_checkpoint_saves_the_loss_scaler_and_resuming_restores_it(tmp_path):
    """fp16 on CUDA trains with a loss scaler: its scale and growth tracker go in state.json and come back on
    resuming (mutation testing: a checkpoint without it had passed; here a stand-in scaler on the CPU)."""
    from types import SimpleNamespace

    class Scaler:
        def __init__(self, state):
            self.state, self.loaded = state, []

        def state_dict(self):
            return dict(self.state)

        def load_state_dict(self, state):
            self.loaded.append(state)

    scaled = {"scale": 1024.0, "_growth_tracker": 3}
    method = _Recorder()
    optimizer = torch.optim.AdamW(method.trainable_parameters())
    for p in method.trainable_parameters():  # a checkpoint is of steps taken, which made AdamW's moments
        p.grad = torch.ones_like(p)
    optimizer.step()
    saver = SimpleNamespace(scaler=Scaler(scaled), device=torch.device("cpu"))
    folder = engine.save_checkpoint(tmp_path, 3, method, optimizer, saver, {"run": "a"}, 0.5)
    assert json.loads((folder / engine.STATE_FILE).read_text())["scaler"] == scaled
    restorer = SimpleNamespace(scaler=Scaler({}), device=torch.device("cpu"))
    restored = engine._restore(folder, _Recorder(), optimizer, restorer, {"run": "a"}, TrainConfig(steps=4))
    assert restored == (3, 0.5, [0.5])
    assert restorer.scaler.loaded == [scaled]


def test_a_results_loss_is_the_mean_of_its_last_ten_steps():
    """(mutation testing)"""
    assert engine.TrainResult(step=20, start_step=0, losses=[float(i) for i in range(20)]).loss == 14.5
    assert engine.TrainResult(step=4, start_step=0, losses=[1.0, 2.0, 3.0, 6.0]).loss == 3.0  # fewer than ten: all


def test_auto_mixed_precision_is_fp16_on_cuda_and_none_elsewhere():
    """(mutation testing)"""
    assert engine.resolve_mixed_precision("auto", "cuda") == "fp16"
    assert engine.resolve_mixed_precision("auto", "cpu") == "no"
    assert engine.resolve_mixed_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize("base, expected", [("auto", "fp16"), ("fp16", "fp16"), ("fp32", "fp16"), ("bf16", "bf16")])
def test_auto_mixed_precision_on_cuda_follows_a_half_precision_base(base, expected):
    """A bf16 base (--precision bf16) had trained under fp16 autocast, with a loss scaler, on a GPU."""
    assert engine.resolve_mixed_precision("auto", "cuda", base_precision=base) == expected
    assert engine.resolve_mixed_precision("auto", "cpu", base_precision=base) == "no"


@pytest.mark.parametrize("mixed, base", [("fp16", "bf16"), ("bf16", "fp16"), ("bf16", "auto")])
def test_autocast_in_the_other_half_type_than_the_base_is_refused_on_cuda(mixed, base):
    """On a GPU it would run in the half type the user did not choose (on a CPU the pair failed in the text
    encoder's layer norm, 'mixed dtype (CPU)'; there fp16 is refused either way)."""
    device = "cuda"
    named = "fp16" if base == "auto" else base
    message = (rf"^train.mixed_precision is {mixed} but the base is in {named} \(--precision\): autocast in the "
               rf"other half type defeats the choice; give --set train.mixed_precision=auto \(auto follows "
               rf"--precision\), or --precision {mixed}$")
    with pytest.raises(UserError, match=message):
        engine.resolve_mixed_precision(mixed, device, base_precision=base)
    with pytest.raises(UserError, match=r"give --set a.mixed_precision=auto --set b.mixed_precision=auto \(auto"):
        engine.resolve_mixed_precision(mixed, device, "a.mixed_precision and b.mixed_precision", base)
    assert engine.resolve_mixed_precision(mixed, device, base_precision=mixed) == mixed
    assert engine.resolve_mixed_precision(mixed, device, base_precision="fp32") == mixed  # AMP over fp32 weights
    if mixed == "fp16":  # on a CPU fp16 autocast is refused as such
        with pytest.raises(UserError, match="needs CUDA"):
            engine.resolve_mixed_precision(mixed, "cpu", base_precision=base)
    else:  # and an fp16 base when it loads: the message to heed there, not this pair's
        assert engine.resolve_mixed_precision(mixed, "cpu", base_precision=base) == mixed


def test_a_steps_loss_is_the_mean_of_its_micro_batches_losses():
    """Not the last micro-batch's loss (mutation testing): item i's loss is i, items 0..3 make one step."""
    class ItemLoss(_Recorder):
        def loss(self, batch, generator):
            super().loss(batch, generator)
            return self.w.sum() + batch["i"].double().sum()

    accelerator = engine.make_accelerator("auto", device="cpu")
    cfg = TrainConfig(steps=1, batch_size=1, grad_accumulation=4)
    assert engine._accumulate(ItemLoss(), [{"i": i} for i in range(4)], cfg, 0, accelerator) == 1.5


def test_training_uses_adamw_without_weight_decay(tmp_path, accelerator):
    """Weight decay would pull a learned embedding or adapter towards zero (mutation testing: AdamW's default 0.01
    had passed)."""
    engine.train(make_method(), toy_data(), config(steps=2), tmp_path, accelerator)
    state = json.loads((engine.list_checkpoints(tmp_path)[-1] / engine.STATE_FILE).read_text())
    assert [group["weight_decay"] for group in state["param_groups"]] == [0.0]


def test_each_training_command_resolves_mixed_precision_with_its_bases_precision(tmp_path, monkeypatch,
                                                                                 isolated_home):
    """auto follows --precision on CUDA: each command must hand its runtime.precision on (on a CPU nothing tells)."""
    from tests.badinputs import write_clip, write_photos
    from vidbooth.cli.app import main

    seen = []

    def resolve(mixed_precision, device_type, setting="train.mixed_precision", base_precision="auto"):
        seen.append(base_precision)
        raise UserError("stop here")

    monkeypatch.setattr(engine, "resolve_mixed_precision", resolve)
    photos, clip = write_photos(tmp_path / "photos"), write_clip(tmp_path / "clip.mp4")
    runtime = ["--base", "tiny", "--device", "cpu", "--precision", "bf16"]
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "dog", *runtime]) == 2
    assert main(["train-motion", str(clip), "--name", "M", *runtime]) == 2
    assert main(["train-image-prompt", "--out", str(tmp_path / "ip.safetensors"), *runtime]) == 2
    assert seen == ["bf16", "bf16", "bf16"]


def test_the_processes_of_a_run_wait_for_one_another_longer_than_nccls_ten_minutes(monkeypatch):
    """Some processes make class images or a preview while the others wait at a barrier: NCCL's default timeout
    (10 minutes) had ended such a run of a large model."""
    import accelerate

    created = []
    monkeypatch.setattr(accelerate, "Accelerator", lambda **kwargs: created.append(kwargs) or SimpleNamespace(
        num_processes=1, device=torch.device("cpu")))
    engine.make_accelerator("auto", device="cpu")
    (handler,) = created[0]["kwargs_handlers"]
    assert type(handler).__name__ == "InitProcessGroupKwargs" and handler.timeout.total_seconds() == 2 * 3600


def test_steps_the_fp16_loss_scaler_skipped_are_counted_and_many_are_warned_of(tmp_path, accelerator, monkeypatch):
    """A run whose half-precision gradients kept overflowing trained on with finite losses and weights, its steps
    counted as made: a share of skipped steps over 10% is warned of (a few, as the scaler finds its scale, not)."""
    import badinputs
    from accelerate.optimizer import AcceleratedOptimizer

    warned = badinputs.capture_warnings(monkeypatch)
    skipped = iter([True] * 3 + [False] * 20)  # as a scaler finding its scale
    monkeypatch.setattr(AcceleratedOptimizer, "step_was_skipped", property(lambda self: next(skipped)))
    assert engine.train(make_method(), toy_data(), config(), tmp_path / "a", accelerator).skipped_steps == 3
    assert warned == []
    skipped = iter([False, True] * 6)
    cfg = config(checkpoint_every=0)
    cfg.locate("identity.train", {})
    assert engine.train(make_method(), toy_data(), cfg, tmp_path / "b", accelerator).skipped_steps == 6
    assert warned == ["fp16's loss scaler skipped 6 of the 12 steps (their gradients overflowed in half precision): "
                      "fewer updates than asked were made; train in bf16 or fp32 (--precision bf16 or fp32, --set "
                      "identity.train.mixed_precision=bf16 or no) or with a lower learning rate"]


@pytest.mark.parametrize("ran, skipped, warned_of", [(100, 10, False), (100, 11, True), (20, 3, False), (20, 4, True),
                                                     (110, 10, False), (50, 6, True)])
def test_skipped_steps_are_warned_of_above_a_tenth_of_the_run_and_above_three(ran, skipped, warned_of, monkeypatch):
    """(mutation testing: the 10% boundary and the floor of 3 had no test)"""
    import badinputs

    warned = badinputs.capture_warnings(monkeypatch)
    result = engine.TrainResult(step=ran + 5, start_step=5, skipped_steps=skipped)
    engine._warn_of_skipped_steps(result, config())  # (on the first process of each machine: test_reporting.py)
    assert bool(warned) == warned_of


def test_once_a_command_is_failing_a_signal_is_only_noted(tmp_path, accelerator):
    """A run that lost another process is about to say so: the launcher's SIGTERM to it, arriving as the error
    propagates, had been raised in its place ('stopped by SIGTERM', the step and checkpoint untold) by the command
    line's handler or, as a second signal, by training's."""
    from vidbooth import errors

    try:
        errors.failing()
        errors.stop(signal.SIGTERM)  # the command line's handler: noted, not raised
        with engine.StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal: noted too
        assert stop.signum == signal.SIGINT and stop.again is None
    finally:
        errors.clear_stops()
    assert not errors.is_failing()
    with pytest.raises(Interrupted):
        errors.stop(signal.SIGTERM)
    errors.clear_stops()


def test_a_launchers_mixed_precision_that_vidbooth_does_not_take_is_warned_of_once(monkeypatch, capsys,
                                                                                     fresh_accelerate_state):
    """`accelerate launch --mixed_precision bf16` (or a saved `accelerate config`) had been overridden by
    vidbooth's own setting without a word."""
    monkeypatch.setattr(engine, "_LAUNCHER_PRECISION_WARNED", set())
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    engine.make_accelerator("no", "cpu", quiet=True)  # a process that meets the others only to stop them
    assert capsys.readouterr().err == ""
    engine.make_accelerator("no", "cpu", setting="identity.train.mixed_precision")
    engine.make_accelerator("no", "cpu", setting="identity.train.mixed_precision")
    assert capsys.readouterr().err.splitlines() == [
        "warning: accelerate launch's mixed precision (bf16) is not used: vidbooth trains without mixed precision as "
        "identity.train.mixed_precision says (auto: the base's half type on CUDA, none elsewhere); for bf16 give "
        "--set identity.train.mixed_precision=bf16"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "garbage")  # no value to give back (it had been suggested)
    engine.make_accelerator("no", "cpu", setting="motion.train.mixed_precision")
    assert capsys.readouterr().err.splitlines() == [
        "warning: accelerate launch's mixed precision (garbage) is not used: vidbooth trains without mixed precision "
        "as motion.train.mixed_precision says (auto: the base's half type on CUDA, none elsewhere); "
        "vidbooth takes no, fp16 or bf16"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    fresh_accelerate_state()
    engine.make_accelerator("bf16", "cpu", setting="coarse.mixed_precision and fine.mixed_precision")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what the launcher sets by default
    fresh_accelerate_state()
    engine.make_accelerator("no", "cpu", setting="textual_inversion.train.mixed_precision")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # which a CPU cannot take: no advice to give
    engine.make_accelerator("no", "cpu", setting="textual_inversion.train.mixed_precision")
    assert capsys.readouterr().err == ""


def test_no_mixed_precision_over_an_fp16_base_is_warned_of(capsys):
    """Without autocast there is no loss scaler: gradients through the fp16 base underflow unseen (the CUDA path;
    the pair is resolved, not run, here)."""
    assert engine.resolve_mixed_precision("no", "cuda", base_precision="fp16") == "no"
    assert capsys.readouterr().err.splitlines() == [
        "warning: train.mixed_precision is no but the base is in fp16 (--precision): the gradients pass through its "
        "fp16 layers with no loss scaling, and small ones vanish; give --set train.mixed_precision=auto (fp16 with a "
        "loss scaler), or --precision fp32"]
    for mixed, base in (("no", "fp32"), ("no", "bf16"), ("auto", "fp16"), ("fp16", "fp16")):
        engine.resolve_mixed_precision(mixed, "cuda", base_precision=base)
    assert capsys.readouterr().err == ""


def test_training_over_dangling_links_where_a_run_keeps_its_checkpoints_starts_afresh(tmp_path, accelerator):
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / engine.CHECKPOINTS).symlink_to(tmp_path / "gone too")
    for run in (tmp_path / "run", tmp_path / "other"):
        assert engine.train(make_method(), toy_data(), config(steps=4), run, accelerator).step == 4


def test_a_lost_process_marks_the_command_failing_so_that_signals_are_only_noted(tmp_path, accelerator, monkeypatch):
    """(mutation testing: the two-process test passes without `failing()`, its SIGTERM arriving too late)"""
    from vidbooth import errors

    def peer_gone(*args, **kwargs):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(engine, "lost_another_process", lambda exc: True)
    monkeypatch.setattr(engine, "_accumulate", peer_gone)
    try:
        with pytest.raises(UserError, match=r"^another process of this run stopped at step 0/4"):
            engine.train(make_method(), toy_data(), config(steps=4), tmp_path, accelerator)
        assert errors.is_failing()
    finally:
        errors.clear_stops()


def test_a_keyboard_interrupt_that_no_signal_handler_raised_goes_on_up(tmp_path, accelerator, monkeypatch):
    """Not a second signal's: it had become 'ValueError: None is not a valid Signals' (mutation testing)."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_accumulate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        engine.train(make_method(), toy_data(), config(steps=4), tmp_path, accelerator)


@pytest.mark.parametrize("variable, value, expected", [
    ("ACCELERATE_USE_DEEPSPEED", "true", r"^cannot set up training: .*DeepSpeed.* \(asked for by "
                                         r"ACCELERATE_USE_DEEPSPEED=true, left by another tool\?\): unset that, or "
                                         r"install what it names$"),
    ("ACCELERATE_TORCH_DEVICE", "cuda", r"^accelerate put training on cuda, not cpu as --device says \(asked for by "
                                        r"ACCELERATE_TORCH_DEVICE=cuda, left by another tool\?\): unset that$"),
])
def test_accelerate_variables_left_by_another_tool_are_one_error_line(variable, value, expected, monkeypatch,
                                                                      fresh_accelerate_state):
    """Each had ended training in a traceback: DeepSpeed not installed (ImportError), or an AssertionError from a
    CPU-only torch asked for the current CUDA device."""
    for name in [name for name in os.environ if name.startswith("ACCELERATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv(variable, value)
    if variable == "ACCELERATE_USE_DEEPSPEED" and importlib.util.find_spec("deepspeed"):
        pytest.skip("DeepSpeed is installed here")
    with pytest.raises(UserError, match=expected):
        engine.make_accelerator("no", "cpu", setting="motion.train.mixed_precision")


def test_an_error_after_a_checkpoint_carries_where_the_run_can_go_on_from(tmp_path, accelerator, monkeypatch):
    """Out of memory or a file-size limit midway had been told 'run it again', which a stopped run's checkpoint
    then refused; the error carries that checkpoint for the command line to say so (and nothing before one)."""
    accumulate = engine._accumulate

    def out_of_memory_at(failing_step):
        def accumulate_or_fail(method, data, cfg, step, accelerator):
            if step == failing_step:
                raise MemoryError()
            return accumulate(method, data, cfg, step, accelerator)
        return accumulate_or_fail

    monkeypatch.setattr(engine, "_accumulate", out_of_memory_at(5))
    with pytest.raises(MemoryError) as caught:
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / "a", accelerator)
    assert caught.value.kept_checkpoint == str(engine.list_checkpoints(tmp_path / "a")[-1])
    assert caught.value.kept_checkpoint.endswith("step-0000004")  # the last of steps 2 and 4
    monkeypatch.setattr(engine, "_accumulate", out_of_memory_at(1))
    with pytest.raises(MemoryError) as caught:
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / "b", accelerator)
    assert not hasattr(caught.value, "kept_checkpoint")
    from vidbooth.errors import MachineLimit

    for limit in (OSError(errno.EFBIG, "File too large"), MachineLimit("too many open files: ... run it again")):
        def at_step_3(method, data, cfg, step, accelerator, limit=limit):
            if step == 3:
                raise limit
            return accumulate(method, data, cfg, step, accelerator)

        monkeypatch.setattr(engine, "_accumulate", at_step_3)
        with pytest.raises(type(limit)) as caught:
            engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / str(limit),
                         accelerator)
        assert caught.value is limit and caught.value.kept_checkpoint.endswith("step-0000002")


def test_on_a_machine_without_the_first_process_checkpoints_an_error_says_where_they_are(tmp_path, accelerator,
                                                                                        monkeypatch):
    """A second machine whose library is not shared had named its own library's older checkpoint, or none ('run
    it again', which the first machine's checkpoint then refuses), in an error after a checkpoint and a NaN loss."""
    accumulate = engine._accumulate

    def at_step_3(method, data, cfg, step, accelerator):
        if step == 3:
            raise MemoryError()
        return accumulate(method, data, cfg, step, accelerator)

    def nan_at_step_3(method, data, cfg, step, accelerator):
        return float("nan") if step == 2 else accumulate(method, data, cfg, step, accelerator)

    sees_the_firsts = engine.sees_the_firsts
    monkeypatch.setattr(engine, "sees_the_firsts", lambda accelerator, run_dir, saved: not saved)  # the second's
    monkeypatch.setattr(engine, "_accumulate", at_step_3)
    with pytest.raises(MemoryError) as caught:
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / "a", accelerator)
    assert caught.value.kept_checkpoint == (f"step 2, in the first process's library: copy {tmp_path / 'a'} from its "
                                            "machine here first")
    monkeypatch.setattr(engine, "_accumulate", nan_at_step_3)
    with pytest.raises(engine.LossNotFinite, match=r"^loss became nan at step 3: training stopped and the last good "
                                                   r"checkpoint, of step 2, is in the first process's library; lower"):
        engine.train(make_method(), toy_data(), config(steps=6, checkpoint_every=2), tmp_path / "b", accelerator)
    second, first = SimpleNamespace(is_main_process=False), SimpleNamespace(is_main_process=True)
    assert [sees_the_firsts(second, tmp_path / "b", saved) for saved in (0, 2, 4)] == [True, True, False]
    assert sees_the_firsts(first, tmp_path / "b", 4)  # the first saved it: it sees it
