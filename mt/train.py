"""`mt train`: the loop, the optimizer and its schedule, validation, early stopping.

The loop reads as: next update's batches -> `train_step` -> `maybe_log` -> `maybe_validate`
-> `maybe_save` -> stop? What the loop works on is a `Run` (made once) and a `State` (what
changes), both in run.py. Everything that decides the result is in the checkpoint (see
checkpoint.py), so a resumed run continues exactly.

Under `torchrun` each process trains on its share of the batches (DDP, distributed.py); rank 0 alone writes.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from mt import distributed, rundir, signals
from mt.batching import Batch, collate
from mt.checkpoint import Loaded, load_for_inference, make_checkpoint, rng_states, save_checkpoint
from mt.config import Config
from mt.device import free_cached_memory, is_out_of_memory, resolve_device
from mt.errors import Interrupted, MtError
from mt.evaluate import score, score_test_sets
from mt.loss import token_loss
from mt.meter import SLOW_CHECK_STEPS, Meter, warn_if_slow
from mt.model import attention_backends
from mt.prepare import prepare
from mt.run import Run, State, check_run_dir, count_parameters, make_run, resume
from mt.translate import translate_lines

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- set-up


def train(cfg: Config, device: str = "auto", restart: bool = False) -> list[dict]:
    """Train per the config (preparing data first when needed); returns the test-set scores."""
    run, state = start(cfg, device, restart)
    return run_training(run, state)


def start(cfg: Config, device: str = "auto", restart: bool = False) -> tuple[Run, State]:
    """Check and prepare the run dir, build the run, and resume it unless told to start over."""
    dist = distributed.init(device)
    run_dir = Path(cfg.run_dir)
    if dist.rank == 0:
        check_run_dir(cfg, run_dir, restart)
        prepare(cfg)
    dist.barrier()
    run = make_run(cfg, run_dir, resolve_device(device) if dist.world == 1 else dist.device, dist)
    state = resume(run) if not restart else State()
    return run, state


def run_training(run: Run, state: State) -> list[dict]:
    """The loop, then the test-set scores of the best checkpoint (rank 0; [] elsewhere).

    Raises `Interrupted` when a signal stopped training (after saving the step; a second
    signal: at once, without saving)."""
    with signals.handled(stop_handler(state)):  # before the line below: from then on a signal saves
        try:  # the line too: two signals sent on seeing it can both land while it is written
            if run.is_main:
                log.info("training on %s (%s), %d parameters, %d batches per epoch%s",
                         run.device, run.autocast_dtype or torch.float32, count_parameters(run.raw_model),
                         run.stream.batches_per_epoch(), f", {run.dist.world} processes" if run.dist.world > 1 else "")
            state = loop(run, state)
        except KeyboardInterrupt:  # a second signal: said so already
            if not state.stop_requested:
                raise
            raise Interrupted(state.stop_requested) from None
    scores = finish(run) if run.is_main and not state.stop_requested else []
    run.dist.close()
    if state.stop_requested:  # saved, but not finished: exit as a signal-stopped program does (130, 143)
        raise Interrupted(state.stop_requested)
    return scores


# ----------------------------------------------------------------------------- the loop


def loop(run: Run, state: State) -> State:
    batches = run.stream(state.position)
    # a bar redrawn in place only on a terminal; in a log file, one plain line per log_every
    bar = tqdm(total=planned_steps(run), initial=state.step, disable=not run.is_main or not sys.stderr.isatty(),
               dynamic_ncols=True, unit="step", desc="train")
    try:
        if state.validation_due:  # stopped during a validation last time: do it now
            validate_and_record(run, state)
            state.saved_step = state.saved_step if state.validation_due else -1  # save it as done, even with no step
        steps(run, state, batches, bar)
    finally:  # on an error too: the bar ends its line before the message, the batch thread before us
        bar.close()
        getattr(batches, "close", lambda: None)()
    if state.step and state.saved_step != state.step:
        save(run, state)  # after out-of-memory skips too: they left the parameters as they were
    if state.failed:
        raise MtError(state.failed)
    if state.stop_requested and run.is_main:
        log.info("%s: saved step %d; run `mt train` again to continue%s", state.stop_requested, state.step,
                 " (it validates that step first)" if state.validation_due else "")
    return state


def steps(run: Run, state: State, batches, bar: tqdm) -> None:
    """Update after update until a limit, a signal or a failure says stop."""
    t = run.cfg.training
    meter = Meter(run.raw_model, run.device, run.dist.world)
    start, first_step = time.monotonic(), state.step
    run.model.train()
    while not should_stop(run, state, start):
        group = [next(batches) for _ in range(t.update_freq)]
        state.position = group[-1][0]
        loss = train_step(run, state, [batch for _, batch in group])
        meter.add(loss, [batch for _, batch in group])
        bar.update(1)
        preview(run, state, meter, bar)
        # with update_freq > 1 an epoch can end inside the group
        epoch_ended = any(p.batches_done == run.stream.batches_per_epoch() for p, _ in group)
        maybe_log(run, state, meter, bar)
        if run.is_main and loss is not None and state.step == first_step + SLOW_CHECK_STEPS:
            warn_if_slow(run.cfg, run.device, planned_steps(run), state.step, (time.monotonic() - start) / SLOW_CHECK_STEPS)
        maybe_validate(run, state, epoch_ended)
        maybe_save(run, state)


def planned_steps(run: Run) -> Optional[int]:
    """The step that training.max_steps or training.max_epochs stops at, whichever comes first: the
    progress bar's total (None: only max_minutes or early stopping will end the run)."""
    t = run.cfg.training
    stops = [t.max_steps] if t.max_steps else []
    if t.max_epochs:
        stops.append(math.ceil(t.max_epochs * run.stream.batches_per_epoch() / t.update_freq))
    return min(stops, default=None)


def should_stop(run: Run, state: State, start: float) -> bool:
    t = run.cfg.training
    if state.bad_steps >= t.max_bad_steps:
        # not saved: the blow-up may have spoilt the weights, and would push out a good checkpoint
        raise MtError(f"training stopped: the loss was NaN or inf in {state.bad_steps} updates in a row "
                      f"(training.max_bad_steps); the last good checkpoint is kept. Try a lower training.lr")
    reason = stop_reason(run, state, start)
    state.stop_requested, reason = run.dist.agree_on_stop(state.stop_requested, reason)  # torchrun: all at once
    if state.stop_requested or state.failed:
        return True
    if reason and run.is_main:
        log.info("stopping: %s", reason)
    return reason is not None


def stop_reason(run: Run, state: State, start: float) -> Optional[str]:
    """Which configured limit training has reached, if any."""
    t, position = run.cfg.training, state.position
    if t.max_steps and state.step >= t.max_steps:
        return f"reached training.max_steps ({t.max_steps})"
    if t.max_epochs and (position.epoch > t.max_epochs or (
            position.epoch == t.max_epochs and position.batches_done >= run.stream.batches_per_epoch())):
        return f"reached training.max_epochs ({t.max_epochs})"
    if t.max_minutes and time.monotonic() - start >= 60 * t.max_minutes:
        return f"reached training.max_minutes ({t.max_minutes})"
    if t.early_stopping.patience and state.bad_validations >= t.early_stopping.patience:
        return f"early stopping: no better dev {t.early_stopping.metric} in {state.bad_validations} validations"
    return None


def train_step(run: Run, state: State, batches: list[Batch]) -> Optional[torch.Tensor]:
    """One optimizer update over `update_freq` batches; returns the summed loss (on device)."""
    try:
        loss_sum = accumulate_gradients(run, batches)
        out_of_memory = None
    except RuntimeError as error:
        if not is_out_of_memory(error):
            raise
        out_of_memory = str(error).splitlines()[0]
    if out_of_memory:  # after `except`: its traceback no longer holds the batch's activations
        skip_out_of_memory_update(run, state, out_of_memory)
        return None
    state.memory_skips = 0
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.training.clip_norm or float("inf"))
    if not torch.isfinite(norm).item():  # the one host sync of the step
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.update()
        state.bad_steps += 1
        state.skipped_steps += 1
        log.warning("step %d: loss or gradient is not finite; update skipped (%d in a row)",
                    state.step + 1, state.bad_steps)
        return None
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.bad_steps = 0
    return loss_sum


def accumulate_gradients(run: Run, batches: list[Batch]) -> torch.Tensor:
    """Forward and backward over the update's batches; returns their summed loss (on device)."""
    # normalise by the target tokens of the whole update, summed over processes, so the
    # gradient is the same whether the batches ran here one after another or on other ranks
    total_tokens = run.dist.sum(sum(b.trg_tokens for b in batches))
    loss_sum = torch.zeros((), device=run.device)
    for i, batch in enumerate(batches):
        batch = batch.to(run.device)
        sync = run.dist.no_sync(run.model) if i < len(batches) - 1 else nullcontext()
        with sync, run.autocast(), attention_backends():
            loss = token_loss(run.model, batch, run.cfg.training.label_smoothing)
        run.scaler.scale(loss * (run.dist.world / total_tokens)).backward()
        loss_sum += loss.detach()
    return loss_sum


def skip_out_of_memory_update(run: Run, state: State, message: str) -> None:
    """Drop the update whose batch did not fit; stop after training.max_bad_steps in a row."""
    where = f"step {state.step + 1}: a batch did not fit in {run.device.type} memory"
    if run.dist.world > 1:  # the other ranks already wait in the all-reduce: skipping alone would hang
        raise MtError(f"{where} on rank {run.dist.rank} ({message}); lower training.batch_tokens and "
                      f"run again to resume")
    run.optimizer.zero_grad(set_to_none=True)
    free_cached_memory(run.device)
    state.skipped_steps += 1
    state.memory_skips += 1
    if state.memory_skips >= run.cfg.training.max_bad_steps:
        saved = f"step {state.step} is saved" if state.step else "no step was done"
        state.failed = (f"training stopped: {state.memory_skips} updates in a row did not fit in "
                        f"{run.device.type} memory (training.max_bad_steps); {saved}. "
                        f"Lower training.batch_tokens and run again to continue")
        return
    log.warning("%s; skipped it (lower training.batch_tokens if this repeats): %s", where, message)


def preview(run: Run, state: State, meter: Meter, bar: tqdm) -> None:
    """Loss and tokens/s on the bar from the first steps, before the first log_every: at steps
    1, 2, 4, 8, ... (each reading waits for the device, so not at every step)."""
    step = state.step
    if bar.disable or step >= run.cfg.training.log_every or step & (step - 1) or meter.trg_tokens == 0:
        return
    reading = meter.read()
    bar.set_postfix({"loss": f"{reading['loss']:.3f}", "tok/s": f"{reading['trg_tokens_per_s']:,.0f}"})


def maybe_log(run: Run, state: State, meter: Meter, bar: tqdm) -> None:
    if state.step % run.cfg.training.log_every and not state.stop_requested:
        return
    if meter.trg_tokens == 0:
        return
    reading = meter.read()
    meter.reset()
    lr = run.optimizer.param_groups[0]["lr"]
    shown = {"loss": f"{reading['loss']:.3f}", "lr": f"{lr:.2e}", "tok/s": f"{reading['trg_tokens_per_s']:,.0f}"}
    if reading.get("mfu") is not None:
        shown["mfu"] = f"{reading['mfu']:.1%}"
    if "peak_mem_gb" in reading:
        shown["mem"] = f"{reading['peak_mem_gb']:.1f}G"
    bar.set_postfix(shown, refresh=False)
    if bar.disable and run.is_main:  # no bar (stderr is not a terminal): one plain line instead
        total = planned_steps(run)
        log.info("step %d%s  %s", state.step, f"/{total}" if total else "",
                 "  ".join(f"{k} {v}" for k, v in shown.items()))
    record(run, state, {"step": state.step, "epoch": state.position.epoch, "lr": lr, **reading})


def record(run: Run, state: State, entry: dict) -> None:
    """Append one row to metrics.jsonl (rank 0 only)."""
    if not run.is_main:
        return
    state.metrics.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in entry.items()})
    rundir.write_metrics(run.run_dir, state.metrics)


# ----------------------------------------------------------------------------- validation


def maybe_validate(run: Run, state: State, epoch_ended: bool) -> None:
    if state.step and (state.step % run.cfg.training.validate_every == 0 or epoch_ended):
        validate_and_record(run, state)


def validate_and_record(run: Run, state: State) -> None:
    """Validate; keep best.pt and the early-stopping count; a row in metrics.jsonl. A stop
    request abandons the validation: no row, and the saved step validates first when resumed."""
    t = run.cfg.training
    result = validate(run, state)
    state.validation_due = result is None
    if result is None:
        return
    metric = result["dev_bleu"] if t.early_stopping.metric == "bleu" else -result["dev_loss"]
    improved = state.best is None or metric > state.best
    state.bad_validations = 0 if improved else state.bad_validations + 1
    if improved:
        state.best, state.best_metric = metric, t.early_stopping.metric
        if run.is_main:
            best = make_checkpoint(run.raw_model, run.cfg, run.tokenizer, state.saved())
            save_checkpoint(rundir.named_checkpoint(run.run_dir, "best"), best)
    if run.is_main:
        log.info("step %d: dev loss %.3f, ppl %.2f, BLEU %.2f%s", state.step, result["dev_loss"], result["dev_ppl"],
                 result["dev_bleu"], " (best)" if improved else "")  # stderr and train.log; stdout holds results
        log.debug("validation at step %d: %s", state.step, result)
        record(run, state, {"step": state.step, "epoch": state.position.epoch, **result})


class Abandoned(Exception):
    """A validation given up because a stop was asked for."""


def validate(run: Run, state: State) -> Optional[dict]:
    """Dev loss and perplexity (teacher forcing) and dev BLEU (greedy), same on every rank; None
    when a stop request came in (looked at between batches, so it is answered within one)."""
    def check_stop() -> None:  # every rank runs the same batches: they agree between the same two
        state.stop_requested = run.dist.agree_on_stop(state.stop_requested, None)[0]
        if state.stop_requested:
            raise Abandoned
    dev, state.validating = run.dev, True  # from here a stop request abandons the validation
    if run.is_main:
        log.info("step %d: validating on %d dev sentences", state.step, len(dev.src_lines))
    run.model.eval()
    nll, tokens = 0.0, 0
    try:
        with torch.inference_mode(), attention_backends():
            for indices in dev.batches:
                check_stop()
                batch = collate(dev.ids.src, dev.ids.trg, indices, max_len=run.cfg.model.max_len).to(run.device)
                with run.autocast():
                    nll += token_loss(run.raw_model, batch, 0.0).item()
                tokens += batch.trg_tokens
        loaded = Loaded(run.raw_model, run.cfg, run.tokenizer, None, run.device, run.autocast_dtype)
        hyps = translate_lines(loaded, dev.src_lines, beam=1, batch_tokens=run.cfg.decoding.batch_tokens,
                               between_batches=check_stop)
        check_stop()  # a request during the last batch too
    except Abandoned:
        return None
    finally:
        state.validating = False
        run.model.train()
    bleu = score(hyps, dev.trg_lines, "dev")["bleu"]
    return {"dev_loss": nll / tokens, "dev_ppl": math.exp(min(nll / tokens, 50)), "dev_bleu": bleu}


# ----------------------------------------------------------------------------- checkpoints and signals


def maybe_save(run: Run, state: State) -> None:
    if state.step and state.step % run.cfg.training.save_every == 0:
        save(run, state)


def save(run: Run, state: State) -> None:
    """Write step_<N>.pt and drop the oldest beyond training.keep_checkpoints."""
    rng = run.dist.gather_rng(rng_states())  # every rank takes part
    state.saved_step = state.step
    if not run.is_main:
        return
    ckpt = make_checkpoint(run.raw_model, run.cfg, run.tokenizer, state.saved(), run.optimizer, run.scheduler,
                           run.scaler, rng)
    # the write is short, and stopping in it would leave the user unsure which step was saved; a
    # stop asked for meanwhile (a scheduler sends one SIGTERM, then SIGKILL) stops right after it
    with signals.handled(lambda sig: _stop_after_save(state, sig)):
        save_checkpoint(rundir.step_checkpoint(run.run_dir, state.step), ckpt)
    for old in rundir.step_checkpoints(run.run_dir)[: -run.cfg.training.keep_checkpoints]:
        old.unlink(missing_ok=True)


def _stop_after_save(state: State, sig: signal.Signals) -> None:
    log.warning("%s: saving step %d; one moment", sig.name, state.step)
    state.stop_requested = state.stop_requested or sig.name


def stop_handler(state: State):
    """The first Ctrl-C or SIGTERM asks the loop to stop at the next point it can (after the
    current update, or between two batches of a validation) and save there; a second one stops
    at once, without saving, and exits as the first would have (130, 143)."""
    def handler(sig: signal.Signals) -> None:
        if state.stop_requested:
            saved = state.saved_step
            log.warning("%s again: stopped without saving step %d (%s)", sig.name, state.step,
                        f"the newest checkpoint is step {saved}" if saved > 0 else "no checkpoint saved yet")
            raise KeyboardInterrupt  # not an Exception: no `except Exception` on the way swallows it
        state.stop_requested = sig.name
        doing = f"abandoning the validation of step {state.step}" if state.validating else f"finishing step {state.step + 1}"
        log.warning("%s: %s, then saving (Ctrl-C again to quit without saving)", sig.name, doing)
    return handler


def finish(run: Run) -> list[dict]:
    """Scores of the best checkpoint on the config's test sets ([] when the config names none)."""
    if not rundir.recorded_files(run.run_dir).tests:
        log.info("no test sets in the config (data.test): nothing to score")
        return []
    loaded = load_for_inference(run.run_dir, "best", str(run.device.type))
    return score_test_sets(loaded, run.run_dir)
