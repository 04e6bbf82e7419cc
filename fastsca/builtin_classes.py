"""The classes of the built-in synthetic set (train/data/synth.py generates their audio): named here, in the model
layer, so that a figure or a tag listing can say a model was trained on synthetic test signals."""

CLASS_NAMES = ("tone", "up-chirp", "down-chirp", "noise-burst", "click-train", "harmonic-stack",
               "am-tone", "warble", "beeps", "hiss", "siren", "thumps")


def is_builtin_label_set(label_names: tuple[str, ...]) -> bool:
    """Whether `label_names` are the first classes of CLASS_NAMES in order: a model trained on the built-in set,
    whose tags name synthetic test signals (a figure or a tag listing says so)."""
    return 0 < len(label_names) <= len(CLASS_NAMES) and tuple(label_names) == CLASS_NAMES[: len(label_names)]
