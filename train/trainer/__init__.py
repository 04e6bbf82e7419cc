"""The training run behind `python -m train.run`: its config from the flags (`flags`), the `Trainer` and the
components that own its decisions (`checkpointer`, `guard`, `evaluator`, `progress`)."""
