"""The evaluator of a training run: periodic validation, the best model so far, the event thresholds stored with
it, early stopping, and the test split scored once at the end with best.pt.

Validation is the split held out of the training data (train/data/holdout.py); best.pt follows its mAP (the latest
evaluation where no class can be scored). Where the split carries strong labels, localisation is scored too, and at
the end of the run the per-class event settings (train/postprocess.py) are chosen once on best.pt's outputs for it,
stored in best.pt and printed: choosing costs about 0.2 s a class per 500 clips, minutes to an hour on an
AudioSet-sized split, too much to repeat at every better evaluation.
"""
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from fastsca.events import EventConfig, stored_event_config
from fastsca.run_options import RunOptions
from train import distributed, localisation, postprocess
from train.checkpoint import TrainState
from train.config import RunConfig
from train.evaluate import evaluate, summary_text
from train.metrics_log import MetricsLog


@dataclass(frozen=True)
class Validation:
    """One evaluation on the validation split."""

    summary: dict
    """The clip metrics (TaggingMetrics.summary(): None where no class could be scored)."""
    located: dict
    """The localisation figures ({} without strong labels; "localisation_error" when scoring failed)."""
    clips: int
    """Validation clips evaluated."""
    improved: bool
    """The model is the best so far (always, where no class can be scored)."""

    @property
    def scorable(self) -> bool:
        return self.summary["mAP"] is not None


class Evaluator:
    """Validates every `eval_every` steps and at the end, tracks the best model and tests it once."""

    def __init__(self, validation_loader, test_loader, strong, label_names: tuple[str, ...], clip_seconds: float,
                 run: RunConfig, options: RunOptions, ctx: distributed.Context, log: MetricsLog,
                 events: EventConfig) -> None:
        self.validation_loader, self.test_loader, self.strong = validation_loader, test_loader, strong
        self.label_names, self.clip_seconds, self.run, self.options = label_names, clip_seconds, run, options
        self.ctx, self.log = ctx, log
        self.events = events
        """The event settings latest.pt carries: the defaults, or those a resumed checkpoint stored."""
        self.selection: postprocess.Selection | None = None
        """The settings chosen at the end of the run and their validation F1 (`choose_events`)."""
        self.best_summary: dict = {}
        self.reported: set[str] = set()   # notes already printed (no scorable class, a localisation fault)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.run.eval_every == 0 or step == total_steps

    def _frames(self, strong) -> list | None:
        return [] if strong is not None else None

    def validate(self, model: torch.nn.Module, state: TrainState) -> Validation:
        """Evaluate `model` on the validation split; a better model updates `state`'s best and the event settings."""
        distributed.broadcast_buffers(model)
        frames = self._frames(self.strong)
        metrics, clips = evaluate(model, self.validation_loader, self.ctx.device, frames, self.options)
        summary = metrics.summary()   # JSON-ready: None where no class could be scored
        located = localisation.score_during_training(frames, self.strong if self.ctx.is_main else None,
                                                     self.label_names, self.clip_seconds, self.ctx.world_size)
        scorable = summary["mAP"] is not None
        # with no class scorable (the split is fixed, so at every evaluation) best.pt follows the latest
        improved = summary["mAP"] > state.best_map if scorable else True
        if improved:
            state.best_step, self.best_summary = state.step, summary
            state.best_map = summary["mAP"] if scorable else state.best_map
        result = Validation(summary=summary, located=located, clips=clips, improved=improved)
        self._notes(result)
        return result

    def choose_events(self, model: torch.nn.Module, best: dict) -> EventConfig | None:
        """The per-class event settings chosen on the validation split's outputs of best.pt's model (every rank
        evaluates; rank 0 chooses and gets them, the others None); None without strong validation labels, or where
        choosing fails (the defaults stay; the fault is reported by the localisation scoring)."""
        if self.strong is None:
            return None
        _load_best(model, best)
        frames: list = []
        evaluate(model, self.validation_loader, self.ctx.device, frames, self.options)
        if not self.ctx.is_main:
            return None
        self.selection = postprocess.select_during_training(frames, self.strong, self.label_names, self.clip_seconds,
                                                            self.ctx.world_size)
        return None if self.selection is None else self.selection.events

    def _notes(self, result: Validation) -> None:
        """What the figures leave unsaid, once each (not at every evaluation), on stderr."""
        notes = [] if result.scorable else [
            f"note: no validation class has both a positive and a negative clip "
            f"({result.summary['excluded_classes']} class(es)), so mAP is undefined; best.pt is the latest "
            f"evaluation's model"]
        if "localisation_error" in result.located:
            notes.append(f"warning: {result.located['localisation_error']}; training goes on")
        for note in notes:
            if note not in self.reported and self.ctx.is_main:
                self.reported.add(note)
                tqdm.write(note, file=sys.stderr)

    def report(self, result: Validation, step: int, seconds: float) -> None:
        """The 'val' line of metrics.jsonl and the progress line."""
        self.log.write("val", step, **result.summary, **result.located, clips=result.clips, seconds=round(seconds, 2))
        if self.ctx.is_main:
            tqdm.write(f"step {step}: validation {summary_text(result.summary)}"
                       f"{localisation.progress_text(result.located, result.clips)}  ({seconds:.1f} s)"
                       f"{'  best' if result.improved and result.scorable else ''}")

    def should_stop(self, state: TrainState) -> bool:
        """Early stopping: --patience evaluations without a better validation mAP."""
        if not self.run.patience or (state.step - state.best_step) // self.run.eval_every < self.run.patience:
            return False
        if self.ctx.is_main:
            tqdm.write(f"early stop: no better validation mAP in {self.run.patience} evaluations since step "
                       f"{state.best_step}")
        return True

    def test(self, model: torch.nn.Module, best: dict, test_reference, state: TrainState) -> dict:
        """best.pt's figures on the test split (all five localisation figures, with best.pt's event settings, chosen
        on validation: a test is scored once), logged as the 'test' line; the settings are printed."""
        _load_best(model, best)
        test_strong = distributed.gather_objects(test_reference)[0]   # every rank gathers frames, or none does
        frames = self._frames(test_strong)
        metrics, clips = evaluate(model, self.test_loader, self.ctx.device, frames, self.options)
        located = localisation.score_during_training(frames, test_strong if self.ctx.is_main else None,
                                                     self.label_names, self.clip_seconds, self.ctx.world_size,
                                                     stored_event_config(best["config"]), quick=False)
        if "localisation_error" in located and self.ctx.is_main:
            tqdm.write(f"warning: test split: {located['localisation_error']}", file=sys.stderr)
        test = {**metrics.summary(), **{k: v for k, v in located.items() if k != "localisation_error"}}
        self.log.write("test", state.step, **test, clips=clips, best_step=state.best_step,
                       validation_mAP=state.best_map if state.best_map >= 0 else None)
        if self.strong is not None and self.ctx.is_main:
            stored = stored_event_config(best["config"])
            selection = self.selection if self.selection is not None and self.selection.events == stored else None
            tqdm.write(f"event settings chosen per class on the validation split (stored in best.pt and the model "
                       f"folder):\n"
                       f"{postprocess.format_selection(stored, self.label_names, selection)}")
        return test


def _load_best(model: torch.nn.Module, best: dict) -> None:
    """best.pt's weights into the model, with rank 0's buffers on every rank."""
    model.load_state_dict(best["model"])
    distributed.broadcast_buffers(model)
