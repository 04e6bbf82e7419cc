"""The model card (README.md) of a model folder: what the model is, its training data, its metrics, its intended
use and its limitations, in the Hugging Face Hub's layout (YAML front matter, then markdown).

The facts come from the training checkpoint (`TrainingFacts.from_checkpoint`: its data settings, the step of its
best validation mAP) and from the `test` record that train.run appends to metrics.jsonl beside it; a figure the
run did not record is said to be missing, never guessed. A model trained on the built-in set (train/data/synth.py)
is said to know synthetic test signals only, so that its tags on real audio are read as such.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from fastsca.events import EventConfig
from fastsca.inference import TrainedModel, read_checkpoint

# The front matter's marker: a README.md holding it was written by fastsca.hub (fastsca/hub.py's folder check).
LIBRARY_LINE = "library_name: fastsca"
# The test record's figures, in the order the card lists them, with their names in words.
TEST_FIGURES = (("mAP", "mAP"), ("mAUC", "mAUC"), ("d_prime", "d'"), ("event_f1", "event F1"),
                ("segment_f1", "segment F1"), ("psds1", "PSDS1"), ("psds2", "PSDS2"), ("frame_ap", "frame AP"))


@dataclass(frozen=True)
class TrainingFacts:
    """What a training run recorded about the model: its data, and its figures on validation and test."""

    data: dict = field(default_factory=dict)
    """The checkpoint's data settings (train.config.DataConfig as a dict); empty when not known."""
    fingerprints: dict = field(default_factory=dict)
    """The checkpoint's data fingerprints ("train", "test": clips, clip_samples, sample_rate, ...)."""
    best_step: int | None = None
    """The step whose weights these are, chosen on validation mAP; None when not known."""
    validation_map: float | None = None
    """Validation mAP at best_step; None when not known."""
    test: dict = field(default_factory=dict)
    """The `test` record train.run wrote for best_step (metrics.jsonl); empty when there is none."""

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "TrainingFacts":
        """The facts of a training checkpoint and of the metrics.jsonl beside it."""
        payload = read_checkpoint(path)
        best_step = payload.get("best_step")
        return cls(data=payload.get("config", {}).get("data") or {}, fingerprints=payload.get("data_fingerprints") or {},
                   best_step=best_step, validation_map=payload["best_map"] if payload.get("best_map", -1) >= 0 else None,
                   test=_test_record(Path(path).parent / "metrics.jsonl", best_step))


def _test_record(metrics: Path, best_step: int | None) -> dict:
    """The last `test` record of metrics.jsonl scored with best_step's weights; {} when there is none."""
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    found = {}
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue   # a line cut by a crash: the others still count
        if isinstance(record, dict) and record.get("kind") == "test" and record.get("best_step") == best_step:
            found = record
    return found


def is_builtin(facts: TrainingFacts) -> bool:
    """Whether the model was trained on the built-in synthetic set (no --data)."""
    return bool(facts.data) and facts.data.get("train_path") is None and "builtin" in facts.data


def _data_lines(trained: TrainedModel, facts: TrainingFacts) -> list[str]:
    """The training data section's lines."""
    if is_builtin(facts):
        synth = facts.data["builtin"]
        return [f"The built-in synthetic set of fastsca (train/data/synth.py): {synth['n_train']} training clips of "
                f"{synth['clip_seconds']:g} s, 1-{synth['max_events']} synthetic events each over pink or brown noise, "
                f"with a validation split held out of them; {synth['n_eval']} test clips. Its classes are synthetic "
                f"test signals, not real-world sounds: {', '.join(trained.label_names)}."]
    if not facts.data:
        return ["Not recorded (the folder was not written from a training checkpoint)."]
    train = facts.fingerprints.get("train", {})
    seconds = f" of {train['clip_samples'] / train['sample_rate']:g} s" if train.get("sample_rate") else ""
    lines = [f"`{facts.data.get('train_path')}`: {train.get('clips', 'an unrecorded number of')} clips{seconds}, "
             f"with a validation split held out of them."]
    if facts.data.get("fold") is not None:
        lines.append(f"Fold {facts.data['fold']} of that data is the test split.")
    elif facts.data.get("eval_path"):
        lines.append(f"Test split: `{facts.data['eval_path']}`.")
    return lines


def _metric_lines(facts: TrainingFacts) -> list[str]:
    """The metrics section's lines: validation mAP at the chosen step, then the test record as a table."""
    lines = []
    if facts.validation_map is not None:
        lines.append(f"Chosen at step {facts.best_step} on validation mAP ({facts.validation_map:.4f}).")
    if not facts.test:
        return lines + ["", "No test figures were recorded for these weights."]
    rows = [(words, facts.test[key]) for key, words in TEST_FIGURES if facts.test.get(key) is not None]
    return lines + ["", f"On the test split ({facts.test.get('clips', '?')} clips), scored once at the end of training:",
                    "", "| metric | value |", "|---|---|"] + [f"| {words} | {value:.4f} |" for words, value in rows]


def model_card(trained: TrainedModel, events: EventConfig, facts: TrainingFacts) -> str:
    """The README.md text of the model folder of `trained`."""
    config, front_end = trained.model.config, trained.log_mel
    builtin = is_builtin(facts)
    use = ("Trying fastsca's tagging, plotting and export on a fresh clone (`python -m train.examples` writes "
           "clips of these classes). Not for real-world audio: a real sound gets the synthetic class it most "
           "resembles, often with a high probability." if builtin else
           f"Tagging audio like its training data with the {len(trained.label_names)} classes below, and finding "
           f"when they sound (sound event detection from the frame-level probabilities).")
    lines = ["---", LIBRARY_LINE, "pipeline_tag: audio-classification",
             "tags: [audio-classification, audio-tagging, sound-event-detection, fastsca]", "---", "",
             f"# {config.name} (fastsca)", "",
             f"AT-SCA audio tagging (residual CNN with spatial and channel-wise attention, "
             f"{config.pooling.replace('_', ' ')} pooling over time): {len(trained.label_names)} classes from {front_end.clip_samples / front_end.sample_rate:g} s "
             f"windows of {front_end.sample_rate} Hz mono audio, clip and frame-level ({config.name}, "
             f"{sum(p.numel() for p in trained.model.parameters()):,} parameters, step {trained.step}).", "",
             "## Training data", "", *_data_lines(trained, facts), "",
             "## Metrics", "", *_metric_lines(facts), "",
             "## Intended use", "", use, "",
             "## Limitations", "",
             "- Trained from clip-level (weak) labels: event times come from frame probabilities at 10 Hz and "
             "are approximate.",
             f"- Events use the post-processing stored in config.json (onset threshold {events.threshold:g} by "
             f"default; thresholds, hysteresis, median filter, minimum length and gap chosen on validation for "
             f"{len(events.class_thresholds)} classes) and a clip gate; they suit the "
             f"training data's sounds and levels.",
             "- Only the classes listed in labels.csv; anything else is tagged as the nearest of them.", "",
             "## How to use", "", "```python", "import fastsca", "",
             'tagger = fastsca.Tagger.from_pretrained("OWNER/NAME")   # or this folder\'s path',
             'print(tagger("clip.wav").top_k(5))', "```", ""]
    return "\n".join(lines)
